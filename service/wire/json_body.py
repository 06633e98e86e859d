"""JSON bodies: structural limits checked on the raw bytes, strict decoding, duplicate keys refused, and encoding.

Decoding a body costs memory in proportion to its values, not its bytes: ``[0.5],`` is 6 bytes but about 100 bytes
of Python objects (a list, a float, two pointers), and a list of a million empty objects made pydantic build a
million errors. So before any value is built, ``decode`` counts the body's structural characters with
``bytes.count`` (C speed, a few ms for 32 MiB) and refuses a body with more values, arrays, objects or strings
than any valid request can have (``Structure``). Characters inside strings are counted too, which can only
over-count; valid requests hold few strings.

Then orjson parses it (strict JSON: no NaN, Infinity or trailing commas). orjson refuses numbers beyond float64
and the NaN and Infinity tokens outright; those bodies are parsed again by ``lenient``, which turns such numbers
into markers, so that validation can answer 422 at the number's location (a body with a non-finite number is
well-formed JSON for a client, only not one this service computes with).

Duplicate keys (orjson keeps the last) are refused: every ``:`` outside a string belongs to exactly one key, so
the body has duplicates, or keys the walk did not see, exactly when its ``:`` count exceeds the keys and the
colons inside strings that the walk of the parsed value found. Only then (or when the body has escapes) is it
parsed again key by key to name the duplicate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import orjson

from schemas.errors import ErrorItem, InvalidRequest
from service.wire import json_dense, lenient

# orjson refuses documents nested deeper than this.
MAX_DEPTH = 1024
# Bodies this large whose values average fewer bytes than this take the dense path (json_dense): there orjson's
# ~60 bytes of objects per number would exceed 6 times the body. Below 4 MiB even 15 times the body stays within
# the 64 MiB a request may always use.
DENSE_MIN_BYTES = 4 << 20
DENSE_BYTES_PER_VALUE = 10


@dataclass(frozen=True)
class Structure:
    """Most values, arrays, objects and strings a body may hold, counted on its raw bytes.

    ``values`` bounds the commas (one fewer than the values of each array and object); ``arrays`` the ``[``, so
    that a body of a million one-element rows is refused before a million lists exist; ``objects`` the ``{``;
    ``strings`` the ``"`` (two per string).
    """

    values: int
    arrays: int
    objects: int
    strings: int


def _malformed(message: str) -> InvalidRequest:
    return InvalidRequest([ErrorItem(location="body", type="json_invalid", message=f"invalid JSON: {message}")],
                          status=400, title="Malformed JSON", slug="malformed-json")


def _over(what: str, got: int, limit: int, hint: str) -> InvalidRequest:
    return InvalidRequest([ErrorItem(location="body", type="limit_exceeded",
                                     message=f"the body holds {got} {what}, over this service's limit of {limit}; "
                                             f"{hint}")],
                          title="Request over the limits", slug="limit-exceeded")


def check_structure(body: bytes, caps: Structure) -> None:
    """InvalidRequest (422 limit_exceeded) when the body holds more of anything than ``caps`` allows."""
    checks = (
        (b",", caps.values, "commas (values of arrays and objects)",
         "no valid request has that many numbers: send fewer examples or smaller layers"),
        (b"[", caps.arrays, "'[' characters (JSON arrays)",
         "no valid request has that many arrays or rows"),
        (b"{", caps.objects, "'{' characters (JSON objects)",
         "no valid request has that many objects (layers, submissions ...)"),
        (b'"', 2 * caps.strings, "'\"' characters (string delimiters)",
         "no valid request has that many strings"),
    )
    for char, limit, what, hint in checks:
        got = body.count(char)
        if got > limit:
            raise _over(what, got, limit, hint)


def is_dense(body: bytes) -> bool:
    """Whether orjson's Python objects (~60 bytes a number while parsing) could exceed the memory a body may
    cost: a body of at least DENSE_MIN_BYTES whose values average under DENSE_BYTES_PER_VALUE bytes."""
    return len(body) >= DENSE_MIN_BYTES and body.count(b",") * DENSE_BYTES_PER_VALUE > len(body)


def decode(body: bytes, caps: Structure, *, dense: bool | None = None) -> Any:
    """The body's JSON value, numeric arrays of a dense body as numpy arrays (``json_dense``); InvalidRequest:
    400 for malformed JSON, 422 over ``caps`` or for a duplicate key. ``dense`` forces the path (tests)."""
    check_structure(body, caps)
    if dense if dense is not None else is_dense(body):
        skeleton, spans, structure = json_dense.split(body)
    else:
        skeleton, spans, structure = body, {}, None
    try:
        value = orjson.loads(skeleton)
    except orjson.JSONDecodeError as exc:
        value = _lenient(skeleton, str(exc))
    _refuse_duplicates(skeleton, value)
    if spans:
        value = json_dense.substitute(value, body, spans, structure)
    return value


def _lenient(body: bytes, orjson_message: str) -> Any:
    """The value of a body orjson refused, when the only trouble is a number float64 cannot hold or a NaN /
    Infinity token (each becomes a ``NonFinite``); otherwise the 400 with orjson's message."""
    if "depth limit" in orjson_message:
        raise _malformed(f"nested deeper than the recursion limit of {MAX_DEPTH} arrays and objects")
    try:
        return lenient.loads(body)
    except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise _malformed(orjson_message) from None


# --- duplicate keys ----------------------------------------------------------------------------------------

def _walk_counts(value: Any) -> tuple[int, int]:
    """(keys, colons inside strings) over every object and string of ``value``, skipping the arrays whose first
    leaf is a number (numeric arrays: what else they hold is invalid and shows up as a count mismatch)."""
    keys = colons = 0
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, dict):
            keys += len(v)
            for k, item in v.items():
                colons += k.count(":")
                if isinstance(item, (dict, list, str)):
                    stack.append(item)
        elif isinstance(v, list):
            leaf = v
            while isinstance(leaf, list) and leaf:
                leaf = leaf[0]
            if isinstance(leaf, (dict, list, str)):
                stack.extend(v)
        elif isinstance(v, str):
            colons += v.count(":")
    return keys, colons


def _refuse_duplicates(body: bytes, value: Any) -> None:
    keys, colons = _walk_counts(value)
    if b"\\" not in body and body.count(b":") == keys + colons:
        return
    duplicate = _find_duplicate(body)
    if duplicate is not None:
        key, where = duplicate[0], _locate_object(value, duplicate)
        raise InvalidRequest([ErrorItem(location=where, type="duplicate_key",
                                        message=f"the key {key!r} appears more than once in this object; send each "
                                                f"key once (JSON parsers disagree on which value wins)")])


def _find_duplicate(body: bytes) -> tuple[str, frozenset[str]] | None:
    """The first duplicate key and the key set of its object, parsing key by key (the rare, exact path)."""
    found: list[tuple[str, frozenset[str]]] = []

    def pairs(items: list[tuple[str, Any]]) -> dict:
        if not found:
            seen: set[str] = set()
            for k, _ in items:
                if k in seen:
                    found.append((k, frozenset(seen | {k for k, _ in items})))
                    break
                seen.add(k)
        return dict(items)

    try:
        lenient.loads(body, object_pairs_hook=pairs)
    except (ValueError, RecursionError):  # orjson parsed it; this cannot fail on a body it accepted
        return None
    return found[0] if found else None


def _locate_object(value: Any, duplicate: tuple[str, frozenset[str]]) -> str:
    """The location of the duplicated key (``layers[1].W``): the object of ``value`` with the same key set."""
    key, keyset = duplicate
    stack: list[tuple[Any, str]] = [(value, "")]
    while stack:
        v, path = stack.pop()
        if isinstance(v, dict):
            if frozenset(v) == keyset:
                return f"{path}.{key}" if path else key
            stack.extend((item, f"{path}.{k}" if path else k) for k, item in v.items()
                         if isinstance(item, (dict, list)))
        elif isinstance(v, list) and v and isinstance(v[0], (dict, list)):
            stack.extend((item, f"{path}[{i}]") for i, item in enumerate(v))
    return "body"


# --- encoding ------------------------------------------------------------------------------------------------

_OPTIONS = orjson.OPT_SERIALIZE_NUMPY
# A response is streamed in pieces of about this size when it would be larger (an 80 MB array is written a block
# of rows at a time, so the worker never holds the whole document); smaller ones go out in one piece with a
# Content-Length.
CHUNK_BYTES = 1 << 20
# Estimated bytes per number written (orjson writes float64 in at most 24 characters; most take 18 to 22).
_BYTES_PER_NUMBER = 24


def encode(value: Any) -> bytes:
    """The JSON of ``value`` (dicts, lists, scalars, numpy arrays; NaN entries of arrays are written as null)."""
    return orjson.dumps(value, option=_OPTIONS)


def estimated_size(value: Any) -> int:
    """An upper estimate of ``encode(value)``'s length from its arrays' sizes, without encoding it."""
    total, stack = 0, [value]
    while stack:
        v = stack.pop()
        if isinstance(v, np.ndarray):
            total += v.size * _BYTES_PER_NUMBER
        elif isinstance(v, dict):
            total += 16 * len(v)
            stack.extend(v.values())
        elif isinstance(v, (list, tuple)):
            total += 2 + len(v)
            stack.extend(v)
        else:
            total += 32
    return total


def encode_chunks(value: Any) -> Iterator[bytes]:
    """``encode(value)`` in pieces of about CHUNK_BYTES, byte for byte the same when joined."""
    buffer: list[bytes] = []
    size = 0
    for piece in _pieces(value):
        buffer.append(piece)
        size += len(piece)
        if size >= CHUNK_BYTES:
            yield b"".join(buffer)
            buffer, size = [], 0
    if buffer:
        yield b"".join(buffer)


def _pieces(value: Any) -> Iterator[bytes]:
    if isinstance(value, dict):
        yield b"{"
        for i, (k, v) in enumerate(value.items()):
            yield (b"," if i else b"") + orjson.dumps(k) + b":"
            yield from _pieces(v)
        yield b"}"
    elif isinstance(value, list) and any(isinstance(v, (dict, list, np.ndarray)) for v in value):
        yield b"["
        for i, v in enumerate(value):
            if i:
                yield b","
            yield from _pieces(v)
        yield b"]"
    elif isinstance(value, np.ndarray) and value.ndim >= 1 and value.nbytes > CHUNK_BYTES // 2:
        yield from _array_pieces(value)
    else:
        yield orjson.dumps(value, option=_OPTIONS)


def _array_pieces(a: np.ndarray) -> Iterator[bytes]:
    """A large array a block of leading-axis entries at a time: '[' + blocks without their brackets + ']'."""
    per_entry = max(1, a[0].size if a.ndim > 1 else 1) * _BYTES_PER_NUMBER
    step = max(1, CHUNK_BYTES // per_entry)
    yield b"["
    for start in range(0, a.shape[0], step):
        block = orjson.dumps(np.ascontiguousarray(a[start:start + step]), option=_OPTIONS)
        yield (b"," if start else b"") + block[1:-1]
    yield b"]"

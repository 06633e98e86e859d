"""Dense JSON bodies: their numeric arrays parsed straight into float64, without a Python object per number.

orjson builds a float object (24 bytes), a list slot (8) and, while parsing, a node of its own (16 to 24) per
number: about 60 bytes for ``0.5,``, which is 4 bytes of body. For a body made mostly of short numbers that is
15 times the body, where a worker may grow by 8 times the body plus 64 MiB. So for a large body whose values
average under ``DENSE_BYTES_PER_VALUE`` bytes (json_body decides), the structure is found on the raw bytes first:

1. ``_structure``: the strings (quote pairs, escapes resolved) and every bracket and brace outside them, matched
   by nesting level with numpy (two sorts of the few structural positions, no per-byte Python work).
2. The *numeric arrays*: arrays with no string and no object inside. The outermost ones of at least
   ``MIN_ARRAY_BYTES`` bytes are cut out of the body, each replaced by a placeholder string; the rest, the
   *skeleton* (objects, keys, options, small arrays), is parsed by orjson as usual and may hold at most
   ``MAX_SKELETON_VALUES`` values.
3. ``convert``: each cut array's nesting is read from a *reduced* copy in which every innermost list (a row of
   numbers) is replaced by ``""`` (no string can be inside a numeric array, so the marker is unambiguous):
   orjson parses it, which checks the brackets and commas between rows, and the same level checks as for nested
   lists (``schemas.arrays.structure_errors``) tell whether it is rectangular. Then the rows are parsed by
   orjson in groups of sibling rows of about ``PIECE_BYTES`` (a longer row in pieces at its commas), each group
   written into one preallocated float64 array. An array that is not rectangular or holds non-numbers becomes
   the located errors the validator reports (``schemas.arrays.ArrayErrors``); a list of a few arrays of
   different shapes (dropout masks) a list of those arrays, each converted alone.

Peak memory: the body, about three bytes per byte of the array being converted (byte classes, the reduced copy),
the group in flight, and 8 bytes per number of the result. Nothing is ever widened per byte: byte maps use
``bytes.translate`` (numpy's table lookup would make an 8-byte index of every byte).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from schemas.arrays import ArrayErrors, NullEntries, ragged, structure_shape
from schemas.errors import ErrorItem, InvalidRequest
from service.wire import lenient

MIN_ARRAY_BYTES = 128
MAX_SKELETON_VALUES = 1 << 18
MAX_CUT_ARRAYS = 1 << 16
# A list of arrays of different shapes (dropout masks) is kept as a list of its arrays up to this many.
MAX_IRREGULAR_CHILDREN = 4096
PIECE_BYTES = 1 << 20
MAX_DEPTH = 1024

_QUOTE, _BACKSLASH = 34, 92
_OPEN, _CLOSE, _OPEN_OBJ, _CLOSE_OBJ = 91, 93, 123, 125


def _table(classes: dict[int, int]) -> bytes:
    """A bytes.translate table mapping the given bytes to their class and every other byte to 0."""
    return bytes(classes.get(b, 0) for b in range(256))


_STRUCTURAL = _table({_QUOTE: 1, _BACKSLASH: 2, _OPEN: 3, _CLOSE: 4, _OPEN_OBJ: 5, _CLOSE_OBJ: 6})
_BRACKETS = _table({_OPEN: 1, _CLOSE: 2})
_WHITESPACE = b" \t\n\r"


def malformed(message: str) -> InvalidRequest:
    return InvalidRequest([ErrorItem(location="body", type="json_invalid", message=f"invalid JSON: {message}")],
                          status=400, title="Malformed JSON", slug="malformed-json")


def _over(message: str) -> InvalidRequest:
    return InvalidRequest([ErrorItem(location="body", type="limit_exceeded", message=message)],
                          title="Request over the limits", slug="limit-exceeded")


@dataclass(frozen=True)
class Structure:
    """Every array of the body (sorted by its ``[``): positions of ``[`` and ``]`` and nesting level (1: at the
    top), and the positions of the strings' opening quotes and the objects' ``{`` (sorted)."""

    open: np.ndarray
    close: np.ndarray
    level: np.ndarray
    strings: np.ndarray
    objects: np.ndarray


def _string_spans(quotes: np.ndarray, slashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(opening, closing) quote positions of every string; a quote after an odd run of backslashes is escaped."""
    if slashes.size and quotes.size:
        run_start = np.r_[True, np.diff(slashes) != 1]
        first = slashes[run_start][np.cumsum(run_start) - 1]  # each backslash's run start
        j = np.minimum(np.searchsorted(slashes, quotes - 1), slashes.size - 1)
        preceded = slashes[j] == quotes - 1
        run = np.where(preceded, quotes - first[j], 0)
        quotes = quotes[run % 2 == 0]
    if quotes.size % 2:
        raise malformed(f"a string starting at byte {int(quotes[-1])} is not closed")
    return quotes[0::2], quotes[1::2]


def _outside(positions: np.ndarray, s_open: np.ndarray, s_close: np.ndarray) -> np.ndarray:
    if not s_open.size:
        return positions
    i = np.searchsorted(s_open, positions, side="right") - 1
    inside = (i >= 0) & (positions < s_close[np.maximum(i, 0)])
    return positions[~inside]


def structure(body: bytes) -> Structure:
    """The body's arrays, strings and objects; 400 for unbalanced or mismatched brackets and braces."""
    classes = np.frombuffer(body.translate(_STRUCTURAL), dtype=np.uint8)
    positions = np.flatnonzero(classes)
    kinds = classes[positions]
    del classes
    s_open, s_close = _string_spans(positions[kinds == 1], positions[kinds == 2])
    chars = [_outside(positions[kinds == k], s_open, s_close) for k in (3, 4, 5, 6)]
    pos = np.concatenate(chars)
    kind = np.concatenate([np.full(c.size, k, dtype=np.int8) for c, k in zip(chars, (1, -1, 2, -2))])
    order = np.argsort(pos, kind="stable")  # four sorted runs: a merge
    pos, kind = pos[order], kind[order]
    step = np.sign(kind).astype(np.int32)
    depth = np.cumsum(step)
    if depth.size and (depth.min() < 0 or depth[-1] != 0):
        at = int(pos[np.argmax(depth < 0)]) if depth.min() < 0 else len(body)
        raise malformed(f"unbalanced brackets or braces (at byte {at})")
    if depth.size and depth.max() > MAX_DEPTH:
        raise malformed(f"nested deeper than the recursion limit of {MAX_DEPTH} arrays and objects")
    level = np.where(step > 0, depth, depth + 1)
    by_level = np.argsort(level, kind="stable")  # per level, openers and closers alternate in position order
    pairs_pos, pairs_kind = pos[by_level].reshape(-1, 2), kind[by_level].reshape(-1, 2)
    bad = (pairs_kind[:, 0] < 0) | (pairs_kind[:, 1] != -pairs_kind[:, 0])
    if bad.any():
        raise malformed(f"mismatched bracket or brace at byte {int(pairs_pos[np.argmax(bad), 1])}")
    arrays = pairs_kind[:, 0] == 1
    a_open, a_close = pairs_pos[arrays, 0], pairs_pos[arrays, 1]
    a_level = level[by_level].reshape(-1, 2)[arrays, 0]
    order = np.argsort(a_open)
    objects = np.sort(pairs_pos[~arrays, 0])
    return Structure(a_open[order], a_close[order], a_level[order], s_open, objects)


def numeric_arrays(st: Structure) -> np.ndarray:
    """Indices (into ``st``) of the outermost arrays with no string or object inside, of at least
    MIN_ARRAY_BYTES bytes, in body order."""
    o, c = st.open, st.close
    no_strings = np.searchsorted(st.strings, c) == np.searchsorted(st.strings, o)
    no_objects = np.searchsorted(st.objects, c) == np.searchsorted(st.objects, o)
    numeric = np.flatnonzero(no_strings & no_objects)
    if not numeric.size:
        return numeric
    closes = c[numeric]
    before = np.maximum.accumulate(np.r_[-1, closes[:-1]])
    outermost = numeric[o[numeric] > before]
    big = outermost[c[outermost] - o[outermost] + 1 >= MIN_ARRAY_BYTES]
    if big.size > MAX_CUT_ARRAYS:
        raise _over(f"the body holds {big.size} numeric arrays, over this service's limit of {MAX_CUT_ARRAYS}")
    return big


def split(body: bytes) -> tuple[bytes, dict[str, tuple[int, int]], Structure]:
    """The skeleton (the body with each large numeric array replaced by a placeholder string), the placeholders'
    spans, and the structure. 422 when the skeleton holds more than MAX_SKELETON_VALUES values."""
    st = structure(body)
    cut = numeric_arrays(st)
    nonce = secrets.token_hex(8)
    pieces, spans, prev = [], {}, 0
    for n, i in enumerate(cut.tolist()):
        start, end = int(st.open[i]), int(st.close[i]) + 1
        name = f"\x00gs-{nonce}-{n}"
        pieces += [body[prev:start], b'"\\u0000gs-' + nonce.encode() + b"-" + str(n).encode() + b'"']
        spans[name] = (start, end)
        prev = end
    pieces.append(body[prev:])
    skeleton = b"".join(pieces)
    values = skeleton.count(b",")
    if values > MAX_SKELETON_VALUES:
        raise _over(f"the body holds about {values} values outside its numeric arrays (strings, objects, arrays "
                    f"mixing numbers with other values), over this service's limit of {MAX_SKELETON_VALUES}")
    return skeleton, spans, st


def substitute(value: Any, body: bytes, spans: dict[str, tuple[int, int]], st: Structure) -> Any:
    """``value`` (the parsed skeleton) with every placeholder replaced by its converted array."""
    if isinstance(value, str):
        return convert(body, st, *spans[value]) if value in spans else value
    stack = [value]
    while stack:
        v = stack.pop()
        items = v.items() if isinstance(v, dict) else enumerate(v) if isinstance(v, list) else ()
        for k, item in list(items):
            if isinstance(item, str) and item in spans:
                v[k] = convert(body, st, *spans[item])
            elif isinstance(item, (dict, list)):
                stack.append(item)
    return value




# --- one numeric array ------------------------------------------------------------------------------------------

_LEAF, _EMPTY = b'""', b"[]"


def convert(body: bytes, st: Structure, start: int, end: int) -> Any:
    """The numeric array at body[start:end] as a float64 ndarray, or NullEntries (nulls present), or the located
    errors of an array that is not rectangular or holds non-numbers (ArrayErrors), or, for a list of a few arrays
    of different shapes, a Python list of its converted entries. 400 for malformed JSON inside it."""
    span = np.frombuffer(body, dtype=np.uint8, count=end - start, offset=start)
    classes = np.frombuffer(body[start:end].translate(_BRACKETS), dtype=np.uint8)
    pos = np.flatnonzero(classes)  # no strings inside: every bracket is structural
    kind = classes[pos]
    del classes
    leaves = np.flatnonzero((kind[:-1] == 1) & (kind[1:] == 2))  # '[' directly followed by ']': a row
    l_open, l_close = pos[leaves], pos[leaves + 1]
    nested = _parse(_reduced(span, l_open, l_close), start)
    shape = structure_shape(nested)
    if isinstance(shape, tuple) and _rows_only(nested, len(shape)):
        siblings = np.r_[False, leaves[1:] == leaves[:-1] + 2]  # no bracket between two rows: same parent
        result = _rows(body, start, l_open, l_close, siblings, shape)
        if not isinstance(result, _Ragged):
            return result
        shape = result.errors  # rows of different widths: perhaps a list of arrays of different shapes
    children = _children(pos, kind)
    if 0 < len(children) <= MAX_IRREGULAR_CHILDREN and isinstance(nested, list):
        converted = iter(convert(body, st, start + o, start + c + 1) for o, c in children)
        return [next(converted) if isinstance(entry, (list, str)) else entry for entry in nested]
    return shape if isinstance(shape, ArrayErrors) else _not_rectangular()


@dataclass(frozen=True)
class _Ragged:
    """Rows of different widths (or an empty one): the errors, unless the array is a list of arrays."""

    errors: ArrayErrors


def _reduced(span: np.ndarray, l_open: np.ndarray, l_close: np.ndarray) -> bytes:
    """The array's text with every row replaced by ``""`` (an empty row by ``[]``): its nesting alone. Built
    from index arithmetic over the kept bytes only (about three per row), never a per-byte mask."""
    n, rows = span.size, l_open.size
    seg_start, seg_end = np.r_[0, l_close + 1], np.r_[l_open, n]
    seg_len = seg_end - seg_start
    seg_out = np.r_[0, np.cumsum(seg_len[:-1] + 2)]
    out = np.empty(int(seg_len.sum()) + 2 * rows, dtype=np.uint8)
    seg_id = np.repeat(np.arange(rows + 1), seg_len)
    within = np.arange(seg_id.size) - np.repeat(np.r_[0, np.cumsum(seg_len)[:-1]], seg_len)
    out[seg_out[seg_id] + within] = span[seg_start[seg_id] + within]
    marks = seg_out[:-1] + seg_len[:-1]
    empty = l_close == l_open + 1
    out[marks] = np.where(empty, _EMPTY[0], _LEAF[0])
    out[marks + 1] = np.where(empty, _EMPTY[1], _LEAF[1])
    return out.tobytes()


def _parse(text: bytes, start: int) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        try:
            return lenient.loads(text)
        except (ValueError, RecursionError):
            raise malformed(f"in the array starting at byte {start}: {exc}") from None


def _rows_only(nested: Any, depth: int) -> bool:
    """Whether every entry at ``depth`` levels down is a row marker (numbers only at the deepest level)."""
    rows = [nested]
    for _ in range(depth):
        rows = [x for r in rows for x in r]
    return set(map(type, rows)) == {str}


def _children(pos: np.ndarray, kind: np.ndarray) -> list[tuple[int, int]]:
    """(open, close) of the array's direct child arrays, relative to its start."""
    depth = np.cumsum(np.where(kind == 1, 1, -1))
    opens = np.flatnonzero((kind == 1) & (depth == 2))
    closes = np.flatnonzero((kind == 2) & (depth == 1))
    return list(zip(pos[opens].tolist(), pos[closes].tolist()))


def _not_rectangular() -> ArrayErrors:
    errors = ArrayErrors()
    errors.add((), "ragged_array", "the array is not rectangular: every entry at one level must be a list of the "
                                   "same length, with numbers only at the deepest level", None)
    return errors


def _rows(body: bytes, start: int, l_open: np.ndarray, l_close: np.ndarray, siblings: np.ndarray,
          shape: tuple[int, ...]) -> Any:
    """The numbers of every row, in order, into one float64 array of ``shape`` + (row width,): sibling rows in
    groups of about PIECE_BYTES (one orjson call each), a longer row in pieces cut at its commas. The width is
    the first row's comma count + 1 (commas only separate numbers here); each row is checked against it."""
    width = body.count(b",", start + int(l_open[0]), start + int(l_close[0])) + 1
    rows = int(np.prod(shape, dtype=np.int64))
    out = np.empty((rows, width), dtype=np.float64)
    errors, nulls, row = ArrayErrors(shape + (width,)), False, 0
    for a, b in _groups(l_open, l_close, siblings):
        first, last = start + int(l_open[a]), start + int(l_close[b - 1])
        if b - a == 1 and last - first > PIECE_BYTES:
            got, piece_nulls = _long_row(body, first, last, out[row], row, shape, errors)
            lengths, nulls = [got], nulls | piece_nulls
        else:
            values = _parse(b"[" + body[first:last + 1] + b"]", first)
            lengths = list(map(len, values))
            if min(lengths) == max(lengths) == width:
                nulls |= _write(values, out[row:row + len(values)], row, shape, errors)
        bad = next((j for j, n in enumerate(lengths) if n != width), None)
        if bad is not None:
            structural = ArrayErrors()
            loc = tuple(int(i) for i in np.unravel_index(row + bad, shape)) if shape else ()
            if lengths[bad] == 0:
                structural.add(loc, "too_short", "must not be empty", [])
            else:
                ragged(structural, None, loc, lengths[bad], width, len(shape) + 1)
            return _Ragged(structural)
        row += b - a
    if errors.items:
        return errors
    array = out.reshape(shape + (width,))
    return NullEntries(array) if nulls else array


def _groups(l_open: np.ndarray, l_close: np.ndarray, siblings: np.ndarray):
    """Runs [a, b) of consecutive sibling rows spanning about PIECE_BYTES each."""
    a = 0
    for i in range(1, l_open.size + 1):
        if i == l_open.size or not siblings[i] or l_close[i] - l_open[a] > PIECE_BYTES:
            yield a, i
            a = i


def _long_row(body: bytes, first: int, last: int, target: np.ndarray, row: int, shape: tuple[int, ...],
              errors: ArrayErrors) -> tuple[int, bool]:
    """One row longer than PIECE_BYTES, parsed in pieces cut at its commas and written into ``target`` (its row
    of the output) as they come: (numbers found, whether any was null)."""
    got, nulls, pos = 0, False, first + 1
    while pos < last:
        stop = min(pos + PIECE_BYTES, last)
        if stop < last:
            comma = body.find(b",", stop, last)
            stop = last if comma < 0 else comma
        values = _parse(b"[" + body[pos:stop] + b"]", pos)
        if got + len(values) > target.size:
            return got + len(values), nulls  # longer than its comma count: reported as ragged
        nulls |= _write([values], target[np.newaxis, got:got + len(values)], row, shape, errors, offset=got)
        got += len(values)
        pos = stop + 1
    return got, nulls


def _write(values: list[list], block: np.ndarray, row: int, shape: tuple[int, ...], errors: ArrayErrors,
           offset: int = 0) -> bool:
    """Write rows of parsed values into ``block``: plain numbers in one assignment; otherwise entry by entry,
    null -> NaN (returns whether any), anything else an error at its location (``offset``: the first column)."""
    if errors.full:
        return False  # the array is invalid already: only the rows' lengths still matter
    types: set[type] = set()
    for r in values:
        types.update(map(type, r))
    if types <= {float, int}:
        block[...] = values
        return False
    return _odd_values(values, block, row, shape, errors, offset)


def _odd_values(values: list, block: np.ndarray, row: int, shape: tuple[int, ...], errors: ArrayErrors,
                offset: int) -> bool:
    nulls = False
    for j, r in enumerate(values):
        prefix = tuple(int(i) for i in np.unravel_index(row + j, shape)) if shape else ()
        for c, v in enumerate(r):
            if type(v) in (float, int):
                block[j, c] = v
                continue
            block[j, c] = np.nan
            if v is None:
                nulls = True
            elif isinstance(v, float):  # a NonFinite marker
                errors.add(prefix + (offset + c,), "finite_number", "Input should be a finite number", v)
            else:
                errors.add(prefix + (offset + c,), "float_type", "Input should be a valid number", v)
            if errors.full:
                return nulls
    return nulls

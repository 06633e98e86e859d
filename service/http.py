"""Request and response plumbing shared by the routes: JSON in through a pydantic model, JSON out via orjson."""

from __future__ import annotations

import functools
from typing import Any, Callable, TypeVar

from flask import Response, current_app, request
from pydantic import BaseModel, ValidationError
from werkzeug.exceptions import RequestEntityTooLarge, UnsupportedMediaType

from schemas.errors import from_validation_error
from schemas.limits import Limits
from service.wire import json_body

# read_body's own imports: the chunked reader's errors (gunicorn's, as the service runs under gunicorn), gzip.
import zlib

from gunicorn.http.errors import NoMoreData, ParseException
from werkzeug.exceptions import RequestEntityTooLarge as _TooLarge

from schemas.errors import ErrorItem, InvalidRequest

M = TypeVar("M", bound=BaseModel)

# Room beyond the numbers of the arrays, for keys and scalar fields; and the objects and strings no valid
# request needs more of (64 layers, 500 submissions of ~30 keys each, their names and options).
_OTHER_VALUES = 65_536
_MAX_OBJECTS = 8_192
_MAX_STRINGS = 65_536


@functools.lru_cache(maxsize=16)  # Limits and Structure are frozen: the same limits give the same caps, every request
def structure_caps(limits: Limits) -> json_body.Structure:
    """The structural counts a body may have, from the request limits: a grading body holds the network's
    arrays and as many submitted numbers again, so twice ``max_elements`` numbers; a row of a matrix holds at
    least one number, but a million single-number rows already cost ~100 MB of Python objects, so arrays are
    capped at max(2^20, max_elements / 4)."""
    return json_body.Structure(values=2 * limits.max_elements + _OTHER_VALUES,
                               arrays=max(1 << 20, limits.max_elements // 4),
                               objects=_MAX_OBJECTS, strings=_MAX_STRINGS)


def parse_body(model: type[M] | Callable[[Any], type[M]]) -> M:
    """The request body validated as ``model``: 415 unless JSON, 413 over the size limit (Werkzeug refuses it
    before reading), 400 for malformed JSON, 422 for a body over the structural caps or that does not fit the
    model. ``model`` may also be a function of the decoded body that picks the model (or raises InvalidRequest),
    for a route whose body's form depends on a field (/v1/grade's ``task``)."""
    if not request.is_json:
        got = request.mimetype or "no Content-Type"
        raise UnsupportedMediaType(f"send the body as application/json (got {got})")
    body = read_body()
    value = json_body.decode(body, structure_caps(current_app.config["SETTINGS"].limits()))
    del body  # the decoded value replaces it: a 32 MiB body is not kept through validation and the engine
    if not isinstance(model, type):
        model = model(value)
    return validated(model, value)


def validated(model: type[M], value: object) -> M:
    """A decoded body (any wire format's) validated as ``model``; 422 listing every problem, located."""
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        raise from_validation_error(exc) from None


def read_body() -> bytes:
    """The raw body, decoded when sent with ``Content-Encoding: gzip``; never more than MAX_CONTENT_LENGTH bytes
    of it read, nor produced by decompressing it.

    415 for any other content coding (before reading); 400 for a malformed chunked body, or one that ends before
    its declared length; 408 when it does not arrive within GRADIENT_BODY_TIMEOUT (the worker's read deadline
    raises TimeoutError); 413 over the limit, compressed or decompressed.
    """
    gzipped = _content_coding_is_gzip()
    limit = current_app.config["MAX_CONTENT_LENGTH"]
    length = request.content_length  # None for a chunked body
    if length is not None and length > limit:
        raise _TooLarge()  # refused unread
    try:
        # From the server's input itself: Werkzeug's stream would turn a read timeout into a plain 400. A chunked
        # body has no length up front: one byte past the limit tells a body at the limit from a larger one.
        body = request.environ["wsgi.input"].read(limit + 1 if length is None else length)
    except TimeoutError as exc:
        raise InvalidRequest([ErrorItem(location="body", type="body_timeout", message=f"{exc}; send it faster")],
                             status=408, title="Request Timeout", slug="body-timeout") from None
    except NoMoreData:
        raise _body_error("truncated_body", "the connection ended before the end of the chunked body") from None
    except ParseException as exc:
        raise _body_error("malformed_chunked_body", f"malformed chunked body ({exc}): each chunk is its size in "
                          "hex, CRLF, the bytes, CRLF; a 0-size chunk and CRLF end the body") from None
    if length is None and len(body) > limit:
        raise _TooLarge()
    if length is not None and len(body) < length:
        raise _body_error("truncated_body", f"the body ended after {len(body)} of the {length} bytes its "
                          "Content-Length announced")
    return _gunzip(body, limit) if gzipped else body


def _body_error(kind: str, message: str) -> InvalidRequest:
    return InvalidRequest([ErrorItem(location="body", type=kind, message=message)], status=400,
                          title="Malformed request body", slug="malformed-body")


def _content_coding_is_gzip() -> bool:
    """Content-Encoding: none or identity -> False, gzip (or x-gzip) -> True, anything else -> 415."""
    codings = [c.strip().lower() for c in request.headers.get("Content-Encoding", "").split(",")]
    codings = [c for c in codings if c not in ("", "identity")]
    if not codings:
        return False
    if codings in (["gzip"], ["x-gzip"]):
        return True
    got = request.headers["Content-Encoding"]
    raise InvalidRequest([ErrorItem(location="header.Content-Encoding", type="unsupported_content_encoding",
                                    message=f"Content-Encoding {got!r} is not supported: send the body as it is "
                                            "or compressed once with gzip")],
                         status=415, title="Unsupported Media Type", slug="unsupported-content-encoding")


def _gunzip(data: bytes, limit: int) -> bytes:
    """The gzip members of ``data``, decompressed; 413 as soon as the output would pass ``limit`` bytes (zlib is
    asked for at most limit + 1 bytes, so a small bomb never expands in memory), 400 for invalid or cut gzip."""
    out = bytearray()
    rest = data
    while rest:
        member = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        try:
            out += member.decompress(rest, limit + 1 - len(out))
        except zlib.error as exc:
            raise _body_error("invalid_gzip", f"the body is labelled Content-Encoding: gzip but is not gzip ({exc})") \
                from None
        if len(out) > limit:
            raise _TooLarge()
        if not member.eof:
            raise _body_error("invalid_gzip", "the gzip body ends before its end")
        rest = member.unused_data  # the next member, if any (concatenated gzip members are one stream)
    return bytes(out)


def json_response(body: object, status: int = 200) -> Response:
    """Serialize with orjson; numpy arrays are written directly, NaN entries as null. A response estimated
    larger than a few chunks is streamed a piece at a time (json_body.encode_chunks), so that the worker holds
    one piece of the document, not all of it."""
    if json_body.estimated_size(body) > 4 * json_body.CHUNK_BYTES:
        return current_app.response_class(json_body.encode_chunks(body), status=status, mimetype="application/json")
    return current_app.response_class(json_body.encode(body), status=status, mimetype="application/json")

"""Request and response plumbing shared by the routes: JSON in through a pydantic model, JSON out via orjson."""

from __future__ import annotations

from typing import TypeVar

from flask import Response, current_app, request
from pydantic import BaseModel, ValidationError
from werkzeug.exceptions import RequestEntityTooLarge, UnsupportedMediaType

from schemas.errors import from_validation_error
from schemas.limits import Limits
from service.wire import json_body

M = TypeVar("M", bound=BaseModel)

# Room beyond the numbers of the arrays, for keys and scalar fields; and the objects and strings no valid
# request needs more of (64 layers, 500 submissions of ~30 keys each, their names and options).
_OTHER_VALUES = 65_536
_MAX_OBJECTS = 8_192
_MAX_STRINGS = 65_536


def structure_caps(limits: Limits) -> json_body.Structure:
    """The structural counts a body may have, from the request limits: a grading body holds the network's
    arrays and as many submitted numbers again, so twice ``max_elements`` numbers; a row of a matrix holds at
    least one number, but a million single-number rows already cost ~100 MB of Python objects, so arrays are
    capped at max(2^20, max_elements / 4)."""
    return json_body.Structure(values=2 * limits.max_elements + _OTHER_VALUES,
                               arrays=max(1 << 20, limits.max_elements // 4),
                               objects=_MAX_OBJECTS, strings=_MAX_STRINGS)


def parse_body(model: type[M]) -> M:
    """The request body validated as ``model``: 415 unless JSON, 413 over the size limit (Werkzeug refuses it
    before reading), 400 for malformed JSON, 422 for a body over the structural caps or that does not fit the
    model."""
    if not request.is_json:
        got = request.mimetype or "no Content-Type"
        raise UnsupportedMediaType(f"send the body as application/json (got {got})")
    body = _read_body()
    value = json_body.decode(body, structure_caps(current_app.config["SETTINGS"].limits()))
    del body  # the decoded value replaces it: a 32 MiB body is not kept through validation and the engine
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        raise from_validation_error(exc) from None


def _read_body() -> bytes:
    """The raw body, never more than MAX_CONTENT_LENGTH bytes of it read."""
    if request.content_length is not None:
        return request.get_data(cache=False)  # Werkzeug refuses a larger declared length with 413 unread
    # Chunked: no length up front, and Werkzeug would silently cut the body at the limit. Read one byte past the
    # limit from the server's (de-chunked) input to tell a body at the limit from a larger one.
    limit = current_app.config["MAX_CONTENT_LENGTH"]
    body = request.environ["wsgi.input"].read(limit + 1)
    if len(body) > limit:
        raise RequestEntityTooLarge()
    return body


def json_response(body: object, status: int = 200) -> Response:
    """Serialize with orjson; numpy arrays are written directly, NaN entries as null. A response estimated
    larger than a few chunks is streamed a piece at a time (json_body.encode_chunks), so that the worker holds
    one piece of the document, not all of it."""
    if json_body.estimated_size(body) > 4 * json_body.CHUNK_BYTES:
        return current_app.response_class(json_body.encode_chunks(body), status=status, mimetype="application/json")
    return current_app.response_class(json_body.encode(body), status=status, mimetype="application/json")

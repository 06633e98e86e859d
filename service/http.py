"""Request and response plumbing shared by the routes: JSON in through a pydantic model, JSON out via orjson."""

from __future__ import annotations

from typing import TypeVar

import orjson
from flask import Response, current_app, request
from pydantic import BaseModel, ValidationError
from werkzeug.exceptions import RequestEntityTooLarge, UnsupportedMediaType

from schemas.errors import from_validation_error

M = TypeVar("M", bound=BaseModel)


def parse_body(model: type[M]) -> M:
    """The request body validated as ``model``: 415 unless JSON, 413 over the size limit (Werkzeug refuses it
    before reading), 400 for malformed JSON, 422 for a body that does not fit the model."""
    if not request.is_json:
        got = request.mimetype or "no Content-Type"
        raise UnsupportedMediaType(f"send the body as application/json (got {got})")
    body = _read_body()
    try:
        return model.model_validate_json(body)
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
    """Serialize with orjson; numpy arrays are written directly, NaN entries as null."""
    return current_app.response_class(orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY), status=status,
                                      mimetype="application/json")

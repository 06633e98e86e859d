"""The one error format (RFC 9457 problem details) and the conversion of validation failures into it."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, ValidationError

from schemas.arrays import MORE_ERRORS
from schemas.layers import KIND_NAMES, field_owners

PROBLEM_TYPE_PREFIX = "urn:gradient-service:problem:"


class ErrorItem(BaseModel):
    """One thing wrong with a request: where, why, and a stable machine-readable code."""

    location: str = Field(description="Where in the request, e.g. `layers[1].W`, `X[0][3]`, `body`, `header.Content-Type`.")
    message: str = Field(description="What is wrong and what to send instead.")
    type: str = Field(description="Stable code, e.g. `shape_mismatch`, `float_type`, `extra_forbidden`.")


class Problem(BaseModel):
    """RFC 9457 problem details, used for every error response (4xx and 5xx alike)."""

    type: str = Field(description="URI reference naming the problem kind.")
    title: str = Field(description="Short summary of the problem kind.")
    status: int = Field(description="The HTTP status code.")
    detail: str = Field(description="What went wrong in this request.")
    instance: str | None = Field(default=None, description="The request path.")
    errors: list[ErrorItem] = Field(default_factory=list, description="Each located problem.")
    request_id: str | None = Field(default=None, description="The X-Request-ID of the request, for the logs.")


class InvalidRequest(Exception):
    """A request that parsed but cannot be served; carries located error items and the status (422 or 400).
    ``truncated``: more problems were found than ``errors`` holds (their search stopped at a cap)."""

    def __init__(self, errors: list[ErrorItem], status: int = 422, title: str = "Invalid request",
                 slug: str = "validation-error", truncated: bool = False):
        super().__init__("; ".join(f"{e.location}: {e.message}" for e in errors[:10]))
        self.errors, self.status, self.title, self.slug = errors, status, title, slug
        self.truncated = truncated


# Field names people send for ours (other libraries' and the course's spellings).
FIELD_HINTS = {"alpha": "negative_slope", "slope": "negative_slope", "lambda": "l2", "lambd": "l2",
               "keep_probability": "keep_prob", "activation_function": "activation", "loss": "cost",
               "weights": "W", "bias": "b", "labels": "Y", "inputs": "X"}


def _words(names: list[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def format_location(loc: tuple[Any, ...], field_named_last: bool = False) -> str:
    """('layers', 1, 'W', 0, 3) -> 'layers[1].W[0][3]'; () -> 'body'.

    pydantic puts the tag of a layer union (the kind: 'dense') into the location after the index; it is dropped,
    except as the last part of an error about a field name (``field_named_last``), where it is the client's key.
    """
    out = ""
    last = len(loc) - 1
    for i, part in enumerate(loc):
        if isinstance(part, int):
            out += f"[{part}]"
        elif not _is_tag(loc, i) or (field_named_last and i == last):
            out += f".{part}" if out else str(part)
    return out or "body"


def _is_tag(loc: tuple[Any, ...], i: int) -> bool:
    """A kind's name right after a layer's index (layers[1].dense), or after a step route's ``layer``: the union
    tag."""
    if i >= 1 and loc[i - 1] == "layer" and loc[i] in KIND_NAMES:
        return True
    return i >= 2 and loc[i - 2] == "layers" and isinstance(loc[i - 1], int) and loc[i] in KIND_NAMES


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f"the string {value[:40]!r}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return repr(value)[:40]


def _message(err: dict[str, Any]) -> str:
    kind, value = err["type"], err.get("input")
    if kind in ("float_type", "float_parsing"):
        return f"expected a number, got {_json_kind(value)}"
    if kind == "finite_number":
        return "expected a finite number: NaN, Infinity and numbers beyond float64's range are not allowed"
    if kind == "extra_forbidden":
        name = err["loc"][-1]
        owners = field_owners(name)
        if name in FIELD_HINTS:
            hint = f"; did you mean {FIELD_HINTS[name]!r}?"
        elif owners and len(err["loc"]) >= 2 and err["loc"][-2] in KIND_NAMES:
            hint = (f" for a {err['loc'][-2]} layer: it is a field of {_words(owners)} layers (set `type` to "
                    f"the layer's kind)")
        else:
            hint = " (unknown fields are rejected)"
        return f"unknown field {name!r}{hint}"
    if kind == "union_tag_invalid" or _unknown_kind(err):
        tag = err["ctx"]["tag"] if kind == "union_tag_invalid" else err["input"]["type"]
        shown = repr(tag) if isinstance(tag, str) else _json_kind(tag)
        return f"unknown layer type {shown}: the kinds are {', '.join(KIND_NAMES)} (absent means dense)"
    if kind == "missing":
        return f"required field {err['loc'][-1]!r} is missing"
    if kind in ("list_type", "model_type", "layer_type", "dict_type", "model_attributes_type", "string_type",
                "bool_type", "int_type"):
        return f"{err['msg'].rstrip('.')}, got {_json_kind(value)}"
    if kind == "too_short":
        return "must not be empty"
    if kind == "literal_error":
        return f"got {_json_kind(value)}: {err['msg']}"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        return f"got {_json_kind(value)}: {err['msg']}"
    return err["msg"]


def from_validation_error(exc: ValidationError) -> InvalidRequest:
    """pydantic's errors -> InvalidRequest (422). An array's ``more_errors`` marker is not an error item: it marks
    the request ``truncated``."""
    errors = exc.errors(include_url=False)
    truncated = any(e["type"] == MORE_ERRORS for e in errors)
    items = [ErrorItem(location=_location(e), message=_message(e), type=_type(e))
             for e in errors if e["type"] != MORE_ERRORS]
    return InvalidRequest(items, truncated=truncated)


# pydantic's names -> ours: a layer that is not an object is a model_type error as any other object; an unknown
# layer type an unknown_kind error at its `type`.
_TYPES = {"layer_type": "model_type", "union_tag_invalid": "unknown_kind"}


def _unknown_kind(err: dict[str, Any]) -> bool:
    """A layer object whose ``type`` names no kind (pydantic reports it as the union's custom error)."""
    value = err.get("input")
    return err["type"] == "layer_type" and isinstance(value, dict) and value.get("type", "dense") not in KIND_NAMES


def _type(err: dict[str, Any]) -> str:
    return "unknown_kind" if _unknown_kind(err) else _TYPES.get(err["type"], err["type"])


def _location(err: dict[str, Any]) -> str:
    location = format_location(err["loc"], err["type"] in ("extra_forbidden", "missing"))
    return f"{location}.type" if err["type"] == "union_tag_invalid" or _unknown_kind(err) else location

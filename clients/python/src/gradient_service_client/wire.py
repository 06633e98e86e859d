"""numpy <-> the service's JSON, both ways, for any route and any key name.

Out: numpy arrays and scalars anywhere in a body become nested lists and numbers (NaN as null, which the service
reads as "no value": a submitted null grades ``not_a_number``); everything else passes through as it is.

In: every JSON object becomes a ``Result`` (a dict with attribute access), and every rectangular list of numbers
holding at least one float becomes a float64 ndarray (null entries as NaN). Lists of integers only stay lists:
those are shapes, indices and counts (``expected_shape``, ``worst.index``, a warning's ``entries``), whereas the
service writes every float64 array with a decimal point or an exponent. JSON numbers are read as Python floats,
which are float64, so the arrays hold exactly the bits the service computed.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

try:  # orjson writes numpy arrays directly and ~10x faster; optional
    import orjson
except ImportError:  # pragma: no cover - depends on the environment
    orjson = None


class Result(dict):
    """A JSON object of a response: a dict whose fields are also attributes (``result.gradients.dW1`` is
    ``result["gradients"]["dW1"]``). A field named like a dict method (``keys``, ``items``) wins over the method
    as an attribute; ``dict.keys(result)`` still reaches the method."""

    __slots__ = ()

    def __getattribute__(self, name: str) -> Any:
        if not name.startswith("_") and dict.__contains__(self, name):
            return dict.__getitem__(self, name)
        return object.__getattribute__(self, name)

    def __getattr__(self, name: str) -> Any:
        raise AttributeError(f"this result has no field {name!r}; its fields are {sorted(dict.keys(self))}")

    def __dir__(self):
        return sorted(set(super().__dir__()) | {k for k in dict.keys(self) if k.isidentifier()})


def to_wire(value: Any) -> Any:
    """A request body with numpy inside -> plain JSON values (arrays as nested lists, NaN as None)."""
    if isinstance(value, np.ndarray):
        if value.dtype.kind in "fc":
            value = value.astype(np.float64, copy=False)
            if not np.isfinite(value).all():
                return _with_nulls(value)
        return value.tolist()
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {str(k): to_wire(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_wire(v) for v in value]
    return value


def _with_nulls(a: np.ndarray) -> Any:
    """NaN -> None; an infinity stays a float so that encoding refuses it (JSON has no Infinity)."""
    out = a.astype(object)
    out[np.isnan(a)] = None
    return out.tolist()


def encode(body: Any) -> bytes:
    """The JSON bytes of a request body (numpy allowed anywhere). Infinity is refused with a ValueError: the
    service would answer 422 to it, and JSON cannot carry it."""
    plain = to_wire(body)
    if orjson is not None:
        _refuse_infinity(plain)
        return orjson.dumps(plain)
    return json.dumps(plain, allow_nan=False, separators=(",", ":")).encode()


def _refuse_infinity(value: Any) -> None:
    # orjson writes infinities as null silently; a body with one is a mistake the caller should see.
    if isinstance(value, float) and value in (float("inf"), float("-inf")):
        raise ValueError("Out of range float values are not JSON compliant: the body holds an infinity")
    if isinstance(value, dict):
        for v in value.values():
            _refuse_infinity(v)
    elif isinstance(value, list) and value and isinstance(value[0], (list, dict, float)):
        for v in value:
            _refuse_infinity(v)


def decode(content: bytes) -> Any:
    """Response bytes -> Results, ndarrays and plain values (see the module docstring)."""
    value = orjson.loads(content) if orjson is not None else json.loads(content)
    return from_wire(value)


def from_wire(value: Any) -> Any:
    if isinstance(value, dict):
        return Result((k, from_wire(v)) for k, v in value.items())
    if isinstance(value, list):
        array = _float_array(value)
        return array if array is not None else [from_wire(v) for v in value]
    return value


def _first_leaf(value: list) -> Any:
    while isinstance(value, list) and value:
        value = value[0]
    return value


def _float_array(value: list) -> np.ndarray | None:
    """A float64 array when ``value`` is a rectangular list of numbers (and nulls) with a float among them."""
    leaf = _first_leaf(value)
    if isinstance(leaf, (list, dict, str, bool)):
        return None
    try:
        a = np.array(value)
    except ValueError:  # ragged
        return None
    if a.dtype.kind == "f":
        return a
    if a.dtype.kind != "O":  # integers (shapes, indices), booleans, strings
        return None
    try:  # nulls among the numbers: None -> NaN
        a = np.array(value, dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return a if _has_float(value) else None


def _has_float(value: Any) -> bool:
    if isinstance(value, list):
        return any(_has_float(v) for v in value)
    return isinstance(value, float)

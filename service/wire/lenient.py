"""The standard library's JSON parser with numbers float64 cannot hold read as markers instead of refused.

orjson refuses NaN, Infinity and numbers beyond float64's range (1e400, a 400-digit integer) as malformed JSON.
For a client they are numbers; this service answers them with a 422 at their location. So a body (or a piece
of one) orjson refused is parsed again here, each such number becoming one of three shared ``NonFinite``
instances, which the validators report as "not a finite number".
"""

from __future__ import annotations

import json
from typing import Any


class NonFinite(float):
    """A number float64 cannot hold, or a NaN / Infinity token: a float subclass holding inf, -inf or nan (strict
    float validation reports it as not finite) and a distinct type (array validation never takes it for a null
    entry). Three shared instances: eight million NaN tokens cost eight million pointers, not objects."""


NAN, INF, NEG_INF = NonFinite("nan"), NonFinite("inf"), NonFinite("-inf")


def _constant(token: str) -> NonFinite:
    return NAN if token == "NaN" else NEG_INF if token.startswith("-") else INF


def _float(token: str) -> float:
    value = float(token)
    if value == float("inf"):
        return INF
    return NEG_INF if value == float("-inf") else value


def _int(token: str) -> int | float:
    # Integers beyond float64 (~309 digits) become markers before int() is called: int() of a 5000-digit token
    # would trip Python's limit on integer string conversion.
    if len(token) > 310:
        return NEG_INF if token.startswith("-") else INF
    value = int(token)
    if abs(value) >= 2 ** 1024:
        return INF if value > 0 else NEG_INF
    return value


def loads(data: bytes, **kwargs: Any) -> Any:
    """json.loads of UTF-8 bytes (decoded explicitly: json.loads would guess UTF-16 from a leading \\xff\\xfe),
    with the markers. ValueError (JSONDecodeError, UnicodeDecodeError) or RecursionError when malformed."""
    return json.loads(data.decode("utf-8"), parse_constant=_constant, parse_float=_float, parse_int=_int, **kwargs)

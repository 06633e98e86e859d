"""Shared wire types: finite floats, and the array fields (``schemas.arrays``)."""

from __future__ import annotations

from typing import Annotated

from pydantic import AllowInfNan, Strict

from schemas.arrays import Matrix, MatrixOrVector, NullableMatrixOrVector, Vector  # noqa: F401  (re-exported)

# Strict: booleans and numeric strings are refused (lax mode would read true as 1.0); ints are accepted.
FiniteFloat = Annotated[float, Strict(), AllowInfNan(False)]

"""Shared wire types: finite floats, and the array fields (``schemas.arrays``)."""

from __future__ import annotations

from typing import Annotated, Any

import numpy as np
from pydantic import AllowInfNan, Strict
from pydantic_core import PydanticCustomError

from schemas.arrays import Matrix, MatrixOrVector, NullableMatrixOrVector, Vector  # noqa: F401  (re-exported)

# Strict: booleans and numeric strings are refused (lax mode would read true as 1.0); ints are accepted.
FiniteFloat = Annotated[float, Strict(), AllowInfNan(False)]


def to_matrix(rows: list[list[float]]) -> np.ndarray:
    """Equal-length rows -> a float64 (rows, cols) array; a ragged row is an error naming it."""
    width = len(rows[0])
    for i, row in enumerate(rows):
        if len(row) != width:
            raise PydanticCustomError(
                "ragged_matrix", "ragged matrix: row {row} has {got} entries but row 0 has {want}",
                {"row": i, "got": len(row), "want": width})
    return np.asarray(rows, dtype=np.float64)


def to_vector(values: list[float]) -> np.ndarray:
    """A list of numbers -> a 1-D float64 array."""
    return np.asarray(values, dtype=np.float64)


# Tags of a pydantic matrix-or-vector union (the submitted arrays of schemas.grading); pydantic puts them into
# error locations, and locations drop them.
UNION_TAGS = frozenset({"matrix", "vector"})


def matrix_or_vector(value: Any) -> str | None:
    """The union tag of a raw JSON value: ``matrix`` when its first entry is a list, ``vector`` otherwise."""
    if not isinstance(value, list):
        return None
    return "matrix" if value and isinstance(value[0], list) else "vector"


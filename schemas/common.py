"""Shared wire types: finite float64 matrices and vectors, and the located error items."""

from __future__ import annotations

from typing import Annotated, Any, Union

import numpy as np
from annotated_types import Len
from pydantic import AfterValidator, AllowInfNan, Discriminator, Strict, Tag
from pydantic_core import PydanticCustomError

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


# A (rows, cols) matrix as a list of equal-length rows of finite numbers; validated into a float64 ndarray.
Matrix = Annotated[list[Annotated[list[FiniteFloat], Len(min_length=1)]], Len(min_length=1), AfterValidator(to_matrix)]
# A flat list of finite numbers; validated into a 1-D float64 ndarray.
Vector = Annotated[list[FiniteFloat], Len(min_length=1), AfterValidator(to_vector)]

# Tags of the matrix-or-vector union; pydantic puts them into error locations, and locations drop them.
UNION_TAGS = frozenset({"matrix", "vector"})


def matrix_or_vector(value: Any) -> str | None:
    """The union tag of a raw JSON value: ``matrix`` when its first entry is a list, ``vector`` otherwise."""
    if not isinstance(value, list):
        return None
    return "matrix" if value and isinstance(value[0], list) else "vector"


# Either a matrix (list of rows) or a flat vector; which one is decided by the first entry.
MatrixOrVector = Annotated[
    Union[Annotated[Matrix, Tag("matrix")], Annotated[Vector, Tag("vector")]],
    Discriminator(matrix_or_vector, custom_error_type="matrix_or_vector_type",
                  custom_error_message="expected a list of numbers or a list of rows of numbers"),
]

"""Array fields of the wire contract: nested lists of finite numbers (or numpy arrays) -> float64 ndarrays.

One validator per array field, instead of pydantic's per-entry ``list[list[float]]``: when every entry is a plain
number (checked with ``set(map(type, row))``, C speed), the nested lists become one float64 array in a single
``np.array`` call, and pydantic builds no per-entry objects. Only an array that holds something else is walked
entry by entry, to report each bad entry at its own location (``X[0][3]``), at most ``MAX_ERRORS_PER_ARRAY`` of
them.

Numpy arrays are accepted as they are (the binary tensor protocol and in-process callers send them): any integer
or float dtype, widened to float64; booleans and objects are refused.

The JSON schema of a field is the nested-list form the JSON body uses: ``{"type": "array", "items": ..., "minItems":
1}`` around ``{"type": "number"}`` (or number-or-null for ``nullable`` arrays).
"""

from __future__ import annotations

import math
from typing import Annotated, Any

import numpy as np
from pydantic import BeforeValidator, PlainValidator, ValidationError, WithJsonSchema
from pydantic_core import InitErrorDetails, PydanticCustomError

MAX_ERRORS_PER_ARRAY = 100
_NUMBER_TYPES = frozenset({float, int})
_NULLABLE_TYPES = _NUMBER_TYPES | {type(None)}


# The type of the item that says an array's error list was cut (schemas.errors counts it, never lists it).
MORE_ERRORS = "more_errors"


class ArrayErrors:
    """Located errors of one array: at most MAX_ERRORS_PER_ARRAY, then one MORE_ERRORS marker, and no more work.

    Also what a decoder hands over for an array it found invalid without building it (``service.wire``): the
    validator raises these errors at the field's location."""

    def __init__(self, shape: tuple[int, ...] | None = None) -> None:
        self.items: list[InitErrorDetails] = []
        self.shape = shape  # a decoded array's shape when only its entries are wrong (None: not rectangular)

    def add(self, loc: tuple[int, ...], kind: str, message: str, value: Any, context: dict | None = None) -> None:
        if len(self.items) < MAX_ERRORS_PER_ARRAY:
            error = PydanticCustomError(kind, message, context) if context else PydanticCustomError(kind, message)
            self.items.append(InitErrorDetails(type=error, loc=loc, input=value))
        elif len(self.items) == MAX_ERRORS_PER_ARRAY:
            marker = PydanticCustomError(MORE_ERRORS, "more entries of this array are invalid; only the first "
                                                      "{n} are reported", {"n": MAX_ERRORS_PER_ARRAY})
            self.items.append(InitErrorDetails(type=marker, loc=(), input=None))

    @property
    def full(self) -> bool:
        return len(self.items) > MAX_ERRORS_PER_ARRAY

    def raise_any(self) -> None:
        if self.items:
            raise ValidationError.from_exception_data("array", self.items)


class NullEntries:
    """An array decoded with null entries (NaN in ``array``): valid for nullable fields, an error elsewhere."""

    def __init__(self, array: np.ndarray):
        self.array = array

    def __repr__(self) -> str:
        return "an array with null entries"


def ragged(errors: ArrayErrors, node: Any, loc: tuple[int, ...], got: int, width: int, rank: int) -> None:
    """Record that the list at ``loc`` has ``got`` entries where its first sibling has ``width``."""
    if rank == 2:
        errors.add((), "ragged_matrix", "ragged matrix: row {row} has {got} entries but row 0 has {want}", node,
                   {"row": loc[-1] if loc else 0, "got": got, "want": width})
    else:
        errors.add((), "ragged_array", "ragged array: {at} has {got} entries but {first} has {want}", node,
                   {"at": _path(loc) or "the array", "got": got, "first": _path((0,) * len(loc)),
                    "want": width})


def _path(flat: tuple[int, ...]) -> str:
    return "".join(f"[{i}]" for i in flat)


def _rank(value: list) -> tuple[int, tuple[int, ...] | None]:
    """The depth of lists along the first entries, and the location of the first empty list met (or None)."""
    rank, v, loc = 0, value, ()
    while isinstance(v, list):
        if not v:
            return rank, loc
        rank += 1
        v = v[0]
        loc += (0,)
    return rank, None


def _loc(k: int, widths: list[int]) -> tuple[int, ...]:
    """The location of the k-th list at the depth below ``widths`` (every level above it is rectangular)."""
    return tuple(int(i) for i in np.unravel_index(k, widths)) if widths else ()


def _check_levels(value: list, rank: int, errors: ArrayErrors) -> tuple[list[list], list[int]] | None:
    """Every level above the entries: lists, none empty, equal lengths. Returns the innermost rows (lists of
    entries, in row-major order) and the widths of the levels above them, or None after recording why the array
    is not rectangular. No per-row location is built: ``_loc`` derives one from a row's index when needed."""
    nodes: list[list] = [value]
    widths: list[int] = []
    for _ in range(rank - 1):
        width = len(nodes[0])
        children: list[list] = []
        for k, node in enumerate(nodes):
            if len(node) != width:
                ragged(errors, node, _loc(k, widths), len(node), width, rank)
                return None
            if set(map(type, node)) != {list} or not all(node):
                for i, child in enumerate(node):
                    if type(child) is not list:
                        errors.add(_loc(k, widths) + (i,), "list_type", "Input should be a valid list", child)
                    elif not child:
                        errors.add(_loc(k, widths) + (i,), "too_short", "must not be empty", child)
                    if errors.full:
                        return None
            children.extend(node)
        if errors.items:
            return None
        nodes = children
        widths.append(width)
    width = len(nodes[0])
    if rank >= 2:
        for k, node in enumerate(nodes):
            if len(node) != width:
                ragged(errors, node, _loc(k, widths), len(node), width, rank)
                return None
    return nodes, widths


def structure_shape(value: Any) -> tuple[int, ...] | ArrayErrors:
    """The shape of the levels of a nested list, read with the rank of its first path (the deepest entries are not
    looked at), or the errors of the first level that is not rectangular, as the validator reports them. A value
    that is not a list has shape ()."""
    if type(value) is not list:
        return ()
    errors = ArrayErrors()
    rank, empty_at = _rank(value)
    if empty_at is not None:
        errors.add(empty_at, "too_short", "must not be empty", [])
        return errors
    levels = _check_levels(value, rank, errors)
    if levels is None:
        return errors
    rows, widths = levels
    return tuple(widths) + (len(rows[0]),)


def _entry_errors(rows: list[list], widths: list[int], nullable: bool, errors: ArrayErrors) -> None:
    """Each entry that is not a finite number (or null, for nullable arrays), with its location."""
    for k, row in enumerate(rows):
        loc = None
        for j, v in enumerate(row):
            if type(v) is float and v - v == 0 or type(v) is int:
                continue  # the common case first: a finite float or an int
            loc = loc or _loc(k, widths)
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                if v is None and nullable:
                    continue
                errors.add(loc + (j,), "float_type", "Input should be a valid number", v)
            elif isinstance(v, float) and not np.isfinite(v):
                if nullable and v != v and type(v) is float:
                    continue  # a NaN float from an in-process caller: null
                errors.add(loc + (j,), "finite_number", "Input should be a finite number", v)
            elif isinstance(v, int) and abs(v) >= 2 ** 1024:
                errors.add(loc + (j,), "finite_number", "Input should be a finite number", v)
            if errors.full:
                return


_DECODED = (np.ndarray, NullEntries, ArrayErrors)


def _shape_of(entry: Any) -> tuple[int, ...] | None:
    if isinstance(entry, np.ndarray):
        return entry.shape
    if isinstance(entry, NullEntries):
        return entry.array.shape
    if isinstance(entry, ArrayErrors):
        return entry.shape
    return (len(entry),) if isinstance(entry, list) else None


def _read_as(rank: int, ndims: tuple[int, ...]) -> int:
    """The rank an array of ``rank`` dimensions is read as: its own when allowed, else the nearest allowed one
    below it (a list nested too deep reports its entries as "not a number"), else the smallest (a flat list sent
    for a matrix reports its entries as "not a list")."""
    return rank if rank in ndims else max((n for n in ndims if n <= rank), default=min(ndims))


def _entry_rank(entry: Any) -> int:
    """The rank of one entry of a list: a decoded array's, or a nested list's along its first entries."""
    if isinstance(entry, np.ndarray):
        return entry.ndim
    if isinstance(entry, NullEntries):
        return entry.array.ndim
    if isinstance(entry, ArrayErrors):
        return len(entry.shape) if entry.shape else 1
    return _rank(entry)[0] if isinstance(entry, list) else 0


def _from_parts(value: list, ndims: tuple[int, ...], nullable: bool) -> np.ndarray:
    """A list whose entries a decoder already converted (json_dense, for a ragged array or one with few rows):
    each entry must be an array one dimension lower, all of one shape. Checked in the order nested lists are:
    entries that are not arrays, then lengths, then the entries' own errors."""
    # As for nested lists, the first entry decides: a number makes it a vector (if allowed), whose array entries
    # are "not a number"; an array makes it one dimension more than that array.
    is_array = [isinstance(entry, (*_DECODED, list)) for entry in value]
    target = _read_as(1 + _entry_rank(value[0]), ndims) if is_array[0] or 1 not in ndims else 1
    errors = ArrayErrors()
    for i, (entry, array) in enumerate(zip(value, is_array)):
        if target == 1 and array:
            errors.add((i,), "float_type", "Input should be a valid number", [])
        elif target > 1 and not array:
            errors.add((i,), "list_type", "Input should be a valid list", entry)
    errors.raise_any()
    if target == 1:
        return _from_list(value, (1,), nullable)  # unreachable in practice: some entry was a decoded array
    shapes = [_shape_of(entry) for entry in value]
    if shapes[0] is not None:
        for i, shape in enumerate(shapes):
            if shape is not None and shape[0] != shapes[0][0]:
                ragged(errors, None, (i,), shape[0], shapes[0][0], target)
                errors.raise_any()
    inner = _validator((target - 1,), nullable)
    parts: list[np.ndarray] = []
    for i, entry in enumerate(value):
        try:
            parts.append(inner(entry))
        except ValidationError as exc:
            for e in exc.errors(include_url=False):
                errors.add((i, *e["loc"]), e["type"], e["msg"], e.get("input"))
    errors.raise_any()
    for i, part in enumerate(parts):
        if part.shape != parts[0].shape:
            ragged(errors, None, (i,), part.shape[0], parts[0].shape[0], target)
            errors.raise_any()
    return np.stack(parts)


def _from_list(value: list, ndims: tuple[int, ...], nullable: bool) -> np.ndarray:
    if value and any(isinstance(entry, _DECODED) for entry in value):
        return _from_parts(value, ndims, nullable)
    errors = ArrayErrors()
    rank, empty_at = _rank(value)
    if empty_at is not None and rank + 1 <= max(ndims):
        errors.add(empty_at, "too_short", "must not be empty", [])
        errors.raise_any()
    # The rank the array is read as: the one it has when allowed, else the nearest allowed one (so that a flat
    # list sent for a matrix reports its entries as "not a list", and a list nested too deep "not a number").
    target = _read_as(rank, ndims)
    if target > rank:
        # Entries where lists were expected, at the last level the first path reached.
        levels = _check_levels(value, rank, errors) if rank >= 1 else None
        if levels is not None:
            rows, widths = levels
            for k, row in enumerate(rows):
                for j, v in enumerate(row):
                    if type(v) is not list:
                        errors.add(_loc(k, widths) + (j,), "list_type", "Input should be a valid list", v)
                        if errors.full:
                            break
        errors.raise_any()
    levels = _check_levels(value, target, errors)
    errors.raise_any()
    rows, widths = levels
    allowed = _NULLABLE_TYPES if nullable else _NUMBER_TYPES
    types: set[type] = set()
    for row in rows:
        types.update(map(type, row))
    if types <= allowed:
        try:
            array = np.array(value, dtype=np.float64)
        except OverflowError:  # an integer beyond float64
            array = None
        if array is not None and _finite_enough(array, nullable):
            return array
    _entry_errors(rows, widths, nullable, errors)
    errors.raise_any()
    return np.array(value, dtype=np.float64)


def _finite_enough(array: np.ndarray, nullable: bool) -> bool:
    """No inf anywhere, and no NaN unless the array is nullable (NaN there is a null entry)."""
    with np.errstate(over="ignore", invalid="ignore"):  # a sum of finite entries may overflow: then look closer
        total = np.add.reduce(array, axis=None)
    if np.isfinite(total):
        return True
    if nullable:
        return not np.isinf(array).any()
    return bool(np.isfinite(array).all())


def _from_ndarray(value: np.ndarray, ndims: tuple[int, ...], nullable: bool) -> np.ndarray:
    if value.dtype.kind == "O":
        return _from_list(value.tolist(), ndims, nullable)
    if value.dtype.kind not in "fiu":
        raise PydanticCustomError("float_type", "expected an array of numbers, got an array of {dtype}",
                                  {"dtype": str(value.dtype)})
    if value.ndim not in ndims:
        _rank_errors(value, ndims)
    if value.size == 0:
        raise PydanticCustomError("too_short", "must not be empty")
    array = np.ascontiguousarray(value, dtype=np.float64)
    if not _finite_enough(array, nullable):
        bad = ~np.isfinite(array) if not nullable else np.isinf(array)
        errors = ArrayErrors()
        for index in np.argwhere(bad)[:MAX_ERRORS_PER_ARRAY]:
            errors.add(tuple(int(i) for i in index), "finite_number", "Input should be a finite number",
                       float(array[tuple(index)]))
        errors.raise_any()
    return array


def _rank_errors(value: np.ndarray, ndims: tuple[int, ...]) -> None:
    """An array of a rank the field does not take, reported as its nested lists would be: a number where a list
    belongs at each entry of a lower rank; a list where a number belongs at each entry of the field's rank."""
    rank = value.ndim
    target = _read_as(rank, ndims)
    errors = ArrayErrors()
    if target > rank:
        for index in np.ndindex(*value.shape):
            errors.add(index, "list_type", "Input should be a valid list", float(value[index]))
            if errors.full:
                break
    else:
        for index in np.ndindex(*value.shape[:target]):
            errors.add(index, "float_type", "Input should be a valid number", [])
            if errors.full:
                break
    errors.raise_any()


def _validator(ndims: tuple[int, ...], nullable: bool):
    kinds = {1: "a list of numbers", 2: "a list of rows of numbers"}
    # An image batch (4-D) is a nested list of rows too: the message names the two forms people send by hand.
    expected = " or ".join(kinds[n] for n in ndims if n in kinds)

    def validate(value: Any) -> np.ndarray:
        if isinstance(value, np.ndarray):
            return _from_ndarray(value, ndims, nullable)
        if isinstance(value, ArrayErrors):
            value.raise_any()
        if isinstance(value, NullEntries):
            if nullable:
                return _from_ndarray(value.array, ndims, nullable)
            errors = ArrayErrors()
            for index in np.argwhere(np.isnan(value.array))[:MAX_ERRORS_PER_ARRAY + 1]:
                errors.add(tuple(int(i) for i in index), "float_type", "Input should be a valid number", None)
            errors.raise_any()
        if type(value) is not list:
            if ndims in ((1, 2), (1, 2, 4)):  # a matrix or vector (or an image batch): its own message
                raise PydanticCustomError("matrix_or_vector_type", "expected " + expected +
                                          (" (null allowed)" if nullable else ""))
            raise PydanticCustomError("list_type", "Input should be a valid list")
        return _from_list(value, ndims, nullable)

    return validate


def _json_schema(ndims: tuple[int, ...], nullable: bool) -> dict:
    number: dict = {"anyOf": [{"type": "number"}, {"type": "null"}]} if nullable else {"type": "number"}
    forms = []
    for n in ndims:
        schema = number
        for _ in range(n):
            schema = {"type": "array", "items": schema, "minItems": 1}
        forms.append(schema)
    return forms[0] if len(forms) == 1 else {"anyOf": forms}


def array_type(*ndims: int, nullable: bool = False) -> Any:
    """An array field of ``ndims`` dimensions (one of them), validated into a C-contiguous float64 ndarray."""
    return Annotated[np.ndarray, PlainValidator(_validator(ndims, nullable)),
                     WithJsonSchema(_json_schema(ndims, nullable))]


def _unstack(value: Any) -> Any:
    """A list of arrays that a decoder read as one array of one more dimension (all entries of one shape) -> the
    list of its entries; the located errors of a decoded array that is invalid as a whole are raised as they are."""
    if isinstance(value, ArrayErrors):
        value.raise_any()
    if isinstance(value, NullEntries):
        return [NullEntries(a) if np.isnan(a).any() else a for a in value.array]
    if isinstance(value, np.ndarray) and value.ndim >= 2:
        return list(value)
    return value


def array_list(item: Any) -> Any:
    """A list of array fields (``item``: an array type, possibly Optional), also accepted as one stacked array."""
    return Annotated[list[item], BeforeValidator(_unstack)]


# A (rows, cols) matrix as a list of equal-length rows of finite numbers.
Matrix = array_type(2)
# A flat list of finite numbers.
Vector = array_type(1)
# Either a matrix or a flat vector; which one is decided by the first entry.
MatrixOrVector = array_type(1, 2)
# A matrix or vector whose entries may also be null (NaN in the array): submitted answers.
NullableMatrixOrVector = array_type(1, 2, nullable=True)


def _scalar_or(array_validator):
    """A number (a 0-d array; null: NaN) or an array validated by ``array_validator``."""

    def validate(value: Any) -> np.ndarray:
        if value is None:
            return np.array(np.nan)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise PydanticCustomError("finite_number", "expected a finite number")
            return np.array(float(value))
        return array_validator(value)

    return validate


def scalar_or_array_type(*ndims: int) -> Any:
    """A submitted value: a number or null (a 0-d array, NaN for null), or an array of ``ndims`` dimensions whose
    entries may be null."""
    schema = {"anyOf": [{"type": "number"}, {"type": "null"}, _json_schema(ndims, True)]}
    return Annotated[np.ndarray, PlainValidator(_scalar_or(_validator(ndims, True))), WithJsonSchema(schema)]

"""One submitted array against its reference: the tolerance rule and the comparison's numbers.

Comparison rule (numpy.isclose), elementwise with the reference ``r`` and the submission ``s``:

    |s - r| <= atol + rtol * |r|

A key is ``correct`` when every graded entry passes. NaN in ``r`` marks an entry not representable in float64
(not graded: anything submitted is accepted there); NaN in ``s`` a null entry.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from service.engine.difference import course_difference  # noqa: F401  (a graded key's difference)

Array = np.ndarray

STATUSES = ("correct", "incorrect", "shape_mismatch", "missing", "not_a_number")
DEFAULT_RTOL = 1e-5
DEFAULT_ATOL = 1e-8


@dataclass(frozen=True)
class Tolerance:
    """|s - r| <= atol + rtol * |r|, elementwise (numpy.isclose with r the reference)."""

    rtol: float = DEFAULT_RTOL
    atol: float = DEFAULT_ATOL

    def violation(self, s: Array, r: Array) -> Array:
        """|s - r| / (atol + rtol |r|), same shape; <= 1 where the entry passes (0/0 is 0, x/0 is inf)."""
        with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
            diff = np.abs(s - r)
            bound = self.atol + self.rtol * np.abs(r)
            ratio = diff / bound
        zero = bound == 0
        if zero.any():
            ratio[zero] = np.where(diff[zero] == 0, 0.0, np.inf)
        return ratio


@dataclass(frozen=True)
class Comparison:
    """One submitted array against its reference.

    ``shape``: the submission's; ``expected_shape``: the reference's. ``reshaped``: the shapes differ only by axes
    of length 1 (say ``(n,)`` for ``(n, 1)``) and the values were compared after reshaping. Errors and the worst
    entry (the largest ``|s - r| / (atol + rtol |r|)`` among the failing entries, an index into ``expected_shape``)
    are ``None`` when the values could not be compared; ``max_abs_error`` and ``max_rel_error`` are also ``None``
    when they exceed float64's range (``errors_overflow``). ``ungraded_entries``: reference entries not
    representable in float64. ``textbook_entries``: entries accepted because they match the course's formula
    evaluated from the rounded A_L (see ``textbook_bounds``).
    """

    status: str
    shape: tuple[int, ...]
    expected_shape: tuple[int, ...]
    reshaped: bool = False
    max_abs_error: float | None = None
    max_rel_error: float | None = None
    difference: float | None = None
    wrong_entries: int | None = None
    entries: int = 0
    worst_index: tuple[int, ...] | None = None
    worst_submitted: float | None = None
    worst_reference: float | None = None
    null_entries: int = 0
    first_null: tuple[int, ...] | None = None
    ungraded_entries: int = 0
    textbook_entries: int = 0
    errors_overflow: bool = False
    values_correct: bool = False


def _squeezed(shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(n for n in shape if n != 1)


def compare(s: Array, r: Array, tol: Tolerance, *, lenient_shapes: bool = False,
            textbook: tuple[Array, Array] | None = None) -> Comparison:
    """Grade ``s`` against ``r`` (any shapes; NaN in ``s`` is a null entry, NaN in ``r`` an ungraded entry, where
    anything submitted is accepted). ``textbook``: (lo, hi), r's shape, an interval of values also accepted per
    entry (NaN: none).

    Status: ``shape_mismatch`` when the shapes differ (unless they differ only by length-1 axes and
    ``lenient_shapes``), else ``not_a_number`` when ``s`` has a null entry where ``r`` is graded, else ``correct``
    or ``incorrect``.
    """
    shape, expected = tuple(s.shape), tuple(r.shape)
    reshaped = False
    if shape != expected:
        if s.size == r.size and _squeezed(shape) == _squeezed(expected):
            s, reshaped = s.reshape(expected), True
        else:
            return Comparison("shape_mismatch", shape, expected)
    graded = ~np.isnan(r)
    all_graded = bool(graded.all())
    nulls = np.isnan(s) if all_graded else np.isnan(s) & graded
    if nulls.any():
        first = tuple(int(i) for i in np.argwhere(nulls)[0])
        status = "shape_mismatch" if reshaped and not lenient_shapes else "not_a_number"
        return Comparison(status, shape, expected, reshaped, null_entries=int(nulls.sum()), first_null=first,
                          entries=int(graded.sum()))
    sg, rg = (s.reshape(-1), r.reshape(-1)) if all_graded else (s[graded], r[graded])
    violation = tol.violation(sg, rg)
    bad = violation > 1
    textbook_entries = 0
    if textbook is not None and bad.any():
        lo, hi = (a.reshape(-1) if all_graded else a[graded] for a in textbook)
        with np.errstate(invalid="ignore"):
            nearest = np.where(np.isnan(lo) | np.isnan(hi), np.nan, np.clip(sg, lo, hi))
            accepted = bad & (tol.violation(sg, nearest) <= 1)
        textbook_entries = int(accepted.sum())
        bad &= ~accepted
    wrong = int(np.count_nonzero(bad))
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        diff = np.abs(sg - rg)
        max_abs = float(diff.max()) if diff.size else 0.0
        nonzero = rg != 0
        max_rel = float(np.max(diff[nonzero] / np.abs(rg[nonzero]))) if nonzero.any() else None
    overflow = not np.isfinite(max_abs) or (max_rel is not None and not np.isfinite(max_rel))
    worst_index = worst_s = worst_r = None
    if wrong:
        flat = int(np.argmax(np.where(bad, violation, -1.0)))
        worst_index = (tuple(int(i) for i in np.unravel_index(flat, expected)) if all_graded
                       else tuple(int(i) for i in np.argwhere(graded)[flat]))
        worst_s, worst_r = float(s[worst_index]), float(r[worst_index])
    values_status = "incorrect" if wrong else "correct"
    status = "shape_mismatch" if reshaped and not lenient_shapes else values_status
    return Comparison(status, shape, expected, reshaped,
                      max_abs_error=max_abs if np.isfinite(max_abs) else None,
                      max_rel_error=max_rel if max_rel is not None and np.isfinite(max_rel) else None,
                      difference=course_difference(sg, rg), wrong_entries=wrong, entries=int(rg.size),
                      worst_index=worst_index, worst_submitted=worst_s, worst_reference=worst_r,
                      ungraded_entries=int(r.size - rg.size), textbook_entries=textbook_entries,
                      errors_overflow=overflow, values_correct=not wrong)

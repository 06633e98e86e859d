"""Grading submissions against a reference: each key compared, notes, and a diagnosis for each wrong key.

Every array is compared first; then the mistaken passes are run once per batch, for the keys some submission got
wrong (``hypotheses.run_variants``); then the wrong keys are diagnosed (``diagnose``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from service.engine.grading.compare import Comparison, Tolerance, compare
from service.engine.grading.diagnose import Diagnosis, diagnose
from service.engine.grading.reference import TEXTBOOK_ULPS, Reference

Array = np.ndarray


@dataclass(frozen=True)
class KeyGrade:
    """One key of one submission: its comparison (None when missing), points, and a diagnosis when wrong."""

    key: str
    status: str
    points: float
    earned: float
    comparison: Comparison | None
    diagnosis: Diagnosis | None
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class SubmissionGrade:
    """Every graded key, the total, and the distinct diagnoses with the keys each explains."""

    keys: list[KeyGrade]
    score: float
    max_score: float
    summary: list[tuple[Diagnosis, list[str]]]


def _needs_diagnosis(cmp: Comparison) -> bool:
    return cmp.status in ("incorrect", "shape_mismatch") and not (cmp.reshaped and cmp.values_correct)


def _compare_key(ref: Reference, name: str, s: Array, tol: Tolerance, lenient_shapes: bool) -> Comparison:
    return compare(s, ref.arrays[name], tol, lenient_shapes=lenient_shapes, textbook=ref.textbook_bounds(name))


def _finish_key(ref: Reference, name: str, s: Array | None, cmp: Comparison | None, tol: Tolerance,
                points: float, lenient_shapes: bool) -> KeyGrade:
    """The grade of one compared key: notes, and the diagnosis of a wrong one."""
    if s is None:
        return KeyGrade(name, "missing", points, 0.0, None, None, (f"{name} was not submitted",))
    R = ref.arrays[name]
    notes: list[str] = []
    diagnosis = None
    if cmp.reshaped:
        if cmp.values_correct and cmp.status == "shape_mismatch":
            diagnosis = Diagnosis("column_vs_vector", f"{name} has the right values in the wrong shape (a vector "
                                  f"where a column was expected, or the reverse)", None,
                                  {"max_abs_error_under_hypothesis": cmp.max_abs_error})
        notes.append(f"{name}: the shape differs from the expected one only by axes of length 1; the values were "
                     f"compared after reshaping" + ("" if lenient_shapes else " (graded as a shape mismatch: the "
                                                    "shape policy is strict)"))
    if cmp.ungraded_entries:
        notes.append(f"{cmp.ungraded_entries} entries of {name} are not representable in float64 (the reference "
                     f"returns them as null) and were not graded: a null or any number is accepted there")
    if cmp.textbook_entries:
        one = cmp.textbook_entries == 1
        notes.append(f"textbook_rounding: {cmp.textbook_entries} {'entry' if one else 'entries'} of {name} "
                     f"{'differs' if one else 'differ'} from the exact value but {'matches' if one else 'match'} the "
                     f"course's formula evaluated in float64 from the rounded A_L (within {TEXTBOOK_ULPS} ulps), "
                     f"which loses digits where A_L is this close to 0 or 1; accepted")
    if cmp.errors_overflow:
        notes.append(f"{name}: the largest absolute or relative error exceeds float64's range (a submitted entry near "
                     f"1e308, or far from a reference entry near 0), so it is not reported")
    if _needs_diagnosis(cmp) and diagnosis is None:
        values = s.reshape(R.shape) if cmp.reshaped else s
        diagnosis = diagnose(ref, name, values, tol)
        if diagnosis is None:
            skipped = [h for h in ref.skipped if h.affects(name)]
            if skipped:
                by_code: dict[str, list[int]] = {}
                for h in skipped:
                    by_code.setdefault(h.code, []).append(h.layer)
                which = "; ".join(f"{code} at {_layers_text(layers)}" for code, layers in by_code.items())
                notes.append(f"{len(skipped)} backward-pass hypotheses that could explain {name} were not tested "
                             f"({which}): re-running backpropagation for them is over this request's diagnosis "
                             f"budget")
    earned = points if cmp.status == "correct" else 0.0
    return KeyGrade(name, cmp.status, points, earned, cmp, diagnosis, tuple(notes))


def _layers_text(layers: list[int]) -> str:
    """[1, 2, 3, 5] -> 'layers 1-3, 5'; [4] -> 'layer 4'."""
    runs: list[list[int]] = []
    for l in sorted(set(layers)):
        if runs and l == runs[-1][1] + 1:
            runs[-1][1] = l
        else:
            runs.append([l, l])
    text = ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)
    return ("layer " if len(layers) == 1 else "layers ") + text


def grade_all(ref: Reference, submissions: list[dict[str, Array]], tol: Tolerance,
              points: dict[str, float] | None = None, *, lenient_shapes: bool = False) -> list[SubmissionGrade]:
    """Grade every submission (key -> array, features first) against ``ref``.

    Graded keys: those of ``points`` (a key not submitted is ``missing``) plus any other submitted key (worth 0
    then); without ``points``, every submitted key, worth 1 point. A key earns its points only when ``correct``.
    Every array is compared first; then the mistaken backward passes are run once, for the keys some submission
    got wrong; then the wrong keys are diagnosed.
    """
    order = ref.order
    compared = []
    wrong: set[str] = set()
    for submission in submissions:
        wanted = dict(points) if points else {k: 1.0 for k in submission}
        for k in submission:
            wanted.setdefault(k, 0.0)
        rows = []
        for name in order:
            if name not in wanted:
                continue
            s = submission.get(name)
            cmp = None if s is None else _compare_key(ref, name, s, tol, lenient_shapes)
            # A wrong key of another size too: a mistake may change the shape (dgamma summed over the examples).
            if cmp is not None and _needs_diagnosis(cmp):
                wrong.add(name)
            rows.append((name, s, cmp, wanted[name]))
        compared.append(rows)
    ref.prepare(wrong)
    grades = []
    for rows in compared:
        keys = [_finish_key(ref, name, s, cmp, tol, pts, lenient_shapes) for name, s, cmp, pts in rows]
        summary: dict[tuple[str, int | None], tuple[Diagnosis, list[str]]] = {}
        for kg in keys:
            if kg.diagnosis is not None:
                entry = summary.setdefault((kg.diagnosis.code, kg.diagnosis.layer), (kg.diagnosis, []))
                entry[1].append(kg.key)
        grades.append(SubmissionGrade(keys, float(sum(k.earned for k in keys)), float(sum(k.points for k in keys)),
                                      list(summary.values())))
    return grades


def grade(ref: Reference, submission: dict[str, Array], tol: Tolerance, points: dict[str, float] | None = None,
          *, lenient_shapes: bool = False) -> SubmissionGrade:
    """Grade one submission; see ``grade_all``."""
    return grade_all(ref, [submission], tol, points, lenient_shapes=lenient_shapes)[0]


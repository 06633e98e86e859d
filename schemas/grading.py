"""POST /v1/grade: the request and response models, the checks that span fields, the limits of a batch, and the
layout edge. The request extends ``GradientRequest`` (same network, data and options) and goes through its
``prepare``; the engine sees features first only. The Gradescope document is in ``schemas.gradescope``; the
other learner routes are in ``schemas.gradient_check`` and ``schemas.explain``.

Submitted arrays follow the request's layout, as /v1/gradients responses do: with ``examples_first`` the
(units, m) keys (``AL``, ``dZ``, ``dA``) are (m, units), and so are the indices and shapes reported for them.

The reveal rule: without ``reveal`` no number of the response lets one rebuild a reference entry. The errors of a
key (``max_abs_error``, ``max_rel_error``, ``difference``) and the evidence a diagnosis computes from the
reference (``Diagnosis.fitted``) are coarsened: errors to the smallest power of ten not below them (from the
submitted value, the error of a zero submission or the ratio of two errors pins an entry only to within a factor
of ten), fitted ratios to two significant digits. Every other number is the submission's own, the request's, a
count or an index.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal, Optional, Union

import numpy as np
from annotated_types import Len
from pydantic import (AfterValidator, BaseModel, ConfigDict, Discriminator, Field, RootModel, StrictBool, Tag,
                      model_validator)
from pydantic_core import PydanticCustomError

# The matrix-or-vector parsing of schemas.common, reused for arrays whose entries may be null (None -> NaN).
from schemas.common import FiniteFloat, matrix_or_vector, to_matrix, to_vector
from schemas.errors import ErrorItem, InvalidRequest
from schemas.gradescope import VISIBILITIES, GradescopeResponse, document, shape_text
from schemas.gradients import GradientRequest, Prepared, prepare
from schemas.limits import Limits
from service.engine import grading

MAX_SUBMISSIONS = 500
# Graded keys over the whole batch (submissions x keys each): bounds the response (~0.5 KB per key) and the
# per-key fixed cost of comparing and serializing.
MAX_KEY_RESULTS = 20_000
# The price of comparing every submitted array with the reference and with every hypothesis it may be tested
# against (grading.grading_work, numbers compared plus a fixed cost per comparison): ~10 ns each, ~2 s in all.
MAX_GRADING_WORK = 150_000_000


# GradientRequest's include_caches: accepted so that a /v1/gradients body can be sent to the grade,
# gradient-check and explain routes as it is, and ignored there.
NotUsed = StrictBool

# --- submitted arrays: finite numbers or null (null entries grade as not_a_number) --------------------------

NumberOrNull = Optional[FiniteFloat]

SubmittedArray = Annotated[
    Union[Annotated[list[Annotated[list[NumberOrNull], Len(min_length=1)]], Len(min_length=1),
                    AfterValidator(to_matrix), Tag("matrix")],
          Annotated[list[NumberOrNull], Len(min_length=1), AfterValidator(to_vector), Tag("vector")]],
    Discriminator(matrix_or_vector, custom_error_type="matrix_or_vector_type",
                  custom_error_message="expected a list of numbers or a list of rows of numbers (null allowed)"),
]


# A student's values keyed by the course's names.
class Submission(BaseModel):
    model_config = ConfigDict(extra="allow", json_schema_extra={
        "description": "The student's values keyed by the course's names: `cost` (a number), `AL`, `dW1..dWL`, "
                       "`db1..dbL`, `dZ1..dZL`, `dA0..dA{L}` (arrays in the request's layout, as /v1/gradients "
                       "returns them: its response, fed back, scores full marks). At least one key, unless `points` "
                       "lists the keys to grade. Entries are finite numbers or null: a null entry grades the key "
                       "`not_a_number`, except where the reference itself is null (not representable in float64), "
                       "where a null or any number is accepted. Ragged rows, strings, booleans, NaN or Infinity "
                       "tokens are a 422."})
    __pydantic_extra__: dict[str, SubmittedArray] = Field(init=False)

    cost: NumberOrNull = Field(default=None, description="J, a number (null: `not_a_number`).")

    def arrays(self) -> dict[str, np.ndarray]:
        """Every submitted key -> its array (``cost`` as a 0-d array, NaN for null)."""
        out = {}
        if "cost" in self.model_fields_set:
            out["cost"] = np.array(np.nan if self.cost is None else self.cost, dtype=np.float64)
        out.update(self.model_extra or {})
        return out


_RULE = "an entry passes when |s - r| <= atol + rtol * |r| (numpy.isclose, r the reference)"


# The body of POST /v1/grade.
class GradeRequest(GradientRequest):
    submission: Optional[Submission] = Field(default=None, description="One student's values. Send this or `submissions`.")
    submissions: Optional[Annotated[list[Submission], Len(min_length=1)]] = Field(
        default=None, description=f"The batch form: many students' values graded against one reference, computed "
                                  f"once (1 to {MAX_SUBMISSIONS} of them). Send this or `submission`. The batch is "
                                  f"priced before any work: at most {MAX_KEY_RESULTS} graded keys in all, and the "
                                  f"comparisons with the reference and with every hypothesis a wrong key may be "
                                  f"tested against within a fixed budget (422 `limit_exceeded` otherwise).")
    rtol: Annotated[FiniteFloat, Field(ge=0)] = Field(default=grading.DEFAULT_RTOL, description=f"Relative tolerance, default 1e-5: {_RULE}.")
    atol: Annotated[FiniteFloat, Field(ge=0)] = Field(default=grading.DEFAULT_ATOL, description=f"Absolute tolerance, default 1e-8: {_RULE}.")
    points: Optional[Annotated[dict[str, Annotated[FiniteFloat, Field(ge=0, le=1e6)]], Len(min_length=1)]] = Field(
        default=None, description="Points per key (at least one key; leave `points` out for the default); these keys "
                                  "are graded and a key not submitted is `missing`. A key is worth its points when "
                                  "`correct`, 0 otherwise. Default: every submitted key, 1 point each. Submitted "
                                  "keys not listed are graded for information, worth 0.")
    reveal: StrictBool = Field(default=False, description="Include the reference: the top-level `reference` (every "
                                                          "graded key, once per request) and each worst entry's value; "
                                                          "errors exact. Default false: no number of the response, "
                                                          "messages included, lets one rebuild a reference value: the "
                                                          "errors and `difference` are rounded up to a power of ten "
                                                          "and fitted ratios to two significant digits "
                                                          "(`error_precision`). Whether a guess is `correct` is "
                                                          "still an answer: a client that may send many guesses can "
                                                          "search for a value, as with any autograder.")
    shape_policy: Literal["strict", "lenient"] = Field(
        default="strict", description="A shape that differs only by axes of length 1 (db as (n,) where (n, 1) was "
                                      "expected, or the reverse): `strict` grades it `shape_mismatch` (with the "
                                      "`column_vs_vector` diagnosis when the values are right); `lenient` grades the "
                                      "values and adds a note.")
    format: Literal["native", "gradescope"] = Field(
        default="native", description="`native`: this service's JSON. `gradescope`: a Gradescope results.json "
                                      "(`score`, `output`, `tests[]` with `name`, `score`, `max_score`, `status`, "
                                      "`output`, `visibility`), one per submission in the batch form.")
    visibility: Literal[VISIBILITIES] = Field(  # type: ignore[valid-type]
        default="visible", description="Gradescope `visibility` of each test (with `format: gradescope`).")
    include_caches: NotUsed = Field(default=False, description="Accepted (a /v1/gradients body can be sent as it "
                                                               "is) and ignored by this route.")

    @model_validator(mode="after")
    def _one_form(self) -> "GradeRequest":
        if (self.submission is None) == (self.submissions is None):
            raise PydanticCustomError("submission_form", "send exactly one of `submission` (one student) and "
                                                         "`submissions` (the batch form)")
        return self


def _key_list(L: int) -> str:
    return f"cost, AL, dW1..dW{L}, db1..db{L}, dZ1..dZ{L}, dA0..dA{L}"


def _over(location: str, message: str) -> InvalidRequest:
    return InvalidRequest([ErrorItem(location=location, type="limit_exceeded", message=message)],
                          title="Request over the limits", slug="limit-exceeded")


def prepare_grading(req: GradeRequest, limits: Limits) -> tuple[Prepared, list[dict[str, np.ndarray]]]:
    """``prepare`` plus the submission checks: batch size, element count, key names, empty submissions, and the
    price of the grading (graded keys, comparisons), all before any work. The arrays come back features first
    (the (units, m) keys transposed under ``examples_first``)."""
    batch = req.submissions is not None
    subs = req.submissions if batch else [req.submission]
    where = "submissions" if batch else "submission"
    if len(subs) > MAX_SUBMISSIONS:
        raise _over(where, f"the number of submissions is {len(subs)}, over this service's limit of {MAX_SUBMISSIONS}")
    arrays = [s.arrays() for s in subs]
    elements = sum(a.size for sub in arrays for a in sub.values())
    if elements > limits.max_elements:
        raise _over(where, f"the submitted arrays hold {elements} numbers, over this service's limit of "
                           f"{limits.max_elements}")
    prep = prepare(req, limits)
    L = len(prep.layers)
    valid = set(grading.key_names(L))
    errors = []
    for i, sub in enumerate(arrays):
        base = f"submissions[{i}]" if batch else "submission"
        if not sub and not req.points:
            errors.append(ErrorItem(location=base, type="empty_submission",
                                    message=f"the submission holds no key, so there is nothing to grade: send at least "
                                            f"one of {_key_list(L)} (or list keys in `points` to grade them as "
                                            f"missing)"))
        for key in sub:
            if key not in valid:
                errors.append(ErrorItem(location=f"{base}.{key}", type="unknown_key",
                                        message=f"{key!r} is not a quantity of this {L}-layer network; the keys are "
                                                f"{_key_list(L)}"))
    for key in req.points or {}:
        if key not in valid:
            errors.append(ErrorItem(location=f"points.{key}", type="unknown_key",
                                    message=f"{key!r} is not a quantity of this {L}-layer network; the keys are "
                                            f"{_key_list(L)}"))
    if errors:
        raise InvalidRequest(errors)
    listed = set(req.points or ())
    results = sum(len(listed | set(sub)) for sub in arrays)
    if results > MAX_KEY_RESULTS:
        raise _over(where, f"this request grades {results} keys in all (each submission's keys, `points` included), "
                           f"over this service's limit of {MAX_KEY_RESULTS}: send the batch in smaller parts")
    work = grading.grading_work(prep.layers, prep.dropout, ({k: a.size for k, a in sub.items()} for sub in arrays))
    if work > MAX_GRADING_WORK:
        raise _over(where, f"grading this request compares each submitted array with the reference and with up to "
                           f"{grading.LOCAL_CANDIDATES + len(grading.hypotheses(prep.layers, prep.dropout))} "
                           f"hypotheses of a mistake, priced at {work} numbers compared, over this service's limit of "
                           f"{MAX_GRADING_WORK}: send fewer submissions per request, or fewer or smaller keys")
    if prep.examples_first:
        arrays = [{k: (a.T if a.ndim == 2 and grading.is_per_example(k) else a) for k, a in sub.items()}
                  for sub in arrays]
    return prep, arrays


# --- response --------------------------------------------------------------------------------------------------

_COARSE = ("; without `reveal` rounded up to a power of ten (an upper bound within a factor of ten; 0 stays 0), "
           "exact with it")
_OVERFLOW = " Null when it exceeds float64's range (a note says so) or when the values could not be compared."


# The entry that breaks the tolerance rule the most.
class WorstEntry(BaseModel):
    index: list[int] = Field(description="Index into the expected array, in the request's layout.")
    submitted: float = Field(description="The submitted value there.")
    reference: Optional[float] = Field(default=None, description="The reference value there; only with `reveal`.")


# What mistake a wrong key's numbers point to.
class DiagnosisOut(BaseModel):
    code: str = Field(description="One of: " + ", ".join(f"`{c}` ({t})" for c, t in grading.DIAGNOSES.items()) + ".")
    message: str = Field(description="The mistake in words, naming the key and the layer.")
    layer: Optional[int] = Field(default=None, description="The layer where the mistake was made, when it is a layer's.")
    evidence: dict[str, Union[float, int, str]] = Field(
        description="The numbers behind it: `max_abs_error_under_hypothesis` (the submission against the value this "
                    "mistake produces; without `reveal` rounded up to a power of ten), `ratio` (the hypothesis's "
                    "factor, or least squares s ~ ratio * reference; a fitted one has two significant digits without "
                    "`reveal`), `m`, `matches` ...")
    alternatives: list[str] = Field(default_factory=list, description="Other hypotheses that fit too (the reported one fits best).")


# One graded key.
class KeyResult(BaseModel):
    key: str
    status: Literal[grading.STATUSES] = Field(description="`correct`, `incorrect`, `shape_mismatch`, `missing` or `not_a_number` (a null entry where the reference has a value).")  # type: ignore[valid-type]
    points: float = Field(description="What the key is worth.")
    earned: float = Field(description="`points` when correct, else 0.")
    shape: Optional[list[int]] = Field(default=None, description="The submitted shape (request's layout).")
    expected_shape: list[int] = Field(description="The reference's shape (request's layout).")
    max_abs_error: Optional[float] = Field(default=None, description="max |s - r| over the graded entries" + _COARSE + "." + _OVERFLOW)
    max_rel_error: Optional[float] = Field(default=None, description="max |s - r| / |r| over the graded entries with r != 0" + _COARSE + "." + _OVERFLOW)
    difference: Optional[float] = Field(default=None, description="The course's gradient-check difference ||s - r|| / (||s|| + ||r||)" + _COARSE + ".")
    wrong_entries: Optional[int] = Field(default=None, description="Entries outside the tolerance.")
    entries: int = Field(description="Entries graded (reference entries that are null, not representable in float64, are not).")
    worst: Optional[WorstEntry] = Field(default=None, description="For an incorrect key: the entry furthest outside the tolerance.")
    null_entries: int = Field(default=0, description="Null entries submitted where the reference has a value.")
    first_null: Optional[list[int]] = Field(default=None, description="Index of the first of them.")
    diagnosis: Optional[DiagnosisOut] = Field(default=None, description="For a wrong key, when the numbers support one, and only then.")
    notes: list[str] = Field(default_factory=list, description="Ungraded entries, entries accepted as `textbook_rounding` "
                                                               "(the course's formula for cost and dA_L evaluated from "
                                                               "the rounded A_L), shapes, errors beyond float64, "
                                                               "hypotheses left untested by the budget.")


# One mistake and every key it explains.
class DiagnosisSummary(BaseModel):
    code: str
    layer: Optional[int] = None
    message: str
    keys: list[str] = Field(description="The keys this mistake explains.")


# One submission's grade.
class GradeResult(BaseModel):
    score: float = Field(description="Points earned.")
    max_score: float = Field(description="Points available.")
    keys: list[KeyResult]
    diagnoses: list[DiagnosisSummary] = Field(description="The distinct mistakes found, each with the keys it explains.")


# The body of a 200 from POST /v1/grade (native format).
class GradeResponse(BaseModel):
    tolerance: dict[str, float] = Field(description=f"`rtol` and `atol`: {_RULE}.")
    reveal: bool
    error_precision: Literal["exact", "power_of_ten"] = Field(
        description="`exact` with `reveal`; otherwise `power_of_ten`: each key's errors and difference are rounded up "
                    "to a power of ten.")
    result: Optional[GradeResult] = Field(default=None, description="With `submission`.")
    results: Optional[list[GradeResult]] = Field(default=None, description="With `submissions`, in their order.")
    reference: Optional[dict[str, Any]] = Field(
        default=None, description="Only with `reveal`: the reference value of every key graded in this request, once "
                                  "for the whole batch, in the request's layout (null entries: not representable).")


# Any 200 body of POST /v1/grade.
class GradeAnyResponse(RootModel[Union[GradeResponse, GradescopeResponse]]):
    pass


def power_of_ten(x: float | None) -> float | None:
    """The smallest power of ten >= x for x > 0 (float64's largest number beyond 1e308); 0 and None unchanged."""
    if x is None or x == 0:
        return x
    k = math.ceil(math.log10(x))
    while k < 309 and 10.0 ** k < x:
        k += 1
    while 10.0 ** (k - 1) >= x:
        k -= 1
    return 10.0 ** k if k <= 308 else float(np.finfo(np.float64).max)


def two_digits(x: float) -> float:
    """x to two significant digits."""
    return float(f"{x:.2g}")


def _flip(key: str, index: tuple[int, ...] | None, examples_first: bool) -> list[int] | None:
    if index is None:
        return None
    if examples_first and len(index) == 2 and grading.is_per_example(key):
        return [int(index[1]), int(index[0])]
    return [int(i) for i in index]


def _wire_array(key: str, a: np.ndarray, examples_first: bool) -> Any:
    if a.ndim == 0:
        return None if np.isnan(a) else float(a)
    if examples_first and a.ndim == 2 and grading.is_per_example(key):
        a = a.T
    return np.ascontiguousarray(a)


def _evidence(d: grading.Diagnosis, exact: bool) -> dict[str, Any]:
    if exact:
        return dict(d.evidence)
    out = {}
    for name, value in d.evidence.items():
        if name in d.fitted and isinstance(value, float):
            value = two_digits(value) if name == "ratio" else power_of_ten(abs(value))
        out[name] = value
    return out


def _key_result(kg: grading.KeyGrade, expected: tuple[int, ...], exact: bool, ex_first: bool) -> dict:
    c = kg.comparison
    coarse = (lambda x: x) if exact else power_of_ten
    body: dict[str, Any] = {"key": kg.key, "status": kg.status, "points": kg.points, "earned": kg.earned,
                            "expected_shape": _flip(kg.key, expected, ex_first) or [],
                            "shape": None, "max_abs_error": None, "max_rel_error": None, "difference": None,
                            "wrong_entries": None, "entries": 0, "worst": None, "null_entries": 0,
                            "first_null": None, "diagnosis": None, "notes": list(kg.notes)}
    if c is not None:
        body.update({"shape": _flip(kg.key, c.shape, ex_first) or [], "max_abs_error": coarse(c.max_abs_error),
                     "max_rel_error": coarse(c.max_rel_error), "difference": coarse(c.difference),
                     "wrong_entries": c.wrong_entries, "null_entries": c.null_entries, "entries": c.entries,
                     "first_null": _flip(kg.key, c.first_null, ex_first)})
        if c.worst_index is not None:
            body["worst"] = {"index": _flip(kg.key, c.worst_index, ex_first) or [], "submitted": c.worst_submitted,
                             "reference": c.worst_reference if exact else None}
        if c.status == "shape_mismatch" and not c.reshaped:
            body["notes"].append(f"{kg.key} is {shape_text(body['shape'])} but {shape_text(body['expected_shape'])} "
                                 f"was expected")
    if kg.diagnosis is not None:
        d = kg.diagnosis
        body["diagnosis"] = {"code": d.code, "message": d.message, "layer": d.layer, "evidence": _evidence(d, exact),
                             "alternatives": list(d.alternatives)}
    return body


def _grade_result(g: grading.SubmissionGrade, ref: grading.Reference, exact: bool, ex_first: bool) -> dict:
    return {"score": g.score, "max_score": g.max_score,
            "keys": [_key_result(k, ref.arrays[k.key].shape, exact, ex_first) for k in g.keys],
            "diagnoses": [{"code": d.code, "layer": d.layer, "message": d.message, "keys": keys} for d, keys in g.summary]}


def grade_to_wire(grades: list[grading.SubmissionGrade], ref: grading.Reference, prep: Prepared,
                  req: GradeRequest) -> dict:
    """The engine's grades -> the response body in the requested format."""
    exact = req.reveal
    results = [_grade_result(g, ref, exact, prep.examples_first) for g in grades]
    tol = grading.Tolerance(req.rtol, req.atol)
    if req.format == "gradescope":
        docs = [document(r, tol, req.visibility, exact) for r in results]
        return {"results": docs} if req.submissions is not None else docs[0]
    body: dict[str, Any] = {"tolerance": {"rtol": req.rtol, "atol": req.atol}, "reveal": req.reveal,
                            "error_precision": "exact" if exact else "power_of_ten"}
    if req.submissions is not None:
        body["results"] = results
    else:
        body["result"] = results[0]
    if exact:
        graded = {k.key for g in grades for k in g.keys}
        body["reference"] = {k: _wire_array(k, ref.arrays[k], prep.examples_first)
                             for k in grading.key_names(ref.L) if k in graded}
    return body

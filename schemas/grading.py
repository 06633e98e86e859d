"""POST /v1/grade, /v1/gradient-check and /v1/explain: request and response models, the checks that span
fields, and the layout edge. Each request extends ``GradientRequest`` (same network, data and options) and goes
through its ``prepare``; the engine sees features first only.

Submitted arrays follow the request's layout, as /v1/gradients responses do: with ``examples_first`` the
(units, m) keys (``AL``, ``dZ``, ``dA``) are (m, units), and so are the indices and shapes reported for them.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Optional, Union

import numpy as np
from annotated_types import Len
from pydantic import (AfterValidator, BaseModel, ConfigDict, Discriminator, Field, RootModel, StrictBool, StrictInt, Tag,
                      WithJsonSchema, field_validator, model_validator)
from pydantic_core import PydanticCustomError

from schemas.common import FiniteFloat, MatrixOrVector
from schemas.errors import ErrorItem, InvalidRequest
from schemas.gradients import GradientRequest, Prepared, prepare
from schemas.limits import Limits
from service.engine import explain as explain_engine
from service.engine import gradcheck, grading

MAX_SUBMISSIONS = 500
HARD_MAX_FORWARD_PASSES = 200_000
DEFAULT_MAX_FORWARD_PASSES = 20_000



def _not_used(value: bool) -> bool:
    if value:
        raise PydanticCustomError("not_used", "include_caches is not used by this route; send false or leave it out")
    return value


# GradientRequest's include_caches, which these routes do not use: only false (or absent) is accepted.
NotUsed = Annotated[StrictBool, AfterValidator(_not_used), WithJsonSchema({"type": "boolean", "const": False})]

# --- submitted arrays: finite numbers or null (null entries grade as not_a_number) --------------------------

NumberOrNull = Optional[FiniteFloat]


def _nullable_matrix(rows: list[list[Optional[float]]]) -> np.ndarray:
    width = len(rows[0])
    for i, row in enumerate(rows):
        if len(row) != width:
            raise PydanticCustomError(
                "ragged_matrix", "ragged matrix: row {row} has {got} entries but row 0 has {want}",
                {"row": i, "got": len(row), "want": width})
    return np.array(rows, dtype=np.float64)  # null -> NaN


def _nullable_vector(values: list[Optional[float]]) -> np.ndarray:
    return np.array(values, dtype=np.float64)  # null -> NaN


def _matrix_or_vector(value: Any) -> str | None:
    if not isinstance(value, list):
        return None
    return "matrix" if value and isinstance(value[0], list) else "vector"


SubmittedArray = Annotated[
    Union[Annotated[list[Annotated[list[NumberOrNull], Len(min_length=1)]], Len(min_length=1),
                    AfterValidator(_nullable_matrix), Tag("matrix")],
          Annotated[list[NumberOrNull], Len(min_length=1), AfterValidator(_nullable_vector), Tag("vector")]],
    Discriminator(_matrix_or_vector, custom_error_type="matrix_or_vector_type",
                  custom_error_message="expected a list of numbers or a list of rows of numbers (null allowed)"),
]


# A student's values keyed by the course's names.
class Submission(BaseModel):
    model_config = ConfigDict(extra="allow", json_schema_extra={
        "description": "The student's values keyed by the course's names: `cost` (a number), `AL`, `dW1..dWL`, "
                       "`db1..dbL`, `dZ1..dZL`, `dA0..dA{L}` (arrays in the request's layout, as /v1/gradients "
                       "returns them). Any subset. Entries are finite numbers or null (a null entry grades the key "
                       "`not_a_number`); ragged rows, strings, booleans, NaN or Infinity tokens are a 422."})
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
    submissions: Optional[list[Submission]] = Field(
        default=None, description=f"The batch form: many students' values graded against one reference, computed "
                                  f"once (at most {MAX_SUBMISSIONS}). Send this or `submission`.")
    rtol: Annotated[FiniteFloat, Field(ge=0)] = Field(default=grading.DEFAULT_RTOL, description=f"Relative tolerance, default 1e-5: {_RULE}.")
    atol: Annotated[FiniteFloat, Field(ge=0)] = Field(default=grading.DEFAULT_ATOL, description=f"Absolute tolerance, default 1e-8: {_RULE}.")
    points: Optional[dict[str, Annotated[FiniteFloat, Field(ge=0)]]] = Field(
        default=None, description="Points per key; these keys are graded and a key not submitted is `missing`. A key is "
                                  "worth its points when `correct`, 0 otherwise. Default: every submitted key, 1 point "
                                  "each. Submitted keys not listed are graded for information, worth 0.")
    reveal: StrictBool = Field(default=False, description="Include the reference values (each key's `reference` and "
                                                          "the worst entry's). Default false: no field of the response, "
                                                          "messages included, carries a reference value (errors and "
                                                          "fitted ratios are reported; they bound it).")
    shape_policy: Literal["strict", "lenient"] = Field(
        default="strict", description="A shape that differs only by axes of length 1 (db as (n,) where (n, 1) was "
                                      "expected, or the reverse): `strict` grades it `shape_mismatch` (with the "
                                      "`column_vs_vector` diagnosis when the values are right); `lenient` grades the "
                                      "values and adds a note.")
    format: Literal["native", "gradescope"] = Field(
        default="native", description="`native`: this service's JSON. `gradescope`: a Gradescope results.json "
                                      "(`score`, `output`, `tests[]` with `name`, `score`, `max_score`, `status`, "
                                      "`output`, `visibility`), one per submission in the batch form.")
    visibility: Literal["visible", "hidden", "after_due_date", "after_published"] = Field(
        default="visible", description="Gradescope `visibility` of each test (with `format: gradescope`).")
    include_caches: NotUsed = Field(default=False, description="Not used by this route.")

    @model_validator(mode="after")
    def _one_form(self) -> "GradeRequest":
        if (self.submission is None) == (self.submissions is None):
            raise PydanticCustomError("submission_form", "send exactly one of `submission` (one student) and "
                                                         "`submissions` (the batch form)")
        return self


def _key_list(L: int) -> str:
    return f"cost, AL, dW1..dW{L}, db1..db{L}, dZ1..dZ{L}, dA0..dA{L}"


def prepare_grading(req: GradeRequest, limits: Limits) -> tuple[Prepared, list[dict[str, np.ndarray]]]:
    """``prepare`` plus the submission checks: batch size, element count, key names. The arrays come back
    features first (the (units, m) keys transposed under ``examples_first``)."""
    batch = req.submissions is not None
    subs = req.submissions if batch else [req.submission]
    if batch and len(subs) > MAX_SUBMISSIONS:
        raise InvalidRequest([ErrorItem(location="submissions", type="limit_exceeded",
                                        message=f"the number of submissions is {len(subs)}, over this service's "
                                                f"limit of {MAX_SUBMISSIONS}")],
                             title="Request over the limits", slug="limit-exceeded")
    arrays = [s.arrays() for s in subs]
    elements = sum(a.size for sub in arrays for a in sub.values())
    if elements > limits.max_elements:
        raise InvalidRequest([ErrorItem(location="submissions" if batch else "submission", type="limit_exceeded",
                                        message=f"the submitted arrays hold {elements} numbers, over this service's "
                                                f"limit of {limits.max_elements}")],
                             title="Request over the limits", slug="limit-exceeded")
    prep = prepare(req, limits)
    L = len(prep.layers)
    valid = set(grading.key_names(L))
    errors = []
    for i, sub in enumerate(arrays):
        base = f"submissions[{i}]" if batch else "submission"
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
    if prep.examples_first:
        arrays = [{k: (a.T if a.ndim == 2 and grading.is_per_example(k) else a) for k, a in sub.items()}
                  for sub in arrays]
    return prep, arrays


# --- grade: response --------------------------------------------------------------------------------------

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
                    "mistake produces), `ratio` (least squares s ~ ratio * reference), `m`, `matches` ...")
    alternatives: list[str] = Field(default_factory=list, description="Other hypotheses that fit too (the reported one fits best).")


# One graded key.
class KeyResult(BaseModel):
    key: str
    status: Literal[grading.STATUSES] = Field(description="`correct`, `incorrect`, `shape_mismatch`, `missing` or `not_a_number` (a null entry).")  # type: ignore[valid-type]
    points: float = Field(description="What the key is worth.")
    earned: float = Field(description="`points` when correct, else 0.")
    shape: Optional[list[int]] = Field(default=None, description="The submitted shape (request's layout).")
    expected_shape: list[int] = Field(description="The reference's shape (request's layout).")
    max_abs_error: Optional[float] = Field(default=None, description="max |s - r| over the graded entries.")
    max_rel_error: Optional[float] = Field(default=None, description="max |s - r| / |r| over the entries with r != 0.")
    difference: Optional[float] = Field(default=None, description="The course's gradient-check difference ||s - r|| / (||s|| + ||r||).")
    wrong_entries: Optional[int] = Field(default=None, description="Entries outside the tolerance.")
    entries: int = Field(description="Entries graded.")
    worst: Optional[WorstEntry] = Field(default=None, description="For an incorrect key: the entry furthest outside the tolerance.")
    null_entries: int = Field(default=0, description="Null entries submitted.")
    first_null: Optional[list[int]] = Field(default=None, description="Index of the first null entry.")
    diagnosis: Optional[DiagnosisOut] = Field(default=None, description="For a wrong key, when the numbers support one, and only then.")
    notes: list[str] = Field(default_factory=list)
    reference: Optional[Any] = Field(default=None, description="The reference value; only with `reveal`.")


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
    result: Optional[GradeResult] = Field(default=None, description="With `submission`.")
    results: Optional[list[GradeResult]] = Field(default=None, description="With `submissions`, in their order.")


# One Gradescope test case.
class GradescopeTest(BaseModel):
    name: str
    score: float
    max_score: float
    status: Literal["passed", "failed"]
    output: str
    visibility: str


# A Gradescope results.json document.
class GradescopeResults(BaseModel):
    score: float
    output: str
    tests: list[GradescopeTest]


# The body of a 200 from POST /v1/grade with format gradescope: the document, or {"results": [...]} in batch form.
class GradescopeResponse(RootModel[Union[GradescopeResults, dict[str, list[GradescopeResults]]]]):
    pass


# Any 200 body of POST /v1/grade.
class GradeAnyResponse(RootModel[Union[GradeResponse, GradescopeResponse]]):
    pass


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


def _key_result(kg: grading.KeyGrade, ref: grading.Reference, reveal: bool, ex_first: bool) -> dict:
    R = ref.arrays[kg.key]
    c = kg.comparison
    body: dict[str, Any] = {"key": kg.key, "status": kg.status, "points": kg.points, "earned": kg.earned,
                            "expected_shape": _flip(kg.key, R.shape, ex_first) or [],
                            "shape": None, "max_abs_error": None, "max_rel_error": None, "difference": None,
                            "wrong_entries": None, "entries": int(R.size), "worst": None, "null_entries": 0,
                            "first_null": None, "diagnosis": None, "notes": list(kg.notes)}
    if c is not None:
        body.update({"shape": _flip(kg.key, c.shape, ex_first) or [], "max_abs_error": c.max_abs_error,
                     "max_rel_error": c.max_rel_error, "difference": c.difference, "wrong_entries": c.wrong_entries,
                     "null_entries": c.null_entries, "first_null": _flip(kg.key, c.first_null, ex_first)})
        if c.entries:
            body["entries"] = c.entries
        if c.worst_index is not None:
            body["worst"] = {"index": _flip(kg.key, c.worst_index, ex_first) or [], "submitted": c.worst_submitted,
                             "reference": c.worst_reference if reveal else None}
        if c.status == "shape_mismatch" and not c.reshaped:
            body["notes"].append(f"{kg.key} is {_shape(body['shape'])} but {_shape(body['expected_shape'])} was expected")
    if kg.diagnosis is not None:
        d = kg.diagnosis
        body["diagnosis"] = {"code": d.code, "message": d.message, "layer": d.layer, "evidence": d.evidence,
                             "alternatives": list(d.alternatives)}
    if reveal:
        body["reference"] = _wire_array(kg.key, R, ex_first)
    return body


def _shape(dims: list[int]) -> str:
    return "(" + ", ".join(str(d) for d in dims) + (",)" if len(dims) == 1 else ")")


def _grade_result(g: grading.SubmissionGrade, ref: grading.Reference, reveal: bool, ex_first: bool) -> dict:
    return {"score": g.score, "max_score": g.max_score,
            "keys": [_key_result(k, ref, reveal, ex_first) for k in g.keys],
            "diagnoses": [{"code": d.code, "layer": d.layer, "message": d.message, "keys": keys} for d, keys in g.summary]}


def _test_output(k: dict, tol: grading.Tolerance) -> str:
    key, status = k["key"], k["status"]
    if status == "correct":
        text = f"{key}: correct (every entry within |s - r| <= {tol.atol:g} + {tol.rtol:g} |r|)"
    elif status == "missing":
        text = f"{key}: missing (not submitted)"
    elif status == "not_a_number":
        text = f"{key}: {k['null_entries']} null entries, the first at {k['first_null']}"
    elif status == "shape_mismatch":
        text = f"{key}: shape {_shape(k['shape'])}, expected {_shape(k['expected_shape'])}"
    else:
        w = k["worst"]
        text = (f"{key}: incorrect: {k['wrong_entries']} of {k['entries']} entries outside |s - r| <= {tol.atol:g} + "
                f"{tol.rtol:g} |r|; max abs error {k['max_abs_error']:.6g}, difference {k['difference']:.6g}; the worst "
                f"entry is {w['index']}, where you have {w['submitted']!r}")
        if w.get("reference") is not None:
            text += f" and the reference is {w['reference']!r}"
    if k.get("diagnosis"):
        text += f"\nLikely mistake: {k['diagnosis']['message']}"
    for note in k["notes"]:
        if note not in text:
            text += f"\nNote: {note}"
    return text


def _gradescope(result: dict, tol: grading.Tolerance, visibility: str) -> dict:
    tests = [{"name": k["key"], "score": k["earned"], "max_score": k["points"],
              "status": "passed" if k["status"] == "correct" else "failed",
              "output": _test_output(k, tol), "visibility": visibility} for k in result["keys"]]
    lines = [f"Score: {result['score']:g} / {result['max_score']:g}"]
    lines += [f"Likely mistake ({', '.join(d['keys'])}): {d['message']}" for d in result["diagnoses"]]
    return {"score": result["score"], "output": "\n".join(lines), "tests": tests}


def grade_to_wire(grades: list[grading.SubmissionGrade], ref: grading.Reference, prep: Prepared,
                  req: GradeRequest) -> dict:
    """The engine's grades -> the response body in the requested format."""
    results = [_grade_result(g, ref, req.reveal, prep.examples_first) for g in grades]
    tol = grading.Tolerance(req.rtol, req.atol)
    if req.format == "gradescope":
        docs = [_gradescope(r, tol, req.visibility) for r in results]
        return {"results": docs} if req.submissions is not None else docs[0]
    body: dict[str, Any] = {"tolerance": {"rtol": req.rtol, "atol": req.atol}, "reveal": req.reveal}
    if req.submissions is not None:
        body["results"] = results
    else:
        body["result"] = results[0]
    return body


# --- gradient check ---------------------------------------------------------------------------------------

# The body of POST /v1/gradient-check.
class GradientCheckRequest(GradientRequest):
    epsilon: Annotated[FiniteFloat, Field(ge=1e-12, le=1e-2)] = Field(
        default=gradcheck.DEFAULT_EPSILON, description="Step of the central differences, default 1e-7, in "
                                                       "[1e-12, 1e-2], and large enough that theta + eps and "
                                                       "theta - eps differ for every parameter entry theta.")
    threshold: Annotated[FiniteFloat, Field(gt=0)] = Field(
        default=gradcheck.DEFAULT_THRESHOLD, description="Pass when ||a - n|| / (||a|| + ||n||) <= threshold; "
                                                         "default 2e-7, as the course uses.")
    mode: Literal[gradcheck.MODES] = Field(  # type: ignore[valid-type]
        default="full", description="`full`: every entry of every dW and db; `entries`: `samples` random entries; "
                                    "`directions`: `samples` random unit directions over all the parameters (no "
                                    "per-parameter metric). The sampled modes are for large networks.")
    samples: Optional[Annotated[StrictInt, Field(ge=1)]] = Field(
        default=None, description="Sample size, required with `entries` and `directions`.")
    seed: Annotated[StrictInt, Field(ge=0)] = Field(default=0, description="Seed of the random sample.")
    max_forward_passes: Annotated[StrictInt, Field(ge=1, le=HARD_MAX_FORWARD_PASSES)] = Field(
        default=DEFAULT_MAX_FORWARD_PASSES,
        description=f"Cap on the forward passes (1 + 2 per checked entry or direction), counted before running; default "
                    f"{DEFAULT_MAX_FORWARD_PASSES}, at most {HARD_MAX_FORWARD_PASSES}. Independently, passes times the "
                    f"work of one pass may not exceed GRADIENT_MAX_WORK.")
    worst: Annotated[StrictInt, Field(ge=1, le=100)] = Field(default=5, description="How many worst entries to list.")
    gradients: Optional[dict[str, MatrixOrVector]] = Field(
        default=None, description="A submitted gradient to check instead of the service's own: every dW1..dWL "
                                  "(n_l, n_(l-1)) and db1..dbL ((n_l, 1) or (n_l,)).")
    include_caches: NotUsed = Field(default=False, description="Not used by this route.")

    @field_validator("dropout", mode="before")
    @classmethod
    def _masks_needed(cls, value: Any) -> Any:
        if isinstance(value, dict) and "masks" not in value:
            raise PydanticCustomError(
                "dropout_needs_masks",
                "gradient checking needs the dropout masks: without fixed masks every forward pass draws new ones, so "
                "J is a random function of the parameters and its central differences measure the noise, not the "
                "gradient; send dropout.masks (D_1..D_(L-1)) to make J deterministic")
        return value

    @model_validator(mode="after")
    def _samples_for_sampled_modes(self) -> "GradientCheckRequest":
        if self.mode != "full" and self.samples is None:
            raise PydanticCustomError("samples_missing", "mode {mode} needs `samples`", {"mode": self.mode})
        return self


def prepare_check(req: GradientCheckRequest, limits: Limits) -> tuple[Prepared, list | None, list | None]:
    """``prepare``, the work caps (counted from shapes) and the submitted gradients (features first, b's shape)."""
    prep = prepare(req, limits)
    layers = prep.layers
    floor = gradcheck.smallest_epsilon(layers)
    if req.epsilon <= floor:
        raise InvalidRequest([ErrorItem(location="epsilon", type="epsilon_too_small",
                                        message=f"epsilon {req.epsilon:g} is too small for parameters this large: "
                                                f"theta + eps would round to theta; use more than {floor:g}")])
    planned = gradcheck.planned_passes(layers, req.mode, req.samples)
    m = prep.X.shape[1]
    per_pass = sum(layer.W.size * m for layer in layers)
    errors = []
    if planned > req.max_forward_passes:
        hint = ("; use mode `entries` or `directions` with fewer samples" if req.mode == "full"
                else "; lower `samples`")
        errors.append(ErrorItem(location="max_forward_passes", type="limit_exceeded",
                                message=f"this check needs {planned} forward passes (1 + 2 per {'direction' if req.mode == 'directions' else 'entry'}), "
                                        f"over the cap of {req.max_forward_passes}{hint}"))
    if planned * per_pass > limits.max_work:
        errors.append(ErrorItem(location="body", type="limit_exceeded",
                                message=f"the check's work, {planned} passes of {per_pass} multiply-adds, is over this "
                                        f"service's limit of {limits.max_work}; use fewer samples"))
    if errors:
        raise InvalidRequest(errors, title="Request over the limits", slug="limit-exceeded")
    if req.gradients is None:
        return prep, None, None
    L = len(layers)
    want = [f"dW{l}" for l in range(1, L + 1)] + [f"db{l}" for l in range(1, L + 1)]
    for key in req.gradients:
        if key not in want:
            errors.append(ErrorItem(location=f"gradients.{key}", type="unknown_key",
                                    message=f"{key!r} is not a parameter gradient of this network: send dW1..dW{L} and db1..db{L}"))
    dW, db = [], []
    for l, layer in enumerate(layers, start=1):
        for name, target, sink in ((f"dW{l}", layer.W.shape, dW), (f"db{l}", layer.b.shape, db)):
            g = req.gradients.get(name)
            if g is None:
                errors.append(ErrorItem(location=f"gradients.{name}", type="missing",
                                        message=f"{name} is missing: send every dW and db"))
            elif g.shape != target and not (name.startswith("db") and g.shape == (target[0],)):
                errors.append(ErrorItem(location=f"gradients.{name}", type="shape_mismatch",
                                        message=f"{name} is {_shape(list(g.shape))}, but the parameter is {_shape(list(target))}"))
            else:
                sink.append(g.reshape(target))
    if errors:
        raise InvalidRequest(errors)
    return prep, dW, db


# One parameter's check.
class ParameterCheckOut(BaseModel):
    name: str = Field(description="The gradient, `dW1` .. `dbL`.")
    entries_total: int
    entries_checked: int
    difference: Optional[float] = Field(description="||a - n|| / (||a|| + ||n||) over its checked entries; null when none was (or in `directions` mode).")
    max_abs_error: Optional[float]
    passed: Optional[bool] = Field(description="difference <= threshold.")
    within_roundoff: Optional[bool] = Field(default=None, description="Every error is below `roundoff`: a failure "
                                                                      "here is rounding, not a wrong gradient.")


# One checked entry (or direction), worst first.
class CheckedEntry(BaseModel):
    parameter: Optional[str] = Field(default=None, description="`dW1` .. `dbL` (entry modes).")
    index: Optional[list[int]] = Field(default=None, description="Index into the gradient, db in the shape b was sent.")
    direction: Optional[int] = Field(default=None, description="The direction's number (`directions` mode).")
    analytic: float
    numeric: float
    abs_error: float


# The body of a 200 from POST /v1/gradient-check.
class GradientCheckResponse(BaseModel):
    passed: bool = Field(description="difference <= threshold.")
    difference: float = Field(description="The course's metric over every checked entry (or direction).")
    threshold: float
    epsilon: float
    mode: str
    checked: Literal["service", "submission"] = Field(description="Whose analytic gradient was checked.")
    parameters: list[ParameterCheckOut]
    worst: list[CheckedEntry] = Field(description="The largest |analytic - numeric|, worst first.")
    forward_passes: int = Field(description="Forward passes run (1 + 2 per entry or direction; a pass from layer l counts as one).")
    max_forward_passes: int
    sample_size: int = Field(description="Entries (or directions) checked.")
    entries_total: int = Field(description="Entries of all dW and db.")
    roundoff: float = Field(description="8 * machine epsilon * max(1, |J|) / epsilon: the absolute error rounding "
                                        "alone leaves in a central difference.")
    notes: list[str] = Field(default_factory=list)


def check_to_wire(res: gradcheck.CheckResult, prep: Prepared, req: GradientCheckRequest) -> dict:
    def index(entry: gradcheck.EntryCheck) -> list[int] | None:
        if entry.index is None:
            return None
        if entry.parameter.startswith("db") and prep.b_is_vector[int(entry.parameter[2:]) - 1]:
            return [entry.index[0]]
        return list(entry.index)

    notes = []
    if prep.dropout is not None:
        notes.append("dropout: the fixed masks make J a deterministic function of the parameters")
    if res.mode == "directions":
        notes.append("directions mode compares directional derivatives g . v; there is no per-parameter metric")
    for p in res.parameters:
        if p.passed is False and p.within_roundoff:
            notes.append(f"{p.name} exceeds the threshold by rounding only: its largest error, {p.max_abs_error:.3g}, is "
                         f"below the roundoff scale {res.roundoff:.3g} of central differences at this epsilon (its "
                         f"gradient is small)")
    return {
        "passed": res.passed, "difference": res.difference, "threshold": res.threshold, "epsilon": res.epsilon,
        "mode": res.mode, "checked": "service" if req.gradients is None else "submission",
        "parameters": [vars(p) for p in res.parameters],
        "worst": [{"parameter": e.parameter, "index": index(e), "direction": e.direction, "analytic": e.analytic,
                   "numeric": e.numeric, "abs_error": e.abs_error} for e in res.worst],
        "forward_passes": res.forward_passes, "max_forward_passes": req.max_forward_passes,
        "sample_size": res.sample_size, "entries_total": res.entries_total, "roundoff": res.roundoff, "notes": notes,
    }


# --- explain ----------------------------------------------------------------------------------------------

# The body of POST /v1/explain.
class ExplainRequest(GradientRequest):
    hidden_layer: Optional[Annotated[StrictInt, Field(ge=1)]] = Field(
        default=None, description="The hidden layer l (1..L-1) whose rule dA_l = W_(l+1)^T dZ_(l+1) is shown; default L-1.")
    examples_shown: Annotated[StrictInt, Field(ge=1, le=1000)] = Field(
        default=16, description="Per-example arrays show the first this many examples (columns, or rows with examples_first).")
    include_caches: NotUsed = Field(default=False, description="Not used by this route.")


def prepare_explain(req: ExplainRequest, limits: Limits) -> Prepared:
    prep = prepare(req, limits)
    L = len(prep.layers)
    if req.hidden_layer is not None and req.hidden_layer > L - 1:
        raise InvalidRequest([ErrorItem(location="hidden_layer", type="out_of_range",
                                        message=f"hidden_layer is {req.hidden_layer}, but this {L}-layer network has "
                                                + (f"hidden layers 1..{L - 1}" if L > 1 else "no hidden layer"))])
    return prep


# One step of the story.
class ExplainStep(BaseModel):
    id: str = Field(description="`cost`, `dAL`, `activation_derivative`, `dZL_chain_rule`, `dZL_fused` or "
                                "`no_simplification`, `stability`, `hidden_dA`, `hidden_dZ`, `why`.")
    title: str
    text: str = Field(description="A plain-text sentence.")
    latex: str = Field(description="The formula in LaTeX.")
    values: dict[str, Any] = Field(description="The numbers, named as in the formula; per-example arrays in the "
                                               "request's layout, the first `examples_shown` examples; null where not representable.")
    entries: Optional[list[list[int]]] = Field(default=None, description="In `stability`: the unstable entries' indices, in the request's layout.")


# The body of a 200 from POST /v1/explain.
class ExplainResponse(BaseModel):
    cost: str
    output_activation: str
    canonical: bool = Field(description="Whether dZ_L = A_L - Y applies (the output activation matches the cost).")
    layers: int
    hidden_layer: int = Field(description="The layer of the hidden step (0: the network has none; the step is about dA0).")
    intermediates: str
    layout: str
    m: int
    examples_shown: int
    unstable_count: int = Field(description="Entries where the textbook chain rule from A_L is infinite, NaN or inaccurate.")
    steps: list[ExplainStep]
    notes: list[str] = Field(default_factory=list)


def explain_to_wire(story: explain_engine.Story, prep: Prepared, req: ExplainRequest) -> dict:
    ex_first = prep.examples_first
    m = prep.X.shape[1]
    k = min(req.examples_shown, m)

    def per_example(a: np.ndarray) -> np.ndarray:
        a = a[..., :k]
        if a.ndim == 2 and ex_first:
            a = a.T
        return np.ascontiguousarray(a)

    def plain(v: Any) -> Any:
        if isinstance(v, np.ndarray):
            return np.ascontiguousarray(np.where(np.isfinite(v), v, np.nan)) if v.dtype.kind == "f" else v
        if isinstance(v, float) and not np.isfinite(v):
            return None
        return v

    steps = []
    for s in story.steps:
        values = {name: per_example(v) if name in s.per_example else plain(v) for name, v in s.values.items()}
        entries = None
        if s.entries is not None:
            entries = [[int(j), int(i)] if ex_first else [int(i), int(j)] for i, j in s.entries]
        steps.append({"id": s.id, "title": s.title, "text": s.text, "latex": s.latex, "values": values,
                      "entries": entries})
    return {"cost": story.cost, "output_activation": story.output_activation, "canonical": story.canonical,
            "layers": story.L, "hidden_layer": story.hidden_layer, "intermediates": story.intermediates,
            "layout": req.layout, "m": m, "examples_shown": k, "unstable_count": story.unstable_count,
            "steps": steps, "notes": story.notes}

"""POST /v1/grade: the request and response models, the checks that span fields, the limits of a batch, the
grading policy of the caller's key, and the layout edge. The request extends ``GradientRequest`` (same network,
data and options) and goes through its ``prepare``; the engine sees features first only. The Gradescope document
is in ``schemas.gradescope``; the other learner routes are in ``schemas.gradient_check`` and ``schemas.explain``.

Submitted arrays follow the request's layout, as /v1/gradients responses do: with ``examples_first`` the
(units, m) keys (``AL``, ``dZ``, ``dA``) are (m, units), and so are the indices and shapes reported for them.

Each submission is validated on its own: in the batch form a malformed one (a ragged row, a string, an unknown key,
nothing to grade) gets its own result with ``status: invalid`` and its located errors, and the others are graded.

The reveal rule: without ``reveal`` no number of the response is computed from the reference, except the errors of
a key (``max_abs_error``, ``max_rel_error``, ``difference``) rounded up to a power of ten, and counts and indices of
entries; with the policy's ``feedback: status`` not even those. A diagnosis keeps its code, its message and the
constants of its hypothesis (``m``, ``lambda``, the factor of a named mistake, the key it matches); the evidence the
engine fits to the reference (``Diagnosis.fitted``: a least-squares ratio, the error under the hypothesis) is left
out. Every other number is the submission's own, the request's, a count or an index. What this still lets a client
learn per request, and how many requests a search needs, is the README's *Threat model*.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Optional, Union

import numpy as np
from annotated_types import Len
from pydantic import (AfterValidator, BaseModel, BeforeValidator, ConfigDict, Discriminator, Field, PrivateAttr,
                      RootModel, StrictBool, Tag, ValidationError, WrapValidator, create_model, model_validator)
from pydantic_core import PydanticCustomError

# The matrix-or-vector parsing of schemas.common, reused for arrays whose entries may be null (None -> NaN).
from schemas.arrays import MORE_ERRORS, array_type
from schemas.common import FiniteFloat
from schemas.errors import ErrorItem, InvalidRequest, format_location, from_validation_error
from schemas.gradescope import VISIBILITIES, GradescopeResponse, document, invalid_document, shape_text
from schemas import junit, prairielearn
from schemas.gradients import GradientRequest, Prepared, prepare
from schemas.limits import Limits
from schemas.policy import MAX_SUBMISSIONS, Policy
from service.engine import grading
from service.engine.kinds import Layouts
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

# A matrix or vector (or an image batch, or conv2d's dW) whose entries may be null (NaN): one submitted answer.
SubmittedArray = array_type(1, 2, 4, nullable=True)


def _cost_shape(value: Any) -> tuple[int, ...] | None:
    """The shape of a cost sent as nested one-element lists ([[0.67]] -> (1, 1)); None for anything else."""
    shape = []
    while isinstance(value, list) and len(value) == 1:
        shape.append(1)
        value = value[0]
    return tuple(shape) if shape and not isinstance(value, list) else None


def _one_number(value: Any) -> Any:
    """J is one number: a one-element array ([0.67], [[0.67]]) is that number; a larger one is an error."""
    if isinstance(value, list):
        if _cost_shape(value) is None:
            raise PydanticCustomError("cost_not_one_number", "cost is J, one number (or a one-element array of it); "
                                                             "got an array of {n} entries", {"n": _count(value)})
        while isinstance(value, list):
            value = value[0]
    return value


def _count(value: Any) -> int:
    return sum(_count(v) for v in value) if isinstance(value, list) else 1


# A student's values keyed by the course's names.
class Submission(BaseModel):
    model_config = ConfigDict(extra="allow", json_schema_extra={
        "description": "The student's values keyed by the course's names: `cost` (a number, or a one-element array "
                       "of it), `AL`, `dW1..dWL`, `db1..dbL`, `dZ1..dZL`, `dA0..dA{L}` (arrays in the request's "
                       "layout, as /v1/gradients returns them: its response, fed back, scores full marks). At least "
                       "one key, unless `points` lists the keys to grade. Entries are finite numbers or null: a null "
                       "entry grades the key `not_a_number`, except where the reference itself is null (not "
                       "representable in float64), where a null or any number is accepted. Ragged rows, strings, "
                       "booleans, NaN or Infinity tokens make the submission invalid: a 422 for `submission`, a "
                       "result with `status: invalid` and the located errors in the batch form."})
    __pydantic_extra__: dict[str, SubmittedArray] = Field(init=False)

    cost: Annotated[NumberOrNull, BeforeValidator(_one_number)] = Field(
        default=None, description="J, a number (null: `not_a_number`); a one-element array such as `[[0.67]]` is "
                                  "graded as the number it holds.")
    _cost_sent_as: tuple[int, ...] | None = PrivateAttr(default=None)

    @model_validator(mode="wrap")
    @classmethod
    def _remember_cost_shape(cls, data: Any, handler) -> "Submission":
        model = handler(data)
        if isinstance(data, dict):
            model._cost_sent_as = _cost_shape(data.get("cost"))
        return model

    def arrays(self) -> dict[str, np.ndarray]:
        """Every submitted key -> its array (``cost`` as a 0-d array, NaN for null)."""
        out = {}
        if "cost" in self.model_fields_set:
            out["cost"] = np.array(np.nan if self.cost is None else self.cost, dtype=np.float64)
        out.update(self.model_extra or {})
        return out

    def notes(self) -> dict[str, list[str]]:
        """Notes about how keys were read, by key."""
        if self._cost_sent_as is None:
            return {}
        return {"cost": [f"cost was sent as an array of shape {shape_text(list(self._cost_sent_as))}; graded as the "
                         f"one number it holds"]}


@dataclass(frozen=True)
class Malformed:
    """A submission that did not validate: pydantic's error (locations relative to it) and the key names it had,
    for what it would have been worth."""

    exc: ValidationError
    keys: tuple[str, ...]


def _keep_malformed(value: Any, handler) -> Submission | Malformed:
    # Each submission is validated on its own, so that one malformed submission does not fail a whole batch.
    try:
        return handler(value)
    except ValidationError as exc:
        keys = tuple(str(k) for k in value) if isinstance(value, dict) else ()
        return Malformed(exc, keys)


class _OrAnythingElse:
    """JSON Schema of a batch item: a Submission, or any other value, which is answered (not refused) with a
    result of status ``invalid``: the contract says so, so that a malformed item is not a schema violation."""

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema, handler):
        return {"anyOf": [handler(core_schema), {"description": "Anything else: not graded, answered with a result "
                                                               "of status `invalid` and its located errors."}]}


# A batch item; a single ``submission`` is a plain Submission, so that its errors come with the request's others.
BatchItem = Annotated[Submission, WrapValidator(_keep_malformed), _OrAnythingElse()]


_RULE = "an entry passes when |s - r| <= atol + rtol * |r| (numpy.isclose, r the reference)"
_BOUNDED = ("The key's policy may bound it: a value sent outside its bounds is a 403, and when it is not sent the "
            "default is moved into them.")


_SUBMISSIONS = (f"The batch form: many students' values graded against one reference, computed once (1 to "
                f"{MAX_SUBMISSIONS} of them, fewer if the key's policy says so). Send this or `submission`. Each is "
                f"validated on its own: a malformed one gets a result with `status: invalid` and its located "
                f"`errors`, the others are graded. The batch is priced before any work: at most {MAX_KEY_RESULTS} "
                f"graded keys in all, and the comparisons with the reference and with every hypothesis a wrong key "
                f"may be tested against within a fixed budget (422 `limit_exceeded` otherwise).")


def grading_fields(submission: Any, batch_item: Any) -> dict[str, Any]:
    """The fields every grading request adds to its task's body, in order (``create_model`` definitions):
    ``submission`` (of type ``submission``) or ``submissions`` (of ``batch_item``), the tolerances, points,
    reveal, shape policy, format and visibility."""
    return {
        "submission": (Optional[submission], Field(default=None, description="One student's values (malformed: a "
                                                                             "422). Send this or `submissions`.")),
        "submissions": (Optional[Annotated[list[batch_item], Len(min_length=1)]],
                        Field(default=None, description=_SUBMISSIONS)),
        "rtol": (Annotated[FiniteFloat, Field(ge=0)], Field(default=grading.DEFAULT_RTOL, description=f"Relative "
                 f"tolerance, default 1e-5: {_RULE}. {_BOUNDED}")),
        "atol": (Annotated[FiniteFloat, Field(ge=0)], Field(default=grading.DEFAULT_ATOL, description=f"Absolute "
                 f"tolerance, default 1e-8: {_RULE}. {_BOUNDED}")),
        "points": (Optional[Annotated[dict[str, Annotated[FiniteFloat, Field(ge=0, le=1e6)]], Len(min_length=1)]],
                   Field(default=None, description="Points per key (at least one key; leave `points` out for the "
                                                   "default); these keys are graded and a key not submitted is "
                                                   "`missing`. A key is worth its points when `correct`, 0 otherwise. "
                                                   "Default: every submitted key, 1 point each. Submitted keys not "
                                                   "listed are graded for information, worth 0.")),
        "reveal": (StrictBool, Field(default=False, description=_REVEAL)),
        "shape_policy": (Literal["strict", "lenient"], Field(
            default="strict", description="A shape that differs only by axes of length 1 (db as (n,) where (n, 1) "
                                          "was expected, or the reverse): `strict` grades it `shape_mismatch` (with "
                                          "the `column_vs_vector` diagnosis when the values are right); `lenient` "
                                          "grades the values and adds a note.")),
        "format": (Literal["native", "gradescope", "prairielearn", "junit"], Field(default="native",
                                                                                  description=_FORMAT)),
        "visibility": (Literal[VISIBILITIES], Field(  # type: ignore[valid-type]
            default="visible", description="Gradescope `visibility` of each test (with `format: gradescope`).")),
    }


_REVEAL = ("Include the reference: the top-level `reference` (every graded key, once per request), each worst entry's "
           "value, exact errors and the fitted evidence of diagnoses (403 when the key's policy does not allow it). "
           "Default false: no number of the response, messages included, is computed from the reference except the "
           "errors and `difference`, rounded up to a power of ten (`error_precision`; none at all under a policy "
           "with `feedback: status`), and counts and indices of entries. Each graded value still answers a question "
           "about the reference (is it within the tolerance? in which power of ten is the error?): the README's "
           "Threat model says how many requests a search needs under each policy.")
_FORMAT = ("`native`: this service's JSON. `gradescope`: a Gradescope results.json (`score`, `output`, `tests[]` with "
           "`name`, `score`, `max_score`, `status`, `output`, `visibility`), one per submission in the batch form. "
           "`prairielearn`: a PrairieLearn external grader's results.json (`gradable`, `score` in [0, 1], `message`, "
           "`tests[]` with `name`, `points`, `max_points`, `message`, `output`). `junit`: JUnit XML as "
           "`application/xml` (a testsuite per submission, a testcase per key, the diagnosis in the failure "
           "message).")


def _one_form(self):
    if (self.submission is None) == (self.submissions is None):
        raise PydanticCustomError("submission_form", "send exactly one of `submission` (one student) and "
                                                     "`submissions` (the batch form)")
    return self


ONE_FORM = {"_one_form": model_validator(mode="after")(_one_form)}

# The body of POST /v1/grade with `task: gradients` (the default): a /v1/gradients body and the grading fields.
GradeRequest = create_model(
    "GradeRequest", __base__=GradientRequest, __validators__=ONE_FORM,
    task=(Literal["gradients"], Field(default="gradients", description="`gradients` (the default): a whole "
                                                                       "network, as POST /v1/gradients takes it.")),
    **grading_fields(Submission, BatchItem),
    include_caches=(NotUsed, Field(default=False, description="Accepted (a /v1/gradients body can be sent as it is) "
                                                              "and ignored by this route.")),
)


def _over(location: str, message: str) -> InvalidRequest:
    return InvalidRequest([ErrorItem(location=location, type="limit_exceeded", message=message)],
                          title="Request over the limits", slug="limit-exceeded")


@dataclass
class Batch:
    """The submissions of one request, in order. ``arrays[i]``: key -> array, features first (the (units, m) keys
    transposed under ``examples_first``), or None for a malformed submission, whose located errors are
    ``errors[i]``; ``notes[i]``: notes on how keys were read, by key; ``worth[i]``: the points a malformed one
    would have been worth (the total of ``points``, else 1 per valid key name it holds)."""

    arrays: list[Optional[dict[str, np.ndarray]]] = field(default_factory=list)
    errors: list[list[ErrorItem]] = field(default_factory=list)
    notes: list[dict[str, list[str]]] = field(default_factory=list)
    worth: list[float] = field(default_factory=list)

    def add(self, arrays: Optional[dict[str, np.ndarray]], errors: list[ErrorItem], notes: dict) -> None:
        self.arrays.append(arrays)
        self.errors.append(errors)
        self.notes.append(notes)

    @property
    def graded(self) -> list[dict[str, np.ndarray]]:
        """The arrays of the well-formed submissions, in order."""
        return [a for a in self.arrays if a is not None]


@dataclass(frozen=True)
class Effective:
    """What the caller's policy makes of a request: the tolerance used and the feedback of wrong keys."""

    tolerance: grading.Tolerance
    feedback: str

    def precision(self, reveal: bool) -> str:
        """``error_precision`` of the response: exact, power_of_ten or none."""
        return "exact" if reveal else ("power_of_ten" if self.feedback == "errors" else "none")


def _refused(location: str, message: str, policy_name: str) -> InvalidRequest:
    return InvalidRequest([ErrorItem(location=location, type="policy_forbidden",
                                     message=f"{message} (policy {policy_name!r} of this API key)")],
                          status=403, title="Not allowed by this key's policy", slug="policy-forbidden")


def apply_policy(req, policy: Policy, name: str) -> Effective:
    """The request checked against the caller's policy: 403 naming the field and the policy for ``reveal`` where
    it is not allowed, more submissions than it allows, or a tolerance sent outside its bounds (a tolerance not
    sent is moved into them)."""
    if req.reveal and not policy.reveal:
        raise _refused("reveal", "reveal is not allowed: the reference stays hidden", name)
    count = len(req.submissions) if req.submissions is not None else 1
    if policy.max_submissions < count <= MAX_SUBMISSIONS:  # over the service's own limit: a 422 in prepare
        raise _refused("submissions", f"{count} submissions in one request, over the {policy.max_submissions} allowed: "
                                      f"send them in smaller requests", name)
    values = {}
    for tol_name in ("rtol", "atol"):
        low, high = policy.tolerance_bounds(tol_name)
        value = getattr(req, tol_name)
        if tol_name not in req.model_fields_set:
            value = min(max(value, low), high)
        elif not low <= value <= high:
            raise _refused(tol_name, f"{tol_name} = {value:g} is outside [{low:g}, {high:g}]", name)
        values[tol_name] = value
    return Effective(grading.Tolerance(**values), policy.feedback)


def _located(exc: ValidationError, base: tuple) -> list[ErrorItem]:
    """pydantic's errors of one submission, located from the request's root (``base``: ('submissions', 2)); a
    ragged matrix is located at its first short or long row."""
    items = []
    raw = [e for e in exc.errors(include_url=False) if e["type"] != MORE_ERRORS]  # as from_validation_error does
    for err, item in zip(raw, from_validation_error(exc).errors):
        loc = (*base, *err["loc"])
        if err["type"] == "ragged_matrix":
            loc = (*loc, err["ctx"]["row"])
        location = format_location(loc, err["type"] in ("extra_forbidden", "missing"))
        items.append(ErrorItem(location=location, message=item.message, type=item.type))
    return items


@dataclass(frozen=True)
class KeySet:
    """The keys a request can grade, how to list them, and what they are keys of ("this 3-layer network")."""

    valid: frozenset[str]
    listing: str
    of: str


def _key_errors(arrays: dict[str, np.ndarray], base: str, keyset: KeySet, points: Optional[dict]) -> list[ErrorItem]:
    """Unknown key names, or nothing to grade."""
    errors = []
    if not arrays and not points:
        errors.append(ErrorItem(location=base, type="empty_submission",
                                message=f"the submission holds no key, so there is nothing to grade: send at least "
                                        f"one of {keyset.listing} (or list keys in `points` to grade them as missing)"))
    for key in arrays:
        if key not in keyset.valid:
            errors.append(ErrorItem(location=f"{base}.{key}", type="unknown_key",
                                    message=f"{key!r} is not a quantity of {keyset.of}; the keys are "
                                            f"{keyset.listing}"))
    return errors


def check_keys(req, subs: "Batch", keyset: KeySet) -> None:
    """Key names of every submission and of ``points``: a 422 in the single form, a submission set aside with its
    errors in the batch form; then what each set-aside submission would have been worth."""
    batch = req.submissions is not None
    for i, arrays in enumerate(subs.arrays):
        errors = [] if arrays is None else _key_errors(arrays, f"submissions[{i}]" if batch else "submission",
                                                       keyset, req.points)
        if errors and not batch:
            raise InvalidRequest(errors)
        if errors:
            subs.arrays[i], subs.errors[i] = None, errors
    bad_points = [ErrorItem(location=f"points.{key}", type="unknown_key",
                            message=f"{key!r} is not a quantity of {keyset.of}; the keys are {keyset.listing}")
                  for key in req.points or {} if key not in keyset.valid]
    if bad_points:
        raise InvalidRequest(bad_points)
    subs.worth = [_worth(raw, req.points, keyset.valid) if arrays is None else 0.0
                  for arrays, raw in zip(subs.arrays, req.submissions if batch else [req.submission])]


def read_submissions(req, limits: Limits) -> Batch:
    """The submissions' arrays, the malformed ones of the batch form (see ``_keep_malformed``) set aside with
    their located errors; then the element count, before any work."""
    batch = req.submissions is not None
    subs = req.submissions if batch else [req.submission]
    where = "submissions" if batch else "submission"
    if len(subs) > MAX_SUBMISSIONS:
        raise _over(where, f"the number of submissions is {len(subs)}, over this service's limit of {MAX_SUBMISSIONS}")
    out = Batch()
    for i, sub in enumerate(subs):
        if isinstance(sub, Malformed):
            out.add(None, _located(sub.exc, ("submissions", i)), {})
        else:
            out.add(sub.arrays(), [], sub.notes())
    elements = sum(a.size for sub in out.graded for a in sub.values())
    if elements > limits.max_elements:
        raise _over(where, f"the submitted arrays hold {elements} numbers, over this service's limit of "
                           f"{limits.max_elements}")
    return out


def prepare_grading(req: GradeRequest, limits: Limits) -> tuple[Prepared, Batch]:
    """``prepare`` plus the submission checks: batch size, element count, key names, empty submissions, and the
    price of the grading (graded keys, comparisons), all before any work. A malformed submission of the batch form
    is set aside with its located errors; of the single form, it is a 422."""
    batch = req.submissions is not None
    where = "submissions" if batch else "submission"
    subs = read_submissions(req, limits)
    prep = prepare(req, limits)
    check_keys(req, subs, KeySet(frozenset(grading.key_names(prep.layers)), grading.key_summary(prep.layers),
                                 f"this {len(prep.layers)}-layer network"))
    _price(req, prep, subs, where)
    subs.arrays = [None if sub is None else
                   {k: (prep.layouts.to_engine_activation(a) if grading.is_per_example(k) else a)
                    for k, a in sub.items()}
                   for sub in subs.arrays]
    return prep, subs


def _worth(raw, points: Optional[dict[str, float]], valid: frozenset[str]) -> float:
    """What a malformed submission would have been worth: the total of ``points``, else 1 per valid key it has."""
    if points:
        return float(sum(points.values()))
    return float(len(valid & set(raw.keys if isinstance(raw, Malformed) else raw.arrays())))


def _price(req: GradeRequest, prep: Prepared, subs: Batch, where: str) -> None:
    work = grading.grading_work(prep.layers, prep.dropout, ({k: a.size for k, a in sub.items()} for sub in subs.graded))
    price(req, subs, where, work, grading.LOCAL_CANDIDATES + len(grading.hypotheses(prep.layers, prep.dropout)))


def price(req, subs: Batch, where: str, work: int, candidates: int) -> None:
    """422 ``limit_exceeded`` when the graded keys or the comparisons (``work``, numbers compared with up to
    ``candidates`` hypotheses per key) are over the limits."""
    listed = set(req.points or ())
    results = sum(len(listed | set(sub)) for sub in subs.graded)
    if results > MAX_KEY_RESULTS:
        raise _over(where, f"this request grades {results} keys in all (each submission's keys, `points` included), "
                           f"over this service's limit of {MAX_KEY_RESULTS}: send the batch in smaller parts")
    if work > MAX_GRADING_WORK:
        raise _over(where, f"grading this request compares each submitted array with the reference and with up to "
                           f"{candidates} hypotheses of a mistake, priced at {work} numbers compared, over this "
                           f"service's limit of {MAX_GRADING_WORK}: send fewer submissions per request, or fewer or "
                           f"smaller keys")


# --- response --------------------------------------------------------------------------------------------------

_COARSE = ("; without `reveal` rounded up to a power of ten (an upper bound within a factor of ten; 0 stays 0), "
           "exact with it, null under a policy with `feedback: status`")
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
        description="The numbers behind it. Always the constants of the hypothesis: `ratio` of a named factor (m, "
                    "1/m, -1), `m`, `lambda`, `matches` (the key it matches). Only with `reveal`, the evidence fitted "
                    "to the reference: `max_abs_error_under_hypothesis` (the submission against the value this "
                    "mistake produces) and a least-squares `ratio` (s ~ ratio * reference).")
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
    wrong_entries: Optional[int] = Field(default=None, description="Entries outside the tolerance (null under a policy with `feedback: status`).")
    entries: int = Field(description="Entries graded (reference entries that are null, not representable in float64, are not).")
    worst: Optional[WorstEntry] = Field(default=None, description="For an incorrect key: the entry furthest outside the tolerance (null under a policy with `feedback: status`).")
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
    status: Literal["graded", "invalid"] = Field(
        description="`graded`, or `invalid`: the submission is malformed (see `errors`) and was not graded; the "
                    "other submissions of the batch are.")
    score: float = Field(description="Points earned (0 when invalid).")
    max_score: float = Field(description="Points available (when invalid: the total of `points`, else 1 per valid "
                                         "key name the submission holds).")
    keys: list[KeyResult] = Field(description="Every graded key (none when invalid).")
    diagnoses: list[DiagnosisSummary] = Field(description="The distinct mistakes found, each with the keys it explains.")
    errors: list[ErrorItem] = Field(default_factory=list, description="Why an invalid submission could not be graded, "
                                                                      "each located from the request's root, e.g. "
                                                                      "`submissions[2].dW1[1]`.")


# The body of a 200 from POST /v1/grade (native format).
class GradeResponse(BaseModel):
    tolerance: dict[str, float] = Field(description=f"`rtol` and `atol` used (the key's policy may have moved a "
                                                    f"default into its bounds): {_RULE}.")
    reveal: bool
    error_precision: Literal["exact", "power_of_ten", "none"] = Field(
        description="`exact` with `reveal`; otherwise `power_of_ten`: each key's errors and difference are rounded up "
                    "to a power of ten; `none` under a policy with `feedback: status`: no errors, wrong-entry counts "
                    "or worst entries at all.")
    result: Optional[GradeResult] = Field(default=None, description="With `submission`.")
    results: Optional[list[GradeResult]] = Field(default=None, description="With `submissions`, in their order.")
    reference: Optional[dict[str, Any]] = Field(
        default=None, description="Only with `reveal`: the reference value of every key graded in this request, once "
                                  "for the whole batch, in the request's layout (null entries: not representable).")


# Any 200 body of POST /v1/grade.
class GradeAnyResponse(RootModel[Union[GradeResponse, GradescopeResponse, prairielearn.PrairieLearnResponse]]):
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


def _channels_last(ref, key: str) -> bool:
    """Whether the key is an image batch held (m, C, H, W) here and (m, H, W, C) at the wire (image_layout NHWC);
    a step's reference (no layouts) holds its arrays as the wire does."""
    layouts = getattr(ref, "layouts", None)
    return layouts is not None and layouts.channels_last and grading.is_per_example(key)


def _flip(key: str, index: tuple[int, ...] | None, ref) -> list[int] | None:
    """An index (or shape) into the reference's array -> the request's layout (``ref.flips``: held transposed;
    image batches by image_layout)."""
    if index is None:
        return None
    if len(index) == 2 and ref.flips(key):
        return [int(index[1]), int(index[0])]
    if len(index) == 4 and _channels_last(ref, key):
        return [int(i) for i in Layouts(channels_last=True).index_to_wire(tuple(index))]
    return [int(i) for i in index]


def _wire_array(key: str, a: np.ndarray, ref) -> Any:
    if a.ndim == 0:
        return None if np.isnan(a) else float(a)
    if a.ndim == 2 and ref.flips(key):
        a = a.T
    if a.ndim == 4 and _channels_last(ref, key):
        a = Layouts(channels_last=True).to_wire_activation(a)
    return np.ascontiguousarray(a)


def _evidence(d: grading.Diagnosis, exact: bool) -> dict[str, Any]:
    """The evidence as the response shows it: all of it with ``reveal``; otherwise the constants of the hypothesis
    only (what the engine fitted to the reference, ``d.fitted``, is left out)."""
    return dict(d.evidence) if exact else {k: v for k, v in d.evidence.items() if k not in d.fitted}


def _key_result(kg: grading.KeyGrade, expected: tuple[int, ...], precision: str, ref, notes: list[str]) -> dict:
    """One key as the response shows it. ``precision``: exact (reveal), power_of_ten or none (errors, wrong-entry
    count and worst entry left out)."""
    c = kg.comparison
    exact = precision == "exact"
    coarse = (lambda x: x) if exact else power_of_ten if precision == "power_of_ten" else (lambda x: None)
    body: dict[str, Any] = {"key": kg.key, "status": kg.status, "points": kg.points, "earned": kg.earned,
                            "expected_shape": _flip(kg.key, expected, ref) or [],
                            "shape": None, "max_abs_error": None, "max_rel_error": None, "difference": None,
                            "wrong_entries": None, "entries": 0, "worst": None, "null_entries": 0,
                            "first_null": None, "diagnosis": None, "notes": notes + list(kg.notes)}
    if c is not None:
        body.update({"shape": _flip(kg.key, c.shape, ref) or [], "max_abs_error": coarse(c.max_abs_error),
                     "max_rel_error": coarse(c.max_rel_error), "difference": coarse(c.difference),
                     "wrong_entries": c.wrong_entries if precision != "none" else None,
                     "null_entries": c.null_entries, "entries": c.entries,
                     "first_null": _flip(kg.key, c.first_null, ref)})
        if c.worst_index is not None and precision != "none":
            body["worst"] = {"index": _flip(kg.key, c.worst_index, ref) or [], "submitted": c.worst_submitted,
                             "reference": c.worst_reference if exact else None}
        if c.status == "shape_mismatch" and not c.reshaped:
            body["notes"].append(f"{kg.key} is {shape_text(body['shape'])} but {shape_text(body['expected_shape'])} "
                                 f"was expected")
    if kg.diagnosis is not None:
        d = kg.diagnosis
        body["diagnosis"] = {"code": d.code, "message": d.message, "layer": d.layer, "evidence": _evidence(d, exact),
                             "alternatives": list(d.alternatives)}
    return body


def _grade_result(g: grading.SubmissionGrade, ref, precision: str, notes: dict[str, list[str]]) -> dict:
    return {"status": "graded", "score": g.score, "max_score": g.max_score,
            "keys": [_key_result(k, ref.arrays[k.key].shape, precision, ref, notes.get(k.key, []))
                     for k in g.keys],
            "diagnoses": [{"code": d.code, "layer": d.layer, "message": d.message, "keys": keys}
                          for d, keys in g.summary],
            "errors": []}


def _invalid_result(errors: list[ErrorItem], worth: float) -> dict:
    return {"status": "invalid", "score": 0.0, "max_score": worth, "keys": [], "diagnoses": [],
            "errors": [e.model_dump() for e in errors]}


def grade_to_wire(grades: list[grading.SubmissionGrade], ref, req, subs: Batch,
                  effective: Effective) -> dict | junit.JUnitXML:
    """The engine's grades (one per well-formed submission, in order) against ``ref`` (a network's Reference or
    a step's) -> the response body in the requested format, the malformed submissions in their places."""
    precision = effective.precision(req.reveal)
    graded = iter(grades)
    results = [_invalid_result(errors, worth) if arrays is None else
               _grade_result(next(graded), ref, precision, notes)
               for arrays, errors, notes, worth in zip(subs.arrays, subs.errors, subs.notes, subs.worth)]
    tol = effective.tolerance
    if req.format in ("prairielearn", "junit"):  # built from the native results, each in its own module
        return (prairielearn if req.format == "prairielearn" else junit).response(results, tol, precision,
                                                                                  req.submissions is not None)
    if req.format == "gradescope":
        docs = [invalid_document(r, req.visibility) if r["status"] == "invalid" else
                document(r, tol, req.visibility, precision) for r in results]
        return {"results": docs} if req.submissions is not None else docs[0]
    body: dict[str, Any] = {"tolerance": {"rtol": tol.rtol, "atol": tol.atol}, "reveal": req.reveal,
                            "error_precision": precision}
    if req.submissions is not None:
        body["results"] = results
    else:
        body["result"] = results[0]
    if req.reveal:
        keys = {k.key for g in grades for k in g.keys}
        body["reference"] = {k: _wire_array(k, ref.arrays[k], ref) for k in ref.order if k in keys}
    return body

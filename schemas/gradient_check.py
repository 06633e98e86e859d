"""POST /v1/gradient-check: the request and response models, the caps counted before running, and the layout edge.
The request extends ``GradientRequest`` and goes through its ``prepare``; the engine sees features first only.

A check is priced before it runs (``gradcheck.plan``): its forward passes against ``max_forward_passes``, and their
cost in multiply-add equivalents (the products, W read from memory, the elementwise work and a fixed overhead
per layer evaluation, so that 64 layers of width 1 are not priced at 64 multiply-adds) against the service's
GRADIENT_MAX_WORK.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Optional

import numpy as np
from pydantic import BaseModel, Field, StrictInt, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from schemas.arrays import array_type
from schemas.common import FiniteFloat
from schemas.errors import ErrorItem, InvalidRequest
from schemas.gradescope import shape_text
from schemas.gradients import GradientRequest, Prepared, prepare
from schemas.grading import NotUsed
from schemas.limits import Limits
from service.engine import gradcheck

HARD_MAX_FORWARD_PASSES = 200_000
DEFAULT_MAX_FORWARD_PASSES = 20_000


# The body of POST /v1/gradient-check.
class GradientCheckRequest(GradientRequest):
    epsilon: Annotated[FiniteFloat, Field(ge=1e-12, le=1e-2)] = Field(
        default=gradcheck.DEFAULT_EPSILON, description="Step of the central differences, default 1e-7, in "
                                                       "[1e-12, 1e-2], and above one unit in the last place of the "
                                                       "largest |W| or |b| entry (so that theta + eps and "
                                                       "theta - eps both differ from theta).")
    threshold: Annotated[FiniteFloat, Field(gt=0)] = Field(
        default=gradcheck.DEFAULT_THRESHOLD, description="Pass when ||a - n|| / (||a|| + ||n||) <= threshold; "
                                                         "default 2e-7, as the course uses.")
    mode: Literal[gradcheck.MODES] = Field(  # type: ignore[valid-type]
        default="full", description="`full`: every entry of every dW and db; `entries`: `samples` random entries; "
                                    "`directions`: `samples` random unit directions over all the parameters (no "
                                    "per-parameter metric). The sampled modes are for large networks.")
    samples: Optional[Annotated[StrictInt, Field(ge=1)]] = Field(
        default=None, validate_default=True, description="Sample size, required with `entries` and `directions`.")
    seed: Annotated[StrictInt, Field(ge=0)] = Field(default=0, description="Seed of the random sample.")
    max_forward_passes: Annotated[StrictInt, Field(ge=1, le=HARD_MAX_FORWARD_PASSES)] = Field(
        default=DEFAULT_MAX_FORWARD_PASSES,
        description=f"Cap on the forward passes (1 + 2 per checked entry or direction), counted before running; default "
                    f"{DEFAULT_MAX_FORWARD_PASSES}, at most {HARD_MAX_FORWARD_PASSES}. Independently, the passes' "
                    f"price in multiply-add equivalents (per layer evaluation: n_l n_(l-1) (m + "
                    f"{gradcheck.WEIGHT_READ}) + {gradcheck.ELEMENTWISE} n_l m + {gradcheck.LAYER_OVERHEAD}; a pass "
                    f"for an entry of layer l evaluates layers l..L in `full` mode, every layer otherwise; plus "
                    f"{gradcheck.DIRECTION_DRAW} per parameter entry per direction) may not exceed GRADIENT_MAX_WORK.")
    worst: Annotated[StrictInt, Field(ge=1, le=100)] = Field(default=5, description="How many worst entries to list.")
    gradients: Optional[dict[str, array_type(1, 2, 4)]] = Field(
        default=None, description="A submitted gradient to check instead of the service's own: every parameter's "
                                  "(dW1..dWL (n_l, n_(l-1)), db1..dbL ((n_l, 1) or (n_l,)), conv2d's 4-D dW, "
                                  "dgamma, dbeta), each in the shape its parameter was sent in.")
    include_caches: NotUsed = Field(default=False, description="Accepted (a /v1/gradients body can be sent as it "
                                                               "is) and ignored by this route.")

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

    @field_validator("samples")
    @classmethod
    def _samples_for_sampled_modes(cls, value: Optional[int], info: ValidationInfo) -> Optional[int]:
        mode = info.data.get("mode")
        if value is None and mode in ("entries", "directions"):
            raise PydanticCustomError("samples_missing", "mode {mode} needs `samples`: how many random "
                                                         "{what} to check", {"mode": mode, "what": "entries" if mode == "entries" else "directions"})
        return value


def prepare_check(req: GradientCheckRequest, limits: Limits) -> tuple[Prepared, list | None]:
    """``prepare``, the caps (counted from shapes) and the submitted gradients (one {param: gradient} per layer,
    each in its parameter's engine form), or None to check the service's own."""
    prep = prepare(req, limits)
    layers = prep.layers
    floor = gradcheck.smallest_epsilon(layers)
    if req.epsilon <= floor:
        raise InvalidRequest([ErrorItem(location="epsilon", type="epsilon_too_small",
                                        message=f"epsilon {req.epsilon:g} is too small for parameters this large: it "
                                                f"must exceed one unit in the last place of the largest "
                                                f"{_magnitudes(prep)} entry, {floor:g}, or theta + eps and theta - eps would round back "
                                                f"to theta")])
    m = prep.Y.shape[1]
    shapes = prep.shapes[:-1]
    plan = gradcheck.plan(layers, shapes, m, req.mode, req.samples)
    unit = "direction" if req.mode == "directions" else "entry"
    errors = []
    if plan.passes > req.max_forward_passes:
        hint = ("; use mode `entries` or `directions` with fewer samples" if req.mode == "full"
                else "; lower `samples`")
        errors.append(ErrorItem(location="max_forward_passes", type="limit_exceeded",
                                message=f"this check needs {plan.passes} forward passes (1 + 2 per {unit}), "
                                        f"over the cap of {req.max_forward_passes}{hint}"))
    if plan.work > limits.max_work:
        if req.mode == "full":
            location, hint = "mode", "use mode `entries` or `directions` with a small `samples`"
        else:
            afford = _affordable_samples(layers, shapes, m, req.mode, limits.max_work)
            location = "samples"
            plural = "entries" if unit == "entry" else "directions"
            hint = (f"lower `samples`: at most {afford} {unit if afford == 1 else plural} fit" if afford
                    else f"not even one {unit} fits: send a smaller network or fewer examples")
        errors.append(ErrorItem(location=location, type="limit_exceeded",
                                message=f"this check's {plan.passes} forward passes over {len(layers)} layers and m = "
                                        f"{m} examples are priced at {plan.work} multiply-add equivalents (fixed costs "
                                        f"per layer included), over this service's limit of {limits.max_work}; {hint}"))
    if errors:
        raise InvalidRequest(errors, title="Request over the limits", slug="limit-exceeded")
    if req.gradients is None:
        return prep, None
    return prep, _submitted(req.gradients, prep)


def _magnitudes(prep: Prepared) -> str:
    """'|W| or |b|': the parameters of this network."""
    return " or ".join(f"|{name}|" for name in dict.fromkeys(name for _, _, name in gradcheck.gradient_order(prep.layers)))


def _param_summary(prep: Prepared) -> str:
    """'dW1..dW2 and db1..db2': the parameter gradients a submission must hold."""
    order = gradcheck.gradient_order(prep.layers)
    names = dict.fromkeys(name for _, _, name in order)
    parts = []
    for name in names:
        layers = [l for _, l, n in order if n == name]
        run = layers == list(range(layers[0], layers[-1] + 1))
        parts.append(f"d{name}{layers[0]}..d{name}{layers[-1]}" if run else ", ".join(f"d{name}{l}" for l in layers))
    return " and ".join(parts) if len(parts) <= 2 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _submitted(gradients: dict, prep: Prepared) -> list[dict]:
    """The submitted gradients in each parameter's engine form; every one is needed, each as its parameter was
    sent (a vector (n,) for a column (n, 1) also)."""
    order = gradcheck.gradient_order(prep.layers)
    want = {key for key, _, _ in order}
    errors = [ErrorItem(location=f"gradients.{key}", type="unknown_key",
                        message=f"{key!r} is not a parameter gradient of this network: send {_param_summary(prep)}")
              for key in gradients if key not in want]
    every = " and ".join(f"d{name}" for name in dict.fromkeys(name for _, _, name in order))
    out: list[dict] = [{} for _ in prep.layers]
    for l, layer in enumerate(prep.layers, start=1):  # layer by layer: dW1, db1, dW2, ...
        for param in layer.unit.params:
            key = f"d{param.name}{l}"
            engine = np.empty(layer.params[param.name].shape)
            target = param.to_wire(engine, None, prep.layouts).shape
            as_sent = param.to_wire(engine, prep.sent[l - 1][param.name], prep.layouts).shape  # conv's (1, 1, 1, F)
            g = gradients.get(key)
            if g is None:
                errors.append(ErrorItem(location=f"gradients.{key}", type="missing",
                                        message=f"{key} is missing: send every {every}"))
            elif g.shape not in (target, as_sent) and not (g.ndim == 1 and target == (g.shape[0], 1)):
                errors.append(ErrorItem(location=f"gradients.{key}", type="shape_mismatch",
                                        message=f"{key} is {shape_text(list(g.shape))}, but the parameter is "
                                                f"{shape_text(list(target))}"))
            else:
                out[l - 1][param.name] = param.to_engine(g.reshape(target), prep.layouts)
    if errors:
        raise InvalidRequest(errors)
    return out


def _affordable_samples(layers: list, shapes: list, m: int, mode: str, budget: int) -> int:
    """The largest sample size whose plan fits the budget (0 if none)."""
    lo, hi = 0, 1
    while gradcheck.plan(layers, shapes, m, mode, hi).work <= budget and hi < 10 ** 9:
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if gradcheck.plan(layers, shapes, m, mode, mid).work <= budget:
            lo = mid
        else:
            hi = mid
    return lo


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


def _wire_index(prep: Prepared, parameter: str, index: tuple[int, ...]) -> list[int]:
    """An index into a parameter's engine form -> the same entry's index in the form the parameter was sent in."""
    for key, l, name in gradcheck.gradient_order(prep.layers):
        if key == parameter:
            layer = prep.layers[l - 1]
            param = next(p for p in layer.unit.params if p.name == name)
            shape = layer.params[name].shape
            positions = param.to_wire(np.arange(int(np.prod(shape))).reshape(shape), prep.sent[l - 1][name],
                                      prep.layouts)
            flat = int(np.ravel_multi_index(index, shape))
            return [int(i) for i in np.argwhere(positions == flat)[0]]
    return list(index)


def check_to_wire(res: gradcheck.CheckResult, prep: Prepared, req: GradientCheckRequest) -> dict:
    def index(entry: gradcheck.EntryCheck) -> list[int] | None:
        return None if entry.index is None else _wire_index(prep, entry.parameter, entry.index)

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

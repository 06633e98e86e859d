"""POST /v1/grade with a one-step ``task``: the body is that route's body plus the grading fields, the submission is
keyed by that route's response names, and the tolerances, reveal rules, batch form and formats are those of the
network's grading (``schemas.grading``).

A submission mirrors the route's response: nested objects are read as dotted keys (``{"params": {"W1": ...}}`` is
``params.W1``, ``{"state": {"v": {"dW1": ...}}}`` is ``state.v.dW1``), and dotted keys may be sent as they are.
Values are numbers (``cost``, ``t``, ``learning_rate``) or arrays, whose entries may be null. Arrays are compared
in the request's layout, as the route returns them.

Each task is one registered value (``TASKS``): its route's request model, the response it grades, and how its
reference is built (``service.engine.grading.steps``); the grade route and OpenAPI loop over them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Callable, Literal, Union

import numpy as np
from pydantic import (BaseModel, ConfigDict, Discriminator, Field, RootModel, Tag, WrapValidator, create_model,
                      model_validator)

from schemas import optimizer as opt
from schemas import steps as wire
from schemas.arrays import scalar_or_array_type
from schemas.grading import (ONE_FORM, Batch, GradeRequest, KeySet, Malformed, _OrAnythingElse, check_keys,
                             grading_fields, price, read_submissions)
from schemas.limits import Limits
from service.engine import COSTS, Result, grading, steps
from service.engine.grading import steps as step_grading
from service.engine.grading.reference import TEXTBOOK_ULPS, _spread, reference_arrays

Array = np.ndarray
StepValue = scalar_or_array_type(1, 2, 3, 4)


def flatten(body: dict, prefix: str = "") -> dict[str, Array]:
    """A response body (or a submission) -> dotted keys to arrays; lists of objects (warnings) and nulls left
    out."""
    out: dict[str, Array] = {}
    for key, value in body.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        elif isinstance(value, np.ndarray):
            out[name] = value
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[name] = np.array(float(value))
    return out


def _dotted(value: Any, prefix: str = "") -> dict[str, Any]:
    """A submission's nested objects as dotted keys, values untouched (validated next). What ``flatten`` leaves
    out of a response is left out here too, so that the response fed back grades: nulls (``t`` of an optimizer
    without one) and lists of objects (``warnings``, empty or not)."""
    out: dict[str, Any] = {}
    for key, item in value.items():
        name = f"{prefix}{key}"
        if isinstance(item, dict) and item:
            out.update(_dotted(item, name + "."))
        elif not (isinstance(item, dict) or item is None or _objects(item)):
            out[name] = item
    return out


def _objects(item: Any) -> bool:
    """An empty list or a list of objects: never a graded value (those hold numbers)."""
    return isinstance(item, list) and (not item or all(isinstance(v, dict) for v in item))


# One student's values for a one-step task, keyed by the route's response names.
class StepSubmission(BaseModel):
    model_config = ConfigDict(extra="allow", json_schema_extra={
        "description": "The student's values keyed by the task's response names, nested as the route returns them "
                       "(or as dotted keys: `params.W1`, `state.v.dW1`): numbers or arrays whose entries may be "
                       "null (null grades `not_a_number`). The route's response, fed back, scores full marks."})
    __pydantic_extra__: dict[str, StepValue] = Field(init=False)

    @model_validator(mode="before")
    @classmethod
    def _flatten(cls, data: Any) -> Any:
        return _dotted(data) if isinstance(data, dict) else data

    def arrays(self) -> dict[str, Array]:
        return dict(self.model_extra or {})

    def notes(self) -> dict[str, list[str]]:
        return {}


def _keep_malformed(value: Any, handler):
    try:
        return handler(value)
    except Exception as exc:  # a ValidationError: the submission is set aside with its located errors
        if not hasattr(exc, "errors"):
            raise
        keys = tuple(_dotted(value)) if isinstance(value, dict) else ()
        return Malformed(exc, keys)


StepBatchItem = Annotated[StepSubmission, WrapValidator(_keep_malformed), _OrAnythingElse()]


# --- the tasks ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Task:
    """A one-step task: ``request`` (the route's body), its ``path``, and ``reference(req, limits)`` -> the
    StepReference of that body (validated and priced as the route does)."""

    name: str
    path: str
    request: type[BaseModel]
    reference: Callable[[Any, Limits], step_grading.StepReference]

    @property
    def grade_request(self) -> type[BaseModel]:
        return _GRADE_MODELS[self.name]


def _forward_reference(req: wire.LayerForwardRequest, limits: Limits) -> step_grading.StepReference:
    prep = wire.prepare_layer(req, limits)

    def to_keys(step: steps.ForwardStep) -> dict[str, Array]:
        return flatten(wire.forward_to_wire(step, prep))

    arrays = to_keys(steps.layer_forward(prep.layer, prep.A_prev))
    return step_grading.StepReference(
        arrays, {k: "value" for k in arrays}, prep.m,
        swaps=(("A", "Z", "activation_not_applied", "A holds Z: the activation g was not applied, A = g(Z)"),),
        hypotheses=step_grading.forward_hypotheses(prep.layer, prep.A_prev, to_keys),
        work=_layer_work(prep), variant_work=limits.max_work)


def _layer_work(prep: wire.LayerPrep) -> int:
    return prep.layer.unit.price(prep.in_shape, prep.out_shape, prep.sent, prep.layer.hyper, prep.m).work


def _backward_reference(req: wire.LayerBackwardRequest, limits: Limits) -> step_grading.StepReference:
    prep = wire.prepare_layer(req, limits)

    def to_keys(dA_prev: Array, dZ: Array, grads: dict[str, Array]) -> dict[str, Array]:
        return flatten(wire.backward_to_wire(steps.BackwardStep(dA_prev, dZ, grads), prep))

    step = steps.layer_backward(prep.layer, prep.A_prev, dA=prep.dA, dZ=prep.dZ, Z=prep.Z,
                                intermediates=req.intermediates, l2=req.l2)
    arrays = to_keys(step.dA_prev, step.dZ, step.grads)
    grads = {f"d{p.name}": p for p in prep.layer.unit.params}
    l2_parts = {key: p.to_wire((req.l2 / prep.m) * prep.layer.params[p.name], prep.sent[p.name], prep.layouts)
                for key, p in grads.items() if req.l2 and p.l2}
    return step_grading.StepReference(
        arrays, {k: "grad" if k in grads else "value" for k in arrays}, prep.m, req.intermediates, req.l2, l2_parts,
        hypotheses=step_grading.backward_hypotheses(prep.layer, prep.A_prev, prep.dA, prep.dZ, prep.Z,
                                                    req.intermediates, req.l2, to_keys),
        work=_layer_work(prep), variant_work=limits.max_work)


def _cost_reference(req: wire.CostRequest, limits: Limits) -> step_grading.StepReference:
    prep = wire.prepare_cost(req, limits)
    step = wire.compute_cost(prep, req)
    arrays = flatten(wire.cost_to_wire(step, prep))
    m = prep.Y.shape[1]
    roles = {"cost": "cost", "dAL": "intermediate", "dZL": "intermediate", "AL": "value"}
    penalty = steps.penalty(req.weights, req.l2, m)
    swaps = (("dAL", "dZL", "dZL_sent_as_dAL", "dAL holds dZL = AL - Y (the fused output gradient), not dJ/dAL"),
             ("dZL", "dAL", "activation_derivative_missing", "dZL holds dAL: the output activation's derivative "
                                                             "g'(ZL) was left out"))
    return step_grading.StepReference(
        arrays, {k: roles[k] for k in arrays}, m, req.intermediates, req.l2,
        {"cost": np.array(penalty)} if req.l2 else {}, swaps,
        textbook=_cost_textbook(step, prep, req, penalty) if prep.ZL is not None else {})


def _cost_textbook(step: steps.CostStep, prep: wire.CostPrep, req: wire.CostRequest, penalty: float) -> dict:
    """From ZL: the course's formulas evaluated from A_L moved by a few ulps also pass (a learner who computes
    A_L = sigmoid(Z_L) first and then the cost loses the digits the logits keep)."""
    unit, m = COSTS[req.cost], prep.Y.shape[1]
    lo, hi = _spread(lambda A: unit.textbook_loss(A, prep.Y), step.AL, TEXTBOOK_ULPS)
    out = {}
    if not np.isnan(lo).any():
        out["cost"] = (np.array(float(np.sum(lo)) / m + penalty), np.array(float(np.sum(hi)) / m + penalty))
    scale = 1.0 if req.intermediates == "per_example" else 1.0 / m
    dlo, dhi = _spread(lambda A: unit.textbook_dA(A, prep.Y) * scale, step.AL, TEXTBOOK_ULPS)
    out["dAL"] = (wire.to_wire(dlo, prep.layouts), wire.to_wire(dhi, prep.layouts))
    return out


def _optimizer_reference(req: opt.OptimizerStepRequest, limits: Limits) -> step_grading.StepReference:
    prep = opt.prepare_optimizer(req, limits)

    def to_keys(outcome) -> dict[str, Array]:
        return flatten(opt.outcome_to_wire(outcome))

    arrays = to_keys(opt.run(prep))
    entries = sum(a.size for a in prep.params.values())
    scheduled = prep.decay is not None and prep.decay["kind"] == "scheduled"
    return step_grading.StepReference(
        arrays, {k: "value" for k in arrays}, 1,
        hypotheses=step_grading.optimizer_hypotheses(prep.optimizer, prep.convention,
                                                     lambda **kw: opt.run(prep, **kw), to_keys, scheduled),
        work=opt.WORK_PER_ENTRY * entries, variant_work=limits.max_work)


def _network_reference(req: wire.NetworkBackwardRequest, limits: Limits) -> grading.Reference:
    """Backpropagation from the learner's caches, graded as a network's backward pass is: a Reference whose
    result is the cached pass (no cost, no forward pass to re-run: ``forward_known`` is False)."""
    prep = wire.prepare_network(req, limits)
    run = steps.backward_from_caches(prep.layers, prep.A_prevs, prep.Zs, prep.dAL, intermediates=req.intermediates,
                                     l2=req.l2)
    L, G = len(prep.layers), [c.G for c in run.caches]
    result = Result(cost=float("nan"), AL=G[-1], Z=[c.Z for c in run.caches], A=G, grads=run.grads, dZ=run.dZ,
                    dA=run.dA, state=[{} for _ in range(L)], unrepresentable=np.zeros(G[-1].shape, dtype=bool),
                    caches=run.caches)
    arrays = {k: a for k, a in reference_arrays(result, prep.layers, prep.sent, prep.layouts, req.intermediates,
                                                prep.m).items()
              if grading.parse(k).quantity in ("grad", "dZ", "dA")}
    return grading.Reference(X=prep.A_prevs[0], Y=np.empty((0, prep.m)), layers=prep.layers, cost=None, l2=req.l2,
                             dropout=None, intermediates=req.intermediates, sent=prep.sent, layouts=prep.layouts,
                             in_shapes=prep.in_shapes, result=result, arrays=arrays, variant_work=limits.max_work,
                             variant_elements=limits.max_activations, examples=prep.m, forward_known=False)


TASKS: dict[str, Task] = {t.name: t for t in (
    Task("layer_forward", "/v1/layer/forward", wire.LayerForwardRequest, _forward_reference),
    Task("layer_backward", "/v1/layer/backward", wire.LayerBackwardRequest, _backward_reference),
    Task("cost", "/v1/cost", wire.CostRequest, _cost_reference),
    Task("optimizer_step", "/v1/optimizer-step", opt.OptimizerStepRequest, _optimizer_reference),
    Task("network_backward", "/v1/network/backward", wire.NetworkBackwardRequest, _network_reference),
)}


def _grade_model(task: Task) -> type[BaseModel]:
    name = "".join(part.capitalize() for part in task.name.split("_")) + "GradeRequest"
    return create_model(name, __base__=task.request, __validators__=ONE_FORM,
                        task=(Literal[task.name], Field(description=f"`{task.name}`: the body of POST {task.path}, "
                                                                    f"graded by its response's names.")),
                        **grading_fields(StepSubmission, StepBatchItem))


_GRADE_MODELS = {name: _grade_model(task) for name, task in TASKS.items()}


def _listing(order: list[str]) -> str:
    return ", ".join(order)


def prepare_step_grading(task: Task, req, limits: Limits) -> tuple[Any, Batch]:
    """The submissions read (batch size, element count), the task's reference built (its route's checks and limits
    first), the key names checked, the grading priced, all before any grading work."""
    batch = req.submissions is not None
    where = "submissions" if batch else "submission"
    subs = read_submissions(req, limits)
    ref = task.reference(req, limits)
    check_keys(req, subs, KeySet(frozenset(ref.order), _listing(ref.order), f"the task {task.name}"))
    per_key = 1 + ref.max_candidates
    work = sum(per_key * (a.size + grading.CANDIDATE_OVERHEAD) for sub in subs.graded for a in sub.values())
    price(req, subs, where, work, per_key - 1)
    # A network's reference holds its per-example keys in the engine's form (vectors features first, images
    # (m, C, H, W)): they are compared converted, as /v1/grade's gradients task does; a step's as sent.
    layouts = getattr(ref, "layouts", None)
    subs.arrays = [None if sub is None else
                   {k: (layouts.to_engine_activation(a) if layouts is not None and grading.is_per_example(k) else a)
                    for k, a in sub.items()}
                   for sub in subs.arrays]
    return ref, subs


def _task_of(value: Any) -> str:
    return value.get("task", "gradients") if isinstance(value, dict) else getattr(value, "task", "gradients")


# Any body of POST /v1/grade (for the OpenAPI document; the route picks the model by `task` itself, so that an
# error is located in the task's own fields).
_VARIANTS = (Annotated[GradeRequest, Tag("gradients")],
             *(Annotated[model, Tag(name)] for name, model in _GRADE_MODELS.items()))


class GradeAnyRequest(RootModel[Annotated[Union[_VARIANTS], Discriminator(_task_of)]]):  # type: ignore[valid-type]
    pass

"""POST /v1/optimizer-step: the request and response models, the checks that span fields, and the limits.

``params`` maps each parameter's name to its array (``W1``, or cs231n's ``w``), ``grads`` its gradient under
``d`` + the name (``dW1``, ``dw``), ``state`` the optimizer's dictionaries keyed by gradient name as the course
keeps them (deeplearning.ai's ``v`` and ``s``; cs231n's ``velocity``, ``cache``, ``m`` and ``v``). The formulas of
each optimizer and convention are in ``service.engine.optimizers``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal, Optional

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StrictInt

from schemas.arrays import array_type
from schemas.common import FiniteFloat
from schemas.errors import ErrorItem, InvalidRequest
from schemas.limits import Limits
from service.engine import optimizers
from service.engine.kinds.base import shape_text

AnyArray = array_type(1, 2, 3, 4)
OptimizerName = Literal[tuple(optimizers.OPTIMIZERS)]  # type: ignore[valid-type]
Convention = Literal[optimizers.CONVENTIONS]  # type: ignore[valid-type]
Unit = Annotated[FiniteFloat, Field(ge=0, lt=1)]
# Each optimizer's update touches every entry a handful of times: priced as numbers read.
WORK_PER_ENTRY = 16


# Learning-rate decay applied before the step (deeplearning.ai C2 W2's update_lr and schedule_lr_decay).
class LearningRateDecay(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["inverse_time", "scheduled"] = Field(description="`inverse_time`: lr0 / (1 + decay_rate epoch) "
                                                                   "(update_lr); `scheduled`: lr0 / (1 + decay_rate "
                                                                   "floor(epoch / time_interval)) (schedule_lr_decay).")
    epoch: Annotated[StrictInt, Field(ge=0)] = Field(description="The epoch number.")
    decay_rate: Annotated[FiniteFloat, Field(ge=0)] = Field(description="The decay rate.")
    time_interval: Annotated[StrictInt, Field(ge=1)] = Field(default=1000, description="Epochs per step of the "
                                                             "`scheduled` decay (the course's default 1000).")


def _names(optimizer: str) -> str:
    rules = optimizers.OPTIMIZERS[optimizer].rules
    return "; ".join(f"{c}: {', '.join(r.defaults)}" for c, r in rules.items())


# The body of POST /v1/optimizer-step.
class OptimizerStepRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    optimizer: OptimizerName = Field(description="The update rule: " + ", ".join(
        f"`{n}` ({o.description})" for n, o in optimizers.OPTIMIZERS.items()))
    convention: Convention = Field(default="deeplearning_ai", description="`deeplearning_ai` (the default): state `v` "
                                   "and `s`, momentum v = beta v + (1 - beta) dW, Adam's t used as sent. `cs231n` "
                                   "(optim.py): state `velocity` (v = momentum v - lr dw), `cache` (rmsprop), `m` and "
                                   "`v` (Adam, whose t is incremented before use), and its defaults.")
    params: dict[str, AnyArray] = Field(description="Each parameter's name -> its array (W1, b1, ... or cs231n's w).")
    grads: dict[str, AnyArray] = Field(description="`d` + each parameter's name -> its gradient, of its shape.")
    state: Optional[dict[str, dict[str, AnyArray]]] = Field(
        default=None, description="The optimizer's state, by its name (deeplearning_ai: `v`, and `s` for rmsprop and "
                                  "adam; cs231n: `velocity`, `cache`, or `m` and `v`), each keyed by gradient name "
                                  "(dW1). Absent, or a name absent: zeros, as initialize_velocity and initialize_adam "
                                  "start.")
    t: Optional[Annotated[StrictInt, Field(ge=0)]] = Field(
        default=None, description="Adam's step number: deeplearning_ai uses it as sent in the bias correction (t >= 1, "
                                  "required); cs231n increments it first (default 0). Returned as used.")
    learning_rate: Optional[Annotated[FiniteFloat, Field(gt=0)]] = Field(default=None, description="lr > 0 (default: "
                                                                         "the convention's, 0.01; cs231n Adam 1e-3).")
    beta: Optional[Unit] = Field(default=None, description="Momentum's beta in [0, 1) (deeplearning_ai; default 0.9).")
    momentum: Optional[Unit] = Field(default=None, description="Momentum in [0, 1) (cs231n's sgd_momentum; default 0.9).")
    beta1: Optional[Unit] = Field(default=None, description="Adam's first-moment decay in [0, 1) (default 0.9).")
    beta2: Optional[Unit] = Field(default=None, description="The second-moment decay in [0, 1) (default 0.999).")
    decay_rate: Optional[Unit] = Field(default=None, description="cs231n rmsprop's cache decay in [0, 1) (default "
                                                                 "0.99).")
    epsilon: Optional[Annotated[FiniteFloat, Field(gt=0)]] = Field(default=None, description="epsilon > 0 (default "
                                                                                             "1e-8).")
    learning_rate_decay: Optional[LearningRateDecay] = Field(default=None, description="Decay the learning rate "
                                                             "first; the response's `learning_rate` is the one used.")


HYPERS = ("learning_rate", "beta", "momentum", "beta1", "beta2", "decay_rate", "epsilon")


@dataclass(frozen=True)
class OptimizerPrep:
    """A checked request: the engine's arguments."""

    optimizer: str
    convention: str
    params: dict[str, np.ndarray]
    grads: dict[str, np.ndarray]
    state: dict[str, dict[str, np.ndarray]]
    hyper: dict[str, float]
    t: int | None
    decay: dict | None

    @property
    def rule(self) -> optimizers.Rule:
        return optimizers.OPTIMIZERS[self.optimizer].rules[self.convention]


def _grad_errors(req: OptimizerStepRequest) -> list[ErrorItem]:
    errors = []
    for name, P in req.params.items():
        g = req.grads.get(f"d{name}")
        if g is None:
            errors.append(ErrorItem(location=f"grads.d{name}", type="missing",
                                    message=f"no gradient for parameter {name!r}: send grads.d{name}, of shape "
                                            f"{shape_text(P.shape)}"))
        elif g.shape != P.shape:
            errors.append(ErrorItem(location=f"grads.d{name}", type="shape_mismatch",
                                    message=f"d{name} is {shape_text(g.shape)} but {name} is {shape_text(P.shape)}"))
    for key in req.grads:
        if not (key.startswith("d") and key[1:] in req.params):
            errors.append(ErrorItem(location=f"grads.{key}", type="unknown_key",
                                    message=f"{key!r} is the gradient of no parameter sent; the gradients are "
                                            f"{', '.join('d' + n for n in req.params) or 'none (no params)'}"))
    return errors


def _state_errors(req: OptimizerStepRequest, rule: optimizers.Rule) -> list[ErrorItem]:
    errors = []
    for name, entries in (req.state or {}).items():
        if name not in rule.state:
            have = ", ".join(rule.state) or "no state"
            errors.append(ErrorItem(location=f"state.{name}", type="unknown_key",
                                    message=f"{req.optimizer} ({req.convention}) keeps {have}, not {name!r}"))
            continue
        for g, P in ((f"d{n}", P) for n, P in req.params.items()):
            a = entries.get(g)
            if a is None:
                errors.append(ErrorItem(location=f"state.{name}.{g}", type="missing",
                                        message=f"state {name} has no entry for {g}: send all of them, or leave "
                                                f"{name} out to start from zeros"))
            elif a.shape != P.shape:
                errors.append(ErrorItem(location=f"state.{name}.{g}", type="shape_mismatch",
                                        message=f"{name}[{g!r}] is {shape_text(a.shape)} but {g[1:]} is "
                                                f"{shape_text(P.shape)}"))
        for g in entries:
            if not (g.startswith("d") and g[1:] in req.params):
                errors.append(ErrorItem(location=f"state.{name}.{g}", type="unknown_key",
                                        message=f"{g!r} is the gradient of no parameter sent"))
    return errors


def _hyper_errors(req: OptimizerStepRequest, rule: optimizers.Rule) -> list[ErrorItem]:
    errors = []
    for name in HYPERS:
        if getattr(req, name) is not None and name not in rule.defaults:
            errors.append(ErrorItem(location=name, type="extra_forbidden",
                                    message=f"{name} is not a hyperparameter of {req.optimizer} ({req.convention}); "
                                            f"its hyperparameters are {', '.join(rule.defaults)}"))
    if rule.t_used is None and req.t is not None:
        errors.append(ErrorItem(location="t", type="extra_forbidden",
                                message=f"{req.optimizer} has no step number: t is used by "
                                        f"{', '.join(n for n, o in optimizers.OPTIMIZERS.items() if o.rules[req.convention].t_used)} "
                                        f"only"))
    if rule.t_used is not None and req.convention == "deeplearning_ai" and (req.t is None or req.t < 1):
        errors.append(ErrorItem(location="t", type="missing" if req.t is None else "greater_than_equal",
                                message=f"{req.optimizer} (deeplearning_ai) needs t >= 1, the step number its bias "
                                        f"correction 1 - beta^t uses" + ("" if req.t is None else f"; got {req.t}")))
    return errors


def prepare_optimizer(req: OptimizerStepRequest, limits: Limits) -> OptimizerPrep:
    """Limits, then every gradient, state entry and hyperparameter checked against the parameters and the rule."""
    arrays = [*req.params.values(), *req.grads.values(), *(a for s in (req.state or {}).values() for a in s.values())]
    elements = sum(a.size for a in arrays)
    if elements > limits.max_elements:
        raise InvalidRequest([ErrorItem(location="body", type="limit_exceeded",
                                        message=f"the total number of array elements is {elements}, over this "
                                                f"service's limit of {limits.max_elements}")],
                             title="Request over the limits", slug="limit-exceeded")
    rule = optimizers.OPTIMIZERS[req.optimizer].rules[req.convention]
    errors = _grad_errors(req) + _state_errors(req, rule) + _hyper_errors(req, rule)
    if errors:
        raise InvalidRequest(errors)
    hyper = {name: getattr(req, name) for name in HYPERS if getattr(req, name) is not None}
    t = req.t if req.t is not None else (0 if rule.t_used is not None else None)
    decay = req.learning_rate_decay.model_dump() if req.learning_rate_decay is not None else None
    return OptimizerPrep(req.optimizer, req.convention, dict(req.params), dict(req.grads), dict(req.state or {}),
                         hyper, t if rule.t_used is not None else None, decay)


def run(prep: OptimizerPrep, **mistake: Any) -> optimizers.Outcome:
    """The update (``mistake``: grading's ``step`` or ``t_shift``, passed to ``optimizers.run``)."""
    return optimizers.run(prep.optimizer, prep.convention, prep.params, prep.grads, prep.state, prep.hyper, prep.t,
                          prep.decay, **mistake)


# The body of a 200 from POST /v1/optimizer-step.
class OptimizerStepResponse(BaseModel):
    model_config = ConfigDict(extra="allow", json_schema_extra={
        "description": "Also, for Adam, the bias-corrected moments keyed by gradient name: `v_corrected` and "
                       "`s_corrected` (deeplearning_ai), `m_corrected` and `v_corrected` (cs231n)."})

    params: dict[str, Any] = Field(description="The updated parameters, by name.")
    state: dict[str, dict[str, Any]] = Field(description="The updated state, by its name then gradient name (empty "
                                                         "for sgd).")
    t: Optional[int] = Field(description="The step number used (cs231n: t + 1); null for optimizers without one.")
    learning_rate: float = Field(description="The learning rate used (after `learning_rate_decay`).")


def outcome_to_wire(out: optimizers.Outcome) -> dict:
    """The update -> the response body. NumericalOverflow names the first array that left float64."""
    body: dict[str, Any] = {"params": out.params, "state": out.state, "t": out.t, "learning_rate": out.learning_rate}
    body.update(out.extras)
    return body

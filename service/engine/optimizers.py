"""Optimizer updates: one registered unit each, in the two conventions the courses grade.

``deeplearning_ai`` (the Deep Learning Specialization, C2 W2): the state dictionaries ``v`` (and ``s``) are keyed by
the gradient's name (``dW1``); ``t`` is the step number as sent (Adam's bias correction uses it as it is).
``cs231n`` (``optim.py``): each parameter's config holds ``velocity``, ``cache``, or ``m`` and ``v``; Adam's ``t`` is
incremented before use. The formulas, per parameter P with gradient dP:

    sgd       both:    P = P - lr dP
    momentum  dlai:    v = beta v + (1 - beta) dP,             P = P - lr v
              cs231n:  v = momentum v - lr dP,                 P = P + v          (momentum defaults to 0.9)
    rmsprop   dlai:    s = beta2 s + (1 - beta2) dP^2,         P = P - lr dP / (sqrt(s) + eps)
              cs231n:  cache = decay_rate cache + (1 - decay_rate) dP^2, P = P - lr dP / (sqrt(cache) + eps)
    adam      both:    v = beta1 v + (1 - beta1) dP,  s = beta2 s + (1 - beta2) dP^2,
                       v_corrected = v / (1 - beta1^t),  s_corrected = s / (1 - beta2^t),
                       P = P - lr v_corrected / (sqrt(s_corrected) + eps)
                       (cs231n names v "m" and s "v", and uses t + 1)

Learning-rate decay (C2 W2's ``update_lr`` and ``schedule_lr_decay``), applied before the step:
``inverse_time`` lr0 / (1 + decay_rate epoch), ``scheduled`` lr0 / (1 + decay_rate floor(epoch / time_interval)).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from service.engine.network import NumericalOverflow

Array = np.ndarray
CONVENTIONS = ("deeplearning_ai", "cs231n")


@dataclass(frozen=True)
class Step:
    """One parameter's update: the new parameter, the new state arrays (by state name), and what else the course
    returns (Adam's bias-corrected moments, by name)."""

    param: Array
    state: dict[str, Array]
    extras: dict[str, Array] = field(default_factory=dict)


@dataclass(frozen=True)
class Rule:
    """An optimizer in one convention: its hyperparameters' defaults, its state names, the step number it uses
    (``t_used(t)``; None for optimizers without one), ``step(P, dP, state, hyper, t) -> Step`` and the formula."""

    defaults: dict[str, float]
    state: tuple[str, ...]
    extras: tuple[str, ...]
    t_used: Callable[[int], int] | None
    step: Callable[..., Step]
    formula: str


@dataclass(frozen=True)
class Mistake:
    """A typical mistake: the wrong step it makes in each convention it applies to (``steps`` by convention)."""

    code: str
    description: str
    message: str
    steps: dict[str, Callable[..., Step]]


@dataclass(frozen=True)
class Optimizer:
    name: str
    description: str
    rules: dict[str, Rule]
    mistakes: tuple[Mistake, ...]

    def __post_init__(self) -> None:
        if set(self.rules) != set(CONVENTIONS):
            raise TypeError(f"optimizer {self.name!r} needs a rule for each of {CONVENTIONS}")


OPTIMIZERS: dict[str, Optimizer] = {}


def register(unit: Optimizer) -> Optimizer:
    OPTIMIZERS[unit.name] = unit
    return unit


# --- the updates ----------------------------------------------------------------------------------------------

def _sgd(P, dP, state, h, t, sign=1.0) -> Step:
    return Step(P - sign * h["learning_rate"] * dP, {})


def _momentum_dlai(P, dP, state, h, t, one_minus=True, sign=1.0) -> Step:
    v = h["beta"] * state["v"] + ((1 - h["beta"]) * dP if one_minus else dP)
    return Step(P - sign * h["learning_rate"] * v, {"v": v})


def _momentum_cs231n(P, dP, state, h, t, sign=1.0) -> Step:
    v = h["momentum"] * state["velocity"] - h["learning_rate"] * dP
    return Step(P + sign * v, {"velocity": v})


def _rmsprop(P, dP, state, h, t, name: str, decay: str, eps_inside=False, sign=1.0) -> Step:
    s = h[decay] * state[name] + (1 - h[decay]) * dP * dP
    denominator = np.sqrt(s + h["epsilon"]) if eps_inside else np.sqrt(s) + h["epsilon"]
    return Step(P - sign * h["learning_rate"] * dP / denominator, {name: s})


def _adam(P, dP, state, h, t, names: tuple[str, str], corrected=True, update_corrected=True, eps_inside=False,
          sign=1.0) -> Step:
    first, second = names
    v = h["beta1"] * state[first] + (1 - h["beta1"]) * dP
    s = h["beta2"] * state[second] + (1 - h["beta2"]) * dP * dP
    v_c = v / (1 - h["beta1"] ** t) if corrected else v
    s_c = s / (1 - h["beta2"] ** t) if corrected else s
    vu, su = (v_c, s_c) if update_corrected else (v, s)
    denominator = np.sqrt(su + h["epsilon"]) if eps_inside else np.sqrt(su) + h["epsilon"]
    return Step(P - sign * h["learning_rate"] * vu / denominator, {first: v, second: s},
                {f"{first}_corrected": v_c, f"{second}_corrected": s_c})


_DLAI_ADAM = ("v", "s")
_CS231N_ADAM = ("m", "v")


def _adam_both(**kw) -> dict[str, Callable]:
    """An Adam mistake in both conventions (their state names differ)."""
    return {"deeplearning_ai": lambda *a: _adam(*a, names=_DLAI_ADAM, **kw),
            "cs231n": lambda *a: _adam(*a, names=_CS231N_ADAM, **kw)}


_SIGN = "the update's sign is flipped: the parameter moved up the gradient"

register(Optimizer(
    name="sgd", description="Gradient descent: P = P - learning_rate dP.",
    rules={c: Rule({"learning_rate": 0.01}, (), (), None, _sgd, "P = P - lr dP") for c in CONVENTIONS},
    mistakes=(Mistake("update_sign_flipped", _SIGN, _SIGN + " (P + lr dP)",
                      {c: lambda *a: _sgd(*a, sign=-1.0) for c in CONVENTIONS}),),
))

register(Optimizer(
    name="momentum", description="Gradient descent with momentum.",
    rules={"deeplearning_ai": Rule({"learning_rate": 0.01, "beta": 0.9}, ("v",), (), None, _momentum_dlai,
                                   "v = beta v + (1 - beta) dP; P = P - lr v"),
           "cs231n": Rule({"learning_rate": 0.01, "momentum": 0.9}, ("velocity",), (), None, _momentum_cs231n,
                          "v = momentum v - lr dP; P = P + v")},
    mistakes=(
        Mistake("momentum_without_one_minus_beta", "momentum's velocity was updated as beta v + dP, without the "
                "(1 - beta) factor", "the velocity is beta v + dP; the course's is beta v + (1 - beta) dP",
                {"deeplearning_ai": lambda *a: _momentum_dlai(*a, one_minus=False)}),
        Mistake("update_sign_flipped", _SIGN, _SIGN,
                {"deeplearning_ai": lambda *a: _momentum_dlai(*a, sign=-1.0),
                 "cs231n": lambda *a: _momentum_cs231n(*a, sign=-1.0)}),
    ),
))

_RMS = {"deeplearning_ai": ("s", "beta2"), "cs231n": ("cache", "decay_rate")}
register(Optimizer(
    name="rmsprop", description="RMSprop: the step divided by a running root mean square of the gradient.",
    rules={"deeplearning_ai": Rule({"learning_rate": 0.01, "beta2": 0.999, "epsilon": 1e-8}, ("s",), (), None,
                                   lambda *a: _rmsprop(*a, name="s", decay="beta2"),
                                   "s = beta2 s + (1 - beta2) dP^2; P = P - lr dP / (sqrt(s) + eps)"),
           "cs231n": Rule({"learning_rate": 0.01, "decay_rate": 0.99, "epsilon": 1e-8}, ("cache",), (), None,
                          lambda *a: _rmsprop(*a, name="cache", decay="decay_rate"),
                          "cache = decay_rate cache + (1 - decay_rate) dP^2; P = P - lr dP / (sqrt(cache) + eps)")},
    mistakes=(
        Mistake("epsilon_inside_sqrt", "epsilon was added inside the square root", "the update divides by "
                "sqrt(s + eps); the formula is sqrt(s) + eps",
                {c: (lambda n, d: lambda *a: _rmsprop(*a, name=n, decay=d, eps_inside=True))(*_RMS[c])
                 for c in CONVENTIONS}),
        Mistake("update_sign_flipped", _SIGN, _SIGN,
                {c: (lambda n, d: lambda *a: _rmsprop(*a, name=n, decay=d, sign=-1.0))(*_RMS[c]) for c in CONVENTIONS}),
    ),
))

register(Optimizer(
    name="adam", description="Adam: momentum and RMSprop with bias correction.",
    rules={"deeplearning_ai": Rule({"learning_rate": 0.01, "beta1": 0.9, "beta2": 0.999, "epsilon": 1e-8},
                                   _DLAI_ADAM, ("v_corrected", "s_corrected"), lambda t: t,
                                   lambda *a: _adam(*a, names=_DLAI_ADAM),
                                   "v = beta1 v + (1 - beta1) dP; s = beta2 s + (1 - beta2) dP^2; "
                                   "v_corrected = v / (1 - beta1^t); s_corrected = s / (1 - beta2^t); "
                                   "P = P - lr v_corrected / (sqrt(s_corrected) + eps)"),
           "cs231n": Rule({"learning_rate": 0.001, "beta1": 0.9, "beta2": 0.999, "epsilon": 1e-8},
                          _CS231N_ADAM, ("m_corrected", "v_corrected"), lambda t: t + 1,
                          lambda *a: _adam(*a, names=_CS231N_ADAM),
                          "t = t + 1; m = beta1 m + (1 - beta1) dP; v = beta2 v + (1 - beta2) dP^2; "
                          "mt = m / (1 - beta1^t); vt = v / (1 - beta2^t); P = P - lr mt / (sqrt(vt) + eps)")},
    mistakes=(
        Mistake("bias_correction_missing", "Adam's bias correction was left out (the moments were used as they are)",
                "the bias correction 1 / (1 - beta^t) was left out of the moments", _adam_both(corrected=False)),
        Mistake("uncorrected_moments_in_update", "the parameters were updated with the uncorrected moments",
                "the update used v and s instead of v_corrected and s_corrected",
                _adam_both(update_corrected=False)),
        Mistake("epsilon_inside_sqrt", "epsilon was added inside the square root", "the update divides by "
                "sqrt(s_corrected + eps); the formula is sqrt(s_corrected) + eps", _adam_both(eps_inside=True)),
        Mistake("update_sign_flipped", _SIGN, _SIGN, _adam_both(sign=-1.0)),
    ),
))


# The mistake every optimizer with a step number shares: t taken by the other convention's rule (t vs t + 1).
T_OFF_BY_ONE = ("t_off_by_one", "the step number t is off by one (the other convention: t as sent versus t + 1)")


def decayed(learning_rate: float, decay: dict | None, floor: bool = True) -> float:
    """The learning rate after ``decay`` ({kind, epoch, decay_rate, time_interval}); unchanged without one.
    ``floor=False``: the scheduled decay without its floor (grading's mistake)."""
    if not decay:
        return learning_rate
    epoch, rate = decay["epoch"], decay["decay_rate"]
    if decay["kind"] == "inverse_time":
        return learning_rate / (1 + rate * epoch)
    steps = epoch / decay["time_interval"]
    return learning_rate / (1 + rate * (math.floor(steps) if floor else steps))


@dataclass(frozen=True)
class Outcome:
    """Every parameter's update: new params, new state (state name -> gradient name -> array), the extras
    (Adam's corrected moments, by name and gradient name), the step number used and the learning rate used."""

    params: dict[str, Array]
    state: dict[str, dict[str, Array]]
    extras: dict[str, dict[str, Array]]
    t: int | None
    learning_rate: float


def run(optimizer: str, convention: str, params: dict[str, Array], grads: dict[str, Array],
        state: dict[str, dict[str, Array]] | None, hyper: dict[str, float], t: int | None,
        decay: dict | None = None, step: Callable[..., Step] | None = None, t_shift: int = 0,
        decay_floor: bool = True) -> Outcome:
    """One update of every parameter (``grads`` keyed by ``d`` + the parameter's name; ``state`` by state name then
    gradient name, zeros where absent), with the rule's defaults for the hyperparameters not given and the learning
    rate ``decay``ed first. ``step`` replaces the rule's (grading's mistakes); ``t_shift`` moves the step number
    used (the t-off-by-one mistake); ``decay_floor=False`` drops the scheduled decay's floor."""
    rule = OPTIMIZERS[optimizer].rules[convention]
    h = {**rule.defaults, **{k: v for k, v in hyper.items() if v is not None and k in rule.defaults}}
    h["learning_rate"] = decayed(h["learning_rate"], decay, decay_floor)
    t_used = rule.t_used(t) + t_shift if rule.t_used is not None else None
    out_params, out_state, out_extras = {}, {s: {} for s in rule.state}, {e: {} for e in rule.extras}
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        for name, P in params.items():
            g = f"d{name}"
            current = {s: (state or {}).get(s, {}).get(g, np.zeros_like(P)) for s in rule.state}
            result = (step or rule.step)(P, grads[g], current, h, t_used)
            out_params[name] = result.param
            for s, a in result.state.items():
                out_state[s][g] = a
            for e, a in result.extras.items():
                out_extras[e][g] = a
    _check_finite(out_params, out_state, out_extras)
    return Outcome(out_params, out_state, out_extras, t_used, h["learning_rate"])


def _check_finite(params: dict, state: dict, extras: dict) -> None:
    """NumericalOverflow naming the first array that left float64 (a squared gradient beyond ~1e154)."""
    groups = [("params", params)] + [(f"state.{s}", a) for s, a in state.items()] + list(extras.items())
    for group, arrays in groups:
        for name, a in arrays.items():
            if not np.isfinite(a).all():
                g = name if name.startswith("d") else f"d{name}"
                raise NumericalOverflow(f"{group}.{name}", 0, "optimizer step", location=f"grads.{g}")

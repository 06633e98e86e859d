"""The reference of a one-step task (a layer's forward or backward, a cost, an optimizer step): its keys and the
hypotheses a wrong key is tested against, with the interface ``grade`` and ``diagnose`` use for a network's
``Reference`` (``order``, ``candidates``, ``prepare``, ``textbook_bounds``, ``flips``).

Arrays are in wire form: the route's response flattened, nested objects joined with dots (``params.W1``,
``state.v.dW1``, ``cache.xhat``), as the route returns them in the request's layouts, so a submission is compared as
sent. Each key has a role that fixes its local candidates (``diagnose``'s transforms of the reference itself):

    grad          a parameter's gradient: 1/m missing or doubled, the sign, the transpose, the L2 term missing
    intermediate  dA_L or dZ_L of a cost: the other dA/dZ convention (a factor m), the sign, the transpose
    cost          J: the mean taken as a sum (m J), 1/m twice, the sign, the L2 term missing
    value         anything else: the sign, the transpose

and ``swaps`` name a key that holds another key's value (``dAL`` holding ``dZL``). The mistaken passes
(``StepHypothesis``) come from the units: the activation's and the kind's mistakes for a layer, the optimizer's for
a step; they are run once, when some key is wrong, within a budget.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

import numpy as np

from service.engine import activations, optimizers
from service.engine.grading.diagnose import _Candidate
from service.engine.network import Layer, NumericalOverflow
from service.engine.steps import dZ_of, grads_of, layer_forward

Array = np.ndarray
ROLES = ("grad", "intermediate", "cost", "value")

# The codes one-step grading adds to the network's, and what they mean.
STEP_DIAGNOSES = {
    "activation_not_applied": "A holds Z: the activation was not applied",
    "activation_derivative_missing": "dZ was taken to be dA: the activation's derivative g'(Z) was left out",
    "cost_sum_not_mean": "the cost sums the losses instead of averaging them (m times the reference)",
    "decay_without_floor": "the scheduled decay used epoch / time_interval without the floor",
    optimizers.T_OFF_BY_ONE[0]: optimizers.T_OFF_BY_ONE[1],
}


@dataclass(frozen=True)
class StepHypothesis:
    """One mistake: ``run()`` gives every key's value under it (wire form), or None when it cannot be made here;
    ``keys`` the keys it may change (None: any)."""

    code: str
    message: str
    run: Callable[[], dict[str, Array] | None]
    keys: frozenset[str] | None = None
    layer: int | None = None

    def affects(self, name: str) -> bool:
        return self.keys is None or name in self.keys


@dataclass
class StepReference:
    """A one-step task's reference (see the module docstring). ``work``: the price of one mistaken pass, spent
    against ``variant_work``; ``l2_parts``: each key's L2 term (for the L2 candidates)."""

    arrays: dict[str, Array]
    roles: dict[str, str]
    m: int
    intermediates: str = "per_example"
    l2: float = 0.0
    l2_parts: dict[str, Array] = field(default_factory=dict)
    swaps: tuple[tuple[str, str, str, str], ...] = ()
    hypotheses: list[StepHypothesis] = field(default_factory=list)
    textbook: dict[str, tuple[Array, Array]] = field(default_factory=dict)
    work: int = 0
    variant_work: float = float("inf")
    variants: list = field(default_factory=list)
    skipped: list = field(default_factory=list)
    work_spent: int = 0
    _ran: bool = False
    _candidates: dict = field(default_factory=dict, repr=False)
    _version: int = 0

    def __post_init__(self) -> None:
        unknown = {r for r in self.roles.values() if r not in ROLES} | (set(self.arrays) - set(self.roles))
        if unknown:
            raise ValueError(f"keys without a role, or unknown roles: {sorted(unknown)}")

    @property
    def order(self) -> list[str]:
        return list(self.arrays)

    def flips(self, name: str) -> bool:
        return False  # already in the wire's layout

    @property
    def max_candidates(self) -> int:
        """At most how many hypotheses one key is tested against (pricing)."""
        from service.engine.grading.diagnose import LOCAL_CANDIDATES
        return LOCAL_CANDIDATES + len(self.hypotheses)

    def textbook_bounds(self, name: str):
        return self.textbook.get(name)

    def candidates(self, name: str) -> Iterator[_Candidate]:
        yield from _local(self, name)
        for h, arrays in self.variants:
            if name in arrays:
                yield _Candidate(h.code, arrays[name], h.message, layer=h.layer)

    def prepare(self, names: Iterable[str]) -> None:
        """Run every mistaken pass that may change a wrong key, once, within the budget."""
        names = set(names)
        if self._ran or not names:
            return
        self._ran = True
        for h in self.hypotheses:
            if not any(h.affects(n) for n in names):
                continue
            if self.work_spent + self.work > self.variant_work:
                self.skipped.append(h)
                continue
            self.work_spent += self.work
            try:
                with np.errstate(all="ignore"):
                    arrays = h.run()
            except (ArithmeticError, ValueError, ZeroDivisionError, NumericalOverflow):
                arrays = None  # the mistake cannot be made here (t - 1 = 0, m - 1 = 0)
            if arrays is not None:
                self.variants.append((h, {k: a for k, a in arrays.items() if k in self.arrays}))
                self._version += 1


def _local(ref: StepReference, name: str) -> Iterator[_Candidate]:
    """The transforms of the key's own reference that one slip produces (by the key's role)."""
    R, role, m = ref.arrays[name], ref.roles[name], ref.m
    l2 = ref.l2_parts.get(name)
    if role in ("grad", "cost") and m > 1:
        code = "cost_sum_not_mean" if role == "cost" else "missing_1_over_m"
        what = "the losses were summed, not averaged" if role == "cost" else "the 1/m factor is missing"
        yield _Candidate(code, m * R, f"{name} is m = {m} times the reference: {what}", evidence={"ratio": float(m), "m": m})
        if l2 is not None:
            yield _Candidate(code, m * (R - l2) + l2, f"{name} has the 1/m factor missing from its data term (the "
                             f"L2 term is right)", evidence={"m": m})
        yield _Candidate("extra_1_over_m", R / m, f"{name} is the reference divided by m = {m}: 1/m is applied twice",
                         evidence={"ratio": 1.0 / m, "m": m})
    if role == "intermediate" and m > 1:
        per_example = ref.intermediates == "per_example"
        yield _Candidate("intermediate_convention", R / m if per_example else m * R,
                         f"{name} follows the other convention: "
                         + ("with the 1/m (`mean`) where `per_example` was asked" if per_example else
                            "without the 1/m (`per_example`) where `mean` was asked"),
                         evidence={"ratio": 1.0 / m if per_example else float(m), "m": m})
    yield _Candidate("sign_flipped", -R, f"{name} has the opposite sign of the reference", evidence={"ratio": -1.0})
    if R.ndim == 2 and R.size > 1:
        yield _Candidate("transposed", R.T, f"{name} is the transpose of the reference")
    if l2 is not None:
        yield _Candidate("missing_l2", R - l2, f"{name} lacks its L2 term (lambda = {ref.l2:g})",
                         evidence={"lambda": ref.l2})
    for key, other, code, message in ref.swaps:
        if key == name and other in ref.arrays:
            yield _Candidate(code, ref.arrays[other], message, evidence={"matches": other})


# --- the tasks' hypotheses ----------------------------------------------------------------------------------

def forward_hypotheses(layer: Layer, A_prev: Array, wire: Callable) -> list[StepHypothesis]:
    """A layer's forward: the kind's mistaken forwards. ``wire(step)`` flattens a ForwardStep to keys."""
    return [StepHypothesis(m.code, m.message.format(layer=1),
                           lambda m=m: wire(layer_forward(layer, A_prev, m.forward)))
            for m in layer.unit.mistakes if m.forward is not None and m.applies(layer.hyper)]


def backward_hypotheses(layer: Layer, A_prev: Array, dA: Array | None, dZ: Array | None, Z: Array | None,
                        intermediates: str, l2: float, wire: Callable) -> list[StepHypothesis]:
    """A layer's backward: with dA, the activation's mistakes and its derivative left out; the kind's mistaken
    forwards, backwards and parameter gradients. ``wire(dA_prev, dZ, grads)`` flattens them to keys."""
    step = layer_forward(layer, A_prev)
    Z_used = step.Z if Z is None else Z
    m = A_prev.shape[-1] if A_prev.ndim == 2 else A_prev.shape[0]
    unit = activations.get(layer.activation)
    upstream = dZ_of(layer, dA, Z_used) if dA is not None else dZ

    def from_dZ(dZ_wrong: Array | None, cache=step.kind_cache, backward=None):
        if dZ_wrong is None:
            return None
        dA_prev, grads = grads_of(layer, cache, dZ_wrong, m, intermediates, l2, backward)
        if dA_prev is None:  # a mistake in the parameters' gradients only (``grads_only``): dA_prev is the kind's
            dA_prev = grads_of(layer, cache, dZ_wrong, m, intermediates, l2)[0]
        return wire(dA_prev, dZ_wrong, grads)

    out = []
    if dA is not None:
        G = unit.forward(Z_used, layer.negative_slope)
        for mistake in unit.mistakes:
            out.append(StepHypothesis(mistake.code, mistake.message(layer.activation, 1, layer.negative_slope),
                                      lambda mistake=mistake: from_dZ(mistake.wrong_dZ(dA, Z_used, G, G,
                                                                                     layer.negative_slope))))
        out.append(StepHypothesis("activation_derivative_missing", f"dZ was taken to be dA: the derivative g'(Z) "
                                  f"of {layer.activation} was left out of dZ = dA * g'(Z)", lambda: from_dZ(dA.copy())))
    for mistake in layer.unit.mistakes:
        if not mistake.applies(layer.hyper):
            continue
        text = mistake.message.format(layer=1)
        if mistake.forward is not None:
            run = (lambda mistake=mistake: _mistaken_forward(layer, A_prev, mistake, upstream, from_dZ))
        else:
            run = (lambda mistake=mistake: from_dZ(upstream, backward=mistake.backward))
        only = frozenset(f"d{p.name}" for p in layer.unit.params) if mistake.grads_only else None
        out.append(StepHypothesis(mistake.code, text, run, keys=only))
    return out


def _mistaken_forward(layer: Layer, A_prev: Array, mistake, dZ: Array | None, from_dZ: Callable):
    wrong = layer_forward(layer, A_prev, mistake.forward)
    return from_dZ(dZ, cache=wrong.kind_cache, backward=mistake.backward)


def optimizer_hypotheses(optimizer: str, convention: str, run: Callable, wire: Callable,
                         scheduled: bool) -> list[StepHypothesis]:
    """An optimizer step: the optimizer's mistakes in this convention, t off by one, and the scheduled decay
    without its floor. ``run(**mistake)`` is the update with a mistake (``optimizers.run``'s ``step``,
    ``t_shift``, ``decay_floor``); ``wire(outcome)`` flattens it to keys."""
    unit, rule = optimizers.OPTIMIZERS[optimizer], optimizers.OPTIMIZERS[optimizer].rules[convention]
    out = [StepHypothesis(m.code, m.message.format(key="the update"), lambda m=m: wire(run(step=m.steps[convention])))
           for m in unit.mistakes if convention in m.steps]
    if rule.t_used is not None:
        shift = -1 if convention == "cs231n" else 1
        code, description = optimizers.T_OFF_BY_ONE
        out.append(StepHypothesis(code, f"{description}: the update matches t {'- 1' if shift < 0 else '+ 1'}",
                                  lambda: wire(run(t_shift=shift))))
    if scheduled:
        out.append(StepHypothesis("decay_without_floor", "the scheduled learning rate used epoch / time_interval "
                                  "without the floor: lr0 / (1 + decay_rate floor(epoch / time_interval))",
                                  lambda: wire(run(decay_floor=False))))
    return out

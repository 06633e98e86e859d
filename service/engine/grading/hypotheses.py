"""Mistaken passes: each a hypothesis of one mistake at one layer, re-run from the reference's caches so that the
value every key would have under exactly that mistake can be compared with a wrong submission.

The mistakes come from the units that make them: each activation's (``Activation.mistakes``: the derivative on A,
ReLU's derivative at 0), each layer kind's (``Kind.mistakes``: a wrong forward, a wrong backward, or wrong
parameter gradients only), and the network's own: dZ_L taken to be dA_L (the output activation's derivative left
out) and the dropout mask not applied or not scaled in the backward pass. Where a mistake is made fixes which keys
it changes (``Hypothesis.affects``):

    at "dZ"        dZ_l is wrong:       gradients and dZ of layers <= l, dA of layers < l
    at "dA"        dA_l is wrong:       gradients and dZ of layers <= l, dA of layers <= l
    at "backward"  the kind's backward: gradients of layers <= l, dZ and dA of layers < l
    at "grads"     the kind's parameter gradients only: those of layer l
    at "forward"   the kind's forward:  every key

They run once per batch, only for keys some submission got wrong, only down to the lowest such layer, and only
those keys' arrays are kept; a budget of multiply-add equivalents and of stored numbers bounds them, and the ones
over it are skipped (``Reference.skipped``) with a note.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable

import numpy as np

from service.engine import activations, costs
from service.engine.gradcheck import evaluation_cost
from service.engine.grading.reference import Reference, parse, reference_arrays
from service.engine.network import Dropout, Layer, backward, compute, layer_grads

Array = np.ndarray

NETWORK_MISTAKES = {
    "dAL_sent_as_dZL": "dA_L was used as dZ_L (the output activation's derivative was left out)",
    "dropout_mask_not_applied": "the dropout mask was not applied in the backward pass",
    "dropout_not_scaled": "the dropout mask was applied without dividing by keep_prob",
}


@dataclass(frozen=True)
class Hypothesis:
    """One mistake (``code``) at ``layer`` (1-based), made ``at`` (see the module docstring); ``variant``: several
    passes with one code at one layer (dropout: with and without /p). ``source``: the unit's mistake, when it is
    an activation's or a kind's. Structural: it depends on the network, not on its values."""

    code: str
    layer: int
    at: str = "dZ"
    variant: int = 0
    source: Any = None

    def affects(self, name: str) -> bool:
        """Whether the key ``name`` changes under this mistake."""
        key = parse(name)
        if self.at == "forward":
            return key.quantity != "state" or key.layer >= self.layer
        if key.layer is None or key.quantity == "state":
            return False
        if self.at == "grads":
            return key.quantity == "grad" and key.layer == self.layer
        below = key.layer < self.layer
        if key.quantity == "grad":
            return key.layer <= self.layer
        if key.quantity == "dZ":
            return key.layer <= self.layer if self.at in ("dZ", "dA") else below
        if key.quantity == "dA":
            return key.layer <= self.layer if self.at == "dA" else below
        return False


def hypotheses(layers: list[Layer], dropout: Dropout | None) -> list[Hypothesis]:
    """Every mistaken pass that may apply to this network, output layer first."""
    L, out = len(layers), []
    for l in range(L, 0, -1):
        layer = layers[l - 1]
        for mistake in activations.get(layer.activation).mistakes:
            out.append(Hypothesis(mistake.code, l, "dZ", source=mistake))
        if l == L:
            out.append(Hypothesis("dAL_sent_as_dZL", L))
        for mistake in layer.unit.mistakes:
            if mistake.applies(layer.hyper):
                at = "forward" if mistake.forward else "grads" if mistake.grads_only else "backward"
                out.append(Hypothesis(mistake.code, l, at, source=mistake))
    if dropout is not None:
        for l in range(L - 1, 0, -1):
            if dropout.masks[l - 1] is None:
                continue
            out.append(Hypothesis("dropout_mask_not_applied", l, "dA", 0))
            out.append(Hypothesis("dropout_mask_not_applied", l, "dA", 1))
            if dropout.keep_prob != 1:
                out.append(Hypothesis("dropout_not_scaled", l, "dA", 2))
    return out


@dataclass(frozen=True)
class Variant:
    """A mistaken pass that was run: ``arrays`` holds the keys it was run for, in reference form."""

    hypothesis: Hypothesis
    description: str
    arrays: dict[str, Array]

    @property
    def code(self) -> str:
        return self.hypothesis.code

    @property
    def layer(self) -> int:
        return self.hypothesis.layer


def _price(ref: Reference, h: Hypothesis, lowest: int) -> int:
    """Multiply-add equivalents of one mistaken pass (the gradient check's per-layer price)."""
    cost = [evaluation_cost(layer, shape, ref.m) for layer, shape in zip(ref.layers, ref.in_shapes)]
    if h.at == "forward":
        return sum(cost[h.layer - 1:]) + 2 * sum(cost)
    if h.at == "grads":
        return 2 * cost[h.layer - 1]
    return sum(2 * c for c in cost[lowest - 1:h.layer])


def run_variants(ref: Reference, names: Iterable[str]) -> None:
    """Run the mistaken passes that change any of ``names``, keeping only those keys' arrays, each pass only down
    to the lowest layer it needs. Hypotheses over the budgets are recorded in ``ref.skipped``."""
    names = {n for n in names if n not in ref._ran_for}
    ref._ran_for |= names
    if not names:
        return
    for h in plan(ref):
        wanted = [n for n in names if h.affects(n)]
        if not wanted:
            continue
        lowest = max(1, min((parse(n).layer for n in wanted if parse(n).layer is not None), default=1))
        work = _price(ref, h, lowest)
        stored = sum(ref.arrays[n].size for n in wanted)
        if ref.work_spent + work > ref.variant_work or ref.elements_stored + stored > ref.variant_elements:
            if h not in ref.skipped:
                ref.skipped.append(h)
            continue
        made = _make_variant(ref, h, lowest)
        if made is None:
            continue  # the mistake changes nothing here (no Z = 0 entry for relu_derivative_at_zero)
        ref.work_spent += work
        ref.elements_stored += stored
        description, arrays = made
        kept = {n: arrays[n] for n in wanted if n in arrays}
        ref._version += 1
        existing = next((v for v in ref.variants if v.hypothesis == h), None)
        if existing is None:
            ref.variants.append(Variant(h, description, kept))
        else:
            existing.arrays.update(kept)


def plan(ref: Reference) -> list[Hypothesis]:
    cached = ref.__dict__.get("_plan")
    if cached is None:
        cached = hypotheses(ref.layers, ref.dropout)
        if not ref.forward_known:  # the learner's caches: a mistaken forward pass cannot be re-run from them
            cached = [h for h in cached if h.at != "forward"]
        ref.__dict__["_plan"] = cached
    return cached


# --- the passes ------------------------------------------------------------------------------------------------

def backprop_from(ref: Reference, l: int, dZ: Array, *, lowest: int = 1,
                  overrides: dict[int, Callable] | None = None) -> dict[str, Array]:
    """Backpropagation from layer ``l`` down to layer ``lowest``, given dZ_l per example (``overrides``: layer ->
    a replacement backward). Returns the gradients and dZ of layers lowest..l and dA of layers lowest..l-1 (and
    dA_0 when ``lowest`` is 1), in reference form."""
    p = ref.dropout.keep_prob if ref.dropout is not None else 1.0
    local = {k - lowest + 1: f for k, f in (overrides or {}).items()}
    with np.errstate(over="ignore", invalid="ignore"):
        grads, dZs, dAs = backward(dZ, ref.caches[lowest - 1:l], ref.layers[lowest - 1:l], scale=1.0 / ref.m,
                                   l2=ref.l2, keep_prob=p, overrides=local)
    out: dict[str, Array] = {}
    for i, k in enumerate(range(lowest, l + 1)):
        out.update(_grads_in_reference_form(ref, k, grads[i]))
        out[f"dZ{k}"] = _convention(ref, dZs[i])
        if k > lowest or lowest == 1:  # the lowest layer's dA_prev has no dropout mask applied
            out[f"dA{k - 1}"] = _convention(ref, dAs[i])
    return out


def _convention(ref: Reference, a: Array) -> Array:
    """A per-example dA or dZ in the reference's convention."""
    return a / ref.m if ref.intermediates == "mean" else a


def _grads_in_reference_form(ref: Reference, l: int, grads: dict[str, Array]) -> dict[str, Array]:
    layer = ref.layers[l - 1]
    return {f"d{p.name}{l}": p.to_wire(grads[p.name], ref.sent[l - 1][p.name], ref.layouts)
            for p in layer.unit.params}


def _make_variant(ref: Reference, h: Hypothesis, lowest: int) -> tuple[str, dict[str, Array]] | None:
    """The description and the arrays of one mistaken pass; None when the mistake changes nothing here."""
    l, L = h.layer, ref.L
    layer, cache = ref.layers[l - 1], ref.caches[l - 1]
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        if h.source is not None and h.at == "dZ":  # an activation's mistake
            dZ = h.source.wrong_dZ(ref.per_example("dA", l), cache.Z, cache.G, ref.result.A[l - 1],
                                   layer.negative_slope)
            if dZ is None:
                return None
            return h.source.message(layer.activation, l, layer.negative_slope), backprop_from(ref, l, dZ, lowest=lowest)
        if h.code == "dAL_sent_as_dZL":
            return (f"dZ{L} was taken to be dA{L}: the output activation's derivative g'(Z{L}) was left out of "
                    f"dZ{L} = dA{L} * g'(Z{L})", backprop_from(ref, L, ref.per_example("dA", L).copy(), lowest=lowest))
        if h.at == "dA":
            return _dropout_variant(ref, h, lowest)
        return _kind_variant(ref, h, lowest)


def _dropout_variant(ref: Reference, h: Hypothesis, lowest: int) -> tuple[str, dict[str, Array]]:
    l = h.layer
    layer, cache = ref.layers[l - 1], ref.caches[l - 1]
    unit, p = activations.get(layer.activation), ref.dropout.keep_prob
    # dA_l before the mask, from layer l + 1's backward: its dA_prev, which network.backward returns unmasked.
    raw, _ = layer_grads(ref.layers[l], ref.per_example("dZ", l + 1), ref.caches[l], 1.0, 0.0, ref.m)
    if h.variant == 0:
        dA, text = raw, f"dA{l} = W{l + 1}^T dZ{l + 1} without the mask D{l}"
    elif h.variant == 1:
        dA, text = raw / p, f"dA{l} = W{l + 1}^T dZ{l + 1} / keep_prob without the mask D{l}"
    else:
        dA, text = raw * cache.mask, f"dA{l} = W{l + 1}^T dZ{l + 1} * D{l} without dividing by keep_prob = {p:g}"
    arrays = backprop_from(ref, l, unit.backward(dA, cache.Z, cache.G, layer.negative_slope), lowest=lowest)
    arrays[f"dA{l}"] = _convention(ref, dA)
    return text, arrays


def _kind_variant(ref: Reference, h: Hypothesis, lowest: int) -> tuple[str, dict[str, Array]] | None:
    """A layer kind's mistake: its wrong forward (everything re-run), backward or parameter gradients."""
    l, mistake = h.layer, h.source
    description = mistake.message.format(layer=l)
    if h.at == "forward":
        overrides = {l: mistake.backward} if mistake.backward else None
        try:
            result = compute(ref.X, ref.Y, ref.layers, ref.cost, l2=ref.l2, dropout=ref.dropout,
                             intermediates=ref.intermediates, forward_overrides={l: mistake.forward},
                             backward_overrides=overrides)
        except (ArithmeticError, ValueError, ZeroDivisionError):
            return None  # the mistake cannot be made here (the unbiased variance of one example)
        if not np.isfinite(result.cost):
            return None
        return description, reference_arrays(result, ref.layers, ref.sent, ref.layouts, ref.intermediates, ref.m)
    if h.at == "grads":
        _, grads = layer_grads(ref.layers[l - 1], ref.per_example("dZ", l), ref.caches[l - 1], 1.0 / ref.m, ref.l2,
                               ref.m, mistake.backward)
        return description, _grads_in_reference_form(ref, l, grads)
    return description, backprop_from(ref, l, ref.per_example("dZ", l), lowest=lowest,
                                      overrides={l: mistake.backward})

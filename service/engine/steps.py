"""One step at a time: a layer's forward or backward from the learner's own cache, and the cost of a given output.

The courses grade the functions a learner writes one by one (``linear_forward``, ``linear_activation_backward``,
``compute_cost``, cs231n's ``affine_backward``); these are those functions, for every registered layer kind,
activation and cost. Shapes as in ``network``: vectors features first, ``A_prev: (n_{l-1}, m)``; images examples
first, ``(m, C, H, W)``.

    layer forward:   Z = kind.forward(A_prev),  A = g(Z)
    layer backward:  dZ = dA * g'(Z) (when dA is given; g' evaluated on Z as given, which a course's test cache
                     may hold without it being kind.forward(A_prev)), then dA_prev, grads = kind.backward(dZ) from
                     the kind's cache of A_prev, each parameter's gradient times 1/m under ``per_example`` (the
                     course's: dW = (1/m) dZ A_prev^T) and as it is under ``mean`` (dZ already carries the 1/m, as
                     cs231n's dout does), plus (lambda/m) P for the parameters the kind regularizes.
    cost of AL:      J = (1/m) sum_i output_loss_i(A_L, Y) + lambda/(2m) sum ||W||_F^2 (A_L taken as exact),
                     dA_L = output_dA(A_L, Y), and for the canonical pair dZ_L = output_dZ(A_L, Y) (A_L - Y)
    cost of ZL:      A_L = g(Z_L) and the cost, dA_L, dZ_L as the network computes them from the logits (exact
                     where A_L rounds to 0 or 1)

``dA_L`` and ``dZ_L`` follow ``intermediates`` as in ``network``: without 1/m (``per_example``) or with it
(``mean``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from service.engine import activations, costs
from service.engine.network import INTERMEDIATES, Layer, LayerCache, NumericalOverflow

Array = np.ndarray


def examples(A: Array) -> int:
    """m of an activation: (n, m) vectors, (m, C, H, W) images."""
    return A.shape[-1] if A.ndim == 2 else A.shape[0]


def _finite(a: Array) -> bool:
    return math.isfinite(np.add.reduce(a, axis=None)) or bool(np.isfinite(a).all())


@dataclass(frozen=True)
class ForwardStep:
    """A layer's forward: Z, A = g(Z), the values its kind's cache holds (by name), its updated running
    statistics ({} for kinds without), and the kind's cache itself (for a backward)."""

    Z: Array
    A: Array
    cache_values: dict[str, Array]
    state: dict[str, Array]
    kind_cache: Any = field(repr=False)


def layer_forward(layer: Layer, A_prev: Array, forward: Callable | None = None) -> ForwardStep:
    """Z = kind.forward(A_prev), A = g(Z); ``forward`` replaces the kind's (grading's mistaken forwards).
    NumericalOverflow when Z leaves float64."""
    unit = layer.unit
    with np.errstate(over="ignore", invalid="ignore"):
        Z, cache = (forward or unit.forward)(A_prev, layer.params, layer.hyper, layer.state)
        if not _finite(Z):
            raise NumericalOverflow("Z", 1, "forward pass", location="layer")
        A = activations.get(layer.activation).forward(Z, layer.negative_slope)
    state = unit.new_state(cache, layer.hyper, layer.state) if unit.states else {}
    return ForwardStep(Z, A, unit.cache_values(cache), state, cache)


def dZ_of(layer: Layer, dA: Array, Z: Array) -> Array:
    """dZ = dA * g'(Z) (softmax: its vector-Jacobian product), g' evaluated on Z as given."""
    unit = activations.get(layer.activation)
    with np.errstate(over="ignore", invalid="ignore"):
        return unit.backward(dA, Z, unit.forward(Z, layer.negative_slope), layer.negative_slope)


@dataclass(frozen=True)
class BackwardStep:
    """A layer's backward: dA_prev, dZ (given, or dA * g'(Z)) and each parameter's gradient (the kind's form)."""

    dA_prev: Array
    dZ: Array
    grads: dict[str, Array]


def grads_of(layer: Layer, kind_cache: Any, dZ: Array, m: int, intermediates: str, l2: float,
             backward: Callable | None = None) -> tuple[Array, dict[str, Array]]:
    """dA_prev and the parameters' gradients from dZ: the kind's backward (``backward`` replaces it), the
    gradients times 1/m under ``per_example``, plus (lambda/m) P for the regularized parameters."""
    if intermediates not in INTERMEDIATES:
        raise ValueError(f"intermediates must be one of {INTERMEDIATES}")
    with np.errstate(over="ignore", invalid="ignore"):
        dA_prev, grads = (backward or layer.unit.backward)(dZ, kind_cache)
        grads = dict(grads)
        for p in layer.unit.params:
            g = grads[p.name]
            if intermediates == "per_example":
                g = g / m
            if l2 and p.l2:
                g = g + (l2 / m) * layer.params[p.name]
            grads[p.name] = g
    return dA_prev, grads


def layer_backward(layer: Layer, A_prev: Array, *, dA: Array | None = None, dZ: Array | None = None,
                   Z: Array | None = None, intermediates: str = "per_example", l2: float = 0.0) -> BackwardStep:
    """Exactly one of ``dA`` (w.r.t. the layer's output A) and ``dZ`` (w.r.t. Z); ``Z`` as the learner's cache holds
    it (default: kind.forward(A_prev)). NumericalOverflow when a result leaves float64."""
    if (dA is None) == (dZ is None):
        raise ValueError("give exactly one of dA and dZ")
    step = layer_forward(layer, A_prev)
    if dZ is None:
        dZ = dZ_of(layer, dA, step.Z if Z is None else Z)
    dA_prev, grads = grads_of(layer, step.kind_cache, dZ, examples(A_prev), intermediates, l2)
    for name, a in [("dZ", dZ), ("dA_prev", dA_prev), *((f"d{k}", g) for k, g in grads.items())]:
        if not _finite(a):
            raise NumericalOverflow(name, 1, "backward pass", location="layer")
    return BackwardStep(dA_prev, dZ, grads)


# --- the cost of a given output -------------------------------------------------------------------------------

class InfiniteCost(ArithmeticError):
    """The cost of the AL given is infinite: ``entries`` (k, i) of A_L sit at exactly 0 or 1 against their label."""

    def __init__(self, entries: Array):
        self.entries = entries
        super().__init__(f"the cost is infinite at {len(entries)} entries of AL")


@dataclass(frozen=True)
class CostStep:
    """J, A_L, dA_L (NaN where not representable: ``unrepresentable``), and dZ_L (None when it cannot be told:
    from A_L alone for an activation other than the cost's canonical one)."""

    cost: float
    AL: Array
    dAL: Array
    dZL: Array | None
    unrepresentable: Array


def penalty(weights: list[Array], l2: float, m: int) -> float:
    """lambda/(2m) sum ||W||_F^2 over the weights given."""
    return l2 / (2 * m) * sum(float(np.sum(W * W)) for W in weights) if l2 else 0.0


def _scale(intermediates: str, m: int) -> float:
    if intermediates not in INTERMEDIATES:
        raise ValueError(f"intermediates must be one of {INTERMEDIATES}")
    return 1.0 if intermediates == "per_example" else 1.0 / m


def cost_of_output(cost: str, AL: Array, Y: Array, *, canonical: bool = True, l2: float = 0.0,
                   weights: list[Array] = (), intermediates: str = "per_example") -> CostStep:
    """The course's compute_cost(AL, Y), A_L (n_L, m) taken as exact; dZ_L only for the canonical pair.
    InfiniteCost when some entry's loss is infinite."""
    unit, m = costs.get(cost), Y.shape[1]
    s = _scale(intermediates, m)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        losses = unit.output_loss(AL, Y)
        if not np.isfinite(losses).all():
            per_entry = np.isinf(unit.output_dA(AL, Y))
            raise InfiniteCost(np.argwhere(per_entry) if per_entry.any() else np.argwhere(~np.isfinite(AL)))
        J = float(np.sum(losses)) / m + penalty(list(weights), l2, m)
        dAL = unit.output_dA(AL, Y) * s
        # 1/A_L overflows for A_L below ~1e-308 while the loss, -log A_L, is finite.
        unrepresentable = ~np.isfinite(dAL)
        if unrepresentable.any():
            dAL[unrepresentable] = np.nan
        dZL = unit.output_dZ(AL, Y) * s if canonical else None
    if not math.isfinite(J):
        raise NumericalOverflow("cost", 0, "cost", location="AL")
    return CostStep(J, AL, dAL, dZL, unrepresentable)


def cost_of_logits(cost: str, ZL: Array, Y: Array, activation: str, *, negative_slope: float = 0.01,
                   l2: float = 0.0, weights: list[Array] = (), intermediates: str = "per_example") -> CostStep:
    """A_L = g(Z_L) and the cost from the logits, as the network computes them (exact where A_L rounds)."""
    unit, act, m = costs.get(cost), activations.get(activation), Y.shape[1]
    s = _scale(intermediates, m)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        AL = act.forward(ZL, negative_slope)
        J = float(np.sum(unit.loss(ZL, AL, Y))) / m + penalty(list(weights), l2, m)
        if not math.isfinite(J):
            raise NumericalOverflow("cost", 0, "cost", location="ZL")
        dAL = unit.dA(ZL, AL, Y, s)
        unrepresentable = ~np.isfinite(dAL)
        if unrepresentable.any():
            dAL[unrepresentable] = np.nan
        if activation == unit.fused_activation:
            dZL = unit.fused_dZ(ZL, AL, Y) * s
        else:
            dZL = act.backward(dAL, ZL, AL, negative_slope)
    if not _finite(dZL):
        raise NumericalOverflow("dZL", 0, "backward pass", location="ZL")
    return CostStep(J, AL, dAL, dZL, unrepresentable)


# --- backpropagation from the learner's caches (L_model_backward) ---------------------------------------------

@dataclass(frozen=True)
class CachedBackward:
    """Backpropagation through layers 1..L from their cached inputs: ``grads[l-1]`` layer l's parameters'
    gradients, ``dZ[l-1]`` its dZ, ``dA[l]`` dJ/dA_l for l = 0..L (dA[L] the upstream gradient given), and the
    caches it ran from (one per layer: A_prev as cached, Z as cached or computed, G = g(Z), the kind's cache)."""

    grads: list[dict[str, Array]]
    dZ: list[Array]
    dA: list[Array]
    caches: list


def backward_from_caches(layers: list[Layer], A_prevs: list[Array], Zs: list[Array | None], dAL: Array, *,
                         intermediates: str = "per_example", l2: float = 0.0) -> CachedBackward:
    """The course's L_model_backward: for l = L..1, dZ_l = dA_l * g_l'(Z_l) with Z_l as cached (default: the
    layer applied to its cached input), then dA_{l-1} and the gradients from layer l's own cached input A_prev_l,
    which a test case may draw independently of layer l-1's output. NumericalOverflow names the first array that
    left float64."""
    L = len(layers)
    grads: list[dict[str, Array]] = [None] * L
    dZs: list[Array] = [None] * L
    dAs: list[Array] = [None] * L + [dAL]
    caches = []
    for layer, A_prev, Z in zip(layers, A_prevs, Zs):
        step = layer_forward(layer, A_prev)
        Z_used = step.Z if Z is None else Z
        G = activations.get(layer.activation).forward(Z_used, layer.negative_slope)
        caches.append(LayerCache(A_prev, Z_used, G, None, step.kind_cache))
    dA = dAL
    for l in range(L, 0, -1):
        layer, cache = layers[l - 1], caches[l - 1]
        dZs[l - 1] = dZ_of(layer, dA, cache.Z)
        dA, grads[l - 1] = grads_of(layer, cache.kind_cache, dZs[l - 1], examples(cache.A_prev), intermediates, l2)
        dAs[l - 1] = dA
        for name, a in [(f"dZ{l}", dZs[l - 1]), (f"dA{l - 1}", dA), *((f"d{k}{l}", g) for k, g in grads[l - 1].items())]:
            if not _finite(a):
                raise NumericalOverflow(name, l, "backward pass")
    return CachedBackward(grads, dZs, dAs, caches)

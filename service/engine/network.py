"""Forward pass, cost and backpropagation of a network of layer kinds (``kinds``), each followed by an activation.

Shapes (m examples): vectors features first, ``A_l: (n_l, m)``; images examples first, ``A_l: (m, C, H, W)``.
For every layer l = 1..L, with ``A_0 = X``:

    Z_l = kind_l.forward(A_{l-1})            (dense: W_l A_{l-1} + b_l)
    A_l = g_l(Z_l)                           [* D_l / p on a hidden layer with a dropout mask]
    J   = (1/m) sum_i loss_i + lambda/(2m) sum of ||P||_F^2 over the parameters P the kinds regularize (W)

Backward: dZ_L = A_L - Y for the cost's canonical pair (its ``fused_dZ``), dA_L * g_L'(Z_L) otherwise;
then for l = L..1: dA_{l-1}, grads_l = kind_l.backward(dZ_l), the gradients scaled to the convention and L2
added, dA_{l-1} [* D_{l-1} / p], dZ_{l-1} = dA_{l-1} * g_{l-1}'(Z_{l-1}).

Two conventions for the intermediates (``INTERMEDIATES``):
    per_example  the course's: dA and dZ carry no 1/m (dZ_L = A_L - Y); the 1/m is applied in the parameters'
                 gradients.
    mean         every returned quantity is the exact partial derivative of J: dA and dZ carry the 1/m.
Every kind's backward is linear in its upstream gradient, so both conventions run the same products and differ
by the factor applied to the parameters' gradients. ``dA_l`` for a hidden layer under dropout is taken after the
mask is applied, i.e. it is the derivative with respect to g_l(Z_l), the activation before dropout (as the
course stores it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from service.engine import activations, costs
from service.engine.kinds import KINDS, Kind

Array = np.ndarray

INTERMEDIATES = ("per_example", "mean")


class NumericalOverflow(ArithmeticError):
    """A quantity left float64's range; ``layer`` is 1-based (0: the cost or the input). ``location``: the
    request field to blame, when the caller knows better than the layer's index (the one-step routes)."""

    def __init__(self, quantity: str, layer: int, stage: str, location: str | None = None):
        self.quantity, self.layer, self.stage, self.location = quantity, layer, stage, location
        super().__init__(f"the {stage} overflows float64 at {quantity}")


@dataclass(frozen=True)
class Layer:
    """One layer: a registered kind with its parameters (the kind's engine form: dense W (n_l, n_{l-1}), b
    (n_l, 1)), hyperparameters, running statistics (kinds with ``states``), and its activation."""

    kind: str
    params: dict[str, Array]
    activation: str
    negative_slope: float = activations.DEFAULT_NEGATIVE_SLOPE
    hyper: dict[str, Any] = field(default_factory=dict)
    state: dict[str, Array] = field(default_factory=dict)

    @property
    def unit(self) -> Kind:
        return KINDS[self.kind]


def dense(W: Array, b: Array, activation: str, negative_slope: float = activations.DEFAULT_NEGATIVE_SLOPE) -> Layer:
    """A dense layer: W (n_l, n_{l-1}), b (n_l, 1) or (n_l,)."""
    return Layer("dense", {"W": W, "b": np.reshape(b, (-1, 1))}, activation, negative_slope)


@dataclass(frozen=True)
class Dropout:
    """Inverted dropout with caller-supplied 0/1 masks for the hidden layers 1 .. L-1, each shaped like A_l (engine
    form); None for a layer without dropout. keep_prob in (0, 1]."""

    keep_prob: float
    masks: tuple[Array | None, ...]

    def mask(self, l: int, L: int) -> Array | None:
        return self.masks[l - 1] if l < L else None


@dataclass(frozen=True)
class LayerCache:
    """What backward needs of layer l: A_prev (its input, after the previous layer's dropout), Z, G = g(Z), the
    dropout mask or None, and the kind's own cache."""

    A_prev: Array
    Z: Array
    G: Array
    mask: Array | None
    kind_cache: Any


@dataclass(frozen=True)
class Result:
    """Everything one pass computes. Lists are indexed by layer: grads[0] is layer 1's {param: gradient}; dA[0] is
    dA_0 (w.r.t. X); state[l-1] the running statistics layer l returns ({} for kinds without).

    ``unrepresentable``: boolean mask (A_L's shape) of dA_L entries whose true value overflows float64; those
    entries hold NaN. ``caches``: the forward pass's, one per layer (grading re-runs backward passes from them;
    they mostly reference arrays the result holds anyway).
    """

    cost: float
    AL: Array
    Z: list[Array]
    A: list[Array]
    grads: list[dict[str, Array]]
    dZ: list[Array]
    dA: list[Array]
    state: list[dict[str, Array]]
    unrepresentable: Array = field(repr=False)
    caches: list[LayerCache] = field(default_factory=list, repr=False)


def _all_finite(a: Array) -> bool:
    # One reduction first; the elementwise test only runs when the sum itself is not finite (it can overflow
    # while every entry is finite). Callers run under np.errstate(over="ignore").
    return math.isfinite(np.add.reduce(a, axis=None)) or bool(np.isfinite(a).all())


def layer_forward(A_prev: Array, layer: Layer, mask: Array | None = None, keep_prob: float = 1.0,
                  kind: Kind | None = None, forward=None) -> tuple[Array, LayerCache]:
    """A_prev -> A and its cache: Z = kind.forward(A_prev), A = g(Z) [* mask / keep_prob]. ``forward`` replaces
    the kind's own (grading's mistaken forwards)."""
    unit = kind or layer.unit
    Z, kind_cache = (forward or unit.forward)(A_prev, layer.params, layer.hyper, layer.state)
    G = activations.get(layer.activation).forward(Z, layer.negative_slope)
    A = G if mask is None else G * mask / keep_prob
    return A, LayerCache(A_prev, Z, G, mask, kind_cache)


def forward(X: Array, layers: list[Layer], dropout: Dropout | None = None, start: int = 1,
            overrides: dict[int, Any] | None = None) -> tuple[Array, list[LayerCache]]:
    """A_{start-1} (X for start = 1) -> A_L and one cache per layer start..L; NumericalOverflow if any Z_l leaves
    float64. ``overrides``: layer -> a replacement forward function."""
    with np.errstate(over="ignore", invalid="ignore"):
        return _forward(X, layers, dropout, start, overrides)


def _forward(X: Array, layers: list[Layer], dropout: Dropout | None, start: int,
             overrides: dict[int, Any] | None) -> tuple[Array, list[LayerCache]]:
    """forward's loop; the caller holds np.errstate(over="ignore", invalid="ignore")."""
    A, caches = X, []
    L = len(layers)
    keep_prob = dropout.keep_prob if dropout is not None else 1.0
    for l in range(start, L + 1):
        layer = layers[l - 1]
        mask = dropout.mask(l, L) if dropout is not None else None
        A, cache = layer_forward(A, layer, mask, keep_prob, forward=overrides.get(l) if overrides else None)
        if not _all_finite(cache.Z):
            raise NumericalOverflow(f"Z{l}", l, "forward pass")
        caches.append(cache)
    return A, caches


def penalty(layers: list[Layer], l2: float, m: int) -> float:
    """lambda/(2m) times the sum of ||P||_F^2 over every parameter P its kind regularizes."""
    if not l2:
        return 0.0
    return l2 / (2 * m) * sum(float(np.sum(layer.params[p.name] * layer.params[p.name]))
                              for layer in layers for p in layer.unit.params if p.l2)


def cost_value(unit: costs.Cost, ZL: Array, AL: Array, Y: Array, layers: list[Layer], l2: float) -> float:
    """J = (1/m) sum_i loss_i + lambda/(2m) sum ||P||_F^2; ZL, AL, Y: (n_L, m)."""
    return _cost_of(unit.loss(ZL, AL, Y), AL.shape[1], layers, l2)


def _cost_of(losses: Array, m: int, layers: list[Layer], l2: float) -> float:
    """cost_value from the per-example losses (m,)."""
    J = float(np.add.reduce(losses, axis=None) / m)  # np.sum's own reduction, without its wrapper
    if l2:
        J += penalty(layers, l2, m)
    if not math.isfinite(J):
        raise NumericalOverflow("cost", len(layers), "cost")
    return J


def compute(X: Array, Y: Array, layers: list[Layer], cost: str, *, l2: float = 0.0,
            dropout: Dropout | None = None, intermediates: str = "per_example",
            forward_overrides: dict[int, Any] | None = None, backward_overrides: dict[int, Any] | None = None
            ) -> Result:
    """Forward pass, cost and every gradient. X (n_0, m) (or an image batch), Y (n_L, m); see the module
    docstring for formulas. The overrides (layer -> function) replace a kind's forward or backward: grading's
    mistaken passes."""
    if intermediates not in INTERMEDIATES:
        raise ValueError(f"intermediates must be one of {INTERMEDIATES}")
    unit = costs.get(cost)
    m = Y.shape[1]
    # One errstate for the whole pass (forward's own is the same): entering one costs microseconds, which is
    # the scale of a whole tiny network.
    with np.errstate(over="ignore", invalid="ignore"):
        AL, caches = _forward(X, layers, dropout, 1, forward_overrides)
        # per_example: dA, dZ without 1/m and the parameters' gradients with it; mean: the other way round.
        s, c = (1.0, 1.0 / m) if intermediates == "per_example" else (1.0 / m, 1.0)
        J, dAL, unrepresentable, dZL = _output(unit, layers, caches[-1], AL, Y, l2, s)
        grads, dZ, dA = backward(dZL, caches, layers, scale=c, l2=l2,
                                 keep_prob=dropout.keep_prob if dropout else 1.0, overrides=backward_overrides)
        dA.append(dAL)
        dA0_finite = not (forward_overrides and 1 in forward_overrides) and \
            _input_grad_finite(layers[0], dZ[0], caches[0], backward_overrides)
        _check_finite(grads, dZ, dA[:-1], dA0_finite)
    A = [cache.A_prev for cache in caches[1:]] + [AL]
    state = [layer.unit.new_state(cache.kind_cache, layer.hyper, layer.state) if layer.unit.states else {}
             for layer, cache in zip(layers, caches)]
    return Result(cost=J, AL=AL, Z=[cache.Z for cache in caches], A=A, grads=grads, dZ=dZ, dA=dA, state=state,
                  unrepresentable=unrepresentable, caches=caches)


def _output(unit: costs.Cost, layers: list[Layer], cache: LayerCache, AL: Array, Y: Array, l2: float,
            s: float) -> tuple[float, Array, Array, Array]:
    """J, dA_L (NaN where not representable) with the mask of those entries, and dZ_L. For the cost's canonical
    pair with ``fused_outputs``, its loss, dA and dZ come from one call that shares their common terms (bit for
    bit the three separate functions); the cost's overflow is raised all the same, after them."""
    last = layers[-1]
    if last.activation == unit.fused_activation and unit.fused_outputs is not None:
        losses, dAL, dZL = unit.fused_outputs(cache.Z, AL, Y, s)
        J = _cost_of(losses, AL.shape[1], layers, l2)
        if s != 1.0:
            dZL *= s
        return (J, *_unrepresentable(dAL), dZL)
    J = cost_value(unit, cache.Z, AL, Y, layers, l2)
    dAL, unrepresentable = _output_gradient(unit, cache.Z, AL, Y, s)
    return J, dAL, unrepresentable, _output_dZ(unit, last, cache, AL, Y, dAL, s)


def _output_gradient(unit: costs.Cost, ZL: Array, AL: Array, Y: Array, s: float) -> tuple[Array, Array]:
    """dA_L = s * d loss / dA_L (n_L, m), NaN where not representable, and the boolean mask of those entries."""
    # The scale goes into the cost's formula: (1 + e^z)/m can be finite where e^z alone is not.
    return _unrepresentable(unit.dA(ZL, AL, Y, s))


def _unrepresentable(dAL: Array) -> tuple[Array, Array]:
    """dA_L with NaN at its non-finite entries, and the boolean mask of those entries."""
    unrepresentable = ~np.isfinite(dAL)
    if unrepresentable.any():
        dAL[unrepresentable] = np.nan
    return dAL, unrepresentable


def _output_dZ(unit: costs.Cost, last: Layer, cache: LayerCache, AL: Array, Y: Array, dAL: Array,
               s: float) -> Array:
    """dZ_L = s (A_L - Y) for the cost's canonical pair, dA_L * g'(Z_L) (its VJP for softmax) otherwise."""
    if last.activation == unit.fused_activation:
        dZ = unit.fused_dZ(cache.Z, AL, Y)
        if s != 1.0:
            dZ *= s
        return dZ
    return activations.get(last.activation).backward(dAL, cache.Z, cache.G, last.negative_slope)


def layer_grads(layer: Layer, dZ: Array, cache: LayerCache, scale: float, l2: float, m: int,
                backward_fn=None) -> tuple[Array, dict[str, Array]]:
    """dZ_l -> dA_{l-1} (before any dropout mask) and the parameters' gradients, scaled (``scale``) with L2
    added: grad_P = scale * (kind's gradient) + (lambda/m) P for the parameters the kind regularizes."""
    unit = layer.unit
    dA_prev, grads = (backward_fn or unit.backward)(dZ, cache.kind_cache)
    for p in unit.params:
        g = grads[p.name]
        if scale != 1.0:
            g *= scale
        if l2 and p.l2:
            g += (l2 / m) * layer.params[p.name]
    return dA_prev, grads


def backward(dZL: Array, caches: list[LayerCache], layers: list[Layer], *, scale: float, l2: float = 0.0,
             keep_prob: float = 1.0, overrides: dict[int, Any] | None = None,
             ) -> tuple[list[dict[str, Array]], list[Array], list[Array]]:
    """From dZ of the last given layer down to the first: the parameters' gradients and dZ_l for each layer,
    dA_l for l = first-1 .. last-1. ``overrides``: layer index (1-based, within ``layers``) -> a replacement
    backward function (grading's mistaken backward passes)."""
    L = len(layers)
    m = caches[0].Z.shape[-1] if caches[0].Z.ndim == 2 else caches[0].Z.shape[0]
    grads: list[dict[str, Array]] = [None] * L
    dZs: list[Array] = [None] * L
    dAs: list[Array] = [None] * L
    dZ = dZL
    for l in range(L, 0, -1):
        layer, cache = layers[l - 1], caches[l - 1]
        dZs[l - 1] = dZ
        dA_prev, grads[l - 1] = layer_grads(layer, dZ, cache, scale, l2, m, (overrides or {}).get(l))
        if l > 1:
            prev, prev_layer = caches[l - 2], layers[l - 2]
            if prev.mask is not None:
                dA_prev *= prev.mask
                dA_prev /= keep_prob
            dZ = activations.get(prev_layer.activation).backward(dA_prev, prev.Z, prev.G, prev_layer.negative_slope)
        dAs[l - 1] = dA_prev
    return grads, dZs, dAs


# A bound on |entries| below this proves them finite: float64 reaches 1.8e308, and the rounding of a sum of n finite
# terms adds a relative (1 + 2^-53)^n, far less than this margin of 1e8 for any n a request can hold.
SAFE_BOUND = 1e300


def _input_grad_finite(layer: Layer, dZ1: Array, cache: LayerCache, overrides: dict[int, Any] | None) -> bool:
    """Whether layer 1's kind proves dA_0 finite by its ``input_grad_bound`` (never under a replacement forward or
    backward of layer 1, whose cache or dA_0 the bound does not describe: compute checks the forward's)."""
    bound = layer.unit.input_grad_bound
    if bound is None or (overrides and 1 in overrides):
        return False
    b = bound(dZ1, cache.kind_cache)
    return b is not None and b < SAFE_BOUND


def _check_finite(grads: list[dict[str, Array]], dZ: list[Array], dA: list[Array], dA0_finite: bool = False) -> None:
    """NumericalOverflow naming the first gradient that left float64's range.

    A parameter's gradient is a sum over the examples of products with dZ_l, and dZ_l = dA_l * g'(Z_l) (masked or
    not) turns a non-finite dA_l into a non-finite dZ_l; so the parameters' gradients and dA_0 cover every array.
    The others are inspected one by one only when that cheap test fails (a sum can also overflow with finite
    terms). ``dA0_finite``: dA_0 is known finite (by its kind's bound) and left out of the cheap test, which then
    has the same outcome (a finite dA_0 is never the array named).
    """
    total = sum(np.add.reduce(g, axis=None) for layer in grads for g in layer.values())
    if not dA0_finite:
        total += np.add.reduce(dA[0], axis=None)
    if math.isfinite(total):
        return
    # In the order the keys are listed: each parameter name across the layers (dW1..dWL, db1..dbL, ...), then dZ, dA.
    names = [(f"d{name}", group[name], l) for name in param_order()
             for l, group in enumerate(grads, start=1) if name in group]
    for quantity, a, l in names + [("dZ", z, l) for l, z in enumerate(dZ, start=1)] + \
            [("dA", a, l) for l, a in enumerate(dA)]:
        if not np.isfinite(a).all():
            raise NumericalOverflow(f"{quantity}{l}", max(l, 1), "backward pass")


def param_order() -> list[str]:
    """Every parameter name in the order of the kinds' registration (W, b, gamma, beta, ...)."""
    return list(dict.fromkeys(p.name for kind in KINDS.values() for p in kind.params))

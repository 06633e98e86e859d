"""Forward pass, cost and backpropagation of a fully connected network, features first.

Shapes (m examples, layer sizes n_0 .. n_L):
    X, A_0: (n_0, m)      W_l: (n_l, n_{l-1})      b_l: (n_l, 1)      Z_l, A_l, dZ_l, dA_l: (n_l, m)

Forward:   Z_l = W_l A_{l-1} + b_l,   A_l = g_l(Z_l) [* D_l / p for hidden layers under inverted dropout]
Cost:      J = (1/m) sum_i loss_i + lambda/(2m) sum_l ||W_l||_F^2
Backward:  dZ_L = A_L - Y for the canonical pairs, dA_L * g_L'(Z_L) otherwise;
           dW_l = (1/m) dZ_l A_{l-1}^T + (lambda/m) W_l,   db_l = (1/m) sum_i dZ_l,
           dA_{l-1} = W_l^T dZ_l [* D_{l-1} / p],   dZ_{l-1} = dA_{l-1} * g_{l-1}'(Z_{l-1}).

Two conventions for the intermediates (``INTERMEDIATES``):
    per_example  the course's: dA and dZ carry no 1/m (dZ_L = A_L - Y); the 1/m is applied in dW and db.
    mean         every returned quantity is the exact partial derivative of J: dA and dZ carry the 1/m.
dW and db are the same in both. ``dA_l`` for a hidden layer under dropout is taken after the mask is applied,
i.e. it is the derivative with respect to g_l(Z_l), the activation before dropout (as the course stores it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from service.engine import activations, costs

Array = np.ndarray

INTERMEDIATES = ("per_example", "mean")


class NumericalOverflow(ArithmeticError):
    """A quantity left float64's range; ``layer`` is 1-based (0: the cost or the input)."""

    def __init__(self, quantity: str, layer: int, stage: str):
        self.quantity, self.layer, self.stage = quantity, layer, stage
        super().__init__(f"the {stage} overflows float64 at {quantity}")


@dataclass(frozen=True)
class Layer:
    """One dense layer: W (n_l, n_{l-1}), b (n_l, 1), a registered activation name."""

    W: Array
    b: Array
    activation: str
    negative_slope: float = activations.DEFAULT_NEGATIVE_SLOPE


@dataclass(frozen=True)
class Dropout:
    """Inverted dropout with caller-supplied 0/1 masks D_1 .. D_{L-1}, each (n_l, m); keep_prob in (0, 1]."""

    keep_prob: float
    masks: tuple[Array, ...]


@dataclass(frozen=True)
class LayerCache:
    """What layer_backward needs: A_prev (n_{l-1}, m), Z and G = g(Z) (n_l, m), the dropout mask or None."""

    A_prev: Array
    Z: Array
    G: Array
    mask: Array | None


@dataclass(frozen=True)
class Result:
    """Everything one pass computes. Lists are indexed by layer: dW[0] is dW_1; dA[0] is dA_0 (w.r.t. X).

    ``unrepresentable``: boolean (n_L, m) mask of dA_L entries whose true value overflows float64;
    those entries hold NaN.
    """

    cost: float
    AL: Array
    Z: list[Array]
    A: list[Array]
    dW: list[Array]
    db: list[Array]
    dZ: list[Array]
    dA: list[Array]
    unrepresentable: Array = field(repr=False)


def _all_finite(a: Array) -> bool:
    # One reduction first; the elementwise test only runs when the sum itself is not finite (it can overflow
    # while every entry is finite). Callers run under np.errstate(over="ignore").
    return math.isfinite(np.add.reduce(a, axis=None)) or bool(np.isfinite(a).all())


def layer_forward(A_prev: Array, layer: Layer, mask: Array | None = None,
                  keep_prob: float = 1.0) -> tuple[Array, LayerCache]:
    """A_prev (n_{l-1}, m) -> A (n_l, m) and its cache. Z = W A_prev + b, A = g(Z) [* mask / keep_prob]."""
    Z = layer.W @ A_prev
    Z += layer.b
    G = activations.get(layer.activation).forward(Z, layer.negative_slope)
    A = G if mask is None else G * mask / keep_prob
    return A, LayerCache(A_prev, Z, G, mask)


def layer_backward(dZ: Array, cache: LayerCache, layer: Layer, scale: float) -> tuple[Array, Array, Array]:
    """dZ (n_l, m) -> dA_prev (n_{l-1}, m), dW (n_l, n_{l-1}), db (n_l, 1), before L2.

    dW = scale * dZ A_prev^T, db = scale * sum_i dZ, dA_prev = W^T dZ (no mask: the caller applies it).
    """
    dW = dZ @ cache.A_prev.T
    db = dZ.sum(axis=1, keepdims=True)
    if scale != 1.0:
        dW *= scale
        db *= scale
    return layer.W.T @ dZ, dW, db


def forward(X: Array, layers: list[Layer], dropout: Dropout | None = None) -> tuple[Array, list[LayerCache]]:
    """X (n_0, m) -> A_L (n_L, m) and one cache per layer; NumericalOverflow if any Z_l leaves float64."""
    A, caches = X, []
    last = len(layers)
    keep_prob = dropout.keep_prob if dropout is not None else 1.0
    with np.errstate(over="ignore", invalid="ignore"):
        for l, layer in enumerate(layers, start=1):
            mask = dropout.masks[l - 1] if dropout is not None and l < last else None
            A, cache = layer_forward(A, layer, mask, keep_prob)
            if not _all_finite(cache.Z):
                raise NumericalOverflow(f"Z{l}", l, "forward pass")
            caches.append(cache)
    return A, caches


def compute(X: Array, Y: Array, layers: list[Layer], cost: str, *, l2: float = 0.0,
            dropout: Dropout | None = None, intermediates: str = "per_example") -> Result:
    """Forward pass, cost and every gradient. X (n_0, m), Y (n_L, m); see the module docstring for formulas."""
    if intermediates not in INTERMEDIATES:
        raise ValueError(f"intermediates must be one of {INTERMEDIATES}")
    unit = costs.get(cost)
    m = X.shape[1]
    AL, caches = forward(X, layers, dropout)
    with np.errstate(over="ignore", invalid="ignore"):
        J = cost_value(unit, caches[-1].Z, AL, Y, layers, l2)
        # per_example: dA, dZ without 1/m and dW, db with it; mean: the other way round.
        s, c = (1.0, 1.0 / m) if intermediates == "per_example" else (1.0 / m, 1.0)
        dAL, unrepresentable = _output_gradient(unit, caches[-1].Z, AL, Y, s)
        dZL = _output_dZ(unit, layers[-1], caches[-1], AL, Y, dAL, s)
        dW, db, dZ, dA = backward(dZL, caches, layers, scale=c, l2=l2, keep_prob=dropout.keep_prob if dropout else 1.0)
        dA.append(dAL)
        _check_finite(dW, db, dZ, dA[:-1])
    A = [cache.A_prev for cache in caches[1:]] + [AL]
    return Result(cost=J, AL=AL, Z=[cache.Z for cache in caches], A=A, dW=dW, db=db, dZ=dZ, dA=dA,
                  unrepresentable=unrepresentable)


def cost_value(unit: costs.Cost, ZL: Array, AL: Array, Y: Array, layers: list[Layer], l2: float) -> float:
    """J = (1/m) sum_i loss_i + lambda/(2m) sum_l ||W_l||_F^2; ZL, AL, Y: (n_L, m)."""
    m = AL.shape[1]
    J = float(np.sum(unit.loss(ZL, AL, Y)) / m)
    if l2:
        J += l2 / (2 * m) * sum(float(np.sum(layer.W * layer.W)) for layer in layers)
    if not math.isfinite(J):
        raise NumericalOverflow("cost", len(layers), "cost")
    return J


def _output_gradient(unit: costs.Cost, ZL: Array, AL: Array, Y: Array, s: float) -> tuple[Array, Array]:
    """dA_L = s * d loss / dA_L (n_L, m), NaN where not representable, and the boolean mask of those entries."""
    # The scale goes into the cost's formula: (1 + e^z)/m can be finite where e^z alone is not.
    dAL = unit.dA(ZL, AL, Y, s)
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


def backward(dZL: Array, caches: list[LayerCache], layers: list[Layer], *, scale: float, l2: float = 0.0,
             keep_prob: float = 1.0) -> tuple[list[Array], list[Array], list[Array], list[Array]]:
    """From dZ_L (n_L, m) down to the input: dW_l, db_l, dZ_l for l = 1..L and dA_l for l = 0..L-1.

    dW_l = scale * dZ_l A_{l-1}^T + (lambda/m) W_l, db_l = scale * sum_i dZ_l, dA_{l-1} = W_l^T dZ_l
    [* D_{l-1} / p], dZ_{l-1} = dA_{l-1} * g'(Z_{l-1}).
    """
    L = len(layers)
    m = dZL.shape[1]
    dW: list[Array] = [None] * L
    db: list[Array] = [None] * L
    dZs: list[Array] = [None] * L
    dAs: list[Array] = [None] * L
    dZ = dZL
    for l in range(L, 0, -1):
        layer, cache = layers[l - 1], caches[l - 1]
        dZs[l - 1] = dZ
        dA_prev, dW[l - 1], db[l - 1] = layer_backward(dZ, cache, layer, scale)
        if l2:
            dW[l - 1] += (l2 / m) * layer.W
        if l > 1:
            prev, prev_layer = caches[l - 2], layers[l - 2]
            if prev.mask is not None:
                dA_prev *= prev.mask
                dA_prev /= keep_prob
            dZ = activations.get(prev_layer.activation).backward(dA_prev, prev.Z, prev.G, prev_layer.negative_slope)
        dAs[l - 1] = dA_prev
    return dW, db, dZs, dAs


def _check_finite(dW: list[Array], db: list[Array], dZ: list[Array], dA: list[Array]) -> None:
    """NumericalOverflow naming the first gradient that left float64's range.

    db_l sums dZ_l over the examples, so a non-finite dZ_l shows in db_l; and dZ_l = dA_l * g'(Z_l) (masked or
    not) turns a non-finite dA_l into a non-finite dZ_l. So db, dW and dA_0 cover every array; the others are
    inspected one by one only when that cheap test fails (a sum can also overflow with finite terms).
    """
    total = sum(np.add.reduce(a, axis=None) for a in (*db, *dW, dA[0]))
    if math.isfinite(total):
        return
    for name, group, first in (("dW", dW, 1), ("db", db, 1), ("dZ", dZ, 1), ("dA", dA, 0)):
        for l, a in enumerate(group, start=first):
            if not np.isfinite(a).all():
                raise NumericalOverflow(f"{name}{l}", max(l, 1), "backward pass")

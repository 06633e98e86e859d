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
    # One reduction first; the elementwise test only runs when the sum itself is not finite.
    return bool(np.isfinite(a.sum())) or bool(np.isfinite(a).all())


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
    for l, layer in enumerate(layers, start=1):
        mask = dropout.masks[l - 1] if dropout is not None and l < last else None
        keep_prob = dropout.keep_prob if dropout is not None else 1.0
        with np.errstate(over="ignore", invalid="ignore"):
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
    out = caches[-1]

    with np.errstate(over="ignore", invalid="ignore"):
        J = float(np.sum(unit.loss(out.Z, AL, Y)) / m)
        if l2:
            J += l2 / (2 * m) * sum(float(np.sum(layer.W * layer.W)) for layer in layers)
    if not np.isfinite(J):
        raise NumericalOverflow("cost", len(layers), "cost")

    # per_example: dA, dZ without 1/m and dW, db with it; mean: the other way round.
    s, c = (1.0, 1.0 / m) if intermediates == "per_example" else (1.0 / m, 1.0)
    with np.errstate(over="ignore", invalid="ignore"):
        dAL = unit.dA(out.Z, AL, Y)
        if s != 1.0:
            dAL *= s
    unrepresentable = ~np.isfinite(dAL)
    if unrepresentable.any():
        dAL[unrepresentable] = np.nan

    last = layers[-1]
    if last.activation == unit.fused_activation:
        dZ = AL - Y
        if s != 1.0:
            dZ *= s
    else:
        dZ = activations.get(last.activation).backward(dAL, out.Z, out.G, last.negative_slope)

    L = len(layers)
    dW: list[Array] = [None] * L
    db: list[Array] = [None] * L
    dZs: list[Array] = [None] * L
    dAs: list[Array] = [None] * (L + 1)
    dAs[L] = dAL
    with np.errstate(over="ignore", invalid="ignore"):
        for l in range(L, 0, -1):
            layer, cache = layers[l - 1], caches[l - 1]
            dZs[l - 1] = dZ
            dA_prev, dW_l, db_l = layer_backward(dZ, cache, layer, c)
            if l2:
                dW_l += (l2 / m) * layer.W
            dW[l - 1], db[l - 1] = dW_l, db_l
            if l > 1:
                prev = caches[l - 2]
                if prev.mask is not None:
                    dA_prev *= prev.mask
                    dA_prev /= dropout.keep_prob
                prev_layer = layers[l - 2]
                dZ = activations.get(prev_layer.activation).backward(dA_prev, prev.Z, prev.G,
                                                                     prev_layer.negative_slope)
            dAs[l - 1] = dA_prev

    for name, arrays in (("dW", dW), ("db", db), ("dZ", dZs)):
        for l, a in enumerate(arrays, start=1):
            if not _all_finite(a):
                raise NumericalOverflow(f"{name}{l}", l, "backward pass")
    for l, a in enumerate(dAs[:L]):
        if not _all_finite(a):
            raise NumericalOverflow(f"dA{l}", max(l, 1), "backward pass")

    A = [cache.A_prev for cache in caches[1:]] + [AL]
    return Result(cost=J, AL=AL, Z=[cache.Z for cache in caches], A=A, dW=dW, db=db, dZ=dZs, dA=dAs,
                  unrepresentable=unrepresentable)

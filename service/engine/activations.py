"""Activation functions: one registered unit each, value and derivative side by side.

Shapes: every function takes ``Z: (n_l, m)`` (features first; one column per example) and returns an array of
the same shape. ``forward`` gives ``A = g(Z)``; ``backward`` gives the vector-Jacobian product
``dZ = dA * g'(Z)`` (for softmax, whose Jacobian is not diagonal, ``dZ = A * (dA - sum_k dA_k A_k)``).

Derivatives are evaluated from ``Z``, not from ``A``: ``A`` may already carry a dropout mask, and forms such as
``sigmoid'(z) = e / (1 + e)^2`` with ``e = exp(-abs(z))`` keep full relative precision where ``a * (1 - a)`` rounds
to zero.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

Array = np.ndarray

DEFAULT_NEGATIVE_SLOPE = 0.01


@dataclass(frozen=True)
class ActivationMistake:
    """A typical mistake in the activation's derivative, for grading: ``wrong_dZ(dA, Z, G, A, slope)`` is the dZ
    it produces (``A``: the activation as the course's cache holds it, after dropout; ``G`` = g(Z)), or None when
    it changes nothing here; ``message(name, layer, slope)`` says it. Messages hold only the request's numbers."""

    code: str
    description: str
    wrong_dZ: Callable[[Array, Array, Array, Array, float], Array | None]
    message: Callable[[str, int, float], str]


@dataclass(frozen=True)
class Activation:
    """A registered activation.

    ``forward(Z, slope) -> A`` and ``derivative(Z, A, slope) -> g'(Z)`` (elementwise; ``None`` for softmax).
    ``slope`` is the leaky ReLU negative slope (``uses_slope``); every other unit ignores it. ``vjp(dA, Z, slope)``, where given,
    computes ``dA * g'(Z)`` in fewer passes than forming g'(Z) first (the piecewise-linear units).
    """

    name: str
    forward: Callable[[Array, float], Array]
    derivative: Callable[[Array, Array, float], Array] | None
    formula: str
    derivative_formula: str
    derivative_latex: str  # for /v1/explain
    mistakes: tuple[ActivationMistake, ...]
    output_only: bool = False
    vjp: Callable[[Array, Array, float], Array] | None = None
    uses_slope: bool = False  # whether it reads negative_slope (leaky ReLU)

    def backward(self, dA: Array, Z: Array, A: Array, slope: float = DEFAULT_NEGATIVE_SLOPE) -> Array:
        """dZ = dA * g'(Z), all (n_l, m). ``A`` is g(Z) without any dropout mask."""
        if self.derivative is None:
            return _softmax_backward(dA, A)
        if self.vjp is not None:
            return self.vjp(dA, Z, slope)
        return dA * self.derivative(Z, A, slope)


ACTIVATIONS: dict[str, Activation] = {}


def register(unit: Activation) -> Activation:
    ACTIVATIONS[unit.name] = unit
    return unit


def get(name: str) -> Activation:
    """The registered activation called ``name``; KeyError names the allowed ones."""
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise KeyError(f"unknown activation {name!r}; expected one of {', '.join(ACTIVATIONS)}") from None


def _on_activation(forward: Callable, derivative: Callable) -> ActivationMistake:
    """The derivative evaluated on A instead of Z (sigmoid'(A), tanh'(A))."""
    return ActivationMistake(
        "derivative_on_A", "the activation derivative was evaluated on A instead of Z (sigmoid'(A), tanh'(A))",
        wrong_dZ=lambda dA, Z, G, A, slope: dA * derivative(A, forward(A, slope), slope),
        message=lambda name, l, slope: (f"dZ{l} = dA{l} * {name}'(A{l}) instead of {name}'(Z{l}): the derivative "
                                        f"was evaluated on the activation, not on the pre-activation"))


def _one_at_zero(derivative: Callable, at_zero: Callable[[float], float]) -> ActivationMistake:
    """ReLU's derivative taken as 1 at z = 0 (Z >= 0 instead of Z > 0); ``at_zero(slope)``: the true value."""

    def wrong_dZ(dA, Z, G, A, slope):
        zeros = Z == 0
        if not zeros.any():
            return None
        return dA * np.where(zeros, 1.0, derivative(Z, G, slope))

    # The count of Z = 0 entries is the reference's, so the message does not give it.
    return ActivationMistake(
        "relu_derivative_at_zero", "ReLU's derivative was taken as 1 at z = 0 (it is 0; leaky ReLU's is the slope)",
        wrong_dZ=wrong_dZ,
        message=lambda name, l, slope: (f"{name}'(0) was taken as 1 at the entries where Z{l} = 0 (the derivative "
                                        f"there is {at_zero(slope)}: use Z > 0, not Z >= 0)"))


# --- linear -----------------------------------------------------------------------------------------------

register(Activation(
    name="linear",
    forward=lambda Z, slope: Z,
    derivative=lambda Z, A, slope: np.ones_like(Z),
    # dA * 1 is dA: a copy, without forming the ones (a pass per pooling or flatten layer, which default to linear).
    vjp=lambda dA, Z, slope: np.copy(dA, order="K"),
    formula="g(z) = z",
    derivative_formula="g'(z) = 1",
    derivative_latex=r"g'(Z) = 1",
    mistakes=(),
))


# --- sigmoid ----------------------------------------------------------------------------------------------

def _sigmoid(Z: Array, slope: float = 0.0) -> Array:
    # Split by sign so that exp never overflows: e = exp(-abs(z)) lies in (0, 1].
    e = np.exp(-np.abs(Z))
    return np.where(Z >= 0, 1.0, e) / (1.0 + e)


def _sigmoid_derivative(Z: Array, A: Array, slope: float = 0.0) -> Array:
    # sigma(z) * sigma(-z) = e / (1 + e)^2: exact where a * (1 - a) would round to 0 for |z| > ~37.
    e = np.exp(-np.abs(Z))
    return e / ((1.0 + e) * (1.0 + e))


register(Activation(
    name="sigmoid",
    forward=_sigmoid,
    derivative=_sigmoid_derivative,
    formula="g(z) = 1 / (1 + exp(-z))",
    derivative_formula="g'(z) = g(z) (1 - g(z)), evaluated as e / (1 + e)^2 with e = exp(-abs(z))",
    derivative_latex=r"\sigma'(Z) = \sigma(Z)\left(1-\sigma(Z)\right) = A\,(1-A)",
    mistakes=(_on_activation(_sigmoid, _sigmoid_derivative),),
))


# --- tanh -------------------------------------------------------------------------------------------------

def _tanh_derivative(Z: Array, A: Array, slope: float = 0.0) -> Array:
    # 1 - tanh(z)^2 = 4e / (1 + e)^2 with e = exp(-2 abs(z)); 1 - a*a loses all digits once |a| rounds to 1.
    e = np.exp(-2.0 * np.abs(Z))
    return 4.0 * e / ((1.0 + e) * (1.0 + e))


register(Activation(
    name="tanh",
    forward=lambda Z, slope: np.tanh(Z),
    derivative=_tanh_derivative,
    formula="g(z) = tanh(z)",
    derivative_formula="g'(z) = 1 - tanh(z)^2, evaluated as 4e / (1 + e)^2 with e = exp(-2 abs(z))",
    derivative_latex=r"\tanh'(Z) = 1 - \tanh^2(Z) = 1 - A^2",
    mistakes=(_on_activation(lambda Z, slope: np.tanh(Z), _tanh_derivative),),
))


# --- relu -------------------------------------------------------------------------------------------------

def _relu_derivative(Z: Array, A: Array, slope: float) -> Array:
    # NOTE: the derivative at z == 0 is taken as 0 (the subgradient PyTorch and the course use).
    return (Z > 0).astype(Z.dtype)


def _leaky_derivative(Z: Array, A: Array, slope: float) -> Array:
    # NOTE: at z == 0 the derivative is the slope (the left branch), as in PyTorch.
    return np.where(Z > 0, 1.0, slope)


def _relu_vjp(dA: Array, Z: Array) -> Array:
    """dA * 1[Z > 0]. The mask is written as float64 0.0/1.0 and multiplied in place: bit for bit the product with
    the boolean mask (which numpy casts to those same 0.0/1.0, chunk by chunk), -0.0 and NaN alike, in about 70%
    of its time on large arrays (and a quarter of np.where's)."""
    out = np.greater(Z, 0.0, out=np.empty_like(dA))
    return np.multiply(dA, out, out=out)


register(Activation(
    name="relu",
    forward=lambda Z, slope: np.maximum(Z, 0.0),
    derivative=_relu_derivative,
    vjp=lambda dA, Z, slope: _relu_vjp(dA, Z),
    formula="g(z) = max(z, 0)",
    derivative_formula="g'(z) = 1 if z > 0, else 0 (0 at z = 0)",
    derivative_latex=r"\operatorname{relu}'(Z) = \mathbb{1}[Z > 0]",
    mistakes=(_one_at_zero(_relu_derivative, lambda slope: 0.0),),
))


# --- leaky_relu -------------------------------------------------------------------------------------------

register(Activation(
    name="leaky_relu",
    forward=lambda Z, slope: np.where(Z > 0, Z, slope * Z),
    derivative=_leaky_derivative,
    formula="g(z) = z if z > 0, else s z (s = negative_slope, default 0.01)",
    derivative_formula="g'(z) = 1 if z > 0, else s (s at z = 0)",
    derivative_latex=r"g'(Z) = \begin{cases} 1 & Z > 0 \\ s & Z \le 0 \end{cases}",
    mistakes=(_one_at_zero(_leaky_derivative, lambda slope: slope),),
    uses_slope=True,
))


# --- softmax ----------------------------------------------------------------------------------------------

def _softmax(Z: Array, slope: float = 0.0) -> Array:
    # Shift each column by its max so exp never overflows; the largest term is exp(0) = 1.
    E = np.exp(Z - Z.max(axis=0, keepdims=True))
    return E / E.sum(axis=0, keepdims=True)


def _softmax_backward(dA: Array, A: Array) -> Array:
    """dZ_k = a_k (dA_k - sum_j dA_j a_j), per column; dA, A: (n_L, m)."""
    return A * (dA - np.sum(dA * A, axis=0, keepdims=True))


register(Activation(
    name="softmax",
    forward=_softmax,
    derivative=None,
    formula="g(z)_k = exp(z_k) / sum_j exp(z_j) (per example, over the output units)",
    derivative_formula="dZ_k = a_k (dA_k - sum_j dA_j a_j) (vector-Jacobian product of the full Jacobian)",
    derivative_latex=r"\frac{\partial a_k}{\partial z_j} = a_k\left(\delta_{kj} - a_j\right)",
    mistakes=(),
    output_only=True,
))


def sigmoid(Z: Array) -> Array:
    """Stable logistic function, Z: any shape."""
    return _sigmoid(Z)


def log_softmax(Z: Array) -> Array:
    """log softmax over axis 0 through the max shift; Z: (n, m) -> (n, m).

    z_k - max(z) - log(1 + sum_{j != argmax} exp(z_j - max(z))), the last term by log1p so that a cost near 0
    (one logit far above the rest) keeps its relative precision.
    """
    top = Z.argmax(axis=0)
    cols = np.arange(Z.shape[1])
    shifted = Z - Z[top, cols]
    E = np.exp(shifted)
    E[top, cols] = 0.0
    return shifted - np.log1p(E.sum(axis=0, keepdims=True))

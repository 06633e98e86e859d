"""Costs: one registered unit each, the loss and its derivative side by side.

Every function works on the output layer, features first: ``Z, A, Y: (n_L, m)``. ``loss`` returns the
per-example losses ``(m,)``; the cost is ``J = (1/m) sum_i loss_i`` (plus the L2 term, added by the network).
``dA(Z, A, Y, scale)`` returns ``scale * d loss_i / d A`` (``scale`` = 1 for the per-example value, 1/m for the
exact partial of J), evaluated from the logits ``Z`` so that it is finite wherever the true value is representable;
where it is not (``A`` at exactly 0 or 1 with a label that needs the other side) the entry is ``inf`` and the caller
decides what to do with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from service.engine.activations import log_softmax

Array = np.ndarray


@dataclass(frozen=True)
class Cost:
    """A registered cost; every field is required (a unit without one fails at import).

    ``output_activations``: the output activations it pairs with (``None``: any).
    ``fused_activation``: the output activation of the canonical pair, for which dZ_L simplifies
    (``fused_formula``, e.g. A_L - Y), and ``fused_dZ(Z, A, Y)`` that dZ_L, evaluated so that each entry keeps its
    relative precision.
    ``label_error(Y)``: why ``Y: (n_L, m)`` lies outside the cost's domain, or ``None``.
    The course's own forms, evaluated literally from the rounded A_L (grading accepts answers that match them
    where they lose digits; explain shows where they break down): ``textbook_loss(A, Y)`` per entry,
    ``textbook_dA(A, Y)``, ``textbook_dZ(A, Y)`` (the canonical pair's chain rule), and ``unstable_reason(A, Y,
    k, i)``, why entry (k, i) of that chain rule is inaccurate; ``breakdown_latex`` where it fails and
    ``breakdown_none`` why no entry fails when none does (explain's stability step).
    """

    name: str
    output_activations: frozenset[str] | None
    fused_activation: str
    loss: Callable[[Array, Array, Array], Array]
    dA: Callable[..., Array]  # (Z, A, Y, scale=1.0) -> scale * d loss / dA
    fused_dZ: Callable[[Array, Array, Array], Array]
    label_error: Callable[[Array], str | None]
    formula: str
    dA_formula: str
    label_domain: str
    formula_latex: str  # J and dA_L for /v1/explain
    dA_latex: str
    title: str  # in words: "binary cross-entropy"
    fused_formula: str  # the canonical pair's dZ_L with {L} for the layer: "A{L} - Y"
    fused_latex: str
    textbook_loss: Callable[[Array, Array], Array]
    textbook_dA: Callable[[Array, Array], Array]
    textbook_dZ: Callable[[Array, Array], Array]
    unstable_reason: Callable[[Array, Array, int, int], str]
    breakdown_latex: str  # where the textbook chain rule fails, for explain
    breakdown_none: str  # why no entry fails here, with {L}: "A{L} is nowhere close enough to 0 or 1 ..."
    class_indices: bool  # whether labels may come as m class indices (made one-hot at the edge)
    # The cost of a given output A_L (POST /v1/cost with AL, the course's compute_cost(AL, Y)): A_L is taken as
    # exact, with 0 log 0 = 0. ``output_loss(A, Y)`` per example (m,), ``output_dA(A, Y)``, the canonical pair's
    # ``output_dZ(A, Y)`` from A_L alone, and ``output_error(A)``: why A lies outside what the cost's output
    # activation can give, or None. An entry whose loss is infinite (A_L at exactly 0 or 1 against its label)
    # is the caller's to report.
    output_loss: Callable[[Array, Array], Array]
    output_dA: Callable[[Array, Array], Array]
    output_dZ: Callable[[Array, Array], Array]
    output_error: Callable[[Array], str | None]
    output_domain: str  # in words, for the docs: "every entry in [0, 1] (a sigmoid output)"
    # Optional, for the canonical pair: ``fused_outputs(Z, A, Y, scale) -> (loss(Z, A, Y), dA(Z, A, Y, scale),
    # fused_dZ(Z, A, Y))``, bit for bit those three, computing what they share once (one log_softmax, one
    # exp(-|z|)). The network calls it when the output layer has the fused activation.
    fused_outputs: Callable[..., tuple[Array, Array, Array]] | None = None

    def __post_init__(self) -> None:
        for name in ("loss", "dA", "fused_dZ", "label_error", "textbook_loss", "textbook_dA", "textbook_dZ",
                     "unstable_reason", "output_loss", "output_dA", "output_dZ", "output_error"):
            if not callable(getattr(self, name)):
                raise TypeError(f"cost {self.name!r}: {name} must be a function")
        for name in ("title", "formula", "dA_formula", "label_domain", "formula_latex", "dA_latex", "fused_formula",
                     "fused_latex", "output_domain", "breakdown_latex", "breakdown_none"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise TypeError(f"cost {self.name!r}: {name} must be a non-empty text")


COSTS: dict[str, Cost] = {}


def register(unit: Cost) -> Cost:
    COSTS[unit.name] = unit
    return unit


def _quiet(f: Callable) -> Callable:
    """The course's formulas divide by A and take its log: at A = 0 or 1 they are not finite, which is their
    answer there, not an error."""

    def wrapped(*args):
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            return f(*args)

    return wrapped


def get(name: str) -> Cost:
    try:
        return COSTS[name]
    except KeyError:
        raise KeyError(f"unknown cost {name!r}; expected one of {', '.join(COSTS)}") from None


def _scaled(weight: Array, factor: Array) -> Array:
    """weight * factor (same shape), with 0 wherever weight == 0 (so that 0 * inf is 0, not NaN)."""
    out = np.zeros_like(factor)
    np.multiply(weight, factor, out=out, where=weight != 0)
    return out


def _scale_times_exp(scale: float, E_arg: Array, offset: float) -> Array:
    """scale * (offset + exp(E_arg)), finite wherever the result is: where exp alone overflows (scale < 1 can bring
    the product back into range) it is evaluated as scale*offset + (exp(x/2) * scale) * exp(x/2)."""
    out = np.exp(E_arg)
    out += offset
    if scale != 1.0:  # x * 1.0 is x, bit for bit: the pass is skipped, not changed
        out *= scale
    big = np.isinf(out)
    if big.any():
        half = np.exp(E_arg[big] / 2)
        out[big] = scale * offset + (half * scale) * half
    return out


def _inverse(weight: Array, A: Array) -> Array:
    """weight / A with 0 wherever weight == 0 (inf where A == 0 and weight != 0)."""
    with np.errstate(divide="ignore"):
        return _scaled(weight, 1.0 / A)


def _weighted_log(weight: Array, A: Array) -> Array:
    """weight * log(A) with 0 wherever weight == 0 (0 log 0 = 0; -inf where A == 0 and weight != 0)."""
    with np.errstate(divide="ignore"):
        return _scaled(weight, np.log(A))


def _within(low: float, high: float, what: str) -> Callable[[Array], str | None]:
    def check(A: Array) -> str | None:
        if np.any((A < low) | (A > high)):
            return f"{what} needs every entry of AL in [{low:g}, {high:g}]"
        return None

    return check


# --- binary cross-entropy ---------------------------------------------------------------------------------

def _bce_loss(Z: Array, A: Array, Y: Array) -> Array:
    return _bce_loss_of(Z, Y, np.exp(-np.abs(Z)))


def _bce_loss_of(Z: Array, Y: Array, e: Array) -> Array:
    # -[y log a + (1-y) log(1-a)] with a = sigmoid(z), rewritten from the logits: exact at |z| = 1000 and y in {0, 1}.
    # e = exp(-|z|); np.add.reduce is np.sum's own reduction.
    return np.add.reduce(np.maximum(Z, 0.0) - Z * Y + np.log1p(e), axis=0)


def _bce_dA(Z: Array, A: Array, Y: Array, scale: float = 1.0) -> Array:
    return _bce_dA_of(Z, Y, 1.0 - Y, scale)


def _bce_dA_of(Z: Array, Y: Array, not_y: Array, scale: float) -> Array:
    # -(y/a - (1-y)/(1-a)) with 1/a = 1 + exp(-z) and 1/(1-a) = 1 + exp(z): no division by a rounded 0 or 1.
    with np.errstate(over="ignore"):
        return _scaled(not_y, _scale_times_exp(scale, Z, 1.0)) - _scaled(Y, _scale_times_exp(scale, -Z, 1.0))


def _bce_fused_dZ(Z: Array, A: Array, Y: Array) -> Array:
    return _bce_dZ_of(Z, A, Y, 1.0 - Y, np.exp(-np.abs(Z)))


def _bce_dZ_of(Z: Array, A: Array, Y: Array, not_y: Array, e: Array) -> Array:
    # a - y = (1 - y) sigma(z) - y sigma(-z): for y = 1 this is -sigma(-z), exact where 1 - a rounds to 0.
    # sigma(-z) as activations.sigmoid(-z) evaluates it, from e = exp(-|z|) (|-z| is |z|) and -z >= 0, i.e. z <= 0.
    return not_y * A - Y * (np.where(Z <= 0, 1.0, e) / (1.0 + e))


def _bce_outputs(Z: Array, A: Array, Y: Array, scale: float = 1.0) -> tuple[Array, Array, Array]:
    """loss, dA and fused dZ with exp(-|z|) and 1 - y computed once."""
    e, not_y = np.exp(-np.abs(Z)), 1.0 - Y
    return _bce_loss_of(Z, Y, e), _bce_dA_of(Z, Y, not_y, scale), _bce_dZ_of(Z, A, Y, not_y, e)


def _bce_unstable(A: Array, Y: Array, k: int, i: int) -> str:
    if A[k, i] == 1.0:
        return "A_L rounds to exactly 1: 1 - A_L = 0, so (1-Y)/(1-A_L) divides by zero and A_L(1-A_L) = 0"
    if A[k, i] == 0.0:
        return "A_L rounds to exactly 0: Y/A_L divides by zero and A_L(1-A_L) = 0"
    return _CLOSE


_CLOSE = "A_L is so close to 0 or 1 that the textbook chain rule loses its accuracy"


def _bce_labels(Y: Array) -> str | None:
    if np.any((Y < 0) | (Y > 1)):
        return "binary_cross_entropy needs labels in [0, 1]"
    return None


register(Cost(
    name="binary_cross_entropy",
    output_activations=frozenset({"sigmoid"}),
    fused_activation="sigmoid",
    loss=_bce_loss,
    dA=_bce_dA,
    fused_dZ=_bce_fused_dZ,
    label_error=_bce_labels,
    formula="J = -(1/m) sum_i sum_k [y log a + (1 - y) log(1 - a)], computed from the logits as "
            "(1/m) sum [max(z, 0) - z y + log(1 + exp(-abs(z)))]",
    dA_formula="dA = -(y/a - (1 - y)/(1 - a)); with a sigmoid output dZ = a - y",
    label_domain="every label in [0, 1]",
    formula_latex=r"J = -\frac{1}{m}\sum_{i=1}^{m}\left[y^{(i)}\log a^{[L](i)} + "
                  r"\left(1-y^{(i)}\right)\log\left(1-a^{[L](i)}\right)\right]",
    dA_latex=r"-\left(\frac{Y}{A^{[L]}} - \frac{1-Y}{1-A^{[L]}}\right)",
    title="binary cross-entropy",
    fused_formula="A{L} - Y",
    fused_latex=r"\left(A^{[L]} - Y\right)",
    textbook_loss=_quiet(lambda A, Y: -(Y * np.log(A) + (1 - Y) * np.log(1 - A))),
    textbook_dA=_quiet(lambda A, Y: -(Y / A - (1 - Y) / (1 - A))),
    textbook_dZ=_quiet(lambda A, Y: -(Y / A - (1 - Y) / (1 - A)) * A * (1 - A)),
    unstable_reason=_bce_unstable,
    breakdown_latex=r"\frac{1-Y}{1-A^{[L]}} \to \frac{0}{0} \text{ or } \infty \text{ when } A^{[L]} = 1",
    breakdown_none="A{L} is nowhere close enough to 0 or 1 for the textbook chain rule to fail (it would for |z| "
                   "above ~37 with a sigmoid)",
    class_indices=False,
    output_loss=lambda A, Y: -np.sum(_weighted_log(Y, A) + _weighted_log(1.0 - Y, 1.0 - A), axis=0),
    output_dA=lambda A, Y: _inverse(1.0 - Y, 1.0 - A) - _inverse(Y, A),
    output_dZ=lambda A, Y: A - Y,
    output_error=_within(0.0, 1.0, "binary_cross_entropy (a sigmoid output)"),
    output_domain="every entry in [0, 1] (a sigmoid output)",
    fused_outputs=_bce_outputs,
))


# --- categorical cross-entropy ----------------------------------------------------------------------------

def _cce_loss(Z: Array, A: Array, Y: Array) -> Array:
    return _cce_loss_of(Y, log_softmax(Z))


def _cce_loss_of(Y: Array, log_a: Array) -> Array:
    # -sum_k y_k log a_k through a max-shifted log-softmax; y == 0 entries contribute exactly 0.
    return -np.sum(_scaled(Y, log_a), axis=0)


def _cce_dA(Z: Array, A: Array, Y: Array, scale: float = 1.0) -> Array:
    return _cce_dA_of(Y, log_softmax(Z), scale)


def _cce_dA_of(Y: Array, log_a: Array, scale: float) -> Array:
    # -y/a with 1/a = exp(-log_softmax(z)): finite until a is below ~1e-308.
    with np.errstate(over="ignore"):
        return -_scaled(Y, _scale_times_exp(scale, -log_a, 0.0))


def _cce_fused_dZ(Z: Array, A: Array, Y: Array) -> Array:
    # With one-hot y, a_k - 1 at the true class k equals -sum_{j != k} a_j: summed from small terms it stays
    # exact where a_k rounds to 1. a (1 - y) is formed once and used twice.
    others_terms = A * (1.0 - Y)
    others = np.sum(others_terms, axis=0, keepdims=True)
    return others_terms - Y * others


def _cce_outputs(Z: Array, A: Array, Y: Array, scale: float = 1.0) -> tuple[Array, Array, Array]:
    """loss, dA and fused dZ with one log_softmax(z)."""
    log_a = log_softmax(Z)
    return _cce_loss_of(Y, log_a), _cce_dA_of(Y, log_a, scale), _cce_fused_dZ(Z, A, Y)


def _cce_textbook_dZ(A: Array, Y: Array) -> Array:
    """The softmax vector-Jacobian product of -Y/A, per column."""
    dA = -Y / A
    return A * (dA - np.sum(dA * A, axis=0, keepdims=True))


def _cce_unstable(A: Array, Y: Array, k: int, i: int) -> str:
    if np.any((A[:, i] == 0) & (Y[:, i] != 0)):
        return ("a probability of the labelled class rounds to exactly 0, so -Y/A_L divides by zero and the "
                "softmax vector-Jacobian product of this example is NaN")
    return _CLOSE


def _one_hot_labels(cost: str) -> Callable[[Array], str | None]:
    def check(Y: Array) -> str | None:
        if not np.all((Y == 0) | (Y == 1)) or not np.all(Y.sum(axis=0) == 1):
            return f"{cost} needs one-hot label columns (one 1 per example, 0 elsewhere)"
        return None

    return check


def _softmax_columns(A: Array) -> str | None:
    """A softmax output: entries in [0, 1], columns summing to 1 (to 1e-6: the dZ = A - Y identity needs it)."""
    if np.any((A < 0) | (A > 1)):
        return "categorical_cross_entropy (a softmax output) needs every entry of AL in [0, 1]"
    sums = A.sum(axis=0)
    bad = np.abs(sums - 1.0) > 1e-6
    if bad.any():
        i = int(np.argmax(bad))
        return (f"categorical_cross_entropy (a softmax output) needs each column of AL to sum to 1; example {i} "
                f"sums to {sums[i]:.9g}: send the logits as ZL instead")
    return None


register(Cost(
    name="categorical_cross_entropy",
    output_activations=frozenset({"softmax"}),
    fused_activation="softmax",
    loss=_cce_loss,
    dA=_cce_dA,
    fused_dZ=_cce_fused_dZ,
    label_error=_one_hot_labels("categorical_cross_entropy"),
    formula="J = -(1/m) sum_i sum_k y_k log a_k, computed through log_softmax(z) = z - max(z) - "
            "log sum_j exp(z_j - max(z))",
    dA_formula="dA = -y/a; with a softmax output dZ = a - y",
    label_domain="one-hot columns (or a list of m class indices)",
    formula_latex=r"J = -\frac{1}{m}\sum_{i=1}^{m}\sum_{k} y_k^{(i)}\log a_k^{[L](i)}",
    dA_latex=r"-\frac{Y}{A^{[L]}}",
    title="categorical cross-entropy",
    fused_formula="A{L} - Y",
    fused_latex=r"\left(A^{[L]} - Y\right)",
    textbook_loss=_quiet(lambda A, Y: -(Y * np.log(A))),
    textbook_dA=_quiet(lambda A, Y: -Y / A),
    textbook_dZ=_quiet(_cce_textbook_dZ),
    unstable_reason=_cce_unstable,
    breakdown_latex=r"-\frac{Y}{A^{[L]}} \to \infty \text{ when } A^{[L]} = 0",
    breakdown_none="no probability of a labelled class in A{L} is close enough to 0 for the textbook chain rule "
                   "through -Y/A{L} to fail",
    class_indices=True,
    output_loss=lambda A, Y: -np.sum(_weighted_log(Y, A), axis=0),
    output_dA=lambda A, Y: -_inverse(Y, A),
    output_dZ=lambda A, Y: _cce_fused_dZ(A, A, Y),
    output_error=_softmax_columns,
    output_domain="every entry in [0, 1], each column summing to 1 (a softmax output)",
    fused_outputs=_cce_outputs,
))


# --- mean squared error -----------------------------------------------------------------------------------

def _mse_loss(Z: Array, A: Array, Y: Array) -> Array:
    D = A - Y
    return 0.5 * np.sum(D * D, axis=0)


register(Cost(
    name="mean_squared_error",
    output_activations=None,
    fused_activation="linear",
    loss=_mse_loss,
    dA=lambda Z, A, Y, scale=1.0: (A - Y) * scale if scale != 1.0 else A - Y,
    fused_dZ=lambda Z, A, Y: A - Y,
    label_error=lambda Y: None,
    formula="J = (1/(2m)) sum_i sum_k (a - y)^2",
    dA_formula="dA = a - y; dZ = (a - y) g'(z) (with a linear output dZ = a - y)",
    label_domain="any finite numbers",
    formula_latex=r"J = \frac{1}{2m}\sum_{i=1}^{m}\sum_{k}\left(a_k^{[L](i)} - y_k^{(i)}\right)^2",
    dA_latex=r"A^{[L]} - Y",
    title="mean squared error",
    fused_formula="A{L} - Y",
    fused_latex=r"\left(A^{[L]} - Y\right)",
    textbook_loss=_quiet(lambda A, Y: 0.5 * (A - Y) ** 2),
    textbook_dA=_quiet(lambda A, Y: A - Y),
    textbook_dZ=_quiet(lambda A, Y: A - Y),
    unstable_reason=lambda A, Y, k, i: _CLOSE,
    breakdown_latex=r"dZ^{[L]} = A^{[L]} - Y \text{ itself: nothing divides}",
    breakdown_none="with the linear output the chain rule is A{L} - Y itself, with no division that could fail",
    class_indices=False,
    output_loss=lambda A, Y: _mse_loss(A, A, Y),
    output_dA=lambda A, Y: A - Y,
    output_dZ=lambda A, Y: A - Y,
    output_error=lambda A: None,
    output_domain="any finite numbers",
))


# --- multiclass hinge (cs231n's svm_loss) -------------------------------------------------------------------

def _margins(Z: Array, Y: Array) -> Array:
    """max(0, z_j - z_y + 1) for j != y, 0 at the true class; Z, Y (one-hot): (n_L, m)."""
    correct = np.sum(Z * Y, axis=0, keepdims=True)
    return np.maximum(Z - correct + 1.0, 0.0) * (1.0 - Y)


def _hinge_dA(Z: Array, A: Array, Y: Array, scale: float = 1.0) -> Array:
    # d loss / d z_j = 1[margin_j > 0] for j != y and -(their count) at y. A margin of exactly 0 gets 0 (the
    # subgradient of max(0, t) at t = 0 that cs231n's svm_loss and PyTorch's multi_margin_loss use).
    positive = ((Z - np.sum(Z * Y, axis=0, keepdims=True) + 1.0 > 0) & (Y == 0)).astype(np.float64)
    dA = positive - Y * positive.sum(axis=0, keepdims=True)
    if scale != 1.0:
        dA *= scale
    return dA


register(Cost(
    name="multiclass_hinge",
    output_activations=frozenset({"linear"}),
    fused_activation="linear",
    loss=lambda Z, A, Y: np.sum(_margins(Z, Y), axis=0),
    dA=_hinge_dA,
    fused_dZ=lambda Z, A, Y: _hinge_dA(Z, A, Y),
    label_error=_one_hot_labels("multiclass_hinge"),
    formula="J = (1/m) sum_i sum_(j != y_i) max(0, z_j - z_(y_i) + 1) (the multiclass SVM loss, margin 1)",
    dA_formula="dZ_j = 1[z_j - z_y + 1 > 0] for j != y, dZ_y = -sum_(j != y) 1[z_j - z_y + 1 > 0] (0 where a margin "
               "is exactly 0); with the linear output dA = dZ",
    label_domain="one-hot columns (or a list of m class indices)",
    formula_latex=r"J = \frac{1}{m}\sum_{i=1}^{m}\sum_{j \ne y_i}\max\left(0,\ z_j^{(i)} - z_{y_i}^{(i)} + 1\right)",
    dA_latex=r"\mathbb{1}\left[z_j - z_{y} + 1 > 0\right] - \delta_{jy}\sum_{k \ne y}\mathbb{1}\left[z_k - z_{y} + 1 > 0\right]",
    title="multiclass hinge",
    fused_formula="dA{L} (the output is linear: g'(Z{L}) = 1)",
    fused_latex=r"dA^{[L]}",
    textbook_loss=_quiet(lambda A, Y: _margins(A, Y)),
    textbook_dA=_quiet(lambda A, Y: _hinge_dA(A, A, Y)),
    textbook_dZ=_quiet(lambda A, Y: _hinge_dA(A, A, Y)),
    unstable_reason=lambda A, Y, k, i: "a margin of exactly 0, where the hinge has no derivative (0 is used)",
    breakdown_latex=r"\max\left(0,\ z_j - z_y + 1\right) \text{ has no derivative where } z_j - z_y + 1 = 0",
    breakdown_none="no margin z_j - z_y + 1 is exactly 0, where the hinge has no derivative (0 is used there)",
    class_indices=True,
    output_loss=lambda A, Y: np.sum(_margins(A, Y), axis=0),
    output_dA=lambda A, Y: _hinge_dA(A, A, Y),
    output_dZ=lambda A, Y: _hinge_dA(A, A, Y),
    output_error=lambda A: None,
    output_domain="any finite numbers (the class scores)",
))


def one_hot(indices: Array, n_classes: int) -> Array:
    """Class indices (m,) of ints in [0, n_classes) -> one-hot columns (n_classes, m)."""
    Y = np.zeros((n_classes, indices.shape[0]))
    Y[indices, np.arange(indices.shape[0])] = 1.0
    return Y

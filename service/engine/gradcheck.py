"""Numerical gradient check by central differences, features first (shapes as in ``network``).

For a parameter entry theta (an entry of some W_l or b_l) and a step epsilon:

    numeric = (J(theta + eps) - J(theta - eps)) / ((theta + eps) - (theta - eps))

(the denominator is the step as float64 actually took it, ~2 eps). ``J`` is the cost of ``network.compute``,
L2 term included, with the same fixed dropout masks, so it is a deterministic function of the parameters. A
perturbation of layer l's parameters re-runs the forward pass from layer l only (the earlier activations do not
change); the L2 term's difference is taken from the changed entry alone, which avoids cancelling two large sums.

The course's metric compares the analytic vector a with the numeric vector n:

    difference = ||a - n||_2 / (||a||_2 + ||n||_2)          (0 when both are zero)

and the check passes when difference <= threshold (2e-7 by default). The same metric is reported per parameter;
for a parameter whose gradient is tiny it may exceed the threshold by rounding alone: ``roundoff``,
8 * machine epsilon * max(1, |J|) / eps, is the scale of the absolute error that rounding J leaves in a central
difference, and ``ParameterCheck.within_roundoff`` says when every error of the parameter is below it.

Modes: ``full`` checks every entry; ``entries`` a random subset of ``samples`` entries (seeded); ``directions``
``samples`` random unit directions v over all the parameters at once, comparing the directional derivative
g . v with (J(theta + eps v) - J(theta - eps v)) / (2 eps). Every mode counts its forward passes before running
(``planned_passes``: one for the base pass plus two per entry or direction) and refuses to exceed ``max_passes``.

``plan`` also prices a check before it runs, in multiply-add equivalents, so that a caller can hold it to a budget.
A layer evaluation costs more than its n_l n_(l-1) m multiply-adds: W streams from memory once per pass (which
dominates when m is small), every activation entry goes through the activation (an exp for sigmoid and tanh), and
each numpy call carries a fixed overhead (~10 us) that dominates for narrow layers: 64 layers of width 1 are 64
evaluations of ~10 us, not 64 multiply-adds. The constants below were measured on a 2-core Xeon, where dense
products run at 3e9 to 6e10 multiply-adds per second, and are expressed at a nominal 1e10 per second (rounded up).
Held to GRADIENT_MAX_WORK's default of 4e9, the costliest accepted checks measured there (64 one-unit layers in
every mode, 2000 x 2000 with m = 1, [500, 500, 500, 1] with m = 1000, 20 layers with m = 5000) each ran in under 0.5 s.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from service.engine import costs
from service.engine.network import Dropout, Layer, cost_value, forward, layer_forward

Array = np.ndarray

MODES = ("full", "entries", "directions")
DEFAULT_EPSILON = 1e-7
DEFAULT_THRESHOLD = 2e-7

# The price of one layer evaluation of a pass, in multiply-add equivalents (see the module docstring):
#     n_l n_(l-1) (m + WEIGHT_READ) + ELEMENTWISE n_l m + LAYER_OVERHEAD
WEIGHT_READ = 16  # per weight entry: W read from memory once per evaluation (~1.6 ns per entry when m is small)
ELEMENTWISE = 200  # per activation entry: bias, activation, dropout mask, cost (sigmoid: ~16 ns per entry)
LAYER_OVERHEAD = 150_000  # per evaluation: the fixed cost of numpy's calls for one layer (~15 us)
DIRECTION_DRAW = 600  # per parameter entry and direction: drawing, normalising and applying it (~50 ns)


def parameter_count(layers: list[Layer]) -> int:
    """Sum over layers of n_l n_{l-1} + n_l (every entry of every W_l and b_l)."""
    return sum(layer.W.size + layer.b.size for layer in layers)


def planned_passes(layers: list[Layer], mode: str, samples: int | None) -> int:
    """Forward passes a check will run: 1 + 2 per checked entry (``full``: all of them) or per direction."""
    total = parameter_count(layers)
    if mode == "full":
        return 1 + 2 * total
    if mode == "entries":
        return 1 + 2 * min(int(samples), total)
    if mode == "directions":
        return 1 + 2 * int(samples)
    raise ValueError(f"mode must be one of {MODES}")


def layer_cost(layer: Layer, m: int) -> int:
    """The price of evaluating one layer for m examples, in multiply-add equivalents."""
    n_out, n_in = layer.W.shape
    return n_out * n_in * (m + WEIGHT_READ) + ELEMENTWISE * n_out * m + LAYER_OVERHEAD


@dataclass(frozen=True)
class Plan:
    """What a check will cost, counted from shapes before it runs: ``passes`` (1 + 2 per entry or direction)
    and ``work``, their price in multiply-add equivalents (``layer_cost`` of every layer each pass evaluates,
    plus drawing the directions)."""

    passes: int
    work: int


def plan(layers: list[Layer], m: int, mode: str, samples: int | None) -> Plan:
    """Price a check of ``layers`` on m examples. ``full``: exact (a pass for an entry of layer l evaluates layers
    l..L only); ``entries``: as if every sampled entry were in layer 1 (the sample is drawn later); ``directions``:
    every pass evaluates every layer, and each direction draws one number per parameter entry and applies them layer
    by layer."""
    costs = [layer_cost(layer, m) for layer in layers]
    suffix = np.cumsum(costs[::-1])[::-1]  # suffix[l - 1]: layers l..L
    whole = int(suffix[0])
    passes = planned_passes(layers, mode, samples)
    if mode == "full":
        work = whole + 2 * sum((layer.W.size + layer.b.size) * int(suffix[l]) for l, layer in enumerate(layers))
    elif mode == "entries":
        work = passes * whole
    else:  # each direction also draws and applies a perturbation per layer
        work = passes * whole + int(samples) * (DIRECTION_DRAW * parameter_count(layers) + LAYER_OVERHEAD * len(layers))
    return Plan(passes, int(work))


class TooManyPasses(ValueError):
    """The check would run more forward passes than allowed."""

    def __init__(self, planned: int, cap: int):
        self.planned, self.cap = planned, cap
        super().__init__(f"the check needs {planned} forward passes, over the cap of {cap}")


@dataclass(frozen=True)
class EntryCheck:
    """One checked entry (``parameter``: 'dW2', ``index`` into it) or one direction (``direction``: k)."""

    analytic: float
    numeric: float
    abs_error: float
    parameter: str | None = None
    index: tuple[int, ...] | None = None
    direction: int | None = None


@dataclass(frozen=True)
class ParameterCheck:
    """The metric over one gradient's checked entries; ``difference`` is None when none was checked."""

    name: str
    entries_total: int
    entries_checked: int
    difference: float | None
    max_abs_error: float | None
    passed: bool | None
    within_roundoff: bool | None = None


@dataclass(frozen=True)
class CheckResult:
    """The outcome: the overall metric and verdict, per parameter (not in ``directions`` mode), the worst
    entries or directions by |analytic - numeric|, the forward passes actually run and the sample size."""

    mode: str
    epsilon: float
    threshold: float
    difference: float
    passed: bool
    parameters: list[ParameterCheck]
    worst: list[EntryCheck]
    forward_passes: int
    sample_size: int
    entries_total: int
    roundoff: float = 0.0


def course_difference(a: Array, b: Array) -> float:
    """The course's gradient-check metric ||a - b||_2 / (||a||_2 + ||b||_2), a and b of the same shape; 0 when
    both are zero. Both are first divided by their largest |entry|, so the norms cannot overflow. It is also
    the ``difference`` of a graded key (``grading.compare``)."""
    scale = max(float(np.max(np.abs(a), initial=0.0)), float(np.max(np.abs(b), initial=0.0)))
    if scale == 0:
        return 0.0
    a, b = a / scale, b / scale
    return float(np.linalg.norm(a - b)) / float(np.linalg.norm(a) + np.linalg.norm(b))


def smallest_epsilon(layers: list[Layer]) -> float:
    """The step a check needs to exceed: one unit in the last place (``np.spacing``) of the largest |theta| over
    every W and b entry. Half an ulp is the strict minimum for theta + eps to round away from theta; the full ulp
    is a margin: with eps above it, theta + eps and theta - eps each round to within ulp/2 < eps/2 of their exact
    values, so for every entry the step actually taken, (theta + eps) - (theta - eps), exceeds eps (within a
    factor of two of the 2 eps asked for) instead of being a rounding artefact."""
    largest = max(float(np.max(np.abs(layer.W))) for layer in layers)
    largest = max([largest] + [float(np.max(np.abs(layer.b))) for layer in layers])
    return float(np.spacing(largest))


class _Objective:
    """J as a function of the parameters, with a counter of the forward passes run."""

    def __init__(self, X: Array, Y: Array, layers: list[Layer], cost: str, l2: float, dropout: Dropout | None):
        # Own copies of W and b: ``entry`` perturbs them in place and must never touch the caller's arrays.
        layers = [Layer(W=np.array(layer.W, dtype=np.float64), b=np.array(layer.b, dtype=np.float64),
                        activation=layer.activation, negative_slope=layer.negative_slope) for layer in layers]
        self.Y, self.layers, self.l2, self.dropout = Y, layers, l2, dropout
        self.unit = costs.get(cost)
        self.m = X.shape[1]
        self.passes = 1
        AL, self.caches = forward(X, layers, dropout)
        self.inputs = [c.A_prev for c in self.caches]  # A_{l-1} after dropout, the input of layer l
        with np.errstate(over="ignore", invalid="ignore"):
            self.J = cost_value(self.unit, self.caches[-1].Z, AL, Y, layers, l2)

    def data_cost(self, layers: list[Layer], start: int) -> float:
        """(1/m) sum_i loss_i with ``layers`` (only layers start..L differ from the base), from layer ``start``;
        NumericalOverflow when it is not finite."""
        self.passes += 1
        A = self.inputs[start - 1]
        L = len(layers)
        p = self.dropout.keep_prob if self.dropout is not None else 1.0
        with np.errstate(over="ignore", invalid="ignore"):
            for l in range(start, L + 1):
                mask = self.dropout.masks[l - 1] if self.dropout is not None and l < L else None
                A, cache = layer_forward(A, layers[l - 1], mask, p)
            return cost_value(self.unit, cache.Z, A, self.Y, layers, 0.0)

    def entry(self, l: int, which: str, index: tuple[int, ...], eps: float) -> float:
        """The central difference along one entry of W_l (which='W') or b_l (which='b'). The entry is changed in
        place and restored (copying W for every entry would cost as much as the pass itself)."""
        base = getattr(self.layers[l - 1], which)
        value = base[index]
        plus, minus = value + eps, value - eps
        results = []
        try:
            for v in (plus, minus):
                base[index] = v
                results.append(self.data_cost(self.layers, l))
        finally:
            base[index] = value
        step = plus - minus
        penalty = 0.0
        if which == "W" and self.l2:
            penalty = self.l2 / (2 * self.m) * (plus * plus - minus * minus)
        return ((results[0] - results[1]) + penalty) / step

    def direction(self, V: list[tuple[Array, Array]], eps: float) -> float:
        """The central difference along the direction V (one (dW, db)-shaped pair per layer)."""
        results = []
        for sign in (1.0, -1.0):
            layers = [Layer(W=layer.W + sign * eps * vW, b=layer.b + sign * eps * vb, activation=layer.activation,
                            negative_slope=layer.negative_slope) for layer, (vW, vb) in zip(self.layers, V)]
            results.append(self.data_cost(layers, 1))
        penalty = 0.0
        if self.l2:
            penalty = self.l2 / (2 * self.m) * sum(
                float(np.sum((layer.W + eps * vW) ** 2 - (layer.W - eps * vW) ** 2))
                for layer, (vW, _) in zip(self.layers, V))
        return ((results[0] - results[1]) + penalty) / (2 * eps)


def check(X: Array, Y: Array, layers: list[Layer], cost: str, dW: list[Array], db: list[Array], *,
          l2: float = 0.0, dropout: Dropout | None = None, epsilon: float = DEFAULT_EPSILON,
          threshold: float = DEFAULT_THRESHOLD, mode: str = "full", samples: int | None = None, seed: int = 0,
          max_passes: int = 20_000, worst: int = 5) -> CheckResult:
    """Check the analytic gradients dW_l (n_l, n_{l-1}) and db_l (n_l, 1) of J at the given parameters.

    X (n_0, m), Y (n_L, m). TooManyPasses (before any pass runs) when ``planned_passes`` exceeds ``max_passes``.
    """
    planned = planned_passes(layers, mode, samples)
    if planned > max_passes:
        raise TooManyPasses(planned, max_passes)
    objective = _Objective(X, Y, layers, cost, l2, dropout)
    roundoff = min(8 * float(np.finfo(np.float64).eps) * max(1.0, abs(objective.J)) / epsilon,
                   float(np.finfo(np.float64).max))
    total = parameter_count(layers)
    grads: list[tuple[str, int, str, Array]] = []  # (name, layer, 'W' or 'b', analytic (shape of W_l or b_l))
    for l in range(1, len(layers) + 1):
        grads.append((f"dW{l}", l, "W", np.asarray(dW[l - 1], dtype=np.float64).reshape(layers[l - 1].W.shape)))
    for l in range(1, len(layers) + 1):
        grads.append((f"db{l}", l, "b", np.asarray(db[l - 1], dtype=np.float64).reshape(layers[l - 1].b.shape)))

    if mode == "directions":
        rng = np.random.default_rng(seed)
        checks = []
        for k in range(int(samples)):
            V = [(rng.standard_normal(layer.W.shape), rng.standard_normal(layer.b.shape)) for layer in layers]
            norm = np.sqrt(sum(float(np.sum(vW * vW) + np.sum(vb * vb)) for vW, vb in V))
            V = [(vW / norm, vb / norm) for vW, vb in V]
            analytic = sum(float(np.sum(g * (V[l - 1][0] if w == "W" else V[l - 1][1]))) for _, l, w, g in grads)
            numeric = objective.direction(V, epsilon)
            checks.append(EntryCheck(analytic, numeric, abs(analytic - numeric), direction=k))
        a = np.array([c.analytic for c in checks])
        n = np.array([c.numeric for c in checks])
        diff = course_difference(a, n)
        params = [ParameterCheck(name, g.size, 0, None, None, None) for name, _, _, g in grads]
        top = sorted(checks, key=lambda c: -c.abs_error)[:worst]
        return CheckResult(mode, epsilon, threshold, diff, diff <= threshold, params, top, objective.passes,
                           int(samples), total, roundoff)

    # full / entries: flat positions over the concatenation of the gradients in the order of ``grads``.
    sizes = [g.size for _, _, _, g in grads]
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    if mode == "full":
        chosen = np.arange(total)
    else:
        rng = np.random.default_rng(seed)
        chosen = np.sort(rng.choice(total, size=min(int(samples), total), replace=False))
    checks = []
    params = []
    for p, (name, l, which, g) in enumerate(grads):
        lo, hi = offsets[p], offsets[p + 1]
        mine = chosen[(chosen >= lo) & (chosen < hi)] - lo
        a, n = [], []
        for flat in mine:
            index = tuple(int(i) for i in np.unravel_index(int(flat), g.shape))
            numeric = objective.entry(l, which, index, epsilon)
            analytic = float(g[index])
            a.append(analytic)
            n.append(numeric)
            checks.append(EntryCheck(analytic, numeric, abs(analytic - numeric), parameter=name, index=index))
        if a:
            d = course_difference(np.array(a), np.array(n))
            worst_error = float(np.max(np.abs(np.subtract(a, n))))
            params.append(ParameterCheck(name, g.size, len(a), d, worst_error, d <= threshold,
                                         worst_error <= roundoff))
        else:
            params.append(ParameterCheck(name, g.size, 0, None, None, None))
    a = np.array([c.analytic for c in checks])
    n = np.array([c.numeric for c in checks])
    diff = course_difference(a, n)
    top = sorted(checks, key=lambda c: -c.abs_error)[:worst]
    return CheckResult(mode, epsilon, threshold, diff, diff <= threshold, params, top, objective.passes,
                       len(chosen), total, roundoff)

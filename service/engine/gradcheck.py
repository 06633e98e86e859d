"""Numerical gradient check by central differences, features first (shapes as in ``network``).

For a parameter entry theta (an entry of any parameter of any layer: W_l, b_l, gamma_l, ...) and a step epsilon:

    numeric = (J(theta + eps) - J(theta - eps)) / ((theta + eps) - (theta - eps))

(the denominator is the step as float64 actually took it, ~2 eps). ``J`` is the cost of ``network.compute``,
L2 term included, with the same fixed dropout masks (and batchnorm's batch statistics recomputed), so it is a
deterministic function of the parameters. A perturbation of layer l's parameters re-runs the forward pass from
layer l only (the earlier activations do not change); the L2 term's difference is taken from the changed entry
alone, which avoids cancelling two large sums.

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
A layer evaluation costs more than its forward multiply-adds (its kind's ``Price.forward_work``; dense:
n_l n_(l-1) m): its parameters stream from memory once per pass (``Price.reads``; this dominates when m is small),
every output entry goes through the activation (an exp for sigmoid and tanh), and each numpy call carries a fixed
overhead (~10 us) that dominates for narrow layers: 64 layers of width 1 are 64 evaluations of ~10 us, not 64
multiply-adds. The constants below were measured on a 2-core Xeon, where dense
products run at 3e9 to 6e10 multiply-adds per second, and are expressed at a nominal 1e10 per second (rounded up).
Held to GRADIENT_MAX_WORK's default of 4e9, the costliest accepted checks measured there (64 one-unit layers in
every mode, 2000 x 2000 with m = 1, [500, 500, 500, 1] with m = 1000, 20 layers with m = 5000) each ran in under 0.5 s.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from service.engine import costs
from service.engine.difference import course_difference
from service.engine.kinds import Layouts
from service.engine.network import Dropout, Layer, cost_value, forward, layer_forward, param_order

Array = np.ndarray

MODES = ("full", "entries", "directions")
DEFAULT_EPSILON = 1e-7
DEFAULT_THRESHOLD = 2e-7

# The price of one layer evaluation of a pass, in multiply-add equivalents (see the module docstring):
#     forward_work + WEIGHT_READ reads + ELEMENTWISE (output entries) + LAYER_OVERHEAD
# (dense: n_l n_(l-1) (m + WEIGHT_READ) + ELEMENTWISE n_l m + LAYER_OVERHEAD)
WEIGHT_READ = 16  # per parameter entry read once per evaluation (~1.6 ns per entry when m is small)
ELEMENTWISE = 200  # per activation entry: bias, activation, dropout mask, cost (sigmoid: ~16 ns per entry)
LAYER_OVERHEAD = 150_000  # per evaluation: the fixed cost of numpy's calls for one layer (~15 us)
DIRECTION_DRAW = 600  # per parameter entry and direction: drawing, normalising and applying it (~50 ns)


def parameter_count(layers: list[Layer]) -> int:
    """Every entry of every parameter of every layer (dense: n_l n_{l-1} + n_l)."""
    return sum(layer.params[p.name].size for layer in layers for p in layer.unit.params)


def evaluation_cost(layer: Layer, in_shape: tuple[int, ...], m: int) -> int:
    """The price of evaluating one layer for m examples, in multiply-add equivalents."""
    out_shape = layer.unit.check(in_shape, _as_sent(layer), layer.hyper, _ENGINE_LAYOUT, "", "").out_shape
    price = layer.unit.price(in_shape, out_shape, layer.params, layer.hyper, m)
    outputs = int(np.prod(out_shape, dtype=np.int64)) * m
    return price.forward_work + WEIGHT_READ * price.reads + ELEMENTWISE * outputs + LAYER_OVERHEAD


def _as_sent(layer: Layer) -> dict:
    return {**layer.params, **layer.state}


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




@dataclass(frozen=True)
class Plan:
    """What a check will cost, counted from shapes before it runs: ``passes`` (1 + 2 per entry or direction)
    and ``work``, their price in multiply-add equivalents (``layer_cost`` of every layer each pass evaluates,
    plus drawing the directions)."""

    passes: int
    work: int


def plan(layers: list[Layer], in_shapes: list[tuple[int, ...]], m: int, mode: str, samples: int | None) -> Plan:
    """Price a check of ``layers`` (``in_shapes``: each layer's input feature shape) on m examples. ``full``: exact
    (a pass for an entry of layer l evaluates layers l..L only); ``entries``: as if every sampled entry were in
    layer 1 (the sample is drawn later); ``directions``: every pass evaluates every layer, and each direction draws
    one number per parameter entry and applies them layer by layer."""
    costs = [evaluation_cost(layer, shape, m) for layer, shape in zip(layers, in_shapes)]
    suffix = np.cumsum(costs[::-1])[::-1]  # suffix[l - 1]: layers l..L
    whole = int(suffix[0])
    passes = planned_passes(layers, mode, samples)
    if mode == "full":
        work = whole + 2 * sum(parameter_count([layer]) * int(suffix[l]) for l, layer in enumerate(layers))
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


def smallest_epsilon(layers: list[Layer]) -> float:
    """The step a check needs to exceed: one unit in the last place (``np.spacing``) of the largest |theta| over
    every parameter entry. Half an ulp is the strict minimum for theta + eps to round away from theta; the full ulp
    is a margin: with eps above it, theta + eps and theta - eps each round to within ulp/2 < eps/2 of their exact
    values, so for every entry the step actually taken, (theta + eps) - (theta - eps), exceeds eps (within a
    factor of two of the 2 eps asked for) instead of being a rounding artefact."""
    largest = max(float(np.max(np.abs(layer.params[p.name]))) for layer in layers for p in layer.unit.params)
    return float(np.spacing(largest))


class _Objective:
    """J as a function of the parameters, with a counter of the forward passes run."""

    def __init__(self, X: Array, Y: Array, layers: list[Layer], cost: str, l2: float, dropout: Dropout | None):
        # Own copies of the parameters: ``entry`` perturbs them in place and must never touch the caller's arrays.
        layers = [replace(layer, params={k: np.array(v, dtype=np.float64) for k, v in layer.params.items()})
                  for layer in layers]
        self.Y, self.layers, self.l2, self.dropout = Y, layers, l2, dropout
        self.unit = costs.get(cost)
        self.m = Y.shape[1]
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
                mask = self.dropout.mask(l, L) if self.dropout is not None else None
                A, cache = layer_forward(A, layers[l - 1], mask, p)
            return cost_value(self.unit, cache.Z, A, self.Y, layers, 0.0)

    def regularized(self, l: int, name: str) -> bool:
        return bool(self.l2) and any(p.name == name and p.l2 for p in self.layers[l - 1].unit.params)

    def entry(self, l: int, name: str, index: tuple[int, ...], eps: float) -> float:
        """The central difference along one entry of parameter ``name`` of layer l. The entry is changed in place
        and restored (copying the parameter for every entry would cost as much as the pass itself)."""
        base = self.layers[l - 1].params[name]
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
        if self.regularized(l, name):
            penalty = self.l2 / (2 * self.m) * (plus * plus - minus * minus)
        return ((results[0] - results[1]) + penalty) / step

    def direction(self, V: list[dict[str, Array]], eps: float) -> float:
        """The central difference along the direction V (one {param: array} per layer)."""
        results = []
        for sign in (1.0, -1.0):
            layers = [replace(layer, params={k: layer.params[k] + sign * eps * v[k] for k in layer.params})
                      for layer, v in zip(self.layers, V)]
            results.append(self.data_cost(layers, 1))
        penalty = 0.0
        if self.l2:
            penalty = self.l2 / (2 * self.m) * sum(
                float(np.sum((layer.params[k] + eps * v[k]) ** 2 - (layer.params[k] - eps * v[k]) ** 2))
                for l, (layer, v) in enumerate(zip(self.layers, V), start=1) for k in layer.params
                if self.regularized(l, k))
        return ((results[0] - results[1]) + penalty) / (2 * eps)


def gradient_order(layers: list[Layer]) -> list[tuple[str, int, str]]:
    """(gradient key, layer, parameter) of every parameter, in the keys' order (dW1..dWL, db1..dbL, dgamma..)."""
    return [(f"d{name}{l}", l, name) for name in param_order()
            for l, layer in enumerate(layers, start=1) if any(p.name == name for p in layer.unit.params)]


def check(X: Array, Y: Array, layers: list[Layer], cost: str, grads: list[dict[str, Array]], *,
          l2: float = 0.0, dropout: Dropout | None = None, epsilon: float = DEFAULT_EPSILON,
          threshold: float = DEFAULT_THRESHOLD, mode: str = "full", samples: int | None = None, seed: int = 0,
          max_passes: int = 20_000, worst: int = 5) -> CheckResult:
    """Check the analytic gradients (``grads[l-1][param]``, each in its parameter's engine shape) of J.

    TooManyPasses (before any pass runs) when ``planned_passes`` exceeds ``max_passes``.
    """
    planned = planned_passes(layers, mode, samples)
    if planned > max_passes:
        raise TooManyPasses(planned, max_passes)
    objective = _Objective(X, Y, layers, cost, l2, dropout)
    roundoff = min(8 * float(np.finfo(np.float64).eps) * max(1.0, abs(objective.J)) / epsilon,
                   float(np.finfo(np.float64).max))
    total = parameter_count(layers)
    order = [(key, l, name, np.asarray(grads[l - 1][name], dtype=np.float64).reshape(layers[l - 1].params[name].shape))
             for key, l, name in gradient_order(layers)]
    if mode == "directions":
        return _directions(objective, layers, order, epsilon, threshold, int(samples), seed, worst, total, roundoff)
    # full / entries: flat positions over the concatenation of the gradients in the order of ``order``.
    sizes = [g.size for *_, g in order]
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    if mode == "full":
        chosen = np.arange(total)
    else:
        rng = np.random.default_rng(seed)
        chosen = np.sort(rng.choice(total, size=min(int(samples), total), replace=False))
    checks, params = [], []
    for p, (key, l, name, g) in enumerate(order):
        lo, hi = offsets[p], offsets[p + 1]
        mine = chosen[(chosen >= lo) & (chosen < hi)] - lo
        a, n = [], []
        for flat in mine:
            index = tuple(int(i) for i in np.unravel_index(int(flat), g.shape))
            numeric = objective.entry(l, name, index, epsilon)
            analytic = float(g[index])
            a.append(analytic)
            n.append(numeric)
            checks.append(EntryCheck(analytic, numeric, abs(analytic - numeric), parameter=key, index=index))
        if a:
            d = course_difference(np.array(a), np.array(n))
            worst_error = float(np.max(np.abs(np.subtract(a, n))))
            params.append(ParameterCheck(key, g.size, len(a), d, worst_error, d <= threshold,
                                         worst_error <= roundoff))
        else:
            params.append(ParameterCheck(key, g.size, 0, None, None, None))
    a = np.array([c.analytic for c in checks])
    n = np.array([c.numeric for c in checks])
    diff = course_difference(a, n)
    top = sorted(checks, key=lambda c: -c.abs_error)[:worst]
    return CheckResult(mode, epsilon, threshold, diff, diff <= threshold, params, top, objective.passes,
                       len(chosen), total, roundoff)


def _directions(objective: _Objective, layers: list[Layer], order: list, epsilon: float, threshold: float,
                samples: int, seed: int, worst: int, total: int, roundoff: float) -> CheckResult:
    """``samples`` random unit directions over all the parameters at once: g . v against the central difference."""
    rng = np.random.default_rng(seed)
    checks = []
    for k in range(samples):
        V = [{p.name: rng.standard_normal(layer.params[p.name].shape) for p in layer.unit.params} for layer in layers]
        # Per layer, then across layers: the sums of squares in the order the check has always added them.
        norm = np.sqrt(sum(float(sum(np.sum(v * v) for v in d.values())) for d in V))
        V = [{name: v / norm for name, v in d.items()} for d in V]
        analytic = sum(float(np.sum(g * V[l - 1][name])) for _, l, name, g in order)
        numeric = objective.direction(V, epsilon)
        checks.append(EntryCheck(analytic, numeric, abs(analytic - numeric), direction=k))
    a = np.array([c.analytic for c in checks])
    n = np.array([c.numeric for c in checks])
    diff = course_difference(a, n)
    params = [ParameterCheck(key, g.size, 0, None, None, None) for key, _, _, g in order]
    top = sorted(checks, key=lambda c: -c.abs_error)[:worst]
    return CheckResult("directions", epsilon, threshold, diff, diff <= threshold, params, top, objective.passes,
                       samples, total, roundoff)


# The layouts of the engine's own arrays (as kinds' shape rules see them when pricing).
_ENGINE_LAYOUT = Layouts()

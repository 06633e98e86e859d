"""Grading a submission against the reference, and diagnosing what a wrong array points to.

Everything is features first, as in ``network``: ``AL, dZ_l, dA_l: (n_l, m)``, ``dW_l: (n_l, n_{l-1})``,
``db_l: (n_l, 1)`` or ``(n_l,)`` (the shape ``b`` was sent in), ``cost``: a 0-d array. Keys use the course's
names: ``cost``, ``AL``, ``dW1..dWL``, ``db1..dbL``, ``dZ1..dZL``, ``dA0..dA{L}``.

Comparison rule (numpy.isclose), elementwise with the reference ``r`` and the submission ``s``:

    |s - r| <= atol + rtol * |r|

A key is ``correct`` when every graded entry passes. Two kinds of entries are treated specially:

* Reference entries that are not representable in float64 (``dA_L`` where ``A_L`` rounds to exactly 0 or 1
  against its label; NaN in ``Result``, null in /v1/gradients) are not graded: a null or any number submitted
  there is accepted (the true value is beyond float64, so no float can be compared with it).
* ``cost`` and ``dA_L`` are also accepted where they match the course's own formulas evaluated in float64 from
  ``A_L`` (``textbook_bounds``): ``J = -mean(Y log A + (1-Y) log(1-A))`` and ``dA = -(Y/A - (1-Y)/(1-A))`` lose
  their digits where ``A_L`` is within a few ulps of 1 (``1 - A_L`` keeps few), and a student who follows the
  course exactly gets those digits wrong. An entry within the tolerance of the interval the textbook formula spans
  when ``A_L`` moves by up to ``TEXTBOOK_ULPS`` units in the last place passes, with a note.

Diagnoses: for a wrong key each hypothesis builds a candidate array, the value that key would have under exactly
that mistake, and tests the submission against it with the same rule. A hypothesis is reported only when it fits,
and only when its candidate differs from the reference (otherwise the numbers cannot tell them apart). Two kinds:

* local transforms of the key's own reference: ``m r`` or ``r / m`` (1/m missing or doubled, or the other
  intermediate convention), ``-r``, ``r^T``, the reference of the neighbouring layer's key, ``dZ_L`` for ``dA_L``,
  ``dW`` without its L2 term;
* mistaken backward passes (``Hypothesis``), re-run from the forward caches with one mistake at one layer and
  carried down: the activation derivative evaluated on ``A`` (``sigmoid'(A)``, ``tanh'(A)``), ReLU's derivative
  taken as 1 at ``z = 0``, ``dZ_L = dA_L`` (``g_L'`` left out), the dropout mask not applied or applied without
  ``/p``. Every key downstream of the mistake is diagnosed with it. They are run once per batch, only for the keys
  some submission got wrong, only down to the lowest such layer, and only the arrays of those keys are kept; a
  budget of multiply-adds and of stored numbers bounds them, and the ones over it are skipped with a note.

When several hypotheses fit, the best (smallest ``max |s - c| / (atol + rtol |c|)``) is reported and the others
are listed as alternatives. A scalar multiple ``c r`` fitted by least squares (``c = <s, r> / <r, r>``) is reported
as ``scaled_by_constant`` only when no named hypothesis fits and the reference has two nonzero entries or more.
``Diagnosis.fitted`` names the evidence computed from the reference's values (a fitted ratio, the error under the
hypothesis), which a caller that keeps the reference secret must leave out. Messages hold no number computed from
the reference (only the request's constants: m, lambda, keep_prob, a slope), so they can always be shown.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from typing import Callable, Iterable, Iterator

import numpy as np

from service.engine.activations import ACTIVATIONS
from service.engine.gradcheck import course_difference, layer_cost
from service.engine.network import Dropout, Layer, LayerCache, Result, backward, compute

Array = np.ndarray

STATUSES = ("correct", "incorrect", "shape_mismatch", "missing", "not_a_number")
# Keys whose arrays are (units, m): they follow the request's layout on the wire.
PER_EXAMPLE_KINDS = frozenset({"AL", "dZ", "dA"})
DEFAULT_RTOL = 1e-5
DEFAULT_ATOL = 1e-8
# How far (in units in the last place) a student's A_L may sit from the exact one: every common float64 form of the
# sigmoid (1/(1 + exp(-z)), exp(z)/(1 + exp(z)), 0.5 (1 + tanh(z/2))) lands within 2 ulps for z > 0.
TEXTBOOK_ULPS = 3
# The local hypotheses a key can be tested against, at most (1/m twice, its double, sign, transpose, the two
# neighbours, dZ_L for dA_L, missing L2, a constant multiple).
LOCAL_CANDIDATES = 9
# Fixed cost of comparing one array with one candidate, in numbers compared (~15 us against ~10 ns per number).
CANDIDATE_OVERHEAD = 1500

DIAGNOSES = {
    "missing_1_over_m": "the 1/m factor is missing (the submission is m times the reference)",
    "extra_1_over_m": "1/m is applied twice (the submission is the reference divided by m)",
    "intermediate_convention": "the other convention for dA and dZ (per-example versus mean: a factor m)",
    "sign_flipped": "the sign is flipped",
    "transposed": "the array is transposed",
    "column_vs_vector": "right values, but a vector where a column was expected or the reverse",
    "layer_index_off_by_one": "the value of the neighbouring layer's key (the layer index is off by one)",
    "dZL_sent_as_dAL": "dZ_L = A_L - Y was sent as dA_L",
    "dAL_sent_as_dZL": "dA_L was used as dZ_L (the output activation's derivative was left out)",
    "derivative_on_A": "the activation derivative was evaluated on A instead of Z (sigmoid'(A), tanh'(A))",
    "relu_derivative_at_zero": "ReLU's derivative was taken as 1 at z = 0 (it is 0; leaky ReLU's is the slope)",
    "missing_l2": "the L2 term is missing",
    "dropout_mask_not_applied": "the dropout mask was not applied in the backward pass",
    "dropout_not_scaled": "the dropout mask was applied without dividing by keep_prob",
    "scaled_by_constant": "the submission is a constant multiple of the reference",
}

_INDEXED = re.compile(r"^(dW|db|dZ|dA)([0-9]+)$")


# --- keys --------------------------------------------------------------------------------------------------

def key_names(L: int) -> list[str]:
    """Every gradable key of an L-layer network, in the canonical order."""
    return (["cost", "AL"] + [f"dW{l}" for l in range(1, L + 1)] + [f"db{l}" for l in range(1, L + 1)]
            + [f"dZ{l}" for l in range(1, L + 1)] + [f"dA{l}" for l in range(L + 1)])


@lru_cache(maxsize=4096)
def parse_key(name: str) -> tuple[str, int | None]:
    """'dW2' -> ('dW', 2); 'cost' -> ('cost', None). ValueError for anything else."""
    if name in ("cost", "AL"):
        return name, None
    match = _INDEXED.match(name)
    if match is None:
        raise ValueError(f"not a key: {name!r}")
    return match.group(1), int(match.group(2))


def is_per_example(name: str) -> bool:
    """Whether the key's array is (units, m), i.e. follows the request's layout."""
    return parse_key(name)[0] in PER_EXAMPLE_KINDS


# --- tolerance and comparison ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Tolerance:
    """|s - r| <= atol + rtol * |r|, elementwise (numpy.isclose with r the reference)."""

    rtol: float = DEFAULT_RTOL
    atol: float = DEFAULT_ATOL

    def violation(self, s: Array, r: Array) -> Array:
        """|s - r| / (atol + rtol |r|), same shape; <= 1 where the entry passes (0/0 is 0, x/0 is inf)."""
        with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
            diff = np.abs(s - r)
            bound = self.atol + self.rtol * np.abs(r)
            ratio = diff / bound
        zero = bound == 0
        if zero.any():
            ratio[zero] = np.where(diff[zero] == 0, 0.0, np.inf)
        return ratio


@dataclass(frozen=True)
class Comparison:
    """One submitted array against its reference.

    ``shape``: the submission's; ``expected_shape``: the reference's. ``reshaped``: the shapes differ only by axes
    of length 1 (say ``(n,)`` for ``(n, 1)``) and the values were compared after reshaping. Errors and the worst
    entry (the largest ``|s - r| / (atol + rtol |r|)`` among the failing entries, an index into ``expected_shape``)
    are ``None`` when the values could not be compared; ``max_abs_error`` and ``max_rel_error`` are also ``None``
    when they exceed float64's range (``errors_overflow``). ``ungraded_entries``: reference entries not
    representable in float64. ``textbook_entries``: entries accepted because they match the course's formula
    evaluated from the rounded A_L (see ``textbook_bounds``).
    """

    status: str
    shape: tuple[int, ...]
    expected_shape: tuple[int, ...]
    reshaped: bool = False
    max_abs_error: float | None = None
    max_rel_error: float | None = None
    difference: float | None = None
    wrong_entries: int | None = None
    entries: int = 0
    worst_index: tuple[int, ...] | None = None
    worst_submitted: float | None = None
    worst_reference: float | None = None
    null_entries: int = 0
    first_null: tuple[int, ...] | None = None
    ungraded_entries: int = 0
    textbook_entries: int = 0
    errors_overflow: bool = False
    values_correct: bool = False


def _squeezed(shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(n for n in shape if n != 1)


def compare(s: Array, r: Array, tol: Tolerance, *, lenient_shapes: bool = False,
            textbook: tuple[Array, Array] | None = None) -> Comparison:
    """Grade ``s`` against ``r`` (any shapes; NaN in ``s`` is a null entry, NaN in ``r`` an ungraded entry, where
    anything submitted is accepted). ``textbook``: (lo, hi), r's shape, an interval of values also accepted per
    entry (NaN: none).

    Status: ``shape_mismatch`` when the shapes differ (unless they differ only by length-1 axes and
    ``lenient_shapes``), else ``not_a_number`` when ``s`` has a null entry where ``r`` is graded, else ``correct``
    or ``incorrect``.
    """
    shape, expected = tuple(s.shape), tuple(r.shape)
    reshaped = False
    if shape != expected:
        if s.size == r.size and _squeezed(shape) == _squeezed(expected):
            s, reshaped = s.reshape(expected), True
        else:
            return Comparison("shape_mismatch", shape, expected)
    graded = ~np.isnan(r)
    all_graded = bool(graded.all())
    nulls = np.isnan(s) if all_graded else np.isnan(s) & graded
    if nulls.any():
        first = tuple(int(i) for i in np.argwhere(nulls)[0])
        status = "shape_mismatch" if reshaped and not lenient_shapes else "not_a_number"
        return Comparison(status, shape, expected, reshaped, null_entries=int(nulls.sum()), first_null=first,
                          entries=int(graded.sum()))
    sg, rg = (s.reshape(-1), r.reshape(-1)) if all_graded else (s[graded], r[graded])
    violation = tol.violation(sg, rg)
    bad = violation > 1
    textbook_entries = 0
    if textbook is not None and bad.any():
        lo, hi = (a.reshape(-1) if all_graded else a[graded] for a in textbook)
        with np.errstate(invalid="ignore"):
            nearest = np.where(np.isnan(lo) | np.isnan(hi), np.nan, np.clip(sg, lo, hi))
            accepted = bad & (tol.violation(sg, nearest) <= 1)
        textbook_entries = int(accepted.sum())
        bad &= ~accepted
    wrong = int(np.count_nonzero(bad))
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        diff = np.abs(sg - rg)
        max_abs = float(diff.max()) if diff.size else 0.0
        nonzero = rg != 0
        max_rel = float(np.max(diff[nonzero] / np.abs(rg[nonzero]))) if nonzero.any() else None
    overflow = not np.isfinite(max_abs) or (max_rel is not None and not np.isfinite(max_rel))
    worst_index = worst_s = worst_r = None
    if wrong:
        flat = int(np.argmax(np.where(bad, violation, -1.0)))
        worst_index = (tuple(int(i) for i in np.unravel_index(flat, expected)) if all_graded
                       else tuple(int(i) for i in np.argwhere(graded)[flat]))
        worst_s, worst_r = float(s[worst_index]), float(r[worst_index])
    values_status = "incorrect" if wrong else "correct"
    status = "shape_mismatch" if reshaped and not lenient_shapes else values_status
    return Comparison(status, shape, expected, reshaped,
                      max_abs_error=max_abs if np.isfinite(max_abs) else None,
                      max_rel_error=max_rel if max_rel is not None and np.isfinite(max_rel) else None,
                      difference=course_difference(sg, rg), wrong_entries=wrong, entries=int(rg.size),
                      worst_index=worst_index, worst_submitted=worst_s, worst_reference=worst_r,
                      ungraded_entries=int(r.size - rg.size), textbook_entries=textbook_entries,
                      errors_overflow=overflow, values_correct=not wrong)


# --- the course's formulas in float64 ------------------------------------------------------------------------

def textbook_loss(cost: str, A: Array, Y: Array) -> Array:
    """The per-entry loss as the course writes it, evaluated literally from A (n_L, m): BCE
    -(Y log A + (1-Y) log(1-A)); CCE -Y log A; MSE (A - Y)^2 / 2. Not finite where the formula breaks down."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if cost == "binary_cross_entropy":
            return -(Y * np.log(A) + (1 - Y) * np.log(1 - A))
        if cost == "categorical_cross_entropy":
            return -(Y * np.log(A))
        return 0.5 * (A - Y) ** 2


def textbook_dA(cost: str, A: Array, Y: Array) -> Array:
    """dA_L = d loss / dA as the course writes it, evaluated literally from A (n_L, m): BCE
    -(Y/A - (1-Y)/(1-A)); CCE -Y/A; MSE A - Y."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if cost == "binary_cross_entropy":
            return -(Y / A - (1 - Y) / (1 - A))
        if cost == "categorical_cross_entropy":
            return -Y / A
        return A - Y


def _spread(f: Callable[[Array], Array], A: Array, ulps: int) -> tuple[Array, Array]:
    """Entrywise min and max of f(A') over A' = A moved by -ulps..+ulps units in the last place, over the
    finite values only (NaN where none is finite)."""
    lo = np.full(A.shape, np.inf)
    hi = np.full(A.shape, -np.inf)

    def include(v: Array) -> None:
        finite = np.isfinite(v)
        np.minimum(lo, v, out=lo, where=finite)
        np.maximum(hi, v, out=hi, where=finite)

    include(f(A))
    for direction in (-np.inf, np.inf):
        moved = A
        for _ in range(ulps):
            moved = np.nextafter(moved, direction)
            include(f(moved))
    none = lo > hi
    lo[none], hi[none] = np.nan, np.nan
    return lo, hi


# --- the reference -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Hypothesis:
    """A mistaken backward pass: ``code`` made at ``layer`` (1-based). ``replaces_dA``: the mistake is in dA_layer
    itself (the dropout ones); otherwise it is in dZ_layer. Structural: it depends on the network, not its values."""

    code: str
    layer: int
    replaces_dA: bool = False
    variant: int = 0  # several passes with one code at one layer (dropout: with and without /p)

    def affects(self, name: str) -> bool:
        """Whether the key ``name`` changes under this mistake."""
        kind, k = parse_key(name)
        if kind in ("dZ", "dW", "db"):
            return k <= self.layer
        if kind == "dA":
            return k < self.layer or (self.replaces_dA and k == self.layer)
        return False


def hypotheses(layers: list[Layer], dropout: Dropout | None) -> list[Hypothesis]:
    """Every mistaken backward pass that may apply to this network, output layer first."""
    L, out = len(layers), []
    for l in range(L, 0, -1):
        act = layers[l - 1].activation
        if act in ("sigmoid", "tanh"):
            out.append(Hypothesis("derivative_on_A", l))
        if act in ("relu", "leaky_relu"):
            out.append(Hypothesis("relu_derivative_at_zero", l))
        if l == L:
            out.append(Hypothesis("dAL_sent_as_dZL", L))
    if dropout is not None:
        for l in range(L - 1, 0, -1):
            out.append(Hypothesis("dropout_mask_not_applied", l, True, 0))
            out.append(Hypothesis("dropout_mask_not_applied", l, True, 1))
            if dropout.keep_prob != 1:
                out.append(Hypothesis("dropout_not_scaled", l, True, 2))
    return out


def candidate_count(name: str, plan: list[Hypothesis]) -> int:
    """At most how many hypotheses a wrong ``name`` is tested against."""
    return LOCAL_CANDIDATES + sum(1 for h in plan if h.affects(name))


def grading_work(layers: list[Layer], dropout: Dropout | None, submissions: Iterable[dict[str, int]]) -> int:
    """The price of grading ``submissions`` (each key -> its number of entries), counted before any work as if
    every key were wrong: each array is compared with the reference and with every candidate it may be tested
    against, each comparison ``entries + CANDIDATE_OVERHEAD``."""
    plan = hypotheses(layers, dropout)
    counts: dict[str, int] = {}
    work = 0
    for sub in submissions:
        for name, size in sub.items():
            if name not in counts:
                counts[name] = 1 + candidate_count(name, plan)
            work += counts[name] * (size + CANDIDATE_OVERHEAD)
    return work


@dataclass(frozen=True)
class Variant:
    """A mistaken backward pass that was run: ``arrays`` holds the keys it was run for, in the reference's form."""

    hypothesis: Hypothesis
    description: str
    arrays: dict[str, Array]

    @property
    def code(self) -> str:
        return self.hypothesis.code

    @property
    def layer(self) -> int:
        return self.hypothesis.layer


@dataclass
class Reference:
    """The reference of one network and data, computed once and shared by every submission graded against it.

    ``arrays``: every key (see ``key_names``), features first, ``db_l`` in the shape ``b_l`` was sent in, the
    dA/dZ convention of ``intermediates``. ``variants`` are the mistaken backward passes run so far
    (``run_variants``), within ``variant_work`` multiply-add equivalents and ``variant_elements`` stored numbers;
    ``skipped`` lists the hypotheses left out because of them.
    """

    X: Array
    Y: Array
    layers: list[Layer]
    cost: str
    l2: float
    dropout: Dropout | None
    intermediates: str
    db_as_vector: list[bool]
    result: Result
    arrays: dict[str, Array]
    variant_work: float = float("inf")
    variant_elements: float = float("inf")
    variants: list[Variant] = field(default_factory=list)
    skipped: list[Hypothesis] = field(default_factory=list)
    work_spent: int = 0
    elements_stored: int = 0
    _ran_for: set = field(default_factory=set, repr=False)
    _candidates: dict = field(default_factory=dict, repr=False)
    _version: int = 0  # bumped whenever variants change, so cached candidate lists are rebuilt

    @property
    def L(self) -> int:
        return len(self.layers)

    @property
    def m(self) -> int:
        return self.X.shape[1]

    @property
    def skipped_variants(self) -> int:
        return len(self.skipped)

    @cached_property
    def plan(self) -> list[Hypothesis]:
        return hypotheses(self.layers, self.dropout)

    @cached_property
    def caches(self) -> list[LayerCache]:
        """``network.forward``'s caches, rebuilt from the result (no second forward pass)."""
        out, A_prev, L = [], self.X, self.L
        for l, layer in enumerate(self.layers, start=1):
            Z, A = self.result.Z[l - 1], self.result.A[l - 1]
            mask = self.dropout.masks[l - 1] if self.dropout is not None and l < L else None
            G = A if mask is None else ACTIVATIONS[layer.activation].forward(Z, layer.negative_slope)
            out.append(LayerCache(A_prev, Z, G, mask))
            A_prev = A
        return out

    def per_example(self, kind: str, l: int) -> Array:
        """dA_l or dZ_l (kind 'dA' or 'dZ') in the per-example convention, whatever ``intermediates`` is."""
        a = self.result.dA[l] if kind == "dA" else self.result.dZ[l - 1]
        if self.intermediates == "mean":
            with np.errstate(over="ignore"):
                a = a * self.m
        return a

    @cached_property
    def _textbook(self) -> dict[str, tuple[Array, Array]]:
        AL, Y, L, m = self.result.AL, self.Y, self.L, self.m
        lo, hi = _spread(lambda A: textbook_loss(self.cost, A, Y), AL, TEXTBOOK_ULPS)
        out = {}
        if not np.isnan(lo).any():
            penalty = self.l2 / (2 * m) * sum(float(np.sum(layer.W * layer.W)) for layer in self.layers)
            out["cost"] = (np.array(float(np.sum(lo)) / m + penalty), np.array(float(np.sum(hi)) / m + penalty))
        scale = 1.0 if self.intermediates == "per_example" else 1.0 / m
        out[f"dA{L}"] = _spread(lambda A: textbook_dA(self.cost, A, Y) * scale, AL, TEXTBOOK_ULPS)
        return out

    def textbook_bounds(self, name: str) -> tuple[Array, Array] | None:
        """For ``cost`` and ``dA{L}``: (lo, hi) of the course's formula evaluated from A_L moved by up to
        ``TEXTBOOK_ULPS`` ulps (the reference's shape; NaN where it is never finite); None for other keys."""
        if name not in ("cost", f"dA{self.L}"):
            return None
        return self._textbook.get(name)

    def run_variants(self, names: Iterable[str]) -> None:
        """Run the mistaken backward passes that change any of ``names``, keeping only those keys' arrays, each
        pass only down to the lowest layer it needs. Hypotheses over the budgets are recorded in ``skipped``."""
        names = {n for n in names if n not in self._ran_for}
        self._ran_for |= names
        if not names:
            return
        for h in self.plan:
            keys = [n for n in names if h.affects(n)]
            if not keys:
                continue
            lowest = max(1, min(parse_key(n)[1] for n in keys))
            work = sum(2 * layer_cost(layer, self.m) for layer in self.layers[lowest - 1:h.layer])
            stored = sum(self.arrays[n].size for n in keys)
            if self.work_spent + work > self.variant_work or self.elements_stored + stored > self.variant_elements:
                if h not in self.skipped:
                    self.skipped.append(h)
                continue
            made = _make_variant(self, h)
            if made is None:
                continue  # the mistake changes nothing here (no Z = 0 entry for relu_derivative_at_zero)
            self.work_spent += work
            self.elements_stored += stored
            description, dZ, dA_wrong = made
            arrays = backprop_from(self, h.layer, dZ, lowest=lowest)
            if dA_wrong is not None:
                arrays.update(_in_reference_form(self, {f"dA{h.layer}": dA_wrong}))
            kept = {n: arrays[n] for n in keys if n in arrays}
            self._version += 1
            existing = next((v for v in self.variants if v.hypothesis == h), None)
            if existing is None:
                self.variants.append(Variant(h, description, kept))
            else:
                existing.arrays.update(kept)


def build_reference(X: Array, Y: Array, layers: list[Layer], cost: str, *, l2: float = 0.0,
                    dropout: Dropout | None = None, intermediates: str = "per_example",
                    db_as_vector: list[bool] | None = None, variant_work: float = float("inf"),
                    variant_elements: float = float("inf")) -> Reference:
    """One ``compute`` (X (n_0, m), Y (n_L, m)) and the arrays keyed by the course's names."""
    result = compute(X, Y, layers, cost, l2=l2, dropout=dropout, intermediates=intermediates)
    L = len(layers)
    db_as_vector = list(db_as_vector or [False] * L)
    arrays: dict[str, Array] = {"cost": np.array(result.cost), "AL": result.AL}
    for l in range(1, L + 1):
        arrays[f"dW{l}"] = result.dW[l - 1]
        db = result.db[l - 1]
        arrays[f"db{l}"] = db.reshape(-1) if db_as_vector[l - 1] else db
        arrays[f"dZ{l}"] = result.dZ[l - 1]
    for l in range(L + 1):
        arrays[f"dA{l}"] = result.dA[l]
    return Reference(X=X, Y=Y, layers=layers, cost=cost, l2=l2, dropout=dropout, intermediates=intermediates,
                     db_as_vector=db_as_vector, result=result, arrays=arrays, variant_work=variant_work,
                     variant_elements=variant_elements)


# --- mistaken backward passes ------------------------------------------------------------------------------

def backprop_from(ref: Reference, l: int, dZ: Array, *, lowest: int = 1) -> dict[str, Array]:
    """Backpropagation from layer ``l`` down to layer ``lowest``, given ``dZ_l`` (n_l, m) per example.

    Returns dZ_k, dW_k, db_k for k = lowest..l and dA_k for k = lowest..l-1 (and dA_0 when ``lowest`` is 1), in
    the reference's convention and shapes, by ``network.backward`` over those layers.
    """
    p = ref.dropout.keep_prob if ref.dropout is not None else 1.0
    with np.errstate(over="ignore", invalid="ignore"):
        dW, db, dZs, dAs = backward(dZ, ref.caches[lowest - 1:l], ref.layers[lowest - 1:l], scale=1.0 / ref.m,
                                    l2=ref.l2, keep_prob=p)
    out: dict[str, Array] = {}
    for i, k in enumerate(range(lowest, l + 1)):
        out[f"dZ{k}"], out[f"dW{k}"], out[f"db{k}"] = dZs[i], dW[i], db[i]
        if k > lowest or lowest == 1:  # the lowest layer's dA_prev has no dropout mask applied
            out[f"dA{k - 1}"] = dAs[i]
    return _in_reference_form(ref, out)


def _in_reference_form(ref: Reference, arrays: dict[str, Array]) -> dict[str, Array]:
    """Per-example dA/dZ -> the reference's convention; db columns -> vectors where b was sent as one."""
    out = {}
    for name, a in arrays.items():
        kind, l = parse_key(name)
        if kind in ("dZ", "dA") and ref.intermediates == "mean":
            a = a / ref.m
        elif kind == "db" and ref.db_as_vector[l - 1]:
            a = a.reshape(-1)
        out[name] = a
    return out


def _make_variant(ref: Reference, h: Hypothesis) -> tuple[str, Array, Array | None] | None:
    """The description, the wrong dZ_layer (per example) and, for the dropout mistakes, the wrong dA_layer;
    None when the mistake changes nothing in this network."""
    l, L = h.layer, ref.L
    layer, cache = ref.layers[l - 1], ref.caches[l - 1]
    unit, slope = ACTIVATIONS[layer.activation], layer.negative_slope
    with np.errstate(over="ignore", invalid="ignore"):
        if h.code == "derivative_on_A":
            A = ref.result.A[l - 1]  # as the course's cache holds it (after dropout on a hidden layer)
            dZ = ref.per_example("dA", l) * unit.derivative(A, unit.forward(A, slope), slope)
            return (f"dZ{l} = dA{l} * {layer.activation}'(A{l}) instead of {layer.activation}'(Z{l}): the derivative "
                    f"was evaluated on the activation, not on the pre-activation", dZ, None)
        if h.code == "relu_derivative_at_zero":
            zeros = cache.Z == 0
            if not zeros.any():
                return None
            dZ = ref.per_example("dA", l) * np.where(zeros, 1.0, unit.derivative(cache.Z, cache.G, slope))
            # The count of Z = 0 entries is the reference's, so the message does not give it.
            return (f"{layer.activation}'(0) was taken as 1 at the entries where Z{l} = 0 (the derivative there is "
                    f"{0.0 if layer.activation == 'relu' else slope}: use Z > 0, not Z >= 0)", dZ, None)
        if h.code == "dAL_sent_as_dZL":
            return (f"dZ{L} was taken to be dA{L}: the output activation's derivative g'(Z{L}) was left out of "
                    f"dZ{L} = dA{L} * g'(Z{L})", ref.per_example("dA", L).copy(), None)
        p = ref.dropout.keep_prob
        raw = ref.layers[l].W.T @ ref.per_example("dZ", l + 1)  # W_{l+1}^T dZ_{l+1}, before the mask
        if h.variant == 0:
            dA, text = raw, f"dA{l} = W{l + 1}^T dZ{l + 1} without the mask D{l}"
        elif h.variant == 1:
            dA, text = raw / p, f"dA{l} = W{l + 1}^T dZ{l + 1} / keep_prob without the mask D{l}"
        else:
            dA, text = raw * cache.mask, f"dA{l} = W{l + 1}^T dZ{l + 1} * D{l} without dividing by keep_prob = {p:g}"
        return text, unit.backward(dA, cache.Z, cache.G, slope), dA


# --- diagnoses ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Diagnosis:
    """What mistake the numbers of one key point to. ``layer``: where the mistake was made (None: the key
    itself). ``evidence``: the numbers behind it (a fitted ratio, the largest error under the hypothesis ...);
    ``fitted``: the evidence keys computed from the reference's values (the others are constants of the
    hypothesis or of the request). ``alternatives``: other hypotheses that fit as well."""

    code: str
    message: str
    layer: int | None
    evidence: dict[str, float | int | str]
    alternatives: tuple[str, ...] = ()
    fitted: tuple[str, ...] = ("max_abs_error_under_hypothesis",)


@dataclass(frozen=True)
class _Candidate:
    code: str
    array: Array
    message: str
    layer: int | None = None
    evidence: dict = field(default_factory=dict)


def _ratio(s: Array, r: Array) -> float | None:
    """Least-squares c in s ~ c r over the entries where both are finite; None when r is 0 there."""
    ok = np.isfinite(s) & np.isfinite(r)
    with np.errstate(over="ignore", invalid="ignore"):
        scale = float(np.max(np.abs(r[ok]), initial=0.0))
        if scale == 0:
            return None
        rs = r[ok] / scale
        ratio = float(np.dot(s[ok] / scale, rs)) / float(np.dot(rs, rs))
    return ratio if np.isfinite(ratio) else None


def _local_candidates(ref: Reference, name: str) -> Iterator[_Candidate]:
    """Transforms of the key's own reference (and of its neighbours') that a single slip produces."""
    kind, l = parse_key(name)
    R, m, L = ref.arrays[name], ref.m, ref.L
    if m > 1:
        if kind in ("dW", "db", "cost"):
            yield _Candidate("missing_1_over_m", m * R, f"{name} is m = {m} times the reference: the 1/m factor "
                             f"is missing", evidence={"ratio": float(m), "m": m})
            if ref.l2 and kind in ("dW", "cost"):
                penalty = _l2_part(ref, name)
                yield _Candidate("missing_1_over_m", m * (R - penalty) + penalty,
                                 f"{name} has the 1/m factor missing from its data term (the L2 term is right)",
                                 evidence={"m": m})
            yield _Candidate("extra_1_over_m", R / m, f"{name} is the reference divided by m = {m}: 1/m is applied "
                             f"twice (e.g. to dZ and again to {name})", evidence={"ratio": 1.0 / m, "m": m})
        elif kind in ("dZ", "dA"):
            if ref.intermediates == "per_example":
                yield _Candidate("intermediate_convention", R / m, f"{name} is the reference divided by m = {m}: it "
                                 f"follows the `mean` convention (dZ_L = (A_L - Y)/m) where `per_example` was asked "
                                 f"(dZ_L = A_L - Y, the 1/m applied in dW and db)", evidence={"ratio": 1.0 / m, "m": m})
            else:
                yield _Candidate("intermediate_convention", m * R, f"{name} is m = {m} times the reference: it "
                                 f"follows the `per_example` convention (dZ_L = A_L - Y) where `mean` was asked "
                                 f"(every quantity the exact partial derivative of J)", evidence={"ratio": float(m), "m": m})
    yield _Candidate("sign_flipped", -R, f"{name} has the opposite sign of the reference", evidence={"ratio": -1.0})
    if R.ndim == 2 and R.size > 1:
        yield _Candidate("transposed", R.T, f"{name} is the transpose of the reference")
    if l is not None:
        low = 0 if kind == "dA" else 1
        for other in (l + 1, l - 1):
            if low <= other <= L:
                yield _Candidate("layer_index_off_by_one", ref.arrays[f"{kind}{other}"],
                                 f"{name} holds the value of {kind}{other}: the layer index is off by one",
                                 evidence={"matches": f"{kind}{other}"})
    if name == f"dA{L}":
        yield _Candidate("dZL_sent_as_dAL", ref.arrays[f"dZ{L}"], f"{name} holds dZ{L} = A{L} - Y (the fused "
                         f"output gradient), not dA{L} = dJ/dA{L}", layer=L, evidence={"matches": f"dZ{L}"})
    if ref.l2 and kind in ("dW", "cost"):
        yield _Candidate("missing_l2", R - _l2_part(ref, name),
                         f"{name} lacks the L2 term " + ("(lambda/m) W" if kind == "dW" else "lambda/(2m) sum ||W||^2")
                         + f" (lambda = {ref.l2:g})", evidence={"lambda": ref.l2})


def _l2_part(ref: Reference, name: str) -> Array:
    kind, l = parse_key(name)
    if kind == "dW":
        return (ref.l2 / ref.m) * ref.layers[l - 1].W
    return np.array(ref.l2 / (2 * ref.m) * sum(float(np.sum(layer.W * layer.W)) for layer in ref.layers))


def _variant_candidates(ref: Reference, name: str) -> Iterator[_Candidate]:
    for v in ref.variants:
        if name in v.arrays:
            at = ("dA" if v.hypothesis.replaces_dA else "dZ") + str(v.layer)
            text = v.description if name == at else f"{v.description}; {name} inherits it through backpropagation"
            yield _Candidate(v.code, v.arrays[name], text, layer=v.layer)


@dataclass(frozen=True)
class _Prepared:
    """A candidate ready to test: its non-NaN entries (``ok``)."""

    candidate: _Candidate
    ok: Array


def _candidates(ref: Reference, name: str, tol: Tolerance) -> list[_Prepared]:
    """Every candidate for ``name`` that is finite and distinguishable from the reference, computed once per
    (key, tolerance) and shared by every submission of a batch."""
    cache_key = (name, tol, ref._version)
    cached = ref._candidates.get(cache_key)
    if cached is not None:
        return cached
    R = ref.arrays[name]
    out = []
    with np.errstate(all="ignore"):
        for cand in list(_local_candidates(ref, name)) + list(_variant_candidates(ref, name)):
            c = cand.array
            if np.isinf(c).any():
                continue
            ok = ~np.isnan(c)
            if not ok.any():
                continue
            if c.shape == R.shape and _all_close(c, R, tol):
                continue  # indistinguishable from the reference for this key
            out.append(_Prepared(cand, ok))
    ref._candidates[cache_key] = out
    return out


def diagnose(ref: Reference, name: str, s: Array, tol: Tolerance) -> Diagnosis | None:
    """The mistake the wrong submission ``s`` of key ``name`` points to, or None when no hypothesis fits.

    ``s``: the submitted array (features first; already reshaped to the reference's shape when they differ only
    by length-1 axes; NaN for null entries, which fit nothing). Hypotheses that need a mistaken backward pass are
    tested only when ``ref.run_variants`` ran them for ``name``. Evidence always has
    ``max_abs_error_under_hypothesis`` and ``ratio`` (least squares s ~ ratio * reference) when it is defined.
    """
    R = ref.arrays[name]
    fits: list[tuple[float, int, _Candidate]] = []
    for order, prepared in enumerate(_candidates(ref, name, tol)):
        cand = prepared.candidate
        if cand.array.shape != s.shape:
            continue
        score = _fit(s, cand.array, prepared.ok, tol)
        if score is not None:
            fits.append((score, order, cand))
    if not fits:
        return _scaled(ref, name, s, tol)
    fits.sort(key=lambda f: (f[0], f[1]))
    score, _, best = fits[0]
    others = tuple(dict.fromkeys(f[2].code for f in fits[1:] if f[2].code != best.code))
    evidence = dict(best.evidence)
    fitted = ["max_abs_error_under_hypothesis"]
    ok = ~np.isnan(best.array)
    evidence["max_abs_error_under_hypothesis"] = float(np.max(np.abs(s[ok] - best.array[ok]))) if ok.any() else 0.0
    if s.shape == R.shape and "ratio" not in evidence:
        ratio = _ratio(s, R)
        if ratio is not None:
            evidence["ratio"] = ratio
            fitted.append("ratio")
    message = best.message
    if others:
        message += f" (also consistent with: {', '.join(others)}; this one fits best)"
    return Diagnosis(best.code, message, best.layer, evidence, others, tuple(fitted))


def _all_close(a: Array, b: Array, tol: Tolerance) -> bool:
    """Every entry where both are numbers passes the tolerance rule (a against b as the reference)."""
    with np.errstate(all="ignore"):
        close = np.abs(a - b) <= tol.atol + tol.rtol * np.abs(b)
    return bool(np.all(close | np.isnan(a) | np.isnan(b)))


def _fit(s: Array, c: Array, ok: Array, tol: Tolerance) -> float | None:
    """max |s - c| / (atol + rtol |c|) over c's non-NaN entries (``ok``) when every one passes, else None (a null
    entry of s there fails)."""
    sub, c = (s, c) if ok.all() else (s[ok], c[ok])
    with np.errstate(all="ignore"):
        if not np.all(np.abs(sub - c) <= tol.atol + tol.rtol * np.abs(c)):
            return None  # a null entry (NaN) fails too
        return float(np.max(tol.violation(sub, c)))


def _scaled(ref: Reference, name: str, s: Array, tol: Tolerance) -> Diagnosis | None:
    """s = c * reference for a least-squares c, when that fits and c is not 1."""
    R = ref.arrays[name]
    if s.shape != R.shape or np.count_nonzero(np.nan_to_num(R)) < 2:
        return None  # any single number is a multiple of another: no evidence
    ratio = _ratio(s, R)
    if ratio is None or ratio == 0:
        return None
    c = ratio * R
    ok = ~np.isnan(c)
    if _all_close(c, R, tol) or _fit(s, c, ok, tol) is None:
        return None
    # The message names no factor: the factor is fitted to the reference, and shown (as evidence) only with reveal.
    message = f"{name} is the reference times a constant factor: every entry is off by the same fraction"
    return Diagnosis("scaled_by_constant", message, None,
                     {"ratio": ratio, "max_abs_error_under_hypothesis": float(np.max(np.abs(s[ok] - c[ok])))},
                     fitted=("ratio", "max_abs_error_under_hypothesis"))


# --- grading -----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class KeyGrade:
    """One key of one submission: its comparison (None when missing), points, and a diagnosis when wrong."""

    key: str
    status: str
    points: float
    earned: float
    comparison: Comparison | None
    diagnosis: Diagnosis | None
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class SubmissionGrade:
    """Every graded key, the total, and the distinct diagnoses with the keys each explains."""

    keys: list[KeyGrade]
    score: float
    max_score: float
    summary: list[tuple[Diagnosis, list[str]]]


def _needs_diagnosis(cmp: Comparison) -> bool:
    return cmp.status in ("incorrect", "shape_mismatch") and not (cmp.reshaped and cmp.values_correct)


def _compare_key(ref: Reference, name: str, s: Array, tol: Tolerance, lenient_shapes: bool) -> Comparison:
    return compare(s, ref.arrays[name], tol, lenient_shapes=lenient_shapes, textbook=ref.textbook_bounds(name))


def _finish_key(ref: Reference, name: str, s: Array | None, cmp: Comparison | None, tol: Tolerance,
                points: float, lenient_shapes: bool) -> KeyGrade:
    """The grade of one compared key: notes, and the diagnosis of a wrong one."""
    if s is None:
        return KeyGrade(name, "missing", points, 0.0, None, None, (f"{name} was not submitted",))
    R = ref.arrays[name]
    notes: list[str] = []
    diagnosis = None
    if cmp.reshaped:
        if cmp.values_correct and cmp.status == "shape_mismatch":
            diagnosis = Diagnosis("column_vs_vector", f"{name} has the right values in the wrong shape (a vector "
                                  f"where a column was expected, or the reverse)", None,
                                  {"max_abs_error_under_hypothesis": cmp.max_abs_error})
        notes.append(f"{name}: the shape differs from the expected one only by axes of length 1; the values were "
                     f"compared after reshaping" + ("" if lenient_shapes else " (graded as a shape mismatch: the "
                                                    "shape policy is strict)"))
    if cmp.ungraded_entries:
        notes.append(f"{cmp.ungraded_entries} entries of {name} are not representable in float64 (the reference "
                     f"returns them as null) and were not graded: a null or any number is accepted there")
    if cmp.textbook_entries:
        one = cmp.textbook_entries == 1
        notes.append(f"textbook_rounding: {cmp.textbook_entries} {'entry' if one else 'entries'} of {name} "
                     f"{'differs' if one else 'differ'} from the exact value but {'matches' if one else 'match'} the "
                     f"course's formula evaluated in float64 from the rounded A_L (within {TEXTBOOK_ULPS} ulps), "
                     f"which loses digits where A_L is this close to 0 or 1; accepted")
    if cmp.errors_overflow:
        notes.append(f"{name}: the largest absolute or relative error exceeds float64's range (a submitted entry near "
                     f"1e308, or far from a reference entry near 0), so it is not reported")
    if _needs_diagnosis(cmp) and diagnosis is None:
        values = s.reshape(R.shape) if cmp.reshaped else s
        diagnosis = diagnose(ref, name, values, tol)
        if diagnosis is None:
            skipped = [h for h in ref.skipped if h.affects(name)]
            if skipped:
                by_code: dict[str, list[int]] = {}
                for h in skipped:
                    by_code.setdefault(h.code, []).append(h.layer)
                which = "; ".join(f"{code} at {_layers_text(layers)}" for code, layers in by_code.items())
                notes.append(f"{len(skipped)} backward-pass hypotheses that could explain {name} were not tested "
                             f"({which}): re-running backpropagation for them is over this request's diagnosis "
                             f"budget")
    earned = points if cmp.status == "correct" else 0.0
    return KeyGrade(name, cmp.status, points, earned, cmp, diagnosis, tuple(notes))


def _layers_text(layers: list[int]) -> str:
    """[1, 2, 3, 5] -> 'layers 1-3, 5'; [4] -> 'layer 4'."""
    runs: list[list[int]] = []
    for l in sorted(set(layers)):
        if runs and l == runs[-1][1] + 1:
            runs[-1][1] = l
        else:
            runs.append([l, l])
    text = ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)
    return ("layer " if len(layers) == 1 else "layers ") + text


def grade_all(ref: Reference, submissions: list[dict[str, Array]], tol: Tolerance,
              points: dict[str, float] | None = None, *, lenient_shapes: bool = False) -> list[SubmissionGrade]:
    """Grade every submission (key -> array, features first) against ``ref``.

    Graded keys: those of ``points`` (a key not submitted is ``missing``) plus any other submitted key (worth 0
    then); without ``points``, every submitted key, worth 1 point. A key earns its points only when ``correct``.
    Every array is compared first; then the mistaken backward passes are run once, for the keys some submission
    got wrong; then the wrong keys are diagnosed.
    """
    order = key_names(ref.L)
    compared = []
    wrong: set[str] = set()
    for submission in submissions:
        wanted = dict(points) if points else {k: 1.0 for k in submission}
        for k in submission:
            wanted.setdefault(k, 0.0)
        rows = []
        for name in order:
            if name not in wanted:
                continue
            s = submission.get(name)
            cmp = None if s is None else _compare_key(ref, name, s, tol, lenient_shapes)
            if cmp is not None and _needs_diagnosis(cmp) and s.size == ref.arrays[name].size:
                wrong.add(name)
            rows.append((name, s, cmp, wanted[name]))
        compared.append(rows)
    ref.run_variants(wrong)
    grades = []
    for rows in compared:
        keys = [_finish_key(ref, name, s, cmp, tol, pts, lenient_shapes) for name, s, cmp, pts in rows]
        summary: dict[tuple[str, int | None], tuple[Diagnosis, list[str]]] = {}
        for kg in keys:
            if kg.diagnosis is not None:
                entry = summary.setdefault((kg.diagnosis.code, kg.diagnosis.layer), (kg.diagnosis, []))
                entry[1].append(kg.key)
        grades.append(SubmissionGrade(keys, float(sum(k.earned for k in keys)), float(sum(k.points for k in keys)),
                                      list(summary.values())))
    return grades


def grade(ref: Reference, submission: dict[str, Array], tol: Tolerance, points: dict[str, float] | None = None,
          *, lenient_shapes: bool = False) -> SubmissionGrade:
    """Grade one submission; see ``grade_all``."""
    return grade_all(ref, [submission], tol, points, lenient_shapes=lenient_shapes)[0]


"""Grading a submission against the reference, and diagnosing what a wrong array points to.

Everything is features first, as in ``network``: ``AL, dZ_l, dA_l: (n_l, m)``, ``dW_l: (n_l, n_{l-1})``,
``db_l: (n_l, 1)`` or ``(n_l,)`` (the shape ``b`` was sent in), ``cost``: a 0-d array. Keys use the course's
names: ``cost``, ``AL``, ``dW1..dWL``, ``db1..dbL``, ``dZ1..dZL``, ``dA0..dA{L}``.

Comparison rule (numpy.isclose), elementwise with the reference ``r`` and the submission ``s``:

    |s - r| <= atol + rtol * |r|

A key is ``correct`` when every graded entry passes. Reference entries that are not representable in float64
(``dA_L`` where ``A_L`` rounds to 0 or 1, NaN in ``Result``) are not graded.

Diagnoses: for a wrong key each hypothesis builds a candidate array, the value that key would have under exactly
that mistake, and tests the submission against it with the same rule. A hypothesis is reported only when it fits,
and only when its candidate differs from the reference (otherwise the numbers cannot tell them apart). Two kinds:

* local transforms of the key's own reference: ``m r`` or ``r / m`` (1/m missing or doubled, or the other
  intermediate convention), ``-r``, ``r^T``, the reference of the neighbouring layer's key, ``dZ_L`` for ``dA_L``,
  ``dW`` without its L2 term;
* mistaken backward passes, re-run from the forward caches with one mistake at one layer and carried down to
  ``dA0``: the activation derivative evaluated on ``A`` (``sigmoid'(A)``, ``tanh'(A)``), ReLU's derivative taken
  as 1 at ``z = 0``, ``dZ_L = dA_L`` (``g_L'`` left out), the dropout mask not applied or applied without ``/p``.
  Every key downstream of the mistake is diagnosed with it.

When several hypotheses fit, the best (smallest ``max |s - c| / (atol + rtol |c|)``) is reported and the others
are listed as alternatives. A scalar multiple ``c r`` fitted by least squares (``c = <s, r> / <r, r>``) is reported
as ``scaled_by_constant`` only when no named hypothesis fits and the reference has two nonzero entries or more.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cached_property
from typing import Iterator

import numpy as np

from service.engine.activations import ACTIVATIONS
from service.engine.network import Dropout, Layer, Result, backward, compute, forward

Array = np.ndarray

STATUSES = ("correct", "incorrect", "shape_mismatch", "missing", "not_a_number")
# Keys whose arrays are (units, m): they follow the request's layout on the wire.
PER_EXAMPLE_KINDS = frozenset({"AL", "dZ", "dA"})
DEFAULT_RTOL = 1e-5
DEFAULT_ATOL = 1e-8

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
        ratio[bound == 0] = np.where(diff[bound == 0] == 0, 0.0, np.inf)
        return ratio


def course_difference(a: Array, b: Array) -> float:
    """The course's gradient-check metric ||a - b||_2 / (||a||_2 + ||b||_2); 0 when both are zero (computed
    after dividing both by their largest entry, so that the norms cannot overflow)."""
    scale = max(float(np.max(np.abs(a), initial=0.0)), float(np.max(np.abs(b), initial=0.0)))
    if scale == 0:
        return 0.0
    a, b = a / scale, b / scale
    return float(np.linalg.norm(a - b)) / float(np.linalg.norm(a) + np.linalg.norm(b))


@dataclass(frozen=True)
class Comparison:
    """One submitted array against its reference.

    ``shape``: the submission's; ``expected_shape``: the reference's. ``reshaped``: the shapes differ only by axes
    of length 1 (say ``(n,)`` for ``(n, 1)``) and the values were compared after reshaping. Errors and the worst
    entry (the largest ``|s - r| / (atol + rtol |r|)``, an index into ``expected_shape``) are ``None`` when the
    values could not be compared. ``ungraded_entries``: reference entries not representable in float64.
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
    values_correct: bool = False


def _squeezed(shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(n for n in shape if n != 1)


def compare(s: Array, r: Array, tol: Tolerance, *, lenient_shapes: bool = False) -> Comparison:
    """Grade ``s`` against ``r`` (any shapes; NaN in ``s`` is a null entry, NaN in ``r`` an ungraded entry).

    Status: ``shape_mismatch`` when the shapes differ (unless they differ only by length-1 axes and
    ``lenient_shapes``), else ``not_a_number`` when ``s`` has a null entry, else ``correct`` or ``incorrect``.
    """
    shape, expected = tuple(s.shape), tuple(r.shape)
    reshaped = False
    if shape != expected:
        if s.size == r.size and _squeezed(shape) == _squeezed(expected):
            s, reshaped = s.reshape(expected), True
        else:
            return Comparison("shape_mismatch", shape, expected)
    nulls = np.isnan(s)
    if nulls.any():
        first = tuple(int(i) for i in np.argwhere(nulls)[0])
        status = "shape_mismatch" if reshaped and not lenient_shapes else "not_a_number"
        return Comparison(status, shape, expected, reshaped, null_entries=int(nulls.sum()), first_null=first,
                          entries=int(r.size))
    graded = ~np.isnan(r)
    ungraded = int(r.size - graded.sum())
    sg, rg = s[graded], r[graded]
    violation = tol.violation(sg, rg)
    wrong = int(np.count_nonzero(violation > 1))
    nonzero = rg != 0
    with np.errstate(over="ignore"):  # beyond float64 the errors are reported as null
        diff = np.abs(sg - rg)
        max_rel = float(np.max(diff[nonzero] / np.abs(rg[nonzero]))) if nonzero.any() else None
    worst_index = worst_s = worst_r = None
    if wrong:
        flat = int(np.argmax(violation))
        worst_index = tuple(int(i) for i in np.argwhere(graded)[flat])
        worst_s, worst_r = float(s[worst_index]), float(r[worst_index])
    values_status = "incorrect" if wrong else "correct"
    status = "shape_mismatch" if reshaped and not lenient_shapes else values_status
    return Comparison(status, shape, expected, reshaped,
                      max_abs_error=float(diff.max()) if diff.size else 0.0, max_rel_error=max_rel,
                      difference=course_difference(sg, rg), wrong_entries=wrong, entries=int(rg.size),
                      worst_index=worst_index, worst_submitted=worst_s, worst_reference=worst_r,
                      ungraded_entries=ungraded, values_correct=not wrong)


# --- the reference -----------------------------------------------------------------------------------------

@dataclass
class Reference:
    """The reference of one network and data, computed once and shared by every submission graded against it.

    ``arrays``: every key (see ``key_names``), features first, ``db_l`` in the shape ``b_l`` was sent in, the
    dA/dZ convention of ``intermediates``. ``variants`` (computed on first use) are the mistaken backward passes,
    at most ``variant_budget`` multiply-adds of them; ``skipped_variants`` counts those left out.
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
    variant_budget: float = float("inf")
    skipped_variants: int = 0

    @property
    def L(self) -> int:
        return len(self.layers)

    @property
    def m(self) -> int:
        return self.X.shape[1]

    @cached_property
    def variants(self) -> list["Variant"]:
        return _variants(self)


def build_reference(X: Array, Y: Array, layers: list[Layer], cost: str, *, l2: float = 0.0,
                    dropout: Dropout | None = None, intermediates: str = "per_example",
                    db_as_vector: list[bool] | None = None, variant_budget: float = float("inf")) -> Reference:
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
                     db_as_vector=db_as_vector, result=result, arrays=arrays, variant_budget=variant_budget)


# --- mistaken backward passes ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Variant:
    """A backward pass with one mistake at ``layer``; ``arrays``: every key it changes, in the reference's form."""

    code: str
    layer: int
    description: str
    arrays: dict[str, Array]


def backprop_from(ref: Reference, caches: list, l: int, dZ: Array) -> dict[str, Array]:
    """Backpropagation from layer ``l`` down, given ``dZ_l`` (n_l, m) in the per-example convention.

    Returns dZ_l .. dZ_1, dW_l .. dW_1, db_l .. db_1, dA_{l-1} .. dA_0 in the reference's convention and shapes,
    by ``network.backward`` over layers 1..l (``caches``: ``network.forward``'s caches of the same network).
    """
    p = ref.dropout.keep_prob if ref.dropout is not None else 1.0
    with np.errstate(over="ignore", invalid="ignore"):
        dW, db, dZs, dAs = backward(dZ, caches[:l], ref.layers[:l], scale=1.0 / ref.m, l2=ref.l2, keep_prob=p)
    out: dict[str, Array] = {}
    for k in range(1, l + 1):
        out[f"dZ{k}"], out[f"dW{k}"], out[f"db{k}"] = dZs[k - 1], dW[k - 1], db[k - 1]
        out[f"dA{k - 1}"] = dAs[k - 1]
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


def _variants(ref: Reference) -> list[Variant]:
    """Every mistaken backward pass that applies to this network (see the module docstring), within
    ``ref.variant_budget`` multiply-adds (2 n_k n_(k-1) m per layer a pass goes through); the ones over it are
    skipped and counted in ``ref.skipped_variants``."""
    _, caches = forward(ref.X, ref.layers, ref.dropout)
    per_example = ref.result if ref.intermediates == "per_example" else compute(
        ref.X, ref.Y, ref.layers, ref.cost, l2=ref.l2, dropout=ref.dropout, intermediates="per_example")
    L, m, out = ref.L, ref.m, []
    spent = 0

    def add(code: str, l: int, text: str, make_dZ, dA_wrong: Array | None = None) -> None:
        nonlocal spent
        work = 2 * m * sum(layer.W.size for layer in ref.layers[:l])
        if spent + work > ref.variant_budget:
            ref.skipped_variants += 1
            return
        spent += work
        with np.errstate(over="ignore", invalid="ignore"):
            arrays = backprop_from(ref, caches, l, make_dZ())
        if dA_wrong is not None:
            arrays.update(_in_reference_form(ref, {f"dA{l}": dA_wrong}))
        out.append(Variant(code, l, text, arrays))

    for l in range(L, 0, -1):
        layer, cache = ref.layers[l - 1], caches[l - 1]
        unit, slope = ACTIVATIONS[layer.activation], layer.negative_slope
        dA = per_example.dA[l]
        if layer.activation in ("sigmoid", "tanh"):
            A = per_example.A[l - 1]  # as the course's cache holds it (after dropout on a hidden layer)
            add("derivative_on_A", l, f"dZ{l} = dA{l} * {layer.activation}'(A{l}) instead of {layer.activation}'(Z{l}): "
                f"the derivative was evaluated on the activation, not on the pre-activation",
                lambda dA=dA, A=A, unit=unit, slope=slope: dA * unit.derivative(A, unit.forward(A, slope), slope))
        zeros = cache.Z == 0
        if layer.activation in ("relu", "leaky_relu") and zeros.any():
            add("relu_derivative_at_zero", l,
                f"{layer.activation}'(0) was taken as 1 at the {int(zeros.sum())} entries where Z{l} = 0 (the "
                f"derivative there is {0.0 if layer.activation == 'relu' else slope}: use Z > 0, not Z >= 0)",
                lambda dA=dA, zeros=zeros, unit=unit, cache=cache, slope=slope:
                    dA * np.where(zeros, 1.0, unit.derivative(cache.Z, cache.G, slope)))
        if l == L:
            add("dAL_sent_as_dZL", L, f"dZ{L} was taken to be dA{L}: the output activation's derivative g'(Z{L}) was "
                f"left out of dZ{L} = dA{L} * g'(Z{L})", lambda: per_example.dA[L].copy())
    if ref.dropout is not None:
        p = ref.dropout.keep_prob
        for l in range(L - 1, 0, -1):
            layer, cache = ref.layers[l - 1], caches[l - 1]
            unit, slope = ACTIVATIONS[layer.activation], layer.negative_slope
            raw = ref.layers[l].W.T @ per_example.dZ[l]  # W_{l+1}^T dZ_{l+1}, before the mask
            wrong = [("dropout_mask_not_applied", raw, f"dA{l} = W{l + 1}^T dZ{l + 1} without the mask D{l}"),
                     ("dropout_mask_not_applied", raw / p,
                      f"dA{l} = W{l + 1}^T dZ{l + 1} / keep_prob without the mask D{l}")]
            if p != 1:
                wrong.append(("dropout_not_scaled", raw * cache.mask,
                              f"dA{l} = W{l + 1}^T dZ{l + 1} * D{l} without dividing by keep_prob = {p:g}"))
            for code, dA_wrong, text in wrong:
                add(code, l, text, lambda dA_wrong=dA_wrong, unit=unit, cache=cache, slope=slope:
                    unit.backward(dA_wrong, cache.Z, cache.G, slope), dA_wrong)
    return out


# --- diagnoses ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Diagnosis:
    """What mistake the numbers of one key point to. ``layer``: where the mistake was made (None: the key
    itself). ``evidence``: the numbers behind it (a fitted ratio, the largest error under the hypothesis ...).
    ``alternatives``: other hypotheses that fit as well."""

    code: str
    message: str
    layer: int | None
    evidence: dict[str, float | int | str]
    alternatives: tuple[str, ...] = ()


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
        high = L
        for other in (l + 1, l - 1):
            if low <= other <= high:
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
            at = ("dA" if v.code.startswith("dropout") else "dZ") + str(v.layer)
            text = v.description if name == at else f"{v.description}; {name} inherits it through backpropagation"
            yield _Candidate(v.code, v.arrays[name], text, layer=v.layer)


def diagnose(ref: Reference, name: str, s: Array, tol: Tolerance) -> Diagnosis | None:
    """The mistake the wrong submission ``s`` of key ``name`` points to, or None when no hypothesis fits.

    ``s``: the submitted array (features first; already reshaped to the reference's shape when they differ only
    by length-1 axes). Evidence always has ``max_abs_error_under_hypothesis`` and ``ratio`` (least squares
    s ~ ratio * reference) when it is defined.
    """
    R = ref.arrays[name]
    if np.isnan(s).any():
        return None
    fits: list[tuple[float, int, _Candidate]] = []
    order = 0
    for cand in list(_local_candidates(ref, name)) + list(_variant_candidates(ref, name)):
        c = cand.array
        if c.shape != s.shape or np.isinf(c).any() or np.isnan(c).all():
            continue
        if c.shape == R.shape and _all_close(c, R, tol):
            continue  # indistinguishable from the reference for this key
        score = _fit(s, c, tol)
        if score is not None:
            fits.append((score, order, cand))
            order += 1
    if not fits:
        return _scaled(ref, name, s, tol)
    fits.sort(key=lambda f: (f[0], f[1]))
    score, _, best = fits[0]
    others = tuple(dict.fromkeys(f[2].code for f in fits[1:] if f[2].code != best.code))
    evidence = dict(best.evidence)
    ok = ~np.isnan(best.array)
    evidence["max_abs_error_under_hypothesis"] = float(np.max(np.abs(s[ok] - best.array[ok]))) if ok.any() else 0.0
    if s.shape == R.shape:
        ratio = _ratio(s, R)
        if ratio is not None:
            evidence.setdefault("ratio", ratio)
    message = best.message
    if others:
        message += f" (also consistent with: {', '.join(others)}; this one fits best)"
    return Diagnosis(best.code, message, best.layer, evidence, others)


def _all_close(a: Array, b: Array, tol: Tolerance) -> bool:
    ok = ~(np.isnan(a) | np.isnan(b))
    return bool(np.all(tol.violation(a[ok], b[ok]) <= 1))


def _fit(s: Array, c: Array, tol: Tolerance) -> float | None:
    """max |s - c| / (atol + rtol |c|) over c's non-NaN entries when every one passes, else None."""
    ok = ~np.isnan(c)
    worst = float(np.max(tol.violation(s[ok], c[ok])))
    return worst if worst <= 1 else None


def _scaled(ref: Reference, name: str, s: Array, tol: Tolerance) -> Diagnosis | None:
    """s = c * reference for a least-squares c, when that fits and c is not 1."""
    R = ref.arrays[name]
    if s.shape != R.shape or np.count_nonzero(np.nan_to_num(R)) < 2:
        return None  # any single number is a multiple of another: no evidence
    ratio = _ratio(s, R)
    if ratio is None or ratio == 0:
        return None
    c = ratio * R
    if _all_close(c, R, tol) or _fit(s, c, tol) is None:
        return None
    ok = ~np.isnan(c)
    return Diagnosis("scaled_by_constant", f"{name} is {ratio:.6g} times the reference (a constant factor)", None,
                     {"ratio": ratio, "max_abs_error_under_hypothesis": float(np.max(np.abs(s[ok] - c[ok])))})


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


def grade_key(ref: Reference, name: str, s: Array | None, tol: Tolerance, points: float = 1.0, *,
              lenient_shapes: bool = False) -> KeyGrade:
    """Compare one submitted array (None: not submitted) and diagnose it when it is wrong."""
    if s is None:
        return KeyGrade(name, "missing", points, 0.0, None, None, (f"{name} was not submitted",))
    R = ref.arrays[name]
    cmp = compare(s, R, tol, lenient_shapes=lenient_shapes)
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
        notes.append(f"{cmp.ungraded_entries} entries of {name} are not representable in float64 and were not graded")
    if cmp.status in ("incorrect", "shape_mismatch") and diagnosis is None:
        values = s.reshape(R.shape) if cmp.reshaped else s
        diagnosis = diagnose(ref, name, values, tol)
        if diagnosis is None and ref.skipped_variants:
            notes.append(f"{ref.skipped_variants} backward-pass hypotheses were not tested: re-running backpropagation "
                         f"for them is over this network's diagnosis work budget")
    earned = points if cmp.status == "correct" else 0.0
    return KeyGrade(name, cmp.status, points, earned, cmp, diagnosis, tuple(notes))


def grade(ref: Reference, submission: dict[str, Array], tol: Tolerance, points: dict[str, float] | None = None,
          *, lenient_shapes: bool = False) -> SubmissionGrade:
    """Grade a submission (key -> array, features first) against ``ref``.

    Graded keys: those of ``points`` (a key not submitted is ``missing``) plus any other submitted key (worth 0
    then); without ``points``, every submitted key, worth 1 point. A key earns its points only when ``correct``.
    """
    order = key_names(ref.L)
    wanted = dict(points) if points else {k: 1.0 for k in submission}
    for k in submission:
        wanted.setdefault(k, 0.0)
    keys = [grade_key(ref, k, submission.get(k), tol, wanted[k], lenient_shapes=lenient_shapes)
            for k in order if k in wanted]
    summary: dict[tuple[str, int | None], tuple[Diagnosis, list[str]]] = {}
    for kg in keys:
        if kg.diagnosis is not None:
            entry = summary.setdefault((kg.diagnosis.code, kg.diagnosis.layer), (kg.diagnosis, []))
            entry[1].append(kg.key)
    return SubmissionGrade(keys, float(sum(k.earned for k in keys)), float(sum(k.points for k in keys)),
                           list(summary.values()))

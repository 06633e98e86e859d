"""What a wrong array points to: each hypothesis builds a candidate, the value the key would have under exactly that
mistake, and the submission is tested against it with the grading rule. A hypothesis is reported only when it
fits, and only when its candidate differs from the reference (otherwise the numbers cannot tell them apart).

Two kinds of candidates:

* local transforms of the key's own reference (``LOCAL``): ``m r`` or ``r / m`` (1/m missing or doubled, or the
  other intermediate convention), ``-r``, ``r^T``, the same quantity of the neighbouring layer, ``dZ_L`` for
  ``dA_L``, a gradient or the cost without its L2 term;
* the mistaken passes of ``hypotheses`` that were run for the key.

When several fit, the best (smallest ``max |s - c| / (atol + rtol |c|)``) is reported and the others listed as
alternatives. A scalar multiple ``c r`` fitted by least squares (``c = <s, r> / <r, r>``) is reported as
``scaled_by_constant`` only when no named hypothesis fits and the reference has two nonzero entries or more.
``Diagnosis.fitted`` names the evidence computed from the reference's values (a fitted ratio, the error under the
hypothesis), which a caller that keeps the reference secret must leave out. Messages hold no number computed from
the reference (only the request's constants: m, lambda, keep_prob, a slope), so they can always be shown.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np

from service.engine import keys
from service.engine.grading.compare import Tolerance
from service.engine.grading.reference import Reference, parse

Array = np.ndarray

LOCAL_DIAGNOSES = {
    "missing_1_over_m": "the 1/m factor is missing (the submission is m times the reference)",
    "extra_1_over_m": "1/m is applied twice (the submission is the reference divided by m)",
    "intermediate_convention": "the other convention for dA and dZ (per-example versus mean: a factor m)",
    "sign_flipped": "the sign is flipped",
    "transposed": "the array is transposed",
    "column_vs_vector": "right values, but a vector where a column was expected or the reverse",
    "layer_index_off_by_one": "the value of the neighbouring layer's key (the layer index is off by one)",
    "dZL_sent_as_dAL": "dZ_L = A_L - Y was sent as dA_L",
    "missing_l2": "the L2 term is missing",
}
# Candidate lists of keys this large are rebuilt for each submission instead of kept: each candidate is as large
# as the key, and a key of 4M entries with its nine candidates would hold 300 MB.
CACHE_ENTRIES = 1 << 18


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


def _regularized(ref: Reference, key: keys.Key) -> bool:
    """Whether the key carries an L2 term: the cost, or the gradient of a parameter its kind regularizes."""
    if not ref.l2:
        return False
    if key.quantity == keys.COST:
        return True
    return key.quantity == "grad" and any(p.name == key.name and p.l2 for p in ref.layers[key.layer - 1].unit.params)


def _scaled_by_m(ref: Reference, name: str, key: keys.Key, R: Array) -> Iterator[_Candidate]:
    m = ref.m
    if m <= 1:
        return
    if key.quantity in ("grad", keys.COST):
        yield _Candidate("missing_1_over_m", m * R, f"{name} is m = {m} times the reference: the 1/m factor "
                         f"is missing", evidence={"ratio": float(m), "m": m})
        if _regularized(ref, key):
            penalty = ref.l2_part(name)
            yield _Candidate("missing_1_over_m", m * (R - penalty) + penalty,
                             f"{name} has the 1/m factor missing from its data term (the L2 term is right)",
                             evidence={"m": m})
        yield _Candidate("extra_1_over_m", R / m, f"{name} is the reference divided by m = {m}: 1/m is applied "
                         f"twice (e.g. to dZ and again to {name})", evidence={"ratio": 1.0 / m, "m": m})
    elif key.quantity in ("dZ", "dA"):
        if ref.intermediates == "per_example":
            yield _Candidate("intermediate_convention", R / m, f"{name} is the reference divided by m = {m}: it "
                             f"follows the `mean` convention (dZ_L = (A_L - Y)/m) where `per_example` was asked "
                             f"(dZ_L = A_L - Y, the 1/m applied in dW and db)", evidence={"ratio": 1.0 / m, "m": m})
        else:
            yield _Candidate("intermediate_convention", m * R, f"{name} is m = {m} times the reference: it "
                             f"follows the `per_example` convention (dZ_L = A_L - Y) where `mean` was asked "
                             f"(every quantity the exact partial derivative of J)", evidence={"ratio": float(m), "m": m})


def _neighbours(ref: Reference, name: str, key: keys.Key) -> Iterator[_Candidate]:
    if key.layer is None:
        return
    for other in (key.layer + 1, key.layer - 1):
        neighbour = str(keys.Key(key.quantity, key.name, other))
        if other >= 0 and neighbour in ref.arrays and neighbour != name:
            yield _Candidate("layer_index_off_by_one", ref.arrays[neighbour],
                             f"{name} holds the value of {neighbour}: the layer index is off by one",
                             evidence={"matches": neighbour})


def local_candidates(ref: Reference, name: str) -> Iterator[_Candidate]:
    """Transforms of the key's own reference (and of its neighbours') that a single slip produces."""
    key, R, L = parse(name), ref.arrays[name], ref.L
    yield from _scaled_by_m(ref, name, key, R)
    yield _Candidate("sign_flipped", -R, f"{name} has the opposite sign of the reference", evidence={"ratio": -1.0})
    if R.ndim == 2 and R.size > 1:
        yield _Candidate("transposed", R.T, f"{name} is the transpose of the reference")
    yield from _neighbours(ref, name, key)
    if name == keys.dA(L):
        yield _Candidate("dZL_sent_as_dAL", ref.arrays[keys.dZ(L)], f"{name} holds dZ{L} = A{L} - Y (the fused "
                         f"output gradient), not dA{L} = dJ/dA{L}", layer=L, evidence={"matches": keys.dZ(L)})
    if _regularized(ref, key):
        what = "lambda/(2m) sum ||W||^2" if key.quantity == keys.COST else f"(lambda/m) {key.name}"
        yield _Candidate("missing_l2", R - ref.l2_part(name), f"{name} lacks the L2 term {what} (lambda = {ref.l2:g})",
                         evidence={"lambda": ref.l2})


# The most local candidates any key has (an L2-regularized gradient: 1/m missing twice, doubled, sign, transpose,
# two neighbours, missing L2), plus the constant multiple: the grading price counts this many per key.
LOCAL_CANDIDATES = 9


def variant_candidates(ref: Reference, name: str) -> Iterator[_Candidate]:
    for v in ref.variants:
        if name in v.arrays:
            h = v.hypothesis
            at = f"dA{v.layer}" if h.at == "dA" else f"dZ{v.layer}"
            text = v.description if name == at or h.at not in ("dZ", "dA") else \
                f"{v.description}; {name} inherits it through backpropagation"
            yield _Candidate(v.code, v.arrays[name], text, layer=v.layer)


@dataclass(frozen=True)
class _Prepared:
    """A candidate ready to test: its non-NaN entries (``ok``)."""

    candidate: _Candidate
    ok: Array


def _prepared(ref: Reference, name: str, tol: Tolerance) -> Iterator[_Prepared]:
    """Every candidate for ``name`` that is finite and distinguishable from the reference, one at a time."""
    R = ref.arrays[name]
    with np.errstate(all="ignore"):
        for cand in ref.candidates(name):
            c = cand.array
            if np.isinf(c).any():
                continue
            ok = ~np.isnan(c)
            if not ok.any():
                continue
            if c.shape == R.shape and _all_close(c, R, tol):
                continue  # indistinguishable from the reference for this key
            yield _Prepared(cand, ok)


def _candidates(ref: Reference, name: str, tol: Tolerance) -> Iterator[_Prepared] | list[_Prepared]:
    """The prepared candidates of ``name``, computed once per (key, tolerance) and shared by every submission of a
    batch when the key is small; rebuilt one at a time for each submission when it is large (CACHE_ENTRIES)."""
    if ref.arrays[name].size > CACHE_ENTRIES:
        return _prepared(ref, name, tol)
    cache_key = (name, tol, ref._version)
    cached = ref._candidates.get(cache_key)
    if cached is None:
        cached = ref._candidates[cache_key] = list(_prepared(ref, name, tol))
    return cached


def diagnose(ref: Reference, name: str, s: Array, tol: Tolerance,
             correct: frozenset[str] = frozenset()) -> Diagnosis | None:
    """The mistake the wrong submission ``s`` of key ``name`` points to, or None when no hypothesis fits.

    ``s``: the submitted array (reference form; already reshaped to the reference's shape when they differ only
    by length-1 axes; NaN for null entries, which fit nothing). Mistaken passes are tested only when
    ``run_variants`` ran them for ``name``. Evidence always has ``max_abs_error_under_hypothesis`` and ``ratio``
    (least squares s ~ ratio * reference) when it is defined. Of hypotheses that fit ``name`` alike, one that
    would have changed a key the submission got right (``correct``) is ruled out by it and ranks last.
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
    if len(fits) > 1 and correct:
        fits.sort(key=lambda f: _ruled_out(ref, f[2], correct, tol))  # stable: the fit's order otherwise
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


def _ruled_out(ref: Reference, cand: _Candidate, correct: frozenset[str], tol: Tolerance) -> bool:
    """Whether the hypothesis gives another value than the reference for a key the submission got right. Only
    the keys whose candidates are cached (small ones, built once per batch) are asked: the grading's price holds."""
    return any(p.candidate.code == cand.code and p.candidate.layer == cand.layer
               for k in correct if ref.arrays[k].size <= CACHE_ENTRIES for p in _candidates(ref, k, tol))


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

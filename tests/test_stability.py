"""Numerical stability at saturated outputs: exact costs and dZ_L from the logits, null (with a located warning)
exactly where dA_L overflows float64, and never a NaN / Infinity token or a 500.

Expected values come from the closed forms evaluated with the standard library's ``decimal`` at 60 digits:
    BCE   loss = y ln(1 + e^-z) + (1 - y) ln(1 + e^z),  dZ = sigma(z) - y,  dA = (1 - y)(1 + e^z) - y(1 + e^-z)
    CCE   loss = lse(z) - z_y,  dZ = softmax(z) - y,  dA_k = -y_k e^{lse(z) - z_k}
"""

from __future__ import annotations

import math
from decimal import Decimal, localcontext

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

ULP1 = 2.3e-16  # one ulp of 1: the absolute accuracy of anything computed as A_L - Y


def raw_post(client, body: dict) -> tuple[int, dict]:
    """POST and check the raw bytes: no NaN / Infinity token, and strict JSON (orjson.loads) parses it."""
    r = client.post("/v1/gradients", data=orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY),
                    content_type="application/json")
    assert b"NaN" not in r.data and b"Infinity" not in r.data, r.data[:500]
    return r.status_code, orjson.loads(r.data)


def _D(x) -> Decimal:
    return Decimal(repr(float(x)))


def _log1p(x: Decimal) -> Decimal:
    """ln(1 + x) to full relative precision also for tiny x (1 + 1e-434 would round to 1 at 60 digits)."""
    return x - x * x / 2 + x * x * x / 3 if abs(x) < Decimal("1e-25") else (1 + x).ln()


def bce_exact(z: float, y: float) -> tuple[float, float, float]:
    """(loss, dZ, dA) per example, in float64 (dA may be inf: not representable)."""
    with localcontext() as ctx:
        ctx.prec = 60
        z_, y_ = _D(z), _D(y)
        ep, em = z_.exp(), (-z_).exp()
        # ln(1 + e^t) = max(t, 0) + ln(1 + e^-|t|)
        sp_pos = max(z_, 0) + _log1p((-abs(z_)).exp())    # ln(1 + e^z)
        sp_neg = max(-z_, 0) + _log1p((-abs(z_)).exp())   # ln(1 + e^-z)
        loss = y_ * sp_neg + (1 - y_) * sp_pos
        # sigma(z) - y written without cancellation: (1 - y) sigma(z) - y sigma(-z)
        dZ = (1 - y_) / (1 + em) - y_ / (1 + ep)
        dA = (1 - y_) * (1 + ep) - y_ * (1 + em)
        return float(loss), float(dZ), float(dA)


def sigmoid_exact(z: float) -> float:
    with localcontext() as ctx:
        ctx.prec = 60
        return float(1 / (1 + (-_D(z)).exp()))


def cce_exact(z: list[float], k: int) -> tuple[float, list[float], list[float]]:
    """(loss, dZ (n,), dA (n,)) for logits z and true class k."""
    with localcontext() as ctx:
        ctx.prec = 60
        zs = [_D(v) for v in z]
        top = max(range(len(zs)), key=lambda j: zs[j])
        rest = sum((zs[j] - zs[top]).exp() for j in range(len(zs)) if j != top)
        lse = zs[top] + _log1p(rest)
        a = [(v - lse).exp() for v in zs]
        loss = (zs[top] - zs[k]) + _log1p(rest)
        dZ = [float(a[j]) if j != k else float(-sum(a[i] for i in range(len(zs)) if i != k))
              for j in range(len(z))]
        dA = [float(-(lse - zs[j]).exp()) if j == k else 0.0 for j in range(len(z))]
        return float(loss), dZ, dA


def close(got: float, want: float, rtol: float = 1e-14, atol: float = 0.0) -> bool:
    return abs(got - want) <= rtol * abs(want) + atol


def close_dA(got: float, want: float) -> bool:
    """dA_L ~ e^x with |x| up to ~709 is computed as exp of a rounded quantity (e.g. -log_softmax): a few ulps of
    x become a relative error of ~|x| ulps in e^x (the condition number of exp), so allow 8 |ln|want|| ulps."""
    if want == 0:
        return got == 0
    return close(got, want, rtol=1e-14 + 8 * 2.2e-16 * abs(math.log(abs(want))))


def one_unit_bce(zs: list[float], ys: list[float], layout: str, intermediates: str) -> dict:
    """W = [[1]], b = [[0]], X = the logits: Z_1 is exactly zs."""
    X = [zs] if layout == "features_first" else [[z] for z in zs]
    Y = [ys] if layout == "features_first" else [[y] for y in ys]
    return {"layers": [{"W": [[1.0]], "b": [[0.0]], "activation": "sigmoid"}], "X": X, "Y": Y,
            "cost": "binary_cross_entropy", "layout": layout, "intermediates": intermediates}


# --- sigmoid + binary cross-entropy, one example ------------------------------------------------------------------

LOGITS = [40.0, -40.0, 700.0, -700.0, 1000.0, -1000.0]


@pytest.mark.parametrize("intermediates", ["per_example", "mean"])
@pytest.mark.parametrize("layout", ["features_first", "examples_first"])
@pytest.mark.parametrize("y", [0.0, 1.0])
@pytest.mark.parametrize("z", LOGITS)
def test_bce_single_saturated_logit(client, z, y, layout, intermediates):
    status, body = raw_post(client, one_unit_bce([z], [y], layout, intermediates))
    assert status == 200, body
    loss, dZ, dA = bce_exact(z, y)
    g = body["gradients"]
    assert close(body["cost"], loss), (body["cost"], loss)
    assert close(g["dZ1"][0][0], dZ, atol=ULP1), (g["dZ1"], dZ)
    # one example: dW = dZ * x, db = dZ, dA0 = W^T dZ = dZ (mean and per_example coincide at m = 1)
    assert close(g["db1"][0][0], dZ, atol=ULP1)
    assert close(g["dW1"][0][0], dZ * z, atol=ULP1 * abs(z))
    assert close(g["dA0"][0][0], dZ, atol=ULP1)
    assert close(body["AL"][0][0], sigmoid_exact(z)), (body["AL"], z)
    if math.isfinite(dA):
        assert g["dA1"][0][0] is not None and close_dA(g["dA1"][0][0], dA), (g["dA1"], dA)
        assert body["warnings"] == []
    else:
        assert g["dA1"] == [[None]]
        [w] = body["warnings"]
        assert w["location"] == "gradients.dA1" and w["entries"] == [[0, 0]] and w["count"] == 1


@pytest.mark.parametrize("z, y, cost, dZ, dA", [
    (1000.0, 0.0, 1000.0, 1.0, None),          # dA = 1 + e^1000 overflows
    (1000.0, 1.0, 0.0, 0.0, -1.0),             # dA = -(1 + e^-1000) = -1
    (-1000.0, 1.0, 1000.0, -1.0, None),
    (-1000.0, 0.0, 0.0, 0.0, 1.0),
    (40.0, 0.0, 40.0, 1.0, 1.0 + math.exp(40.0)),
    # dZ = a - y = -sigma(-40): the fused form keeps it relatively exact where a rounds to 1.
    (40.0, 1.0, math.log1p(math.exp(-40.0)), -math.exp(-40.0) / (1.0 + math.exp(-40.0)), -1.0),
])
def test_bce_textbook_values(client, z, y, cost, dZ, dA):
    """The values written out in the issue, compared literally."""
    status, body = raw_post(client, one_unit_bce([z], [y], "features_first", "per_example"))
    assert status == 200
    assert body["cost"] == cost
    assert body["gradients"]["dZ1"] == [[dZ]]
    [[got]] = body["gradients"]["dA1"]
    assert got == dA if dA is None or abs(dA) < 2 else close_dA(got, dA)  # e^40 itself: numpy's exp is within 1 ulp


@pytest.mark.parametrize("intermediates", ["per_example", "mean"])
@pytest.mark.parametrize("layout", ["features_first", "examples_first"])
def test_bce_row_of_saturated_logits(client, layout, intermediates):
    zs = [40.0, -40.0, 700.0, -700.0, 1000.0, -1000.0, 1000.0, -1000.0, 0.0, 40.0]
    ys = [0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0]
    m = len(zs)
    s = 1.0 if intermediates == "per_example" else 1.0 / m
    status, body = raw_post(client, one_unit_bce(zs, ys, layout, intermediates))
    assert status == 200
    exact = [bce_exact(z, y) for z, y in zip(zs, ys)]
    assert close(body["cost"], math.fsum(e[0] for e in exact) / m)
    g = body["gradients"]
    flat = (lambda a: [row[0] for row in a]) if layout == "examples_first" else (lambda a: a[0])
    dZ, dA = flat(g["dZ1"]), flat(g["dA1"])
    assert np.array(g["dZ1"]).shape == ((m, 1) if layout == "examples_first" else (1, m))
    null_at = []
    for j, (loss, dZ_j, dA_j) in enumerate(exact):
        assert close(dZ[j], dZ_j * s, atol=ULP1), (j, dZ[j], dZ_j)
        if math.isfinite(dA_j):
            assert close_dA(dA[j], dA_j * s), (j, dA[j], dA_j)
        else:
            assert dA[j] is None
            null_at.append(j)
    assert null_at == [4, 5]
    want_entries = [[j, 0] for j in null_at] if layout == "examples_first" else [[0, j] for j in null_at]
    assert body["warnings"] == [{"location": "gradients.dA1", "message": body["warnings"][0]["message"],
                                 "entries": want_entries, "count": 2}]
    # every other gradient is finite and exact: dW = (1/m) sum dZ_j z_j, db = (1/m) sum dZ_j
    assert close(g["dW1"][0][0], math.fsum(e[1] * z for e, z in zip(exact, zs)) / m, atol=1e-12)
    assert close(g["db1"][0][0], math.fsum(e[1] for e in exact) / m, atol=1e-15)


@pytest.mark.parametrize("layout", ["features_first", "examples_first"])
def test_null_entries_are_indexed_in_the_response_layout(client, layout):
    """Two output units, four examples: the null entry (unit 1, example 2) is [1, 2] or [2, 1]."""
    Z = np.array([[3.0, -2.0, 40.0, 1000.0], [0.5, 700.0, 1000.0, -1000.0]])
    Y = np.array([[1.0, 0.0, 0.0, 1.0], [1.0, 0.0, 0.0, 0.0]])
    t = (lambda a: a.T) if layout == "examples_first" else (lambda a: a)
    body = {"layers": [{"W": [[1.0, 0.0], [0.0, 1.0]], "b": [0.0, 0.0], "activation": "sigmoid"}],
            "X": t(Z).tolist(), "Y": t(Y).tolist(), "cost": "binary_cross_entropy", "layout": layout}
    status, out = raw_post(client, body)
    assert status == 200
    [w] = out["warnings"]
    assert w["location"] == "gradients.dA1" and w["count"] == 1
    assert w["entries"] == ([[2, 1]] if layout == "examples_first" else [[1, 2]])
    dA1 = np.array(out["gradients"]["dA1"], dtype=object)
    assert dA1.shape == (t(Z)).shape
    nulls = [list(map(int, ij)) for ij in np.argwhere(dA1 == None)]  # noqa: E711
    assert nulls == w["entries"]
    for i in range(2):
        for j in range(4):
            _, dZ, dA = bce_exact(Z[i, j], Y[i, j])
            got_dZ = out["gradients"]["dZ1"][j][i] if layout == "examples_first" else out["gradients"]["dZ1"][i][j]
            assert close(got_dZ, dZ, atol=ULP1)
            got_dA = out["gradients"]["dA1"][j][i] if layout == "examples_first" else out["gradients"]["dA1"][i][j]
            assert (got_dA is None) == (not math.isfinite(dA))
            if got_dA is not None:
                assert close_dA(got_dA, dA)
    assert np.array(out["gradients"]["db1"]).shape == (2,)  # b sent as a vector: db comes back as a vector


@pytest.mark.parametrize("cost", ["binary_cross_entropy", "categorical_cross_entropy"])
@pytest.mark.parametrize("layout", ["features_first", "examples_first"])
def test_mean_dA_representable_after_the_1_over_m(client, layout, cost):
    """Logit gap 709.9 against the label, m = 2, intermediates = mean: dJ/dA = (1 + e^709.9) / 2 ~ 1.0e308
    (BCE, y = 0) resp. -(1 + e^709.9) / 2 (CCE, true class at the low logit) is representable although
    e^709.9 alone is not, so the spec (mean: the exact partial derivative; null only where not representable)
    asks for the finite value, not null."""
    if cost == "binary_cross_entropy":
        body = one_unit_bce([709.9, 709.9], [0.0, 0.0], layout, "mean")
        entry, sign = (0, 0), 1.0          # (unit, example) of the checked dA entry, features first
    else:
        X = np.array([[709.9, 709.9], [0.0, 0.0]])
        body = {"layers": [{"W": np.eye(2).tolist(), "b": [0.0, 0.0], "activation": "softmax"}],
                "X": (X.T if layout == "examples_first" else X).tolist(), "Y": [1, 1],
                "cost": "categorical_cross_entropy", "layout": layout, "intermediates": "mean"}
        entry, sign = (1, 0), -1.0
    status, out = raw_post(client, body)
    assert status == 200
    with localcontext() as ctx:
        ctx.prec = 60
        want = sign * float((1 + Decimal("709.9").exp()) / 2)
    assert math.isfinite(want)
    dA = np.array(out["gradients"]["dA1"], dtype=object)
    if layout == "examples_first":
        dA = dA.T
    got = dA[entry]
    assert got is not None and close_dA(got, want), (f"dA1{list(entry)}: got {got}, expected {want!r}; "
                                                    f"warnings {out['warnings']}")


# --- softmax + categorical cross-entropy with a huge logit gap --------------------------------------------------------

CCE_CASES = [
    ([1000.0, 0.0, -1000.0], 0),
    ([1000.0, 0.0, -1000.0], 1),
    ([1000.0, 0.0, -1000.0], 2),
    ([40.0, 0.0], 1),
    ([-40.0, 0.0], 0),
    ([700.0, 0.0], 1),
    ([0.0, -700.0, 3.0], 1),
    ([-1000.0, -1000.0, 1000.0, 1000.0], 3),
    ([-1000.0, -1000.0, 1000.0, 1000.0], 0),
]


@pytest.mark.parametrize("layout", ["features_first", "examples_first"])
@pytest.mark.parametrize("logits, k", CCE_CASES)
def test_cce_huge_logit_gap(client, logits, k, layout):
    n = len(logits)
    eye = np.eye(n).tolist()
    X = [[v] for v in logits] if layout == "features_first" else [logits]
    body = {"layers": [{"W": eye, "b": [[0.0]] * n, "activation": "softmax"}], "X": X, "Y": [k],
            "cost": "categorical_cross_entropy", "layout": layout}
    status, out = raw_post(client, body)
    assert status == 200, out
    loss, dZ, dA = cce_exact(logits, k)
    assert close(out["cost"], loss), (out["cost"], loss)
    col = (lambda a: [r[0] for r in a]) if layout == "features_first" else (lambda a: a[0])
    got_dZ, got_dA = col(out["gradients"]["dZ1"]), col(out["gradients"]["dA1"])
    for j in range(n):
        assert close(got_dZ[j], dZ[j], atol=ULP1), (j, got_dZ, dZ)
        if math.isfinite(dA[j]):
            assert got_dA[j] is not None and close_dA(got_dA[j], dA[j]), (j, got_dA, dA)
        else:
            assert got_dA[j] is None
    nulls = [j for j in range(n) if not math.isfinite(dA[j])]
    if nulls:
        [w] = out["warnings"]
        want = [[j, 0] for j in nulls] if layout == "features_first" else [[0, j] for j in nulls]
        assert w["location"] == "gradients.dA1" and w["entries"] == want and w["count"] == len(nulls)
    else:
        assert out["warnings"] == []
    # dW = dZ x^T, db = dZ, dA0 = W^T dZ = dZ: all finite
    assert out["gradients"]["db1"] == [[v] for v in got_dZ]
    assert out["gradients"]["dA0"] == out["gradients"]["dZ1"]


def test_cce_exact_integer_costs(client):
    """Gap 1000 or 2000 to the true class: the cost is that gap exactly."""
    X = [[1000.0, 1000.0, 1000.0], [0.0, 0.0, 0.0], [-1000.0, -1000.0, -1000.0]]
    body = {"layers": [{"W": np.eye(3).tolist(), "b": [0.0, 0.0, 0.0], "activation": "softmax"}], "X": X,
            "Y": [0, 1, 2], "cost": "categorical_cross_entropy", "intermediates": "per_example"}
    status, out = raw_post(client, body)
    assert status == 200
    assert out["cost"] == 1000.0  # (0 + 1000 + 2000) / 3
    assert out["gradients"]["dZ1"] == [[0.0, 1.0, 1.0], [0.0, -1.0, 0.0], [0.0, 0.0, -1.0]]
    assert out["gradients"]["dA1"] == [[-1.0, 0.0, 0.0], [0.0, None, 0.0], [0.0, 0.0, None]]
    assert out["warnings"][0]["entries"] == [[1, 1], [2, 2]]


# --- property: large finite inputs give 200 with finite numbers, or 422 -------------------------------------------

MAGNITUDES = st.sampled_from([0.0, 1.0, 3.0, 40.0, 700.0, 1000.0, 1e10, 1e154, 1e300, 1.7e308])


@st.composite
def big_values(draw, shape):
    n = int(np.prod(shape))
    mags = draw(st.lists(MAGNITUDES, min_size=n, max_size=n))
    signs = draw(st.lists(st.sampled_from([-1.0, 1.0]), min_size=n, max_size=n))
    jitter = draw(st.lists(st.floats(0.5, 1.0), min_size=n, max_size=n))
    return (np.array(mags) * np.array(signs) * np.array(jitter)).reshape(shape)


@st.composite
def big_requests(draw):
    L = draw(st.integers(1, 3))
    sizes = [draw(st.integers(1, 3)) for _ in range(L + 1)]
    m = draw(st.integers(1, 4))
    out_act, cost = draw(st.sampled_from([
        ("sigmoid", "binary_cross_entropy"), ("softmax", "categorical_cross_entropy"),
        ("linear", "mean_squared_error"), ("sigmoid", "mean_squared_error"), ("tanh", "mean_squared_error"),
        ("relu", "mean_squared_error"), ("leaky_relu", "mean_squared_error"), ("softmax", "mean_squared_error")]))
    hidden = st.sampled_from(["linear", "sigmoid", "tanh", "relu", "leaky_relu"])
    acts = [draw(hidden) for _ in range(L - 1)] + [out_act]
    layout = draw(st.sampled_from(["features_first", "examples_first"]))
    t = (lambda a: a.T) if layout == "examples_first" else (lambda a: a)
    layers = []
    for l in range(L):
        spec = {"W": draw(big_values((sizes[l + 1], sizes[l]))).tolist(),
                "b": draw(big_values((sizes[l + 1], 1))).tolist(), "activation": acts[l]}
        if acts[l] == "leaky_relu" and draw(st.booleans()):
            spec["negative_slope"] = draw(st.sampled_from([0.0, 0.3, 2.0, 1e300]))
        layers.append(spec)
    X = draw(big_values((sizes[0], m)))
    n_L = sizes[-1]
    if cost == "binary_cross_entropy":
        Y = t(np.array(draw(st.lists(st.sampled_from([0.0, 1.0, 0.5, 1e-300]), min_size=n_L * m,
                                     max_size=n_L * m))).reshape(n_L, m)).tolist()
    elif cost == "categorical_cross_entropy":
        Y = draw(st.lists(st.integers(0, n_L - 1), min_size=m, max_size=m))
    else:
        Y = t(draw(big_values((n_L, m)))).tolist()
    body = {"layers": layers, "X": t(X).tolist(), "Y": Y, "cost": cost, "layout": layout,
            "intermediates": draw(st.sampled_from(["per_example", "mean"])),
            "l2": draw(st.sampled_from([0.0, 0.5, 1e300])), "include_caches": draw(st.booleans())}
    if L > 1 and draw(st.booleans()):
        keep = draw(st.sampled_from([1.0, 0.5, 1e-300]))
        body["dropout"] = {"keep_prob": keep, "masks": [
            t(np.array(draw(st.lists(st.sampled_from([0.0, 1.0]), min_size=sizes[l + 1] * m,
                                     max_size=sizes[l + 1] * m))).reshape(sizes[l + 1], m)).tolist()
            for l in range(L - 1)]}
    return body


def _numbers(value, path=""):
    if isinstance(value, list):
        for i, v in enumerate(value):
            yield from _numbers(v, f"{path}[{i}]")
    else:
        yield path, value


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                                    HealthCheck.too_slow])
@given(body=big_requests())
def test_large_inputs_give_finite_200_or_422(client, body):
    status, out = raw_post(client, body)
    assert status in (200, 422), (status, out)
    if status == 422:
        assert [e["type"] for e in out["errors"]] == ["numerical_overflow"], out
        return
    L = len(body["layers"])
    assert isinstance(out["cost"], float) and math.isfinite(out["cost"])
    listed = {w["location"]: w for w in out["warnings"]}
    assert set(listed) <= {f"gradients.dA{L}"}
    groups = [("AL", out["AL"])] + [(f"gradients.{k}", v) for k, v in out["gradients"].items()]
    groups += [(f"caches.{k}", v) for k, v in (out.get("caches") or {}).items()]
    for name, arr in groups:
        nulls = []
        for path, v in _numbers(arr):
            if v is None:
                nulls.append(path)
            else:
                assert isinstance(v, float) and math.isfinite(v), (name, path, v)
        if nulls:
            w = listed[name]  # a null only where a warning names it
            assert w["count"] == len(nulls)
            assert sorted("".join(f"[{i}]" for i in e) for e in w["entries"]) == sorted(nulls)
        else:
            assert name not in listed

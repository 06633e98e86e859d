"""POST /v1/gradients against an independent torch float64 autodiff oracle (tests/oracle.py).

Every returned number (cost, AL, dW, db, dZ, dA0..dAL, and Z, A when cached) must match the oracle to
|got - want| <= 1e-10 |want| + 1e-13 elementwise, in the request's layout and with explicit shapes.
"""

from __future__ import annotations

import numpy as np
import pytest

from service import engine
from tests.oracle import (CONVENTIONS, HIDDEN_ACTIVATIONS, LAYOUTS, OUTPUT_ACTIVATIONS, PAIRINGS, Case,
                          as_array, assert_close, random_case, reference)

N_SEEDS = 240
SEEDS = range(N_SEEDS)
RTOL, ATOL = 1e-10, 1e-13


def check_response(case: Case, body: dict) -> None:
    """Compare a 200 body with the oracle, including every shape."""
    ref = case.reference()
    L, m = case.L, case.m
    ex = case.layout == "examples_first"

    def units_m(n: int) -> tuple[int, int]:
        return (m, n) if ex else (n, m)

    g = body["gradients"]
    expected_keys = ({f"dW{l}" for l in range(1, L + 1)} | {f"db{l}" for l in range(1, L + 1)}
                     | {f"dZ{l}" for l in range(1, L + 1)} | {f"dA{l}" for l in range(0, L + 1)})
    assert set(g) == expected_keys
    assert body["warnings"] == []
    assert isinstance(body["cost"], float)
    assert_close(body["cost"], ref.cost, "cost", RTOL, ATOL)

    assert as_array(body["AL"]).shape == units_m(case.sizes[-1])
    assert_close(body["AL"], case.to_layout(ref.AL), "AL", RTOL, ATOL)
    for l in range(1, L + 1):
        n_l, n_prev = case.sizes[l], case.sizes[l - 1]
        assert as_array(g[f"dW{l}"]).shape == (n_l, n_prev), f"dW{l} shape"
        assert_close(g[f"dW{l}"], ref.dW[l - 1], f"dW{l}", RTOL, ATOL)
        db_shape = (n_l,) if case.b_vector[l - 1] else (n_l, 1)
        assert as_array(g[f"db{l}"]).shape == db_shape, f"db{l} shape"
        assert_close(g[f"db{l}"], ref.db[l - 1].reshape(db_shape), f"db{l}", RTOL, ATOL)
        assert as_array(g[f"dZ{l}"]).shape == units_m(n_l), f"dZ{l} shape"
        assert_close(g[f"dZ{l}"], case.to_layout(ref.dZ[l - 1]), f"dZ{l}", RTOL, ATOL)
    for l in range(0, L + 1):
        assert as_array(g[f"dA{l}"]).shape == units_m(case.sizes[l]), f"dA{l} shape"
        assert_close(g[f"dA{l}"], case.to_layout(ref.dA[l]), f"dA{l}", RTOL, ATOL)

    if case.include_caches:
        caches = body["caches"]
        assert set(caches) == {f"Z{l}" for l in range(1, L + 1)} | {f"A{l}" for l in range(1, L + 1)}
        for l in range(1, L + 1):
            assert as_array(caches[f"Z{l}"]).shape == units_m(case.sizes[l])
            assert_close(caches[f"Z{l}"], case.to_layout(ref.Z[l - 1]), f"Z{l}", RTOL, ATOL)
            assert_close(caches[f"A{l}"], case.to_layout(ref.A[l - 1]), f"A{l}", RTOL, ATOL)
        assert caches[f"A{L}"] == body["AL"]
    else:
        assert body.get("caches") is None


@pytest.mark.parametrize("seed", SEEDS)
def test_random_network_matches_torch(post, seed):
    case = random_case(seed)
    status, body = post(case.request())
    assert status == 200, body
    check_response(case, body)


def test_random_cases_cover_the_spec():
    """The seeds above really exercise every feature the acceptance spec lists (so the suite can't go blind)."""
    cases = [random_case(s) for s in SEEDS]
    hidden = {a for c in cases for a in c.activations[:-1]}
    output = {c.activations[-1] for c in cases}
    assert hidden == set(HIDDEN_ACTIVATIONS)
    assert output == set(OUTPUT_ACTIVATIONS)
    assert {(c.activations[-1], c.cost) for c in cases} == set(PAIRINGS)
    # leaky_relu with the default and a custom slope, hidden and output
    for where in (slice(None, -1), slice(-1, None)):
        leaky = [s for c in cases for a, s in zip(c.activations[where], c.slopes[where]) if a == "leaky_relu"]
        assert None in leaky and any(s is not None for s in leaky)
    assert {c.layout for c in cases} == set(LAYOUTS)
    assert {c.intermediates for c in cases} == set(CONVENTIONS)
    assert {(c.layout, c.intermediates, c.activations[-1], c.cost, c.L) for c in cases} == {
        (lay, conv, a, cost, L) for lay in LAYOUTS for conv in CONVENTIONS for a, cost in PAIRINGS
        for L in range(1, 6)}
    assert {c.L for c in cases} == {1, 2, 3, 4, 5}
    assert any(c.m == 1 for c in cases) and any(c.m > 20 for c in cases)
    assert any(c.m == 1 and c.layout == "examples_first" for c in cases)
    assert any(c.l2 > 0 for c in cases) and any(c.l2 == 0 for c in cases)
    dropped = [c for c in cases if c.masks is not None]
    assert any(c.keep_prob < 1 and any((D == 0).any() for D in c.masks) for c in dropped)
    assert any(c.keep_prob == 1.0 for c in dropped)
    assert {c.layout for c in dropped if c.L > 1} == set(LAYOUTS)
    assert {bv for c in cases for bv in c.b_vector} == {True, False}
    assert any(c.include_caches for c in cases) and not all(c.include_caches for c in cases)
    assert {(c.y_format, c.layout) for c in cases if c.cost == "categorical_cross_entropy"} == {
        (f, lay) for f in ("indices", "matrix") for lay in LAYOUTS}
    assert any(c.y_format == "flat" and c.cost == "binary_cross_entropy" for c in cases)
    assert any(c.y_format == "flat" and c.cost == "mean_squared_error" for c in cases)
    bce = [c for c in cases if c.cost == "binary_cross_entropy"]
    assert {c.label_kind for c in bce} == {"hard", "soft", "mixed"}
    labels = np.concatenate([c.Y.ravel() for c in bce])
    assert (labels == 0).any() and (labels == 1).any() and ((labels > 0) & (labels < 1)).any()
    # MSE with every output activation
    assert {c.activations[-1] for c in cases if c.cost == "mean_squared_error"} == set(OUTPUT_ACTIVATIONS)


@pytest.mark.parametrize("pairing", PAIRINGS)
def test_conventions_differ_by_m(post, pairing):
    """per_example and mean differ by a factor m in dA and dZ only, and agree on cost, dW and db."""
    case = random_case(7, pairing=pairing, n_layers=3, intermediates="mean")
    assert case.m > 1
    _, mean = post(case.request())
    case.intermediates = "per_example"
    _, per = post(case.request())
    assert mean["cost"] == per["cost"]
    for k in mean["gradients"]:
        if k.startswith(("dW", "db")):
            assert_close(per["gradients"][k], as_array(mean["gradients"][k]), k, 1e-12, 1e-15)
        else:
            assert_close(per["gradients"][k], as_array(mean["gradients"][k]) * case.m, k, 1e-12, 1e-14)


@pytest.mark.parametrize("cost, out", [("binary_cross_entropy", "sigmoid"), ("categorical_cross_entropy", "softmax"),
                                       ("mean_squared_error", "linear")])
def test_per_example_last_dZ_is_AL_minus_Y(post, cost, out):
    """The course's per_example convention: dZ_L = A_L - Y with no 1/m, for the canonical pairs."""
    case = random_case(11, pairing=(out, cost), n_layers=2, intermediates="per_example", layout="features_first")
    status, body = post(case.request())
    assert status == 200
    dZL = as_array(body["gradients"]["dZ2"])
    assert_close(dZL, as_array(body["AL"]) - case.Y, "dZ2 vs AL - Y", 1e-15, 1e-16)


@pytest.mark.parametrize("seed", range(6))
def test_examples_first_is_the_transpose_of_features_first(post, seed):
    case = random_case(1000 + seed, layout="features_first")
    case.include_caches = True
    _, ff = post(case.request())
    case.layout = "examples_first"
    _, ef = post(case.request())
    assert ff["cost"] == ef["cost"]
    assert as_array(ef["AL"]).tolist() == as_array(ff["AL"]).T.tolist()
    for k, v in ff["gradients"].items():
        if k.startswith(("dW", "db")):
            assert ef["gradients"][k] == v, k
        else:
            assert as_array(ef["gradients"][k]).tolist() == as_array(v).T.tolist(), k
    for k, v in ff["caches"].items():
        assert as_array(ef["caches"][k]).tolist() == as_array(v).T.tolist(), k


# --- engine level -----------------------------------------------------------------------------------------------

def _engine_layers(case: Case) -> list[engine.Layer]:
    return [engine.dense(W, b, a, 0.01 if s is None else s)
            for W, b, a, s in case.layer_tuples()]


@pytest.mark.parametrize("seed", range(5000, 5016))
def test_engine_compute_matches_torch(seed):
    case = random_case(seed)
    dropout = engine.Dropout(case.keep_prob, tuple(case.masks)) if case.masks is not None else None
    res = engine.compute(case.X, case.Y, _engine_layers(case), case.cost, l2=case.l2, dropout=dropout,
                         intermediates=case.intermediates)
    ref = case.reference()
    assert_close(res.cost, ref.cost, "cost")
    assert_close(res.AL, ref.AL, "AL")
    assert not res.unrepresentable.any()
    for l in range(case.L):
        assert_close(res.grads[l]["W"], ref.dW[l], f"dW{l + 1}")
        assert_close(res.grads[l]["b"], ref.db[l], f"db{l + 1}")
        assert_close(res.dZ[l], ref.dZ[l], f"dZ{l + 1}")
        assert_close(res.Z[l], ref.Z[l], f"Z{l + 1}")
        assert_close(res.A[l], ref.A[l], f"A{l + 1}")
    for l in range(case.L + 1):
        assert_close(res.dA[l], ref.dA[l], f"dA{l}")


def test_engine_single_unit_softmax():
    """softmax over one unit is identically 1: cost 0, dZ 0, and every upstream gradient 0 (torch agrees)."""
    rng = np.random.default_rng(3)
    X = rng.normal(size=(3, 4))
    W, b = rng.normal(size=(1, 3)), rng.normal(size=(1, 1))
    Y = np.ones((1, 4))
    res = engine.compute(X, Y, [engine.dense(W, b, "softmax")], "categorical_cross_entropy", intermediates="mean")
    ref = reference(X, Y, [(W, b, "softmax", None)], "categorical_cross_entropy")
    assert res.cost == 0.0 and ref.cost == 0.0
    assert_close(res.dZ[0], ref.dZ[0], "dZ1")
    assert_close(res.grads[0]["W"], np.zeros((1, 3)), "dW1", 0, 0)
    assert_close(res.dA[1], ref.dA[1], "dA1")


def test_engine_relu_kink_uses_zero_subgradient_like_torch():
    """Z exactly 0 in a relu / leaky_relu hidden layer: the service and torch pick the same subgradient."""
    X = np.array([[1.0, -2.0, 0.5]])
    W1 = np.array([[1.0], [-1.0], [0.0]])
    b1 = np.array([[-1.0], [-0.5], [0.0]])   # Z1[0, 0] = 0, Z1[2, :] = 0
    W2 = np.array([[0.7, -0.3, 1.1]])
    b2 = np.array([[0.2]])
    Y = np.array([[0.3, -0.1, 0.9]])
    for act, slope in (("relu", 0.01), ("leaky_relu", 0.01), ("leaky_relu", 0.37)):
        layers = [engine.dense(W1, b1, act, slope), engine.dense(W2, b2, "linear")]
        res = engine.compute(X, Y, layers, "mean_squared_error", intermediates="mean")
        ref = reference(X, Y, [(W1, b1, act, slope), (W2, b2, "linear", None)], "mean_squared_error")
        for l in range(2):
            assert_close(res.grads[l]["W"], ref.dW[l], f"{act} dW{l + 1}")
            assert_close(res.dZ[l], ref.dZ[l], f"{act} dZ{l + 1}")
        assert_close(res.dA[0], ref.dA[0], f"{act} dA0")

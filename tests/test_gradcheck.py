"""Finite-difference gradient checks of the engine, the fused last-layer identity dZ_L = A_L - Y, and every
registered activation's derivative against a central difference of its forward function.

No torch here: the reference is the engine's own cost, differentiated numerically (cs231n's gradient_check).
"""

from __future__ import annotations

from decimal import Decimal, localcontext

import numpy as np
import pytest

from service import engine
from service.engine.activations import ACTIVATIONS, DEFAULT_NEGATIVE_SLOPE
from service.engine.costs import COSTS
from tests.oracle import PAIRINGS, random_case

EPS = 1e-6


def rel_error(x: np.ndarray, y: np.ndarray, floor: float = 1e-8) -> float:
    """cs231n's relative error, max |x - y| / max(floor, |x| + |y|). ``floor`` bounds the denominator for entries
    that are (near) zero, where a finite difference only has absolute accuracy."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    return float(np.max(np.abs(x - y) / np.maximum(floor, np.abs(x) + np.abs(y))))


def numerical_gradient(f, x: np.ndarray, eps: float = EPS) -> np.ndarray:
    """Central differences of the scalar f() w.r.t. every entry of x (perturbed in place and restored)."""
    grad = np.zeros_like(x)
    it = np.nditer(x, flags=["multi_index"], op_flags=["readwrite"])
    while not it.finished:
        i = it.multi_index
        old = x[i]
        x[i] = old + eps
        plus = f()
        x[i] = old - eps
        minus = f()
        x[i] = old
        grad[i] = (plus - minus) / (2 * eps)
        it.iternext()
    return grad


# --- finite differences of the whole network ---------------------------------------------------------------------

# Central differences with eps = 1e-6 carry ~1e-10 absolute round-off (|J| eps_machine / eps): with the 1e-4
# floor that is <= 1e-6; a wrong formula or a missing factor shows up as >= 1e-3.
TOL = 1e-5
GRADCHECK_CASES = [(pairing, k) for pairing in PAIRINGS for k in range(3)]


@pytest.mark.parametrize("pairing, k", GRADCHECK_CASES, ids=[f"{a}+{c}-{k}" for (a, c), k in GRADCHECK_CASES])
def test_gradients_match_central_differences(pairing, k):
    seed = 7000 + 10 * PAIRINGS.index(pairing) + k
    # Small networks, every relu / leaky_relu pre-activation at least 1e-4 away from its kink.
    case = random_case(seed, pairing=pairing, n_layers=k + 1, intermediates="mean", max_m=5, kink_margin=1e-4)
    layers = [engine.dense(W, b, a, DEFAULT_NEGATIVE_SLOPE if s is None else s)
              for W, b, a, s in case.layer_tuples()]
    dropout = engine.Dropout(case.keep_prob, tuple(case.masks)) if case.masks is not None else None
    X, Y = case.X.copy(), case.Y

    def cost() -> float:
        return engine.compute(X, Y, layers, case.cost, l2=case.l2, dropout=dropout, intermediates="mean").cost

    res = engine.compute(X, Y, layers, case.cost, l2=case.l2, dropout=dropout, intermediates="mean")
    checked = 0
    for l, layer in enumerate(layers, start=1):
        num_W = numerical_gradient(cost, layer.params["W"])
        num_b = numerical_gradient(cost, layer.params["b"])
        assert res.grads[l - 1]["W"].shape == num_W.shape and res.grads[l - 1]["b"].shape == num_b.shape
        assert rel_error(res.grads[l - 1]["W"], num_W, floor=1e-4) < TOL, f"dW{l}: {res.grads[l - 1]['W']} vs {num_W}"
        assert rel_error(res.grads[l - 1]["b"], num_b, floor=1e-4) < TOL, f"db{l}: {res.grads[l - 1]['b']} vs {num_b}"
        checked += np.count_nonzero(num_W) + np.count_nonzero(num_b)
    num_X = numerical_gradient(cost, X)
    assert rel_error(res.dA[0], num_X, floor=1e-4) < TOL, f"dA0: {res.dA[0]} vs {num_X}"
    assert checked > 0  # not a network of dead units only


def test_gradcheck_detects_a_wrong_gradient():
    """The checker itself can fail: a 0.1% error in dW is far above its threshold."""
    case = random_case(7003, pairing=PAIRINGS[0], n_layers=2, intermediates="mean", max_m=5)
    layers = [engine.dense(W, b, a) for W, b, a, _ in case.layer_tuples()]
    res = engine.compute(case.X, case.Y, layers, case.cost, intermediates="mean")
    num = numerical_gradient(lambda: engine.compute(case.X, case.Y, layers, case.cost).cost, layers[0].params["W"])
    assert rel_error(res.grads[0]["W"], num, floor=1e-4) < 1e-6
    assert rel_error(res.grads[0]["W"] * 1.001, num, floor=1e-4) > 1e-4


# --- the fused last layer: dZ_L = A_L - Y equals dA_L * g'(Z_L) -----------------------------------------------------

def _random_logits(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    scale = rng.choice([0.5, 2.0, 10.0, 40.0, 300.0, 705.0], size=shape)
    return rng.normal(0, 1, size=shape) * scale


def _labels(rng: np.random.Generator, cost: str, n: int, m: int) -> np.ndarray:
    if cost == "binary_cross_entropy":
        Y = rng.uniform(0, 1, size=(n, m))
        pick = rng.random((n, m))
        Y[pick < 0.35] = 0.0
        Y[pick > 0.65] = 1.0
        return Y
    if cost in ("categorical_cross_entropy", "multiclass_hinge"):
        Y = np.zeros((n, m))
        Y[rng.integers(0, n, size=m), np.arange(m)] = 1.0
        return Y
    return rng.normal(0, 3, size=(n, m))


FUSED = [("binary_cross_entropy", "sigmoid"), ("categorical_cross_entropy", "softmax"),
         ("mean_squared_error", "linear"), ("multiclass_hinge", "linear")]


def test_fused_activations_are_the_canonical_pairs():
    assert {c.name: c.fused_activation for c in COSTS.values()} == dict(FUSED)


@pytest.mark.parametrize("cost, act", FUSED)
@pytest.mark.parametrize("seed", range(40))
def test_fused_dZ_equals_chain_rule(cost, act, seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1 if cost not in ("categorical_cross_entropy", "multiclass_hinge") else 2, 6))
    m = int(rng.integers(1, 20))
    Z = _random_logits(rng, (n, m))
    Y = _labels(rng, cost, n, m)
    unit, g = COSTS[cost], ACTIVATIONS[act]
    A = g.forward(Z, DEFAULT_NEGATIVE_SLOPE)
    with np.errstate(over="ignore", invalid="ignore"):
        dA = unit.dA(Z, A, Y)
        chain = g.backward(dA, Z, A)
    fused = unit.fused_dZ(Z, A, Y)
    if unit.fused_formula == "A{L} - Y":  # the identity the course teaches, where the unit says it holds
        np.testing.assert_allclose(fused, A - Y, rtol=1e-12, atol=4e-16)
    # Where the chain rule is finite (per column for softmax, whose backward mixes the column) both must agree.
    finite = np.isfinite(chain) & np.all(np.isfinite(dA), axis=0, keepdims=True)
    assert finite.any()
    # Both are O(1) differences of O(1) terms: a few ulps of 1 absolute, plus a relative part.
    err = np.abs(chain - fused)[finite]
    tol = (1e-12 * np.abs(fused) + 4e-16)[finite]
    worst = int(np.argmax(err - tol))
    assert np.all(err <= tol), (f"{cost}+{act}: chain {chain[finite][worst]!r} vs fused {fused[finite][worst]!r} "
                                f"at Z {Z[finite][worst]!r}, Y {Y[finite][worst]!r}")


@pytest.mark.parametrize("seed", range(10))
def test_cost_dA_is_the_course_formula_where_A_is_not_saturated(seed):
    """dA_L = -(Y/A - (1-Y)/(1-A)) (BCE), -Y/A (CCE), A - Y (MSE) for moderate logits."""
    rng = np.random.default_rng(100 + seed)
    Z = rng.normal(0, 2, size=(3, 7))
    Yb = _labels(rng, "binary_cross_entropy", 3, 7)
    A = ACTIVATIONS["sigmoid"].forward(Z, 0.0)
    course = -(Yb / A - (1 - Yb) / (1 - A))
    assert rel_error(COSTS["binary_cross_entropy"].dA(Z, A, Yb), course, floor=1e-12) < 1e-12
    Yc = _labels(rng, "categorical_cross_entropy", 3, 7)
    S = ACTIVATIONS["softmax"].forward(Z, 0.0)
    assert rel_error(COSTS["categorical_cross_entropy"].dA(Z, S, Yc), -Yc / S, floor=1e-12) < 1e-12
    Ym = _labels(rng, "mean_squared_error", 3, 7)
    assert np.array_equal(COSTS["mean_squared_error"].dA(Z, Z, Ym), Z - Ym)


# --- activation derivatives ---------------------------------------------------------------------------------------

ELEMENTWISE = [(name, slope) for name, unit in ACTIVATIONS.items() if unit.derivative is not None
               for slope in ((DEFAULT_NEGATIVE_SLOPE, 0.2, 1.7) if name == "leaky_relu" else (DEFAULT_NEGATIVE_SLOPE,))]


def test_registry_holds_the_expected_activations():
    assert {"linear", "sigmoid", "tanh", "relu", "leaky_relu", "softmax"} <= set(ACTIVATIONS)
    assert {name for name, _ in ELEMENTWISE} | {"softmax"} == set(ACTIVATIONS)


@pytest.mark.parametrize("name, slope", ELEMENTWISE)
def test_derivative_matches_central_difference(name, slope):
    unit = ACTIVATIONS[name]
    rng = np.random.default_rng(42)
    Z = rng.uniform(-8, 8, size=(6, 50))
    Z = Z[:, np.all(np.abs(Z) > 1e-3, axis=0)]  # away from the relu kink
    A = unit.forward(Z, slope)
    analytic = unit.derivative(Z, A, slope)
    h = 1e-6
    numeric = (unit.forward(Z + h, slope) - unit.forward(Z - h, slope)) / (2 * h)
    assert analytic.shape == Z.shape
    assert rel_error(analytic, numeric, floor=1e-4) < 1e-6
    # backward is dA * g'(Z)
    dA = rng.normal(size=Z.shape)
    assert np.allclose(unit.backward(dA, Z, A, slope), dA * analytic, rtol=1e-15, atol=0)


@pytest.mark.parametrize("seed", range(5))
def test_softmax_backward_is_the_jacobian_vector_product(seed):
    unit = ACTIVATIONS["softmax"]
    rng = np.random.default_rng(seed)
    Z = rng.normal(0, 2, size=(4, 6))
    dA = rng.normal(size=(4, 6))
    A = unit.forward(Z, 0.0)
    got = unit.backward(dA, Z, A)
    Zp = Z.copy()
    numeric = numerical_gradient(lambda: float(np.sum(dA * unit.forward(Zp, 0.0))), Zp)
    assert rel_error(got, numeric, floor=1e-6) < 1e-6
    np.testing.assert_allclose(A.sum(axis=0), 1.0, rtol=1e-15)


@pytest.mark.parametrize("slope", [DEFAULT_NEGATIVE_SLOPE, 0.25])
def test_derivative_at_exactly_zero(slope):
    Z = np.zeros((2, 3))
    relu, leaky = ACTIVATIONS["relu"], ACTIVATIONS["leaky_relu"]
    assert np.array_equal(relu.derivative(Z, relu.forward(Z, slope), slope), np.zeros((2, 3)))
    assert np.array_equal(leaky.derivative(Z, leaky.forward(Z, slope), slope), np.full((2, 3), slope))
    dA = np.full((2, 3), 3.0)
    assert np.array_equal(relu.backward(dA, Z, relu.forward(Z, slope), slope), np.zeros((2, 3)))
    assert np.array_equal(leaky.backward(dA, Z, leaky.forward(Z, slope), slope), np.full((2, 3), 3.0 * slope))
    # default slope is used when none is given
    assert np.array_equal(leaky.backward(dA, Z, Z), np.full((2, 3), 3.0 * DEFAULT_NEGATIVE_SLOPE))
    # one-sided values right next to the kink
    tiny = np.array([[1e-300, -1e-300]])
    assert relu.derivative(tiny, tiny, slope).tolist() == [[1.0, 0.0]]
    assert leaky.derivative(tiny, tiny, slope).tolist() == [[1.0, slope]]


def _exact_sigmoid_prime(z: float) -> float:
    with localcontext() as ctx:
        ctx.prec = 60
        e = (-Decimal(abs(z))).exp()
        return float(e / ((1 + e) * (1 + e)))


def _exact_tanh_prime(z: float) -> float:
    with localcontext() as ctx:
        ctx.prec = 60
        e = (-2 * Decimal(abs(z))).exp()
        return float(4 * e / ((1 + e) * (1 + e)))


@pytest.mark.parametrize("z", [0.0, 0.5, -3.0, 20.0, -40.0, 100.0, -300.0, 700.0])
def test_saturating_derivatives_keep_relative_precision(z):
    """sigmoid'(z) and tanh'(z) from Z stay relatively exact far in the tails, where a(1-a) rounds to 0."""
    Z = np.array([[z]])
    s, t = ACTIVATIONS["sigmoid"], ACTIVATIONS["tanh"]
    got_s = float(s.derivative(Z, s.forward(Z, 0.0), 0.0)[0, 0])
    got_t = float(t.derivative(Z, t.forward(Z, 0.0), 0.0)[0, 0])
    want_s, want_t = _exact_sigmoid_prime(z), _exact_tanh_prime(z)
    assert want_s > 0
    assert abs(got_s - want_s) <= 1e-14 * want_s
    if want_t > 1e-300:  # tanh'(z) ~ 4e^{-2|z|} leaves the normal range for |z| > ~354
        assert abs(got_t - want_t) <= 1e-14 * want_t
    else:
        assert 0.0 <= got_t <= 1e-300

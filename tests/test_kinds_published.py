"""Published cs231n values reproduced through HTTP, with every array sent as cs231n's code holds it
(``layout: examples_first``, ``weight_layout: in_out``: x (N, D), w (D, H), vectors b, gamma, beta).

The numbers are in tests/data/published/cs231n_kinds.json, each case with its source, recipe and confidence.
Printed values carry numpy's 8 decimals, so they are compared within 6e-9 + 1e-7 |value| (the rounding of the
print); full-precision values within 1e-12 relative. Course quirks: cs231n's L2 is 0.5 reg sum W^2 in the linspace
TwoLayerNet (the service's lambda = reg m) and reg sum W^2 in the toy one (lambda = 2 m reg).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.oracle import KindLayer, KindsCase, as_array, assert_close, check_kinds_response

CASES = json.loads((Path(__file__).parent / "data" / "published" / "cs231n_kinds.json").read_text())["cases"]


def printed(got, want, name: str) -> None:
    """Equal to a value printed with 8 decimals."""
    assert_close(got, want, name, rtol=1e-7, atol=6e-9)


def _affine(W, b, activation="linear") -> dict:
    return {"W": W, "b": b, "activation": activation}


def _body(layers, X, Y, cost="mean_squared_error", **extra) -> dict:
    return {"layers": layers, "X": X, "Y": Y, "cost": cost, "layout": "examples_first", "weight_layout": "in_out",
            **extra}


# --- affine layers and two-layer nets (cs231n_fc_layers) ------------------------------------------------------

def test_affine_forward(post):
    c = CASES["affine_forward"]
    x, w, b = (c["inputs"][k] for k in ("x_flat_2x120", "w_120x3", "b"))
    status, out = post(_body([_affine(w, b)], x, [[0.0] * 3] * 2))
    assert status == 200
    printed(out["AL"], c["expected"]["correct_out"], "out")
    assert as_array(out["gradients"]["dW1"]).shape == (120, 3)  # dW comes back as w is held


@pytest.mark.parametrize("reg, l2, loss", [(0.0, 0.0, "correct_loss_reg0"), (1.0, 3.0, "correct_loss_reg1")])
def test_two_layer_net_linspace(post, reg, l2, loss):
    """Scores and the loss (the notebook asserts the loss within 1e-10); l2 = reg m turns 0.5 reg sum W^2 into
    lambda/(2m) sum W^2."""
    c = CASES["TwoLayerNet_linspace"]
    i = c["inputs"]
    status, out = post(_body([_affine(i["W1"], i["b1"], "relu"), _affine(i["W2"], i["b2"], "softmax")], i["X"],
                             i["y"], "categorical_cross_entropy", l2=l2, include_caches=True))
    assert status == 200
    printed(out["caches"]["Z2"], c["expected"]["correct_scores"], "scores")
    assert abs(out["cost"] - c["expected"][loss]) < 1e-10
    full = c["derived_not_published"]["data_loss_full_precision" if reg == 0 else "loss_reg1_full_precision"]
    assert abs(out["cost"] - full) <= 1e-12 * full


def test_two_layer_net_toy(post):
    """The 2016-19 toy net: reg sum W^2 (no 0.5), so lambda = 2 m reg; loss 1.30378789133."""
    c = CASES["TwoLayerNet_toy_assignment1"]
    i = c["inputs"]
    m = len(i["X"])
    status, out = post(_body([_affine(i["W1"], i["b1"], "relu"), _affine(i["W2"], i["b2"], "softmax")], i["X"],
                             i["y"], "categorical_cross_entropy", l2=2 * m * i["reg"], include_caches=True))
    assert status == 200
    printed(out["caches"]["Z2"], c["expected"]["correct_scores"], "scores")
    assert abs(out["cost"] - c["expected"]["correct_loss_reg0.05"]) < 1e-11
    assert abs(out["cost"] - c["derived_not_published"]["loss_full_precision"]) <= 1e-13


@pytest.mark.parametrize("cost, value", [("multiclass_hinge", "svm_loss_printed"),
                                         ("categorical_cross_entropy", "softmax_loss_printed")])
def test_svm_and_softmax_loss(post, cost, value):
    """cs231n's svm_loss and softmax_loss on x = 0.001 randn(50, 10): an identity layer carries x to the output."""
    c = CASES["svm_and_softmax_loss_sanity"]
    x, y = c["inputs"]["x"], c["inputs"]["y"]
    status, out = post(_body([_affine(np.eye(10), np.zeros(10), "linear" if cost == "multiclass_hinge" else "softmax")],
                             x, y, cost, intermediates="mean"))
    assert status == 200
    assert abs(out["cost"] - c["expected"][value]) <= 1e-14 * c["expected"][value]
    if cost == "multiclass_hinge":  # svm_loss's dx: margins > 0 count 1, the true class minus their count, / N
        X = np.asarray(x)
        margins = X - X[np.arange(50), y][:, None] + 1
        margins[np.arange(50), y] = 0
        dx = (margins > 0).astype(float)
        dx[np.arange(50), y] = -dx.sum(axis=1)
        assert_close(out["gradients"]["dA0"], dx / 50, "dx", 1e-15, 1e-17)


# --- normalisation (cs231n_normalization) -----------------------------------------------------------------------

def _norm(kind: str, gamma, beta, **extra) -> dict:
    return {"type": kind, "gamma": gamma, "beta": beta, **extra}


def _stats(AL, axis: int) -> tuple[np.ndarray, np.ndarray]:
    A = as_array(AL)
    return A.mean(axis=axis), A.std(axis=axis)


def _cs231n_network(rs: np.random.RandomState, N: int, W1, W2):
    """X = randn(N, 50); a = relu(X W1) W2, as the notebooks build batchnorm's input."""
    X = rs.randn(N, 50)
    return X, [_affine(W1, np.zeros(W1.shape[1]), "relu"), _affine(W2, np.zeros(W2.shape[1]))]


def test_batchnorm_forward_train(post):
    """The input a and its statistics, then the normalised output with (1, 0) and ([1, 2, 3], [11, 12, 13]); the
    first call's input stats are read back from the running statistics (running = 0.9 * (0, 1) + 0.1 * batch)."""
    c = CASES["batchnorm_forward_train"]
    a, e = c["inputs"]["a"], c["expected"]
    zeros = [[0.0] * 3] * 200
    status, out = post(_body([_norm("batchnorm", [1.0] * 3, [0.0] * 3)], a, zeros))
    assert status == 200
    state = out["state"]["1"]
    printed(10 * as_array(state["running_mean"]).reshape(-1), e["before"]["means"], "means before")
    printed(np.sqrt(10 * (as_array(state["running_var"]).reshape(-1) - 0.9)), e["before"]["stds"], "stds before")
    means, stds = _stats(out["AL"], 0)
    assert np.all(np.abs(means) < 1e-12)
    printed(stds, e["after_gamma1_beta0"]["stds"], "stds after (1, 0)")
    assert_close(stds, c["derived_not_published"]["after_gamma1_beta0_stds_full"], "stds full", 1e-12, 1e-15)
    status, out = post(_body([_norm("batchnorm", [1.0, 2.0, 3.0], [11.0, 12.0, 13.0])], a, zeros))
    means, stds = _stats(out["AL"], 0)
    printed(means, e["after_gamma123_beta111213"]["means"], "means after")
    printed(stds, e["after_gamma123_beta111213"]["stds"], "stds after")


def test_batchnorm_forward_train_from_the_recipe(post):
    """The same case as cs231n builds it: X, W1, W2 from seed 231 sent as they are (w (D, H)); the cached Z2 is the
    published a, and batchnorm's output has the published statistics."""
    c = CASES["batchnorm_forward_train"]
    rs = np.random.RandomState(231)
    X = rs.randn(200, 50)
    W1, W2 = rs.randn(50, 60), rs.randn(60, 3)
    layers = [_affine(W1, np.zeros(60), "relu"), _affine(W2, np.zeros(3)), _norm("batchnorm", [1.0] * 3, [0.0] * 3)]
    status, out = post(_body(layers, X, np.zeros((200, 3)), include_caches=True))
    assert status == 200
    assert_close(out["caches"]["Z2"], c["inputs"]["a"], "a", 1e-12, 1e-12)
    printed(_stats(out["AL"], 0)[1], c["expected"]["after_gamma1_beta0"]["stds"], "stds after")


def test_batchnorm_forward_test_time(post):
    """50 training calls, each sending back the running statistics the previous one returned, then a test-mode
    call: its output's means and stds are the published ones. cs231n's skeleton starts running_var at zeros (the
    service's default, like torch's, is ones: 0.9^50 = 0.005 apart after 50 calls), so the first call sends both."""
    c = CASES["batchnorm_forward_test_time"]
    rs = np.random.RandomState(231)
    W1, W2 = rs.randn(*c["inputs"]["W1_shape"]), rs.randn(*c["inputs"]["W2_shape"])
    running: dict = {"running_mean": [0.0] * 3, "running_var": [0.0] * 3}
    for _ in range(50):
        X, layers = _cs231n_network(rs, 200, W1, W2)
        status, out = post(_body(layers + [_norm("batchnorm", [1.0] * 3, [0.0] * 3, **running)], X,
                                 np.zeros((200, 3))))
        assert status == 200
        running = out["state"]["3"]
    derived = c["derived_not_published"]
    assert_close(as_array(running["running_mean"]).reshape(-1), derived["running_mean_after_50"], "running_mean",
                 1e-12, 1e-12)
    assert_close(as_array(running["running_var"]).reshape(-1), derived["running_var_after_50"], "running_var",
                 1e-12, 1e-12)
    X, layers = _cs231n_network(rs, 200, W1, W2)
    status, out = post(_body(layers + [_norm("batchnorm", [1.0] * 3, [0.0] * 3, mode="test", **running)], X,
                             np.zeros((200, 3))))
    assert status == 200 and out["state"]["3"] == running  # test mode leaves them as they were
    means, stds = _stats(out["AL"], 0)
    printed(means, c["expected"]["means"], "test-time means")
    printed(stds, c["expected"]["stds"], "test-time stds")


def test_batchnorm_backward_gradcheck_inputs(post):
    """The notebook's backward check (x = 5 randn(4, 5) + 12, seed 231): with Y = out - dout the MSE's dZ is dout,
    so dA0 is cs231n's dx and m dgamma, m dbeta its dgamma, dbeta; against torch, the research helper's arrays, and
    central differences (/v1/gradient-check)."""
    c = CASES["batchnorm_backward_gradcheck_inputs"]
    i, derived = c["inputs"], c["derived_not_published"]
    x, dout = np.asarray(i["x"]), np.asarray(i["dout"])
    layer = _norm("batchnorm", i["gamma"], i["beta"])
    _, first = post(_body([layer], x, np.zeros_like(x)))
    printed(first["AL"], derived["out"], "out")
    body = _body([layer], x, (as_array(first["AL"]) - dout), include_caches=True)
    status, out = post(body)
    assert status == 200
    assert_close(out["gradients"]["dZ1"], dout, "dZ1 = dout", 1e-12, 1e-14)
    assert_close(out["gradients"]["dA0"], derived["dx"], "dx", 1e-10, 1e-14)
    assert_close(4 * as_array(out["gradients"]["dgamma1"]), derived["dgamma"], "dgamma", 1e-10, 1e-14)
    assert_close(4 * as_array(out["gradients"]["dbeta1"]), derived["dbeta"], "dbeta", 1e-10, 1e-14)
    bn = KindLayer("batchnorm", {"gamma": np.reshape(i["gamma"], (-1, 1)), "beta": np.reshape(i["beta"], (-1, 1))},
                   None, vector=frozenset({"gamma", "beta"}))
    case = KindsCase(seed=231, layers=[bn], X=x.T, Y=as_array(body["Y"]).T, y_format="matrix",
                     cost="mean_squared_error", layout="examples_first", weight_layout="in_out",
                     intermediates="per_example", l2=0.0, keep_prob=None, masks=None, include_caches=True)
    check_kinds_response(case, out)
    status, check = post(body, path="/v1/gradient-check")
    assert status == 200 and check["passed"]
    assert {p["name"] for p in check["parameters"]} == {"dgamma1", "dbeta1"}


def test_layernorm_forward(post):
    c = CASES["layernorm_forward"]
    a, e = c["inputs"]["a"], c["expected"]
    zeros = [[0.0] * 3] * 4
    status, out = post(_body([_norm("layernorm", [1.0] * 3, [0.0] * 3)], a, zeros))
    assert status == 200
    printed(np.asarray(a).mean(axis=1), e["before"]["means"], "means before")
    means, stds = _stats(out["AL"], 1)
    assert np.all(np.abs(means) < 1e-12)
    printed(stds, e["after_gamma1_beta0"]["stds"], "stds after (1, 0)")
    assert_close(stds, c["derived_not_published"]["after_gamma1_beta0_stds_full"], "stds full", 1e-12, 1e-15)
    status, out = post(_body([_norm("layernorm", [3.0] * 3, [5.0] * 3)], a, zeros))
    means, stds = _stats(out["AL"], 1)
    printed(means, e["after_gamma3_beta5"]["means"], "means after")
    printed(stds, e["after_gamma3_beta5"]["stds"], "stds after")

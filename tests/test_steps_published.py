"""The course's published expected values, reproduced through the one-step routes at the printed precision.

The cases are copies (tests/data/published/, one file per research file, each case with its ``source``) of the
values printed by the deeplearning.ai notebooks and public_tests.py and by cs231n's notebooks. A printed value
passes when |got - printed| <= half a unit of its last printed digit (at most 0.5e-8: numpy prints 8 decimals;
a full-precision scalar gets 1e-12 relative), the rounding the printout itself did.

Course quirks kept as the data notes them: the 2017-20 Adam table was made with epsilon inside the square root
(one entry differs from the stated formula; the grader names the mistake); cs231n's Adam is sent t = 5 and uses
t = 6; schedule_lr_decay needs the floor; one public_tests value (0.085714285) is truncated and compared with
np.isclose, as the course does.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import orjson
import pytest

from service.app import create_app
from tests import step_oracle as so

DATA = Path(__file__).parent / "data" / "published"


def cases(name: str) -> dict:
    return {k: v for k, v in json.loads((DATA / f"{name}.json").read_text()).items() if not k.startswith("_")}


C1W4, C2W1, C2W2 = cases("dlai_c1w4_step_by_step"), cases("dlai_c2w1_regularization_gradcheck"), cases(
    "dlai_c2w2_optimizers")
OPTIM, FC, NORM = cases("cs231n_optim"), cases("cs231n_fc_layers"), cases("cs231n_normalization")


@pytest.fixture(scope="module")
def send():
    client = create_app().test_client()

    def _send(path: str, body: dict) -> dict:
        r = client.post(path, data=orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY),
                        content_type="application/json")
        assert r.status_code == 200, r.data
        return orjson.loads(r.data)

    return _send


def _last_digit(x: float) -> int:
    """The decimal exponent of the last digit of a printed number (its shortest repr): 0.11017994 -> -8,
    1.51020075e-05 -> -13, 5.0 -> 0."""
    mantissa, _, exponent = repr(float(x)).partition("e")
    decimals = mantissa.split(".")[1] if "." in mantissa else ""
    decimals = "" if decimals == "0" else decimals
    return int(exponent or 0) - len(decimals)


def printed_tolerance(printed: np.ndarray) -> np.ndarray:
    """Half a unit of each entry's last printed digit, at most 0.5e-8 (numpy's 8 decimals print 0.5 as '0.5'),
    plus 1e-12 relative for float64's own rounding of a full-precision value."""
    last = np.vectorize(_last_digit)(printed)
    return np.minimum(0.5 * 10.0 ** last, 0.5e-8) + 1e-12 * np.abs(printed) + 1e-15


def assert_printed(got, printed, name: str) -> None:
    __tracebackhide__ = True
    g, p = so.as_array(got), np.asarray(printed, dtype=np.float64)
    assert g.shape == p.shape, f"{name}: shape {g.shape}, printed {p.shape}"
    err, tol = np.abs(g - p), printed_tolerance(p)
    bad = np.argwhere(err > tol)
    assert bad.size == 0, (f"{name}: {len(bad)} entries beyond the printed precision, first {tuple(bad[0])}: got "
                           f"{g[tuple(bad[0])]!r}, printed {p[tuple(bad[0])]!r}")


def test_printed_tolerance_is_half_the_last_digit():
    assert printed_tolerance(np.array(0.11017994)) == pytest.approx(0.5e-8, rel=1e-3)
    assert printed_tolerance(np.array(1.51020075e-05)) == pytest.approx(0.5e-13 + 1e-15, rel=1e-3)
    assert printed_tolerance(np.array(0.0)) == pytest.approx(0.5e-8, rel=1e-3)
    assert printed_tolerance(np.array(0.2797765635793422)) < 1e-12
    with pytest.raises(AssertionError):
        assert_printed([0.110179951], [0.11017994], "x")  # 1.1e-8 off at 8 printed decimals


# --- deeplearning.ai C1 W4: the layer functions ----------------------------------------------------------------

def test_linear_forward(send):
    case = C1W4["linear_forward_2018_2021"]["inputs"]
    body = send("/v1/layer/forward", {"layer": {"W": case["W"], "b": case["b"]}, "A_prev": case["A"]})
    assert_printed(body["Z"], C1W4["linear_forward_2018_2021"]["expected"]["Z"], "Z")
    assert body["A"] == body["Z"] and body["cache"] == {}


@pytest.mark.parametrize("activation", ["sigmoid", "relu"])
def test_linear_activation_forward(send, activation):
    case = C1W4["linear_activation_forward_2018_2021"]
    i = case["inputs"]
    body = send("/v1/layer/forward", {"layer": {"W": i["W"], "b": i["b"], "activation": activation},
                                      "A_prev": i["A_prev"]})
    assert_printed(body["A"], case["expected"][f"A_{activation}"], f"A ({activation})")
    assert_printed(body["Z"], case["expected"]["Z"], "Z")


@pytest.mark.parametrize("name", ["linear_backward_2019_2021", "linear_backward_2018"])
def test_linear_backward(send, name):
    case = C1W4[name]
    i = case["inputs"]
    body = send("/v1/layer/backward", {"layer": {"W": i["W"], "b": i["b"]}, "A_prev": i["A_prev"], "dZ": i["dZ"]})
    for key in ("dA_prev", "dW", "db"):
        assert_printed(body[key], case["expected"][key], f"{name} {key}")
    assert body["dZ"] == i["dZ"]


@pytest.mark.parametrize("activation", ["sigmoid", "relu"])
def test_linear_activation_backward_with_the_independent_cached_Z(send, activation):
    """The cached Z is an independent draw (not W A_prev + b): g'(Z) is evaluated on it as sent."""
    case = C1W4["linear_activation_backward_2018_2021"]
    i = case["inputs"]
    body = send("/v1/layer/backward", {"layer": {"W": i["W"], "b": i["b"], "activation": activation},
                                       "A_prev": i["A_prev"], "dA": i["dA"], "Z": i["Z"]})
    for key in ("dA_prev", "dW", "db"):
        assert_printed(body[key], case["expected"][activation][key], f"{activation} {key}")
    assert not np.allclose(np.asarray(i["W"]) @ np.asarray(i["A_prev"]) + np.asarray(i["b"]), i["Z"])


@pytest.mark.parametrize("which", ["linear_backward", "linear_activation_backward_relu",
                                   "linear_activation_backward_sigmoid"])
def test_linear_backward_2017(send, which):
    """The 2017 notebook's hard-coded cache (consistent: Z = W A + 5); db was printed as a scalar. Its inputs come
    with 8 decimals only, so the comparison allows their rounding's effect (the one looser tolerance here)."""
    case = C1W4["linear_backward_and_activation_backward_2017"]
    i, want = case["inputs"], case["expected"][which]
    layer = {"W": i["W"], "b": i["b"]}
    if which == "linear_backward":
        body = send("/v1/layer/backward", {"layer": layer, "A_prev": i["A_prev"], "dZ": i["dZ_or_dA"]})
    else:
        layer["activation"] = which.rsplit("_", 1)[1]
        body = send("/v1/layer/backward", {"layer": layer, "A_prev": i["A_prev"], "dA": i["dZ_or_dA"], "Z": i["Z"]})
    # The inputs were printed at 8 decimals (reconstructed from the docstrings) while the outputs were computed
    # from the full values: their rounding carries through, at most 0.5e-8 sum |dZ| = 5.5e-8 here.
    bound = 0.5e-8 * float(np.abs(i["dZ_or_dA"]).sum())
    for key in ("dA_prev", "dW", "db"):
        got, printed = so.as_array(body[key]).reshape(np.shape(want[key])), np.asarray(want[key])
        assert np.abs(got - printed).max() <= printed_tolerance(printed).max() + bound, key


def test_L_model_backward_from_independent_caches(send):
    """Each layer's cache (A_prev, Z) drawn independently and AL = 1.79 > 1: dAL = -(Y/AL - (1-Y)/(1-AL))."""
    case = C1W4["L_model_backward_2018_2021"]
    i = case["inputs"]
    body = send("/v1/network/backward", {
        "layers": [{"W": i["W1"], "b": i["b1"], "activation": "relu"},
                   {"W": i["W2"], "b": i["b2"], "activation": "sigmoid"}],
        "caches": [{"A_prev": i["A1_cache"], "Z": i["Z1"]}, {"A_prev": i["A2_cache"], "Z": i["Z2"]}],
        "AL": i["AL"], "Y": i["Y"], "cost": "binary_cross_entropy"})
    for key in ("dA0", "dA1", "dW1", "dW2", "db1", "db2"):
        assert_printed(body[key], case["expected"][key], key)


@pytest.mark.parametrize("name", ["compute_cost_2019_2021", "compute_cost_2017_2018"])
def test_compute_cost(send, name):
    case = C1W4[name]
    body = send("/v1/cost", {"cost": "binary_cross_entropy", "AL": case["inputs"]["AL"], "Y": case["inputs"]["Y"]})
    assert_printed(body["cost"], case["expected"]["cost"], "cost")


def test_compute_cost_with_regularization(send):
    case = C2W1["compute_cost_with_regularization_2017_2021"]
    i = case["inputs"]
    body = send("/v1/cost", {"cost": "binary_cross_entropy", "AL": i["A3"], "Y": i["Y"], "l2": i["lambd"],
                             "weights": [i["W1"], i["W2"], i["W3"]]})
    assert_printed(body["cost"], case["expected"]["cost"], "cost")


# --- deeplearning.ai C2 W2: the optimizers -----------------------------------------------------------------

def _dlai_params(i: dict) -> tuple[dict, dict]:
    return ({k: i[k] for k in ("W1", "b1", "W2", "b2")}, {k: i[k] for k in ("dW1", "db1", "dW2", "db2")})


def test_update_parameters_with_gd(send):
    case = C2W2["update_parameters_with_gd_2017_2021"]
    params, grads = _dlai_params(case["inputs"])
    body = send("/v1/optimizer-step", {"optimizer": "sgd", "params": params, "grads": grads,
                                       "learning_rate": case["inputs"]["learning_rate"]})
    for key, want in case["expected"].items():
        assert_printed(body["params"][key], want, key)


@pytest.mark.parametrize("state", ["absent", "zeros"])
def test_update_parameters_with_momentum(send, state):
    """initialize_velocity's zeros, sent or left to the route."""
    case = C2W2["update_parameters_with_momentum_2017_2021"]
    i = case["inputs"]
    params, grads = _dlai_params(i)
    body = {"optimizer": "momentum", "params": params, "grads": grads, "beta": i["beta"],
            "learning_rate": i["learning_rate"]}
    if state == "zeros":
        body["state"] = {"v": {k: np.zeros(np.shape(g)) for k, g in grads.items()}}
    out = send("/v1/optimizer-step", body)
    for key in ("W1", "b1", "W2", "b2"):
        assert_printed(out["params"][key], case["expected"][key], key)
    for key, want in case["expected"]["v"].items():
        assert_printed(out["state"]["v"][key], want, f"v[{key}]")
    assert out["t"] is None


ADAM_2017 = C2W2["update_parameters_with_adam_2017_2020"]


def _adam_2017_body() -> dict:
    params, grads = _dlai_params(ADAM_2017["inputs"])
    return {"optimizer": "adam", "params": params, "grads": grads, "t": ADAM_2017["inputs"]["t"]}


def test_update_parameters_with_adam_2017_2020(send):
    """Defaults lr 0.01, beta1 0.9, beta2 0.999, eps 1e-8 (the function's), t = 2. v and s at the printed
    precision. The parameters' table was printed with epsilon inside the square root: every entry is
    W - lr v_corrected / sqrt(s_corrected + eps), from the route's own corrected moments, at the printed precision,
    while the route follows the stated formula (torch.optim's Adam, 1e-10): W2[2][1] = -1.0924499074, 4.5e-7
    from the printed -1.09245036."""
    request = _adam_2017_body()
    body = send("/v1/optimizer-step", request)
    for name in ("v", "s"):
        for key, want in ADAM_2017["expected"][name].items():
            assert_printed(body["state"][name][key], want, f"{name}[{key}]")
    assert body["t"] == 2
    with so.torch_threads(1):
        ref = so.optimizer_step("adam", "deeplearning_ai", request["params"], request["grads"], None, {}, 2)
    for key in ("W1", "b1", "W2", "b2"):
        so.assert_close(body["params"][key], ref.params[key], key)
        inside = (np.asarray(request["params"][key]) - 0.01 * np.asarray(body["v_corrected"][f"d{key}"])
                  / np.sqrt(np.asarray(body["s_corrected"][f"d{key}"]) + 1e-8))
        assert_printed(inside, ADAM_2017["expected"][key], f"{key} (epsilon inside the square root)")
    W2, printed = np.asarray(body["params"]["W2"]), np.asarray(ADAM_2017["expected"]["W2"])
    assert W2[2, 1] == pytest.approx(-1.0924499074, abs=5e-11)
    assert abs(W2[2, 1] - printed[2, 1]) > 4e-7


def test_adam_2017_table_is_graded_as_epsilon_inside_the_square_root(send):
    """The printed table, sent as a student's answer at 1e-8: W2 is wrong by the stated formula and the grader
    names the mistake that made it; the other printed parameters are correct."""
    table = {f"params.{k}": ADAM_2017["expected"][k] for k in ("W1", "b1", "W2", "b2")}
    out = send("/v1/grade", {**_adam_2017_body(), "task": "optimizer_step", "submission": table,
                             "rtol": 1e-8, "atol": 1e-8})
    keys = {k["key"]: k for k in out["result"]["keys"]}
    assert keys["params.W2"]["status"] == "incorrect"
    assert keys["params.W2"]["diagnosis"]["code"] == "epsilon_inside_sqrt"
    assert keys["params.W2"]["wrong_entries"] == 1
    assert [keys[k]["status"] for k in ("params.W1", "params.b1", "params.b2")] == ["correct"] * 3


def test_update_parameters_with_adam_2021(send):
    """lr 0.02, beta1 0.8, beta2 0.888, eps 1e-2, t = 2; public_tests checks the first rows of v and s and the
    corrected moments as v / (1 - beta1^t), s / (1 - beta2^t)."""
    case = C2W2["update_parameters_with_adam_2021"]
    i = case["inputs"]
    params, grads = _dlai_params(i)
    body = send("/v1/optimizer-step", {"optimizer": "adam", "params": params, "grads": grads, "t": i["t"],
                                       "learning_rate": i["learning_rate"], "beta1": i["beta1"],
                                       "beta2": i["beta2"], "epsilon": i["epsilon"]})
    for key in ("W1", "b1", "W2", "b2"):
        assert_printed(body["params"][key], case["expected"][key], key)
    for name, beta in (("v", i["beta1"]), ("s", i["beta2"])):
        for key, row in case["expected"][f"{name}_first_row"].items():
            got = np.asarray(body["state"][name][key])
            assert_printed(got[0], row, f"{name}[{key}][0]")
            so.assert_close(body[f"{name}_corrected"][key], got / (1 - beta ** i["t"]), f"{name}_corrected", 1e-15)


def test_update_lr(send):
    i = C2W2["update_lr_2021"]["inputs"]
    body = send("/v1/optimizer-step", {"optimizer": "sgd", "params": {"w": [1.0]}, "grads": {"dw": [1.0]},
                                       "learning_rate": i["learning_rate0"], "learning_rate_decay": {
                                           "kind": "inverse_time", "epoch": i["epoch_num"],
                                           "decay_rate": i["decay_rate"]}})
    assert_printed(body["learning_rate"], C2W2["update_lr_2021"]["expected"]["learning_rate"], "learning_rate")
    assert_printed(body["params"]["w"], [1.0 - body["learning_rate"]], "w, stepped with the decayed rate")


@pytest.mark.parametrize("k", range(len(C2W2["schedule_lr_decay_2021"]["inputs"])))
def test_schedule_lr_decay(send, k):
    case = C2W2["schedule_lr_decay_2021"]
    i, want = case["inputs"][k], case["expected"][k]
    body = send("/v1/optimizer-step", {"optimizer": "sgd", "params": {"w": [1.0]}, "grads": {"dw": [1.0]},
                                       "learning_rate": i["learning_rate0"], "learning_rate_decay": {
                                           "kind": "scheduled", "epoch": i["epoch_num"],
                                           "decay_rate": i["decay_rate"], "time_interval": i["time_interval"]}})
    if "isclose" in want["from"]:
        assert np.isclose(body["learning_rate"], want["learning_rate"])  # the course's own check: truncated
    else:
        assert_printed(body["learning_rate"], want["learning_rate"], "learning_rate")


# --- cs231n optim.py --------------------------------------------------------------------------------------

def test_cs231n_sgd_momentum(send):
    case = OPTIM["sgd_momentum"]
    i = case["inputs"]
    body = send("/v1/optimizer-step", {"optimizer": "momentum", "convention": "cs231n", "params": {"w": i["w"]},
                                       "grads": {"dw": i["dw"]}, "state": {"velocity": {"dw": i["velocity"]}},
                                       "learning_rate": i["learning_rate"]})
    assert_printed(body["params"]["w"], case["expected"]["expected_next_w"], "next_w")
    assert_printed(body["state"]["velocity"]["dw"], case["expected"]["expected_velocity"], "velocity")


def test_cs231n_rmsprop(send):
    case = OPTIM["rmsprop"]
    i = case["inputs"]
    body = send("/v1/optimizer-step", {"optimizer": "rmsprop", "convention": "cs231n", "params": {"w": i["w"]},
                                       "grads": {"dw": i["dw"]}, "state": {"cache": {"dw": i["cache"]}},
                                       "learning_rate": i["learning_rate"]})
    assert_printed(body["params"]["w"], case["expected"]["expected_next_w"], "next_w")
    assert_printed(body["state"]["cache"]["dw"], case["expected"]["expected_cache"], "cache")


def test_cs231n_adam_increments_t_before_use(send):
    """config t = 5 is sent; the bias correction uses t = 6, which comes back as t."""
    case = OPTIM["adam"]
    i = case["inputs"]
    body = send("/v1/optimizer-step", {"optimizer": "adam", "convention": "cs231n", "params": {"w": i["w"]},
                                       "grads": {"dw": i["dw"]}, "state": {"m": {"dw": i["m"]}, "v": {"dw": i["v"]}},
                                       "t": i["t_in_config"], "learning_rate": i["learning_rate"]})
    assert body["t"] == i["t_used"] == 6
    assert_printed(body["params"]["w"], case["expected"]["expected_next_w"], "next_w")
    assert_printed(body["state"]["m"]["dw"], case["expected"]["expected_m"], "m")
    assert_printed(body["state"]["v"]["dw"], case["expected"]["expected_v"], "v")


# --- cs231n layers ----------------------------------------------------------------------------------------

def test_cs231n_affine_forward(send):
    """x reshaped to (N, D) = (2, 120), w (D, M) = (120, 3), b (3,): examples first, weights in_out."""
    i = FC["affine_forward"]["inputs"]
    body = send("/v1/layer/forward", {"layer": {"W": i["w_120x3"], "b": i["b"]}, "A_prev": i["x_flat_2x120"],
                                      "layout": "examples_first", "weight_layout": "in_out"})
    assert_printed(body["Z"], FC["affine_forward"]["expected"]["correct_out"], "out")


def _columns(a) -> tuple[np.ndarray, np.ndarray]:
    a = so.as_array(a)
    return a.mean(axis=0), a.std(axis=0)


@pytest.mark.parametrize("which,gamma,beta", [("after_gamma1_beta0", [1.0, 1.0, 1.0], [0.0, 0.0, 0.0]),
                                              ("after_gamma123_beta111213", [1.0, 2.0, 3.0], [11.0, 12.0, 13.0])])
def test_cs231n_batchnorm_forward_train(send, which, gamma, beta):
    """The notebook prints the batch's means and stds (the cache's mean and sqrt(var)) and those of the output
    (a student run's printout; ~1e-17 means are rounding noise, tested as |mean - beta| < 1e-12)."""
    case = NORM["batchnorm_forward_train"]
    body = send("/v1/layer/forward", {"layer": {"type": "batchnorm", "gamma": gamma, "beta": beta},
                                      "A_prev": case["inputs"]["a"], "layout": "examples_first"})
    assert_printed(body["cache"]["mean"], case["expected"]["before"]["means"], "before: means")
    assert_printed(np.sqrt(body["cache"]["var"]), case["expected"]["before"]["stds"], "before: stds")
    means, stds = _columns(body["Z"])
    assert np.abs(means - beta).max() < 1e-12
    assert_printed(stds, case["expected"][which]["stds"], f"{which}: stds")
    assert set(body["state"]) == {"running_mean", "running_var"}


@pytest.mark.parametrize("which,gamma,beta", [("after_gamma1_beta0", 1.0, 0.0), ("after_gamma3_beta5", 3.0, 5.0)])
def test_cs231n_layernorm_forward(send, which, gamma, beta):
    """Each example (row) normalised over its 3 features: the cache's per-example mean and var, and the
    output's row statistics."""
    case = NORM["layernorm_forward"]
    body = send("/v1/layer/forward", {"layer": {"type": "layernorm", "gamma": [gamma] * 3, "beta": [beta] * 3},
                                      "A_prev": case["inputs"]["a"], "layout": "examples_first"})
    assert np.shape(body["cache"]["mean"]) == (4, 1)
    assert_printed(np.ravel(body["cache"]["mean"]), case["expected"]["before"]["means"], "before: means")
    assert_printed(np.sqrt(np.ravel(body["cache"]["var"])), case["expected"]["before"]["stds"], "before: stds")
    Z = so.as_array(body["Z"])
    assert np.abs(Z.mean(axis=1) - beta).max() < 1e-12
    assert_printed(Z.std(axis=1), case["expected"][which]["stds"], f"{which}: stds")


def test_cs231n_batchnorm_backward_inputs(send):
    """The notebook's batchnorm_backward check inputs (it publishes relative errors only): the route, as cs231n
    calls it (examples first, dout already dJ/dout: `mean`), against the torch oracle."""
    i = NORM["batchnorm_backward_gradcheck_inputs"]["inputs"]
    x, dout = np.asarray(i["x"]), np.asarray(i["dout"])
    body = send("/v1/layer/backward", {"layer": {"type": "batchnorm", "gamma": i["gamma"], "beta": i["beta"]},
                                       "A_prev": x, "dZ": dout, "layout": "examples_first",
                                       "intermediates": "mean"})
    layer = so.StepLayer("batchnorm", {"gamma": np.asarray(i["gamma"]).reshape(-1, 1),
                                       "beta": np.asarray(i["beta"]).reshape(-1, 1)}, "linear",
                         hyper=dict(so.NORM_DEFAULTS))
    with so.torch_threads(1):
        ref = so.layer_backward(layer, x.T, dZ=dout.T, intermediates="mean")
    so.assert_close(body["dA_prev"], ref["dA_prev"].T, "dx")
    so.assert_close(body["dgamma"], ref["dgamma"].reshape(-1), "dgamma")
    so.assert_close(body["dbeta"], ref["dbeta"].reshape(-1), "dbeta")

"""The layer kinds beyond the random oracle: central differences over gamma and beta, batchnorm's exactness at
m = 1 and for a constant feature, the hinge at a margin of exactly 0, every bad input as a located 422 that names
the fix, units that fail at construction (and at import), each kind's grading diagnoses against an independent
student implementation, /v1/explain through batchnorm and layernorm hidden layers, /v1 and OpenAPI.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import sys

import numpy as np
import orjson
import pytest

from service.engine import ACTIVATIONS, COSTS, KINDS
from service.engine.activations import Activation
from service.engine.costs import Cost
from service.engine.kinds import Kind
from service.engine.kinds.base import register
from tests.oracle import KindLayer, KindsCase, as_array, assert_close, check_kinds_response

ROUTES = ("/v1/gradients", "/v1/grade", "/v1/gradient-check", "/v1/explain")


def _col(a) -> np.ndarray:
    return np.asarray(a, dtype=np.float64).reshape(-1, 1)


def norm_network(layout: str = "features_first", weight_layout: str = "out_in") -> KindsCase:
    """dense relu -> batchnorm (train) tanh -> batchnorm (test) leaky_relu -> layernorm sigmoid -> dense sigmoid, BCE,
    with L2 and dropout (two of the four masks null): every kind and mode in one small network."""
    rng = np.random.default_rng(11)
    n = 4
    layers = [
        KindLayer("dense", {"W": rng.normal(size=(n, 3)) / 2, "b": rng.normal(0, 0.3, (n, 1))}, "relu"),
        KindLayer("batchnorm", {"gamma": rng.normal(1, 0.3, (n, 1)), "beta": rng.normal(0, 0.3, (n, 1))}, "tanh",
                  hyper={"momentum": 0.8}, vector=frozenset({"gamma"})),
        KindLayer("batchnorm", {"gamma": rng.normal(1, 0.3, (n, 1)), "beta": rng.normal(0, 0.3, (n, 1))},
                  "leaky_relu", hyper={"mode": "test", "eps": 1e-3},
                  state={"running_mean": rng.normal(0, 0.3, (n, 1)), "running_var": rng.uniform(0.5, 2, (n, 1))}),
        KindLayer("layernorm", {"gamma": rng.normal(1, 0.3, (n, 1)), "beta": rng.normal(0, 0.3, (n, 1))}, "sigmoid",
                  vector=frozenset({"beta"})),
        KindLayer("dense", {"W": rng.normal(size=(1, n)), "b": np.zeros((1, 1))}, "sigmoid", vector=frozenset({"b"})),
    ]
    m = 5
    masks = [None, (rng.random((n, m)) < 0.7).astype(float), None, (rng.random((n, m)) < 0.7).astype(float)]
    return KindsCase(seed=11, layers=layers, X=rng.normal(size=(3, m)), Y=np.array([[0.0, 1, 1, 0, 1]]),
                     y_format="flat", cost="binary_cross_entropy", layout=layout, weight_layout=weight_layout,
                     intermediates="per_example", l2=0.3, keep_prob=0.8, masks=masks, include_caches=True)


NORM_PARAMS = {f"d{p}{l}" for l in (2, 3, 4) for p in ("gamma", "beta")}


# --- central differences over gamma and beta ------------------------------------------------------------------

@pytest.mark.parametrize("layout, weight_layout", [("features_first", "out_in"), ("examples_first", "in_out")])
def test_gradient_check_covers_every_parameter_of_every_kind(post, layout, weight_layout):
    case = norm_network(layout, weight_layout)
    status, out = post(case.request())
    assert status == 200
    check_kinds_response(case, out)
    status, res = post({**case.request(), "epsilon": 1e-6}, path="/v1/gradient-check")
    assert status == 200, res
    names = {p["name"]: p for p in res["parameters"]}
    assert set(names) == {"dW1", "db1", "dW5", "db5"} | NORM_PARAMS
    assert res["passed"] and all(p["passed"] and p["entries_checked"] == p["entries_total"] for p in names.values())
    assert res["entries_total"] == 4 * 3 + 4 + 4 + 1 + 6 * 4
    assert max(names[k]["difference"] for k in NORM_PARAMS) < 1e-7


def test_gradient_check_catches_a_wrong_dgamma(post):
    """A submitted dgamma 1% off fails the check at that parameter only."""
    case = norm_network()
    _, out = post(case.request())
    grads = {k: v for k, v in out["gradients"].items() if not k.startswith(("dZ", "dA"))}
    grads["dgamma3"] = (as_array(grads["dgamma3"]) * 1.01).tolist()
    status, res = post({**case.request(), "gradients": grads}, path="/v1/gradient-check")
    assert status == 200 and res["checked"] == "submission"
    failed = {p["name"] for p in res["parameters"] if not p["passed"]}
    assert failed == {"dgamma3"} and not res["passed"]
    assert res["worst"][0]["parameter"] == "dgamma3" and len(res["worst"][0]["index"]) == 2  # sent as a column


def test_central_differences_over_gamma_and_beta(post):
    """(J(theta + h e_i) - J(theta - h e_i)) / 2h through /v1/gradients' cost, for every entry of every gamma and beta,
    against the returned dgamma and dbeta: the course's difference below 1e-7 and every entry within 1e-9."""
    case = norm_network()
    body = case.request()
    _, out = post(body)
    h = 1e-6
    for l in (2, 3, 4):
        for name in ("gamma", "beta"):
            analytic = as_array(out["gradients"][f"d{name}{l}"]).reshape(-1)
            sent = as_array(body["layers"][l - 1][name])
            numeric = np.empty(sent.size)
            for i in range(sent.size):
                J = []
                for step in (h, -h):
                    moved = copy.deepcopy(body)
                    value = sent.reshape(-1).copy()
                    value[i] += step
                    moved["layers"][l - 1][name] = value.reshape(sent.shape).tolist()
                    status, r = post(moved)
                    assert status == 200
                    J.append(r["cost"])
                numeric[i] = (J[0] - J[1]) / (2 * h)
            difference = np.linalg.norm(analytic - numeric) / (np.linalg.norm(analytic) + np.linalg.norm(numeric))
            assert difference < 1e-7 and np.max(np.abs(analytic - numeric)) < 1e-9, (f"d{name}{l}", analytic, numeric)


# --- exactness: m = 1, a constant feature, a constant example ---------------------------------------------------

def _bn_case(X: np.ndarray, layout: str, gamma, beta, first_dense: bool) -> KindsCase:
    rng = np.random.default_rng(3)
    D = len(gamma)
    layers = [KindLayer("dense", {"W": rng.normal(size=(D, X.shape[0])), "b": rng.normal(0, 0.3, (D, 1))}, "relu")
              ] if first_dense else []
    layers += [KindLayer("batchnorm", {"gamma": _col(gamma), "beta": _col(beta)}, "tanh"),
               KindLayer("dense", {"W": rng.normal(size=(2, D)), "b": np.zeros((2, 1))}, "linear")]
    return KindsCase(seed=0, layers=layers, X=X, Y=rng.normal(size=(2, X.shape[1])), y_format="matrix",
                     cost="mean_squared_error", layout=layout, weight_layout="out_in", intermediates="per_example",
                     l2=0.0, keep_prob=None, masks=None, include_caches=True)


@pytest.mark.parametrize("layout", ["features_first", "examples_first"])
def test_batchnorm_with_one_example_is_exact(post, layout):
    """m = 1: xhat = 0, so Z = beta, dgamma = 0 and the input's gradient is exactly 0 (no NaN), and so is every
    gradient below the layer; running_var = 0.9 * 1 + 0.1 * 0."""
    case = _bn_case(np.array([[0.3], [-1.2], [2.0]]), layout, [1.5, -0.7, 2.0, 1.0], [0.1, -0.2, 0.3, 0.0], True)
    status, out = post(case.request())
    assert status == 200 and out["warnings"] == []
    check_kinds_response(case, out)
    g = out["gradients"]
    assert as_array(out["caches"]["Z2"]).reshape(-1).tolist() == [0.1, -0.2, 0.3, 0.0]
    assert as_array(g["dgamma2"]).reshape(-1).tolist() == [0.0] * 4
    assert as_array(g["dbeta2"]).reshape(-1).tolist() == as_array(g["dZ2"]).reshape(-1).tolist()
    for key in ("dA1", "dZ1", "dW1", "db1", "dA0"):
        assert not np.any(as_array(g[key])), key
    assert as_array(out["state"]["2"]["running_var"]).reshape(-1).tolist() == [0.9] * 4


def test_batchnorm_constant_feature_is_exact(post):
    """A feature constant over the batch (var = 0): its xhat is 0, Z = beta, dgamma = 0 exactly, and its input's
    gradient is gamma / sqrt(eps) (dZ - mean dZ), finite; the other features match torch."""
    X = np.array([[2.0, 2.0, 2.0, 2.0], [0.5, -1.0, 0.25, 3.0], [1.0, 0.0, -2.0, 0.5]])
    gamma = [1.5, -0.7, 2.0]
    case = _bn_case(X, "features_first", gamma, [0.1, -0.2, 0.3], False)
    status, out = post(case.request())
    assert status == 200
    check_kinds_response(case, out)
    g = out["gradients"]
    assert as_array(out["caches"]["Z1"])[0].tolist() == [0.1] * 4
    assert as_array(g["dgamma1"])[0, 0] == 0.0
    dZ = as_array(g["dZ1"])[0]
    assert_close(as_array(g["dA0"])[0], gamma[0] / np.sqrt(1e-5) * (dZ - dZ.mean()), "dA0 of the constant feature",
                 1e-12, 1e-15)
    assert as_array(out["state"]["1"]["running_var"])[0, 0] == 0.9


@pytest.mark.parametrize("shape", ["one_feature", "constant_example"])
def test_layernorm_degenerate_inputs_are_exact(post, shape):
    """One feature: xhat = 0, Z = beta, dx = 0 exactly. An example whose features are all equal: its dx is
    (g - mean_d g) / sqrt(eps) with g = dZ gamma."""
    rng = np.random.default_rng(4)
    X = rng.normal(size=(1, 3)) if shape == "one_feature" else np.array([[1.0, 0.2], [1.0, -0.4], [1.0, 1.5]])
    D, m = X.shape
    gamma, beta = rng.normal(1, 0.3, (D, 1)), rng.normal(0, 0.3, (D, 1))
    layers = [KindLayer("layernorm", {"gamma": gamma, "beta": beta}, None),
              KindLayer("dense", {"W": rng.normal(size=(2, D)), "b": np.zeros((2, 1))}, "linear")]
    case = KindsCase(seed=0, layers=layers, X=X, Y=rng.normal(size=(2, m)), y_format="matrix",
                     cost="mean_squared_error", layout="features_first", weight_layout="out_in",
                     intermediates="per_example", l2=0.0, keep_prob=None, masks=None, include_caches=True)
    status, out = post(case.request())
    assert status == 200
    check_kinds_response(case, out)
    dA0, dZ = as_array(out["gradients"]["dA0"]), as_array(out["gradients"]["dZ1"])
    if shape == "one_feature":
        assert as_array(out["caches"]["Z1"]).tolist() == [[beta[0, 0]] * m]
        assert not dA0.any() and as_array(out["gradients"]["dgamma1"]).tolist() == [[0.0]]
    else:
        assert as_array(out["caches"]["Z1"])[:, 0].tolist() == beta.reshape(-1).tolist()
        g = dZ[:, 0] * gamma.reshape(-1)
        assert_close(dA0[:, 0], (g - g.mean()) / np.sqrt(1e-5), "dA0 of the constant example", 1e-12, 1e-15)


# --- the hinge at a margin of exactly 0 ----------------------------------------------------------------------

@pytest.mark.parametrize("labels", ["indices", "one_hot"])
def test_hinge_margin_exactly_zero_has_zero_gradient(post, labels):
    """z_j - z_y + 1 = 0 exactly gets gradient 0 (cs231n's svm_loss and torch's multi_margin_loss agree), and the
    true class's count leaves it out; J counts it as 0."""
    X = np.array([[0.5, 2.0, 1.0, 0.0, 3.0],    # identity layer: Z = X
                  [1.5, 0.25, 1.0, 1.0, 2.0],
                  [-3.0, 0.0, 0.0, 0.0, 5.0]])
    y = [1, 0, 2, 0, 0]  # example 0: margin of class 0 exactly 0; example 4: class 1 exactly 0, class 2 is 3
    Y = np.zeros((3, 5))
    Y[y, range(5)] = 1.0
    layer = KindLayer("dense", {"W": np.eye(3), "b": np.zeros((3, 1))}, "linear")
    case = KindsCase(seed=0, layers=[layer], X=X, Y=Y, y_format="indices" if labels == "indices" else "matrix",
                     cost="multiclass_hinge", layout="features_first", weight_layout="out_in",
                     intermediates="per_example", l2=0.0, keep_prob=None, masks=None, include_caches=False)
    status, out = post(case.request())
    assert status == 200
    check_kinds_response(case, out)  # the oracle differentiates relu(margin): 0 at 0, like multi_margin_loss
    assert out["cost"] == 2.0  # (0 + 0 + 4 + 3 + 3) / 5
    assert as_array(out["gradients"]["dZ1"]).tolist() == [[0, 0, 1, -2, -1], [0, 0, 1, 1, 0], [0, 0, -2, 1, 1]]
    assert out["gradients"]["dA1"] == out["gradients"]["dZ1"]


def test_hinge_says_what_it_does_at_a_zero_margin(client):
    hinge = next(c for c in orjson.loads(client.get("/v1").data)["costs"] if c["name"] == "multiclass_hinge")
    assert "0 where a margin is exactly 0" in hinge["dA_formula"] and hinge["output_activations"] == ["linear"]


# --- bad input: a located 422 that names the fix ---------------------------------------------------------------

BASE = {"layers": [{"W": [[1.0, 0.5, -0.2], [0.3, -1.0, 0.8], [0.1, 0.2, 0.3], [0.5, 0.5, -0.5]], "b": [0, 0, 0, 0],
                    "activation": "relu"},
                   {"type": "batchnorm", "gamma": [1.0, 2.0, 0.5, 1.0], "beta": [0, 0.1, 0, 0], "activation": "tanh"},
                   {"type": "layernorm", "gamma": [1.0, 1, 1, 1], "beta": [0.0, 0, 0, 0]},
                   {"W": [[0.2, -0.1, 0.4, 0.3], [0.1, 0.1, -0.3, 0.2]], "b": [0, 0], "activation": "softmax"}],
        "X": [[0.5, -1, 2], [1, 0, -1], [0.3, 0.2, 0.1]], "Y": [0, 1, 1], "cost": "categorical_cross_entropy"}


def _layer(i, **fields):
    def change(body):
        body["layers"][i].update(fields)
    return change


def _drop(i, name):
    def change(body):
        del body["layers"][i][name]
    return change


def _top(**fields):
    def change(body):
        body.update(fields)
    return change


def _transpose(*layers):
    def change(body):
        for i in layers:
            body["layers"][i]["W"] = np.array(body["layers"][i]["W"]).T.tolist()
    return change


def _hinge_output(body):
    body.update(cost="multiclass_hinge")
    body["layers"][3]["activation"] = "linear"


RUNNING = {"running_mean": [0.0] * 4, "running_var": [1.0] * 4}

# (id, change, {location: (type, a fragment of its message that names the fix)}): every error of the response.
BAD = [
    ("unknown_kind", _layer(1, type="conv"),
     {"layers[1].type": ("unknown_kind", "the kinds are dense, batchnorm, layernorm")}),
    ("kind_not_a_string", _layer(1, type=3), {"layers[1].type": ("unknown_kind", "the kinds are dense, batchnorm")}),
    ("gamma_on_dense", _layer(0, gamma=[1.0] * 4),
     {"layers[0].gamma": ("extra_forbidden", "it is a field of batchnorm, layernorm, spatial_batchnorm and groupnorm layers (set `type`")}),
    ("W_on_batchnorm", _layer(1, W=[[1.0]]), {"layers[1].W": ("extra_forbidden", "a field of dense and conv2d layers")}),
    ("running_mean_on_layernorm", _layer(2, running_mean=[0.0] * 4),
     {"layers[2].running_mean": ("extra_forbidden", "a field of batchnorm and spatial_batchnorm layers")}),
    ("mode_on_layernorm", _layer(2, mode="test"), {"layers[2].mode": ("extra_forbidden", "a field of batchnorm")}),
    ("momentum_on_layernorm", _layer(2, momentum=0.5),
     {"layers[2].momentum": ("extra_forbidden", "a field of batchnorm")}),
    ("gamma_missing", _drop(1, "gamma"), {"layers[1].gamma": ("missing", "'gamma' is missing")}),
    ("bn_gamma_short", _layer(1, gamma=[1.0, 2.0]),
     {"layers[1].gamma": ("shape_mismatch", "has 4 features because layers[0].W has 4 rows: send (4,) or (4, 1)")}),
    ("bn_beta_long_column", _layer(1, beta=[[1.0], [2.0], [0], [0], [0]]),
     {"layers[1].beta": ("shape_mismatch", "beta is (5, 1)")}),
    ("bn_gamma_matrix", _layer(1, gamma=[[1.0, 2.0]] * 4),
     {"layers[1].gamma": ("shape_mismatch", "send (4,) or (4, 1)")}),
    ("ln_gamma_short", _layer(2, gamma=[1.0] * 3),
     {"layers[2].gamma": ("shape_mismatch", "because layers[1] keeps its input's 4 features: send (4,) or (4, 1)")}),
    ("running_mean_short", _layer(1, running_mean=[0.0] * 3),
     {"layers[1].running_mean": ("shape_mismatch", "send (4,) or (4, 1)")}),
    ("running_var_long", _layer(1, mode="test", running_mean=[0.0] * 4, running_var=[1.0] * 5),
     {"layers[1].running_var": ("shape_mismatch", "send (4,) or (4, 1)")}),
    ("test_without_statistics", _layer(1, mode="test"),
     {"layers[1].running_mean": ("missing_running_statistics", "send running_mean (the value training left"),
      "layers[1].running_var": ("missing_running_statistics", "or use mode train")}),
    ("test_without_running_var", _layer(1, mode="test", running_mean=[0.0] * 4),
     {"layers[1].running_var": ("missing_running_statistics", "send running_var")}),
    ("negative_running_var_test", _layer(1, mode="test", running_mean=[0.0] * 4, running_var=[1.0, -1e-5, 1, 1]),
     {"layers[1].running_var": ("value_domain", "variances, which are >= 0, but entry 1 is -1e-05")}),
    ("negative_running_var_train", _layer(1, running_var=[-1.0, 1, 1, 1]),
     {"layers[1].running_var": ("value_domain", "or leave it out: it starts at ones")}),
    ("bn_eps_zero", _layer(1, eps=0), {"layers[1].eps": ("greater_than", "greater than 0")}),
    ("bn_eps_negative", _layer(1, eps=-1e-5), {"layers[1].eps": ("greater_than", "greater than 0")}),
    ("ln_eps_zero", _layer(2, eps=0.0), {"layers[2].eps": ("greater_than", "greater than 0")}),
    ("momentum_above_1", _layer(1, momentum=1.5),
     {"layers[1].momentum": ("less_than_equal", "less than or equal to 1")}),
    ("momentum_below_0", _layer(1, momentum=-0.1),
     {"layers[1].momentum": ("greater_than_equal", "greater than or equal to 0")}),
    ("unknown_mode", _layer(1, mode="eval"), {"layers[1].mode": ("literal_error", "'train' or 'test'")}),
    ("W_held_in_out_sent_as_out_in", _transpose(0),
     {"layers[0].W": ("shape_mismatch", "W is (3, 4) but needs (4, 3): did you mean weight_layout in_out?")}),
    ("W_held_in_out_and_b_short", lambda b: (_transpose(0)(b), b["layers"][0].update(b=[0.0] * 3)),
     {"layers[0].W": ("shape_mismatch", "did you mean weight_layout in_out?"),
      "layers[0].b": ("shape_mismatch", "b is (3) but W has 4 columns: send (4, 1) or (4,)")}),
    ("out_in_weights_with_in_out", _top(weight_layout="in_out"),
     {"layers[0].W": ("shape_mismatch", "W is (4, 3) but needs (3, 4): did you mean weight_layout out_in?"),
      "layers[3].W": ("shape_mismatch", "W is (2, 4) but needs (4, 2): did you mean weight_layout out_in?")}),
    ("in_out_weights_that_do_not_chain", lambda b: (_top(weight_layout="in_out")(b), _transpose(3)(b),
                                                    b["layers"][0].update(W=[[1.0, 2.0, 0.5, 0.0]] * 2)),
     {"layers[0].W": ("shape_mismatch", "W is (2, 4): it needs 3 rows because X has 3 features (weight_layout in_out "
                                        "holds W as (n_in, n_out))")}),
    ("unknown_weight_layout", _top(weight_layout="row_major"),
     {"weight_layout": ("literal_error", "'out_in' or 'in_out'")}),
    ("softmax_on_hidden_batchnorm", _layer(1, activation="softmax"),
     {"layers[1].activation": ("activation_placement", "output layer only")}),
    ("slope_on_default_activation", _layer(2, negative_slope=0.2),
     {"layers[2].negative_slope": ("extra_forbidden", "applies to leaky_relu only, not linear")}),
    ("dense_without_activation", _drop(0, "activation"),
     {"layers[0].activation": ("missing", "'activation' is missing")}),
    ("hinge_with_softmax", _top(cost="multiclass_hinge"), {"cost": ("cost_pairing", "needs a linear output layer")}),
    ("hinge_label_out_of_range", lambda b: (_hinge_output(b), b.update(Y=[0, 1, 2])),
     {"Y[2]": ("label_domain", "integers in [0, 2)")}),
    ("hinge_soft_labels", lambda b: (_hinge_output(b), b.update(Y=[[0.5, 1, 0], [0.5, 0, 1]])),
     {"Y": ("label_domain", "one-hot label columns")}),
    ("null_masks_wrong_count", _top(dropout={"keep_prob": 0.5, "masks": [None, None]}),
     {"dropout.masks": ("shape_mismatch", "one mask per hidden layer: 3 for 4 layers, got 2")}),
    ("mask_of_wrong_shape_after_nulls", _top(dropout={"keep_prob": 0.5, "masks": [None, None, [[1.0, 0, 1]] * 3]}),
     {"dropout.masks[2]": ("shape_mismatch", "mask D3 is (3, 3) but A3 is (4, 3)")}),
]


def test_the_base_of_the_bad_inputs_is_valid(post):
    assert post(BASE)[0] == 200
    for extra in ({"mode": "test", **RUNNING}, RUNNING):
        layers = [BASE["layers"][0], {**BASE["layers"][1], **extra}, *BASE["layers"][2:]]
        assert post({**BASE, "layers": layers})[0] == 200


@pytest.mark.parametrize("change, errors", [pytest.param(c, e, id=i) for i, c, e in BAD])
def test_bad_input_is_a_located_422_naming_the_fix(client, change, errors):
    body = copy.deepcopy(BASE)
    change(body)
    r = client.post("/v1/gradients", data=orjson.dumps(body), content_type="application/json")
    assert r.status_code == 422 and r.mimetype == "application/problem+json"
    problem = orjson.loads(r.data)
    got = {e["location"]: (e["type"], e["message"]) for e in problem["errors"]}
    assert set(got) == set(errors), problem["errors"]
    for location, (kind, fragment) in errors.items():
        assert got[location][0] == kind, (location, got[location])
        assert fragment in got[location][1], (location, got[location][1])


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("case_id", ["unknown_kind", "test_without_statistics", "W_held_in_out_sent_as_out_in"])
def test_every_route_reports_bad_kinds_the_same_way(post, route, case_id):
    _, change, errors = next(b for b in BAD if b[0] == case_id)
    body = copy.deepcopy(BASE)
    change(body)
    if route == "/v1/grade":
        body["submission"] = {"cost": 0.5}
    status, problem = post(body, path=route)
    assert status == 422
    assert {e["location"]: e["type"] for e in problem["errors"]} == {k: v[0] for k, v in errors.items()}


# --- units with a missing piece fail at construction, and at import ----------------------------------------------

def _registries():
    return {name: dict(reg) for name, reg in (("kinds", KINDS), ("costs", COSTS), ("activations", ACTIVATIONS))}


@pytest.mark.parametrize("change, message", [
    ({"backward": None}, "backward is required"),
    ({"check": None}, "check is required"),
    ({"formulas": None}, "formulas is required"),
    ({"new_state": None}, "has running statistics but no new_state"),
    ({"formulas": dataclasses.replace(KINDS["batchnorm"].formulas, grads={"gamma": ("g", "g")})},
     r"no gradient formula for \['beta'\]"),
    ({"input_rank": 2}, "input_rank and output_rank must be 1 or 3"),
])
def test_a_kind_missing_a_piece_fails_at_construction(change, message):
    before = _registries()
    with pytest.raises(TypeError, match=message):
        dataclasses.replace(KINDS["batchnorm"], name="broken", **change)
    fields = {f.name: getattr(KINDS["layernorm"], f.name) for f in dataclasses.fields(Kind)}
    del fields["explain_input"]
    with pytest.raises(TypeError):
        Kind(**fields)  # a field left out entirely
    assert _registries() == before


@pytest.mark.parametrize("change, message", [
    ({"textbook_dA": None}, "textbook_dA must be a function"),
    ({"loss": "J"}, "loss must be a function"),
    ({"title": ""}, "title must be a non-empty text"),
    ({"fused_latex": None}, "fused_latex must be a non-empty text"),
])
def test_a_cost_missing_a_piece_fails_at_construction(change, message):
    before = _registries()
    with pytest.raises(TypeError, match=message):
        dataclasses.replace(COSTS["multiclass_hinge"], name="broken", **change)
    fields = {f.name: getattr(COSTS["multiclass_hinge"], f.name) for f in dataclasses.fields(Cost)}
    del fields["unstable_reason"]
    with pytest.raises(TypeError, match="unstable_reason"):
        Cost(**fields)
    assert _registries() == before


def test_an_activation_missing_a_piece_fails_at_construction():
    before = _registries()
    fields = {f.name: getattr(ACTIVATIONS["tanh"], f.name) for f in dataclasses.fields(Activation)}
    for missing in ("derivative_latex", "mistakes", "forward"):
        with pytest.raises(TypeError, match=missing):
            Activation(**{k: v for k, v in fields.items() if k != missing})
    assert _registries() == before


MODULES = {
    "broken_kind_unit": ("from dataclasses import replace\nfrom service.engine.kinds.base import KINDS, register\n"
                         "register(replace(KINDS['layernorm'], name='broken_norm', backward=None))\n",
                         "backward is required"),
    "broken_cost_unit": ("from dataclasses import replace\nfrom service.engine.costs import COSTS, register\n"
                         "register(replace(COSTS['mean_squared_error'], name='broken_cost', fused_latex=''))\n",
                         "fused_latex must be a non-empty text"),
    "broken_activation_unit": ("from service.engine.activations import Activation, register\n"
                               "register(Activation(name='broken_act', forward=lambda z, s: z, derivative=None,\n"
                               "                    formula='g(z) = z', derivative_formula='1'))\n",
                               "derivative_latex"),
}


@pytest.mark.parametrize("module", MODULES)
def test_a_module_registering_a_broken_unit_fails_at_import(tmp_path, monkeypatch, module):
    """As a new unit's module would be imported by its registry: the import raises and registers nothing."""
    source, message = MODULES[module]
    (tmp_path / f"{module}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    before = _registries()
    try:
        with pytest.raises(TypeError, match=message):
            importlib.import_module(module)
    finally:
        sys.modules.pop(module, None)
    assert _registries() == before


def test_a_kind_registered_twice_is_refused():
    before = _registries()
    with pytest.raises(ValueError, match="registered twice"):
        register(KINDS["batchnorm"])
    assert _registries() == before


# --- grading: each kind's mistakes, planted in an independent implementation ----------------------------------------

EPS = 1e-5


class Student:
    """A cs231n student's network, written here with numpy in cs231n's own layout (x (N, D), w (D, H)):
    affine -> batchnorm -> relu -> layernorm -> affine -> softmax, mean cross-entropy plus 0.5 reg sum(W^2), and
    the mistakes the grader diagnoses, one flag each."""

    def __init__(self, N: int, reg: float = 0.1):
        rng = np.random.RandomState(0)
        D, H, C = 3, 4, 3
        self.N, self.reg = N, reg
        self.X, self.W1, self.b1 = rng.randn(N, D), rng.randn(D, H), 0.1 * rng.randn(H)
        self.g2, self.be2 = 1 + 0.3 * rng.randn(H), 0.2 * rng.randn(H)
        self.g3, self.be3 = 1 + 0.3 * rng.randn(H), 0.2 * rng.randn(H)
        self.W4, self.b4 = rng.randn(H, C), 0.1 * rng.randn(C)
        self.y = np.arange(N) % C

    def body(self) -> dict:
        """The request, with every array exactly as the student holds it."""
        H = self.W1.shape[1]
        return {"layers": [{"W": self.W1, "b": self.b1, "activation": "linear"},
                           {"type": "batchnorm", "gamma": self.g2, "beta": self.be2, "activation": "relu",
                            "running_mean": np.zeros(H), "running_var": np.ones(H)},
                           {"type": "layernorm", "gamma": self.g3, "beta": self.be3},
                           {"W": self.W4, "b": self.b4, "activation": "softmax"}],
                "X": self.X, "Y": self.y.tolist(), "cost": "categorical_cross_entropy", "layout": "examples_first",
                "weight_layout": "in_out", "intermediates": "mean", "l2": self.reg * self.N}

    @staticmethod
    def batchnorm_forward(x, gamma, beta, ddof=0):
        mu, var = x.mean(axis=0), x.var(axis=0, ddof=ddof)
        xhat = (x - mu) / np.sqrt(var + EPS)
        return gamma * xhat + beta, (x, xhat, mu, var, gamma)

    @staticmethod
    def batchnorm_backward(dout, cache, constant_statistics=False, wrong_axis=False):
        """The long form (through dvar and dmu), not the compact one the service uses."""
        x, xhat, mu, var, gamma = cache
        N, std = x.shape[0], np.sqrt(var + EPS)
        dxhat = dout * gamma
        if constant_statistics:
            dx = dxhat / std
        else:
            dvar = np.sum(dxhat * (x - mu) * -0.5 * std ** -3, axis=0)
            dmu = np.sum(-dxhat / std, axis=0) + dvar * np.mean(-2 * (x - mu), axis=0)
            dx = dxhat / std + dvar * 2 * (x - mu) / N + dmu / N
        axis = 1 if wrong_axis else 0
        return dx, np.sum(dout * xhat, axis=axis), np.sum(dout, axis=axis)

    @staticmethod
    def layernorm_forward(x, gamma, beta, axis=1):
        mu, var = x.mean(axis=axis, keepdims=True), x.var(axis=axis, keepdims=True)
        xhat = (x - mu) / np.sqrt(var + EPS)
        return gamma * xhat + beta, (xhat, np.sqrt(var + EPS), gamma, axis)

    @staticmethod
    def layernorm_backward(dout, cache):
        xhat, std, gamma, axis = cache
        D = xhat.shape[axis]
        g = dout * gamma
        dx = (D * g - g.sum(axis=axis, keepdims=True) - xhat * (g * xhat).sum(axis=axis, keepdims=True)) / (D * std)
        return dx, np.sum(dout * xhat, axis=0), np.sum(dout, axis=0)

    def run(self, constant_statistics=False, wrong_axis=False, unbiased=False, layernorm_axis=1,
            forget_mean=False, regularize_gamma=False) -> dict:
        N = self.N
        z1 = self.X @ self.W1 + self.b1
        z2, c2 = self.batchnorm_forward(z1, self.g2, self.be2, ddof=1 if unbiased else 0)
        a2 = np.maximum(z2, 0)
        z3, c3 = self.layernorm_forward(a2, self.g3, self.be3, axis=layernorm_axis)
        s = z3 @ self.W4 + self.b4
        p = np.exp(s - s.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        loss = -np.log(p[np.arange(N), self.y]).mean() + 0.5 * self.reg * (np.sum(self.W1 ** 2) + np.sum(self.W4 ** 2))
        ds = p.copy()
        ds[np.arange(N), self.y] -= 1
        if not forget_mean:
            ds /= N
        dW4, db4, dz3 = z3.T @ ds + self.reg * self.W4, ds.sum(axis=0), ds @ self.W4.T
        da2, dg3, dbe3 = self.layernorm_backward(dz3, c3)
        dz2 = da2 * (z2 > 0)
        dz1, dg2, dbe2 = self.batchnorm_backward(dz2, c2, constant_statistics, wrong_axis)
        if regularize_gamma:
            dg2 = dg2 + self.reg * self.g2
        return {"cost": loss, "AL": p, "dW1": self.X.T @ dz1 + self.reg * self.W1, "db1": dz1.sum(axis=0),
                "dgamma2": dg2, "dbeta2": dbe2, "dgamma3": dg3, "dbeta3": dbe3, "dW4": dW4, "db4": db4,
                "dZ4": ds, "dA3": dz3, "dZ3": dz3, "dA2": da2, "dZ2": dz2, "dA1": dz1, "dZ1": dz1,
                "dA0": dz1 @ self.W1.T, "running_mean2": 0.1 * c2[2], "running_var2": 0.9 + 0.1 * c2[3]}


def _grade(post, student: Student, submission: dict) -> dict:
    status, out = post({**student.body(), "submission": submission}, path="/v1/grade")
    assert status == 200, out
    return {k["key"]: (k["status"], k["diagnosis"]["code"] if k["diagnosis"] else None,
                       k["diagnosis"]["layer"] if k["diagnosis"] else None) for k in out["result"]["keys"]}


def test_the_students_right_answers_score_full_marks(post):
    """The independent implementation agrees with the service on every key (L2 on W only, running statistics
    as vectors because the student sent them as vectors)."""
    student = Student(5)
    graded = _grade(post, student, student.run())
    assert len(graded) == 20 and {s for s, _, _ in graded.values()} == {"correct"}


@pytest.mark.parametrize("mistake, keys, code, layer", [
    ({"constant_statistics": True}, ("dA1", "dZ1", "dW1", "db1", "dA0"), "batchnorm_constant_statistics", 2),
    ({"unbiased": True}, ("cost", "AL", "dgamma2", "dbeta2", "dW4", "dA1", "running_var2"),
     "batchnorm_unbiased_variance", 2),
    ({"layernorm_axis": 0}, ("cost", "AL", "dW4", "dgamma3", "dbeta3", "dA0"), "layernorm_wrong_axis", 3),
])
def test_each_kinds_mistake_is_diagnosed(post, mistake, keys, code, layer):
    student = Student(5)
    graded = _grade(post, student, student.run(**mistake))
    for key in keys:
        assert graded[key][1:] == (code, layer), (key, graded[key])
        assert graded[key][0] in ("incorrect", "shape_mismatch"), (key, graded[key])
    right = student.run()
    if "constant_statistics" in mistake:  # the parameters' own gradients do not depend on dx
        assert graded["dgamma2"][0] == graded["dbeta2"][0] == graded["running_var2"][0] == "correct"
    assert {k for k, (s, _, _) in graded.items() if s != "correct"} >= set(keys)
    assert len(graded) == len(right)


def test_dgamma_summed_over_the_wrong_axis_is_diagnosed_when_m_equals_D(post):
    student = Student(4)  # N = H = 4: the wrong sums have the right shape
    graded = _grade(post, student, student.run(wrong_axis=True))
    for key in ("dgamma2", "dbeta2"):
        assert graded[key] == ("incorrect", "batchnorm_grads_wrong_axis", 2), graded[key]
    assert graded["dA1"][0] == "correct"


def test_dgamma_summed_over_the_wrong_axis_is_diagnosed_whatever_its_shape(post):
    student = Student(5)  # N = 5, H = 4: dgamma2 comes back (5,) instead of (4,)
    graded = _grade(post, student, student.run(wrong_axis=True))
    assert graded["dgamma2"] == ("shape_mismatch", "batchnorm_grads_wrong_axis", 2), graded["dgamma2"]


def test_local_diagnoses_on_the_new_keys(post):
    student = Student(5)
    right = student.run()
    forgot = student.run(forget_mean=True)
    graded = _grade(post, student, {
        "dgamma2": forgot["dgamma2"], "dbeta3": forgot["dbeta3"],           # 1/m forgotten in dscores
        "dbeta2": -right["dbeta2"],                                          # sign
        "dgamma3": right["dgamma2"],                                         # the other norm layer's key
        "running_mean2": right["running_mean2"].reshape(-1, 1),             # a column where a vector was sent
        "dW1": right["dW1"] - student.reg * student.W1,                      # L2 forgotten on W
    })
    assert graded["dgamma2"][:2] == graded["dbeta3"][:2] == ("incorrect", "missing_1_over_m")
    assert graded["dbeta2"][:2] == ("incorrect", "sign_flipped")
    assert graded["dgamma3"][:2] == ("incorrect", "layer_index_off_by_one")
    assert graded["running_mean2"][:2] == ("shape_mismatch", "column_vs_vector")
    assert graded["dW1"][:2] == ("incorrect", "missing_l2")


def test_l2_is_not_a_term_of_dgamma(post):
    """L2 applies to W only: a student who regularizes gamma too is wrong, and no missing_l2 is claimed."""
    student = Student(5)
    graded = _grade(post, student, student.run(regularize_gamma=True))
    assert graded["dgamma2"][0] == "incorrect" and graded["dgamma2"][1] != "missing_l2"
    assert graded["dW1"][0] == graded["dgamma3"][0] == "correct"


def test_grading_a_batchnorm_network_of_one_example(post):
    """m = 1: the unbiased-variance hypothesis cannot be made (0/0) and is left out; grading still answers."""
    student = Student(1)
    right = student.run()
    graded = _grade(post, student, {**right, "dgamma3": 2 * right["dgamma3"]})
    assert graded["dgamma3"][0] == "incorrect"
    assert {s for k, (s, _, _) in graded.items() if k != "dgamma3"} == {"correct"}


# --- /v1/explain through the kinds -------------------------------------------------------------------------------

def _bn_backward(dZ, A, gamma, eps):
    """dA = (gamma / (m sigma)) (m dZ - sum dZ - xhat sum(dZ xhat)), over the examples (axis 1)."""
    m = A.shape[1]
    xhat = (A - A.mean(axis=1, keepdims=True)) / np.sqrt(A.var(axis=1, keepdims=True) + eps)
    sigma = np.sqrt(A.var(axis=1, keepdims=True) + eps)
    sums = dZ.sum(axis=1, keepdims=True), (dZ * xhat).sum(axis=1, keepdims=True)
    return gamma / (m * sigma) * (m * dZ - sums[0] - xhat * sums[1])


def _ln_backward(dZ, A, gamma, eps):
    D = A.shape[0]
    sigma = np.sqrt(A.var(axis=0, keepdims=True) + eps)
    xhat = (A - A.mean(axis=0, keepdims=True)) / sigma
    g = dZ * gamma
    return (D * g - g.sum(axis=0, keepdims=True) - xhat * (g * xhat).sum(axis=0, keepdims=True)) / (D * sigma)


@pytest.mark.parametrize("hidden_layer", [1, 2, 3, 4])
def test_explain_tells_the_hidden_step_with_the_kinds_formula(post, hidden_layer):
    """The hidden step dA_h is told by layer h + 1's kind, with its rule and the numbers /v1/gradients returns;
    dA_h recomputed here from dZ_(h+1) and A_h with that kind's formula agrees."""
    case = norm_network()
    body = case.request()
    _, grads = post(body)
    status, story = post({**body, "hidden_layer": hidden_layer}, path="/v1/explain")
    assert status == 200, story
    step = next(s for s in story["steps"] if s["id"] == "hidden_dA")
    h, n = hidden_layer, hidden_layer + 1
    values = step["values"]
    assert values[f"dA{h}"] == grads["gradients"][f"dA{h}"] and values[f"dZ{n}"] == grads["gradients"][f"dZ{n}"]
    layer = case.layers[h]  # layer h + 1
    dZ, A = as_array(values[f"dZ{n}"]), as_array(grads["caches"][f"A{h}"])
    masked = case.masks[h - 1] is not None  # dA_h is taken after the mask (the course's): the kind's rule * D_h / p
    rules = {"batchnorm": f"dA{h} = (gamma{n} / (m sigma)) (m dZ{n} - sum_i dZ{n} - xhat sum_i (dZ{n} xhat))",
             "test": f"dA{h} = dZ{n} gamma{n} / sqrt(running_var + eps)",
             "layernorm": f"dA{h} = (1 / (D sigma)) (D g - sum_d g - xhat sum_d (g xhat)) with g = dZ{n} gamma{n}",
             "dense": f"dA{h} = W{n}^T dZ{n}"}
    kind = "test" if layer.kind == "batchnorm" and layer.mode == "test" else layer.kind
    assert rules[kind] in step["text"]
    assert f"[{h}]" in step["latex"] and "[l]" not in step["latex"]
    if layer.kind == "dense":
        assert as_array(values[f"W{n}"]).tolist() == layer.params["W"].tolist()
        return
    assert as_array(values[f"gamma{n}"]).tolist() == layer.params["gamma"].tolist()
    if kind == "batchnorm":
        want = _bn_backward(dZ, A, layer.params["gamma"], layer.eps)
    elif kind == "test":
        want = dZ * layer.params["gamma"] / np.sqrt(layer.state["running_var"] + layer.eps)
    else:
        want = _ln_backward(dZ, A, layer.params["gamma"], layer.eps)
    if masked:
        want = want * case.masks[h - 1] / case.keep_prob
    assert_close(as_array(values[f"dA{h}"]), want, f"dA{h} by the {kind} formula", 1e-12, 1e-14)
    assert ("dropout mask" in step["text"]) == masked


def test_explain_on_a_single_norm_layer_network(post):
    """A network of one layernorm layer with a linear output: the step about dA0 uses layernorm's rule."""
    rng = np.random.default_rng(2)
    body = {"layers": [{"type": "layernorm", "gamma": rng.normal(1, 0.2, 3), "beta": np.zeros(3)}],
            "X": rng.normal(size=(3, 4)), "Y": rng.normal(size=(3, 4)), "cost": "mean_squared_error"}
    _, grads = post(body)
    status, story = post(body, path="/v1/explain")
    assert status == 200 and story["hidden_layer"] == 0
    step = next(s for s in story["steps"] if s["id"] == "hidden_dA")
    assert "dA0 = (1 / (D sigma))" in step["text"] and step["values"]["dA0"] == grads["gradients"]["dA0"]


# --- /v1 and OpenAPI --------------------------------------------------------------------------------------------

def test_v1_lists_each_kind_with_its_fields(client):
    info = orjson.loads(client.get("/v1").data)
    kinds = {k["name"]: k for k in info["kinds"]}
    assert list(kinds)[:3] == ["dense", "batchnorm", "layernorm"]
    assert [(p["name"], p["l2"]) for p in kinds["dense"]["params"]] == [("W", True), ("b", False)]
    for name in ("batchnorm", "layernorm"):
        assert [(p["name"], p["l2"]) for p in kinds[name]["params"]] == [("gamma", False), ("beta", False)]
        assert kinds[name]["default_activation"] == "linear"
        assert {"forward", "backward", "dgamma", "dbeta"} <= set(kinds[name]["formulas"]) <= set(kinds[name]["latex"])
    assert kinds["dense"]["default_activation"] is None and kinds["dense"]["hyperparameters"] == []
    hypers = {h["name"]: h for h in kinds["batchnorm"]["hyperparameters"]}
    assert (hypers["eps"]["default"], hypers["momentum"]["default"]) == (1e-5, 0.9)
    assert (hypers["mode"]["default"], hypers["mode"]["choices"]) == ("train", ["train", "test"])
    assert [s["name"] for s in kinds["batchnorm"]["state"]] == ["running_mean", "running_var"]
    assert [(h["name"], h["default"]) for h in kinds["layernorm"]["hyperparameters"]] == [("eps", 1e-5)]
    assert kinds["layernorm"]["state"] == []
    assert set(kinds["batchnorm"]["mistakes"]) == {"batchnorm_constant_statistics", "batchnorm_unbiased_variance",
                                                   "batchnorm_grads_wrong_axis"}
    assert kinds["layernorm"]["mistakes"] == ["layernorm_wrong_axis"]
    assert info["weight_layouts"] == ["out_in", "in_out"] and "multiclass_hinge" in {c["name"] for c in info["costs"]}


def test_openapi_documents_each_kinds_fields(client):
    """Beyond test_openapi's union by type: the defaults, bounds and which fields a kind requires."""
    schemas = orjson.loads(client.get("/openapi.json").data)["components"]["schemas"]
    refs = [item["$ref"] for item in schemas["GradientRequest"]["properties"]["layers"]["items"]["oneOf"]]
    models = [schemas[ref.rsplit("/", 1)[1]] for ref in refs]
    layer = {model["properties"]["type"]["const"]: model for model in models}
    assert set(layer) == set(KINDS)
    assert "activation" in layer["dense"]["required"]
    bn = layer["batchnorm"]
    assert "activation" not in bn["required"] and bn["properties"]["activation"]["default"] == "linear"
    assert set(bn["required"]) == {"gamma", "beta"}
    assert bn["properties"]["mode"]["enum"] == ["train", "test"] and bn["properties"]["mode"]["default"] == "train"
    assert bn["properties"]["eps"]["default"] == 1e-5 and bn["properties"]["eps"]["exclusiveMinimum"] == 0
    assert (bn["properties"]["momentum"]["minimum"], bn["properties"]["momentum"]["maximum"]) == (0, 1)
    assert layer["layernorm"]["properties"]["eps"]["exclusiveMinimum"] == 0
    assert schemas["GradientRequest"]["properties"]["weight_layout"]["enum"] == ["out_in", "in_out"]

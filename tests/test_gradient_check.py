"""POST /v1/gradient-check and service.engine.gradcheck."""

from __future__ import annotations

import math

import numpy as np
import pytest

from schemas.gradients import GradientRequest, prepare
from schemas.limits import Limits
from service import create_app, grading_routes
from service.engine import compute, gradcheck, grading


OUTPUTS = [("binary_cross_entropy", "sigmoid"), ("categorical_cross_entropy", "softmax"),
           ("mean_squared_error", "linear"), ("mean_squared_error", "sigmoid"), ("mean_squared_error", "tanh"),
           ("mean_squared_error", "relu"), ("mean_squared_error", "leaky_relu")]
HIDDEN = ["sigmoid", "tanh", "relu", "leaky_relu", "linear"]


def network(seed: int, cost: str, out: str, hidden: list[str], *, sizes=None, m=6, l2=0.0, keep_prob=None) -> dict:
    rng = np.random.default_rng(seed)
    L = len(hidden) + 1
    sizes = sizes or [3] + [4] * (L - 1) + [1 if cost == "binary_cross_entropy" else 3]
    layers = []
    for l in range(1, L + 1):
        W = rng.normal(0, 1.0, (sizes[l], sizes[l - 1])) / math.sqrt(sizes[l - 1])
        layers.append({"W": W.tolist(), "b": rng.normal(0, 0.5, (sizes[l], 1)).tolist(),
                       "activation": hidden[l - 1] if l < L else out})
    X = rng.normal(0, 1.0, (sizes[0], m))
    if cost == "binary_cross_entropy":
        Y = rng.integers(0, 2, (1, m)).astype(float)
    elif cost == "categorical_cross_entropy":
        Y = np.eye(sizes[-1])[:, rng.integers(0, sizes[-1], m)]
    else:
        Y = rng.normal(0, 1.0, (sizes[-1], m))
    body = {"layers": layers, "X": X.tolist(), "Y": Y.tolist(), "cost": cost, "l2": l2}
    if keep_prob is not None:
        body["dropout"] = {"keep_prob": keep_prob, "masks": [(rng.random((sizes[l], m)) < keep_prob).astype(float).tolist()
                                                             for l in range(1, L)]}
    return body


def prepared(body: dict):
    req = GradientRequest.model_validate(body)
    return req, prepare(req, Limits())


# --- the service's own gradients pass ---------------------------------------------------------------------------

@pytest.mark.parametrize("cost,out", OUTPUTS)
@pytest.mark.parametrize("hidden", HIDDEN)
def test_own_gradients_pass_for_every_activation_and_cost(cost, out, hidden):
    body = network(HIDDEN.index(hidden) * 10 + OUTPUTS.index((cost, out)), cost, out, [hidden, hidden], l2=0.1)
    req, prep = prepared(body)
    r = compute(prep.X, prep.Y, prep.layers, cost, l2=req.l2)
    res = gradcheck.check(prep.X, prep.Y, prep.layers, cost, r.grads, l2=req.l2)
    assert res.passed, (res.difference, res.worst[:2])
    assert res.difference < 2e-7
    assert res.sample_size == res.entries_total == gradcheck.parameter_count(prep.layers)
    assert res.forward_passes == gradcheck.planned_passes(prep.layers, "full", None) == 1 + 2 * res.entries_total
    for p in res.parameters:
        assert p.entries_checked == p.entries_total
        assert p.passed or p.within_roundoff, p  # a tiny gradient may miss the threshold by rounding alone
        assert p.difference < 1e-5


def test_own_gradients_pass_over_http_with_dropout_masks(post):
    body = network(3, "categorical_cross_entropy", "softmax", ["relu", "tanh"], keep_prob=0.6, l2=0.2)
    status, out = post(body, path="/v1/gradient-check")
    assert status == 200, out
    assert out["passed"] is True and out["difference"] < 2e-7
    assert out["threshold"] == 2e-7 and out["epsilon"] == 1e-7 and out["mode"] == "full"
    assert out["checked"] == "service"
    assert [p["name"] for p in out["parameters"]] == ["dW1", "dW2", "dW3", "db1", "db2", "db3"]
    assert out["forward_passes"] == 1 + 2 * out["entries_total"] and out["sample_size"] == out["entries_total"]
    assert any("deterministic" in n for n in out["notes"])


# --- a perturbed gradient fails at the right entry ----------------------------------------------------------------

@pytest.mark.parametrize("name,index", [("dW1", (2, 1)), ("dW2", (0, 3)), ("db1", (3, 0)), ("db2", (0,))])
def test_one_perturbed_entry_fails_and_is_the_worst(post, name, index):
    body = network(4, "binary_cross_entropy", "sigmoid", ["tanh"])
    if name == "db2":
        body["layers"][1]["b"] = [body["layers"][1]["b"][0][0]]  # b2 sent as a vector: db2 comes back as one
    status, grads = post(body)
    submitted = {k: v for k, v in grads["gradients"].items() if k[:2] in ("dW", "db")}
    target = np.array(submitted[name])
    target[index] += 1e-4
    submitted[name] = target.tolist()
    status, out = post({**body, "gradients": submitted}, path="/v1/gradient-check")
    assert status == 200, out
    assert out["passed"] is False and out["checked"] == "submission"
    worst = out["worst"][0]
    assert (worst["parameter"], tuple(worst["index"])) == (name, index)
    assert worst["abs_error"] == pytest.approx(1e-4, rel=1e-3)
    assert worst["analytic"] - worst["numeric"] == pytest.approx(1e-4, rel=1e-3)
    verdicts = {p["name"]: p["passed"] for p in out["parameters"]}
    assert [k for k, ok in verdicts.items() if not ok] == [name]
    assert out["worst"][1]["abs_error"] < 1e-8


def test_directions_mode_passes_and_catches_a_wrong_gradient():
    body = network(5, "mean_squared_error", "tanh", ["relu", "sigmoid"], l2=0.3)
    req, prep = prepared(body)
    r = compute(prep.X, prep.Y, prep.layers, req.cost, l2=req.l2)
    ok = gradcheck.check(prep.X, prep.Y, prep.layers, req.cost, r.grads, l2=req.l2, mode="directions", samples=8)
    assert ok.passed and ok.sample_size == 8 and ok.forward_passes == 17
    assert all(p.difference is None for p in ok.parameters)
    grads = [{k: v.copy() for k, v in g.items()} for g in r.grads]
    grads[1]["W"] *= 1.01
    bad = gradcheck.check(prep.X, prep.Y, prep.layers, req.cost, grads, l2=req.l2, mode="directions", samples=8)
    assert not bad.passed and bad.difference > 1e-4
    assert bad.worst[0].direction is not None and bad.worst[0].parameter is None


def test_epsilon_and_threshold_are_settable(post):
    body = network(6, "binary_cross_entropy", "sigmoid", ["sigmoid"])
    status, out = post({**body, "epsilon": 1e-4, "threshold": 1e-12}, path="/v1/gradient-check")
    assert status == 200 and out["epsilon"] == 1e-4 and out["threshold"] == 1e-12
    assert out["passed"] is False and out["difference"] > 1e-12  # eps^2 truncation error is well above 1e-12
    status, out = post({**body, "epsilon": 1e-4, "threshold": 1e-6}, path="/v1/gradient-check")
    assert out["passed"] is True


# --- the work cap ---------------------------------------------------------------------------------------------------

def _large() -> dict:
    rng = np.random.default_rng(0)
    sizes = [100, 120, 80, 1]
    layers = [{"W": (rng.normal(0, 1, (sizes[l], sizes[l - 1])) / math.sqrt(sizes[l - 1])).tolist(),
               "b": np.zeros((sizes[l], 1)).tolist(), "activation": "relu" if l < 3 else "sigmoid"}
              for l in range(1, 4)]
    return {"layers": layers, "X": rng.normal(0, 1, (100, 20)).tolist(),
            "Y": rng.integers(0, 2, (1, 20)).astype(float).tolist(), "cost": "binary_cross_entropy"}


def test_full_check_of_a_large_network_is_refused_before_running(post, monkeypatch):
    ran = []
    monkeypatch.setattr(gradcheck, "check", lambda *a, **k: ran.append(1))
    body = _large()
    entries = 100 * 120 + 120 + 120 * 80 + 80 + 80 + 1
    status, problem = post(body, path="/v1/gradient-check")
    assert status == 422 and ran == []  # refused from the shapes, before any pass
    err = problem["errors"][0]
    assert err["location"] == "max_forward_passes" and err["type"] == "limit_exceeded"
    assert f"needs {1 + 2 * entries} forward passes" in err["message"] and "entries" in err["message"]
    status, problem = post({**body, "mode": "entries", "samples": 600, "max_forward_passes": 1000},
                           path="/v1/gradient-check")
    assert status == 422 and "1201" in problem["errors"][0]["message"] and ran == []


def test_sampled_check_of_a_large_network_stays_within_its_cap(post):
    body = _large()
    status, out = post({**body, "mode": "entries", "samples": 300, "seed": 7}, path="/v1/gradient-check")
    assert status == 200, out
    assert out["sample_size"] == 300 and out["forward_passes"] == 601 <= out["max_forward_passes"] == 20000
    assert out["entries_total"] == 100 * 120 + 120 + 120 * 80 + 80 + 80 + 1
    assert sum(p["entries_checked"] for p in out["parameters"]) == 300
    assert out["passed"] is True
    status, out = post({**body, "mode": "directions", "samples": 20}, path="/v1/gradient-check")
    assert status == 200 and out["forward_passes"] == 41 and out["passed"] is True


def test_the_engine_counts_every_pass_and_refuses_beyond_the_cap():
    body = network(8, "binary_cross_entropy", "sigmoid", ["tanh"])
    req, prep = prepared(body)
    r = compute(prep.X, prep.Y, prep.layers, req.cost)
    res = gradcheck.check(prep.X, prep.Y, prep.layers, req.cost, r.grads, mode="entries", samples=5, seed=1)
    assert res.forward_passes == 11 and res.sample_size == 5
    with pytest.raises(gradcheck.TooManyPasses) as info:
        gradcheck.check(prep.X, prep.Y, prep.layers, req.cost, r.grads, max_passes=10)
    assert info.value.planned == 1 + 2 * gradcheck.parameter_count(prep.layers)


def test_the_work_budget_is_the_services_max_work():
    body = network(9, "mean_squared_error", "linear", ["tanh"], m=50)
    req, prep = prepared(body)
    three = gradcheck.plan(prep.layers, prep.shapes[:-1], 50, "entries", 3)
    client = create_app({"max_work": three.work}).test_client()
    r = client.post("/v1/gradient-check", json={**body, "mode": "entries", "samples": 3})
    assert r.status_code == 200 and r.json["forward_passes"] == 7
    r = client.post("/v1/gradient-check", json={**body, "mode": "entries", "samples": 4})
    assert r.status_code == 422
    err = r.json["errors"][0]
    assert (err["location"], err["type"]) == ("samples", "limit_exceeded")
    assert err["message"].endswith(f"over this service's limit of {three.work}; lower `samples`: at most 3 entries fit")
    r = client.post("/v1/gradient-check", json=body)  # full: 1 + 2 * 31 passes
    assert r.status_code == 422 and r.json["errors"][0]["location"] == "mode"
    assert "use mode `entries` or `directions`" in r.json["errors"][0]["message"]


def test_narrow_deep_networks_are_priced_by_their_layer_overhead(post, monkeypatch):
    # The review's request: 64 layers of width 1, 99999 directions, 200000 passes allowed. It ran 128 s, since a
    # pass over 64 one-unit layers is 64 numpy calls (~10 us each), not 64 multiply-adds.
    ran = []
    monkeypatch.setattr(gradcheck, "check", lambda *a, **k: ran.append(1))
    net = {"layers": [{"W": [[0.9]], "b": [[0.0]], "activation": "sigmoid"} for _ in range(64)], "X": [[0.5]],
           "Y": [[1.0]], "cost": "binary_cross_entropy"}
    body = {**net, "mode": "directions", "samples": 99999, "max_forward_passes": 200000}
    layers, shapes = prepared(net)[1].layers, prepared(net)[1].shapes[:-1]
    plan = gradcheck.plan(layers, shapes, 1, "directions", 99999)
    status, problem = post(body, path="/v1/gradient-check")
    assert status == 422 and ran == []
    assert problem["errors"] == [{
        "location": "samples", "type": "limit_exceeded",
        "message": f"this check's 199999 forward passes over 64 layers and m = 1 examples are priced at {plan.work} "
                   "multiply-add equivalents (fixed costs per layer included), over this service's limit of "
                   "4000000000; lower `samples`: at most 138 directions fit"}]
    assert plan.passes == 199999
    assert plan.work >= 199999 * 64 * gradcheck.LAYER_OVERHEAD  # the fixed cost alone is over the limit 3000 times
    assert gradcheck.plan(layers, shapes, 1, "directions", 138).work <= 4_000_000_000 < \
        gradcheck.plan(layers, shapes, 1, "directions", 139).work
    monkeypatch.undo()
    status, out = post({**body, "samples": 138}, path="/v1/gradient-check")
    assert status == 200 and out["forward_passes"] == 277


def test_plan_prices_each_mode():
    body = network(12, "binary_cross_entropy", "sigmoid", ["tanh", "relu"], m=7)
    _, prep = prepared(body)
    layers, shapes, m = prep.layers, prep.shapes[:-1], 7
    cost = [gradcheck.evaluation_cost(layer, shape, m) for layer, shape in zip(layers, shapes)]
    n_out, n_in = layers[0].params["W"].shape
    assert cost[0] == n_out * n_in * (m + gradcheck.WEIGHT_READ) + gradcheck.ELEMENTWISE * n_out * m + \
        gradcheck.LAYER_OVERHEAD
    sizes = [layer.params["W"].size + layer.params["b"].size for layer in layers]
    whole = sum(cost)
    # full: a pass for an entry of layer l evaluates layers l..L only
    assert gradcheck.plan(layers, shapes, m, "full", None) == gradcheck.Plan(
        1 + 2 * sum(sizes), whole + 2 * (sizes[0] * whole + sizes[1] * (cost[1] + cost[2]) + sizes[2] * cost[2]))
    # entries: priced as if every entry were in layer 1; directions: plus drawing them
    assert gradcheck.plan(layers, shapes, m, "entries", 5) == gradcheck.Plan(11, 11 * whole)
    assert gradcheck.plan(layers, shapes, m, "directions", 5) == gradcheck.Plan(
        11, 11 * whole + 5 * (gradcheck.DIRECTION_DRAW * sum(sizes) + gradcheck.LAYER_OVERHEAD * 3))


def test_a_check_leaves_the_callers_parameters_alone():
    body = network(13, "categorical_cross_entropy", "softmax", ["tanh"], l2=0.2)
    req, prep = prepared(body)
    before = [(layer.params["W"].copy(), layer.params["b"].copy()) for layer in prep.layers]
    r = compute(prep.X, prep.Y, prep.layers, req.cost, l2=req.l2)
    res = gradcheck.check(prep.X, prep.Y, prep.layers, req.cost, r.grads, l2=req.l2)
    assert res.passed
    for layer, (W, b) in zip(prep.layers, before):
        np.testing.assert_array_equal(layer.params["W"], W)
        np.testing.assert_array_equal(layer.params["b"], b)


def test_one_difference_metric_for_checks_and_grades():
    assert grading.course_difference is gradcheck.course_difference
    a, b = np.array([3.0, 4.0]), np.array([0.0, 0.0])
    assert gradcheck.course_difference(a, b) == 1.0 and gradcheck.course_difference(b, b) == 0.0
    assert gradcheck.course_difference(a, 2 * a) == pytest.approx(5 / 15, rel=1e-15)
    big = np.array([1e308, -1e308])
    assert gradcheck.course_difference(big, -big) == 1.0  # no overflow in the norms


def test_smallest_epsilon_is_one_ulp_of_the_largest_parameter(post):
    body = network(14, "binary_cross_entropy", "sigmoid", ["tanh"])
    body["layers"][0]["W"][0][0] = 1e6
    _, prep = prepared(body)
    floor = gradcheck.smallest_epsilon(prep.layers)
    assert floor == np.spacing(1e6) == 2 ** -33  # one unit in the last place of 1e6
    status, problem = post({**body, "epsilon": 1e-10}, path="/v1/gradient-check")
    assert status == 422 and problem["errors"][0]["type"] == "epsilon_too_small"
    assert "one unit in the last place of the largest |W| or |b| entry, 1.16415e-10" in problem["errors"][0]["message"]
    status, out = post({**body, "epsilon": 2e-10, "mode": "entries", "samples": 3}, path="/v1/gradient-check")
    assert status == 200


# --- requests that cannot be checked ----------------------------------------------------------------------------------

@pytest.mark.parametrize("change,location,kind", [
    ({"dropout": {"keep_prob": 0.5}}, "dropout", "dropout_needs_masks"),
    ({"mode": "entries"}, "samples", "samples_missing"),
    ({"mode": "directions", "samples": None}, "samples", "samples_missing"),
    ({"max_forward_passes": 10 ** 6}, "max_forward_passes", "less_than_equal"),
    ({"epsilon": 0}, "epsilon", "greater_than_equal"),
    ({"epsilon": 1e-12, "layers": [{"W": [[1e6, 1.0, 0.0]], "b": [[0.0]], "activation": "sigmoid"}]}, "epsilon",
     "epsilon_too_small"),
    ({"samples": 2.5, "mode": "entries"}, "samples", "int_type"),
    ({"include_caches": 0}, "include_caches", "bool_type"),
    ({"gradients": {"dW1": [[1.0, 2.0]]}}, "gradients.dW1", "shape_mismatch"),
    ({"gradients": {"dW9": [[1.0]]}}, "gradients.dW9", "unknown_key"),
])
def test_bad_check_requests_are_located_422s(post, change, location, kind):
    body = network(10, "binary_cross_entropy", "sigmoid", ["tanh"], keep_prob=None)
    status, problem = post({**body, **change}, path="/v1/gradient-check")
    assert status == 422, problem
    assert problem["errors"][0]["location"] == location and problem["errors"][0]["type"] == kind
    if kind == "dropout_needs_masks":
        assert "deterministic" in problem["errors"][0]["message"]


def test_dropout_without_masks_is_refused_with_the_reason(post):
    body = network(11, "binary_cross_entropy", "sigmoid", ["tanh"])
    status, problem = post({**body, "dropout": {"keep_prob": 0.8}}, path="/v1/gradient-check")
    assert status == 422
    message = problem["errors"][0]["message"]
    assert "random function" in message and "dropout.masks" in message


@pytest.mark.parametrize("name", list(grading_routes.CHECK_EXAMPLES))
def test_openapi_check_examples_run(post, name):
    status, out = post(grading_routes.CHECK_EXAMPLES[name], path="/v1/gradient-check")
    assert status == 200, out

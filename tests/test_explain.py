"""POST /v1/explain and service.engine.explain."""

from __future__ import annotations

import math

import numpy as np
import pytest

from service import grading_routes
from service.engine import explain as explain_engine
from service.engine.costs import COSTS


def network(seed: int, cost: str, out: str, hidden: list[str], *, m=5, n_out=None) -> dict:
    rng = np.random.default_rng(seed)
    L = len(hidden) + 1
    n_out = n_out or (1 if cost == "binary_cross_entropy" else 3)
    sizes = [3] + [4] * (L - 1) + [n_out]
    layers = [{"W": (rng.normal(0, 1, (sizes[l], sizes[l - 1])) / math.sqrt(sizes[l - 1])).tolist(),
               "b": rng.normal(0, 0.3, (sizes[l], 1)).tolist(), "activation": hidden[l - 1] if l < L else out}
              for l in range(1, L + 1)]
    X = rng.normal(0, 1, (3, m))
    if cost == "binary_cross_entropy":
        Y = rng.integers(0, 2, (1, m)).astype(float)
    elif cost == "categorical_cross_entropy":
        Y = np.eye(n_out)[:, rng.integers(0, n_out, m)]
    else:
        Y = rng.normal(0, 1, (n_out, m))
    return {"layers": layers, "X": X.tolist(), "Y": Y.tolist(), "cost": cost}


def steps_of(out: dict) -> dict:
    return {s["id"]: s for s in out["steps"]}


CASES = [("binary_cross_entropy", "sigmoid", ["tanh", "relu"]), ("categorical_cross_entropy", "softmax", ["sigmoid"]),
         ("mean_squared_error", "linear", ["leaky_relu"]), ("mean_squared_error", "sigmoid", ["tanh"]),
         ("mean_squared_error", "tanh", ["relu", "sigmoid"])]


@pytest.mark.parametrize("layout", ["features_first", "examples_first"])
@pytest.mark.parametrize("intermediates", ["per_example", "mean"])
@pytest.mark.parametrize("cost,out,hidden", CASES)
def test_numbers_equal_the_gradient_endpoint(post, cost, out, hidden, layout, intermediates):
    body = network(len(hidden) * 7 + len(cost), cost, out, hidden)
    body["intermediates"] = intermediates
    if layout == "examples_first":
        body.update(layout="examples_first", X=np.array(body["X"]).T.tolist(), Y=np.array(body["Y"]).T.tolist())
    status, grads = post({**body, "include_caches": True})
    assert status == 200
    status, story = post(body, path="/v1/explain")
    assert status == 200, story
    L, h = len(body["layers"]), len(body["layers"]) - 1
    s = steps_of(story)
    g, c = grads["gradients"], grads["caches"]
    assert s["cost"]["values"]["J"] == grads["cost"]
    assert s["dAL"]["values"][f"A{L}"] == grads["AL"]
    assert s["dAL"]["values"][f"dA{L}"] == g[f"dA{L}"]
    assert s["activation_derivative"]["values"][f"Z{L}"] == c[f"Z{L}"]
    fused = s.get("dZL_fused") or s["no_simplification"]
    assert fused["values"][f"dZ{L}"] == g[f"dZ{L}"]
    np.testing.assert_allclose(s["dZL_chain_rule"]["values"][f"dZ{L}_chain_rule"], g[f"dZ{L}"], rtol=1e-12, atol=1e-15)
    assert s["hidden_dA"]["values"][f"dA{h}"] == g[f"dA{h}"]
    assert s["hidden_dA"]["values"][f"dZ{h + 1}"] == g[f"dZ{h + 1}"]
    assert s["hidden_dA"]["values"][f"W{h + 1}"] == body["layers"][h]["W"]
    assert s["hidden_dZ"]["values"][f"dZ{h}"] == g[f"dZ{h}"]
    assert s["hidden_dZ"]["values"][f"Z{h}"] == c[f"Z{h}"]
    loss = np.array(s["cost"]["values"]["loss"])
    assert loss.sum() / loss.size == pytest.approx(grads["cost"], rel=1e-12)
    assert story["canonical"] == (fused["id"] == "dZL_fused")
    assert story["layout"] == layout and story["m"] == 5 and story["examples_shown"] == 5


def test_every_step_has_a_sentence_a_formula_and_numbers(post):
    status, story = post(network(1, "binary_cross_entropy", "sigmoid", ["tanh"]), path="/v1/explain")
    assert status == 200
    assert [s["id"] for s in story["steps"]] == ["cost", "dAL", "activation_derivative", "dZL_chain_rule", "dZL_fused",
                                                 "stability", "hidden_dA", "hidden_dZ", "why"]
    for step in story["steps"]:
        assert step["text"].endswith(".") and len(step["text"]) > 40
        assert "\\" in step["latex"] or "=" in step["latex"]
        if step["id"] != "why":
            assert step["values"]
    s = steps_of(story)
    assert "W^{[2]T} dZ^{[2]}" in s["hidden_dA"]["latex"]
    assert "A^{[L]} - Y" in s["dZL_fused"]["latex"]
    assert "directly" in s["why"]["text"] and "through the next layer" in s["why"]["text"]
    assert s["dZL_fused"]["values"]["max_abs_difference"] < 1e-15


def test_saturated_output_names_the_unstable_entries(post):
    # z = 40 rounds sigmoid to exactly 1.0; z = -40 gives 4.2e-18, which the textbook formula survives.
    body = {"layers": [{"W": [[40.0]], "b": [[0.0]], "activation": "sigmoid"}], "X": [[1.0, -1.0, 1.0, -1.0, 0.5]],
            "Y": [[1, 0, 0, 1, 1]], "cost": "binary_cross_entropy"}
    status, story = post(body, path="/v1/explain")
    assert status == 200, story
    assert story["unstable_count"] == 2
    s = steps_of(story)["stability"]
    assert s["entries"] == [[0, 0], [0, 2]]
    v = s["values"]
    assert v["count"] == 2 and v["A_L"] == [1.0, 1.0] and v["Y"] == [1.0, 0.0]
    assert v["chain_rule_from_A_L"] == [None, None]  # 0/0 and inf * 0
    tiny = 1 / (1 + math.exp(40))  # 1 - sigmoid(40), which A_L - Y computed from the rounded A_L would lose
    assert v["fused"] == [pytest.approx(-tiny, rel=1e-15), 1.0]
    assert all("rounds to exactly 1" in r for r in v["reasons"])
    assert "2 entries" in s["text"]
    fused = steps_of(story)["dZL_fused"]["values"]["dZ1"]
    assert fused[0] == [v["fused"][0], pytest.approx(tiny, rel=1e-15), 1.0, pytest.approx(-1.0, rel=1e-15),
                        pytest.approx(1 / (1 + math.exp(20)) * -1, rel=1e-15)]
    chain = steps_of(story)["dZL_chain_rule"]["values"]["dZ1_chain_rule"][0]
    np.testing.assert_allclose(chain, fused[0], rtol=1e-14)  # the service's chain rule, from the logits, agrees
    # the same in examples_first: indices as [example, unit]
    body_ex = {**body, "layout": "examples_first", "X": [[x] for x in body["X"][0]], "Y": [[y] for y in body["Y"][0]]}
    status, story = post(body_ex, path="/v1/explain")
    assert steps_of(story)["stability"]["entries"] == [[0, 0], [2, 0]]


def test_saturated_softmax_names_the_unstable_entries(post):
    # The labelled class's probability underflows to 0 in example 1: -Y/A divides by zero there.
    body = {"layers": [{"W": [[800.0], [0.0]], "b": [[0.0], [0.0]], "activation": "softmax"}],
            "X": [[0.1, 1.0]], "Y": [1, 1], "cost": "categorical_cross_entropy"}
    status, story = post(body, path="/v1/explain")
    assert status == 200, story
    s = steps_of(story)["stability"]
    assert s["entries"] == [[0, 1], [1, 1]]
    assert "rounds to exactly 0" in s["values"]["reasons"][0]
    assert steps_of(story)["dAL"]["values"]["dA1"][1][1] is None  # -1/a overflows: null, as /v1/gradients does


def test_non_canonical_pair_shows_that_no_simplification_applies(post):
    body = network(2, "mean_squared_error", "sigmoid", ["relu"])
    status, story = post(body, path="/v1/explain")
    assert story["canonical"] is False
    s = steps_of(story)
    assert "dZL_fused" not in s and "stability" not in s
    step = s["no_simplification"]
    assert "does not cancel" in step["text"] and "\\neq" in step["latex"]
    dZ = np.array(step["values"]["dZ2"])
    shortcut = np.array(step["values"]["A2_minus_Y"])
    assert step["values"]["max_abs_difference"] == pytest.approx(np.max(np.abs(dZ - shortcut)), rel=1e-12)
    assert step["values"]["max_abs_difference"] > 0.01
    a = np.array(s["dAL"]["values"]["A2"])
    np.testing.assert_allclose(dZ, shortcut * a * (1 - a), rtol=1e-12)  # (a - y) a (1 - a)


def test_softmax_shows_its_jacobian(post):
    body = network(3, "categorical_cross_entropy", "softmax", ["tanh"])
    status, story = post(body, path="/v1/explain")
    step = steps_of(story)["activation_derivative"]
    J = np.array(step["values"]["jacobian_example_0"])
    a = np.array(steps_of(story)["dAL"]["values"]["A2"])[:, 0]
    np.testing.assert_allclose(J, np.diag(a) - np.outer(a, a), rtol=1e-15)
    np.testing.assert_allclose(J.sum(axis=0), 0, atol=1e-15)


def test_one_layer_network_explains_dA0(post):
    body = network(4, "binary_cross_entropy", "sigmoid", [])
    status, story = post(body, path="/v1/explain")
    assert story["hidden_layer"] == 0
    s = steps_of(story)
    assert "hidden_dZ" not in s and "no hidden layer" in s["hidden_dA"]["text"]
    status, grads = post(body)
    assert s["hidden_dA"]["values"]["dA0"] == grads["gradients"]["dA0"]


def test_hidden_layer_and_examples_shown_options(post):
    body = network(5, "mean_squared_error", "linear", ["tanh", "relu", "sigmoid"], m=12)
    status, story = post({**body, "hidden_layer": 1, "examples_shown": 3}, path="/v1/explain")
    assert status == 200 and story["hidden_layer"] == 1 and story["examples_shown"] == 3
    s = steps_of(story)
    status, grads = post(body)
    assert s["hidden_dA"]["values"]["dA1"] == [row[:3] for row in grads["gradients"]["dA1"]]
    assert len(s["cost"]["values"]["loss"]) == 3
    status, problem = post({**body, "hidden_layer": 4}, path="/v1/explain")
    assert status == 422 and problem["errors"][0]["location"] == "hidden_layer"
    assert "hidden layers 1..3" in problem["errors"][0]["message"]


def test_a_wide_softmax_output_is_shown_in_blocks(client):
    # The review's case: 4096 output units returned a 4096 x 4096 Jacobian (370 MB).
    n, m = 4096, 3
    rng = np.random.default_rng(0)
    body = {"layers": [{"W": rng.normal(0, 1, (n, 2)).tolist(), "b": np.zeros(n).tolist(), "activation": "softmax"}],
            "X": rng.normal(0, 1, (2, m)).tolist(), "Y": [0, 5, 4095], "cost": "categorical_cross_entropy"}
    r = client.post("/v1/explain", json=body)
    assert r.status_code == 200, r.json
    assert len(r.data) < 100_000
    story = r.json
    assert story["units_shown"] == 16 and story["examples_shown"] == 3
    s = steps_of(story)
    jac = s["activation_derivative"]
    assert np.array(jac["values"]["jacobian_example_0"]).shape == (16, 16)
    assert jac["shapes"]["jacobian_example_0"] == {"total": [n, n], "shown": [16, 16]}
    assert jac["shapes"]["Z1"] == {"total": [n, m], "shown": [16, m]}
    assert s["dAL"]["shapes"] == {"A1": {"total": [n, m], "shown": [16, m]}, "Y": {"total": [n, m], "shown": [16, m]},
                                  "dA1": {"total": [n, m], "shown": [16, m]}}
    assert s["hidden_dA"]["shapes"]["W1"] == {"total": [n, 2], "shown": [16, 2]}
    assert s["cost"]["shapes"]["loss"] == {"total": [m], "shown": [m]}
    # the block is the top-left of the true Jacobian
    a = np.array(s["dAL"]["values"]["A1"])[:, 0]
    np.testing.assert_allclose(jac["values"]["jacobian_example_0"], np.diag(a) - np.outer(a, a), rtol=1e-15)


def test_units_shown_and_examples_shown_cut_every_array(post):
    body = network(6, "categorical_cross_entropy", "softmax", ["relu"], m=9, n_out=5)
    body["layers"][0]["W"] = np.random.default_rng(1).normal(0, 1, (8, 3)).tolist()
    body["layers"][0]["b"] = [[0.1]] * 8
    body["layers"][1]["W"] = np.random.default_rng(2).normal(0, 1, (5, 8)).tolist()
    status, full = post({**body, "include_caches": True})
    ex = {**body, "layout": "examples_first", "X": np.array(body["X"]).T.tolist(), "Y": np.array(body["Y"]).T.tolist()}
    status, story = post({**ex, "units_shown": 4, "examples_shown": 2}, path="/v1/explain")
    assert status == 200, story
    assert story["units_shown"] == 4 and story["examples_shown"] == 2
    s = steps_of(story)
    # examples_first: (m, units) arrays, cut to 2 examples (rows) and 4 units (columns)
    assert s["hidden_dZ"]["values"]["dZ1"] == [row[:4] for row in np.array(full["gradients"]["dZ1"]).T.tolist()[:2]]
    assert s["hidden_dZ"]["shapes"]["dZ1"] == {"total": [9, 8], "shown": [2, 4]}
    assert s["hidden_dA"]["values"]["W2"] == [row[:4] for row in body["layers"][1]["W"][:4]]
    assert s["hidden_dA"]["shapes"]["W2"] == {"total": [5, 8], "shown": [4, 4]}
    assert s["activation_derivative"]["shapes"]["jacobian_example_0"] == {"total": [5, 5], "shown": [4, 4]}
    status, problem = post({**body, "units_shown": 65}, path="/v1/explain")
    assert status == 422 and problem["errors"][0]["location"] == "units_shown"


def test_no_finite_chain_rule_entry_is_said_in_words(post):
    # A_1 rounds to exactly 1 against the label 0: dA1 is null, so is the chain rule; the fused form is exact.
    body = {"layers": [{"W": [[800.0]], "b": [[0.0]], "activation": "sigmoid"}], "X": [[1.0]], "Y": [[0]],
            "cost": "binary_cross_entropy"}
    status, story = post(body, path="/v1/explain")
    assert status == 200, story
    step = steps_of(story)["dZL_fused"]
    assert step["values"]["max_abs_difference"] is None
    assert "None" not in step["text"]
    assert step["text"].endswith("Here the chain-rule form has no finite entry (the dA1 it starts from is beyond "
                                 "float64 where A1 rounds to exactly 0 or 1 against its label), so there is nothing to "
                                 "compare it with; A1 - Y stays exact.")
    assert steps_of(story)["dZL_fused"]["values"]["dZ1"] == [[1.0]]


def test_textbook_form_is_exact_away_from_saturation():
    rng = np.random.default_rng(0)
    AL = rng.uniform(0.01, 0.99, (1, 50))
    Y = rng.integers(0, 2, (1, 50)).astype(float)
    np.testing.assert_allclose(COSTS["binary_cross_entropy"].textbook_dZ(AL, Y), AL - Y, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("name", list(grading_routes.EXPLAIN_EXAMPLES))
def test_openapi_explain_examples_run(post, name):
    status, out = post(grading_routes.EXPLAIN_EXAMPLES[name], path="/v1/explain")
    assert status == 200, out


@pytest.mark.parametrize("cost,out,hidden", CASES)
def test_the_mean_conventions_one_over_m_multiplies_the_whole_derivative(post, cost, out, hidden):
    body = {**network(3, cost, out, hidden), "intermediates": "mean"}
    status, story = post(body, path="/v1/explain")
    assert status == 200
    latex = steps_of(story)["dAL"]["latex"]
    # 1/m (-(Y/A - (1-Y)/(1-A))), not 1/m - (...): the parentheses hold the whole derivative.
    assert latex.endswith(r"\frac{1}{m}\left(" + COSTS[cost].dA_latex + r"\right)"), latex
    status, per_example = post({**body, "intermediates": "per_example"}, path="/v1/explain")
    assert steps_of(per_example)["dAL"]["latex"].endswith("= " + COSTS[cost].dA_latex)


@pytest.mark.parametrize("cost", list(COSTS))
def test_the_stability_step_tells_the_cost_its_own_breakdown(post, cost):
    """Each canonical pair's step says where its own textbook chain rule fails (binary cross-entropy's 1 - A_L and
    sigmoid's |z| > ~37 only for it), from the cost unit."""
    unit = COSTS[cost]
    body = network(4, cost, unit.fused_activation, ["tanh"])
    if unit.class_indices:
        body["Y"] = [0, 2, 1, 1, 0]
    status, out = post(body, "/v1/explain")
    assert status == 200, out
    step = steps_of(out)["stability"]
    assert step["latex"] == unit.breakdown_latex
    assert step["text"].startswith("No entry here: " + unit.breakdown_none.format(L=2))
    assert ("sigmoid" in step["text"]) == (cost == "binary_cross_entropy")

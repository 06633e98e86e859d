"""Bad input to the one-step routes: every one a 422 in problem+json whose errors[] locate the field and name the
problem (asserted as the exact set of (location, type) pairs), never a 500; the limits priced before any work."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from schemas.step_grading import TASKS
from service.app import create_app
from service.engine import optimizers, steps

DENSE = {"W": [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], "b": [[0.0], [1.0]], "activation": "sigmoid"}
A = [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]  # (3, 2): 3 features, m = 2
OUT = [[0.1, 0.2], [0.3, 0.4]]  # the layer's output shape (2, 2)
BN = {"type": "batchnorm", "gamma": [1.0, 2.0, 3.0], "beta": [0.0, 0.0, 0.0]}
P = {"W1": [[1.0, 2.0], [3.0, 4.0]], "b1": [[0.0], [1.0]]}
G = {"dW1": [[0.1, 0.2], [0.3, 0.4]], "db1": [[0.5], [0.6]]}
ZEROS = {"dW1": [[0.0, 0.0], [0.0, 0.0]], "db1": [[0.0], [0.0]]}
SIG2 = {"W": [[1.0, 2.0]], "b": [0.0], "activation": "sigmoid"}  # layer 2 of _net: 2 -> 1
BCE = {"cost": "binary_cross_entropy"}


def _fwd(**kw):
    return "/v1/layer/forward", {"layer": DENSE, "A_prev": A, **kw}


def _bwd(**kw):
    return "/v1/layer/backward", {"layer": DENSE, "A_prev": A, **kw}


def _opt(optimizer="sgd", **kw):
    return "/v1/optimizer-step", {"optimizer": optimizer, "params": P, "grads": G, **kw}


def _cost(**kw):
    return "/v1/cost", {**BCE, **kw}


def _net(**kw):
    return "/v1/network/backward", {"layers": [DENSE, SIG2], "caches": [{"A_prev": A}, {"A_prev": OUT}], **kw}


# (id, (path, body), {(location, type), ...}): the exact errors[] of the 422
BAD = [
    # shapes against the layer
    # W (2, 3) against 2 features would chain as weight_layout in_out: that fix is named and the rest is read
    # through it (b and dZ then do not fit it, and say so), as the network routes do.
    ("A_prev_against_W", _fwd(A_prev=[[1.0, 2.0], [3.0, 4.0]]),
     {("layer.W", "shape_mismatch"), ("layer.b", "shape_mismatch")}),
    ("A_prev_against_W_backward", _bwd(A_prev=[[1.0], [2.0]], dZ=[[0.1], [0.2]]),
     {("layer.W", "shape_mismatch"), ("layer.b", "shape_mismatch"), ("dZ", "shape_mismatch")}),
    ("A_prev_against_W_no_chain", _fwd(A_prev=[[1.0, 2.0]] * 4), {("layer.W", "shape_mismatch")}),
    ("A_prev_against_gamma", ("/v1/layer/forward", {"layer": BN, "A_prev": OUT}),
     {("layer.gamma", "shape_mismatch"), ("layer.beta", "shape_mismatch")}),
    ("dA_shape", _bwd(dA=[[0.1, 0.2, 0.3], [0.3, 0.4, 0.5]]), {("dA", "shape_mismatch")}),
    ("dZ_shape", _bwd(dZ=[[0.1], [0.3]]), {("dZ", "shape_mismatch")}),
    ("Z_shape", _bwd(dA=OUT, Z=[[0.1], [0.3]]), {("Z", "shape_mismatch")}),
    ("dA_in_the_other_layout", _bwd(dA=np.array(OUT)[:, :1].T.tolist(), layout="features_first"),
     {("dA", "shape_mismatch")}),
    # the upstream gradient
    ("both_dA_and_dZ", _bwd(dA=OUT, dZ=OUT), {("dZ", "both_upstream_gradients")}),
    ("neither_dA_nor_dZ", _bwd(), {("dA", "missing_upstream_gradient")}),
    ("Z_with_dZ", _bwd(dZ=OUT, Z=OUT), {("Z", "extra_forbidden")}),
    ("Z_without_upstream", _bwd(Z=OUT), {("dA", "missing_upstream_gradient"), ("Z", "extra_forbidden")}),
    # the layer itself
    ("slope_without_leaky_relu", _fwd(layer={**DENSE, "negative_slope": 0.2}),
     {("layer.negative_slope", "extra_forbidden")}),
    ("batchnorm_test_without_running_statistics", ("/v1/layer/forward", {"layer": {**BN, "mode": "test"},
                                                                         "A_prev": A}),
     {("layer.running_mean", "missing_running_statistics"), ("layer.running_var", "missing_running_statistics")}),
    ("unknown_layer_type", _fwd(layer={"type": "conv", "W": [[1.0]]}), {("layer.type", "unknown_kind")}),
    ("unknown_field", _fwd(foo=1), {("foo", "extra_forbidden")}),
    ("unknown_layout", _fwd(layout="rows"), {("layout", "literal_error")}),
    ("negative_l2", _bwd(dZ=OUT, l2=-0.1), {("l2", "greater_than_equal")}),
    # network/backward
    ("caches_per_layer", _net(caches=[{"A_prev": A}], dAL=[[1.0, 2.0]]), {("caches", "shape_mismatch")}),
    ("cache_chain", _net(caches=[{"A_prev": A}, {"A_prev": A}], dAL=[[1.0, 2.0]]),
     {("caches[1].A_prev", "shape_mismatch"), ("layers[1].W", "shape_mismatch")}),
    ("cache_examples", _net(caches=[{"A_prev": A}, {"A_prev": [[1.0], [2.0]]}], dAL=[[1.0, 2.0]]),
     {("caches[1].A_prev", "shape_mismatch")}),
    ("cache_Z_shape", _net(caches=[{"A_prev": A, "Z": [[1.0]]}, {"A_prev": OUT}], dAL=[[1.0, 2.0]]),
     {("caches[0].Z", "shape_mismatch")}),
    ("network_dAL_shape", _net(dAL=[[1.0, 2.0, 3.0]]), {("dAL", "shape_mismatch")}),
    ("network_neither_dAL_nor_AL", _net(), {("dAL", "output_form")}),
    ("network_both_dAL_and_AL", _net(dAL=[[1.0, 2.0]], AL=[[0.5, 0.5]], Y=[[1, 0]], **BCE), {("dAL", "output_form")}),
    ("network_AL_without_Y_and_cost", _net(AL=[[0.5, 0.5]]), {("Y", "missing"), ("cost", "missing")}),
    ("network_AL_at_1_against_0", _net(AL=[[0.5, 1.0]], Y=[[1, 0]], **BCE), {("AL[0][1]", "infinite_gradient")}),
    # cost
    ("AL_0_against_1", _cost(AL=[[0.5, 0.0]], Y=[[1, 1]]), {("AL[0][1]", "infinite_cost")}),
    ("AL_1_against_0_examples_first", _cost(AL=[[0.5], [1.0]], Y=[[1], [0]], layout="examples_first"),
     {("AL[1][0]", "infinite_cost")}),
    ("cce_AL_0_against_its_class", ("/v1/cost", {"cost": "categorical_cross_entropy", "AL": [[0.0, 0.5], [1.0, 0.5]],
                                                 "Y": [0, 1]}), {("AL[0][0]", "infinite_cost")}),
    ("AL_above_1_cross_entropy", _cost(AL=[[0.5, 1.2]], Y=[[1, 1]]), {("AL", "output_domain")}),
    ("AL_below_0_categorical", ("/v1/cost", {"cost": "categorical_cross_entropy", "AL": [[-0.1, 0.5], [1.1, 0.5]],
                                             "Y": [[1, 0], [0, 1]]}), {("AL", "output_domain")}),
    ("softmax_columns_not_summing_to_1", ("/v1/cost", {"cost": "categorical_cross_entropy",
                                                       "AL": [[0.2, 0.5], [0.2, 0.5]], "Y": [0, 1]}),
     {("AL", "output_domain")}),
    ("l2_without_weights", _cost(AL=[[0.5, 0.2]], Y=[[1, 1]], l2=0.1), {("weights", "missing")}),
    ("neither_AL_nor_ZL", _cost(Y=[[1, 1]]), {("AL", "output_form")}),
    ("both_AL_and_ZL", _cost(AL=[[0.5, 0.2]], ZL=[[0.5, 0.2]], Y=[[1, 1]]), {("ZL", "output_form")}),
    ("cost_Y_shape", _cost(AL=[[0.5, 0.2]], Y=[[1, 1, 1]]), {("Y", "shape_mismatch")}),
    ("cost_labels", _cost(AL=[[0.5, 0.2]], Y=[[1, 2]]), {("Y", "label_domain")}),
    ("cost_pairing", _cost(AL=[[0.5, 0.2]], Y=[[1, 1]], activation="tanh"), {("activation", "cost_pairing")}),
    ("cost_slope_without_leaky_relu", ("/v1/cost", {"cost": "mean_squared_error", "ZL": [[0.5]], "Y": [[1.0]],
                                                    "negative_slope": 0.1}), {("negative_slope", "extra_forbidden")}),
    # optimizer-step: gradients and state against the parameters
    ("grads_missing_one", _opt(grads={"dW1": G["dW1"]}), {("grads.db1", "missing")}),
    ("grads_for_no_parameter", _opt(grads={**G, "dW2": [[1.0]]}), {("grads.dW2", "unknown_key")}),
    ("grads_shape", _opt(grads={**G, "db1": [[1.0]]}), {("grads.db1", "shape_mismatch")}),
    ("state_shape", _opt("momentum", state={"v": {**ZEROS, "dW1": [[0.0]]}}), {("state.v.dW1", "shape_mismatch")}),
    ("state_unknown_name", _opt("momentum", state={"s": ZEROS}), {("state.s", "unknown_key")}),
    ("state_partial", _opt("momentum", state={"v": {"dW1": ZEROS["dW1"]}}), {("state.v.db1", "missing")}),
    ("state_for_no_parameter", _opt("momentum", state={"v": {**ZEROS, "dW9": [[0.0]]}}),
     {("state.v.dW9", "unknown_key")}),
    ("state_of_the_other_convention", _opt("momentum", convention="cs231n", state={"v": ZEROS}),
     {("state.v", "unknown_key")}),
    ("state_for_sgd", _opt(state={"v": ZEROS}), {("state.v", "unknown_key")}),
    # t
    ("adam_t_missing", _opt("adam"), {("t", "missing")}),
    ("adam_t_0", _opt("adam", t=0), {("t", "greater_than_equal")}),
    ("adam_t_negative", _opt("adam", convention="cs231n", t=-1), {("t", "greater_than_equal")}),
    ("adam_t_not_an_integer", _opt("adam", t=1.5), {("t", "int_type")}),
    ("t_sent_to_sgd", _opt(t=3), {("t", "extra_forbidden")}),
    ("t_sent_to_rmsprop", _opt("rmsprop", t=3), {("t", "extra_forbidden")}),
    # hyperparameters: domains, and those the rule does not have
    ("learning_rate_0", _opt(learning_rate=0), {("learning_rate", "greater_than")}),
    ("learning_rate_negative", _opt(learning_rate=-1), {("learning_rate", "greater_than")}),
    ("beta_1", _opt("momentum", beta=1.0), {("beta", "less_than")}),
    ("beta_negative", _opt("momentum", beta=-0.1), {("beta", "greater_than_equal")}),
    ("beta1_1", _opt("adam", t=1, beta1=1.0), {("beta1", "less_than")}),
    ("beta2_above_1", _opt("adam", t=1, beta2=1.5), {("beta2", "less_than")}),
    ("momentum_1", _opt("momentum", convention="cs231n", momentum=1.0), {("momentum", "less_than")}),
    ("decay_rate_1", _opt("rmsprop", convention="cs231n", decay_rate=1.0), {("decay_rate", "less_than")}),
    ("epsilon_0", _opt("adam", t=1, epsilon=0), {("epsilon", "greater_than")}),
    ("epsilon_negative", _opt("rmsprop", epsilon=-1e-8), {("epsilon", "greater_than")}),
    ("beta_for_adam", _opt("adam", t=1, beta=0.9), {("beta", "extra_forbidden")}),
    ("epsilon_for_sgd", _opt(epsilon=1e-8), {("epsilon", "extra_forbidden")}),
    ("momentum_for_deeplearning_ai", _opt("momentum", momentum=0.9), {("momentum", "extra_forbidden")}),
    ("beta_for_cs231n", _opt("momentum", convention="cs231n", beta=0.9), {("beta", "extra_forbidden")}),
    ("decay_rate_for_deeplearning_ai_rmsprop", _opt("rmsprop", decay_rate=0.9), {("decay_rate", "extra_forbidden")}),
    ("unknown_optimizer", _opt("adagrad"), {("optimizer", "literal_error")}),
    ("unknown_convention", _opt(convention="keras"), {("convention", "literal_error")}),
    ("decay_kind", _opt(learning_rate_decay={"kind": "exp", "epoch": 1, "decay_rate": 1}),
     {("learning_rate_decay.kind", "literal_error")}),
    ("decay_epoch_negative", _opt(learning_rate_decay={"kind": "inverse_time", "epoch": -1, "decay_rate": 1}),
     {("learning_rate_decay.epoch", "greater_than_equal")}),
    ("decay_interval_0", _opt(learning_rate_decay={"kind": "scheduled", "epoch": 1, "decay_rate": 1,
                                                   "time_interval": 0}),
     {("learning_rate_decay.time_interval", "greater_than_equal")}),
    ("optimizer_unknown_field", _opt(lr=0.1), {("lr", "extra_forbidden")}),
    ("squared_gradient_overflows", ("/v1/optimizer-step", {"optimizer": "adam", "params": {"w": [1.0]},
                                                           "grads": {"dw": [1e200]}, "t": 1}),
     {("grads.dw", "numerical_overflow")}),
    ("forward_overflows", _fwd(layer={"W": [[1e308, 1e308, 1e308]], "b": [0.0]}), {("layer", "numerical_overflow")}),
]


@pytest.fixture(scope="module")
def client():
    return create_app().test_client()


def problem(client, path: str, body: dict | None = None, raw: bytes | None = None, status: int = 422) -> list:
    """POST; assert a problem+json of ``status`` and return its errors as (location, type) pairs."""
    data = raw if raw is not None else orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
    r = client.post(path, data=data, content_type="application/json")
    assert r.status_code == status, r.data
    assert r.headers["Content-Type"] == "application/problem+json"
    doc = orjson.loads(r.data)
    assert doc["status"] == status and doc["errors"], doc
    assert all(e["message"] for e in doc["errors"])
    return doc


@pytest.mark.parametrize("name,request_,want", BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_a_located_422(client, name, request_, want):
    doc = problem(client, *request_)
    assert {(e["location"], e["type"]) for e in doc["errors"]} == want, doc["errors"]


@pytest.mark.parametrize("name,request_,want", BAD, ids=[b[0] for b in BAD])
def test_the_same_bad_input_through_grade_is_the_same_422(client, name, request_, want):
    """/v1/grade with `task` runs the route's own checks first: the same located errors."""
    path, body = request_
    task = next(n for n, t in TASKS.items() if t.path == path)
    doc = problem(client, "/v1/grade", {**body, "task": task, "submission": {"x": 1.0}})
    got = {(e["location"], e["type"]) for e in doc["errors"]}
    assert got == want, doc["errors"]


def test_infinite_cost_suggests_the_logits(client):
    doc = problem(client, *_cost(AL=[[0.5, 1.0]], Y=[[1, 0]]))
    (err,) = doc["errors"]
    assert err["location"] == "AL[0][1]" and err["type"] == "infinite_cost"
    assert "ZL" in err["message"] and "exactly 1" in err["message"]
    # the same output from its logits is fine: sigmoid(40) rounds to 1 but the cost is finite
    r = client.post("/v1/cost", data=orjson.dumps({**BCE, "ZL": [[0.0, 40.0]], "Y": [[1, 0]]}),
                    content_type="application/json")
    assert r.status_code == 200 and orjson.loads(r.data)["AL"][0][1] == 1.0


def test_messages_name_the_fix(client):
    doc = problem(client, *_opt(grads={"dW1": G["dW1"]}))
    assert "grads.db1" in doc["errors"][0]["message"] and "(2, 1)" in doc["errors"][0]["message"]
    doc = problem(client, *_opt("adam", t=0))
    assert "t >= 1" in doc["errors"][0]["message"]
    doc = problem(client, *_opt("adam", t=1, beta=0.9))
    assert "beta1" in doc["errors"][0]["message"], "the rule's own hyperparameters are listed"
    doc = problem(client, *_bwd(dA=OUT, dZ=OUT))
    assert "exactly one of dA and dZ" in doc["errors"][0]["message"]


def test_a_state_name_left_out_starts_from_zeros(client):
    """Documented: a whole state name absent is zeros (initialize_adam's); only a partial one is an error."""
    def step(state):
        body = {"optimizer": "adam", "params": P, "grads": G, "t": 3, **({"state": state} if state else {})}
        r = client.post("/v1/optimizer-step", data=orjson.dumps(body), content_type="application/json")
        assert r.status_code == 200, r.data
        return orjson.loads(r.data)

    v = {"dW1": [[0.5, -0.5], [0.1, 0.2]], "db1": [[0.3], [0.0]]}
    assert step({"v": v}) == step({"v": v, "s": ZEROS})
    assert step(None) == step({"v": ZEROS, "s": ZEROS})


# --- NaN and Infinity tokens --------------------------------------------------------------------------------

TOKENS = [
    ("/v1/layer/forward", b'{"layer": {"W": [[1, 2, 3]], "b": [0]}, "A_prev": [[1], [NaN], [3]]}', "A_prev[1][0]"),
    ("/v1/layer/backward", b'{"layer": {"W": [[1, 2, 3]], "b": [0]}, "A_prev": [[1], [2], [3]], "dZ": [[Infinity]]}',
     "dZ[0][0]"),
    ("/v1/layer/backward", b'{"layer": {"W": [[1, 2, 3]], "b": [0]}, "A_prev": [[1], [2], [3]], "dZ": [[1]], '
                           b'"l2": NaN}', "l2"),
    ("/v1/cost", b'{"cost": "binary_cross_entropy", "AL": [[-Infinity]], "Y": [[1]]}', "AL[0][0]"),
    ("/v1/cost", b'{"cost": "mean_squared_error", "ZL": [[1]], "Y": [[1]], "l2": 1, "weights": [[NaN]]}',
     "weights[0][0]"),
    ("/v1/optimizer-step", b'{"optimizer": "sgd", "params": {"w": [NaN]}, "grads": {"dw": [1]}}', "params.w[0]"),
    ("/v1/optimizer-step", b'{"optimizer": "sgd", "params": {"w": [1]}, "grads": {"dw": [1]}, '
                           b'"learning_rate": Infinity}', "learning_rate"),
    ("/v1/optimizer-step", b'{"optimizer": "momentum", "params": {"w": [1]}, "grads": {"dw": [1]}, '
                           b'"state": {"v": {"dw": [-Infinity]}}}', "state.v.dw[0]"),
    ("/v1/network/backward", b'{"layers": [{"W": [[1, NaN, 2]], "b": [0], "activation": "linear"}], '
                             b'"caches": [{"A_prev": [[1], [2], [3]]}], "dAL": [[1]]}', "layers[0].W[0][1]"),
    ("/v1/grade", b'{"task": "cost", "cost": "binary_cross_entropy", "AL": [[0.8, 0.9]], "Y": [[1, 0]], '
                  b'"submission": {"cost": NaN}}', "submission.cost"),
]


@pytest.mark.parametrize("path,raw,location", TOKENS, ids=[t[2] for t in TOKENS])
def test_nan_and_infinity_tokens_are_located(client, path, raw, location):
    doc = problem(client, path, raw=raw)
    assert [(e["location"], e["type"]) for e in doc["errors"]] == [(location, "finite_number")]


@pytest.mark.parametrize("raw,location", [
    (b'{"layer": {"W": [[NaN, 1, 2]], "b": [0]}, "A_prev": [[1], [2], [3]]}', "layer.W[0][0]"),
    (b'{"layer": {"type": "batchnorm", "gamma": [NaN, 1, 2], "beta": [0, 0, 0]}, "A_prev": [[1], [2], [3]]}',
     "layer.gamma[0]"),
    (b'{"layer": {"W": [[1, 1, 2]], "activation": "linear"}, "A_prev": [[1], [2], [3]]}', "layer.b"),
])
def test_a_layer_field_is_located_as_sent(client, raw, location):
    """As layers[0].W[0][0] is in /v1/gradients: the kind's name is not part of the request."""
    doc = problem(client, "/v1/layer/forward", raw=raw)
    assert [e["location"] for e in doc["errors"]] == [location]


# --- /v1/grade: the task and the submission ----------------------------------------------------------------

LF = {"layer": {"W": [[1.0, 2.0, 3.0]], "b": [0.0]}, "A_prev": A}


def test_unknown_task(client):
    doc = problem(client, "/v1/grade", {**LF, "task": "layer_sideways", "submission": {"Z": [[1.0, 2.0]]}})
    assert [(e["location"], e["type"]) for e in doc["errors"]] == [("task", "unknown_task")]
    assert all(t in doc["errors"][0]["message"] for t in TASKS)


@pytest.mark.parametrize("task", list(TASKS))
def test_a_submission_key_the_task_does_not_have(client, task):
    bodies = {"layer_forward": _fwd(), "layer_backward": _bwd(dZ=OUT), "cost": _cost(AL=[[0.5, 0.2]], Y=[[1, 0]]),
              "optimizer_step": _opt(), "network_backward": _net(dAL=[[1.0, 2.0]])}
    body = bodies[task][1]
    doc = problem(client, "/v1/grade", {**body, "task": task, "submission": {"dW7": [[1.0]]}})
    assert [(e["location"], e["type"]) for e in doc["errors"]] == [("submission.dW7", "unknown_key")]
    # nested as the route returns it, and in the batch form: that submission alone is invalid
    r = client.post("/v1/grade", data=orjson.dumps({**body, "task": task, "submissions": [
        {"params": {"W7": [[1.0]]}}, {"bogus": 1.0}]}), content_type="application/json")
    assert r.status_code == 200
    results = orjson.loads(r.data)["results"]
    assert [x["status"] for x in results] == ["invalid", "invalid"]
    assert [(e["location"], e["type"]) for e in results[0]["errors"]] == [("submissions[0].params.W7", "unknown_key")]
    assert [(e["location"], e["type"]) for e in results[1]["errors"]] == [("submissions[1].bogus", "unknown_key")]


# --- limits, priced before any work -------------------------------------------------------------------------

rng = np.random.default_rng(0)
W10, A10 = rng.normal(size=(10, 10)), rng.normal(size=(10, 20))
BIG = {
    "/v1/layer/forward": {"layer": {"W": W10, "b": np.zeros(10)}, "A_prev": A10},
    "/v1/layer/backward": {"layer": {"W": W10, "b": np.zeros(10)}, "A_prev": A10, "dZ": A10},
    "/v1/cost": {"cost": "mean_squared_error", "AL": A10, "Y": A10},
    "/v1/optimizer-step": {"optimizer": "adam", "params": {"W": W10}, "grads": {"dW": W10}, "t": 1},
    "/v1/network/backward": {"layers": [{"W": W10, "b": np.zeros(10), "activation": "relu"}],
                             "caches": [{"A_prev": A10}], "dAL": A10},
}


@pytest.fixture
def no_engine(monkeypatch):
    """Every engine entry point of the one-step routes raises: a limit must be priced before any of them."""
    def refuse(*args, **kwargs):
        raise AssertionError("the engine ran")

    for name in ("layer_forward", "layer_backward", "cost_of_output", "cost_of_logits", "backward_from_caches"):
        monkeypatch.setattr(steps, name, refuse)
    monkeypatch.setattr(optimizers, "run", refuse)


@pytest.mark.parametrize("path", list(BIG))
@pytest.mark.parametrize("via", ["route", "grade"])
def test_limits_are_priced_before_any_work(no_engine, path, via):
    small = create_app({"max_elements": 100, "max_work": 1000}).test_client()
    body = BIG[path]
    if via == "grade":
        task = next(n for n, t in TASKS.items() if t.path == path)
        body, path = {**body, "task": task, "submission": {"x": 1.0}}, "/v1/grade"
    doc = problem(small, path, body)
    assert doc["errors"] and {e["type"] for e in doc["errors"]} == {"limit_exceeded"}
    assert {e["location"] for e in doc["errors"]} <= {"body", "A_prev", "AL", "submission"}
    assert all("limit" in e["message"] for e in doc["errors"])


@pytest.mark.parametrize("setting,value,path,location", [
    ("max_examples", 4, "/v1/layer/forward", "A_prev"),
    ("max_units", 4, "/v1/layer/backward", "A_prev"),
    ("max_activations", 50, "/v1/layer/forward", "body"),
    ("max_work", 100, "/v1/network/backward", "body"),
    ("max_layers", 1, "/v1/network/backward", "layers"),
    ("max_examples", 4, "/v1/cost", "AL"),
    ("max_elements", 10, "/v1/optimizer-step", "body"),
])
def test_each_limit_is_located(no_engine, setting, value, path, location):
    small = create_app({setting: value}).test_client()
    body = dict(BIG[path])
    if setting == "max_layers":
        body = {**body, "layers": body["layers"] * 2, "caches": body["caches"] * 2}
    doc = problem(small, path, body)
    assert (location, "limit_exceeded") in {(e["location"], e["type"]) for e in doc["errors"]}

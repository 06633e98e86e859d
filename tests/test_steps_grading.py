"""POST /v1/grade with a one-step ``task``: every mistake planted in an independent student (the course's
formulas written here in numpy, with the mistake on demand) is diagnosed by its code on exactly the keys it makes
wrong; the route's own response, fed back, scores full marks in the single and the batch form under every format.

The optimizer mistakes are taken from the registry (service.engine.optimizers.OPTIMIZERS, plus t_off_by_one for
the rules with a step number and decay_without_floor for the scheduled decay), so that a mistake registered
there is planted here by default (the student raises KeyError for one it does not know).
"""

from __future__ import annotations

import math
from xml.etree import ElementTree as ET

import numpy as np
import orjson
import pytest

from schemas.step_grading import TASKS
from service.app import create_app
from service.engine import ACTIVATIONS, KINDS
from service.engine.optimizers import CONVENTIONS, OPTIMIZERS, T_OFF_BY_ONE
from tests import step_oracle as so

RTOL, ATOL = 1e-5, 1e-8  # the grader's defaults


@pytest.fixture(scope="module")
def post():
    client = create_app().test_client()

    def _post(path: str, body: dict, status: int = 200):
        r = client.post(path, data=orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY),
                        content_type="application/json")
        assert r.status_code == status, r.data
        return orjson.loads(r.data) if r.headers["Content-Type"].endswith("json") else r.data

    return _post


def flat(body: dict, prefix: str = "") -> dict[str, np.ndarray]:
    """A response (or a submission) as the grader's dotted keys: nested objects joined by dots, nulls and lists of
    objects (an empty one too: the cost's warnings) left out."""
    out = {}
    for k, v in body.items():
        if isinstance(v, dict):
            out.update(flat(v, f"{prefix}{k}."))
        elif isinstance(v, (int, float, np.ndarray)) and not isinstance(v, bool):
            out[f"{prefix}{k}"] = np.asarray(v, dtype=np.float64)
        elif isinstance(v, list) and v and not isinstance(v[0], dict):
            out[f"{prefix}{k}"] = so.as_array(v)
    return out


def graded(result: dict) -> dict[str, dict]:
    return {k["key"]: k for k in result["keys"]}


def assert_diagnosed(result: dict, right: dict, wrong: dict, code: str, also: tuple[str, ...] = ()) -> None:
    """Every key where ``wrong`` differs from ``right`` beyond the tolerance is incorrect (or a transposed shape)
    and diagnosed ``code`` (or one of ``also``, when that one fits exactly as well: then ``code`` is among the
    alternatives); every other key is correct. At least one key is wrong."""
    __tracebackhide__ = True
    R, S = flat(right), flat(wrong)
    keys = graded(result)
    assert set(keys) == set(S), sorted(keys)
    differ = {k for k in S if S[k].shape != R[k].shape or not np.allclose(S[k], R[k], rtol=RTOL, atol=ATOL)}
    assert differ, "the planted mistake changed nothing: the case cannot test it"
    for k, g in keys.items():
        if k not in differ:
            assert g["status"] == "correct" and g["diagnosis"] is None, (k, g["status"], g["diagnosis"])
            continue
        assert g["status"] in ("incorrect", "shape_mismatch"), (k, g["status"])
        d = g["diagnosis"]
        assert d is not None, f"{k}: not diagnosed (expected {code})"
        assert d["code"] == code or (d["code"] in also and code in d.get("alternatives", [])), (k, d)
    named = {d["code"] for d in result["diagnoses"]}
    named |= {a for k in differ for a in keys[k]["diagnosis"].get("alternatives", [])}
    assert code in named, (code, named)


# --- the optimizers: an independent student ---------------------------------------------------------------

def student_optimizer(body: dict, mistake: str | None = None) -> dict:
    """The course's update written out (deeplearning.ai's update_parameters_with_*, cs231n's optim.py), as the
    route's response; ``mistake`` one of the codes the grader knows."""
    o, c = body["optimizer"], body.get("convention", "deeplearning_ai")
    known = {m.code for m in OPTIMIZERS[o].mistakes if c in m.steps} | {T_OFF_BY_ONE[0], "decay_without_floor", None}
    if mistake not in known:
        raise KeyError(f"the student cannot make {mistake!r} with {o} ({c})")
    h = {**so.DEFAULTS[(o, c)], **{k: body[k] for k in so.DEFAULTS[(o, c)] if k in body}}
    lr, decay = h["learning_rate"], body.get("learning_rate_decay")
    if decay:
        epochs = decay["epoch"]
        if decay["kind"] == "scheduled":
            epochs = epochs / decay.get("time_interval", 1000)
            epochs = epochs if mistake == "decay_without_floor" else math.floor(epochs)
        lr = lr / (1 + decay["decay_rate"] * epochs)
    t = None
    if o == "adam":
        t = body.get("t", 0) + (c == "cs231n") + (mistake == T_OFF_BY_ONE[0]) * (1 if c == "deeplearning_ai" else -1)
    sign = -1.0 if mistake == "update_sign_flipped" else 1.0
    names = so.STATE_NAMES[(o, c)]
    out = {"params": {}, "state": {n: {} for n in names}, "learning_rate": lr}
    if t is not None:
        out["t"] = t
    for name, P in body["params"].items():
        g, dP = f"d{name}", np.asarray(body["grads"][f"d{name}"])
        st = {n: np.asarray(body.get("state", {}).get(n, {}).get(g, np.zeros_like(P))) for n in names}
        new, state, extras = _student_rule(o, c, np.asarray(P), dP, st, h, lr, t, mistake)
        out["params"][name] = np.asarray(P) - sign * new
        for n, a in state.items():
            out["state"][n][g] = a
        for e, a in extras.items():
            out.setdefault(e, {})[g] = a
    return out


def _student_rule(o, c, P, dP, st, h, lr, t, mistake):
    """One parameter: (the step subtracted from P, the new state, Adam's corrected moments)."""
    eps_inside = mistake == "epsilon_inside_sqrt"
    if o == "sgd":
        return lr * dP, {}, {}
    if o == "momentum" and c == "deeplearning_ai":
        v = h["beta"] * st["v"] + (dP if mistake == "momentum_without_one_minus_beta" else (1 - h["beta"]) * dP)
        return lr * v, {"v": v}, {}
    if o == "momentum":
        v = h["momentum"] * st["velocity"] - lr * dP
        return -v, {"velocity": v}, {}
    if o == "rmsprop":
        name, rho = ("s", h["beta2"]) if c == "deeplearning_ai" else ("cache", h["decay_rate"])
        s = rho * st[name] + (1 - rho) * dP ** 2
        return lr * dP / (np.sqrt(s + h["epsilon"]) if eps_inside else np.sqrt(s) + h["epsilon"]), {name: s}, {}
    first, second = ("v", "s") if c == "deeplearning_ai" else ("m", "v")
    v = h["beta1"] * st[first] + (1 - h["beta1"]) * dP
    s = h["beta2"] * st[second] + (1 - h["beta2"]) * dP ** 2
    vc, sc = (v, s) if mistake == "bias_correction_missing" else (v / (1 - h["beta1"] ** t), s / (1 - h["beta2"] ** t))
    vu, su = (v, s) if mistake == "uncorrected_moments_in_update" else (vc, sc)
    step = lr * vu / (np.sqrt(su + h["epsilon"]) if eps_inside else np.sqrt(su) + h["epsilon"])
    return step, {first: v, second: s}, {f"{first}_corrected": vc, f"{second}_corrected": sc}


# Hyperparameters large enough that each mistake shows beyond the tolerance (epsilon 1e-2, betas well below 1).
HYPER = {"learning_rate": 0.05, "beta": 0.8, "momentum": 0.7, "beta1": 0.8, "beta2": 0.9, "decay_rate": 0.85,
         "epsilon": 1e-2}


def optimizer_body(o: str, c: str, seed: int = 0, decay: dict | None = None) -> dict:
    rng = np.random.default_rng(seed)
    params = {"W1": rng.normal(size=(3, 2)), "b1": rng.normal(size=(3, 1)), "W2": rng.normal(size=(2, 3))}
    body = {"optimizer": o, "convention": c, "params": params,
            "grads": {f"d{k}": rng.normal(size=P.shape) for k, P in params.items()},
            **{k: HYPER[k] for k in so.DEFAULTS[(o, c)]}}
    names = so.STATE_NAMES[(o, c)]
    if names:
        body["state"] = {n: {f"d{k}": (rng.uniform(0.1, 1, P.shape) if n in ("s", "cache") or (n, c) == ("v", "cs231n")
                                       else rng.normal(size=P.shape)) for k, P in params.items()} for n in names}
    if o == "adam":
        body["t"] = 3
    if decay:
        body["learning_rate_decay"] = decay
    return body


def _optimizer_mistakes() -> list[tuple[str, str, str]]:
    out = [(o, c, m.code) for o, unit in OPTIMIZERS.items() for m in unit.mistakes for c in CONVENTIONS if c in m.steps]
    out += [(o, c, T_OFF_BY_ONE[0]) for o, unit in OPTIMIZERS.items() for c in CONVENTIONS if unit.rules[c].t_used]
    return out


SCHEDULED = {"kind": "scheduled", "epoch": 250, "decay_rate": 0.5, "time_interval": 100}


@pytest.mark.parametrize("optimizer,convention,mistake", _optimizer_mistakes())
def test_each_optimizer_mistake_is_diagnosed(post, optimizer, convention, mistake):
    body = optimizer_body(optimizer, convention)
    right = post("/v1/optimizer-step", body)
    assert_close_response(student_optimizer(body), right)
    wrong = student_optimizer(body, mistake)
    result = post("/v1/grade", {**body, "task": "optimizer_step", "submission": wrong})["result"]
    # Adam's uncorrected moments in the update give the same parameters as the bias correction left out
    also = {"uncorrected_moments_in_update": ("bias_correction_missing",),
            "bias_correction_missing": ("uncorrected_moments_in_update",)}.get(mistake, ())
    assert_diagnosed(result, right, wrong, mistake, also)
    # the batch form: the route's response (its null t left out here; fed back whole below) and the mistake
    fed_back = {k: v for k, v in right.items() if v is not None}
    first, second = post("/v1/grade", {**body, "task": "optimizer_step", "submissions": [fed_back, wrong]})["results"]
    assert first["score"] == first["max_score"] and not first["diagnoses"]
    assert [(k["key"], k["status"], k["diagnosis"]) for k in second["keys"]] == [
        (k["key"], k["status"], k["diagnosis"]) for k in result["keys"]]


def assert_close_response(student: dict, route: dict) -> None:
    """The student without a mistake is the route (so that a diagnosis tests the mistake, not the student)."""
    S, R = flat(student), flat(route)
    assert set(S) == set(R), (sorted(S), sorted(R))
    for k in S:
        so.assert_close(S[k], R[k], k, 1e-12)


@pytest.mark.parametrize("optimizer,convention", [(o, c) for o in OPTIMIZERS for c in CONVENTIONS])
def test_the_scheduled_decay_without_its_floor_is_diagnosed(post, optimizer, convention):
    """epoch 250, time_interval 100: lr0 / (1 + 0.5 * 2.5) instead of lr0 / (1 + 0.5 * 2)."""
    body = optimizer_body(optimizer, convention, seed=1, decay=SCHEDULED)
    right = post("/v1/optimizer-step", body)
    assert_close_response(student_optimizer(body), right)
    wrong = student_optimizer(body, "decay_without_floor")
    result = post("/v1/grade", {**body, "task": "optimizer_step", "submission": wrong})["result"]
    assert_diagnosed(result, right, wrong, "decay_without_floor")
    assert graded(result)["learning_rate"]["diagnosis"]["code"] == "decay_without_floor"


def test_uncorrected_moments_in_update_wins_when_the_corrected_moments_are_right(post):
    body = optimizer_body("adam", "deeplearning_ai")
    wrong = student_optimizer(body, "uncorrected_moments_in_update")
    result = post("/v1/grade", {**body, "task": "optimizer_step", "submission": wrong})["result"]
    assert graded(result)["v_corrected.dW1"]["status"] == "correct"
    assert graded(result)["params.W1"]["diagnosis"]["code"] == "uncorrected_moments_in_update"


def test_a_correct_step_is_not_diagnosed_as_any_mistake(post):
    """Noise within the tolerance is correct; noise beyond it, with no mistake behind it, gets no diagnosis."""
    body = optimizer_body("adam", "cs231n", seed=3)
    right = post("/v1/optimizer-step", body)
    rng = np.random.default_rng(0)
    near = {"params": {k: np.asarray(v) * (1 + 1e-7 * rng.normal(size=np.shape(v))) for k, v in right["params"].items()}}
    result = post("/v1/grade", {**body, "task": "optimizer_step", "submission": near})["result"]
    assert result["score"] == result["max_score"] and not result["diagnoses"]
    far = {"params": {k: np.asarray(v) + 0.3 * rng.normal(size=np.shape(v)) for k, v in right["params"].items()}}
    result = post("/v1/grade", {**body, "task": "optimizer_step", "submission": far})["result"]
    assert result["score"] == 0 and all(k["diagnosis"] is None for k in result["keys"])


# --- the layer, cost and network tasks: independent students --------------------------------------------------

def _sigmoid(z):
    return 1 / (1 + np.exp(-z))


G_PRIME = {"sigmoid": lambda z: _sigmoid(z) * (1 - _sigmoid(z)), "tanh": lambda z: 1 - np.tanh(z) ** 2,
           "relu": lambda z: (z > 0).astype(float), "linear": np.ones_like}
G = {"sigmoid": _sigmoid, "tanh": np.tanh, "relu": lambda z: np.maximum(z, 0), "linear": lambda z: z}


def dense_student(W, b, A_prev, *, act="linear", dA=None, dZ=None, Z=None, l2=0.0, mistake=None) -> dict:
    """linear_activation_backward as the course writes it (features first, per_example): dZ = dA g'(Z),
    dW = dZ A_prev^T / m + (lambda/m) W, db = sum(dZ) / m, dA_prev = W^T dZ; with a mistake on demand."""
    m = A_prev.shape[1]
    Z = W @ A_prev + b if Z is None else Z
    if dZ is None:
        at = G[act](Z) if mistake == "derivative_on_A" else Z
        dZ = dA if mistake == "activation_derivative_missing" else dA * G_PRIME[act](at)
    dW = dZ @ A_prev.T / m + (0.0 if mistake == "missing_l2" else l2 / m * W)
    db = dZ.sum(axis=1, keepdims=True) / m
    if mistake == "missing_1_over_m":
        dW, db = dW * m, db * m
    dA_prev = W.T @ dZ
    return {"dA_prev": -dA_prev if mistake == "sign_flipped" else dA_prev, "dZ": dZ,
            "dW": np.ascontiguousarray(dW.T) if mistake == "transposed" else dW, "db": db}


rng0 = np.random.default_rng(5)
W0, b0, X0 = rng0.normal(size=(3, 4)), rng0.normal(size=(3, 1)), rng0.normal(size=(4, 6))
dA0, Z0 = rng0.normal(size=(3, 6)), rng0.normal(size=(3, 6))


def _layer_body(act: str, **kw) -> dict:
    body = {"layer": {"W": W0, "b": b0, "activation": act}, "A_prev": X0}
    body.update({k: v for k, v in kw.items() if v is not None and k in ("dA", "dZ", "Z")})
    if kw.get("l2"):
        body["l2"] = kw["l2"]
    return body


LAYER_MISTAKES = [
    # (mistake, activation, upstream (dA with or without the cache's Z, or dZ), l2)
    ("missing_1_over_m", "linear", "dZ", 0.0),
    ("missing_1_over_m", "relu", "dA", 0.4),
    ("sign_flipped", "tanh", "dA", 0.0),
    ("transposed", "linear", "dZ", 0.0),
    ("derivative_on_A", "sigmoid", "dA", 0.0),
    ("derivative_on_A", "tanh", "dA+Z", 0.0),
    ("derivative_on_A", "sigmoid", "dA+Z", 0.7),
    ("activation_derivative_missing", "sigmoid", "dA", 0.0),
    ("activation_derivative_missing", "tanh", "dA+Z", 0.0),
    ("missing_l2", "linear", "dZ", 0.5),
    ("missing_l2", "sigmoid", "dA+Z", 2.0),
]


@pytest.mark.parametrize("mistake,act,upstream,l2", LAYER_MISTAKES)
def test_each_layer_backward_mistake_is_diagnosed(post, mistake, act, upstream, l2):
    kw = {"dZ": dA0} if upstream == "dZ" else {"dA": dA0, "Z": Z0 if upstream == "dA+Z" else None}
    body = _layer_body(act, l2=l2, **kw)
    right = post("/v1/layer/backward", body)
    assert_close_response(dense_student(W0, b0, X0, act=act, l2=l2, **kw), right)
    wrong = dense_student(W0, b0, X0, act=act, l2=l2, mistake=mistake, **kw)
    result = post("/v1/grade", {**body, "task": "layer_backward", "submission": wrong})["result"]
    assert_diagnosed(result, right, wrong, mistake)


def test_batchnorm_constant_statistics_is_diagnosed(post):
    """A student's batchnorm backward that treats the batch mean and variance as constants: dx = dout gamma /
    sigma (train mode); dgamma and dbeta are right."""
    rng = np.random.default_rng(2)
    x, dout = rng.normal(2, 3, (4, 7)), rng.normal(size=(4, 7))
    gamma, beta = rng.normal(1, 0.3, 4), rng.normal(size=4)
    body = {"layer": {"type": "batchnorm", "gamma": gamma, "beta": beta}, "A_prev": x, "dZ": dout}
    right = post("/v1/layer/backward", body)
    mean, var = x.mean(axis=1, keepdims=True), x.var(axis=1, keepdims=True)
    std, m = np.sqrt(var + 1e-5), x.shape[1]
    xhat = (x - mean) / std
    g = gamma.reshape(-1, 1)
    dx = (g / (m * std)) * (m * dout - dout.sum(1, keepdims=True) - xhat * (dout * xhat).sum(1, keepdims=True))
    student = {"dA_prev": dx, "dZ": dout, "dgamma": (dout * xhat).sum(1) / m, "dbeta": dout.sum(1) / m}
    assert_close_response(student, right)
    wrong = {**student, "dA_prev": dout * g / std}
    result = post("/v1/grade", {**body, "task": "layer_backward", "submission": wrong})["result"]
    assert_diagnosed(result, right, wrong, "batchnorm_constant_statistics")


@pytest.mark.parametrize("act", ["sigmoid", "tanh", "relu"])
def test_activation_not_applied_is_diagnosed(post, act):
    body = _layer_body(act)
    right = post("/v1/layer/forward", body)
    Z = W0 @ X0 + b0
    assert_close_response({"Z": Z, "A": G[act](Z), "cache": {}}, right)
    wrong = {"Z": Z, "A": Z}
    result = post("/v1/grade", {**body, "task": "layer_forward", "submission": wrong})["result"]
    assert_diagnosed(result, {"Z": Z, "A": G[act](Z)}, wrong, "activation_not_applied")


AL_C, Y_C = np.array([[0.8, 0.9, 0.4, 0.3, 0.65]]), np.array([[1.0, 1.0, 0.0, 1.0, 0.0]])
WEIGHTS = [rng0.normal(size=(3, 4)), rng0.normal(size=(1, 3))]


def cost_student(AL, Y, l2=0.0, weights=(), mistake=None) -> dict:
    """compute_cost(_with_regularization) and its dAL, dZL as the course writes them (per_example)."""
    m = Y.shape[1]
    losses = -(Y * np.log(AL) + (1 - Y) * np.log(1 - AL))
    penalty = l2 / (2 * m) * sum(np.sum(W ** 2) for W in weights)
    cost = (losses.sum() if mistake == "cost_sum_not_mean" else losses.sum() / m) + (
        0.0 if mistake == "missing_l2" else penalty)
    dAL, dZL = -(Y / AL - (1 - Y) / (1 - AL)), AL - Y
    if mistake == "dZL_sent_as_dAL":
        dAL = dZL
    if mistake == "intermediate_convention":
        dAL, dZL = dAL / m, dZL / m
    return {"cost": cost, "dAL": dAL, "dZL": dZL, "warnings": []}


@pytest.mark.parametrize("mistake,l2", [("cost_sum_not_mean", 0.0), ("cost_sum_not_mean", 0.3),
                                        ("dZL_sent_as_dAL", 0.0), ("intermediate_convention", 0.0),
                                        ("missing_l2", 0.3)])
def test_each_cost_mistake_is_diagnosed(post, mistake, l2):
    body = {"cost": "binary_cross_entropy", "AL": AL_C, "Y": Y_C,
            **({"l2": l2, "weights": WEIGHTS} if l2 else {})}
    right = post("/v1/cost", body)
    assert_close_response(cost_student(AL_C, Y_C, l2, WEIGHTS if l2 else ()), right)
    wrong = cost_student(AL_C, Y_C, l2, WEIGHTS if l2 else (), mistake)
    wrong.pop("warnings")
    result = post("/v1/grade", {**body, "task": "cost", "submission": wrong})["result"]
    assert_diagnosed(result, right, wrong, mistake)


def network_student(layers, caches, dAL, mistake=None, at=1) -> dict:
    """L_model_backward as the course writes it, from each layer's own cache; the mistake at layer ``at``."""
    out, dA, L = {f"dA{len(layers)}": dAL}, dAL, len(layers)
    for l in range(L, 0, -1):
        W, b, act = (np.asarray(layers[l - 1][k]) for k in ("W", "b", "activation"))
        step = dense_student(W, b, caches[l - 1]["A_prev"], act=str(act), dA=dA, Z=caches[l - 1]["Z"],
                             mistake=mistake if l == at else None)
        out.update({f"dW{l}": step["dW"], f"db{l}": step["db"], f"dZ{l}": step["dZ"], f"dA{l - 1}": step["dA_prev"]})
        dA = step["dA_prev"]
    return out


@pytest.mark.parametrize("mistake,at", [("missing_1_over_m", 1), ("missing_1_over_m", 2), ("derivative_on_A", 1)])
def test_each_network_backward_mistake_is_diagnosed(post, mistake, at):
    """Two sigmoid layers from independently drawn caches: 1/m forgotten at one layer's dW and db, the
    derivative on A at the hidden layer (which changes dZ1, dW1, db1 and dA0)."""
    rng = np.random.default_rng(8)
    layers = [{"W": rng.normal(size=(3, 4)), "b": rng.normal(size=(3, 1)), "activation": "sigmoid"},
              {"W": rng.normal(size=(2, 3)), "b": rng.normal(size=(2, 1)), "activation": "sigmoid"}]
    caches = [{"A_prev": rng.normal(size=(4, 5)), "Z": rng.normal(size=(3, 5))},
              {"A_prev": rng.normal(size=(3, 5)), "Z": rng.normal(size=(2, 5))}]
    dAL = rng.normal(size=(2, 5))
    body = {"layers": layers, "caches": caches, "dAL": dAL}
    right = post("/v1/network/backward", body)
    assert_close_response(network_student(layers, caches, dAL), right)
    wrong = network_student(layers, caches, dAL, mistake, at)
    result = post("/v1/grade", {**body, "task": "network_backward", "submission": wrong})["result"]
    assert_diagnosed(result, right, wrong, mistake)
    diagnosed = {k["key"]: k["diagnosis"] for k in result["keys"] if k["diagnosis"]}
    if mistake == "missing_1_over_m":  # a key's own slip: the key names the layer
        assert set(diagnosed) == {f"dW{at}", f"db{at}"}
    else:  # a mistaken backward pass: the diagnosis names the layer where it happened
        assert set(diagnosed) == {"dZ1", "dW1", "db1", "dA0"} and {d["layer"] for d in diagnosed.values()} == {at}


# --- the route's response fed back: full marks, single and batch, every format ------------------------------

def _bodies() -> dict[str, list[dict]]:
    """A few bodies per task, over the registry's kinds on vectors (the image kinds' are in
    tests/test_steps_images.py), costs and optimizers (random, seeded)."""
    acts, kinds = list(ACTIVATIONS), [name for name, kind in KINDS.items() if kind.input_rank == 1]
    out = {
        "layer_forward": [so.random_layer_case(s, k, acts, min_m=2).body() for s in range(3) for k in kinds],
        "layer_backward": [so.random_layer_case(s, k, acts, backward=True).body() for s in range(3) for k in kinds],
        "cost": [so.random_cost_case(s, c, acts).body() for s in range(3) for c in so.COST_NAMES],
        "optimizer_step": [optimizer_body("adam", c, s, SCHEDULED if s else None) for s in range(2)
                           for c in CONVENTIONS],
        "network_backward": [so.random_network_case(s, k, kinds, acts, list(so.COST_NAMES)).body()
                             for s in range(3) for k in kinds],
    }
    assert set(out) == set(TASKS), "a task of the registry without bodies here"
    return out


BODIES = _bodies()
FEEDBACK = [(task, i) for task, bodies in BODIES.items() for i in range(len(bodies))]


@pytest.mark.parametrize("task,i", FEEDBACK)
def test_the_route_response_scores_full_marks(post, task, i):
    _fed_back_scores_full_marks(post, task, BODIES[task][i], strip=())


@pytest.mark.parametrize("i", range(len(BODIES["cost"])))
def test_the_cost_response_without_its_warnings_scores_full_marks(post, i):
    _fed_back_scores_full_marks(post, "cost", BODIES["cost"][i], strip=("warnings",))


def _fed_back_scores_full_marks(post, task: str, body: dict, strip: tuple[str, ...]) -> None:
    response = post(TASKS[task].path, body)
    response = {k: v for k, v in response.items() if k not in strip}
    single = post("/v1/grade", {**body, "task": task, "submission": response})["result"]
    assert single["status"] == "graded" and single["score"] == single["max_score"] == len(single["keys"]) > 0
    assert all(k["status"] == "correct" and k["diagnosis"] is None for k in single["keys"])
    assert set(graded(single)) == set(flat(response))
    batch = post("/v1/grade", {**body, "task": task, "submissions": [response, response]})["results"]
    assert [(r["score"], r["max_score"]) for r in batch] == [(single["max_score"], single["max_score"])] * 2


@pytest.mark.parametrize("optimizer", [o for o, unit in OPTIMIZERS.items()
                                       if unit.rules["deeplearning_ai"].t_used is None])
def test_the_response_of_an_optimizer_without_t_scores_full_marks(post, optimizer):
    body = optimizer_body(optimizer, "deeplearning_ai")
    response = post("/v1/optimizer-step", body)
    assert response["t"] is None
    result = post("/v1/grade", {**body, "task": "optimizer_step", "submission": response})["result"]
    assert result["score"] == result["max_score"]


def test_grading_a_network_with_a_batchnorm_layer_is_not_a_500(post):
    body = {"layers": [{"type": "batchnorm", "gamma": [1.0, 2.0], "beta": [0.0, 0.5]}],
            "caches": [{"A_prev": [[1.0, 2.0, 4.0], [0.0, 1.0, 3.0]]}], "dAL": [[1.0, 0.0, -1.0], [0.5, 0.5, 0.0]]}
    response = post("/v1/network/backward", body)
    result = post("/v1/grade", {**body, "task": "network_backward", "submission": response})["result"]
    assert result["score"] == result["max_score"] == 5


FORMATS = ["native", "gradescope", "prairielearn", "junit"]


def _full_marks(fmt: str, doc, n_keys: int) -> None:
    """The document of one submission in ``fmt`` says full marks over n_keys keys."""
    if fmt == "native":
        assert doc["score"] == doc["max_score"] == n_keys
    elif fmt == "gradescope":
        assert doc["score"] == n_keys and len(doc["tests"]) == n_keys
        assert all(t["score"] == t["max_score"] == 1 and t["status"] == "passed" for t in doc["tests"])
    elif fmt == "prairielearn":
        assert doc["gradable"] is True and doc["score"] == 1.0 and len(doc["tests"]) == n_keys
        assert all(t["points"] == t["max_points"] for t in doc["tests"])
    else:
        props = {p.get("name"): p.get("value") for p in doc.iter("property")}
        assert props["score"] == props["max_score"] == str(n_keys)
        assert doc.get("failures") == "0" and len(doc.findall("testcase")) == n_keys


def _documents(fmt: str, out, batch: bool) -> list:
    if fmt == "junit":
        root = ET.fromstring(out)
        return root.findall("testsuite") if root.tag == "testsuites" else [root]
    if fmt == "native":
        return out["results"] if batch else [out["result"]]
    return out["results"] if batch else [out]


@pytest.mark.parametrize("task", list(TASKS))
@pytest.mark.parametrize("fmt", FORMATS)
def test_full_marks_in_every_format(post, task, fmt):
    body = BODIES[task][-1]
    response = post(TASKS[task].path, body)
    n = len(flat(response))
    for batch in (False, True):
        form = {"submissions": [response] * 3} if batch else {"submission": response}
        out = post("/v1/grade", {**body, "task": task, **form, "format": fmt})
        docs = _documents(fmt, out, batch)
        assert len(docs) == (3 if batch else 1)
        for doc in docs:
            _full_marks(fmt, doc, n)


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_diagnosis_reaches_every_format(post, fmt):
    """The optimizer's mistake is named in each platform's document, as the network's are."""
    body = optimizer_body("adam", "deeplearning_ai")
    wrong = student_optimizer(body, "epsilon_inside_sqrt")
    native = post("/v1/grade", {**body, "task": "optimizer_step", "submission": wrong})["result"]
    message = next(k["diagnosis"]["message"] for k in native["keys"] if k["key"] == "params.W1")
    out = post("/v1/grade", {**body, "task": "optimizer_step", "submission": wrong, "format": fmt})
    text = out.decode() if isinstance(out, bytes) else orjson.dumps(out).decode()
    assert "epsilon_inside_sqrt" in text or message in text

"""POST /v1/grade and service.engine.grading.

Every diagnosis is proven by a submission that commits exactly that mistake: ``student`` below is backprop as a
student writes it (plain numpy, the course's formulas, independent of the engine), with a switch per mistake.
"""

from __future__ import annotations

import math
import re

import numpy as np
import orjson
import pytest

from schemas.gradients import GradientRequest, prepare
from schemas.limits import Limits
from service import create_app, grading_routes
from service.engine import forward, grading
from service.engine.grading import Tolerance

# --- fixtures: the app with the grading blueprint (until service/app.py registers it) -------------------------


@pytest.fixture
def app():
    app = create_app()
    if "grading" not in app.blueprints:
        app.register_blueprint(grading_routes.bp)
    return app


# --- random networks ----------------------------------------------------------------------------------------

# (cost, output activation): the canonical pairs and the non-canonical MSE outputs.
OUTPUTS = [("binary_cross_entropy", "sigmoid"), ("categorical_cross_entropy", "softmax"),
           ("mean_squared_error", "linear"), ("mean_squared_error", "sigmoid"), ("mean_squared_error", "tanh"),
           ("mean_squared_error", "leaky_relu")]
HIDDEN = ["sigmoid", "tanh", "relu", "leaky_relu", "linear"]


def network(seed: int, cost: str, out: str, hidden: list[str], *, sizes=None, m=5, l2=0.0, keep_prob=None,
            b_vector=False, zero_unit: int | None = None) -> dict:
    """A request body (features first). ``zero_unit``: layer (1-based) whose unit 0 gets W = 0, b = 0, so its
    Z row is exactly 0."""
    rng = np.random.default_rng(seed)
    L = len(hidden) + 1
    sizes = sizes or [3] + [4, 3, 5][:L - 1] + [2 if cost != "binary_cross_entropy" else 1]
    layers = []
    for l in range(1, L + 1):
        W = rng.normal(0, 1.0, (sizes[l], sizes[l - 1])) / math.sqrt(sizes[l - 1])
        b = rng.normal(0, 0.3, (sizes[l], 1))
        if zero_unit == l:
            W[0], b[0] = 0.0, 0.0
        act = hidden[l - 1] if l < L else out
        layers.append({"W": W.tolist(), "b": (b.reshape(-1) if b_vector else b).tolist(), "activation": act})
    X = rng.normal(0, 1.0, (sizes[0], m))
    if cost == "binary_cross_entropy":
        Y = rng.integers(0, 2, (sizes[-1], m)).astype(float)
    elif cost == "categorical_cross_entropy":
        Y = np.eye(sizes[-1])[:, rng.integers(0, sizes[-1], m)]
    else:
        Y = rng.normal(0, 1.0, (sizes[-1], m))
    body = {"layers": layers, "X": X.tolist(), "Y": Y.tolist(), "cost": cost}
    if l2:
        body["l2"] = l2
    if keep_prob is not None:
        body["dropout"] = {"keep_prob": keep_prob,
                           "masks": [(rng.random((sizes[l], m)) < keep_prob).astype(float).tolist()
                                     for l in range(1, L)]}
    return body


def reference(body: dict) -> grading.Reference:
    req = GradientRequest.model_validate(body)
    prep = prepare(req, Limits())
    return grading.build_reference(prep.X, prep.Y, prep.layers, req.cost, l2=req.l2, dropout=prep.dropout,
                                   intermediates=req.intermediates, db_as_vector=prep.b_is_vector)


# --- the student's backprop, with a switch per mistake --------------------------------------------------------

def g(act: str, Z: np.ndarray) -> np.ndarray:
    if act == "sigmoid":
        return 1 / (1 + np.exp(-Z))
    if act == "tanh":
        return np.tanh(Z)
    if act == "relu":
        return np.maximum(0, Z)
    if act == "leaky_relu":
        return np.where(Z > 0, Z, 0.01 * Z)
    if act == "softmax":
        E = np.exp(Z - Z.max(axis=0))
        return E / E.sum(axis=0)
    return Z


def g_prime(act: str, Z: np.ndarray, at_zero: float | None = None) -> np.ndarray:
    if act == "sigmoid":
        s = 1 / (1 + np.exp(-Z))
        return s * (1 - s)
    if act == "tanh":
        return 1 - np.tanh(Z) ** 2
    if act == "relu":
        d = (Z > 0).astype(float)
    elif act == "leaky_relu":
        d = np.where(Z > 0, 1.0, 0.01)
    else:
        return np.ones_like(Z)
    if at_zero is not None:
        d[Z == 0] = at_zero
    return d


def student(body: dict, mistake: str | None = None, at: int | None = None) -> dict[str, np.ndarray]:
    """Every key as a student's code computes it (features first, b's shape kept), with ``mistake`` at ``at``."""
    Ws = [np.array(layer["W"]) for layer in body["layers"]]
    bs = [np.array(layer["b"]).reshape(-1, 1) for layer in body["layers"]]
    acts = [layer["activation"] for layer in body["layers"]]
    X, Y, cost = np.array(body["X"]), np.array(body["Y"]), body["cost"]
    lam = body.get("l2", 0.0)
    drop = body.get("dropout")
    p = drop["keep_prob"] if drop else 1.0
    Ds = [np.array(D) for D in drop["masks"]] if drop else []
    L, m = len(Ws), X.shape[1]

    caches, A = [], X
    for l in range(1, L + 1):
        Z = Ws[l - 1] @ A + bs[l - 1]
        A_new = g(acts[l - 1], Z)
        if drop and l < L:
            A_new = A_new * Ds[l - 1] / p
        caches.append((A, Z, A_new))
        A = A_new
    AL, ZL = A, caches[-1][1]

    if cost == "binary_cross_entropy":
        J = -np.sum(Y * np.log(AL) + (1 - Y) * np.log(1 - AL)) / m
        dAL = -(Y / AL - (1 - Y) / (1 - AL))
    elif cost == "categorical_cross_entropy":
        J = -np.sum(Y * np.log(AL)) / m
        dAL = -Y / AL
    else:
        J = np.sum((AL - Y) ** 2) / (2 * m)
        dAL = AL - Y
    if lam and mistake != "missing_l2":
        J += lam / (2 * m) * sum(np.sum(W * W) for W in Ws)

    canonical = {"binary_cross_entropy": "sigmoid", "categorical_cross_entropy": "softmax",
                 "mean_squared_error": "linear"}[cost] == acts[-1]
    if mistake == "derivative_on_A" and at == L:
        dZ = dAL * g_prime(acts[-1], AL)  # sigmoid'(A) or tanh'(A): the derivative evaluated on A
    elif mistake == "relu_derivative_at_zero" and at == L:
        dZ = dAL * g_prime(acts[-1], ZL, at_zero=1.0)
    elif mistake == "dAL_sent_as_dZL":
        dZ = dAL.copy()
    elif canonical:
        dZ = AL - Y
    else:
        dZ = dAL * g_prime(acts[-1], ZL)
    if mistake == "sign_flipped":
        dZ = -dZ
    if mistake in ("intermediate_convention", "extra_1_over_m"):
        dZ, dAL = dZ / m, dAL / m

    grads = {"cost": np.array(J), "AL": AL, f"dA{L}": dZ if mistake == "dZL_sent_as_dAL" else dAL}
    scale = 1.0 if mistake in ("missing_1_over_m", "intermediate_convention") else 1.0 / m
    for l in range(L, 0, -1):
        A_prev, Z, _ = caches[l - 1]
        grads[f"dZ{l}"] = dZ
        dW = scale * dZ @ A_prev.T
        if mistake != "missing_l2":
            dW = dW + lam / m * Ws[l - 1]
        grads[f"dW{l}"] = dW
        db = scale * np.sum(dZ, axis=1, keepdims=True)
        grads[f"db{l}"] = db.reshape(-1) if isinstance(body["layers"][l - 1]["b"][0], float) else db
        dA_prev = Ws[l - 1].T @ dZ
        if l > 1:
            if drop:
                if mistake == "dropout_mask_not_applied" and at == l - 1:
                    pass
                elif mistake == "dropout_not_scaled" and at == l - 1:
                    dA_prev = dA_prev * Ds[l - 2]
                else:
                    dA_prev = dA_prev * Ds[l - 2] / p
            Z_prev, A_prev_out = caches[l - 2][1], caches[l - 2][2]
            if mistake == "derivative_on_A" and at == l - 1:
                dZ = dA_prev * g_prime(acts[l - 2], A_prev_out)
            elif mistake == "relu_derivative_at_zero" and at == l - 1:
                dZ = dA_prev * g_prime(acts[l - 2], Z_prev, at_zero=1.0)
            else:
                dZ = dA_prev * g_prime(acts[l - 2], Z_prev)
        grads[f"dA{l - 1}"] = dA_prev
    return grads


def key_transform(grads: dict, mistake: str, at: int | None) -> dict:
    """Mistakes made when handing the arrays in, not when computing them."""
    out = dict(grads)
    if mistake == "transposed":
        out[f"dW{at}"] = grads[f"dW{at}"].T
        out[f"dZ{at}"] = grads[f"dZ{at}"].T
    elif mistake == "column_vs_vector":
        out[f"db{at}"] = grads[f"db{at}"].reshape(-1) if grads[f"db{at}"].ndim == 2 else grads[f"db{at}"].reshape(-1, 1)
    elif mistake == "off_by_one_down":  # dA_l sent under dA_{l-1}'s name
        out[f"dA{at - 1}"] = grads[f"dA{at}"]
    elif mistake == "off_by_one_up":  # dA_{l-1} sent under dA_l's name
        out[f"dA{at}"] = grads[f"dA{at - 1}"]
    return out


# --- correct submissions --------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(40))
def test_correct_submission_scores_full_marks_without_diagnoses(seed):
    rng = np.random.default_rng(1000 + seed)
    cost, out = OUTPUTS[seed % len(OUTPUTS)]
    hidden = [HIDDEN[i] for i in rng.integers(0, len(HIDDEN), int(rng.integers(0, 4)))]
    body = network(seed, cost, out, hidden, m=int(rng.integers(1, 9)), l2=float(rng.choice([0.0, 0.7])),
                   keep_prob=float(rng.choice([0.6, 1.0])) if hidden and seed % 3 == 0 else None,
                   b_vector=bool(seed % 2))
    ref = reference(body)
    submission = student(body)
    graded = grading.grade(ref, submission, Tolerance())
    assert {k.key for k in graded.keys} == set(grading.key_names(len(body["layers"])))
    assert [k.key for k in graded.keys if k.status != "correct"] == []
    assert graded.score == graded.max_score == len(graded.keys)
    assert all(k.diagnosis is None for k in graded.keys)
    assert graded.summary == []


# --- every diagnosis, proven by the mistake itself -------------------------------------------------------------

def _cases():
    cases = []
    generic = ["missing_1_over_m", "extra_1_over_m", "intermediate_convention", "sign_flipped", "transposed",
               "column_vs_vector", "off_by_one_down", "off_by_one_up", "missing_l2"]
    for cost, out in OUTPUTS:
        for mistake in generic:
            cases.append((mistake, cost, out, ["tanh", "relu"], 2, {}))
        if (cost, out) != ("mean_squared_error", "linear"):  # there dA_L = dZ_L: nothing to tell apart
            cases.append(("dAL_sent_as_dZL", cost, out, ["tanh", "relu"], 3, {}))
            cases.append(("dZL_sent_as_dAL", cost, out, ["tanh", "relu"], 3, {}))
        for act in ("sigmoid", "tanh"):
            cases.append(("derivative_on_A", cost, out, [act, "tanh"], 1, {}))
        for act in ("relu", "leaky_relu"):
            cases.append(("relu_derivative_at_zero", cost, out, ["tanh", act], 2, {"zero_unit": 2}))
        for mistake in ("dropout_mask_not_applied", "dropout_not_scaled"):
            for act in ("relu", "tanh"):
                cases.append((mistake, cost, out, [act, "sigmoid"], 1, {"keep_prob": 0.7}))
            cases.append((mistake, cost, out, ["sigmoid", "leaky_relu"], 2, {"keep_prob": 0.7}))
    for cost, out in [("binary_cross_entropy", "sigmoid"), ("mean_squared_error", "sigmoid"),
                      ("mean_squared_error", "tanh")]:
        cases.append(("derivative_on_A", cost, out, ["relu"], 2, {}))  # at the output layer
    cases.append(("relu_derivative_at_zero", "mean_squared_error", "relu", ["tanh"], 2, {"zero_unit": 2}))
    return cases


EXPECTED_CODE = {"off_by_one_down": "layer_index_off_by_one", "off_by_one_up": "layer_index_off_by_one"}


def _expected(mistake: str, key: str) -> str:
    kind = grading.parse_key(key)[0]
    if mistake == "extra_1_over_m" and kind in ("dZ", "dA"):
        return "intermediate_convention"  # the student's mean-convention dZ, then 1/m again in dW
    return EXPECTED_CODE.get(mistake, mistake)


def _noise_like(ref: grading.Reference, submission: dict, rng) -> dict:
    """Reference + random noise as large as the mistake, in the submission's shapes."""
    out = {}
    for key, s in submission.items():
        R = ref.arrays[key]
        if s.shape == R.shape:
            size, shaped = np.linalg.norm(s - R), (lambda a: a)
        elif s.shape == R.T.shape and R.ndim == 2:
            size, shaped = np.linalg.norm(s - R.T), (lambda a: a.T)
        elif s.size == R.size:
            size, shaped = np.linalg.norm(s.ravel() - R.ravel()), (lambda a, shape=s.shape: a.reshape(shape))
        else:
            size, shaped = np.linalg.norm(R), None
        size = max(size, 1e-2 * np.linalg.norm(R), 1e-3)
        if shaped is None:
            out[key] = rng.normal(0, 1, s.shape) * size / math.sqrt(s.size)
            continue
        out[key] = shaped(R + rng.normal(0, 1, R.shape) * size / math.sqrt(R.size))
    return out


@pytest.mark.parametrize("mistake,cost,out,hidden,at,extra", _cases(),
                         ids=lambda v: v if isinstance(v, str) else str(v) if isinstance(v, int) else "")
def test_each_mistake_is_diagnosed_and_noise_is_not(mistake, cost, out, hidden, at, extra):
    body = network(7, cost, out, hidden, l2=0.5 if mistake == "missing_l2" else 0.0, **extra)
    ref = reference(body)
    computed = student(body, mistake if mistake in grading.DIAGNOSES else None, at)
    submission = key_transform(computed, mistake, at)
    graded = grading.grade(ref, submission, Tolerance())
    wrong = [k for k in graded.keys if k.status != "correct"]
    assert wrong, "the mistake must change at least one key"
    for k in wrong:
        assert k.diagnosis is not None, f"{k.key} ({k.status}) was not diagnosed"
        assert k.diagnosis.code == _expected(mistake, k.key), (k.key, k.diagnosis)
        assert k.diagnosis.evidence["max_abs_error_under_hypothesis"] <= 1e-5 * (1 + np.nanmax(np.abs(ref.arrays[k.key])))
    codes = {d.code for d, _ in graded.summary}
    assert codes == {_expected(mistake, k.key) for k in wrong}

    noisy = grading.grade(ref, _noise_like(ref, submission, np.random.default_rng(3)), Tolerance())
    assert [(k.key, k.diagnosis.code) for k in noisy.keys if k.diagnosis is not None] == []
    assert any(k.status != "correct" for k in noisy.keys)


def test_per_example_submission_against_a_mean_request():
    body = {**network(2, "binary_cross_entropy", "sigmoid", ["relu", "tanh"], m=4), "intermediates": "mean"}
    ref = reference(body)
    graded = grading.grade(ref, student(body), Tolerance())  # the course's per-example dZ and dA
    wrong = {k.key: k.diagnosis.code for k in graded.keys if k.status != "correct"}
    assert wrong == {k: "intermediate_convention" for k in grading.key_names(3) if k[:2] in ("dZ", "dA")}
    assert all(k.diagnosis.evidence["ratio"] == pytest.approx(4.0) for k in graded.keys if k.diagnosis)


def test_backprop_hypotheses_stay_within_the_work_budget():
    body = network(9, "binary_cross_entropy", "sigmoid", ["sigmoid", "tanh"], m=4)
    submission = student(body, "derivative_on_A", 1)
    full = reference(body)
    assert grading.grade(full, submission, Tolerance()).summary[0][0].code == "derivative_on_A"
    # Re-running from layer 1 costs 2 * m * |W1| = 2 * 4 * 12 = 96 multiply-adds; a budget of 100 affords that one only.
    req = GradientRequest.model_validate(body)
    prep = prepare(req, Limits())
    tight = grading.build_reference(prep.X, prep.Y, prep.layers, req.cost, variant_budget=100)
    graded = grading.grade(tight, submission, Tolerance())
    assert len(tight.variants) == 1 and tight.skipped_variants > 0
    assert graded.summary[0][0].code == "derivative_on_A"
    zero = grading.build_reference(prep.X, prep.Y, prep.layers, req.cost, variant_budget=0)
    graded = grading.grade(zero, submission, Tolerance())
    assert all(k.diagnosis is None for k in graded.keys)
    assert any("not tested" in n for k in graded.keys for n in k.notes)


def test_scaling_evidence_is_the_fitted_ratio():
    body = network(1, "binary_cross_entropy", "sigmoid", ["tanh"], m=6)
    ref = reference(body)
    graded = grading.grade(ref, student(body, "missing_1_over_m"), Tolerance())
    dW1 = next(k for k in graded.keys if k.key == "dW1")
    assert dW1.diagnosis.code == "missing_1_over_m"
    assert dW1.diagnosis.evidence["ratio"] == pytest.approx(6.0, rel=1e-9)
    assert dW1.diagnosis.evidence["m"] == 6
    # an unnamed constant factor is reported only as that
    s = {"dW1": 2.5 * ref.arrays["dW1"]}
    kg = grading.grade(ref, s, Tolerance()).keys[0]
    assert kg.diagnosis.code == "scaled_by_constant"
    assert kg.diagnosis.evidence["ratio"] == pytest.approx(2.5, rel=1e-12)


def test_several_fitting_hypotheses_report_the_best_and_say_so():
    # 1 -> 1 -> 1 linear network with W2 = -1: dZ1 = -dZ2, so db1 = -db2 exactly.
    body = {"layers": [{"W": [[0.5]], "b": [[0.1]], "activation": "linear"},
                       {"W": [[-1.0]], "b": [[0.2]], "activation": "linear"}],
            "X": [[1.0, 2.0, -1.0]], "Y": [[0.3, -0.2, 0.4]], "cost": "mean_squared_error"}
    ref = reference(body)
    kg = grading.grade(ref, {"db2": -ref.arrays["db2"]}, Tolerance()).keys[0]
    assert kg.diagnosis.code == "sign_flipped"
    assert kg.diagnosis.alternatives == ("layer_index_off_by_one",)
    assert "also consistent with: layer_index_off_by_one" in kg.diagnosis.message


def test_mistaken_backprop_without_a_mistake_is_the_reference():
    body = network(5, "categorical_cross_entropy", "softmax", ["relu", "tanh"], keep_prob=0.8, l2=0.3)
    ref = reference(body)
    _, caches = forward(ref.X, ref.layers, ref.dropout)
    again = grading.backprop_from(ref, caches, ref.L, ref.result.dZ[-1])
    for key, a in again.items():
        np.testing.assert_allclose(a, ref.arrays[key], rtol=1e-13, atol=1e-15)
    assert set(again) == {k for k in grading.key_names(ref.L) if k not in ("cost", "AL", f"dA{ref.L}")}


def test_tolerance_rule_at_the_boundary():
    # Linear + MSE with exact numbers: dZ1 = Z1 - Y = [3, 5].
    body = {"layers": [{"W": [[2.0]], "b": [[1.0]], "activation": "linear"}], "X": [[1.0, 2.0]], "Y": [[0.0, 0.0]],
            "cost": "mean_squared_error"}
    ref = reference(body)
    np.testing.assert_array_equal(ref.arrays["dZ1"], [[3.0, 5.0]])
    tol = Tolerance(rtol=0.25, atol=0.5)  # bounds 0.5 + 0.25 * 3 = 1.25 and 0.5 + 0.25 * 5 = 1.75, exact in binary
    at = np.array([[4.25, 5.0 - 1.75]])
    assert grading.grade(ref, {"dZ1": at}, tol).keys[0].status == "correct"
    over = np.array([[np.nextafter(4.25, 5.0), 5.0]])
    kg = grading.grade(ref, {"dZ1": over}, tol).keys[0]
    assert kg.status == "incorrect"
    assert kg.comparison.wrong_entries == 1 and kg.comparison.worst_index == (0, 0)
    assert grading.grade(ref, {"dZ1": np.array([[3.0, 5.0]])}, Tolerance(0.0, 0.0)).keys[0].status == "correct"
    exact = Tolerance(0.0, 0.0)
    assert grading.grade(ref, {"dZ1": np.array([[3.0, np.nextafter(5.0, 6.0)]])}, exact).keys[0].status == "incorrect"


def test_tolerance_boundary_over_http(post):
    body = {"layers": [{"W": [[2.0]], "b": [[1.0]], "activation": "linear"}], "X": [[1.0, 2.0]], "Y": [[0.0, 0.0]],
            "cost": "mean_squared_error", "rtol": 0.25, "atol": 0.5}
    status, out = post({**body, "submission": {"dZ1": [[4.25, 3.25]]}}, path="/v1/grade")
    assert status == 200 and out["result"]["keys"][0]["status"] == "correct"
    status, out = post({**body, "submission": {"dZ1": [[float(np.nextafter(4.25, 5.0)), 3.25]]}}, path="/v1/grade")
    kg = out["result"]["keys"][0]
    assert (kg["status"], kg["wrong_entries"], kg["worst"]["index"]) == ("incorrect", 1, [0, 0])


def test_compare_reports_errors_and_the_course_difference():
    r = np.array([[1.0, -2.0], [0.0, 4.0]])
    s = np.array([[1.0, -2.5], [0.0, 4.0]])
    c = grading.compare(s, r, Tolerance())
    assert c.status == "incorrect" and c.wrong_entries == 1
    assert c.max_abs_error == 0.5 and c.max_rel_error == 0.25
    assert c.worst_index == (0, 1) and c.worst_submitted == -2.5 and c.worst_reference == -2.0
    assert c.difference == pytest.approx(0.5 / (np.linalg.norm(s) + np.linalg.norm(r)), rel=1e-15)
    assert grading.compare(s.T.copy()[:1], r, Tolerance()).status == "shape_mismatch"
    nan = grading.compare(np.array([[1.0, np.nan], [np.nan, 4.0]]), r, Tolerance())
    assert (nan.status, nan.null_entries, nan.first_null) == ("not_a_number", 2, (0, 1))


# --- HTTP -----------------------------------------------------------------------------------------------------

def _wire(grads: dict) -> dict:
    return {k: (float(v) if v.ndim == 0 else v.tolist()) for k, v in grads.items()}


def _gradients(post, body: dict) -> dict:
    status, out = post({k: v for k, v in body.items()})
    assert status == 200
    return out


def test_http_grade_full_marks_and_diagnosis(post):
    body = network(11, "binary_cross_entropy", "sigmoid", ["tanh", "relu"], m=4)
    grads = student(body)
    sub = _wire(grads)
    sub["dW3"] = (np.array(sub["dW3"]) * 4).tolist()  # forgot 1/m
    status, out = post({**body, "submission": sub}, path="/v1/grade")
    assert status == 200, out
    result = out["result"]
    by_key = {k["key"]: k for k in result["keys"]}
    assert result["max_score"] == len(by_key) == len(grading.key_names(3))
    assert result["score"] == result["max_score"] - 1
    assert by_key["dW3"]["status"] == "incorrect"
    assert by_key["dW3"]["diagnosis"]["code"] == "missing_1_over_m"
    assert by_key["dW3"]["diagnosis"]["evidence"]["ratio"] == pytest.approx(4.0)
    assert by_key["dW3"]["worst"]["reference"] is None and by_key["dW3"].get("reference") is None
    assert result["diagnoses"] == [{"code": "missing_1_over_m", "layer": None, "message": by_key["dW3"]["diagnosis"]["message"],
                                    "keys": ["dW3"]}]
    assert out["tolerance"] == {"rtol": 1e-5, "atol": 1e-8} and out["reveal"] is False


def test_http_examples_first_layout_flips_indices_and_shapes(post):
    body = network(12, "mean_squared_error", "tanh", ["relu"], m=6)
    grads = student(body)
    ex_body = {**body, "layout": "examples_first", "X": np.array(body["X"]).T.tolist(),
               "Y": np.array(body["Y"]).T.tolist()}
    sub = _wire(grads)
    for key in ("AL", "dZ1", "dZ2", "dA0", "dA1", "dA2"):
        sub[key] = np.array(sub[key]).T.tolist()
    dZ2 = np.array(sub["dZ2"])
    dZ2[4, 1] += 1.0  # example 4, unit 1
    sub["dZ2"] = dZ2.tolist()
    status, out = post({**ex_body, "submission": sub}, path="/v1/grade")
    assert status == 200, out
    by_key = {k["key"]: k for k in out["result"]["keys"]}
    assert [k for k, v in by_key.items() if v["status"] != "correct"] == ["dZ2"]
    assert by_key["dZ2"]["expected_shape"] == [6, 2] and by_key["dZ2"]["shape"] == [6, 2]
    assert by_key["dZ2"]["worst"]["index"] == [4, 1]
    assert by_key["dZ2"]["wrong_entries"] == 1


def test_http_points_missing_nulls_and_lenient_shapes(post):
    body = network(13, "categorical_cross_entropy", "softmax", ["sigmoid"], m=3)
    grads = _wire(student(body))
    sub = {"cost": None, "dW1": grads["dW1"], "db2": np.array(grads["db2"]).reshape(-1).tolist(),
           "dZ2": [[None] + grads["dZ2"][0][1:], grads["dZ2"][1]]}
    points = {"cost": 1, "dW1": 3, "dW2": 2, "db2": 1.5, "dZ2": 2}
    status, out = post({**body, "submission": sub, "points": points}, path="/v1/grade")
    assert status == 200, out
    by_key = {k["key"]: k for k in out["result"]["keys"]}
    assert [by_key[k]["status"] for k in ("cost", "dW1", "dW2", "db2", "dZ2")] == \
        ["not_a_number", "correct", "missing", "shape_mismatch", "not_a_number"]
    assert by_key["dZ2"]["first_null"] == [0, 0] and by_key["dZ2"]["null_entries"] == 1
    assert by_key["db2"]["diagnosis"]["code"] == "column_vs_vector"
    assert out["result"]["score"] == 3 and out["result"]["max_score"] == 9.5
    status, out = post({**body, "submission": sub, "points": points, "shape_policy": "lenient"}, path="/v1/grade")
    by_key = {k["key"]: k for k in out["result"]["keys"]}
    assert by_key["db2"]["status"] == "correct" and by_key["db2"]["diagnosis"] is None
    assert any("only by axes of length 1" in n for n in by_key["db2"]["notes"])
    assert out["result"]["score"] == 4.5


# --- the reveal rule --------------------------------------------------------------------------------------------

_NUMBER = re.compile(r"-?\d+\.\d+(?:[eE][-+]?\d+)?|-?\d+[eE][-+]?\d+")


def _numbers(node, floats: list, strings: list) -> None:
    if isinstance(node, dict):
        for v in node.values():
            _numbers(v, floats, strings)
    elif isinstance(node, list):
        for v in node:
            _numbers(v, floats, strings)
    elif isinstance(node, float):
        floats.append(node)
    elif isinstance(node, str):
        strings.extend(_NUMBER.findall(node))


def _reference_values(post, body) -> np.ndarray:
    out = _gradients(post, body)
    values = [out["cost"]] + [x for row in out["AL"] for x in row]
    for v in out["gradients"].values():
        values += [x for row in v for x in (row if isinstance(row, list) else [row])]
    values = np.array([v for v in values if v is not None])
    return values[(np.abs(values) > 1e-12) & (values != np.round(values))]  # integers say nothing


def _leaks(response, refs: np.ndarray) -> list:
    floats, strings = [], []
    _numbers(response, floats, strings)
    found = [f for f in floats if np.any(np.isclose(refs, f, rtol=1e-9, atol=0))]
    for token in strings:
        digits = len(re.sub(r"[^0-9]", "", token.split("e")[0].split("E")[0]).lstrip("0"))
        if digits >= 4:
            v = float(token)
            if np.any(np.isclose(refs, v, rtol=10.0 ** (1 - digits), atol=0)):
                found.append(token)
    return found


def _leaky_submission(body, rng) -> dict:
    """Every kind of wrong key: noise, a scaling, a transposed noisy array, nulls, a correct key."""
    grads = student(body)
    sub = {}
    for i, (key, v) in enumerate(grads.items()):
        if i % 4 == 0:
            sub[key] = v * (1 + rng.normal(0, 0.1, v.shape))
        elif i % 4 == 1:
            sub[key] = v * 3.0
        elif i % 4 == 2 and v.ndim == 2:
            sub[key] = (v + rng.normal(0, 0.1, v.shape)).T
        else:
            sub[key] = v
    wired = _wire(sub)
    wired["dW1"][0][0] = None
    return wired


@pytest.mark.parametrize("fmt", ["native", "gradescope"])
def test_reveal_false_leaks_no_reference_value(post, fmt):
    body = network(21, "binary_cross_entropy", "sigmoid", ["tanh", "sigmoid"], m=4, l2=0.3)
    refs = _reference_values(post, body)
    rng = np.random.default_rng(0)
    subs = [_leaky_submission(body, rng) for _ in range(3)] + [_wire(student(body, "derivative_on_A", 1))]
    status, out = post({**body, "submissions": subs, "format": fmt}, path="/v1/grade")
    assert status == 200, out
    assert _leaks(out, refs) == []
    status, single = post({**body, "submission": subs[0], "format": fmt}, path="/v1/grade")
    assert status == 200 and _leaks(single, refs) == []
    # the search does find them once revealed
    status, revealed = post({**body, "submission": subs[0], "format": fmt, "reveal": True}, path="/v1/grade")
    assert status == 200 and len(_leaks(revealed, refs)) > 0


def test_reveal_true_returns_the_reference(post):
    body = network(22, "mean_squared_error", "linear", ["relu"], m=3)
    grads = _gradients(post, body)["gradients"]
    sub = {"dW1": (np.array(grads["dW1"]) + 1).tolist()}
    status, out = post({**body, "submission": sub, "reveal": True}, path="/v1/grade")
    kg = out["result"]["keys"][0]
    assert kg["reference"] == grads["dW1"]
    i, j = kg["worst"]["index"]
    assert kg["worst"]["reference"] == grads["dW1"][i][j]


# --- batch and Gradescope ----------------------------------------------------------------------------------------

def test_batch_computes_the_reference_once(post, monkeypatch):
    calls = []
    real = grading.compute

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(grading, "compute", counting)
    body = network(31, "binary_cross_entropy", "sigmoid", ["sigmoid"], m=4)
    mistakes = [None, "missing_1_over_m", "derivative_on_A", "sign_flipped", "dAL_sent_as_dZL"]
    subs = [_wire(student(body, mk, 1)) for mk in mistakes]
    status, out = post({**body, "submissions": subs}, path="/v1/grade")
    assert status == 200, out
    assert len(calls) == 1
    assert len(out["results"]) == 5
    assert out["results"][0]["score"] == out["results"][0]["max_score"]
    codes = [sorted({d["code"] for d in r["diagnoses"]}) for r in out["results"]]
    assert codes == [[], ["missing_1_over_m"], ["derivative_on_A"], ["sign_flipped"], ["dAL_sent_as_dZL"]]


GRADESCOPE_TOP = {"score", "execution_time", "output", "output_format", "test_output_format", "test_name_format",
                  "visibility", "stdout_visibility", "extra_data", "tests", "leaderboard"}
GRADESCOPE_TEST = {"score", "max_score", "status", "name", "name_format", "number", "output", "output_format",
                   "tags", "visibility", "extra_data"}


def _valid_gradescope(doc: dict) -> None:
    assert set(doc) <= GRADESCOPE_TOP and {"score", "tests"} <= set(doc)
    assert isinstance(doc["score"], float)
    for t in doc["tests"]:
        assert set(t) <= GRADESCOPE_TEST
        assert {"name", "score", "max_score", "status", "output", "visibility"} <= set(t)
        assert t["status"] in ("passed", "failed")
        assert t["visibility"] in ("hidden", "after_due_date", "after_published", "visible")
        assert isinstance(t["name"], str) and isinstance(t["output"], str)
        assert 0 <= t["score"] <= t["max_score"]
    assert doc["score"] == pytest.approx(sum(t["score"] for t in doc["tests"]))


def test_gradescope_format(post):
    body = network(32, "categorical_cross_entropy", "softmax", ["relu"], m=4)
    good, bad = _wire(student(body)), _wire(student(body, "sign_flipped"))
    points = {"dW1": 2, "dW2": 2, "db1": 1, "db2": 1, "cost": 1}
    status, doc = post({**body, "submission": bad, "points": points, "format": "gradescope",
                        "visibility": "after_published"}, path="/v1/grade")
    assert status == 200, doc
    _valid_gradescope(doc)
    tests = {t["name"]: t for t in doc["tests"]}
    assert tests["cost"]["status"] == "passed" and tests["cost"]["score"] == 1
    assert tests["dW1"]["status"] == "failed" and tests["dW1"]["score"] == 0 and tests["dW1"]["max_score"] == 2
    assert "sign" in tests["dW1"]["output"] and tests["dW1"]["visibility"] == "after_published"
    assert "Score: 1 / 7" in doc["output"]
    status, batch = post({**body, "submissions": [good, bad], "points": points, "format": "gradescope"},
                         path="/v1/grade")
    assert status == 200 and set(batch) == {"results"}
    for d in batch["results"]:
        _valid_gradescope(d)
    assert [d["score"] for d in batch["results"]] == [7.0, 1.0]


# --- bad submissions are located 422s ------------------------------------------------------------------------------

SMALL = {"layers": [{"W": [[0.5, -0.2]], "b": [[0.1]], "activation": "sigmoid"}], "X": [[1.0, 2.0], [0.5, -1.0]],
         "Y": [[1, 0]], "cost": "binary_cross_entropy"}


def _post_raw(client, text: str):
    r = client.post("/v1/grade", data=text, content_type="application/json")
    return r.status_code, orjson.loads(r.data)


@pytest.mark.parametrize("fragment,location,kind", [
    ('"submission": {"dW1": [[0.1, "x"]]}', "submission.dW1[0][1]", "float_type"),
    ('"submission": {"dW1": [[0.1, true]]}', "submission.dW1[0][1]", "float_type"),
    ('"submission": {"dW1": [[0.1, NaN]]}', "submission.dW1[0][1]", "finite_number"),
    ('"submission": {"dW1": [[0.1, 1e400]]}', "submission.dW1[0][1]", "finite_number"),
    ('"submission": {"dW1": [[0.1, 0.2], [0.3]]}', "submission.dW1", "ragged_matrix"),
    ('"submission": {"dW1": {"a": 1}}', "submission.dW1", "matrix_or_vector_type"),
    ('"submission": {"dW1": []}', "submission.dW1", "too_short"),
    ('"submission": {"dW1": [[]]}', "submission.dW1[0]", "too_short"),
    ('"submission": {"cost": "0.5"}', "submission.cost", "float_type"),
    ('"submissions": [{"dW1": [[0.1, 0.2]]}, {"dW1": [[0.1, 0.2]]}, {"dW1": [[0.1], [0.2, 0.3]]}]',
     "submissions[2].dW1", "ragged_matrix"),
    ('"submission": {"dW7": [[0.1, 0.2]]}', "submission.dW7", "unknown_key"),
    ('"submissions": [{}, {"dZ0": [[1.0]]}]', "submissions[1].dZ0", "unknown_key"),
    ('"submission": {}, "points": {"db9": 1}', "points.db9", "unknown_key"),
    ('"submission": {}, "points": {"db1": -1}', "points.db1", "greater_than_equal"),
    ('"submission": {}, "submissions": []', "body", "submission_form"),
    ('"rtol": 0.1', "body", "submission_form"),
    ('"submission": {}, "rtol": -1', "rtol", "greater_than_equal"),
    ('"submission": {}, "reveal": "yes"', "reveal", "bool_type"),
    ('"submission": {}, "format": "csv"', "format", "literal_error"),
])
def test_bad_submissions_are_located_422s(client, fragment, location, kind):
    text = orjson.dumps(SMALL).decode()[:-1] + ", " + fragment + "}"
    status, problem = _post_raw(client, text)
    assert status == 422, problem
    assert problem["errors"][0]["location"] == location, problem
    assert problem["errors"][0]["type"] == kind
    assert problem["errors"][0]["message"]


def test_batch_size_is_capped(post):
    status, problem = post({**SMALL, "submissions": [{}] * (grading_routes.MAX_SUBMISSIONS + 1)}, path="/v1/grade")
    assert status == 422
    assert problem["errors"][0] == {"location": "submissions", "type": "limit_exceeded",
                                    "message": f"the number of submissions is {grading_routes.MAX_SUBMISSIONS + 1}, "
                                               f"over this service's limit of {grading_routes.MAX_SUBMISSIONS}"}


def test_network_errors_come_from_the_gradient_contract(post):
    bad = {**SMALL, "layers": [{"W": [[0.5]], "b": [[0.1]], "activation": "sigmoid"}], "submission": {}}
    status, problem = post(bad, path="/v1/grade")
    assert status == 422 and problem["errors"][0]["location"] == "layers[0].W"


# --- OpenAPI ---------------------------------------------------------------------------------------------------

def test_openapi_documents_the_three_routes_with_examples(client):
    spec = orjson.loads(client.get("/openapi.json").data)
    for path in ("/v1/grade", "/v1/gradient-check", "/v1/explain"):
        op = spec["paths"][path]["post"]
        media = op["requestBody"]["content"]["application/json"]
        assert media["examples"], path
        assert "$ref" in media["schema"] and "$ref" in str(op["responses"]["200"]["content"])
        assert {"200", "400", "413", "415", "422"} <= set(op["responses"])
    schemas = spec["components"]["schemas"]
    grade = schemas["GradeRequest"]["properties"]
    assert {"submission", "submissions", "rtol", "atol", "points", "reveal", "shape_policy", "format", "layers"} <= set(grade)
    assert "atol + rtol * |r|" in grade["rtol"]["description"] and "1e-5" in grade["rtol"]["description"]
    assert {"epsilon", "threshold", "mode", "samples", "max_forward_passes", "gradients"} <= set(
        schemas["GradientCheckRequest"]["properties"])
    assert {"hidden_layer", "examples_shown"} <= set(schemas["ExplainRequest"]["properties"])
    assert "missing_1_over_m" in str(schemas["DiagnosisOut"])


@pytest.mark.parametrize("name", list(grading_routes.GRADE_EXAMPLES))
def test_openapi_grade_examples_run(post, name):
    status, out = post(grading_routes.GRADE_EXAMPLES[name], path="/v1/grade")
    assert status == 200, out

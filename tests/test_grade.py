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

from schemas import grading as grading_schema
from schemas.gradients import GradientRequest, prepare
from schemas.limits import Limits
from service import grading_routes
from service import engine
from service.engine import gradcheck, grading
from service.engine.grading import reference as grading_reference
from service.engine.grading import Tolerance
from tests.oracle import random_case

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


def keys_of(L: int) -> list[str]:
    """Every key of an L-layer dense network."""
    return grading.key_names([engine.dense(np.zeros((1, 1)), np.zeros(1), "linear")] * L)


def key_kind(key: str) -> str:
    """'dW2' -> 'dW', 'dZ1' -> 'dZ', 'cost' -> 'cost'."""
    k = grading.parse(key)
    return "d" + k.name if k.quantity == "grad" else k.quantity


def reference(body: dict) -> grading.Reference:
    req = GradientRequest.model_validate(body)
    prep = prepare(req, Limits())
    return grading.build_reference(prep.X, prep.Y, prep.layers, req.cost, l2=req.l2, dropout=prep.dropout,
                                   intermediates=req.intermediates, sent=prep.sent, layouts=prep.layouts,
                                   in_shapes=prep.shapes[:-1])


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
    assert {k.key for k in graded.keys} == set(keys_of(len(body["layers"])))
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
    kind = key_kind(key)
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
    assert wrong == {k: "intermediate_convention" for k in keys_of(3) if k[:2] in ("dZ", "dA")}
    assert all(k.diagnosis.evidence["ratio"] == pytest.approx(4.0) for k in graded.keys if k.diagnosis)


def test_backprop_hypotheses_stay_within_the_work_budget():
    body = network(9, "binary_cross_entropy", "sigmoid", ["sigmoid", "tanh"], m=4)
    submission = student(body, "derivative_on_A", 1)
    full = reference(body)
    assert grading.grade(full, submission, Tolerance()).summary[0][0].code == "derivative_on_A"
    # The hypotheses are priced as twice gradcheck.layer_cost per layer a pass goes through: the one at layer 1
    # touches layer 1 only, every other one goes down from its layer to layer 1 (dW1 is wrong).
    req = GradientRequest.model_validate(body)
    prep = prepare(req, Limits())
    one_layer = 2 * gradcheck.evaluation_cost(prep.layers[0], prep.shapes[0], 4)
    tight = grading.build_reference(prep.X, prep.Y, prep.layers, req.cost, variant_work=one_layer)
    graded = grading.grade(tight, submission, Tolerance())
    assert [(v.code, v.layer) for v in tight.variants] == [("derivative_on_A", 1)]
    assert tight.work_spent == one_layer and len(tight.skipped) == 3  # dAL at 3, derivative_on_A at 3 and 2
    assert graded.summary[0][0].code == "derivative_on_A"
    zero = grading.build_reference(prep.X, prep.Y, prep.layers, req.cost, variant_work=0)
    graded = grading.grade(zero, submission, Tolerance())
    assert all(k.diagnosis is None for k in graded.keys)
    dZ1 = next(k for k in graded.keys if k.key == "dZ1")
    assert dZ1.notes == ("4 backward-pass hypotheses that could explain dZ1 were not tested (derivative_on_A at "
                         "layers 1-3; dAL_sent_as_dZL at layer 3): re-running backpropagation for them is over this "
                         "request's diagnosis budget",)


def _deep_width_one(m: int, L: int = 64, act: str = "tanh") -> grading.Reference:
    """L layers of width 1 whose gradients neither vanish nor explode: tanh at its fixed point z = 0.5."""
    rng = np.random.default_rng(0)
    b = 0.5 - math.tanh(0.5)
    body = {"layers": [{"W": [[1.0]], "b": [[b]], "activation": act} for _ in range(L - 1)]
            + [{"W": [[1.0]], "b": [[0.0]], "activation": "sigmoid"}],
            "X": (0.5 + 0.01 * rng.normal(size=(1, m))).tolist(), "Y": [[1.0] * m], "cost": "binary_cross_entropy"}
    return body


def test_hypotheses_run_only_for_wrong_keys_and_only_what_they_need():
    body = _deep_width_one(m=2000)
    ref = reference(body)
    # A wrong cost (or AL): no backward pass can explain it, none is run and nothing is stored.
    graded = grading.grade(ref, {"cost": np.array(0.0), "AL": ref.arrays["AL"] * 2}, Tolerance())
    assert [k.status for k in graded.keys] == ["incorrect", "incorrect"]
    assert ref.variants == [] and ref.skipped == [] and ref.work_spent == 0 and ref.elements_stored == 0
    # A wrong dA60: only the mistakes at layers 61..64 touch it, each pass runs from its layer down to 60 only,
    # and keeps dA60 alone.
    wrong = ref.arrays["dA60"] * 1.5
    grading.grade(ref, {"dA60": wrong}, Tolerance())
    assert sorted((v.code, v.layer) for v in ref.variants) == [
        ("dAL_sent_as_dZL", 64), ("derivative_on_A", 61), ("derivative_on_A", 62), ("derivative_on_A", 63),
        ("derivative_on_A", 64)]
    assert all(set(v.arrays) == {"dA60"} for v in ref.variants)
    assert ref.elements_stored == 5 * 2000 and ref.skipped == []
    layer = gradcheck.evaluation_cost(ref.layers[0], ref.in_shapes[0], 2000)  # every layer is 1 x 1
    assert ref.work_spent == 2 * layer * (5 + 5 + 4 + 3 + 2)


def test_hypotheses_are_bounded_by_stored_numbers_too():
    body = _deep_width_one(m=1000)
    req = GradientRequest.model_validate(body)
    prep = prepare(req, Limits())
    ref = grading.build_reference(prep.X, prep.Y, prep.layers, req.cost, variant_elements=3 * 1000)
    rng = np.random.default_rng(0)
    submission = {k: v * (1 + 0.5 * rng.normal(size=v.shape)) for k, v in ref.arrays.items() if k in ("dZ1", "dA1", "dZ2")}
    graded = grading.grade(ref, submission, Tolerance())
    # Each pass would keep dZ1, dA1 and dZ2 (3000 numbers): the first one fits, every other one is skipped.
    assert len(ref.variants) == 1 and ref.elements_stored == 3000 and len(ref.skipped) == len(grading.hypotheses(ref.layers, ref.dropout)) - 1
    assert [(k.status, k.diagnosis) for k in graded.keys] == [("incorrect", None)] * 3
    assert all(any("were not tested" in n for n in k.notes) for k in graded.keys)


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


@pytest.mark.parametrize("intermediates", ["per_example", "mean"])
def test_mistaken_backprop_without_a_mistake_is_the_reference(intermediates):
    body = {**network(5, "categorical_cross_entropy", "softmax", ["relu", "tanh"], keep_prob=0.8, l2=0.3),
            "intermediates": intermediates}
    ref = reference(body)
    again = grading.backprop_from(ref, ref.L, ref.per_example("dZ", ref.L))
    for key, a in again.items():
        np.testing.assert_allclose(a, ref.arrays[key], rtol=1e-13, atol=1e-15)
    assert set(again) == {k for k in grading.key_names(ref.layers) if k not in ("cost", "AL", f"dA{ref.L}")}
    # from layer 3 down to layer 2 only: dA1 is the lowest dA with its dropout mask applied
    part = grading.backprop_from(ref, ref.L, ref.per_example("dZ", ref.L), lowest=2)
    assert set(part) == {"dZ2", "dW2", "db2", "dZ3", "dW3", "db3", "dA2"}
    for key, a in part.items():
        np.testing.assert_allclose(a, ref.arrays[key], rtol=1e-13, atol=1e-15)


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
    assert result["max_score"] == len(by_key) == len(keys_of(3))
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


# --- the service's own output scores full marks -----------------------------------------------------------------

def _fed_back(post, body: dict) -> tuple[dict, dict]:
    """POST the body to /v1/gradients, then grade that response as the submission. -> (gradients, grade)."""
    status, out = post(body)
    assert status == 200, out
    sub = {"cost": out["cost"], "AL": out["AL"], **out["gradients"]}
    status, graded = post({**body, "submission": sub}, path="/v1/grade")
    assert status == 200, graded
    return out, graded["result"]


def _full_marks(result: dict) -> None:
    assert [(k["key"], k["status"]) for k in result["keys"] if k["status"] != "correct"] == []
    assert result["score"] == result["max_score"] == len(result["keys"])
    assert [k["key"] for k in result["keys"] if k["diagnosis"]] == [] and result["diagnoses"] == []


@pytest.mark.parametrize("seed", range(100))
def test_the_gradients_response_scores_full_marks_on_the_oracle_suite(post, seed):
    # tests/oracle.py's generator: every pairing, depth, layout, convention, dropout, L2 and label format.
    body = random_case(seed).request()
    body.pop("include_caches", None)  # /v1/grade grades; it returns no caches
    out, result = _fed_back(post, body)
    _full_marks(result)
    assert {k["key"] for k in result["keys"]} == set(keys_of(len(body["layers"])))


SATURATED = {
    # the review's case: A1 rounds to exactly 1 or 0 against two labels, dA1 is null there
    "sigmoid_800": {"layers": [{"W": [[800.0]], "b": [[0.0]], "activation": "sigmoid"}], "X": [[1, -1, 1, -1]],
                    "Y": [[0, 1, 1, 0]], "cost": "binary_cross_entropy"},
    "softmax_800": {"layers": [{"W": [[800.0], [0.0]], "b": [[0.0], [0.0]], "activation": "softmax"}],
                    "X": [[0.1, 1.0, -1.0]], "Y": [1, 1, 0], "cost": "categorical_cross_entropy"},
    "sigmoid_800_mean_examples_first": {"layers": [{"W": [[800.0]], "b": [[0.0]], "activation": "sigmoid"}],
                                        "X": [[1], [-1], [0.01]], "Y": [[0], [1], [1]], "cost": "binary_cross_entropy",
                                        "layout": "examples_first", "intermediates": "mean"},
}


@pytest.mark.parametrize("name", list(SATURATED))
def test_null_reference_entries_are_not_graded(post, name):
    out, result = _fed_back(post, SATURATED[name])
    _full_marks(result)
    L = len(SATURATED[name]["layers"])
    assert out["warnings"] and out["warnings"][0]["location"] == f"gradients.dA{L}"
    dAL = next(k for k in result["keys"] if k["key"] == f"dA{L}")
    count = out["warnings"][0]["count"]
    assert dAL["null_entries"] == 0 and dAL["entries"] == len(out["AL"]) * len(out["AL"][0]) - count
    assert dAL["notes"] == [f"{count} entries of dA{L} are not representable in float64 (the reference returns them "
                            f"as null) and were not graded: a null or any number is accepted there"]
    # a number there is accepted as well (a student who clips A_L gets a large finite value)
    sub = {f"dA{L}": [[1e300 if v is None else v for v in row] for row in out["gradients"][f"dA{L}"]]}
    status, graded = post({**SATURATED[name], "submission": sub}, path="/v1/grade")
    assert graded["result"]["keys"][0]["status"] == "correct"
    # a null where the reference has a value is still not_a_number
    row = next(i for i, r in enumerate(out["gradients"][f"dA{L}"]) if any(v is not None for v in r))
    col = next(j for j, v in enumerate(out["gradients"][f"dA{L}"][row]) if v is not None)
    sub[f"dA{L}"][row][col] = None
    status, graded = post({**SATURATED[name], "submission": sub}, path="/v1/grade")
    k = graded["result"]["keys"][0]
    assert (k["status"], k["null_entries"], k["first_null"]) == ("not_a_number", 1, [row, col])


@pytest.mark.parametrize("seed", range(30))
def test_saturated_random_networks_score_full_marks(post, seed):
    pairing = [("sigmoid", "binary_cross_entropy"), ("softmax", "categorical_cross_entropy")][seed % 2]
    body = random_case(500 + seed, pairing=pairing).request()
    body.pop("include_caches", None)
    last = body["layers"][-1]
    last["W"] = (np.array(last["W"]) * 300).tolist()  # output logits in the hundreds: A_L rounds to 0 or 1
    out, result = _fed_back(post, body)
    _full_marks(result)


# --- the course's own formulas where A_L saturates ---------------------------------------------------------------

def _textbook(Z: np.ndarray, Y: np.ndarray, sigmoid) -> tuple[float, np.ndarray]:
    A = sigmoid(Z)
    J = float(-np.mean(Y * np.log(A) + (1 - Y) * np.log(1 - A)))
    return J, -(Y / A - (1 - Y) / (1 - A))


TEXTBOOK_BODY = {"layers": [{"W": [[1.0]], "b": [[0.0]], "activation": "sigmoid"}], "X": [[30.0, -30.0, 2.0]],
                 "Y": [[0, 1, 1]], "cost": "binary_cross_entropy"}
# The course's sigmoid and its other common float64 form; both land within 2 ulps of the exact A_L for z > 0.
SIGMOIDS = {"1/(1+exp(-z))": lambda Z: 1 / (1 + np.exp(-Z)), "exp(z)/(1+exp(z))": lambda Z: np.exp(Z) / (1 + np.exp(Z))}


@pytest.mark.parametrize("form", list(SIGMOIDS))
def test_the_course_formulas_are_accepted_where_A_L_saturates(post, form):
    Z, Y = np.array([[30.0, -30.0, 2.0]]), np.array([[0.0, 1.0, 1.0]])
    J, dA = _textbook(Z, Y, SIGMOIDS[form])
    status, out = post({**TEXTBOOK_BODY, "submission": {"cost": J, "dA1": dA.tolist()}, "reveal": True},
                       path="/v1/grade")
    assert status == 200, out
    cost, dA1 = out["result"]["keys"]
    assert (cost["status"], dA1["status"]) == ("correct", "correct") and out["result"]["diagnoses"] == []
    for k in (cost, dA1):
        # wrong against the exact value by more than the tolerance: accepted only as the textbook's rounding
        if k["max_rel_error"] > 1e-5:
            assert k["notes"] == [f"textbook_rounding: 1 entry of {k['key']} differs from the exact value but "
                                  f"matches the course's formula evaluated in float64 from the rounded A_L (within "
                                  f"3 ulps), which loses digits where A_L is this close to 0 or 1; accepted"]
    assert dA1["max_rel_error"] > 1e-4
    if form == "1/(1+exp(-z))":  # the review's numbers
        assert cost["max_rel_error"] == pytest.approx(1.7e-5, rel=0.01)
        assert dA1["max_rel_error"] == pytest.approx(1.02e-3, rel=0.01)


def test_textbook_acceptance_is_as_narrow_as_the_rounding(post):
    Z, Y = np.array([[30.0, -30.0, 2.0]]), np.array([[0.0, 1.0, 1.0]])
    J, dA = _textbook(Z, Y, SIGMOIDS["1/(1+exp(-z))"])
    ref = reference(TEXTBOOK_BODY)
    lo, hi = ref.textbook_bounds("dA1")
    # the interval is wide only where 1 - A_L has few digits (z = 30); elsewhere it is a few ulps
    assert (hi[0, 0] - lo[0, 0]) / dA[0, 0] > 1e-3
    assert np.all((hi[0, 1:] - lo[0, 1:]) / np.abs(dA[0, 1:]) < 1e-14)
    for key, value, status in [
            ("dA1", dA * [[1.01, 1, 1]], "incorrect"),  # 1% off at the saturated entry: beyond the rounding
            ("dA1", dA * [[1, 1, 1.001]], "incorrect"),  # off where nothing saturates
            ("cost", J + 1e-2, "incorrect"),  # the rounding moves J by ~1e-3 here (log(1 - A_L) of ~30 / m)
            ("cost", J, "correct")]:
        kg = grading.grade(ref, {key: np.asarray(value, dtype=float)}, Tolerance()).keys[0]
        assert kg.status == status, (key, value)
    # the mean convention's dA carries the 1/m: the course's formula divided by m is accepted
    mean = reference({**TEXTBOOK_BODY, "intermediates": "mean"})
    kg = grading.grade(mean, {"dA1": dA / 3}, Tolerance()).keys[0]
    assert kg.status == "correct" and kg.comparison.textbook_entries == 1
    assert grading.grade(mean, {"dA1": dA}, Tolerance()).keys[0].status == "incorrect"


# --- errors beyond float64 -------------------------------------------------------------------------------------

def test_errors_beyond_float64_are_null_with_a_note(post):
    body = {"layers": [{"W": [[0.5]], "b": [[0.0]], "activation": "linear"}], "X": [[0.1]], "Y": [[0.0]],
            "cost": "mean_squared_error"}  # dZ1 = 0.05, dW1 = 0.005
    status, out = post({**body, "submission": {"dW1": [[1e308]]}, "reveal": True}, path="/v1/grade")
    k = out["result"]["keys"][0]
    # |s - r| is 1e308, |s - r| / |r| = 2e310 is beyond float64
    assert (k["status"], k["max_abs_error"], k["max_rel_error"]) == ("incorrect", 1e308, None)
    assert k["difference"] == pytest.approx(1.0)
    assert k["notes"] == ["dW1: the largest absolute or relative error exceeds float64's range (a submitted entry "
                          "near 1e308, or far from a reference entry near 0), so it is not reported"]
    status, out = post({**body, "submission": {"dW1": [[1e308]]}}, path="/v1/grade")
    assert out["result"]["keys"][0]["max_abs_error"] == 1e308  # rounded up to a power of ten: itself
    # |s - r| itself overflows
    c = grading.compare(np.array([[-1.5e308, 1.0]]), np.array([[1.5e308, 1.0]]), Tolerance())
    assert (c.status, c.max_abs_error, c.max_rel_error, c.errors_overflow) == ("incorrect", None, None, True)
    assert c.worst_index == (0, 0) and c.difference == pytest.approx(2 / (2 + 2 ** 0.5 * 1e-308 / 1.5), rel=1e-12)


# --- what a batch may cost -----------------------------------------------------------------------------------------

def test_a_batch_over_the_graded_keys_limit_is_refused_before_any_work(post, monkeypatch):
    monkeypatch.setattr(grading, "build_reference", lambda *a, **k: pytest.fail("no work may start"))
    body = _deep_width_one(m=4)
    everything = {k: (np.zeros((1, 4)) if grading.is_per_example(k) else np.zeros((1, 1))).tolist()
                  for k in keys_of(64) if k != "cost"}
    status, problem = post({**body, "submissions": [everything] * 100}, path="/v1/grade")
    assert status == 422 and problem["errors"] == [{
        "location": "submissions", "type": "limit_exceeded",
        "message": "this request grades 25800 keys in all (each submission's keys, `points` included), over this "
                   "service's limit of 20000: send the batch in smaller parts"}]


def test_a_batch_over_the_grading_work_is_refused_before_any_work(post, monkeypatch):
    body = _deep_width_one(m=300)
    ref = reference(body)
    everything = {k: v.tolist() for k, v in ref.arrays.items() if k != "cost"}
    one = grading.grading_work(ref.layers, None, [{k: v.size for k, v in ref.arrays.items() if k != "cost"}])
    fits = grading_schema.MAX_GRADING_WORK // one
    assert 1 < fits < 10  # 64 layers, every key, up to 74 hypotheses each: a handful of students per request
    status, out = post({**body, "submissions": [everything] * fits}, path="/v1/grade")
    assert status == 200 and len(out["results"]) == fits
    monkeypatch.setattr(grading, "build_reference", lambda *a, **k: pytest.fail("no work may start"))
    status, problem = post({**body, "submissions": [everything] * (fits + 1)}, path="/v1/grade")
    assert status == 422
    err = problem["errors"][0]
    assert (err["location"], err["type"]) == ("submissions", "limit_exceeded")
    assert f"priced at {(fits + 1) * one} numbers compared, over this service's limit of 150000000" in err["message"]
    assert "with up to 74 hypotheses" in err["message"]


def test_grading_work_counts_every_hypothesis_a_key_may_be_tested_against():
    body = network(3, "binary_cross_entropy", "sigmoid", ["tanh", "relu"], keep_prob=0.5)
    ref = reference(body)
    plan = grading.hypotheses(ref.layers, ref.dropout)
    # derivative_on_A at 3 (sigmoid) and 1 (tanh), relu'(0) at 2, dAL at 3, and per hidden layer 3 dropout passes
    assert [(h.code, h.layer) for h in plan] == [
        ("derivative_on_A", 3), ("dAL_sent_as_dZL", 3), ("relu_derivative_at_zero", 2), ("derivative_on_A", 1),
        ("dropout_mask_not_applied", 2), ("dropout_mask_not_applied", 2), ("dropout_not_scaled", 2),
        ("dropout_mask_not_applied", 1), ("dropout_mask_not_applied", 1), ("dropout_not_scaled", 1)]
    assert grading.candidate_count("cost", plan) == grading.LOCAL_CANDIDATES
    assert grading.candidate_count("dA3", plan) == grading.LOCAL_CANDIDATES
    assert grading.candidate_count("dA2", plan) == grading.LOCAL_CANDIDATES + 2 + 3
    assert grading.candidate_count("dW1", plan) == grading.LOCAL_CANDIDATES + len(plan)
    size = ref.arrays["dW1"].size
    assert grading.grading_work(ref.layers, ref.dropout, [{"dW1": size}, {"dW1": size, "cost": 1}]) == \
        2 * (1 + grading.LOCAL_CANDIDATES + len(plan)) * (size + grading.CANDIDATE_OVERHEAD) + \
        (1 + grading.LOCAL_CANDIDATES) * (1 + grading.CANDIDATE_OVERHEAD)


# --- the reveal rule --------------------------------------------------------------------------------------------

# Every number written in a response, in JSON or inside a message: JSON floats always carry '.' or an exponent.
_NUMBER = re.compile(r"-?(?:\d+\.\d*|\.\d+|\d+(?=[eE]))(?:[eE][-+]?\d+)?")
FORMATS = ("{!r}", "{:.6g}", "{:.4g}", "{:.3g}")


def _significant(token: str) -> int:
    """Significant digits written in a number token: '0.0123' -> 3, '1e-05' -> 1, '10.0' -> 1."""
    mantissa = re.split(r"[eE]", token)[0].lstrip("-").replace(".", "")
    return len(mantissa.strip("0"))


def _reference_numbers(post, body) -> np.ndarray:
    """Every reference value of the network (the /v1/gradients response), as |value|, with the integers (which a
    count or an index can equal) left out."""
    out = _gradients(post, body)
    values = [out["cost"]] + [x for row in out["AL"] for x in row]
    for v in out["gradients"].values():
        values += [x for row in v for x in (row if isinstance(row, list) else [row])]
    values = np.abs(np.array([v for v in values if v is not None]))
    return values[(values > 0) & (values != np.round(values))]


def _leaks(response, refs: np.ndarray) -> list[str]:
    """The number tokens of ``response`` (its whole JSON text) that write a reference value: a token with d >= 2
    significant digits that equals some reference rounded to d digits (repr, %.6g, %.4g, %.3g, ... alike), or that
    is one of the formats below verbatim. Tokens of one digit (powers of ten, 0.3) cannot pin a value to better than
    one significant digit, the rule's bar."""
    text = orjson.dumps(response).decode()
    tokens = set(_NUMBER.findall(text))
    found = []
    for token in tokens:
        d = _significant(token)
        if d < 2:
            continue
        v = abs(float(token))
        rounded = np.array([float(f"{r:.{d}g}") for r in refs]) if d <= 17 else refs
        if np.any(rounded == v):
            found.append(token)
    verbatim = {fmt.format(r) for r in refs for fmt in FORMATS}
    found += [t for t in verbatim if _significant(t) >= 2 and re.search(rf"(?<![\d.]){re.escape(t)}(?![\d])", text)]
    return sorted(set(found))


def _four_submissions(post, body) -> dict[str, dict]:
    """Zeros, the exact reference (the /v1/gradients response), the reference * (1 + 1e-3), and random noise."""
    out = _gradients(post, body)
    exact = {"cost": out["cost"], "AL": out["AL"], **out["gradients"]}
    rng = np.random.default_rng(5)

    def each(f):
        return {k: (f(np.nan_to_num(np.array(v, dtype=float))).tolist() if k != "cost" else float(f(np.array(v))))
                for k, v in exact.items()}

    return {"zeros": each(np.zeros_like), "exact": exact, "relative_1e-3": each(lambda a: a * (1 + 1e-3)),
            "noise": each(lambda a: a + rng.normal(0, 0.1, a.shape) * (1 + np.abs(a)))}


REVEAL_BODIES = {
    "bce_l2": network(21, "binary_cross_entropy", "sigmoid", ["tanh", "sigmoid"], m=4, l2=0.3),
    "cce": network(22, "categorical_cross_entropy", "softmax", ["relu"], m=3),
    "mse_mean": {**network(23, "mean_squared_error", "tanh", ["leaky_relu"], m=5), "intermediates": "mean"},
}


@pytest.mark.parametrize("name", list(REVEAL_BODIES))
def test_reveal_false_leaks_no_reference_value(post, name):
    body = REVEAL_BODIES[name]
    refs = _reference_numbers(post, body)
    subs = _four_submissions(post, body)
    for fmt in ("native", "gradescope"):
        status, batch = post({**body, "submissions": list(subs.values()), "format": fmt}, path="/v1/grade")
        assert status == 200, batch
        assert _leaks(batch, refs) == [], fmt
        for kind, sub in subs.items():
            status, single = post({**body, "submission": sub, "format": fmt}, path="/v1/grade")
            assert status == 200 and _leaks(single, refs) == [], (fmt, kind)
        # the same search finds them once revealed
        status, revealed = post({**body, "submission": subs["noise"], "format": fmt, "reveal": True}, path="/v1/grade")
        assert status == 200 and len(_leaks(revealed, refs)) > 5, fmt


def test_reveal_false_errors_are_powers_of_ten_that_bound_the_exact_ones(post):
    body = REVEAL_BODIES["bce_l2"]
    subs = _four_submissions(post, body)
    for kind in ("zeros", "relative_1e-3", "noise"):
        status, coarse = post({**body, "submission": subs[kind]}, path="/v1/grade")
        status, exact = post({**body, "submission": subs[kind], "reveal": True}, path="/v1/grade")
        assert coarse["error_precision"] == "power_of_ten" and exact["error_precision"] == "exact"
        for c, e in zip(coarse["result"]["keys"], exact["result"]["keys"]):
            assert c["key"] == e["key"] and c["status"] == e["status"]
            for field in ("max_abs_error", "max_rel_error", "difference"):
                x, true = c[field], e[field]
                if true is None or true == 0:
                    assert x == true
                    continue
                assert math.log10(x) == round(math.log10(x)), (kind, c["key"], field, x)  # a power of ten
                assert x / 10 < true <= x, (kind, c["key"], field, x, true)  # the least one above the exact error
            if c["diagnosis"]:  # evidence: the hypothesis's constants only; what was fitted is left out
                ev, exact_ev = c["diagnosis"]["evidence"], e["diagnosis"]["evidence"]
                assert "max_abs_error_under_hypothesis" in exact_ev
                assert "max_abs_error_under_hypothesis" not in ev
                assert ev == {k: v for k, v in exact_ev.items() if k in ev}
                assert set(exact_ev) - set(ev) <= {"max_abs_error_under_hypothesis", "ratio"}


def test_reveal_false_one_number_cannot_be_rebuilt_from_its_errors(post):
    # One-entry keys are where exact errors gave it away: J = s +- max_abs_error, and |J| = max_abs / max_rel.
    body = REVEAL_BODIES["cce"]
    J = _gradients(post, body)["cost"]
    assert J == pytest.approx(0.4254, abs=1e-4)  # far from a power of ten, which its order of magnitude would hit
    for s in (0.0, J * 0.7, J * 1.8, -3.0, 40.0):  # guesses that do not already hold J's first digits
        status, out = post({**body, "submission": {"cost": s}}, path="/v1/grade")
        k = out["result"]["keys"][0]
        abs_err, rel_err = k["max_abs_error"], k["max_rel_error"]
        candidates = [s + abs_err, s - abs_err, abs_err / rel_err, s / (1 + rel_err)]
        if rel_err != 1:
            candidates.append(s / (1 - rel_err))
        # none of them is J to two significant digits (the rule's bar is one)
        assert all(float(f"{c:.2g}") != float(f"{J:.2g}") for c in candidates), (s, candidates, J)
        assert abs_err >= abs(s - J) > abs_err / 10


def test_reveal_true_returns_the_reference_once(post):
    body = network(22, "mean_squared_error", "linear", ["relu"], m=3)
    grads = _gradients(post, body)["gradients"]
    sub = {"dW1": (np.array(grads["dW1"]) + 1).tolist()}
    status, out = post({**body, "submission": sub, "reveal": True, "points": {"dW1": 1, "db2": 1}}, path="/v1/grade")
    assert status == 200
    assert out["reference"] == {"dW1": grads["dW1"], "db2": grads["db2"]}  # graded keys only, missing ones included
    kg = out["result"]["keys"][0]
    assert "reference" not in kg and kg["max_abs_error"] == 1.0
    i, j = kg["worst"]["index"]
    assert kg["worst"]["reference"] == grads["dW1"][i][j]
    # the batch form carries it once too, however many submissions
    subs = [{"dW1": (np.array(grads["dW1"]) + t).tolist()} for t in range(20)]
    status, batch = post({**body, "submissions": subs, "reveal": True}, path="/v1/grade")
    assert status == 200 and batch["reference"] == {"dW1": grads["dW1"]}
    assert all("reference" not in k for r in batch["results"] for k in r["keys"])
    status, hidden = post({**body, "submissions": subs}, path="/v1/grade")
    assert "reference" not in hidden


def request_numbers(body: dict) -> set[float]:
    """Numbers of the request a response may repeat: every submitted entry, the tolerances, points, l2, keep_prob,
    slopes, m and 1/m, with their signs (a named factor's ratio is m, 1/m or -1)."""
    out = {1.0}
    for sub in body.get("submissions") or [body.get("submission") or {}]:
        for v in (sub.values() if isinstance(sub, dict) else ()):
            out.update(float(x) for x in np.ravel(np.array(v, dtype=float)) if np.isfinite(x))
    m = np.array(body["X"]).shape[1 if body.get("layout", "features_first") == "features_first" else 0]
    out.update({float(m), 1.0 / m, body.get("rtol", 1e-5), body.get("atol", 1e-8), body.get("l2", 0.0)})
    out.update(float(p) for p in (body.get("points") or {}).values())
    out.update(float(layer.get("negative_slope", 0.01)) for layer in body["layers"])
    if body.get("dropout"):
        out.add(float(body["dropout"]["keep_prob"]))
    return out | {-x for x in out}


def foreign_numbers(response, body: dict) -> list[str]:
    """The number tokens of ``response`` (its whole JSON text, messages included) that are none of: the request's
    numbers (``request_numbers``), an integer (a count, an index, a sum of points), a power of ten (an error
    bucket), float64's largest number (an error beyond range). Anything else was computed from the reference."""
    allowed = request_numbers(body)
    found = []
    for token in set(_NUMBER.findall(orjson.dumps(response).decode())):
        v = float(token)
        if v in allowed or v == round(v) or abs(v) == np.finfo(np.float64).max:
            continue
        if v != 0 and abs(math.log10(abs(v)) - round(math.log10(abs(v)))) < 1e-12:
            continue
        found.append(token)
    return sorted(found)


def _probe_bodies() -> list[dict]:
    """Requests that make the engine fit evidence to the reference: a constant factor, a forgotten 1/m, the L2 term
    left out, and the issue's attack (1e12 at one entry, rtol = 1e4)."""
    body = REVEAL_BODIES["bce_l2"]
    ref = reference(body)
    scaled = {k: (2.5 * v).tolist() for k, v in ref.arrays.items() if v.ndim and k.startswith("dW")}
    attack = [{"dW1": np.where(np.arange(ref.arrays["dW1"].size) == i, 1e12, 0.0).reshape(ref.arrays["dW1"].shape)
               .tolist()} for i in range(ref.arrays["dW1"].size)]
    return [{**body, "submission": scaled}, {**body, "submission": _wire(student(body, "missing_1_over_m"))},
            {**body, "submission": _wire(student(body, "missing_l2"))}, {**body, "submissions": attack, "rtol": 1e4}]


@pytest.mark.parametrize("fmt", ["native", "gradescope"])
def test_reveal_false_response_holds_no_number_computed_from_the_reference(post, fmt):
    """Stronger than the search for reference values above: every number of an unrevealed response is one the
    request holds, a count or index, or a power-of-ten error bucket. Fails when a fitted ratio or an error under a
    hypothesis is sent, even to two digits (which is how 1e12-at-one-entry submissions solved for the reference)."""
    bodies = _probe_bodies() + [{**b, "submissions": list(_four_submissions(post, b).values())}
                                for b in REVEAL_BODIES.values()]
    for body in bodies:
        status, out = post({**body, "format": fmt}, path="/v1/grade")
        assert status == 200, out
        assert foreign_numbers(out, body) == [], body.get("rtol")
        # the same responses with reveal carry such numbers: the check can fail
        status, revealed = post({**body, "format": fmt, "reveal": True}, path="/v1/grade")
        assert status == 200 and foreign_numbers(revealed, body), body.get("rtol")


def _solve_from_ratios(ratios: list[float], big: float) -> np.ndarray:
    """The issue's attack: s = big * e_i fits s ~ c_i r with c_i = big r_i / ||r||^2; q = c / big = r / ||r||^2,
    so r = q / ||q||^2."""
    q = np.array(ratios) / big
    return q / np.dot(q, q)


def test_the_scaled_ratio_attack_of_the_issue_recovers_nothing(post):
    body = REVEAL_BODIES["bce_l2"]
    true = reference(body).arrays["dW1"].reshape(-1)
    attack = _probe_bodies()[-1]
    status, hidden = post(attack, path="/v1/grade")
    assert status == 200
    diagnoses = [r["keys"][0]["diagnosis"] for r in hidden["results"]]
    fitted = [d is not None for d in diagnoses]
    assert sum(fitted) >= len(true) - 2  # entries below 1% of ||r|| fail even rtol = 1e4, and are left out
    assert {d["code"] for d in diagnoses if d} == {"scaled_by_constant"}
    assert all("ratio" not in d["evidence"] for d in diagnoses if d)
    # The attack is real: with the ratios (exact under reveal) it solves for the entries, and with them rounded to
    # two digits, as main sent them without reveal, to a few percent (the small entries left out count as 0).
    status, shown = post({**attack, "reveal": True}, path="/v1/grade")
    ratios = [(r["keys"][0]["diagnosis"] or {"evidence": {"ratio": 0.0}})["evidence"]["ratio"] for r in shown["results"]]
    big = np.abs(true) > 0.01 * np.linalg.norm(true)
    assert np.allclose(_solve_from_ratios(ratios, 1e12)[big], true[big], rtol=1e-3)
    two_digits = [float(f"{x:.2g}") for x in ratios]
    assert np.max(np.abs(_solve_from_ratios(two_digits, 1e12)[big] / true[big] - 1)) < 0.05


# --- batch and Gradescope ----------------------------------------------------------------------------------------

def test_batch_computes_the_reference_once(post, monkeypatch):
    calls = []
    real = grading_reference.compute

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(grading_reference, "compute", counting)
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
    ('"submission": {"cost": [0.5, 0.6]}', "submission.cost", "cost_not_one_number"),
    ('"submission": {"cost": [[0.5], [0.6]]}', "submission.cost", "cost_not_one_number"),
    ('"submission": "dW1"', "submission", "model_type"),
    ('"submission": {"dW7": [[0.1, 0.2]]}', "submission.dW7", "unknown_key"),
    ('"submission": {}, "points": {"db9": 1}', "points.db9", "unknown_key"),
    ('"submission": {}, "points": {"db1": -1}', "points.db1", "greater_than_equal"),
    ('"submission": {}, "submissions": [{}]', "body", "submission_form"),
    ('"rtol": 0.1', "body", "submission_form"),
    ('"submission": {}, "rtol": -1', "rtol", "greater_than_equal"),
    ('"submission": {}, "reveal": "yes"', "reveal", "bool_type"),
    ('"submission": {}, "format": "csv"', "format", "literal_error"),
    ('"submission": {}', "submission", "empty_submission"),
    ('"submissions": []', "submissions", "too_short"),
    ('"submissions": {"cost": 1.0}', "submissions", "list_type"),
    ('"submission": {"cost": 1.0}, "points": {}', "points", "too_short"),
])
def test_bad_submissions_are_located_422s(client, fragment, location, kind):
    """A malformed single submission, or a malformed request, is a 422 listing every problem (ragged matrices at
    the matrix, as everywhere in a request); a malformed submission of a batch is graded as invalid on its own,
    located to the row (tests/test_grade_batch.py)."""
    text = orjson.dumps(SMALL).decode()[:-1] + ", " + fragment + "}"
    status, problem = _post_raw(client, text)
    assert status == 422, problem
    assert problem["errors"][0]["location"] == location, problem
    assert problem["errors"][0]["type"] == kind
    assert problem["errors"][0]["message"]


def test_a_malformed_single_submission_is_reported_with_the_other_problems(client):
    body = {**SMALL, "rtol": -1.0}
    text = orjson.dumps(body).decode()[:-1] + ', "submission": {"dW1": [[0.1, "x"]], "cost": [1.0, 2.0]}}'
    status, problem = _post_raw(client, text)
    assert status == 422
    assert {e["location"] for e in problem["errors"]} == {"rtol", "submission.dW1[0][1]", "submission.cost"}


def test_empty_submissions_are_graded_when_points_name_the_keys(post):
    # With `points` an empty submission is a student who sent nothing: every listed key is missing.
    status, out = post({**SMALL, "submissions": [{}, {"cost": 0.5}], "points": {"cost": 2, "dW1": 1}},
                       path="/v1/grade")
    assert status == 200, out
    assert [[(k["key"], k["status"]) for k in r["keys"]] for r in out["results"]] == [
        [("cost", "missing"), ("dW1", "missing")], [("cost", "incorrect"), ("dW1", "missing")]]
    assert [(r["score"], r["max_score"]) for r in out["results"]] == [(0.0, 3.0), (0.0, 3.0)]


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


@pytest.mark.parametrize("path", ["/v1/grade", "/v1/gradient-check", "/v1/explain"])
def test_a_gradients_body_with_include_caches_is_accepted_as_it_is(post, path):
    """An autograder can send the very body it sent to /v1/gradients; include_caches is ignored there."""
    body = orjson.loads(open("examples/two_layer_sigmoid_bce.json", "rb").read())
    body["include_caches"] = True
    if path == "/v1/grade":
        body["submission"] = {"cost": 0.676733526293133}
    status, out = post(body, path=path)
    assert status == 200, out
    assert "caches" not in out

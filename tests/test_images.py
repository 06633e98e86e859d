"""The image kinds over HTTP: bad inputs (status and location), central differences over conv W and b, max
pooling's tie policies against a direct computation, the courses' published conv and pooling values, each kind's
diagnoses against mistakes planted in an independent numpy implementation, explain, the limits, and /v1.

The numpy implementation here is cs231n's naive form (loops over examples, filters and windows), written for these
tests: it shares nothing with the engine's im2col.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import orjson
import pytest

from service import create_app
from tests.oracle import as_array
from tests.oracle_images import maxpool_direct

DATA = Path(__file__).parent / "data" / "published"
RNG = np.random.default_rng(2024)


def nhwc(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1))


def nchw(a) -> np.ndarray:
    return np.ascontiguousarray(as_array(a).transpose(0, 3, 1, 2))


def errors_of(body: dict) -> list[tuple[str, str, str]]:
    return [(e["location"], e["type"], e["message"]) for e in body["errors"]]


# --- an independent implementation (cs231n's naive loops) ------------------------------------------------------

def conv_naive(x, w, b, stride=(1, 1), pad=(0, 0)):
    """x (N, C, H, W), w (F, C, kh, kw): out (N, F, Ho, Wo), a cross-correlation."""
    N, _, H, W = x.shape
    F_, _, kh, kw = w.shape
    (sh, sw), (ph, pw) = stride, pad
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    Ho, Wo = (H + 2 * ph - kh) // sh + 1, (W + 2 * pw - kw) // sw + 1
    out = np.zeros((N, F_, Ho, Wo))
    for i in range(N):
        for f in range(F_):
            for r in range(Ho):
                for c in range(Wo):
                    out[i, f, r, c] = np.sum(xp[i, :, r * sh:r * sh + kh, c * sw:c * sw + kw] * w[f]) + b[f]
    return out


def conv_naive_backward(dout, x, w, stride=(1, 1), pad=(0, 0), mistake=None):
    """dx, dw, db (sums over the examples), with an optional planted mistake: ``stride_ignored`` (window (r, c) at
    (r, c)), ``padding_ignored`` (windows read from x itself and dx its first H x W block of the padded grid),
    ``last_example`` (dw and db from the last example only)."""
    N, _, H, W = x.shape
    F_, _, kh, kw = w.shape
    (sh, sw), (ph, pw) = stride, pad
    if mistake == "padding_ignored":
        src = np.pad(x, ((0, 0), (0, 0), (0, 2 * ph), (0, 2 * pw)))
    else:
        src = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    dsrc, dw, db = np.zeros(src.shape), np.zeros(w.shape), np.zeros(F_)
    for i in range(N):
        for f in range(F_):
            for r in range(dout.shape[2]):
                for c in range(dout.shape[3]):
                    top, left = (r, c) if mistake == "stride_ignored" else (r * sh, c * sw)
                    g = dout[i, f, r, c]
                    if mistake != "last_example" or i == N - 1:
                        dw[f] += src[i, :, top:top + kh, left:left + kw] * g
                        db[f] += g
                    dsrc[i, :, top:top + kh, left:left + kw] += w[f] * g
    top, left = (0, 0) if mistake == "padding_ignored" else (ph, pw)
    return dsrc[:, :, top:top + H, left:left + W], dw, db


def pool_naive_backward(x, dout, size, stride, rule):
    """dx of a pooling layer by loops: ``max_first``, ``max_all``, ``spread`` (dout / window everywhere, the
    mistake for max pooling; average pooling's rule), ``copied`` (dout everywhere: not divided)."""
    (ph, pw), (sh, sw) = size, stride
    if rule in ("max_first", "max_all"):
        return maxpool_direct(x, dout, size, stride, rule[4:])[1]
    dx = np.zeros(x.shape)
    share = 1.0 / (ph * pw) if rule == "spread" else 1.0
    for i in range(x.shape[0]):
        for c in range(x.shape[1]):
            for r in range(dout.shape[2]):
                for s in range(dout.shape[3]):
                    dx[i, c, r * sh:r * sh + ph, s * sw:s * sw + pw] += share * dout[i, c, r, s]
    return dx


def flat(a: np.ndarray, channels_last=False) -> np.ndarray:
    """(m, C, H, W) -> (features, m), features in the layout's order."""
    return (a.transpose(0, 2, 3, 1) if channels_last else a).reshape(a.shape[0], -1).T


# --- bodies -----------------------------------------------------------------------------------------------------

def conv_net(image_layout="NCHW", *, m=3, shape=(2, 5, 6), F=3, kernel=(3, 2), stride=(2, 1), pad=(1, 1),
             b_shape=None, seed=0) -> tuple[dict, dict]:
    """[conv (linear), flatten, dense 2 (linear)] + MSE; the body and its arrays (NCHW) for the naive pipeline."""
    rng = np.random.default_rng(seed)
    C, H, W = shape
    X = rng.normal(size=(m, *shape))
    Wc = rng.normal(size=(F, C, *kernel)) / np.sqrt(C * kernel[0] * kernel[1])
    bc = rng.normal(size=F) * 0.3
    Ho, Wo = (H + 2 * pad[0] - kernel[0]) // stride[0] + 1, (W + 2 * pad[1] - kernel[1]) // stride[1] + 1
    Wd = rng.normal(size=(2, F * Ho * Wo)) / np.sqrt(F * Ho * Wo)
    bd = rng.normal(size=(2, 1)) * 0.3
    Y = rng.normal(size=(2, m))
    last = image_layout == "NHWC"
    body = {"layers": [{"type": "conv2d", "W": Wc.transpose(2, 3, 1, 0).copy() if last else Wc,
                        "b": bc.reshape(b_shape or (F,)), "stride": list(stride), "pad": list(pad),
                        "activation": "linear"},
                       {"type": "flatten"},
                       {"W": Wd, "b": bd, "activation": "linear"}],
            "X": nhwc(X) if last else X, "Y": Y, "cost": "mean_squared_error", "image_layout": image_layout}
    return body, {"X": X, "W": Wc, "b": bc, "Wd": Wd, "bd": bd, "Y": Y, "stride": stride, "pad": pad,
                  "channels_last": last}


def naive_conv_pipeline(a: dict, mistake=None, flip=False) -> dict:
    """The conv_net's keys by the naive loops (per_example convention: dW = (1/m) sum, dA and dZ without 1/m)."""
    X, m = a["X"], a["X"].shape[0]
    w = a["W"][:, :, ::-1, ::-1] if flip else a["W"]
    Z1 = conv_naive(X, w, a["b"], a["stride"], a["pad"])
    Z3 = a["Wd"] @ flat(Z1, a["channels_last"]) + a["bd"]
    cost = float(np.sum((Z3 - a["Y"]) ** 2) / (2 * m))
    dA2 = a["Wd"].T @ (Z3 - a["Y"])
    dZ1 = (dA2.T.reshape(m, Z1.shape[2], Z1.shape[3], -1).transpose(0, 3, 1, 2) if a["channels_last"]
           else dA2.T.reshape(Z1.shape))
    dX, dw, db = conv_naive_backward(dZ1, X, w, a["stride"], a["pad"], mistake)
    if flip:
        dw = dw[:, :, ::-1, ::-1]
    return {"cost": cost, "AL": Z3, "dW1": dw / m, "db1": db / m, "dA0": dX, "dZ1": dZ1}


def on_wire(keys: dict, image_layout: str, b_shape=None) -> dict:
    """Submission arrays as the request's layouts hold them."""
    out = {}
    for k, v in keys.items():
        if k == "dW1" and image_layout == "NHWC":
            v = v.transpose(2, 3, 1, 0)
        elif k == "db1" and b_shape is not None:
            v = v.reshape(b_shape)
        elif isinstance(v, np.ndarray) and v.ndim == 4 and image_layout == "NHWC":
            v = v.transpose(0, 2, 3, 1)
        out[k] = np.ascontiguousarray(v) if isinstance(v, np.ndarray) else v
    return out


def pool_net(kind: str, image_layout="NCHW", *, size=(2, 2), stride=None, ties=None, integer=False, m=2,
             shape=(2, 4, 6), seed=1) -> tuple[dict, dict]:
    """[pooling, flatten, dense 2 (linear)] + MSE on X itself (integer-valued X holds ties)."""
    rng = np.random.default_rng(seed)
    X = rng.integers(-1, 2, (m, *shape)).astype(float) if integer else rng.normal(size=(m, *shape))
    st = stride or size
    Ho, Wo = (shape[1] - size[0]) // st[0] + 1, (shape[2] - size[1]) // st[1] + 1
    n = shape[0] * Ho * Wo
    Wd, bd, Y = rng.normal(size=(2, n)) / np.sqrt(n), rng.normal(size=(2, 1)) * 0.3, rng.normal(size=(2, m))
    layer = {"type": kind, "size": list(size)}
    if stride:
        layer["stride"] = list(stride)
    if ties:
        layer["ties"] = ties
    last = image_layout == "NHWC"
    body = {"layers": [layer, {"type": "flatten"}, {"W": Wd, "b": bd, "activation": "linear"}],
            "X": nhwc(X) if last else X, "Y": Y, "cost": "mean_squared_error", "image_layout": image_layout}
    return body, {"X": X, "Wd": Wd, "bd": bd, "Y": Y, "size": size, "stride": st, "channels_last": last}


def naive_pool_pipeline(a: dict, kind: str, rule: str) -> dict:
    """dA0 of the pool_net by the naive loops, the pooling's backward by ``rule``."""
    X, m = a["X"], a["X"].shape[0]
    (ph, pw), (sh, sw) = a["size"], a["stride"]
    Ho, Wo = (X.shape[2] - ph) // sh + 1, (X.shape[3] - pw) // sw + 1
    Z1 = np.zeros((m, X.shape[1], Ho, Wo))
    for i in range(m):
        for c in range(X.shape[1]):
            for r in range(Ho):
                for s in range(Wo):
                    window = X[i, c, r * sh:r * sh + ph, s * sw:s * sw + pw]
                    Z1[i, c, r, s] = window.max() if kind == "maxpool2d" else window.mean()
    Z3 = a["Wd"] @ flat(Z1, a["channels_last"]) + a["bd"]
    dA2 = a["Wd"].T @ (Z3 - a["Y"])
    dZ1 = (dA2.T.reshape(m, Ho, Wo, -1).transpose(0, 3, 1, 2) if a["channels_last"] else dA2.T.reshape(Z1.shape))
    return {"dA0": pool_naive_backward(X, dZ1, a["size"], a["stride"], rule), "dZ1": dZ1}


# --- bad inputs -------------------------------------------------------------------------------------------------

def test_a_conv_kernel_larger_than_the_padded_input(post):
    body, _ = conv_net(shape=(2, 3, 3), kernel=(3, 2), pad=(0, 0), stride=(1, 1))
    body["layers"][0]["W"] = RNG.normal(size=(3, 2, 4, 2))
    status, out = post(body)
    assert status == 422
    (location, kind, message), = errors_of(out)
    assert (location, kind) == ("layers[0].W", "kernel_too_large")
    assert "the kernel is 4 x 2 but the padded input is only 3 x 3" in message and "more padding" in message


@pytest.mark.parametrize("stride", [0, -1, 1.5, "2", [1], [1, 0], [1, 2, 3], None, True])
def test_a_stride_that_is_not_a_positive_integer(post, stride):
    body, _ = conv_net()
    body["layers"][0]["stride"] = stride
    status, out = post(body)
    assert status == 422
    (location, kind, message), = errors_of(out)
    assert (location, kind) == ("layers[0].stride", "int_pair")
    assert message.startswith("stride must be a positive integer, or a pair [a, b] of them")


def test_padding_may_be_zero_but_not_negative(post):
    body, _ = conv_net()
    body["layers"][0]["pad"] = [0, -1]
    status, out = post(body)
    assert status == 422 and errors_of(out)[0][:2] == ("layers[0].pad", "int_pair")
    assert "pad must be an integer >= 0" in errors_of(out)[0][2]


def test_a_dense_layer_straight_after_an_image_batch(post):
    body, _ = conv_net()
    del body["layers"][1]
    status, out = post(body)
    assert status == 422
    (location, kind, message), = errors_of(out)
    assert (location, kind) == ("layers[1]", "rank_mismatch")
    assert "dense takes vectors" in message and message.endswith("add a flatten layer before it")


def test_an_image_kind_after_flatten(post):
    body, _ = conv_net()
    body["layers"].insert(2, {"type": "maxpool2d", "size": 2})
    status, out = post(body)
    assert status == 422
    (location, kind, message), = errors_of(out)
    assert (location, kind) == ("layers[2]", "rank_mismatch")
    assert "maxpool2d takes image batches" in message and "put layers[2] before the flatten layer" in message


def test_a_conv_layer_on_a_matrix_X(post):
    body, _ = conv_net()
    body["X"] = RNG.normal(size=(4, 3))
    status, out = post(body)
    assert status == 422
    (location, kind, message), = errors_of(out)
    assert (location, kind) == ("layers[0]", "rank_mismatch")
    assert "send X as an image batch, (m, C, H, W)" in message


def test_an_image_batch_at_the_output(post):
    body, _ = conv_net()
    body["layers"] = body["layers"][:1]
    status, out = post(body)
    assert status == 422
    (location, kind, message), = errors_of(out)
    assert (location, kind) == ("layers[0]", "rank_mismatch")
    assert "the cost needs vectors (n_L, m): add a flatten layer" in message


def test_groups_that_do_not_divide_the_channels(post):
    body, _ = conv_net()
    body["layers"].insert(1, {"type": "groupnorm", "groups": 2, "gamma": [1.0] * 3, "beta": [0.0] * 3})
    status, out = post(body)
    assert status == 422
    (location, kind, message), = errors_of(out)
    assert (location, kind) == ("layers[1].groups", "groups_mismatch")
    assert "groups G = 2 does not divide the input's 3 channels" in message and "(1, 3)" in message


def test_a_W_whose_channel_count_does_not_match(post):
    body, _ = conv_net()
    body["layers"][0]["W"] = RNG.normal(size=(3, 4, 3, 2))
    status, out = post(body)
    assert status == 422
    (location, kind, message), = errors_of(out)
    assert (location, kind) == ("layers[0].W", "shape_mismatch")
    assert "its second axis is the input's channels, 4, but the input has 2 channels because X holds" in message


def test_a_deeplearning_ai_W_under_NCHW_is_named(post):
    body, a = conv_net(shape=(4, 5, 6))
    body["layers"][0]["W"] = a["W"].transpose(2, 3, 1, 0).copy()  # (kh, kw, C, F) with image_layout NCHW
    status, out = post(body)
    assert status == 422
    location, kind, message = errors_of(out)[0]
    assert location == "layers[0].W" and "looks like deeplearning.ai's (kh, kw, C, F)" in message


@pytest.mark.parametrize("sent,other", [("NCHW", "NHWC"), ("NHWC", "NCHW")])
def test_an_image_layout_that_does_not_fit_the_sent_shapes(post, sent, other):
    body, _ = conv_net(image_layout=other)  # every array in the other layout
    body["image_layout"] = sent
    status, out = post(body)
    assert status == 422
    (location, kind, message), = errors_of(out)
    assert (location, kind) == ("image_layout", "layout_mismatch")
    assert f"X looks like {other}" in message and message.endswith(f"did you mean image_layout {other}?")


def test_a_pooling_window_larger_than_its_input(post):
    body, _ = pool_net("maxpool2d", shape=(2, 4, 6))
    body["layers"][0]["size"] = [5, 2]
    status, out = post(body)
    assert status == 422
    (location, kind, message), = errors_of(out)[:1]
    assert (location, kind) == ("layers[0].size", "kernel_too_large")
    assert "the window is 5 x 2 but the input is only 4 x 6" in message


@pytest.mark.parametrize("field,value,needle", [
    ("b", [0.0, 0.0], "b is (2) but W has 3 filters: send (3) or (1, 3, 1, 1) or (1, 1, 1, 3)"),
    ("W", [[[[1.0]]]], "its second axis is the input's channels, 1"),
])
def test_conv_parameters_of_the_wrong_shape(post, field, value, needle):
    body, _ = conv_net()
    body["layers"][0][field] = value
    status, out = post(body)
    assert status == 422
    assert any(loc == f"layers[0].{field}" and needle in msg for loc, _, msg in errors_of(out)), errors_of(out)


def test_norm_parameters_and_running_statistics(post):
    body, _ = conv_net()
    body["layers"].insert(1, {"type": "spatial_batchnorm", "gamma": [1.0] * 2, "beta": [0.0] * 3, "mode": "test"})
    status, out = post(body)
    assert status == 422
    found = {(loc, kind) for loc, kind, _ in errors_of(out)}
    assert ("layers[1].gamma", "shape_mismatch") in found
    assert {("layers[1].running_mean", "missing_running_statistics"),
            ("layers[1].running_var", "missing_running_statistics")} <= found


def test_a_dropout_mask_of_the_wrong_image_shape(post):
    body, _ = conv_net(image_layout="NHWC")
    body["dropout"] = {"keep_prob": 0.5, "masks": [np.ones((3, 3, 5, 3)), np.ones((63, 3))]}  # A1 (3, 3, 7, 3)
    status, out = post(body)
    assert status == 422
    (location, kind, message), = errors_of(out)
    assert (location, kind) == ("dropout.masks[0]", "shape_mismatch")
    assert message == "mask D1 is (3, 3, 5, 3) but A1 is (3, 3, 7, 3)"
    body["dropout"]["masks"][0] = np.ones((3, 3, 7, 3))
    assert post(body)[0] == 200


def test_an_unknown_field_of_a_pooling_layer(post):
    body, _ = pool_net("avgpool2d")
    body["layers"][0]["ties"] = "first"  # max pooling's field
    status, out = post(body)
    assert status == 422
    location, kind, message = errors_of(out)[0]
    assert (location, kind) == ("layers[0].ties", "extra_forbidden") and "maxpool2d" in message


# --- the naive implementation agrees, and /v1/grade names each planted mistake -------------------------------

def grade(post, body: dict, submission: dict) -> dict:
    status, out = post({**body, "submission": submission}, "/v1/grade")
    assert status == 200, out
    return {k["key"]: k for k in out["result"]["keys"]}


@pytest.mark.parametrize("image_layout", ["NCHW", "NHWC"])
def test_the_naive_pipeline_is_the_service(post, image_layout):
    body, a = conv_net(image_layout, b_shape=(1, 1, 1, 3))
    keys = naive_conv_pipeline(a)
    status, out = post(body)
    assert status == 200
    wire = on_wire(keys, image_layout, (1, 1, 1, 3))
    for k in ("dW1", "db1", "dA0", "dZ1"):
        np.testing.assert_allclose(as_array(out["gradients"][k]), wire[k], rtol=1e-10, atol=1e-13, err_msg=k)
    graded = grade(post, body, {"cost": keys["cost"], **{k: wire[k] for k in ("dW1", "db1", "dA0", "dZ1")}})
    assert {k["status"] for k in graded.values()} == {"correct"}


CONV_MISTAKES = [
    # (planted mistake, its diagnosis, the keys it changes)
    ("stride_ignored", "conv_stride_ignored", ("dW1", "dA0")),
    ("padding_ignored", "conv_padding_ignored", ("dW1", "dA0")),
    ("last_example", "conv_grads_not_summed_over_examples", ("dW1", "db1")),
]


@pytest.mark.parametrize("image_layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("mistake,code,changed", CONV_MISTAKES)
def test_a_planted_conv_backward_mistake_is_named(post, image_layout, mistake, code, changed):
    body, a = conv_net(image_layout)
    right, wrong = naive_conv_pipeline(a), naive_conv_pipeline(a, mistake)
    for k in changed:
        assert not np.allclose(right[k], wrong[k]), f"{mistake} leaves {k} unchanged here"
    graded = grade(post, body, on_wire({k: wrong[k] for k in changed}, image_layout))
    for k in changed:
        assert graded[k]["status"] == "incorrect"
        assert graded[k]["diagnosis"] is not None and graded[k]["diagnosis"]["code"] == code, graded[k]
        assert graded[k]["diagnosis"]["layer"] == 1


@pytest.mark.parametrize("image_layout", ["NCHW", "NHWC"])
def test_a_flipped_kernel_true_convolution_is_named(post, image_layout):
    body, a = conv_net(image_layout)
    wrong = naive_conv_pipeline(a, flip=True)
    graded = grade(post, body, on_wire({k: wrong[k] for k in ("cost", "dW1", "db1", "dA0")}, image_layout))
    for k in ("cost", "dW1", "db1", "dA0"):
        assert graded[k]["diagnosis"]["code"] == "conv_flipped_kernel", graded[k]


def test_a_symmetric_kernel_cannot_be_told_from_its_flip(post):
    body, a = conv_net(kernel=(1, 1), stride=(1, 1), pad=(0, 0))
    right, wrong = naive_conv_pipeline(a), naive_conv_pipeline(a, flip=True)
    np.testing.assert_allclose(right["dW1"], wrong["dW1"], rtol=1e-12)
    graded = grade(post, body, {"dW1": right["dW1"] * 2})
    assert graded["dW1"]["diagnosis"]["code"] != "conv_flipped_kernel"


POOL_MISTAKES = [
    # (kind, size, stride, ties, integer X, the student's rule, the diagnosis)
    ("maxpool2d", (2, 2), None, "first", False, "spread", "maxpool_gradient_spread_evenly"),
    ("maxpool2d", (2, 3), (1, 2), "first", False, "spread", "maxpool_gradient_spread_evenly"),
    ("maxpool2d", (2, 2), None, "first", True, "max_all", "maxpool_ties_to_all"),
    ("maxpool2d", (3, 2), (1, 1), "all", True, "max_first", "maxpool_ties_to_one"),
    ("avgpool2d", (2, 2), None, None, False, "copied", "avgpool_not_divided_by_window"),
    ("avgpool2d", (3, 2), (1, 1), None, False, "copied", "avgpool_not_divided_by_window"),
]


@pytest.mark.parametrize("image_layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("kind,size,stride,ties,integer,rule,code", POOL_MISTAKES)
def test_a_planted_pooling_mistake_is_named(post, image_layout, kind, size, stride, ties, integer, rule, code):
    body, a = pool_net(kind, image_layout, size=size, stride=stride, ties=ties, integer=integer)
    right_rule = "spread" if kind == "avgpool2d" else f"max_{ties}"
    right, wrong = naive_pool_pipeline(a, kind, right_rule), naive_pool_pipeline(a, kind, rule)
    assert not np.allclose(right["dA0"], wrong["dA0"]), "the mistake changes nothing here"
    status, out = post(body)
    np.testing.assert_allclose(as_array(out["gradients"]["dA0"]), on_wire(right, image_layout)["dA0"], rtol=1e-10,
                               atol=1e-13)
    graded = grade(post, body, on_wire({"dA0": wrong["dA0"]}, image_layout))
    assert graded["dA0"]["diagnosis"] is not None and graded["dA0"]["diagnosis"]["code"] == code, graded["dA0"]
    assert graded["dA0"]["diagnosis"]["layer"] == 1


def test_grading_an_image_response_fed_back_scores_full_marks_with_wire_indices(post):
    body, _ = conv_net("NHWC", b_shape=(1, 1, 1, 3))
    status, out = post(body)
    sub = {"cost": out["cost"], "AL": out["AL"], **out["gradients"]}
    status, graded = post({**body, "submission": sub, "reveal": True}, "/v1/grade")
    assert status == 200 and graded["result"]["score"] == graded["result"]["max_score"] == len(sub)
    assert np.shape(graded["reference"]["dA0"]) == (3, 5, 6, 2)
    wrong = as_array(out["gradients"]["dA0"])
    wrong[2, 4, 1, 0] += 1.0  # one entry, at a wire index of the NHWC array
    keys = grade(post, body, {"dA0": wrong})
    assert keys["dA0"]["expected_shape"] == [3, 5, 6, 2] and keys["dA0"]["worst"]["index"] == [2, 4, 1, 0]


# --- max pooling's ties, against the direct computation -------------------------------------------------------

@pytest.mark.parametrize("size,stride", [((2, 2), None), ((2, 3), (1, 1)), ((3, 3), (2, 1))])
def test_both_tie_policies_match_a_direct_loop(post, size, stride):
    """Integer-valued X: most windows hold several equal maxima. `first` routes each window's gradient to its
    first maximum in row-major order, `all` gives each of them the whole gradient (not split)."""
    results = {}
    for ties in ("first", "all"):
        body, a = pool_net("maxpool2d", size=size, stride=stride, ties=ties, integer=True, shape=(2, 6, 7), m=3)
        status, out = post(body)
        assert status == 200
        dout = as_array(out["gradients"]["dZ1"])
        _, want = maxpool_direct(a["X"], dout, size, stride or size, ties)
        np.testing.assert_allclose(as_array(out["gradients"]["dA0"]), want, rtol=1e-12, atol=1e-15)
        results[ties] = want
    assert not np.allclose(results["first"], results["all"]), "the input holds ties"


def test_first_is_torchs_max_pool2d_and_cs231ns_argmax():
    import torch

    x = RNG.integers(0, 2, (2, 3, 5, 6)).astype(float)
    dout = RNG.normal(size=(2, 3, 2, 3))
    xt = torch.tensor(x, requires_grad=True)
    torch.nn.functional.max_pool2d(xt, 2).backward(torch.tensor(dout))
    np.testing.assert_array_equal(maxpool_direct(x, dout, (2, 2), (2, 2), "first")[1], xt.grad.numpy())


def test_create_mask_from_window_and_distribute_value(post):
    """deeplearning.ai's helpers, as a window's backward with dZ = 1 (Y = A - 1 under MSE) and dZ = 2."""
    case = json.loads((DATA / "images_dlai_c4w1.json").read_text())["create_mask_from_window_2017_2021"]
    for x, mask in ((np.array(case["inputs"]["x_seed1"]), np.array(case["expected"]["mask_seed1"])),
                    (np.array(case["inputs"]["x_2021"]), np.array(case["expected"]["mask_2021"]))):
        X = x.reshape(1, *x.shape, 1)  # one example, one channel, NHWC
        body = {"layers": [{"type": "maxpool2d", "size": list(x.shape), "ties": "all"}, {"type": "flatten"}],
                "X": X, "Y": [[float(x.max()) - 1.0]], "cost": "mean_squared_error", "image_layout": "NHWC"}
        status, out = post(body)
        assert status == 200
        np.testing.assert_array_equal(as_array(out["gradients"]["dA0"])[0, :, :, 0], mask.astype(float))
    case = json.loads((DATA / "images_dlai_c4w1.json").read_text())["distribute_value_2017_2021"]
    body = {"layers": [{"type": "avgpool2d", "size": case["inputs"]["shape"]}, {"type": "flatten"}],
            "X": np.zeros((1, 1, 2, 2)), "Y": [[-float(case["inputs"]["dz"])]], "cost": "mean_squared_error"}
    status, out = post(body)
    np.testing.assert_array_equal(as_array(out["gradients"]["dA0"])[0, 0], case["expected"]["a"])


# --- central differences over conv W and b ---------------------------------------------------------------------

@pytest.mark.parametrize("image_layout", ["NCHW", "NHWC"])
def test_central_differences_of_the_cost_over_conv_W_and_b(post, image_layout):
    """Independent of /v1/gradient-check: J(theta +- eps) from /v1/gradients, one entry at a time, in the wire's
    own form of W ((kh, kw, C, F) with NHWC) and of b ((1, 1, 1, F))."""
    body, _ = conv_net(image_layout, m=2, shape=(2, 4, 5), F=2, kernel=(2, 3), stride=(2, 1), pad=(1, 0),
                       b_shape=(1, 1, 1, 2))
    body["layers"][0]["activation"] = "tanh"
    status, out = post(body)
    eps = 1e-6
    for name in ("W", "b"):
        theta = np.array(body["layers"][0][name])
        numeric = np.zeros(theta.shape)
        for index in np.ndindex(theta.shape):
            costs = []
            for step in (eps, -eps):
                moved = theta.copy()
                moved[index] += step
                costs.append(post({**body, "layers": [{**body["layers"][0], name: moved}, *body["layers"][1:]]})[1]["cost"])
            numeric[index] = (costs[0] - costs[1]) / (2 * eps)
        analytic = as_array(out["gradients"][f"d{name}1"])
        assert analytic.shape == theta.shape
        np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-9, err_msg=name)


def norm_net(image_layout="NCHW") -> dict:
    body, _ = conv_net(image_layout, m=3, shape=(4, 4, 5), F=4, kernel=(2, 2), stride=(1, 2), pad=(1, 1))
    body["layers"][0]["activation"] = "relu"
    body["layers"][1:1] = [
        {"type": "groupnorm", "groups": 2, "gamma": RNG.normal(1, 0.2, (1, 4, 1, 1)), "beta": RNG.normal(0, 0.2, 4),
         "activation": "tanh"},
        {"type": "maxpool2d", "size": [2, 1], "stride": 1},
        {"type": "spatial_batchnorm", "gamma": RNG.normal(1, 0.2, 4), "beta": RNG.normal(0, 0.2, 4),
         "activation": "sigmoid"}]
    n = 4 * 4 * 3  # conv: 4 channels of 5 x 3; the pooling [2, 1], stride 1: 4 x 3
    body["layers"][-1]["W"] = RNG.normal(size=(2, n)) / np.sqrt(n)
    return body


@pytest.mark.parametrize("image_layout", ["NCHW", "NHWC"])
def test_gradient_check_passes_over_conv_and_the_norms(post, image_layout):
    body = norm_net(image_layout)
    status, out = post(body, "/v1/gradient-check")
    assert status == 200, out
    names = {p["name"] for p in out["parameters"]}
    assert {"dW1", "db1", "dgamma2", "dbeta2", "dgamma4", "dbeta4", "dW6", "db6"} <= names
    assert out["passed"] and out["difference"] < 1e-7, out


def test_gradient_check_catches_a_wrong_conv_gradient_at_its_wire_index(post):
    body = norm_net("NHWC")
    status, grads = post(body)
    submitted = {k: v for k, v in grads["gradients"].items() if k[:2] in ("dW", "db") or k[:3] == "dga" or
                 k[:3] == "dbe"}
    dW1 = as_array(submitted["dW1"])
    dW1[1, 0, 3, 2] += 0.5  # (kh, kw, C, F)
    submitted["dW1"] = dW1
    status, out = post({**body, "gradients": submitted}, "/v1/gradient-check")
    assert status == 200, out
    assert not out["passed"]
    assert out["worst"][0]["parameter"] == "dW1" and out["worst"][0]["index"] == [1, 0, 3, 2]


# --- the courses' published values -------------------------------------------------------------------------------

def published(name: str, case: str) -> dict:
    return json.loads((DATA / name).read_text())[case]


def printed(got, want, what: str) -> None:
    """As the research notes' rule for 8-decimal printouts: |got - printed| <= 6e-9 + 1e-7 |printed|."""
    np.testing.assert_allclose(np.asarray(got, dtype=float), np.asarray(want, dtype=float), rtol=1e-7, atol=6e-9,
                               err_msg=what)


def forward_only(post, X, layer: dict, image_layout="NCHW") -> np.ndarray:
    """Z1 of one layer, as [layer, flatten] + MSE returns it in its caches."""
    body = {"layers": [layer, {"type": "flatten"}], "X": X, "cost": "mean_squared_error", "include_caches": True,
            "image_layout": image_layout, "Y": np.zeros((1, 1))}
    status, out = post(body)
    n = out["errors"][0]["message"].split("the output layer has ")[1].split(" ")[0] if status == 422 else None
    if n is not None:
        body["Y"] = np.zeros((int(n), np.shape(X)[0]))
        status, out = post(body)
    assert status == 200, out
    return as_array(out["caches"]["Z1"])


def test_cs231n_conv_forward_naive_correct_out(post):
    case = published("images_cs231n.json", "conv_forward_naive")
    i = case["inputs"]
    Z = forward_only(post, i["x"], {"type": "conv2d", "W": i["w"], "b": i["b"], "stride": i["stride"],
                                    "pad": i["pad"], "activation": "linear"})
    printed(Z, case["expected"]["correct_out"], "correct_out")


def test_cs231n_max_pool_forward_naive_correct_out(post):
    case = published("images_cs231n.json", "max_pool_forward_naive")
    i = case["inputs"]
    Z = forward_only(post, i["x"], {"type": "maxpool2d", "size": [i["pool_height"], i["pool_width"]],
                                    "stride": i["stride"]})
    printed(Z, case["expected"]["correct_out"], "correct_out")


@pytest.mark.parametrize("version,index", [("conv_forward_2018", "Z[3,2,1]"), ("conv_forward_2019_2020", "Z[3,2,1]"),
                                           ("conv_forward_2021", "Z[0,2,1]")])
def test_deeplearning_ai_conv_forward(post, version, index):
    case = published("images_dlai_c4w1.json", version)
    i = case["inputs"]
    Z = forward_only(post, i["A_prev"], {"type": "conv2d", "W": i["W"], "b": i["b"], "stride": i["stride"],
                                         "pad": i["pad"], "activation": "linear"}, "NHWC")
    assert list(Z.shape) == case["derived"]["Z_shape"]
    printed(Z.mean(), case["expected"]["Z_mean"], "Z_mean")
    at = tuple(int(k) for k in index[2:-1].split(","))
    printed(Z[at], case["expected"][index], index)


def test_deeplearning_ai_conv_backward(post):
    """dZ = Z (the course feeds the forward's output back): [conv, flatten] + MSE with Y = 0 gives dZ1 = Z1 in the
    per_example convention; the course's dW and db are sums (no 1/m), the service's (1/m) sums."""
    case = published("images_dlai_c4w1.json", "conv_backward_2018_2021")
    i = case["inputs"]
    X = np.array(i["A_prev"])
    Z = forward_only(post, X, {"type": "conv2d", "W": i["W"], "b": i["b"], "stride": i["stride"], "pad": i["pad"],
                               "activation": "linear"}, "NHWC")
    body = {"layers": [{"type": "conv2d", "W": i["W"], "b": i["b"], "stride": i["stride"], "pad": i["pad"],
                        "activation": "linear"}, {"type": "flatten"}],
            "X": X, "Y": np.zeros((Z[0].size, X.shape[0])), "cost": "mean_squared_error", "image_layout": "NHWC"}
    status, out = post(body)
    g, m = out["gradients"], X.shape[0]
    np.testing.assert_allclose(as_array(g["dZ1"]), Z, rtol=1e-12)
    assert as_array(g["dA0"]).shape == X.shape and as_array(g["dW1"]).shape == (2, 2, 3, 8)
    assert as_array(g["db1"]).shape == (1, 1, 1, 8)
    printed(as_array(g["dA0"]).mean(), case["expected"]["dA_mean"], "dA_mean")
    printed(m * as_array(g["dW1"]).mean(), case["expected"]["dW_mean"], "dW_mean")
    printed(m * as_array(g["db1"]).mean(), case["expected"]["db_mean"], "db_mean")


@pytest.mark.parametrize("stride", [1, 2])
def test_deeplearning_ai_pool_forward(post, stride):
    case = published("images_dlai_c4w1.json", "pool_forward_2019_2021")
    X = case["inputs"]["A_prev"]
    want = case["expected"][f"stride{stride}_f3"]
    for kind, key in (("maxpool2d", "A_max"), ("avgpool2d", "A_average")):
        Z = forward_only(post, X, {"type": kind, "size": 3, "stride": stride}, "NHWC")
        printed(Z, want[key], f"{kind} stride {stride}")


@pytest.mark.parametrize("kind,mode", [("maxpool2d", "max"), ("avgpool2d", "average")])
def test_deeplearning_ai_pool_backward(post, kind, mode):
    """dA given: [pool, flatten] + MSE with Y = A - dA makes dZ1 = dA (to rounding)."""
    case = published("images_dlai_c4w1.json", "pool_backward_2017_2021")
    X, dA = np.array(case["inputs"]["A_prev"]), np.array(case["inputs"]["dA"])
    printed(dA.mean(), case["expected"]["mean_of_dA"], "mean of dA")
    layer = {"type": kind, "size": 2, "stride": 1}
    A = forward_only(post, X, layer, "NHWC")
    flat_nhwc = lambda a: np.ascontiguousarray(a.reshape(a.shape[0], -1).T)  # noqa: E731  (NHWC order)
    body = {"layers": [layer, {"type": "flatten"}], "X": X, "Y": flat_nhwc(A) - flat_nhwc(dA),
            "cost": "mean_squared_error", "image_layout": "NHWC"}
    status, out = post(body)
    dA_prev = as_array(out["gradients"]["dA0"])
    assert list(dA_prev.shape) == case["expected"]["dA_prev_shape"]
    printed(dA_prev[1, 1], case["expected"][mode]["dA_prev[1,1]"], f"{mode} dA_prev[1,1]")


def test_cs231n_spatial_batchnorm_train_statistics(post):
    """Student runs printed identically in 2017 and 2022 (medium confidence in the research notes)."""
    case = published("images_cs231n_spatial_batchnorm.json", "spatial_batchnorm_forward_train")
    x = np.array(case["inputs"]["x"])
    printed(x.mean(axis=(0, 2, 3)), case["expected"]["before"]["means"], "means before")
    for gamma, beta, key in (([1.0, 1.0, 1.0], [0.0, 0.0, 0.0], "after_gamma1_beta0"),
                             ([3.0, 4.0, 5.0], [6.0, 7.0, 8.0], "after_gamma345_beta678")):
        Z = forward_only(post, x, {"type": "spatial_batchnorm", "gamma": gamma, "beta": beta})
        printed(Z.std(axis=(0, 2, 3)), case["expected"][key]["stds"], f"{key} stds")
        np.testing.assert_allclose(Z.mean(axis=(0, 2, 3)), beta, atol=1e-12)


# --- explain, limits, /v1 --------------------------------------------------------------------------------------

def explain_net(image_layout: str) -> dict:
    """[maxpool 2, conv 3x2 (4 filters, pad 1), flatten, dense 3 softmax] on 2 channels of 6 x 8."""
    rng = np.random.default_rng(5)
    X = rng.normal(size=(4, 2, 6, 8))
    W = rng.normal(size=(4, 2, 3, 2))
    last = image_layout == "NHWC"
    return {"layers": [{"type": "maxpool2d", "size": 2},
                       {"type": "conv2d", "W": W.transpose(2, 3, 1, 0).copy() if last else W, "b": np.zeros(4),
                        "pad": 1, "activation": "relu"},
                       {"type": "flatten"},
                       {"W": rng.normal(size=(3, 4 * 3 * 5)) * 0.1, "b": np.zeros(3), "activation": "softmax"}],
            "X": nhwc(X) if last else X, "Y": [0, 1, 2, 1], "cost": "categorical_cross_entropy",
            "image_layout": image_layout}


@pytest.mark.parametrize("image_layout", ["NCHW", "NHWC"])
def test_explain_tells_the_hidden_step_of_each_image_kind(post, image_layout):
    body = explain_net(image_layout)
    status, grads = post(body)
    last = image_layout == "NHWC"
    stories = {}
    for h in (1, 2, 3):
        status, out = post({**body, "hidden_layer": h, "examples_shown": 2, "units_shown": 3}, "/v1/explain")
        assert status == 200, out
        step = {s["id"]: s for s in out["steps"]}["hidden_dA"]
        stories[h] = step
        dA = as_array(grads["gradients"][f"dA{h}"])
        assert step["shapes"][f"dA{h}"]["total"] == list(dA.shape)
        shown = as_array(step["values"][f"dA{h}"])
        if dA.ndim == 4:  # the first examples and channels, in the wire's layout
            part = dA[:2, :, :, :3] if last else dA[:2, :3]
        else:
            part = dA[:3, :2]
        np.testing.assert_array_equal(shown, part)
    assert "maxpool(A1)" not in stories[1]["text"] and "conv" in stories[1]["text"].lower()
    assert "cross-correlation" in stories[1]["text"] and "col2im" in stories[1]["latex"]
    assert stories[1]["shapes"]["W2"]["total"] == ([3, 2, 2, 4] if last else [4, 2, 3, 2])
    assert "flatten(A2)" in stories[2]["text"] and "reshape" in stories[2]["latex"]
    assert stories[3]["latex"].startswith(r"dA^{[3]} = W^{[4]T}")


def test_explain_with_a_pooling_layer_after_the_hidden_one(post):
    body = explain_net("NCHW")
    body["layers"][1:1] = [{"type": "avgpool2d", "size": [1, 2], "stride": [1, 2]}]
    body["layers"][2]["W"] = np.random.default_rng(6).normal(size=(4, 2, 1, 1))
    body["layers"][2]["pad"] = 0
    body["layers"][4]["W"] = np.random.default_rng(7).normal(size=(3, 4 * 3 * 2)) * 0.1
    status, out = post({**body, "hidden_layer": 1}, "/v1/explain")
    assert status == 200, out
    step = {s["id"]: s for s in out["steps"]}["hidden_dA"]
    assert "avgpool(A1)" in step["text"] and "1/(1 x 2)" in step["text"]


def limited_post(**settings):
    client = create_app(settings).test_client()

    def _post(body, path="/v1/gradients"):
        r = client.post(path, data=orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY),
                        content_type="application/json")
        return r.status_code, orjson.loads(r.data)
    return _post


def test_the_image_size_limit():
    body, _ = conv_net()  # X 5 x 6, the conv's output 3 x 7
    status, out = limited_post(max_image_size=6)(body)
    assert status == 422 and out["type"].endswith("limit-exceeded")
    assert errors_of(out) == [("layers[0]", "limit_exceeded", "the largest side of an image is 7, over this "
                                                               "service's limit of 6")]
    status, out = limited_post(max_image_size=5)(body)
    assert [e[0] for e in errors_of(out)] == ["X", "layers[0]"]
    assert limited_post(max_image_size=7)(body)[0] == 200


def test_the_kernel_size_limit():
    body, _ = pool_net("avgpool2d", size=(2, 3))
    status, out = limited_post(max_kernel_size=2)(body)
    assert status == 422
    assert errors_of(out) == [("layers[0]", "limit_exceeded", "the largest side of the kernel or window is 3, over "
                                                              "this service's limit of 2")]
    assert limited_post(max_kernel_size=3)(body)[0] == 200


def test_the_stored_numbers_limit_counts_the_im2col_buffer():
    """The conv keeps its im2col matrix (C kh kw numbers per output pixel and example), its padded input, the
    output and their gradients: priced before any work."""
    body, _ = conv_net(m=3, shape=(2, 5, 6), F=3, kernel=(3, 2), stride=(2, 1), pad=(1, 1))
    padded, cols, out = 3 * 2 * 7 * 8, 3 * 3 * 7 * 2 * 3 * 2, 3 * 3 * 3 * 7
    conv = 2 * padded + 2 * cols + 2 * out
    n = 3 * 3 * 7 * 3
    stored = conv + 2 * n + (n + 2 * 2 * 3)  # flatten (its output and gradient), dense ((n_in + 2 n_out) m)
    status, out = limited_post(max_stored=stored - 1)(body)
    assert status == 422
    assert errors_of(out) == [("body", "limit_exceeded", f"the numbers a forward and backward pass keeps in memory "
                                                         f"(caches, im2col buffers and gradients, as each layer kind "
                                                         f"prices them) is {stored}, over this service's limit of "
                                                         f"{stored - 1}")]
    assert limited_post(max_stored=stored)(body)[0] == 200


def test_a_huge_padding_is_refused_by_the_limits_before_any_work():
    body, _ = conv_net()
    body["layers"][0]["pad"] = 10 ** 6
    status, out = limited_post()(body)
    assert status == 422 and out["type"].endswith("limit-exceeded")
    assert {e[0] for e in errors_of(out)} >= {"layers[0]", "body"}


def test_the_limits_are_settings(monkeypatch):
    from service.config import Settings

    monkeypatch.setenv("GRADIENT_MAX_IMAGE_SIZE", "77")
    monkeypatch.setenv("GRADIENT_MAX_KERNEL_SIZE", "5")
    monkeypatch.setenv("GRADIENT_MAX_STORED", "123456")
    limits = Settings.load().limits()
    assert (limits.max_image_size, limits.max_kernel_size, limits.max_stored) == (77, 5, 123456)
    client = create_app().test_client()
    shown = orjson.loads(client.get("/v1").data)["limits"]
    assert (shown["max_image_size"], shown["max_kernel_size"], shown["max_stored"]) == (77, 5, 123456)


def test_v1_lists_the_image_kinds_with_their_formulas_and_mistakes(client):
    kinds = {k["name"]: k for k in orjson.loads(client.get("/v1").data)["kinds"]}
    assert {"conv2d", "maxpool2d", "avgpool2d", "flatten", "spatial_batchnorm", "groupnorm"} <= set(kinds)
    assert {p["name"] for p in kinds["conv2d"]["params"]} == {"W", "b"}
    assert {h["name"] for h in kinds["conv2d"]["hyperparameters"]} == {"stride", "pad"}
    assert "cross-correlation" in kinds["conv2d"]["description"] and "dW" in kinds["conv2d"]["formulas"]
    assert set(kinds["conv2d"]["mistakes"]) == {"conv_flipped_kernel", "conv_stride_ignored", "conv_padding_ignored",
                                                "conv_grads_not_summed_over_examples"}
    assert set(kinds["maxpool2d"]["mistakes"]) == {"maxpool_gradient_spread_evenly", "maxpool_ties_to_all",
                                                   "maxpool_ties_to_one"}
    ties = next(h for h in kinds["maxpool2d"]["hyperparameters"] if h["name"] == "ties")
    assert ties["choices"] == ["first", "all"] and ties["default"] == "first"
    spec = orjson.loads(client.get("/openapi.json").data)
    assert spec["components"]["schemas"]["GradientRequest"]["properties"]["image_layout"]["enum"] == ["NCHW", "NHWC"]


def test_the_one_step_routes_tell_an_image_kind_sent_a_matrix_what_to_send(post):
    """The one-step routes take the image kinds (tests/test_steps_images.py); an input of the other rank than the
    kind's is a 422 at the input, naming the form to send."""
    conv = {"type": "conv2d", "W": np.ones((1, 1, 2, 2)), "b": [0.0], "activation": "relu"}
    status, out = post({"layer": conv, "A_prev": [[1.0, 2.0], [3.0, 4.0]]}, "/v1/layer/forward")
    assert status == 422
    (location, kind, message), = errors_of(out)
    assert (location, kind) == ("A_prev", "rank_mismatch") and "send A_prev as an image batch (m, C, H, W)" in message
    status, out = post({"layers": [{"W": [[1.0, 2.0]], "b": [0.0], "activation": "linear"}, {"type": "flatten"}],
                        "caches": [{"A_prev": [[1.0], [2.0]], "Z": [[1.0]]}, {"A_prev": [[1.0]], "Z": [[1.0]]}],
                        "dAL": [[1.0]]}, "/v1/network/backward")
    assert status == 422 and [e[:2] for e in errors_of(out)] == [("caches[1].A_prev", "rank_mismatch")]


def test_the_benchmarks_network_fits_the_default_limits():
    """[64, 3x32x32] -> conv 16 -> pool -> conv 32 -> pool -> flatten -> dense 10 (bench/images.py) is a
    request the service takes with its default limits: priced, not computed, here."""
    from schemas.gradients import GradientRequest, prepare
    from schemas.limits import Limits

    rng = np.random.default_rng(0)
    pool = {"type": "maxpool2d", "size": 2}
    body = {"layers": [{"type": "conv2d", "W": rng.normal(size=(16, 3, 3, 3)), "b": np.zeros(16), "pad": 1,
                        "activation": "relu"}, pool,
                       {"type": "conv2d", "W": rng.normal(size=(32, 16, 3, 3)), "b": np.zeros(32), "pad": 1,
                        "activation": "relu"}, pool, {"type": "flatten"},
                       {"W": rng.normal(size=(10, 2048)), "b": np.zeros(10), "activation": "softmax"}],
            "X": rng.normal(size=(64, 3, 32, 32)), "Y": list(rng.integers(0, 10, 64).astype(float)),
            "cost": "categorical_cross_entropy"}
    prep = prepare(GradientRequest.model_validate(body), Limits())
    assert prep.shapes == [(3, 32, 32), (16, 32, 32), (16, 16, 16), (32, 16, 16), (32, 8, 8), (2048,), (10,)]


def test_forward_and_backward_work_is_priced_too():
    """Max pooling's backward costs a little more than twice its forward: with GRADIENT_MAX_WORK at the
    forward's price exactly, the forward and backward pass (at most 3 times it) is over."""
    body, _ = pool_net("maxpool2d", size=(2, 2), m=2, shape=(2, 4, 6))
    forward = 2 * (2 * 2 * 2 * 3 * 4) + 2 * 12 + 2 * 2 * 12  # the pooling's comparisons, flatten, dense
    total = (6 * 96 + 96) + 2 * 24 + 3 * 48
    status, out = limited_post(max_work=forward)(body)
    assert status == 422
    assert errors_of(out) == [("body", "limit_exceeded", f"the work of a forward and backward pass (multiply-adds as "
                                                         f"each layer kind prices them; at most 3 times the forward "
                                                         f"limit) is {total}, over this service's limit of "
                                                         f"{3 * forward}")]
    assert limited_post(max_work=forward + 24)(body)[0] == 200

"""The one-step routes on the image kinds, through HTTP: /v1/layer/forward, /v1/layer/backward and
/v1/network/backward against torch float64 (tests/oracle_images.py's builders), the fed-back response graded full
marks by /v1/grade, the kinds' mistakes diagnosed, bad inputs as located 422s, and the courses' published conv and
pooling values (cs231n's conv_forward_naive, max_pool_forward_naive, spatial batchnorm; deeplearning.ai C4W1's
conv_forward, conv_backward, pool_forward, pool_backward) each in one request.

Each image kind of the registry (``input_rank`` 3) gets >= 100 seeded cases per route, spread over both image
layouts (seed % 2), both layouts (flatten's output), rectangular images and kernels, strides and padding, max
pooling's two tie policies (integer inputs a third of the time, so that windows hold ties), m = 1 upwards, and for
the backward dA or dZ with, half of the time, a cached Z drawn independently of the layer of A_prev. The oracle
raises KeyError for a kind it does not know: a kind added to the registry fails here until it is covered.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import torch

from service.app import create_app
from service.engine import KINDS
from tests import step_oracle as so
from tests.oracle import HIDDEN_ACTIVATIONS, torch_activation
from tests.oracle_images import ImageCase, _conv, _layer_forward, _norm, _pool

IMAGE_KINDS = [name for name, kind in KINDS.items() if kind.input_rank == 3]
N_CASES = 100
DATA = Path(__file__).parent / "data" / "published"
SLOPE = 0.01  # the service's default negative_slope (the oracle's torch_activation uses it as given)


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    with so.torch_threads(1):
        yield


@pytest.fixture(scope="module")
def send():
    """send(path, body, **settings) -> (status, parsed body); one app per settings for the module."""
    clients: dict = {}

    def _send(path: str, body: dict, **settings):
        key = tuple(sorted(settings.items()))
        if key not in clients:
            clients[key] = create_app(settings or None).test_client()
        r = clients[key].post(path, data=orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY),
                              content_type="application/json")
        return r.status_code, orjson.loads(r.data)

    return _send


# --- the cases ---------------------------------------------------------------------------------------------------

def _spec(rng, kind: str, shape, image_layout: str, m: int) -> tuple[dict, tuple[int, ...]]:
    """A random oracle spec of ``kind`` on (C, H, W) inputs and its output's feature shape (oracle_images'
    builders; every kind gets a random activation here, which the one-step routes allow)."""
    if kind == "conv2d":
        spec, out = _conv(rng, shape, image_layout)
    elif kind in ("maxpool2d", "avgpool2d"):
        spec, out = _pool(rng, shape, kind)
    elif kind in ("spatial_batchnorm", "groupnorm"):
        spec, out = _norm(rng, shape, kind, image_layout, m)
    elif kind == "flatten":
        spec = {"type": "flatten", "hyper": {}, "params": {}, "sent": {}, "channels_last": image_layout == "NHWC"}
        out = (int(np.prod(shape)),)
    else:
        raise KeyError(kind)
    spec["activation"] = str(rng.choice(HIDDEN_ACTIVATIONS))
    return spec, out


def _forward_np(spec: dict, A: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    with torch.no_grad():
        Z = _layer_forward(spec, so.tt(A), {k: so.tt(v) for k, v in spec["params"].items()})
        return so.npy(Z), so.npy(torch_activation(spec["activation"], Z, SLOPE))


class StepCase:
    """One /v1/layer/forward or /v1/layer/backward request on an image kind: the oracle's spec, A_prev (m, C, H, W)
    and the upstream arrays in the oracle's form (images NCHW, vectors features first); ``wire`` renders them as
    the request's layouts hold them (an ImageCase of the one layer does the conversions)."""

    def __init__(self, seed: int, kind: str, backward: bool):
        rng = np.random.default_rng([seed, 31, IMAGE_KINDS.index(kind), int(backward)])
        self.seed, self.kind = seed, kind
        image_layout = ("NCHW", "NHWC")[seed % 2]
        layout = ("features_first", "examples_first")[(seed // 2) % 2]
        self.m = 1 if rng.random() < 0.2 else int(rng.integers(2, 6))
        shape = (int(rng.integers(1, 5)), int(rng.integers(3, 9)), int(rng.integers(3, 9)))
        for _ in range(50):  # sigmoid and tanh kept off saturation, as tests/oracle_images.py does
            self.spec, self.out_shape = _spec(rng, kind, shape, image_layout, self.m)
            self.ties = bool(rng.random() < 0.35)
            self.A_prev = rng.integers(-2, 3, (self.m, *shape)).astype(float) if self.ties else \
                rng.normal(0, 1, (self.m, *shape))
            Z, _ = _forward_np(self.spec, self.A_prev)
            if self.spec["activation"] not in ("sigmoid", "tanh") or np.abs(Z).max() <= 6:
                break
        self.case = ImageCase(seed, self.m, [self.spec], self.A_prev, np.zeros((1, self.m)), "mean_squared_error",
                              image_layout, layout, "per_example")
        self.dA = self.dZ = self.Z = None
        self.intermediates, self.l2 = None, 0.0
        if backward:
            out = Z.shape
            if rng.random() < 0.5:
                self.dZ = rng.normal(0, 1, out)
            else:
                self.dA = rng.normal(0, 1, out)
                if rng.random() < 0.5:  # an inconsistent cache: Z not the layer of A_prev
                    self.Z = rng.normal(0, 1.5, out)
            self.intermediates = str(rng.choice(["per_example", "mean"])) if rng.random() < 0.8 else None
            self.l2 = float(rng.uniform(0, 1)) if rng.random() < 0.4 else 0.0

    @property
    def image_layout(self) -> str:
        return self.case.image_layout

    def wire(self, a: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(self.case.wire(a))

    def body(self) -> dict:
        out: dict[str, Any] = {"layer": self.case.request()["layers"][0], "A_prev": self.wire(self.A_prev),
                               "image_layout": self.image_layout, "layout": self.case.layout}
        for name in ("dA", "dZ", "Z"):
            if getattr(self, name) is not None:
                out[name] = self.wire(getattr(self, name))
        if self.intermediates is not None:
            out["intermediates"] = self.intermediates
        if self.l2:
            out["l2"] = self.l2
        return out


def _stats(spec: dict, x: np.ndarray) -> dict[str, np.ndarray]:
    """What a norm's cache holds, from the definitions (numpy, in the oracle's form): spatial batchnorm per channel
    (C,) over the examples and pixels (test mode: the running statistics), group norm per example and group
    (m, G); std = sqrt(var + eps); xhat (m, C, H, W)."""
    h, m, C = spec["hyper"], x.shape[0], x.shape[1]
    eps = h.get("eps", 1e-5)
    if spec["type"] == "spatial_batchnorm":
        if h.get("mode", "train") == "test":
            mean, var = spec["state"]["running_mean"], spec["state"]["running_var"]
        else:
            mean, var = x.mean(axis=(0, 2, 3)), x.var(axis=(0, 2, 3))
        std = np.sqrt(var + eps)
        xhat = (x - mean.reshape(1, C, 1, 1)) / std.reshape(1, C, 1, 1)
        return {"xhat": xhat, "mean": mean, "var": var, "std": std}
    G = h["groups"]
    g = x.reshape(m, G, -1)
    mean, var = g.mean(axis=2), g.var(axis=2)
    std = np.sqrt(var + eps)
    xhat = ((g - mean[..., None]) / std[..., None]).reshape(x.shape)
    return {"xhat": xhat, "mean": mean, "var": var, "std": std}


def check_forward(c: StepCase, body: dict) -> None:
    Z, A = _forward_np(c.spec, c.A_prev)
    so.assert_close(body["Z"], c.wire(Z), "Z")
    so.assert_close(body["A"], c.wire(A), "A")
    want: dict[str, np.ndarray] = {}
    if c.kind in ("spatial_batchnorm", "groupnorm"):
        for name, v in _stats(c.spec, c.A_prev).items():
            # per channel in gamma's shape as sent; xhat in the image layout; group norm's (m, G) as they are
            want[name] = c.wire(v) if v.ndim == 4 else (v.reshape(c.spec["sent"]["gamma"]) if v.ndim == 1 else v)
    assert set(body["cache"]) == set(want), (sorted(body["cache"]), sorted(want))
    for name, v in want.items():
        so.assert_close(body["cache"][name], v, f"cache.{name}")
    if c.kind == "spatial_batchnorm":
        from tests.oracle_images import _state
        for name, v in _state(c.spec, c.A_prev).items():
            sent = c.spec["sent"].get(name, (v.size,)) if name in c.spec.get("state", {}) else (v.size,)
            so.assert_close(body["state"][name], v.reshape(sent), f"state.{name}")
    else:
        assert body.get("state") is None


def backward_of(spec: dict, A_prev: np.ndarray, *, dA=None, dZ=None, Z=None, intermediates: str | None = None,
                l2: float = 0.0) -> dict[str, np.ndarray]:
    """dA_prev, dZ and each parameter's gradient (oracle form) of one layer by autograd; with a cached Z, dZ from
    g's VJP at that Z, then the kind's VJP at A_prev (the two need not be consistent). L2 acts on W."""
    x = so.tt(A_prev, grad=True)
    P = {k: so.tt(v, grad=True) for k, v in spec["params"].items()}
    Zt = _layer_forward(spec, x, P)
    if dZ is not None:
        used = so.tt(dZ)
    else:
        Zs = so.tt(so.npy(Zt) if Z is None else Z, grad=True)
        torch_activation(spec["activation"], Zs, SLOPE).backward(so.tt(dA))
        used = Zs.grad
    Zt.backward(used)
    m = A_prev.shape[0] if A_prev.ndim == 4 else A_prev.shape[1]
    out = {"dA_prev": so.npy(x.grad), "dZ": so.npy(used)}
    for name, p in P.items():
        g = p.grad / m if (intermediates or "per_example") == "per_example" else p.grad.clone()
        if l2 and name == "W":
            g = g + l2 / m * so.tt(spec["params"]["W"])
        out[f"d{name}"] = so.npy(g)
    return out


def oracle_backward(c: StepCase) -> dict[str, np.ndarray]:
    return backward_of(c.spec, c.A_prev, dA=c.dA, dZ=c.dZ, Z=c.Z, intermediates=c.intermediates, l2=c.l2)


def _term_scale(c: StepCase, dZ: np.ndarray) -> float:
    """The size of the terms a norm's dA_prev is summed from, |gamma| |dZ| / std (an entry that cancels keeps
    their rounding); 0 for the other kinds."""
    if c.kind not in ("spatial_batchnorm", "groupnorm"):
        return 0.0
    std = _stats(c.spec, c.A_prev)["std"]
    return float(np.max(np.abs(c.spec["params"]["gamma"])) * np.max(np.abs(dZ)) / np.min(std))


def check_backward(c: StepCase, body: dict) -> None:
    ref = oracle_backward(c)
    assert set(body) == set(ref), (sorted(body), sorted(ref))
    so.assert_close(body["dZ"], c.wire(ref["dZ"]), "dZ")
    so.assert_close(body["dA_prev"], c.wire(ref["dA_prev"]), "dA_prev", scale=_term_scale(c, ref["dZ"]))
    for name in c.spec["params"]:
        so.assert_close(body[f"d{name}"], c.case.wire_param(c.spec, name, ref[f"d{name}"]), f"d{name}")


def _run(send, path: str, cases, check) -> None:
    failures = []
    for c in cases:
        status, body = send(path, c.body())
        try:
            assert status == 200, body
            check(c, body)
        except AssertionError as exc:
            failures.append(f"seed {c.seed}: {exc}")
    assert not failures, f"{len(failures)} of {len(cases)} cases failed:\n" + "\n".join(failures[:10])


def _coverage(cases: list[StepCase]) -> None:
    """The spread the module docstring promises, so that a generator change cannot quietly narrow it."""
    assert {c.image_layout for c in cases} == {"NCHW", "NHWC"}
    assert sum(c.m == 1 for c in cases) >= 5 and sum(c.m > 1 for c in cases) >= 50
    assert sum(c.A_prev.shape[2] != c.A_prev.shape[3] for c in cases) >= 30
    kind = cases[0].kind
    if kind == "conv2d":
        hypers = [c.spec["hyper"] for c in cases]
        assert sum(np.ptp(c.spec["params"]["W"].shape[2:]) > 0 for c in cases) >= 10  # rectangular kernels
        assert sum("stride" in h for h in hypers) >= 20 and sum("pad" in h for h in hypers) >= 20
    if kind == "maxpool2d":
        assert {c.spec["hyper"]["ties"] for c in cases} == {"first", "all"}
        assert sum(c.ties for c in cases) >= 20


@pytest.mark.parametrize("kind", IMAGE_KINDS)
def test_layer_forward_matches_torch(send, kind):
    cases = [StepCase(seed, kind, backward=False) for seed in range(N_CASES)]
    _coverage(cases)
    _run(send, "/v1/layer/forward", cases, check_forward)


@pytest.mark.parametrize("kind", IMAGE_KINDS)
def test_layer_backward_matches_torch(send, kind):
    cases = [StepCase(seed, kind, backward=True) for seed in range(N_CASES)]
    _coverage(cases)
    assert sum(c.dZ is not None for c in cases) >= 25 and sum(c.Z is not None for c in cases) >= 15
    _run(send, "/v1/layer/backward", cases, check_backward)


@pytest.mark.parametrize("kind", IMAGE_KINDS)
def test_the_cached_Z_is_used_as_sent(send, kind):
    """Where the cached Z is not the layer of A_prev, dZ = dA * g'(Z sent) (the oracle above), which is not what
    the consistent cache gives: leaving Z out changes the answer."""
    cases = [c for c in (StepCase(seed, kind, backward=True) for seed in range(3 * N_CASES))
             if c.Z is not None and c.spec["activation"] != "linear"]
    changed = 0
    for c in cases:
        status, sent = send("/v1/layer/backward", c.body())
        assert status == 200, sent
        check_backward(c, sent)
        c.Z = None
        status, consistent = send("/v1/layer/backward", c.body())
        check_backward(c, consistent)
        changed += not np.allclose(so.as_array(sent["dZ"]), so.as_array(consistent["dZ"]))
    assert changed >= 10, f"only {changed} of {len(cases)} cases tell the cached Z from the consistent one"


# --- /v1/network/backward over a small conv net, from the learner's caches ------------------------------------

class NetCase:
    """[conv2d, a pooling, flatten, dense] with every cache drawn independently (A_prev_l of the shape layer l
    takes, Z_l or None), and dA_L given; the oracle is each layer's step from its own cache (the course's
    L_model_backward)."""

    def __init__(self, seed: int):
        from tests.oracle_images import _dense
        rng = np.random.default_rng([seed, 47])
        image_layout, layout = ("NCHW", "NHWC")[seed % 2], ("features_first", "examples_first")[(seed // 2) % 2]
        self.m = 1 if seed % 5 == 0 else int(rng.integers(2, 5))
        shape = (int(rng.integers(1, 4)), int(rng.integers(4, 9)), int(rng.integers(4, 9)))
        conv, after_conv = _conv(rng, shape, image_layout)
        pool, after_pool = _pool(rng, after_conv, str(rng.choice(["maxpool2d", "avgpool2d"])))
        flat = {"type": "flatten", "hyper": {}, "params": {}, "sent": {}, "channels_last": image_layout == "NHWC",
                "activation": "linear"}
        n = int(np.prod(after_pool))
        dense = _dense(rng, n, int(rng.integers(1, 4)), str(rng.choice(HIDDEN_ACTIVATIONS)))
        self.specs = [conv, pool, flat, dense]
        ins = [shape, after_conv, after_pool, (n,)]
        outs = [after_conv, after_pool, (n,), (dense["params"]["W"].shape[0],)]
        form = lambda s: (self.m, *s) if len(s) == 3 else (s[0], self.m)  # noqa: E731  (the oracle's form)
        self.A_prevs = [rng.normal(0, 1, form(s)) for s in ins]
        self.Zs = [rng.normal(0, 1.5, form(s)) if rng.random() < 0.6 else None for s in outs]
        self.dAL = rng.normal(0, 1, form(outs[-1]))
        self.intermediates = str(rng.choice(["per_example", "mean"]))
        self.l2 = float(rng.uniform(0, 0.5)) if rng.random() < 0.4 else 0.0
        self.case = ImageCase(seed, self.m, self.specs, self.A_prevs[0], np.zeros((1, self.m)), "mean_squared_error",
                              image_layout, layout, self.intermediates)

    def body(self) -> dict:
        w = lambda a: np.ascontiguousarray(self.case.wire(a))  # noqa: E731
        caches = [{"A_prev": w(A), **({"Z": w(Z)} if Z is not None else {})} for A, Z in zip(self.A_prevs, self.Zs)]
        out = {"layers": self.case.request()["layers"], "caches": caches, "dAL": w(self.dAL),
               "image_layout": self.case.image_layout, "layout": self.case.layout,
               "intermediates": self.intermediates}
        return {**out, "l2": self.l2} if self.l2 else out

    def expected(self) -> dict[str, np.ndarray]:
        L, out = len(self.specs), {}
        dA = self.dAL
        out[f"dA{L}"] = self.case.wire(dA)
        for l in range(L, 0, -1):
            spec = self.specs[l - 1]
            step = backward_of(spec, self.A_prevs[l - 1], dA=dA, Z=self.Zs[l - 1], intermediates=self.intermediates,
                               l2=self.l2)
            out[f"dZ{l}"], out[f"dA{l - 1}"] = self.case.wire(step["dZ"]), self.case.wire(step["dA_prev"])
            for name in spec["params"]:
                out[f"d{name}{l}"] = self.case.wire_param(spec, name, step[f"d{name}"])
            dA = step["dA_prev"]
        return out


def test_network_backward_over_a_conv_net_from_caches(send):
    failures = []
    for seed in range(40):
        c = NetCase(seed)
        status, body = send("/v1/network/backward", c.body())
        try:
            assert status == 200, body
            want = c.expected()
            assert set(body) == set(want), (sorted(body), sorted(want))
            for key, value in want.items():
                so.assert_close(body[key], value, key)
        except AssertionError as exc:
            failures.append(f"seed {seed}: {exc}")
    assert not failures, f"{len(failures)} of 40 cases failed:\n" + "\n".join(failures[:10])


# --- /v1/grade: the response fed back, and the kinds' mistakes ---------------------------------------------------

def _grade(send, task: str, body: dict, submission: dict) -> dict:
    status, out = send("/v1/grade", {**body, "task": task, "submission": submission})
    assert status == 200, out
    return out["result"]


def _full_marks(send, task: str, path: str, body: dict) -> None:
    status, response = send(path, body)
    assert status == 200, response
    result = _grade(send, task, body, response)
    assert result["status"] == "graded" and result["score"] == result["max_score"] == len(result["keys"]) > 0, result
    assert all(k["status"] == "correct" and k["diagnosis"] is None for k in result["keys"])
    status, out = send("/v1/grade", {**body, "task": task, "submissions": [response, response]})
    assert [(r["score"], r["max_score"]) for r in out["results"]] == [(result["max_score"],) * 2] * 2


@pytest.mark.parametrize("kind", IMAGE_KINDS)
@pytest.mark.parametrize("seed", range(4))  # both image layouts, both layouts
def test_the_fed_back_responses_score_full_marks(send, kind, seed):
    _full_marks(send, "layer_forward", "/v1/layer/forward", StepCase(seed, kind, backward=False).body())
    _full_marks(send, "layer_backward", "/v1/layer/backward", StepCase(seed, kind, backward=True).body())


@pytest.mark.parametrize("seed", range(4))
def test_the_fed_back_network_backward_scores_full_marks(send, seed):
    _full_marks(send, "network_backward", "/v1/network/backward", NetCase(seed).body())


def _diagnosis(result: dict, key: str) -> str | None:
    k = next(k for k in result["keys"] if k["key"] == key)
    assert k["status"] != "correct", (key, k)
    return k["diagnosis"] and k["diagnosis"]["code"]


def _conv_body(image_layout: str = "NCHW", m: int = 3, stride=1, pad=1):
    rng = np.random.default_rng(9)
    x, W, b = rng.normal(size=(m, 2, 5, 6)), rng.normal(size=(3, 2, 3, 2)), rng.normal(size=3)
    last = image_layout == "NHWC"
    wire = lambda a: np.ascontiguousarray(a.transpose(0, 2, 3, 1)) if last else a  # noqa: E731
    layer = {"type": "conv2d", "W": np.ascontiguousarray(W.transpose(2, 3, 1, 0)) if last else W, "b": b,
             "stride": stride, "pad": pad}
    return {"layer": layer, "A_prev": wire(x), "image_layout": image_layout}, x, W, b, wire


@pytest.mark.parametrize("image_layout", ["NCHW", "NHWC"])
def test_a_flipped_kernel_is_diagnosed(send, image_layout):
    """An independent student computing a true convolution (torch's conv2d of the flipped kernel)."""
    body, x, W, b, wire = _conv_body(image_layout)
    Z = torch.nn.functional.conv2d(so.tt(x), so.tt(W).flip(2, 3), so.tt(b), padding=1).numpy()
    result = _grade(send, "layer_forward", body, {"Z": wire(Z), "A": wire(Z), "cache": {}})
    assert _diagnosis(result, "Z") == _diagnosis(result, "A") == "conv_flipped_kernel"


def test_conv_gradients_of_the_last_example_only_and_without_1_over_m_are_diagnosed(send):
    body, x, W, b, wire = _conv_body("NHWC", stride=2)
    dZ = np.random.default_rng(3).normal(size=(3, 3, 3, 4))  # (m, F, Ho, Wo)
    body = {**body, "dZ": wire(dZ)}
    status, right = send("/v1/layer/backward", body)
    assert status == 200, right
    last = backward_of({"type": "conv2d", "hyper": {"stride": 2, "pad": 1}, "activation": "linear",
                        "params": {"W": W, "b": b}}, x[-1:], dZ=dZ[-1:])
    wrong = {**right, "dW": np.ascontiguousarray((last["dW"] / 3).transpose(2, 3, 1, 0)), "db": last["db"] / 3}
    result = _grade(send, "layer_backward", body, wrong)
    assert _diagnosis(result, "dW") == "conv_grads_not_summed_over_examples"
    result = _grade(send, "layer_backward", body, {**right, "dW": 3 * so.as_array(right["dW"])})
    assert _diagnosis(result, "dW") == "missing_1_over_m"


def test_max_pooling_ties_and_average_pooling_mistakes_are_diagnosed(send):
    from tests.oracle_images import maxpool_direct
    rng = np.random.default_rng(4)
    x = rng.integers(-1, 2, (2, 2, 4, 6)).astype(float)  # windows with ties
    dZ = rng.normal(size=(2, 2, 2, 3))
    body = {"layer": {"type": "maxpool2d", "size": 2, "ties": "first"}, "A_prev": x, "dZ": dZ}
    _, all_ties = maxpool_direct(x, dZ, 2, 2, "all")
    result = _grade(send, "layer_backward", body, {"dA_prev": all_ties, "dZ": dZ})
    assert _diagnosis(result, "dA_prev") == "maxpool_ties_to_all"
    dZ = np.ascontiguousarray(dZ[..., :2])  # 2 x 3 windows over 4 x 6
    body = {"layer": {"type": "avgpool2d", "size": [2, 3]}, "A_prev": x, "dZ": dZ}
    undivided = np.repeat(np.repeat(dZ, 2, axis=2), 3, axis=3)  # each window's dz copied, not divided
    result = _grade(send, "layer_backward", body, {"dA_prev": undivided, "dZ": dZ})
    assert _diagnosis(result, "dA_prev") == "avgpool_not_divided_by_window"


def test_a_network_backward_key_without_1_over_m_is_diagnosed(send):
    c = NetCase(3)
    c.intermediates = "per_example"
    body = c.body()
    status, right = send("/v1/network/backward", body)
    assert status == 200, right
    result = _grade(send, "network_backward", body, {**right, "dW1": c.m * so.as_array(right["dW1"])})
    assert _diagnosis(result, "dW1") == "missing_1_over_m"
    assert all(k["status"] == "correct" for k in result["keys"] if k["key"] != "dW1")


# --- bad input: located 422s naming the fix ----------------------------------------------------------------------

CONV = {"type": "conv2d", "W": np.ones((4, 3, 3, 2)), "b": np.zeros(4), "pad": 1}  # NCHW: 3 -> 4 channels
X = np.ones((2, 3, 5, 6))  # m = 2, 3 channels of 5 x 6; the conv's output (2, 4, 5, 7)


def _errors(send, path: str, body: dict, **settings) -> list[tuple[str, str, str]]:
    status, out = send(path, body, **settings)
    assert status == 422, out
    return [(e["location"], e["type"], e["message"]) for e in out["errors"]]


@pytest.mark.parametrize("path", ["/v1/layer/forward", "/v1/layer/backward"])
def test_an_image_kind_given_a_matrix_and_a_vector_kind_given_images(send, path):
    upstream = {"dZ": np.ones((4, 2))} if path.endswith("backward") else {}
    (where, kind, message), = _errors(send, path, {"layer": CONV, "A_prev": np.ones((3, 2)), **upstream})
    assert (where, kind) == ("A_prev", "rank_mismatch")
    assert "conv2d takes image batches" in message and "send A_prev as an image batch (m, H, W, C)" not in message
    (where, kind, message), = _errors(send, path, {"layer": {"W": np.ones((2, 90)), "b": [0.0, 0.0]}, "A_prev": X,
                                                   "image_layout": "NHWC"})
    assert (where, kind) == ("A_prev", "rank_mismatch") and "a flatten layer turns image batches" in message


def test_channels_that_do_not_match_W(send):
    (where, kind, message), = _errors(send, "/v1/layer/forward", {"layer": CONV, "A_prev": np.ones((2, 2, 5, 6))})
    assert (where, kind) == ("layer.W", "shape_mismatch")
    assert "the input has 2 channels because A_prev holds 2 channels of 5 x 6" in message


def test_images_sent_in_the_other_layout_are_told_so(send):
    body = {"layer": {"type": "spatial_batchnorm", "gamma": np.ones(3), "beta": np.zeros(3)},
            "A_prev": np.ones((2, 5, 6, 3))}  # NHWC, sent with the default NCHW
    (where, kind, message), = _errors(send, "/v1/layer/forward", body)
    assert (where, kind) == ("image_layout", "layout_mismatch") and "did you mean image_layout NHWC?" in message
    assert send("/v1/layer/forward", {**body, "image_layout": "NHWC"})[0] == 200


def test_upstream_gradients_against_the_layers_output(send):
    body = {"layer": CONV, "A_prev": X}
    (where, kind, message), = _errors(send, "/v1/layer/backward", {**body, "dZ": np.ones((2, 4, 5, 6))})
    assert (where, kind) == ("dZ", "shape_mismatch")
    assert message == "dZ is (2, 4, 5, 6) but the layer's output is (2, 4, 5, 7) (image_layout NCHW)"
    (where, kind, message), = _errors(send, "/v1/layer/backward", {**body, "dA": np.ones((2, 5, 7, 4))})
    assert (where, kind) == ("dA", "shape_mismatch") and "looks like the other image layout" in message
    assert _errors(send, "/v1/layer/backward", {**body, "dA": np.ones((2, 4, 5, 7)), "Z": np.ones((4, 70))}) == [
        ("Z", "shape_mismatch", "Z is (4, 70) but the layer's output is (2, 4, 5, 7) (image_layout NCHW)")]
    flat = {"layer": {"type": "flatten"}, "A_prev": X, "layout": "examples_first"}
    assert _errors(send, "/v1/layer/backward", {**flat, "dZ": np.ones((2, 3, 5, 6))}) == [
        ("dZ", "shape_mismatch", "dZ is (2, 3, 5, 6) but the layer's output is (2, 90) (examples_first)")]
    assert [e[:2] for e in _errors(send, "/v1/layer/backward", {**body, "dA": np.ones((2, 4, 5, 7)),
                                                                "dZ": np.ones((2, 4, 5, 7))})] == [
        ("dZ", "both_upstream_gradients")]


def test_softmax_on_an_image_output_and_groups_that_do_not_divide_the_channels(send):
    (where, kind, message), = _errors(send, "/v1/layer/forward", {"layer": {**CONV, "activation": "softmax"},
                                                                  "A_prev": X})
    assert (where, kind) == ("layer.activation", "activation_placement") and "elementwise" in message
    gn = {"type": "groupnorm", "groups": 2, "gamma": np.ones(3), "beta": np.zeros(3)}
    assert [e[:2] for e in _errors(send, "/v1/layer/forward", {"layer": gn, "A_prev": X})] == [
        ("layer.groups", "groups_mismatch")]


def test_network_caches_against_the_chain(send):
    body = NetCase(1).body()
    bad = {**body, "caches": [dict(c) for c in body["caches"]]}
    A = so.as_array(bad["caches"][1]["A_prev"])
    bad["caches"][1]["A_prev"] = np.ascontiguousarray(A[:, :, :-1] if A.shape[2] > 1 else A[:, :, :, :-1])
    errors = _errors(send, "/v1/network/backward", bad)
    assert ("caches[1].A_prev", "shape_mismatch") in [e[:2] for e in errors]
    assert any("layers[0]'s output" in e[2] for e in errors)
    bad = {**body, "caches": [{**body["caches"][0], "Z": np.ones((1, 1, 1, 1))}, *body["caches"][1:]]}
    assert [e[:2] for e in _errors(send, "/v1/network/backward", bad)] == [("caches[0].Z", "shape_mismatch")]


@pytest.mark.parametrize("settings,where", [({"max_kernel_size": 2}, "layer"), ({"max_image_size": 5}, "A_prev"),
                                            ({"max_work": 500}, "body"), ({"max_stored": 300}, "body")])
def test_limits_are_priced_before_any_work(send, settings, where, monkeypatch):
    from service.engine.kinds import conv2d

    calls = []  # the convolution must not run for a request over the limits
    monkeypatch.setattr(conv2d, "_convolve", lambda *a, **k: calls.append(1))
    body = {"layer": CONV, "A_prev": X, "dZ": np.ones((2, 4, 5, 7))}
    status, out = send("/v1/layer/backward", body, **settings)
    assert status == 422 and out["title"] == "Request over the limits", out
    assert (where, "limit_exceeded") in [(e["location"], e["type"]) for e in out["errors"]] and not calls


# --- the courses' published values, each function one request ---------------------------------------------------

def published(name: str, case: str) -> dict:
    return json.loads((DATA / name).read_text())[case]


def printed(got, want, what: str) -> None:
    """As the research notes' rule for 8-decimal printouts: |got - printed| <= 6e-9 + 1e-7 |printed|."""
    np.testing.assert_allclose(np.asarray(got, dtype=float), np.asarray(want, dtype=float), rtol=1e-7, atol=6e-9,
                               err_msg=what)


def _ok(send, path: str, body: dict) -> dict:
    status, out = send(path, body)
    assert status == 200, out
    return out


def test_cs231n_conv_forward_naive(send):
    case = published("images_cs231n.json", "conv_forward_naive")
    i = case["inputs"]
    out = _ok(send, "/v1/layer/forward", {"layer": {"type": "conv2d", "W": i["w"], "b": i["b"], "stride": i["stride"],
                                                    "pad": i["pad"]}, "A_prev": i["x"]})
    printed(out["Z"], case["expected"]["correct_out"], "correct_out")
    assert out["A"] == out["Z"] and out["cache"] == {}


def test_cs231n_max_pool_forward_naive(send):
    case = published("images_cs231n.json", "max_pool_forward_naive")
    i = case["inputs"]
    out = _ok(send, "/v1/layer/forward", {"layer": {"type": "maxpool2d", "size": [i["pool_height"], i["pool_width"]],
                                                    "stride": i["stride"]}, "A_prev": i["x"]})
    printed(out["Z"], case["expected"]["correct_out"], "correct_out")


def test_cs231n_spatial_batchnorm_forward(send):
    """The statistics before normalising are the cache's per-channel mean and var (in gamma's shape); after, Z has
    the printed per-channel standard deviations and beta as its means."""
    case = published("images_cs231n_spatial_batchnorm.json", "spatial_batchnorm_forward_train")
    x = case["inputs"]["x"]
    for gamma, beta, key in (([1.0, 1.0, 1.0], [0.0, 0.0, 0.0], "after_gamma1_beta0"),
                             ([[[[3.0]], [[4.0]], [[5.0]]]], [6.0, 7.0, 8.0], "after_gamma345_beta678")):
        out = _ok(send, "/v1/layer/forward", {"layer": {"type": "spatial_batchnorm", "gamma": gamma, "beta": beta},
                                              "A_prev": x})
        Z, cache = so.as_array(out["Z"]), out["cache"]
        assert so.as_array(cache["mean"]).shape == np.shape(gamma) and so.as_array(cache["xhat"]).shape == Z.shape
        printed(np.ravel(cache["mean"]), case["expected"]["before"]["means"], "means before")
        printed(np.sqrt(np.ravel(cache["var"])), case["expected"]["before"]["stds"], "stds before")
        printed(Z.std(axis=(0, 2, 3)), case["expected"][key]["stds"], f"{key} stds")
        np.testing.assert_allclose(Z.mean(axis=(0, 2, 3)), beta, atol=1e-12)


@pytest.mark.parametrize("version,index", [("conv_forward_2018", "Z[3,2,1]"), ("conv_forward_2019_2020", "Z[3,2,1]"),
                                           ("conv_forward_2021", "Z[0,2,1]")])
def test_deeplearning_ai_conv_forward(send, version, index):
    case = published("images_dlai_c4w1.json", version)
    i = case["inputs"]
    out = _ok(send, "/v1/layer/forward", {"layer": {"type": "conv2d", "W": i["W"], "b": i["b"], "stride": i["stride"],
                                                    "pad": i["pad"]}, "A_prev": i["A_prev"], "image_layout": "NHWC"})
    Z = so.as_array(out["Z"])
    assert list(Z.shape) == case["derived"]["Z_shape"]
    printed(Z.mean(), case["expected"]["Z_mean"], "Z_mean")
    printed(Z[tuple(int(k) for k in index[2:-1].split(","))], case["expected"][index], index)


def test_deeplearning_ai_conv_backward(send):
    """conv_backward(dZ = Z, cache): the course's dW and db are sums over the examples, which is
    ``intermediates: mean`` (dZ taken as dJ/dZ); the shapes are the course's (NHWC, W (f, f, C, F), b (1, 1, 1, F))."""
    case = published("images_dlai_c4w1.json", "conv_backward_2018_2021")
    i = case["inputs"]
    body = {"layer": {"type": "conv2d", "W": i["W"], "b": i["b"], "stride": i["stride"], "pad": i["pad"]},
            "A_prev": i["A_prev"], "image_layout": "NHWC"}
    Z = _ok(send, "/v1/layer/forward", body)["Z"]
    out = _ok(send, "/v1/layer/backward", {**body, "dZ": Z, "intermediates": "mean"})
    dA, dW, db = (so.as_array(out[k]) for k in ("dA_prev", "dW", "db"))
    assert (dA.shape, dW.shape, db.shape) == ((10, 4, 4, 3), (2, 2, 3, 8), (1, 1, 1, 8))
    printed(dA.mean(), case["expected"]["dA_mean"], "dA_mean")
    printed(dW.mean(), case["expected"]["dW_mean"], "dW_mean")
    printed(db.mean(), case["expected"]["db_mean"], "db_mean")
    per_example = _ok(send, "/v1/layer/backward", {**body, "dZ": Z})  # the service's default: (1/m) sums
    np.testing.assert_allclose(10 * so.as_array(per_example["dW"]), dW, rtol=1e-13)


@pytest.mark.parametrize("stride", [1, 2])
def test_deeplearning_ai_pool_forward(send, stride):
    case = published("images_dlai_c4w1.json", "pool_forward_2019_2021")
    want = case["expected"][f"stride{stride}_f3"]
    for kind, key in (("maxpool2d", "A_max"), ("avgpool2d", "A_average")):
        out = _ok(send, "/v1/layer/forward", {"layer": {"type": kind, "size": 3, "stride": stride},
                                              "A_prev": case["inputs"]["A_prev"], "image_layout": "NHWC"})
        printed(out["A"], want[key], f"{kind} stride {stride}")


@pytest.mark.parametrize("kind,mode", [("maxpool2d", "max"), ("avgpool2d", "average")])
def test_deeplearning_ai_pool_backward(send, kind, mode):
    """pool_backward(dA, cache, mode): dA is the pooling's output gradient (no activation: dZ = dA); max pooling
    with the course's mask x == max (ties ``all``)."""
    case = published("images_dlai_c4w1.json", "pool_backward_2017_2021")
    layer = {"type": kind, "size": 2, "stride": 1, **({"ties": "all"} if kind == "maxpool2d" else {})}
    out = _ok(send, "/v1/layer/backward", {"layer": layer, "A_prev": case["inputs"]["A_prev"],
                                           "dA": case["inputs"]["dA"], "image_layout": "NHWC"})
    dA_prev = so.as_array(out["dA_prev"])
    assert list(dA_prev.shape) == case["expected"]["dA_prev_shape"]
    printed(so.as_array(out["dZ"]).mean(), case["expected"]["mean_of_dA"], "mean of dA")
    printed(dA_prev[1, 1], case["expected"][mode]["dA_prev[1,1]"], f"{mode} dA_prev[1,1]")

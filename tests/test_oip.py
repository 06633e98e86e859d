"""The Open Inference Protocol v2 routes in process: the mapping (every response equal to /v1/gradients' bit for
bit, binary and JSON tensors), outputs and their binary_data, the strict decoder (each error class with its status
and message, never a 500), limits from the header before any tensor is read, NaN and infinities, errors in the
protocol's body, keys and metrics, the metadata."""

from __future__ import annotations

import base64
import gzip
import json
from pathlib import Path

import numpy as np
import orjson
import pytest

from service import create_app, engine
from service.engine import KINDS
from service.wire import oip
from tests.golden import load
from tests.oip_wire import HEADER, decode, encode, same_bits, split, v1_outputs

ROOT = Path(__file__).resolve().parents[1]
INFER = "/v2/models/gradients/infer"
EXAMPLES = sorted((ROOT / "service" / "examples").glob("*.json")) + sorted(
    (ROOT / "service" / "examples" / "images").glob("*.json"))


@pytest.fixture(scope="module")
def oclient():
    return create_app({"api_keys": []}).test_client()


def infer(client, data: bytes, headers: dict | None = None, path: str = INFER):
    r = client.post(path, data=data, headers=headers or {})
    if r.status_code != 200:
        assert r.mimetype == "application/json", r.data[:300]
        assert set(r.json) == {"error"}, r.json
        return r.status_code, r.json["error"], r
    return 200, decode(r.data, r.headers), r


def v1(client, body: dict) -> dict:
    r = client.post("/v1/gradients", data=orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY),
                    content_type="application/json")
    assert r.status_code == 200, r.data[:500]
    return r.json


def _dense(rng, n_out, n_in, activation, **extra):
    return {"W": rng.standard_normal((n_out, n_in)) * 0.7, "b": rng.standard_normal((n_out, 1)) * 0.1,
            "activation": activation, **extra}


def networks() -> dict[str, dict]:
    """Bodies covering every option the mapping carries: each layer kind, its hyperparameters and running
    statistics, both layouts, both weight layouts, dropout (with a layer without a mask), L2, both conventions,
    caches, class-index labels, leaky ReLU's slope."""
    rng = np.random.default_rng(11)
    m = 6
    nets = {p.stem: json.loads(p.read_text()) for p in EXAMPLES}
    nets["batchnorm_train_indices"] = {
        "layers": [_dense(rng, 5, 3, "relu"),
                   {"type": "batchnorm", "gamma": rng.random(5) + 0.5, "beta": rng.standard_normal(5),
                    "running_mean": rng.standard_normal(5), "running_var": rng.random(5) + 0.5, "momentum": 0.8,
                    "activation": "tanh"},
                   _dense(rng, 3, 5, "softmax")],
        "X": rng.standard_normal((3, m)), "Y": [0, 2, 1, 1, 0, 2], "cost": "categorical_cross_entropy",
        "include_caches": True}
    nets["batchnorm_test_examples_first"] = {
        "layers": [{"W": rng.standard_normal((3, 4)), "b": np.zeros(4), "activation": "leaky_relu",
                    "negative_slope": 0.2},
                   {"type": "batchnorm", "gamma": rng.random((4, 1)) + 0.5, "beta": rng.standard_normal((4, 1)),
                    "running_mean": rng.standard_normal((4, 1)), "running_var": rng.random((4, 1)) + 0.5,
                    "mode": "test", "eps": 1e-3},
                   {"W": rng.standard_normal((4, 1)), "b": [0.0], "activation": "sigmoid"}],
        "X": rng.standard_normal((m, 3)), "Y": (rng.random((m, 1)) > 0.5).astype(float), "cost": "binary_cross_entropy",
        "layout": "examples_first", "weight_layout": "in_out", "l2": 0.3, "intermediates": "mean"}
    nets["layernorm_dropout"] = {
        "layers": [_dense(rng, 4, 3, "relu"), {"type": "layernorm", "gamma": rng.random(4) + 0.5,
                                              "beta": rng.standard_normal(4), "activation": "relu"},
                   _dense(rng, 2, 4, "linear")],
        "X": rng.standard_normal((3, m)), "Y": rng.standard_normal((2, m)), "cost": "mean_squared_error",
        "dropout": {"keep_prob": 0.75, "masks": [(rng.random((4, m)) > 0.3).astype(float), None]}}
    nets["image_norms_avgpool"] = {  # NCHW images (m, C, H, W): conv, both image norms, average pooling
        "layers": [{"type": "conv2d", "W": rng.standard_normal((3, 2, 3, 3)) / 4, "b": rng.standard_normal(3),
                    "stride": 1, "pad": 1, "activation": "relu"},
                   {"type": "groupnorm", "groups": 3, "gamma": rng.random(3) + 0.5, "beta": rng.standard_normal(3)},
                   {"type": "spatial_batchnorm", "gamma": rng.random(3) + 0.5, "beta": rng.standard_normal(3),
                    "activation": "tanh"},
                   {"type": "avgpool2d", "size": 2},
                   {"type": "flatten"},
                   _dense(rng, 3, 12, "softmax")],
        "X": rng.standard_normal((m, 2, 4, 4)), "Y": [0, 2, 1, 1, 0, 2], "cost": "categorical_cross_entropy",
        "image_layout": "NCHW"}
    return nets


NETWORKS = networks()


def assert_equal_to_v1(client, body: dict, **options) -> dict:
    """The OIP response to ``body`` (all outputs) equals /v1/gradients' bit for bit; returns its header."""
    want = v1_outputs(v1(client, body))
    tensors, parameters = split(body)
    status, got, r = infer(client, *encode(tensors, parameters, **options))
    assert status == 200, got
    header, arrays = got
    assert list(arrays) == list(want), (list(arrays), list(want))
    for name in want:
        assert same_bits(arrays[name], want[name]), name
    return header


# --- the mapping: equal to /v1/gradients -----------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(NETWORKS))
@pytest.mark.parametrize("mode", ["binary", "json", "binary_aligned", "mixed"])
def test_every_output_equals_v1_bit_for_bit(oclient, name, mode):
    options = {"binary": {"binary": True, "binary_output": True}, "json": {"binary": False},
               "binary_aligned": {"binary": True, "pad_to": 8, "binary_output": True},
               "mixed": {"binary": {"X", "W1"}, "binary_output": False}}[mode]
    header = assert_equal_to_v1(oclient, NETWORKS[name], **options)
    assert header["model_name"] == "gradients"
    for out in header["outputs"]:
        assert out["datatype"] == "FP64"
        assert ("data" in out) != options.get("binary_output", False)


def test_the_kinds_of_the_registry_are_all_exercised():
    used = {layer.get("type", "dense") for body in NETWORKS.values() for layer in body["layers"]}
    assert used == set(KINDS), f"add a network with a layer of each new kind to networks(): {set(KINDS) - used}"


def _golden_bodies():
    out = []
    for e in load():
        if e["path"] == "/v1/gradients" and e["status"] == 200 and not e["settings"]["api_keys"] \
                and "Content-Encoding" not in e["headers"]:
            out.append(orjson.loads(base64.b64decode(e["body"])))
    return out


def test_recorded_gradient_bodies_give_the_same_numbers_through_oip(oclient):
    """Every recorded 200 body of /v1/gradients (the golden set), binary and JSON alternately."""
    bodies = _golden_bodies()
    assert len(bodies) > 400
    for i, body in enumerate(bodies):
        assert_equal_to_v1(oclient, body, binary=bool(i % 2), binary_output=bool(i % 3 == 0))


def test_warnings_are_the_response_parameter_and_null_entries_are_nan(oclient):
    # z = 1000 with y = 0: dA = 1 + e^1000 is not representable (null in /v1, NaN here), dZ = a - y is exact.
    body = {"layers": [{"W": [[1000.0]], "b": [[0.0]], "activation": "sigmoid"}], "X": [[1.0, -1.0, 0.5]],
            "Y": [[0, 0, 1]], "cost": "binary_cross_entropy"}
    want = v1(oclient, body)
    assert want["warnings"] and want["gradients"]["dA1"][0][0] is None
    for binary in (True, False):
        header = assert_equal_to_v1(oclient, body, binary=binary, binary_output=binary)
        assert json.loads(header["parameters"]["warnings"]) == want["warnings"]


def test_fp32_is_widened_and_its_json_form_rounds_as_its_binary_form(oclient):
    body = NETWORKS["two_layer_sigmoid_bce"]
    rounded = {k: v for k, v in body.items()}
    rounded["X"] = np.asarray(body["X"], dtype=np.float32).astype(np.float64)
    want = v1_outputs(v1(oclient, rounded))
    tensors, parameters = split(body)
    for binary in (True, False):
        status, (header, arrays), _ = infer(oclient, *encode(tensors, parameters, binary=binary,
                                                             datatypes={"X": "FP32"}))
        assert status == 200
        assert all(same_bits(arrays[k], want[k]) for k in want)


@pytest.mark.parametrize("datatype", ["INT32", "INT64"])
def test_integer_labels_are_class_indices(oclient, datatype):
    body = NETWORKS["batchnorm_train_indices"]
    want = v1_outputs(v1(oclient, body))
    tensors, parameters = split(body)
    for binary in (True, False):
        status, (header, arrays), _ = infer(oclient, *encode(tensors, parameters, binary=binary,
                                                             datatypes={"Y": datatype}))
        assert status == 200
        assert all(same_bits(arrays[k], want[k]) for k in want)


def test_aligned_fp64_tensors_are_used_in_place_and_misaligned_ones_copied(oclient, monkeypatch):
    """Little-endian FP64 at an 8-byte offset is a view of the body (no copy); elsewhere it is copied once, so
    that numpy's matrix products take their fast, aligned path."""
    seen = []
    original = engine.compute

    def spy(X, *args, **kwargs):
        seen.append(X)
        return original(X, *args, **kwargs)

    monkeypatch.setattr(engine, "compute", spy)
    tensors, parameters = split(NETWORKS["two_layer_sigmoid_bce"])
    for pad, in_place in ((8, True), (None, False)):
        data, headers = encode(tensors, parameters, pad_to=pad)
        if pad is None and int(headers[HEADER]) % 8 == 0:
            data, headers = encode(tensors, {**parameters, "l2": 0.0})  # make the header's length odd
        assert infer(oclient, data, headers)[0] == 200
        X = seen[-1]
        base = X
        while isinstance(base, np.ndarray) and base.base is not None:
            base = base.base
        assert isinstance(base, bytes) == in_place, (pad, type(base))
        assert X.flags.aligned


# --- outputs ----------------------------------------------------------------------------------------------------------

def test_outputs_subset_in_the_requested_order_each_binary_or_json(oclient):
    body = NETWORKS["two_layer_sigmoid_bce"]
    want = v1_outputs(v1(oclient, body))
    tensors, parameters = split(body)
    outputs = [("dW1", True), "cost", ("dA0", False), ("db2", True)]
    status, (header, arrays), r = infer(oclient, *encode(tensors, parameters, outputs=outputs, binary_output=False))
    assert status == 200
    assert [o["name"] for o in header["outputs"]] == ["dW1", "cost", "dA0", "db2"]
    assert ["data" in o for o in header["outputs"]] == [False, True, True, False]
    assert all(same_bits(arrays[k], want[k]) for k in arrays)
    assert int(r.headers[HEADER]) + 8 * (want["dW1"].size + want["db2"].size) == len(r.data)


def test_binary_data_output_sets_the_default_and_each_output_overrides_it(oclient):
    tensors, parameters = split(NETWORKS["two_layer_sigmoid_bce"])
    _, (header, _), r = infer(oclient, *encode(tensors, parameters, outputs=["dW1", ("cost", False)],
                                               binary_output=True))
    assert ["data" in o for o in header["outputs"]] == [False, True]
    assert r.mimetype == "application/octet-stream"
    _, (header, _), r = infer(oclient, *encode(tensors, parameters, outputs=["dW1"], binary=False))
    assert "data" in header["outputs"][0] and r.mimetype == "application/json" and HEADER not in r.headers


def test_requesting_a_cache_returns_it_and_the_request_id_is_echoed(oclient):
    body = NETWORKS["two_layer_sigmoid_bce"]
    want = v1_outputs(v1(oclient, {**body, "include_caches": True}))
    tensors, parameters = split(body)
    status, (header, arrays), _ = infer(oclient, *encode(tensors, parameters, outputs=["Z1", "A2"],
                                                         extra={"id": "request-7"}))
    assert status == 200 and header["id"] == "request-7"
    assert same_bits(arrays["Z1"], want["Z1"]) and same_bits(arrays["A2"], want["A2"])


@pytest.mark.parametrize("outputs,expected", [
    (["dw1"], "unknown output 'dw1'"),
    (["dW9"], "dW9 is not an output of this request"),
    (["dgamma1"], "dgamma1 is not an output of this request"),
])
def test_outputs_the_network_does_not_have_are_422(oclient, outputs, expected):
    tensors, parameters = split(NETWORKS["two_layer_sigmoid_bce"])
    status, text, _ = infer(oclient, *encode(tensors, parameters, outputs=outputs))
    assert status == 422 and expected in text


def test_caches_refused_explicitly_are_not_returned(oclient):
    tensors, parameters = split(NETWORKS["two_layer_sigmoid_bce"])
    status, text, _ = infer(oclient, *encode(tensors, {**parameters, "include_caches": False}, outputs=["Z1"]))
    assert status == 422 and "Z1 is not an output of this request (Z<l> and A<l> need include_caches)" in text


# --- the strict decoder --------------------------------------------------------------------------------------------

def _valid():
    return split(NETWORKS["two_layer_sigmoid_bce"])


def _with_header(header: dict, raw: bytes = b"", length: int | None = None) -> tuple[bytes, dict]:
    head = orjson.dumps(header)
    return head + raw, {HEADER: str(len(head) if length is None else length)}


def _binary_x(**changes) -> dict:
    x = {"name": "X", "shape": [2, 4], "datatype": "FP64", "parameters": {"binary_data_size": 64}}
    x.update(changes)
    return x


BAD_BODIES = {
    # framing: 400
    "header length not a number": (lambda: _with_header({"inputs": []}, length=None) and
                                   (b"{}", {HEADER: "12abc"}), 400, "must be the JSON header's length in bytes"),
    "header length negative": (lambda: (b"{}", {HEADER: "-2"}), 400, "must be the JSON header's length in bytes"),
    "header length past the body": (lambda: (b'{"inputs": []}', {HEADER: "400"}), 400,
                                    "is 400 but the body has only 14 bytes"),
    "truncated binary": (lambda: _with_header({"inputs": [_binary_x()]}, b"\0" * 40), 400,
                         "input X's 64 bytes run past the end of the body: 40 bytes are left"),
    "sizes do not add up": (lambda: _with_header({"inputs": [_binary_x()]}, b"\0" * 72), 400,
                            "the body has 8 bytes more than the JSON header"),
    "byte count not shape times size": (lambda: _with_header(
        {"inputs": [_binary_x(parameters={"binary_data_size": 56})]}, b"\0" * 56), 400,
        "binary_data_size is 56 bytes but shape [2, 4] of FP64 takes 8 x 8 = 64"),
    "binary without the header": (lambda: (orjson.dumps({"inputs": [_binary_x()]}), {}), 400,
                                  "the request has no Inference-Header-Content-Length header"),
    "bytes after a header-less body": (lambda: (orjson.dumps({"inputs": [_binary_x()]}) + b"\0" * 64, {}), 400,
                                       "invalid JSON: unexpected content after document"),
    "header that is not JSON": (lambda: (b"{inputs: []}" + b"\0" * 8, {HEADER: "12"}), 400, "invalid JSON"),
    "header that is not an object": (lambda: (b"[1, 2]", {}), 400, "the JSON header must be an object"),
    "inputs not a list": (lambda: (orjson.dumps({"inputs": {"X": 1}}), {}), 400, "inputs must be a list"),
    "unknown request field": (lambda: (orjson.dumps({"inputs": [], "input": []}), {}), 400,
                              "unknown field 'input' in request"),
    "input without a name": (lambda: (orjson.dumps({"inputs": [{"shape": [1], "datatype": "FP64", "data": [1]}]}),
                                      {}), 400, "each input needs a name"),
    "negative dimension": (lambda: _with_header({"inputs": [_binary_x(shape=[-2, 4])]}, b"\0" * 64), 400,
                           "inputs[0].shape[0] must be a non-negative integer; got -2"),
    "boolean dimension": (lambda: _with_header({"inputs": [_binary_x(shape=[True, 4])]}, b"\0" * 32), 400,
                          "must be a non-negative integer; got True"),
    "too many dimensions": (lambda: _with_header({"inputs": [_binary_x(shape=[1] * 9)]}, b"\0" * 8), 400,
                            "shape must be a list of at most 8 dimensions"),
    "unknown datatype": (lambda: _with_header({"inputs": [_binary_x(datatype="FP128")]}, b"\0" * 64), 400,
                         "'FP128' is not a datatype of the protocol"),
    "both data and binary": (lambda: _with_header({"inputs": [_binary_x(data=[0] * 8)]}, b"\0" * 64), 400,
                             "needs exactly one of data (JSON) and parameters.binary_data_size"),
    "neither data nor binary": (lambda: (orjson.dumps({"inputs": [{"name": "X", "shape": [1], "datatype": "FP64"}]}),
                                         {}), 400, "needs exactly one of data"),
    "json data of the wrong count": (lambda: (orjson.dumps({"inputs": [
        {"name": "X", "shape": [2, 4], "datatype": "FP64", "data": [1.0] * 7}]}), {}), 400,
        "input X holds 7 entries but its shape [2, 4] takes 8"),
    "json data nested otherwise": (lambda: (orjson.dumps({"inputs": [
        {"name": "X", "shape": [2, 4], "datatype": "FP64", "data": [[1.0] * 2] * 4}]}), {}), 400,
        "data is nested as [4, 2] but the shape is [2, 4]"),
    "json data ragged": (lambda: (orjson.dumps({"inputs": [
        {"name": "X", "shape": [2, 4], "datatype": "FP64", "data": [[1.0] * 4, [1.0] * 3]}]}), {}), 400,
        "nested data must be rectangular: ragged matrix: row 1 has 3 entries but row 0 has 4"),
    "shared memory": (lambda: (orjson.dumps({"inputs": [{"name": "X", "shape": [1], "datatype": "FP64", "parameters": {
        "shared_memory_region": "r", "shared_memory_byte_size": 8}}]}), {}), 400,
        "the parameter 'shared_memory_region' is not supported"),
    "classification output": (lambda: (orjson.dumps({"inputs": [], "outputs": [
        {"name": "AL", "parameters": {"classification": 2}}]}), {}), 400,
        "the parameter 'classification' is not supported"),
    "another model in the body": (lambda: (orjson.dumps({"model_name": "resnet", "inputs": []}), {}), 400,
                                  "the body names the model 'resnet'"),
    "another version in the body": (lambda: (orjson.dumps({"model_version": "3", "inputs": []}), {}), 400,
                                    "the body names the version '3'; the model's is '1'"),
    "binary_data_output not a boolean": (lambda: (orjson.dumps({"inputs": [], "parameters": {
        "binary_data_output": "yes"}}), {}), 400, "binary_data_output must be true or false"),
    # the model's names and datatypes: 422
    "datatype not allowed": (lambda: _with_header({"inputs": [_binary_x(datatype="INT8",
                                                                        parameters={"binary_data_size": 8})]},
                                                  b"\0" * 8), 422,
                             "inputs[0].datatype: input X is INT8; it takes FP64 or FP32"),
    "bytes tensor": (lambda: _with_header({"inputs": [_binary_x(datatype="BYTES", parameters={"binary_data_size": 5})]},
                                          b"\0\0\0\1a"), 422, "input X is BYTES; it takes FP64 or FP32"),
    "integer weights": (lambda: (orjson.dumps({"inputs": [{"name": "W1", "shape": [1, 1], "datatype": "INT64",
                                                           "data": [1]}]}), {}), 422,
                        "input W1 is INT64; it takes FP64 or FP32 (FP32 is widened to FP64)"),
    "unknown input": (lambda: (orjson.dumps({"inputs": [{"name": "W0", "shape": [1], "datatype": "FP64",
                                                         "data": [1]}]}), {}), 422, "unknown input 'W0'"),
    "duplicate input": (lambda: (orjson.dumps({"inputs": [{"name": "X", "shape": [1, 1], "datatype": "FP64",
                                                           "data": [1]}] * 2}), {}), 422, "input X is sent twice"),
    "unknown parameter": (lambda: (orjson.dumps({"inputs": [], "parameters": {"lambda": 0.1}}), {}), 422,
                          "parameters.lambda: unknown parameter 'lambda'"),
    "empty tensor": (lambda: _with_header({"inputs": [_binary_x(shape=[0, 4], parameters={"binary_data_size": 0})]}),
                     422, "input X is empty (shape [0, 4])"),
}


@pytest.mark.parametrize("case", sorted(BAD_BODIES))
def test_bad_bodies_get_their_status_and_message(oclient, case):
    build, status, message = BAD_BODIES[case]
    got, text, r = infer(oclient, *build())
    assert (got, message in text) == (status, True), (got, text)


def test_nan_and_infinity_are_refused_in_binary_and_json_tensors(oclient):
    tensors, parameters = _valid()
    X = np.array(tensors["X"], dtype=np.float64)
    for bad, datatype in ((np.nan, "FP64"), (np.inf, "FP32"), (-np.inf, "FP64")):
        Xb = X.copy()
        Xb[1, 2] = bad
        status, text, _ = infer(oclient, *encode({**tensors, "X": Xb}, parameters, datatypes={"X": datatype}))
        assert status == 422 and "X[1][2]: expected a finite number" in text, text
    # JSON's own non-finite tokens and numbers past float64, and entries that are not numbers, at their place.
    head = orjson.loads(encode({"X": X}, binary=False)[0])
    for token, message in ((b"NaN", "expected a finite number"), (b"1e400", "expected a finite number"),
                           (b'"0.5"', "expected a number, got the string '0.5'"),
                           (b"true", "expected a number, got true"),
                           (b"null", "expected a number, got null")):
        data = head["inputs"][0]["data"]
        text_body = orjson.dumps(head).replace(orjson.dumps(data), b"[" + b",".join(
            [orjson.dumps(v) for v in data[:5]] + [token] + [orjson.dumps(v) for v in data[6:]]) + b"]")
        status, text, _ = infer(oclient, text_body)
        assert status == 422 and f"X[1][1]: {message}" in text, (token, text)


def test_json_integer_tensors_hold_integers(oclient):
    tensors, parameters = split(NETWORKS["batchnorm_train_indices"])
    head = orjson.loads(encode(tensors, parameters, binary=False, datatypes={"Y": "INT64"})[0])
    y = next(t for t in head["inputs"] if t["name"] == "Y")
    y["data"][3] = 1.5
    status, text, _ = infer(oclient, orjson.dumps(head))
    assert status == 422 and "Y[3]: Y is INT64: its entries are integers; got 1.5" in text


def test_random_damage_to_a_binary_body_is_never_a_500(oclient):
    """Cuts, extensions, wrong header lengths and flipped header bytes: always 400 or 422 (or a 200 when the
    damage left a valid request), never a 500."""
    data, headers = encode(*_valid())
    n = int(headers[HEADER])
    rng = np.random.default_rng(5)
    seen = set()
    for i in range(300):
        body, length = bytearray(data), n
        kind = i % 4
        if kind == 0:
            body = body[:rng.integers(0, len(body))]
        elif kind == 1:
            body += bytes(rng.integers(0, 256, rng.integers(1, 20), dtype=np.uint8))
        elif kind == 2:
            length = int(rng.integers(0, len(body) + 10))
        else:
            for _ in range(int(rng.integers(1, 4))):
                body[int(rng.integers(0, n))] = int(rng.integers(32, 127))
        status = oclient.post(INFER, data=bytes(body), headers={HEADER: str(length)}).status_code
        assert status in (200, 400, 422), (i, status)
        seen.add(status)
    assert {400, 422} <= seen


def test_gzip_bodies_are_decoded_before_framing(oclient):
    data, headers = encode(*_valid())
    r = oclient.post(INFER, data=gzip.compress(data), headers={**headers, "Content-Encoding": "gzip"})
    assert r.status_code == 200, r.data[:300]


# --- limits before any tensor is read --------------------------------------------------------------------------------

def test_every_limit_is_checked_from_the_header_before_any_tensor_is_read(monkeypatch):
    """Over a limit, the answer is the limit's 422 although every tensor is garbage, and no tensor was built."""
    client = create_app({"api_keys": [], "max_examples": 3, "max_elements": 10_000}).test_client()
    monkeypatch.setattr(oip.InferRequest, "_array", lambda self, t: pytest.fail(f"tensor {t.name} was read"))
    tensors, parameters = _valid()
    X = np.full((2, 4), np.nan)  # m = 4 > 3, and NaN entries that would be a 422 of their own
    for binary in (True, False):
        status, text, _ = infer(client, *encode({**tensors, "X": X, "Y": [[1, 0, 1, 0]]}, parameters, binary=binary))
        assert status == 422 and "X: the number of examples m is 4, over this service's limit of 3" in text, text
    # 3 x 5000 + ... elements, priced from the shapes alone.
    over = {**tensors, "X": np.zeros((2, 3)), "Y": [[1, 0, 1]], "W1": np.zeros((5000, 2)), "b1": np.zeros((5000, 1)),
            "W2": np.zeros((1, 5000))}
    status, text, _ = infer(client, *encode(over, parameters))
    assert status == 422 and "request: the total number of array elements is" in text, text
    assert "over this service's limit of 10000" in text


def test_a_request_within_the_limits_reads_its_tensors(monkeypatch):
    client = create_app({"api_keys": [], "max_examples": 4}).test_client()
    read = []
    original = oip.InferRequest._array
    monkeypatch.setattr(oip.InferRequest, "_array", lambda self, t: read.append(t.name) or original(self, t))
    assert infer(client, *encode(*_valid()))[0] == 200
    assert sorted(read) == ["W1", "W2", "X", "Y", "b1", "b2"]


# --- errors in the protocol's body -----------------------------------------------------------------------------------

def test_validation_errors_are_v1s_in_the_protocols_names(oclient):
    body = json.loads(json.dumps(NETWORKS["two_layer_sigmoid_bce"]))
    body["layers"][1]["W"] = [[0.1, 0.2]]
    body["layers"][0]["activation"] = "softmax"
    r1 = oclient.post("/v1/gradients", json=body)
    tensors, parameters = split(body)
    status, text, r = infer(oclient, *encode(tensors, {**parameters, "l2": "much"}))
    assert r1.status_code == status == 422
    assert "parameters.l2: expected a number, got the string 'much'" in text
    status, text, r = infer(oclient, *encode(tensors, parameters))
    assert "W2: W is (1, 2): it needs 3 columns because W1 has 3 rows" in text, text
    assert "parameters.activation1: softmax is allowed on the output layer only" in text, text
    assert r.headers["X-Request-ID"]


def test_arrays_of_another_kind_and_unknown_kinds_are_named(oclient):
    tensors, parameters = _valid()
    status, text, _ = infer(oclient, *encode({**tensors, "gamma1": np.ones(3)}, {**parameters, "type2": "conv9"}))
    assert status == 422
    assert "gamma1: unknown field 'gamma' for a dense layer" in text, text
    assert "parameters.type2: unknown layer type 'conv9'" in text, text


def test_unknown_routes_models_and_versions_answer_in_the_protocols_body(oclient):
    for method, path, status in (("get", "/v2/models/resnet", 404), ("post", "/v2/models/resnet/infer", 404),
                                 ("get", "/v2/models/gradients/versions/2", 404), ("get", "/v2/nope", 404),
                                 ("get", INFER, 405), ("post", "/v2/models/gradients/versions/1/ready", 405)):
        r = getattr(oclient, method)(path)
        assert r.status_code == status and r.mimetype == "application/json" and set(r.json) == {"error"}, path
    assert "unknown model 'resnet'" in oclient.get("/v2/models/resnet").json["error"]
    data, headers = encode(*_valid())
    assert oclient.post("/v2/models/gradients/versions/1/infer", data=data, headers=headers).status_code == 200


def test_a_body_over_the_size_limit_is_413_in_the_protocols_body():
    client = create_app({"api_keys": [], "max_body_bytes": 1000}).test_client()
    r = client.post(INFER, data=b"{" + b" " * 2000 + b"}")
    assert r.status_code == 413 and "larger than this service's limit of 1000 bytes" in r.json["error"]


# --- keys, policies, rate limits, metrics ----------------------------------------------------------------------------

KEY = "k" * 20


def test_v2_needs_a_key_like_v1_but_its_health_probes_stay_open():
    client = create_app({"api_keys": [KEY]}).test_client()
    data, headers = encode(*_valid())
    r = client.post(INFER, data=data, headers=headers)
    assert r.status_code == 401 and "needs an API key" in r.json["error"]
    assert r.headers["WWW-Authenticate"].startswith("Bearer")
    for path in ("/v2", "/v2/models/gradients"):
        assert client.get(path).status_code == 401
    for path in ("/v2/health/live", "/v2/health/ready", "/v2/models/gradients/ready",
                 "/v2/models/gradients/versions/1/ready"):
        assert client.get(path).status_code == 200, path
    r = client.post(INFER, data=data, headers={**headers, "Authorization": f"Bearer {KEY}"})
    assert r.status_code == 200


def test_a_policys_routes_and_rate_limit_cover_v2():
    policies = {"grader": {"keys": [KEY], "routes": ["/v1/grade"], "rate_limit": "2/minute"},
                "oip": {"keys": ["o" * 20], "routes": [INFER], "rate_limit": "2/minute"}}
    client = create_app({"api_keys": [], "policies": policies}).test_client()
    data, headers = encode(*_valid())
    r = client.post(INFER, data=data, headers={**headers, "Authorization": f"Bearer {KEY}"})
    assert r.status_code == 403 and "allows only /v1/grade" in r.json["error"]
    auth = {**headers, "Authorization": "Bearer " + "o" * 20}
    assert [client.post(INFER, data=data, headers=auth).status_code for _ in range(3)] == [200, 200, 429]


def test_metrics_count_v2_requests_by_route_and_time_the_engine(oclient):
    data, headers = encode(*_valid())
    oclient.post(INFER, data=data, headers=headers)
    oclient.post(INFER, data=b"{", headers={})
    text = oclient.get("/metrics").get_data(as_text=True)
    assert 'gradient_http_requests_total{method="POST",route="/v2/models/<model>/infer",status="200"}' in text
    assert 'gradient_http_requests_total{method="POST",route="/v2/models/<model>/infer",status="400"}' in text
    assert "gradient_engine_compute_seconds_count" in text


# --- metadata and health ------------------------------------------------------------------------------------------

def test_server_metadata_and_health(oclient, monkeypatch):
    meta = oclient.get("/v2").json
    assert meta["name"] == "gradient-service" and "binary_tensor_data" in meta["extensions"]
    assert oclient.get("/v2/health/live").json == {"live": True}
    assert oclient.get("/v2/health/ready").json == {"ready": True}
    assert oclient.get("/v2/models/gradients/ready").json == {"name": "gradients", "ready": True}
    from service import lifecycle
    monkeypatch.setattr(lifecycle, "draining", lambda: True)
    r = oclient.get("/v2/health/ready")
    assert r.status_code == 503 and r.json == {"ready": False}


def test_model_metadata_lists_the_registries(oclient):
    meta = oclient.get("/v2/models/gradients").json
    assert meta["name"] == "gradients" and meta["versions"] == ["1"]
    inputs = {t["name"]: t for t in meta["inputs"]}
    outputs = {t["name"]: t for t in meta["outputs"]}
    for kind in KINDS.values():
        for p in kind.params:
            assert kind.name in inputs[f"{p.name}<l>"]["parameters"]["kinds"]
            assert f"d{p.name}<l>" in outputs
        for s in kind.states:
            assert inputs[f"{s.name}<l>"]["parameters"]["required"] is False
            assert f"{s.name}<l>" in outputs
        for h in kind.hypers:
            assert kind.name in meta["parameters"][f"{h.name}<l>"]["kinds"]
    assert {"X", "Y", "D<l>"} <= set(inputs) and all(-1 in t["shape"] for t in inputs.values())
    assert inputs["Y"]["parameters"]["datatypes"] == ["FP64", "FP32", "INT32", "INT64"]
    assert outputs["cost"]["shape"] == [1]
    assert {"cost", "AL", "dZ<l>", "dA<l>", "Z<l>", "A<l>"} <= set(outputs)
    params = meta["parameters"]
    assert params["cost"]["required"] is True and "categorical_cross_entropy" in params["cost"]["enum"]
    assert params["type<l>"]["enum"] == list(KINDS) and params["type<l>"]["default"] == "dense"
    assert {"layout", "weight_layout", "l2", "intermediates", "include_caches", "keep_prob", "activation<l>",
            "negative_slope<l>", "binary_data_output"} <= set(params)


def test_a_large_json_request_takes_the_dense_decoder_and_gives_the_same_numbers(oclient):
    """Over 4 MiB of short numbers, the JSON header's tensors are parsed by json_dense straight into arrays (no
    Python float per number): the same numbers, and a NaN token there still located."""
    from service.wire import json_body

    rng = np.random.default_rng(2)
    m = 100_000
    body = {"layers": [{"W": [[0.5, -0.5] * 6], "b": [[0.1]], "activation": "sigmoid"}],
            "X": np.round(rng.standard_normal((12, m)), 1), "Y": (rng.random((1, m)) > 0.5).astype(float),
            "cost": "binary_cross_entropy"}
    tensors, parameters = split(body)
    data, headers = encode(tensors, parameters, binary=False, outputs=["cost", "dW1", "db1"])
    assert json_body.is_dense(data)
    want = v1_outputs(v1(oclient, body))
    status, (header, arrays), _ = infer(oclient, data, headers)
    assert status == 200 and all(same_bits(arrays[k], want[k]) for k in arrays)
    x_data = data.index(b'"name":"X"')
    bad = data[:x_data] + data[x_data:].replace(b",0.1,", b",NaN,", 1)
    status, text, _ = infer(oclient, bad)
    assert status == 422 and "X[" in text and "expected a finite number" in text, text


def test_an_unexpected_failure_is_a_500_in_the_protocols_body_without_a_traceback(oclient, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("secret internals")

    monkeypatch.setattr(engine, "compute", boom)
    status, text, r = infer(oclient, *encode(*_valid()))
    assert status == 500 and text == "the service failed to handle this request; it has been logged"
    assert "secret" not in r.get_data(as_text=True)


def test_overflow_names_the_layer_in_the_protocols_names(oclient):
    tensors, parameters = _valid()
    status, text, _ = infer(oclient, *encode({**tensors, "W1": np.full((3, 2), 1e308), "X": np.full((2, 4), 1e308)},
                                             {**parameters, "activation1": "linear"}))
    assert status == 422 and text.startswith("layer 1: the forward pass overflows float64 at Z1"), text

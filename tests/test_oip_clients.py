"""The Open Inference Protocol routes spoken to by the real clients, against a live gunicorn on 127.0.0.1 (started
by the fixture, stopped by its PID): NVIDIA's tritonclient (HTTP) and the KServe Python SDK's REST client, each
with binary and JSON tensors, every result equal to /v1/gradients' bit for bit; and bad binary bodies over the
wire (status and message)."""

from __future__ import annotations

import asyncio
import http.client
import urllib.parse

import numpy as np
import orjson
import pytest

from tests.live_server import live_url  # noqa: F401  (the module's gunicorn)
from tests.oip_wire import HEADER, encode, same_bits, split, v1_outputs
from tests.test_gunicorn import request
from tests.test_oip import NETWORKS

tritonclient_http = pytest.importorskip("tritonclient.http")
kserve = pytest.importorskip("kserve")

CASES = ("two_layer_sigmoid_bce", "batchnorm_train_indices", "layernorm_dropout", "batchnorm_test_examples_first")
# A label tensor as class indices (INT64), where the network's cost takes them.
DATATYPES = {"batchnorm_train_indices": {"Y": "INT64"}}


def _v1(base: str, body: dict) -> dict[str, np.ndarray]:
    status, _, data = request(base + "/v1/gradients", orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY))
    assert status == 200, data[:300]
    return v1_outputs(orjson.loads(data))


def _arrays(name: str) -> tuple[dict[str, np.ndarray], dict]:
    tensors, parameters = split(NETWORKS[name])
    types = DATATYPES.get(name, {})
    dtype = {"INT64": np.int64}
    return {k: np.ascontiguousarray(v, dtype=dtype.get(types.get(k), np.float64)) for k, v in tensors.items()}, \
        parameters


def _datatype(a: np.ndarray) -> str:
    return "INT64" if a.dtype == np.int64 else "FP64"


# --- tritonclient ----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def triton(live_url):  # noqa: F811
    client = tritonclient_http.InferenceServerClient(urllib.parse.urlsplit(live_url).netloc, network_timeout=60)
    yield client
    client.close()


def test_tritonclient_health_and_metadata(triton):
    assert triton.is_server_live() and triton.is_server_ready()
    assert triton.is_model_ready("gradients") and triton.is_model_ready("gradients", "1")
    assert "binary_tensor_data" in triton.get_server_metadata()["extensions"]
    meta = triton.get_model_metadata("gradients")
    assert {"X", "Y", "W<l>", "b<l>"} <= {t["name"] for t in meta["inputs"]}
    assert {"cost", "AL", "dW<l>"} <= {t["name"] for t in meta["outputs"]}
    with pytest.raises(tritonclient_http.InferenceServerException, match="unknown model 'resnet'"):
        triton.get_model_metadata("resnet")


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("name", CASES)
def test_tritonclient_infer_equals_v1_bit_for_bit(live_url, triton, name, binary):  # noqa: F811
    want = _v1(live_url, NETWORKS[name])
    arrays, parameters = _arrays(name)
    inputs = []
    for key, a in arrays.items():
        tensor = tritonclient_http.InferInput(key, list(a.shape), _datatype(a))
        tensor.set_data_from_numpy(a, binary_data=binary)
        inputs.append(tensor)
    outputs = [tritonclient_http.InferRequestedOutput(key, binary_data=binary) for key in want]
    result = triton.infer("gradients", inputs, outputs=outputs, parameters=parameters)
    got = result.get_response()["outputs"]
    assert [o["name"] for o in got] == list(want)
    assert all(("parameters" in o) == binary for o in got)
    for key in want:
        assert same_bits(result.as_numpy(key), want[key]), key


def test_tritonclient_without_outputs_gets_every_output_in_binary(live_url, triton):  # noqa: F811
    """tritonclient asks for binary_data_output when no output is named."""
    want = _v1(live_url, NETWORKS["two_layer_sigmoid_bce"])
    arrays, parameters = _arrays("two_layer_sigmoid_bce")
    inputs = [tritonclient_http.InferInput(k, list(a.shape), "FP64").set_data_from_numpy(a) for k, a in arrays.items()]
    result = triton.infer("gradients", inputs, parameters=parameters, model_version="1", request_id="r-1")
    assert result.get_response()["id"] == "r-1"
    assert all(same_bits(result.as_numpy(k), want[k]) for k in want)


def test_tritonclient_sees_the_errors_with_status_and_located_text(triton):
    arrays, parameters = _arrays("two_layer_sigmoid_bce")
    arrays["W2"] = arrays["W2"][:, :2]
    inputs = [tritonclient_http.InferInput(k, list(a.shape), "FP64").set_data_from_numpy(a) for k, a in arrays.items()]
    with pytest.raises(tritonclient_http.InferenceServerException) as info:
        triton.infer("gradients", inputs, parameters=parameters)
    assert info.value.status() == "422"
    assert "W2: W is (1, 2): it needs 3 columns because W1 has 3 rows" in info.value.message()


# --- the KServe SDK ----------------------------------------------------------------------------------------------

def _kserve(coroutine_function):
    async def run():
        client = kserve.InferenceRESTClient(kserve.RESTConfig(protocol="v2", timeout=60))
        try:
            return await coroutine_function(client)
        finally:
            await client.close()

    return asyncio.run(run())


def test_kserve_health(live_url):  # noqa: F811
    async def probes(client):
        return (await client.is_server_live(live_url), await client.is_server_ready(live_url),
                await client.is_model_ready(live_url, "gradients"), await client.is_model_ready(live_url, "resnet"))

    assert _kserve(probes) == (True, True, True, False)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("name", CASES)
def test_kserve_infer_equals_v1_bit_for_bit(live_url, name, binary):  # noqa: F811
    from kserve.protocol.infer_type import RequestedOutput

    want = _v1(live_url, NETWORKS[name])
    arrays, parameters = _arrays(name)
    inputs = []
    for key, a in arrays.items():
        tensor = kserve.InferInput(key, list(a.shape), _datatype(a))
        tensor.set_data_from_numpy(a, binary_data=binary)
        inputs.append(tensor)
    outputs = [RequestedOutput(key, {"binary_data": binary}) for key in want]
    infer_request = kserve.InferRequest(model_name="gradients", infer_inputs=inputs, parameters=parameters,
                                        request_outputs=outputs)

    async def call(client):
        return await client.infer(live_url, infer_request, model_name="gradients")

    response = _kserve(call)
    assert [o.name for o in response.outputs] == list(want)
    for out in response.outputs:
        assert same_bits(out.as_numpy(), want[out.name]), out.name


def test_kserve_sees_the_errors_with_status_and_located_text(live_url):  # noqa: F811
    import httpx

    arrays, parameters = _arrays("two_layer_sigmoid_bce")
    tensor = kserve.InferInput("X", list(arrays["X"].shape), "FP64")
    tensor.set_data_from_numpy(arrays["X"], binary_data=True)
    infer_request = kserve.InferRequest(model_name="gradients", infer_inputs=[tensor], parameters=parameters)

    async def call(client):
        return await client.infer(live_url, infer_request, model_name="gradients")

    with pytest.raises(httpx.HTTPStatusError) as info:
        _kserve(call)
    assert info.value.response.status_code == 422
    assert "W1: required field 'W' is missing" in str(info.value)


# --- bad binary bodies over the wire ------------------------------------------------------------------------------

def _post(base: str, data: bytes, headers: dict) -> tuple[int, str, str]:
    parts = urllib.parse.urlsplit(base)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        conn.request("POST", "/v2/models/gradients/infer", body=data, headers=headers)
        r = conn.getresponse()
        body = r.read()
        return r.status, r.getheader("Content-Type"), orjson.loads(body)["error"]
    finally:
        conn.close()


def _x_header(size: int, datatype: str = "FP64") -> bytes:
    return orjson.dumps({"inputs": [{"name": "X", "shape": [2, 4], "datatype": datatype,
                                     "parameters": {"binary_data_size": size}}]})


@pytest.mark.parametrize("case,status,message", [
    ("truncated", 400, "input X's 64 bytes run past the end of the body: 40 bytes are left"),
    ("extra bytes", 400, "the body has 8 bytes more than the JSON header"),
    ("header past the body", 400, "the JSON header must lie within the body"),
    ("datatype not allowed", 422, "input X is INT32; it takes FP64 or FP32"),
    ("size not shape times datatype", 400, "binary_data_size is 60 bytes but shape [2, 4] of FP64 takes 8 x 8 = 64"),
])
def test_bad_binary_bodies_over_the_wire(live_url, case, status, message):  # noqa: F811
    head = _x_header(32, "INT32") if case == "datatype not allowed" else _x_header(60 if "size" in case else 64)
    tail = {"truncated": 40, "extra bytes": 72, "header past the body": 64, "datatype not allowed": 32,
            "size not shape times datatype": 60}[case]
    length = len(head) + 1000 if case == "header past the body" else len(head)
    got, content_type, text = _post(live_url, head + b"\0" * tail, {HEADER: str(length)})
    assert (got, content_type) == (status, "application/json")
    assert message in text, text


def test_a_live_binary_request_built_by_hand_is_answered_in_binary(live_url):  # noqa: F811
    """The raw exchange, as the protocol's text has it, with aligned tensors (the header padded to 8 bytes)."""
    want = _v1(live_url, NETWORKS["layernorm_dropout"])
    data, headers = encode(*split(NETWORKS["layernorm_dropout"]), pad_to=8, binary_output=True)
    parts = urllib.parse.urlsplit(live_url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        conn.request("POST", "/v2/models/gradients/infer", body=data, headers=headers)
        r = conn.getresponse()
        body = r.read()
        assert r.status == 200 and r.getheader("Content-Type") == "application/octet-stream"
        assert int(r.getheader("Content-Length")) == len(body)
        n = int(r.getheader(HEADER))
    finally:
        conn.close()
    header, offset = orjson.loads(body[:n]), n
    for out in header["outputs"]:
        size = out["parameters"]["binary_data_size"]
        assert same_bits(np.frombuffer(body[offset:offset + size]).reshape(out["shape"]), want[out["name"]])
        offset += size
    assert offset == len(body)


def test_the_readmes_tritonclient_example_prints_what_the_readme_shows(live_url):  # noqa: F811
    import re
    import subprocess
    import sys
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = re.search(r"<!-- oip-example:start -->\n```python\n(.*?)```\n\nprints\n\n```\n(.*?)```\n"
                      r"<!-- oip-example:end -->", readme, re.S)
    assert block, "the README's tritonclient example (between the oip-example markers) is missing"
    code = block.group(1).replace("127.0.0.1:8000", urllib.parse.urlsplit(live_url).netloc)
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout == block.group(2)

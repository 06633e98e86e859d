"""The one error format, and the HTTP-level errors: 404, 405, 413 (size limit, refused before parsing), 500.

Every error of every kind is RFC 9457 problem details as application/problem+json with type, title, status
(equal to the HTTP status), detail, instance and ``errors`` (items with location, message and type), and never
carries a Python traceback. Content-Type (415), malformed JSON (400) and validation (422) are covered in depth in
test_validation.py; here each appears once in the format table.
"""

from __future__ import annotations

import io
import json
import logging

import orjson
import pytest

from service.wire import json_body
from service import create_app, engine

URL = "/v1/gradients"
MiB = 1024 * 1024
PROBLEM_FIELDS = ("type", "title", "status", "detail", "instance", "errors")


def valid_request() -> dict:
    """A valid 2 -> 3 -> 1 sigmoid network with binary cross-entropy, m = 4."""
    return {
        "layers": [
            {"W": [[0.1, -0.2], [0.3, 0.4], [-0.5, 0.6]], "b": [[0.01], [0.02], [0.03]], "activation": "sigmoid"},
            {"W": [[0.7, -0.8, 0.9]], "b": [0.05], "activation": "sigmoid"},
        ],
        "X": [[1.0, 2.0, -1.0, 0.5], [0.5, -1.5, 2.0, 1.0]],
        "Y": [[1, 0, 1, 0]],
        "cost": "binary_cross_entropy",
    }


def make_app(**config):
    # api_keys=[] so that a GRADIENT_API_KEYS in the environment cannot turn every case into a 401.
    return create_app({"api_keys": [], **config})


@pytest.fixture(scope="module")
def eclient():
    return make_app().test_client()


def assert_problem(resp, status: int, path: str = URL) -> dict:
    text = resp.get_data(as_text=True)
    assert resp.status_code == status, text
    assert "Traceback" not in text and 'File "' not in text
    assert resp.mimetype == "application/problem+json", resp.mimetype
    body = orjson.loads(resp.data)
    assert isinstance(body, dict)
    for field in PROBLEM_FIELDS:
        assert field in body, f"problem field {field!r} missing: {body}"
    assert body["status"] == status == resp.status_code
    assert isinstance(body["type"], str) and (body["type"] == "about:blank" or ":" in body["type"])
    assert isinstance(body["title"], str) and body["title"]
    assert isinstance(body["detail"], str) and body["detail"]
    assert body["instance"] == path
    assert isinstance(body["errors"], list)
    for item in body["errors"]:
        assert set(item) >= {"location", "message", "type"}, item
        assert all(isinstance(item[k], str) and item[k] for k in ("location", "message", "type")), item
    return body


def only_error(body: dict) -> dict:
    assert len(body["errors"]) == 1, body["errors"]
    return body["errors"][0]


def post_json(client, body, **kw):
    return client.post(URL, data=json.dumps(body), content_type="application/json", **kw)


def test_baseline_is_200(eclient):
    resp = post_json(eclient, valid_request())
    assert resp.status_code == 200, resp.get_data(as_text=True)
    assert resp.mimetype == "application/json"


# --- 404 and 405 ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method,path", [
    ("post", "/v1/gradient"),
    ("post", "/v1/gradients/"),
    ("post", "/v3/gradients"),  # /v2 is the Open Inference Protocol's (its errors: tests/test_oip.py)
    ("get", "/nope"),
    ("delete", "/v1/nope/deeper"),
    ("post", "/"),
])
def test_unknown_path_is_404_problem(eclient, method, path):
    resp = getattr(eclient, method)(path, data=json.dumps(valid_request()), content_type="application/json")
    body = assert_problem(resp, 404, path)
    item = only_error(body)
    assert item["location"] == "path"
    assert item["type"] == "http_404"


@pytest.mark.parametrize("method", ["get", "put", "delete", "patch"])
def test_wrong_method_is_405_problem_with_allow(eclient, method):
    resp = getattr(eclient, method)(URL)
    body = assert_problem(resp, 405)
    item = only_error(body)
    assert item["location"] == "method"
    assert item["type"] == "http_405"
    allow = {m.strip() for m in resp.headers.get("Allow", "").split(",")}
    assert "POST" in allow, resp.headers
    assert method.upper() not in allow


# --- 413: the size limit, before parsing ---------------------------------------------------------------------

def _padded(body: dict, size: int) -> bytes:
    raw = json.dumps(body).encode()
    assert len(raw) <= size
    return raw[:-1] + b" " * (size - len(raw)) + raw[-1:]  # whitespace before the closing brace: still valid JSON


@pytest.mark.parametrize("limit", [1024, 4096])
def test_body_over_configured_limit_is_413(limit):
    client = make_app(max_body_bytes=limit).test_client()
    resp = client.post(URL, data=_padded(valid_request(), limit + 1), content_type="application/json")
    body = assert_problem(resp, 413)
    item = only_error(body)
    assert item["location"] == "body"
    assert item["type"] == "http_413"
    assert str(limit) in body["detail"] and str(limit) in item["message"]


def test_body_at_the_limit_is_accepted():
    limit = 2048
    client = make_app(max_body_bytes=limit).test_client()
    data = _padded(valid_request(), limit)
    assert len(data) == limit
    resp = client.post(URL, data=data, content_type="application/json")
    assert resp.status_code == 200, resp.get_data(as_text=True)


def test_oversized_malformed_json_is_413_not_400():
    # If the body were parsed first this would be a 400.
    client = make_app(max_body_bytes=1000).test_client()
    resp = client.post(URL, data=b"{" * 5000, content_type="application/json")
    assert_problem(resp, 413)


def test_oversized_body_is_never_parsed(monkeypatch):
    calls = []
    original = json_body.decode

    def spy(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(json_body, "decode", spy)
    client = make_app(max_body_bytes=1000).test_client()
    assert_problem(client.post(URL, data=_padded(valid_request(), 1001), content_type="application/json"), 413)
    assert calls == []
    # and the spy does see a body under the limit
    assert client.post(URL, data=_padded(valid_request(), 1000), content_type="application/json").status_code == 200
    assert calls == [1]


def test_streamed_body_without_content_length_over_limit_is_413():
    client = make_app(max_body_bytes=1000).test_client()
    resp = client.post(URL, input_stream=io.BytesIO(_padded(valid_request(), 5000)), content_type="application/json",
                       environ_overrides={"wsgi.input_terminated": True})
    assert_problem(resp, 413)


def test_default_limit_is_32_mib(monkeypatch):
    monkeypatch.delenv("GRADIENT_MAX_BODY_BYTES", raising=False)
    app = make_app()
    assert app.config["MAX_CONTENT_LENGTH"] == 32 * MiB
    client = app.test_client()
    resp = client.post(URL, data=_padded(valid_request(), 32 * MiB + 1), content_type="application/json")
    body = assert_problem(resp, 413)
    assert str(32 * MiB) in body["detail"]


# --- 500: never a traceback ----------------------------------------------------------------------------------

def test_unexpected_exception_is_500_problem_without_traceback(eclient, monkeypatch, caplog):
    secret = "internal detail 0xDEADBEEF /srv/app/engine.py"

    def boom(*args, **kwargs):
        raise RuntimeError(secret)

    monkeypatch.setattr(engine, "compute", boom)
    with caplog.at_level(logging.ERROR):
        resp = post_json(eclient, valid_request())
    body = assert_problem(resp, 500)
    text = resp.get_data(as_text=True)
    assert secret not in text and "RuntimeError" not in text
    # the traceback went to the log instead
    assert any(r.exc_info and secret in str(r.exc_info[1]) for r in caplog.records)


# --- the format, for every kind of error ---------------------------------------------------------------------

def _with(mutate):
    body = valid_request()
    mutate(body)
    return json.dumps(body).encode()


ERROR_KINDS = [
    # id, method, path, data, content type, app config, status, location of the first error
    ("malformed_json", "post", URL, b'{"layers": [', "application/json", {}, 400, "body"),
    ("empty_body", "post", URL, b"", "application/json", {}, 400, "body"),
    ("invalid_utf8", "post", URL, b'{"cost": "\xff"}', "application/json", {}, 400, "body"),
    ("deep_nesting", "post", URL, b"[" * 10000 + b"]" * 10000, "application/json", {}, 400, "body"),
    ("text_plain", "post", URL, json.dumps(valid_request()).encode(), "text/plain", {}, 415, "header.Content-Type"),
    ("no_content_type", "post", URL, json.dumps(valid_request()).encode(), None, {}, 415, "header.Content-Type"),
    ("too_large", "post", URL, json.dumps(valid_request()).encode(), "application/json", {"max_body_bytes": 100},
     413, "body"),
    ("body_is_array", "post", URL, b"[1, 2]", "application/json", {}, 422, "body"),
    ("validation", "post", URL, _with(lambda b: b["X"][0].__setitem__(3, "x")), "application/json", {}, 422,
     "X[0][3]"),
    ("shape", "post", URL, _with(lambda b: b["layers"][1].__setitem__("W", [[1.0, 2.0]])), "application/json", {},
     422, "layers[1].W"),
    ("pairing", "post", URL, _with(lambda b: b["layers"][1].__setitem__("activation", "tanh")), "application/json",
     {}, 422, "cost"),
    ("limit", "post", URL, json.dumps(valid_request()).encode(), "application/json", {"max_layers": 1}, 422,
     "layers"),
    ("overflow", "post", URL, _with(lambda b: (b.__setitem__("X", [[1e200] * 4] * 2),
                                               b["layers"][0].__setitem__("W", [[1e200, 1e200]] * 3))),
     "application/json", {}, 422, "layers[0]"),
    ("not_found", "post", "/v1/nothing", b"{}", "application/json", {}, 404, "path"),
    ("method", "get", URL, None, None, {}, 405, "method"),
]


@pytest.mark.parametrize("method,path,data,content_type,config,status,location",
                         [pytest.param(*k[1:], id=k[0]) for k in ERROR_KINDS])
def test_every_error_is_one_problem_format(method, path, data, content_type, config, status, location):
    client = make_app(**config).test_client()
    kwargs = {"data": data, "headers": {"X-Request-ID": "req-42.abc"}}
    if content_type is not None:
        kwargs["content_type"] = content_type
    resp = getattr(client, method)(path, **kwargs)
    body = assert_problem(resp, status, path)
    assert body["errors"], body
    assert body["errors"][0]["location"] == location, body["errors"]
    if "request_id" in body:
        assert body["request_id"] == resp.headers.get("X-Request-ID") == "req-42.abc"


def test_detail_summarizes_many_errors_and_the_list_is_capped(eclient):
    body = valid_request()
    body["X"] = [[float("nan")] * 200] * 2  # json.dumps writes the NaN token: 400 bad entries
    body["Y"] = [[1] * 200]
    resp = eclient.post(URL, data=json.dumps(body), content_type="application/json")
    problem = assert_problem(resp, 422)
    assert len(problem["errors"]) == 100
    # The search stops at 100 errors per array (the list is capped while it is built), so the count is a floor.
    assert problem["detail"].startswith("at least 101 problems in the request (the first 100 are listed)")
    assert problem["errors"][0]["location"] == "X[0][0]"
    assert all(e["type"] == "finite_number" for e in problem["errors"])


def test_success_is_not_problem_json(eclient):
    resp = post_json(eclient, valid_request())
    assert resp.status_code == 200
    assert resp.mimetype == "application/json"
    assert "errors" not in orjson.loads(resp.data)

"""Health, metadata, metrics, request ids, API keys, CORS and configuration, through the test client."""

from __future__ import annotations

import re

import orjson
import pytest

from service import create_app
from service.config import ConfigError, Settings
from service.engine import ACTIVATIONS, COSTS, INTERMEDIATES

KEY = "k" * 20 + "-first"
OTHER_KEY = "o" * 20 + "-second"
EXAMPLE = orjson.loads(open("examples/two_layer_sigmoid_bce.json", "rb").read())


def metric_value(text: str, name: str, **labels) -> float:
    """The value of one sample in Prometheus text, 0 if absent."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split(" ")[0]))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_healthz(client):
    r = client.get("/healthz")
    assert r.status_code == 200 and r.json == {"status": "ok", "checks": {}}


def test_readyz_runs_the_engine(client):
    r = client.get("/readyz")
    assert r.status_code == 200
    assert r.json == {"status": "ok", "checks": {"linear_mse": "ok", "sigmoid_bce": "ok"}}


def test_readyz_reports_503_when_the_engine_is_wrong(client, monkeypatch):
    from service import ops

    monkeypatch.setattr(ops, "_readiness_checks", lambda: {"linear_mse": "wrong", "sigmoid_bce": "ok"})
    r = client.get("/readyz")
    assert r.status_code == 503 and r.json["status"] == "failing"


def test_v1_lists_exactly_the_registries_and_the_limits():
    app = create_app({"max_layers": 7, "max_body_bytes": 12345})
    body = app.test_client().get("/v1").json
    assert [a["name"] for a in body["activations"]] == list(ACTIVATIONS)
    assert [c["name"] for c in body["costs"]] == list(COSTS)
    assert body["intermediates"] == list(INTERMEDIATES)
    assert body["layouts"] == ["features_first", "examples_first"]
    assert body["limits"]["max_layers"] == 7 and body["limits"]["max_body_bytes"] == 12345
    assert body["api_keys_required"] is False
    softmax = next(a for a in body["activations"] if a["name"] == "softmax")
    assert softmax["output_only"] is True
    bce = next(c for c in body["costs"] if c["name"] == "binary_cross_entropy")
    assert bce["output_activations"] == ["sigmoid"] and bce["fused_activation"] == "sigmoid"


def test_metrics_count_a_request_and_a_rejected_one(client):
    before = client.get("/metrics").get_data(as_text=True)
    ok = client.post("/v1/gradients", json=EXAMPLE)
    bad = client.post("/v1/gradients", json={**EXAMPLE, "cost": "hinge"})
    too_big_labels = client.post("/v1/gradients", json={**EXAMPLE, "Y": [[2, 0, 1, 0]]})
    assert (ok.status_code, bad.status_code, too_big_labels.status_code) == (200, 422, 422)
    after = client.get("/metrics").get_data(as_text=True)

    def delta(name, **labels):
        return metric_value(after, name, **labels) - metric_value(before, name, **labels)

    assert delta("gradient_http_requests_total", route="/v1/gradients", method="POST", status="200") == 1
    assert delta("gradient_http_requests_total", route="/v1/gradients", method="POST", status="422") == 2
    assert delta("gradient_rejected_requests_total", reason="validation-error") == 2
    assert delta("gradient_engine_compute_seconds_count") == 1
    assert delta("gradient_http_request_duration_seconds_count", route="/v1/gradients") == 3
    assert delta("gradient_http_request_body_bytes_count", route="/v1/gradients") == 3


def test_metrics_label_unknown_paths_as_unmatched(client):
    before = client.get("/metrics").get_data(as_text=True)
    client.get("/no/such/path/1")
    client.get("/no/such/path/2")
    after = client.get("/metrics").get_data(as_text=True)
    labels = dict(route="unmatched", method="GET", status="404")
    assert metric_value(after, "gradient_http_requests_total", **labels) - \
        metric_value(before, "gradient_http_requests_total", **labels) == 2
    assert "/no/such/path" not in after


@pytest.mark.parametrize("path", ["/healthz", "/v1/gradients", "/nope"])
def test_request_id_is_generated_and_echoed(client, path):
    r = client.get(path)
    assert re.fullmatch(r"[0-9a-f]{32}", r.headers["X-Request-ID"])
    r = client.get(path, headers={"X-Request-ID": "grader-42.run_7"})
    assert r.headers["X-Request-ID"] == "grader-42.run_7"


def test_request_id_is_in_error_bodies(client):
    r = client.post("/v1/gradients", json={**EXAMPLE, "cost": "hinge"}, headers={"X-Request-ID": "abc-123"})
    assert r.status_code == 422 and r.json["request_id"] == "abc-123"


def test_unsafe_request_id_is_replaced(client):
    r = client.get("/healthz", headers={"X-Request-ID": "bad id\twith spaces" + "x" * 200})
    assert re.fullmatch(r"[0-9a-f]{32}", r.headers["X-Request-ID"])


@pytest.fixture
def keyed():
    return create_app({"api_keys": [KEY, OTHER_KEY]}).test_client()


@pytest.mark.parametrize("headers, why", [
    ({}, "needs an API key"),
    ({"Authorization": "Bearer wrong-key-wrong-key"}, "not valid"),
    ({"Authorization": f"Basic {KEY}"}, "needs an API key"),
    ({"Authorization": "Bearer"}, "needs an API key"),
    ({"Authorization": f"Bearer {KEY}x"}, "not valid"),
])
@pytest.mark.parametrize("method, path", [("POST", "/v1/gradients"), ("GET", "/v1")])
def test_api_keys_refuse_missing_and_wrong(keyed, headers, why, method, path):
    r = keyed.open(path, method=method, json=EXAMPLE if method == "POST" else None, headers=headers)
    assert r.status_code == 401
    assert r.headers["WWW-Authenticate"].startswith("Bearer")
    assert r.content_type == "application/problem+json"
    assert why in r.json["detail"] and r.json["errors"][0]["location"] == "header.Authorization"


@pytest.mark.parametrize("key", [KEY, OTHER_KEY])
def test_api_keys_accept_each_configured_key(keyed, key):
    r = keyed.post("/v1/gradients", json=EXAMPLE, headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 200 and r.json["cost"] == pytest.approx(0.676733526293133, rel=1e-15)


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics", "/openapi.json", "/docs/"])
def test_health_and_docs_stay_open_with_keys(keyed, path):
    assert keyed.get(path).status_code == 200


def test_metrics_can_require_a_key():
    client = create_app({"api_keys": [KEY], "metrics_require_key": True}).test_client()
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    assert client.get("/healthz").status_code == 200


def test_without_keys_the_service_is_open_and_says_so(client, caplog):
    with caplog.at_level("INFO"):
        app = create_app()
    assert "no API keys configured" in caplog.text
    assert app.test_client().get("/v1").json["api_keys_required"] is False


def test_cors_off_by_default(client):
    r = client.options("/v1/gradients", headers={"Origin": "https://course.example",
                                                 "Access-Control-Request-Method": "POST"})
    assert "Access-Control-Allow-Origin" not in r.headers


def test_cors_allows_configured_origins_only():
    client = create_app({"cors_origins": "https://course.example, https://lab.example",
                         "api_keys": [KEY]}).test_client()
    pre = client.options("/v1/gradients", headers={"Origin": "https://lab.example",
                                                   "Access-Control-Request-Method": "POST",
                                                   "Access-Control-Request-Headers": "Authorization, Content-Type"})
    assert pre.status_code == 200
    assert pre.headers["Access-Control-Allow-Origin"] == "https://lab.example"
    assert "authorization" in pre.headers["Access-Control-Allow-Headers"].lower()
    r = client.post("/v1/gradients", json=EXAMPLE, headers={"Origin": "https://course.example",
                                                            "Authorization": f"Bearer {KEY}"})
    assert r.status_code == 200 and r.headers["Access-Control-Allow-Origin"] == "https://course.example"
    assert "X-Request-ID" in r.headers["Access-Control-Expose-Headers"]
    other = client.post("/v1/gradients", json=EXAMPLE, headers={"Origin": "https://evil.example",
                                                                "Authorization": f"Bearer {KEY}"})
    assert "Access-Control-Allow-Origin" not in other.headers
    # Allowed or not, the answer depends on Origin, so shared caches must key on it.
    assert "Origin" in r.headers["Vary"] and "Origin" in other.headers["Vary"]


@pytest.mark.parametrize("env, name", [
    ({"GRADIENT_WORKERS": "many"}, "GRADIENT_WORKERS"),
    ({"GRADIENT_WORKERS": "0"}, "GRADIENT_WORKERS"),
    ({"GRADIENT_MAX_BODY_BYTES": "-1"}, "GRADIENT_MAX_BODY_BYTES"),
    ({"GRADIENT_LOG_LEVEL": "loud"}, "GRADIENT_LOG_LEVEL"),
    ({"GRADIENT_API_KEYS": "short"}, "GRADIENT_API_KEYS"),
    ({"GRADIENT_METRICS_REQUIRE_KEY": "perhaps"}, "GRADIENT_METRICS_REQUIRE_KEY"),
])
def test_invalid_configuration_fails_at_start_naming_the_variable(monkeypatch, env, name):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ConfigError) as info:
        create_app()
    assert name in str(info.value) and "invalid configuration" in str(info.value)


def test_configuration_from_the_environment(monkeypatch):
    monkeypatch.setenv("GRADIENT_MAX_LAYERS", "3")
    monkeypatch.setenv("GRADIENT_CORS_ORIGINS", "https://a.example,https://b.example")
    monkeypatch.setenv("GRADIENT_WORKERS", "3")
    monkeypatch.setenv("GRADIENT_THREADS", "2")
    s = Settings.load()
    assert s.max_layers == 3 and s.cors_origins == ["https://a.example", "https://b.example"]
    assert s.workers == 3 and s.threads == 2 and s.blas_threads >= 1
    body = create_app(s).test_client().get("/v1").json
    assert body["limits"]["max_layers"] == 3


def test_default_workers_do_not_oversubscribe_the_cores():
    from service.config import _cpu_count

    s = Settings.load()
    assert s.workers * s.threads * s.blas_threads <= max(_cpu_count(), s.workers * s.threads)


# --------------------------------------------------------------------------------------------- hardening (issue 7)
def test_metrics_labels_come_from_fixed_sets_whatever_the_method(client):
    """500 requests with random methods on a route and on unknown paths add no series (method -> `other`)."""
    import random
    import string

    rng = random.Random(7)
    client.get("/healthz")
    for path in ("/v1/gradients", "/nope/1"):  # the series these requests land in exist before the count
        client.open(path, method="ZZZZ")
    before = client.get("/metrics").get_data(as_text=True)
    methods = ["".join(rng.choices(string.ascii_uppercase, k=8)) for _ in range(500)]
    for i, method in enumerate(methods):
        r = client.open("/v1/gradients" if i % 2 else f"/nope/{i}", method=method)
        assert r.status_code in (404, 405)
    after = client.get("/metrics").get_data(as_text=True)

    def series(text):
        return {line.rsplit(" ", 1)[0] for line in text.splitlines() if line and not line.startswith("#")}

    assert series(after) == series(before), series(after) - series(before)
    assert not any(m in after for m in methods) and "/nope/" not in after
    for status in ("404", "405"):  # every one of them is counted, under method="other"
        labels = dict(route="unmatched", method="other", status=status)
        assert metric_value(after, "gradient_http_requests_total", **labels) - \
            metric_value(before, "gradient_http_requests_total", **labels) == 250


def test_cors_sends_nothing_without_an_origin_header():
    client = create_app({"cors_origins": "https://course.example, https://lab.example"}).test_client()
    r = client.post("/v1/gradients", json=EXAMPLE)
    assert r.status_code == 200
    assert not [h for h in r.headers.keys() if h.lower().startswith("access-control-")], dict(r.headers)
    with_origin = client.post("/v1/gradients", json=EXAMPLE, headers={"Origin": "https://lab.example"})
    assert with_origin.headers["Access-Control-Allow-Origin"] == "https://lab.example"


def _post_encoded(client, body: bytes, encoding: str | None):
    headers = {"Content-Type": "application/json"}
    if encoding is not None:
        headers["Content-Encoding"] = encoding
    return client.post("/v1/gradients", data=body, headers=headers)


@pytest.mark.parametrize("encoding", ["gzip", "x-gzip", "GZIP", "identity, gzip"])
def test_gzip_bodies_are_decoded(client, encoding):
    import gzip

    plain = orjson.dumps(EXAMPLE)
    r = _post_encoded(client, gzip.compress(plain), encoding)
    assert r.status_code == 200, r.json
    assert r.json == client.post("/v1/gradients", json=EXAMPLE).json
    # Concatenated gzip members are one stream (as gzip itself reads them).
    half = len(plain) // 2
    assert _post_encoded(client, gzip.compress(plain[:half]) + gzip.compress(plain[half:]), encoding).status_code == 200


def test_gzip_bomb_is_refused_as_soon_as_it_passes_the_limit():
    import gzip
    import tracemalloc

    limit = 100_000
    client = create_app({"max_body_bytes": limit}).test_client()
    bomb = gzip.compress(b" " * (64 * 1024 * 1024), compresslevel=9)  # 64 MiB of spaces in about 64 KB
    assert len(bomb) < limit
    tracemalloc.start()
    r = _post_encoded(client, bomb, "gzip")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert r.status_code == 413 and r.content_type == "application/problem+json"
    assert peak < 20 * limit + 4 * len(bomb), peak  # never the 64 MiB
    at_limit = gzip.compress(orjson.dumps(EXAMPLE).ljust(limit))
    assert _post_encoded(client, at_limit, "gzip").status_code == 200
    assert _post_encoded(client, gzip.compress(orjson.dumps(EXAMPLE).ljust(limit + 1)), "gzip").status_code == 413


@pytest.mark.parametrize("body, encoding, status, location", [
    (orjson.dumps(EXAMPLE), "gzip", 400, "body"),        # labelled gzip, sent plain
    (b"\x1f\x8b\x08\x00garbage", "gzip", 400, "body"),   # a gzip header, then garbage
    ("cut", "gzip", 400, "body"),                        # a gzip stream cut short
    (orjson.dumps(EXAMPLE), "br", 415, "header.Content-Encoding"),
    (orjson.dumps(EXAMPLE), "deflate", 415, "header.Content-Encoding"),
    (orjson.dumps(EXAMPLE), "gzip, gzip", 415, "header.Content-Encoding"),
])
def test_bad_or_unsupported_content_encodings_are_problems(client, body, encoding, status, location):
    import gzip

    if body == "cut":
        body = gzip.compress(orjson.dumps(EXAMPLE))[:-12]
    r = _post_encoded(client, body, encoding)
    assert r.status_code == status and r.content_type == "application/problem+json", r.get_data()
    assert r.json["errors"][0]["location"] == location


def test_identity_encoding_is_the_body_as_it_is(client):
    assert _post_encoded(client, orjson.dumps(EXAMPLE), "identity").status_code == 200


def test_readyz_is_503_while_draining(client, monkeypatch):
    from service import lifecycle

    monkeypatch.setattr(lifecycle, "draining", lambda: True)
    r = client.get("/readyz")
    assert r.status_code == 503 and r.json["status"] == "draining"
    assert client.get("/healthz").status_code == 200  # liveness is unaffected: the process is fine


@pytest.mark.parametrize("env, name", [
    ({"GRADIENT_HEADER_TIMEOUT": "0"}, "GRADIENT_HEADER_TIMEOUT"),
    ({"GRADIENT_BODY_TIMEOUT": "soon"}, "GRADIENT_BODY_TIMEOUT"),
    ({"GRADIENT_DRAIN_SECONDS": "-1"}, "GRADIENT_DRAIN_SECONDS"),
])
def test_invalid_timeouts_fail_at_start_naming_the_variable(monkeypatch, env, name):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ConfigError) as info:
        create_app()
    assert name in str(info.value)

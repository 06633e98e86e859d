"""Per-key rate limits (flask-limiter, service.hooks): 429 problem+json with Retry-After, one budget per key over
every /v1 route, and counters shared by app instances and gunicorn replicas through a real Redis server.

The Redis tests start their own ``redis-server`` on a free loopback port (no persistence) and stop it by its PID;
they are skipped only when redis-server is not installed (``.ci/run`` installs it)."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import orjson
import pytest

from service import create_app
from tests.test_gunicorn import EXAMPLE, free_port, request, start, stop, wait_ready

KEY_A = "rate-key-a-0123456789"
KEY_B = "rate-key-b-0123456789"
GRADE = orjson.dumps({**orjson.loads(EXAMPLE), "submission": {"cost": 0.5}})


def _config(limit: str, storage: str = "memory://", **more) -> dict:
    return {"policies": {"limited": {"keys": [KEY_A], "rate_limit": limit}, "other": {"keys": [KEY_B]}},
            "rate_limit_storage": storage, **more}


def _send(client, key: str | None = KEY_A, path: str = "/v1/gradients", body: bytes = EXAMPLE, **kwargs):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return client.post(path, data=body, content_type="application/json", headers=headers, **kwargs)


def _assert_429(r, policy_text: str):
    assert r.status_code == 429, r.data
    assert r.mimetype == "application/problem+json"
    problem = orjson.loads(r.data)
    assert problem["status"] == 429 and problem["type"].endswith(":rate-limited")
    retry = int(r.headers["Retry-After"])
    assert 1 <= retry <= 61, retry
    item = problem["errors"][0]
    assert item["type"] == "rate_limited" and policy_text in item["message"], item
    assert f"retry after {retry} s" in problem["detail"]
    return problem


def test_a_key_over_its_limit_gets_429_with_retry_after():
    client = create_app(_config("3/minute")).test_client()
    assert [_send(client).status_code for _ in range(3)] == [200, 200, 200]
    problem = _assert_429(_send(client), "this key's policy 'limited' (3 per 1 minute)")
    assert problem["errors"][0]["location"] == "header.Authorization"
    assert problem["request_id"]


def test_one_budget_per_key_over_every_v1_route_and_only_those():
    client = create_app(_config("4/minute")).test_client()
    assert _send(client).status_code == 200
    assert _send(client, path="/v1/grade", body=GRADE).status_code == 200
    assert client.get("/v1", headers={"Authorization": f"Bearer {KEY_A}"}).status_code == 200
    for _ in range(5):  # health, readiness, metrics and docs are never counted
        assert client.get("/healthz").status_code == 200 and client.get("/readyz").status_code == 200
    assert _send(client, path="/v1/explain").status_code == 200
    _assert_429(_send(client, path="/v1/grade", body=GRADE), "'limited'")
    _assert_429(_send(client), "'limited'")
    # another key has its own policy (no limit), and a wrong key is a 401 that costs nothing
    assert all(_send(client, KEY_B).status_code == 200 for _ in range(10))
    assert _send(client, "wrong-key-0123456789").status_code == 401


def test_anonymous_use_is_counted_per_client_address():
    client = create_app({"default_policy": {"rate_limit": "2/minute"}}).test_client()
    one, two = {"REMOTE_ADDR": "127.0.0.2"}, {"REMOTE_ADDR": "127.0.0.3"}
    assert [_send(client, None, environ_base=one).status_code for _ in range(2)] == [200, 200]
    _assert_429(_send(client, None, environ_base=one), "the policy of anonymous use (2 per 1 minute)")
    assert _send(client, None, environ_base=two).status_code == 200


def test_without_a_limit_the_store_is_never_used():
    # Nothing configured: today's behaviour, no limit; the (unreachable) store is never asked.
    client = create_app({"rate_limit_storage": f"redis://127.0.0.1:{free_port()}/0"}).test_client()
    assert all(_send(client, None).status_code == 200 for _ in range(20))


def test_an_unreachable_store_fails_closed_with_503():
    client = create_app(_config("5/minute", f"redis://127.0.0.1:{free_port()}/0")).test_client()
    start = time.monotonic()
    r = _send(client)
    assert time.monotonic() - start < 10  # a refused connection, not a hang
    assert r.status_code == 503 and r.mimetype == "application/problem+json" and r.headers["Retry-After"] == "5"
    assert orjson.loads(r.data)["errors"][0]["type"] == "rate_limit_store_unavailable"
    assert _send(client, KEY_B).status_code == 200  # a key without a limit does not need the store
    assert client.get("/healthz").status_code == 200


def test_memory_counters_are_per_process():
    # The reason for Redis: two app instances (two workers, two replicas) with memory:// each keep their own count.
    a, b = (create_app(_config("2/minute")).test_client() for _ in range(2))
    assert [_send(c).status_code for c in (a, a, b, b)] == [200, 200, 200, 200]
    assert _send(a).status_code == _send(b).status_code == 429


# --- a real Redis ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server; .ci/run installs it)")
    import redis

    port, workdir = free_port(), tmp_path_factory.mktemp("redis")
    log = (workdir / "redis.log").open("wb")
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(workdir)], stdout=log, stderr=subprocess.STDOUT)
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url, socket_timeout=1)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError("redis-server did not start:\n" + (workdir / "redis.log").read_text())
                time.sleep(0.05)
        yield url, client
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture
def redis_url(redis_server):
    url, client = redis_server
    client.flushdb()
    return url, client


def test_two_app_instances_share_one_counter_in_redis(redis_url):
    url, store = redis_url
    a, b = (create_app(_config("4/minute", url)).test_client() for _ in range(2))
    assert [_send(c).status_code for c in (a, b, a, b)] == [200, 200, 200, 200]
    _assert_429(_send(a), "'limited'")
    _assert_429(_send(b), "'limited'")
    assert _send(b, KEY_B).status_code == 200
    keys = [k.decode() for k in store.keys("*")]
    assert keys and all(KEY_A not in k for k in keys), keys  # the counter is named by the key's digest


def test_two_gunicorn_replicas_share_one_counter_in_redis(redis_url, tmp_path):
    """Two separate gunicorn servers (as two replicas behind a balancer), each with its own workers, one store."""
    url, _ = redis_url
    env = {"GRADIENT_POLICIES": orjson.dumps(_config("5/minute")["policies"]).decode(),
           "GRADIENT_RATE_LIMIT_STORAGE": url, "GRADIENT_WORKERS": "2", "GRADIENT_LOG_LEVEL": "warning"}
    servers = []
    try:
        for name in ("one", "two"):
            (tmp_path / name).mkdir()
            servers.append(start(tmp_path / name, **env))
        for proc, base, log in servers:
            wait_ready(proc, base, log)
        headers = {"Authorization": f"Bearer {KEY_A}"}
        bases = [base for _, base, _ in servers]
        statuses = [request(bases[i % 2] + "/v1/gradients", EXAMPLE, headers)[0] for i in range(8)]
        assert statuses == [200] * 5 + [429] * 3, statuses
        status, headers_429, body = request(bases[1] + "/v1/grade", GRADE, headers)
        assert status == 429 and int(headers_429["Retry-After"]) >= 1
        assert orjson.loads(body)["errors"][0]["type"] == "rate_limited"
        assert request(bases[0] + "/v1/gradients", EXAMPLE, {"Authorization": f"Bearer {KEY_B}"})[0] == 200
    finally:
        for proc, _, _ in servers:
            stop(proc)

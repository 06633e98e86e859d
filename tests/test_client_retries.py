"""The SDK's retries and timeouts: connection errors, 429 and 503 are retried with backoff (at least the
Retry-After), nothing else is; a slow answer is a RequestTimeout, not retried. Stub servers on 127.0.0.1 answer as
scripted; the timeout is also shown against the live gunicorn."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import numpy as np
import pytest

import gradient_service_client as gsc
from gradient_service_client import AsyncClient, Backoff, Client
from tests.live_server import live_url, stub_server  # noqa: F401  (fixture)

FAST = Backoff(initial=0.01, max=0.05, jitter=0.0)
OK = (200, {}, b'{"cost": 0.5, "gradients": {"dW1": [[1.0, 2.5]]}}', 0.0)
BODY = {"layers": [{"W": [[1.0, 2.0]], "b": [[0.0]], "activation": "sigmoid"}], "X": [[1.0], [2.0]], "Y": [[1]],
        "cost": "binary_cross_entropy"}


def _problem(status: int, **headers) -> tuple:
    body = (b'{"type": "about:blank", "title": "t", "status": %d, "detail": "d", "errors": '
            b'[{"location": "request", "message": "m", "type": "x"}]}' % status)
    return status, {"Content-Type": "application/problem+json", **headers}, body, 0.0


def test_503_then_200_is_retried_and_succeeds():
    calls = []
    with stub_server(lambda n: _problem(503, **{"Retry-After": "0"}) if n < 2 else OK) as (url, requests):
        with Client(url, max_retries=2, backoff=FAST, on_retry=lambda *a: calls.append(a)) as client:
            result = client.gradients(BODY)
    assert len(requests) == 3 and result.cost == 0.5 and np.array_equal(result.grads.dW1, [[1.0, 2.5]])
    assert [c[0] for c in calls] == [1, 2] and all(isinstance(c[1], gsc.ServiceUnavailable) for c in calls)
    assert all(r[3] == requests[0][3] for r in requests)  # the same body each time


def test_retries_stop_after_max_retries_with_the_last_error():
    with stub_server(lambda n: _problem(503)) as (url, requests):
        with Client(url, max_retries=3, backoff=FAST) as client, pytest.raises(gsc.ServiceUnavailable) as caught:
            client.gradients(BODY)
    assert len(requests) == 4 and caught.value.errors[0].location == "request"
    with stub_server(lambda n: _problem(503)) as (url, requests):
        with Client(url, max_retries=0) as client, pytest.raises(gsc.ServiceUnavailable):
            client.gradients(BODY)
    assert len(requests) == 1


def test_429_waits_at_least_its_retry_after_and_a_long_one_is_not_waited_for():
    with stub_server(lambda n: _problem(429, **{"Retry-After": "1"}) if n == 0 else OK) as (url, requests):
        started = time.monotonic()
        with Client(url, backoff=FAST) as client:
            assert client.gradients(BODY).cost == 0.5
        assert time.monotonic() - started >= 0.95 and len(requests) == 2
    with stub_server(lambda n: _problem(429, **{"Retry-After": "120"})) as (url, requests):
        started = time.monotonic()
        with Client(url, backoff=FAST) as client, pytest.raises(gsc.RateLimited) as caught:
            client.gradients(BODY)
        assert time.monotonic() - started < 2 and len(requests) == 1 and caught.value.retry_after == 120


@pytest.mark.parametrize("status,error", [(400, gsc.BadRequest), (422, gsc.ValidationError), (500, gsc.ServerError),
                                          (502, gsc.ServerError), (404, gsc.NotFound), (401, gsc.Unauthorized)])
def test_other_errors_are_not_retried(status, error):
    with stub_server(lambda n: _problem(status)) as (url, requests):
        with Client(url, max_retries=3, backoff=FAST) as client, pytest.raises(error) as caught:
            client.gradients(BODY)
    assert len(requests) == 1 and caught.value.status == status


def test_a_body_that_is_not_a_problem_still_gives_a_typed_error():
    with stub_server(lambda n: (502, {"Content-Type": "text/html"}, b"<html>Bad gateway</html>", 0.0)) as (url, _):
        with Client(url, max_retries=0) as client, pytest.raises(gsc.ServerError) as caught:
            client.gradients(BODY)
    assert caught.value.status == 502 and "Bad gateway" in caught.value.detail and caught.value.errors == []


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_refused_connection_is_retried_until_the_server_is_up():
    port = _free_port()  # nothing listens there yet: the first attempt is refused
    started, up = threading.Event(), {}

    def start_server(attempt, exc, wait):
        assert isinstance(exc, gsc.ConnectionFailed)
        if not started.is_set():
            started.set()
            up["cm"] = stub_server(lambda n: OK, port=port)
            up["url"], up["requests"] = up["cm"].__enter__()

    try:
        with Client(f"http://127.0.0.1:{port}", max_retries=2, backoff=FAST, on_retry=start_server) as client:
            assert client.gradients(BODY).cost == 0.5
        assert len(up["requests"]) == 1
    finally:
        if "cm" in up:
            up["cm"].__exit__(None, None, None)


def test_a_service_that_stays_down_is_a_connection_error_after_the_retries():
    calls = []
    with Client(f"http://127.0.0.1:{_free_port()}", max_retries=2, backoff=FAST,
                on_retry=lambda *a: calls.append(a)) as client, pytest.raises(gsc.ConnectionFailed, match="127.0.0.1"):
        client.gradients(BODY)
    assert len(calls) == 2


def test_a_slow_answer_is_a_timeout_and_is_not_retried():
    with stub_server(lambda n: (*OK[:3], 3.0)) as (url, requests):
        started = time.monotonic()
        with Client(url, timeout=0.3, max_retries=3, backoff=FAST) as client, pytest.raises(gsc.RequestTimeout):
            client.gradients(BODY)
        assert time.monotonic() - started < 2 and len(requests) == 1


def test_a_timeout_against_the_live_service(live_url):
    # 50 sampled entries of a 40 -> 40 -> 40 -> 1 network with 2000 examples: 101 forward passes, near the work limit.
    rng = np.random.default_rng(0)
    sizes = [40, 40, 40, 1]
    layers = [{"W": rng.normal(0, 0.3, (sizes[i + 1], sizes[i])), "b": np.zeros((sizes[i + 1], 1)),
               "activation": "tanh" if i < 2 else "sigmoid"} for i in range(3)]
    body = {"layers": layers, "X": rng.normal(size=(40, 2000)), "Y": rng.integers(0, 2, (1, 2000)).astype(float),
            "cost": "binary_cross_entropy", "mode": "entries", "samples": 50}
    with Client(live_url, timeout=60) as client:  # how long it takes here, now
        started = time.monotonic()
        assert client.gradient_check(body).forward_passes > 100
        took = time.monotonic() - started
    timeout = took / 5  # the answer comes after `took`: a fifth of it is a timeout on any machine
    started = time.monotonic()
    with Client(live_url, timeout=timeout, max_retries=2, backoff=FAST) as client, pytest.raises(gsc.RequestTimeout):
        client.gradient_check(body)
    assert time.monotonic() - started < took  # given up at the timeout, not retried
    with Client(live_url, timeout=30) as client:  # the service itself is fine
        assert client.gradients(layers=layers[:1], X=body["X"][:, :5], Y=np.zeros((40, 5)),
                                cost="mean_squared_error").cost >= 0


def test_the_async_client_retries_too():
    with stub_server(lambda n: _problem(503) if n == 0 else OK) as (url, requests):
        async def run():
            async with AsyncClient(url, backoff=FAST) as client:
                return await client.gradients(BODY)

        assert asyncio.run(run()).cost == 0.5
    assert len(requests) == 2

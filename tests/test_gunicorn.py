"""The real server: gunicorn with gunicorn.conf.py, several workers, on 127.0.0.1, stopped by its PID."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GUNICORN = Path(sys.executable).parent / "gunicorn"
EXAMPLE = (ROOT / "examples" / "two_layer_sigmoid_bce.json").read_bytes()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(url: str, body: bytes | None = None, headers: dict | None = None) -> tuple[int, dict, bytes]:
    req = urllib.request.Request(url, data=body, headers=headers or {}, method="POST" if body else "GET")
    if body:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def start(tmp_path: Path, **env) -> tuple[subprocess.Popen, str, Path]:
    port = free_port()
    log = tmp_path / "server.log"
    environ = {**os.environ, "GRADIENT_BIND": f"127.0.0.1:{port}",
               "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics"), **env}
    proc = subprocess.Popen([str(GUNICORN), "-c", str(ROOT / "gunicorn.conf.py"), "service.wsgi:app"],
                            cwd=ROOT, env=environ, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    return proc, f"http://127.0.0.1:{port}", log


def wait_ready(proc: subprocess.Popen, base: str, log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"gunicorn exited with {proc.returncode}:\n{log.read_text()}")
        try:
            if request(base + "/readyz")[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"gunicorn not ready in 30 s:\n{log.read_text()}")


def stop(proc: subprocess.Popen) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


@pytest.fixture
def server(tmp_path):
    proc, base, log = start(tmp_path, GRADIENT_WORKERS="2", GRADIENT_LOG_LEVEL="info")
    try:
        wait_ready(proc, base, log)
        yield base, log
    finally:
        stop(proc)


def test_serves_gradients_with_two_workers_and_merged_metrics(server):
    base, log = server
    n = 12
    for i in range(n):
        status, headers, body = request(base + "/v1/gradients", EXAMPLE, {"X-Request-ID": f"req-{i}"})
        assert status == 200 and headers["X-Request-ID"] == f"req-{i}"
        assert json.loads(body)["cost"] == pytest.approx(0.676733526293133, rel=1e-15)
    assert request(base + "/v1/gradients", b"{")[0] == 400
    # Several scrapes may land on different workers; in multiprocess mode each shows the sum over all of them.
    for _ in range(4):
        text = request(base + "/metrics")[2].decode()
        line = next(l for l in text.splitlines()
                    if l.startswith("gradient_http_requests_total{") and 'route="/v1/gradients"' in l
                    and 'status="200"' in l)
        assert float(line.rsplit(" ", 1)[1]) == n
        assert 'gradient_rejected_requests_total{reason="malformed-json"} 1.0' in text


def test_logs_are_json_lines_with_request_ids(server):
    base, log = server
    request(base + "/v1/gradients", EXAMPLE, {"X-Request-ID": "log-check-1"})
    time.sleep(0.3)
    lines = [l for l in log.read_text().splitlines() if l.strip()]
    entries = [json.loads(l) for l in lines]  # every line parses as JSON
    access = [e for e in entries if e.get("request_id") == "log-check-1"]
    assert access and access[0]["path"] == "/v1/gradients" and access[0]["status"] == 200
    assert access[0]["duration_ms"] >= 0 and access[0]["method"] == "POST"
    assert any("no API keys configured" in e["message"] for e in entries)
    assert any("2 workers" in e["message"] for e in entries)


def test_invalid_configuration_stops_the_start_with_a_message(tmp_path):
    proc, base, log = start(tmp_path, GRADIENT_WORKERS="zero")
    assert proc.wait(timeout=30) != 0
    assert "GRADIENT_WORKERS" in log.read_text()


def test_graceful_shutdown_on_sigterm(tmp_path):
    proc, base, log = start(tmp_path, GRADIENT_WORKERS="1")
    wait_ready(proc, base, log)
    assert stop(proc) == 0


def chunked_post(base: str, body: bytes, chunk: int = 4096) -> tuple[int, dict]:
    """POST with Transfer-Encoding: chunked (no Content-Length), as streaming clients send."""
    import http.client
    from urllib.parse import urlsplit

    url = urlsplit(base)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
    conn.request("POST", "/v1/gradients", body=(body[i:i + chunk] for i in range(0, len(body), chunk)),
                 headers={"Content-Type": "application/json"}, encode_chunked=True)
    r = conn.getresponse()
    parsed = json.loads(r.read())
    conn.close()
    return r.status, parsed


def test_chunked_bodies_obey_the_size_limit(tmp_path):
    limit = 100_000
    proc, base, log = start(tmp_path, GRADIENT_WORKERS="1", GRADIENT_MAX_BODY_BYTES=str(limit))
    try:
        wait_ready(proc, base, log)
        # A valid request padded with spaces: just under the limit it is served, one byte over it is a 413, and
        # neither is cut at the limit and parsed.
        under = EXAMPLE.rstrip() + b" " * (limit - len(EXAMPLE.rstrip()))
        status, body = chunked_post(base, under)
        assert len(under) == limit and status == 200 and body["cost"] == pytest.approx(0.676733526293133, rel=1e-15)
        status, body = chunked_post(base, under + b" ")
        assert status == 413 and body["errors"][0]["location"] == "body", body
        status, body = chunked_post(base, EXAMPLE + b" " * (3 * limit))
        assert status == 413, body
    finally:
        stop(proc)


# --------------------------------------------------------------------------------------------- hardening (issue 7)
def raw_exchange(base: str, data: bytes, timeout: float = 15) -> tuple[float, bytes]:
    """Send ``data`` on a fresh connection, read until the server closes it; (seconds taken, bytes received)."""
    url = urllib.parse.urlsplit(base)
    start = time.monotonic()
    with socket.create_connection((url.hostname, url.port), timeout=timeout) as s:
        s.sendall(data)
        received = b""
        while chunk := s.recv(65536):
            received += chunk
    return time.monotonic() - start, received


def parse_response(raw: bytes) -> tuple[int, dict, bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def assert_problem(raw: bytes, status: int, location: str | None = None) -> dict:
    code, headers, body = parse_response(raw)
    assert code == status, raw[:400]
    assert headers["content-type"] == "application/problem+json", raw[:400]
    problem = json.loads(body)
    assert problem["status"] == status and problem["errors"], problem
    assert problem["request_id"] == headers["x-request-id"]
    if location is not None:
        assert problem["errors"][0]["location"] == location, problem
    return problem


@pytest.fixture(scope="module")
def short_deadlines(tmp_path_factory):
    """One server for the protocol tests: 2 workers, 2 s header and body deadlines."""
    proc, base, log = start(tmp_path_factory.mktemp("deadlines"), GRADIENT_WORKERS="2", GRADIENT_HEADER_TIMEOUT="2",
                            GRADIENT_BODY_TIMEOUT="2")
    try:
        wait_ready(proc, base, log)
        yield base, log
    finally:
        stop(proc)


POST_CHUNKED = (b"POST /v1/gradients HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n")


def test_bad_chunk_size_is_a_400_problem(short_deadlines):
    base, log = short_deadlines
    _, raw = raw_exchange(base, POST_CHUNKED + b"zz\r\n{}\r\n0\r\n\r\n")
    problem = assert_problem(raw, 400, "body")
    assert "chunk" in problem["detail"] and problem["errors"][0]["type"] == "malformed_chunked_body"
    time.sleep(0.2)
    assert "Traceback" not in log.read_text()


@pytest.mark.parametrize("tail, status, kind", [
    (b"40\r\n{\"layers\": ", 408, "body_timeout"),   # stalls mid-chunk: the body deadline answers
    (b"10\r\n{\"layers\": [], \"\r\n", 408, "body_timeout"),   # stalls before the next chunk
])
def test_stalled_chunked_body_is_answered_within_the_body_timeout(short_deadlines, tail, status, kind):
    base, log = short_deadlines
    took, raw = raw_exchange(base, POST_CHUNKED + tail)
    problem = assert_problem(raw, status, "body")
    assert problem["errors"][0]["type"] == kind
    assert 1.5 < took < 5, took


def test_truncated_chunked_body_is_a_400_when_the_client_stops_sending(short_deadlines):
    base, _ = short_deadlines
    url = urllib.parse.urlsplit(base)
    with socket.create_connection((url.hostname, url.port), timeout=10) as s:
        s.sendall(POST_CHUNKED + b"40\r\n{\"layers\": ")
        s.shutdown(socket.SHUT_WR)  # the client is done sending, in the middle of a chunk
        raw = b""
        while chunk := s.recv(65536):
            raw += chunk
    assert assert_problem(raw, 400, "body")["errors"][0]["type"] == "truncated_body"


def test_slow_headers_get_a_408_and_a_silent_connection_is_closed(short_deadlines):
    base, _ = short_deadlines
    took, raw = raw_exchange(base, b"POST /v1/gradients HTTP/1.1\r\nHost: t\r\n")
    assert_problem(raw, 408, "headers")
    assert 1.5 < took < 5, took
    took, raw = raw_exchange(base, b"")
    assert raw == b"" and took < 5


@pytest.mark.parametrize("request_bytes, status, location", [
    (b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\nHost: t\r\n\r\n", 414, "path"),
    (b"GET /healthz HTTP/1.1\r\nHost: t\r\nBad Header: x\r\n\r\n", 400, "headers"),
    (b"GET /healthz HTTP/1.1\r\nHost: t\r\nExpect: something\r\n\r\n", 417, "header.Expect"),
    (b"GET /healthz HTTP/1.1\r\nHost: t\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(120)) + b"\r\n", 431,
     "headers"),
    (b"POST /v1/gradients HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: foo\r\n\r\n", 501, "header.Transfer-Encoding"),
    (b"GET /healthz HTTP/9.9\r\nHost: t\r\n\r\n", 400, "request-line"),
], ids=["414", "400-header", "417", "431", "501", "400-version"])
def test_protocol_errors_answered_by_gunicorn_are_problem_json(short_deadlines, request_bytes, status, location):
    base, log = short_deadlines
    _, raw = raw_exchange(base, request_bytes)
    assert_problem(raw, status, location)


def dribble(base: str, head: bytes, stop_at: float, results: list) -> None:
    """Send ``head`` one byte a second until ``stop_at``, then close (a slowloris client)."""
    url = urllib.parse.urlsplit(base)
    try:
        with socket.create_connection((url.hostname, url.port), timeout=10) as s:
            for byte in head:
                if time.monotonic() >= stop_at:
                    break
                s.sendall(bytes([byte]))
                time.sleep(1.0)
        results.append("ok")
    except OSError as exc:  # the server may cut a dribbler off: that is allowed
        results.append(repr(exc))


def test_slow_clients_do_not_starve_normal_requests(tmp_path):
    """20 connections dribbling headers or bodies at 1 byte/s for 5 s; meanwhile normal requests keep their p99
    under 1 s (bench/slow_clients.py runs the same for 60 s). On the sync workers, two dribblers held both."""
    import threading

    proc, base, log = start(tmp_path, GRADIENT_WORKERS="2")
    try:
        wait_ready(proc, base, log)
        stop_at = time.monotonic() + 5
        body_head = (b"POST /v1/gradients HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100000\r\n\r\n" + b" " * 100)
        heads = [b"POST /v1/gradients HTTP/1.1\r\nHost: t\r\nX-Slow: " + b"x" * 100] * 10 + [body_head] * 10
        results: list = []
        threads = [threading.Thread(target=dribble, args=(base, h, stop_at, results)) for h in heads]
        for t in threads:
            t.start()
        time.sleep(1.0)  # every dribbler is connected and has sent its first bytes
        latencies = []
        while time.monotonic() < stop_at - 0.3:
            t0 = time.monotonic()
            status, _, body = request(base + "/v1/gradients", EXAMPLE)
            latencies.append(time.monotonic() - t0)
            assert status == 200 and json.loads(body)["cost"] == pytest.approx(0.676733526293133, rel=1e-15)
        for t in threads:
            t.join(timeout=15)
        latencies.sort()
        p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]
        assert len(latencies) >= 20 and p99 < 1.0, (len(latencies), p99)
        assert len(results) == 20
    finally:
        stop(proc)


def test_workers_restart_after_max_requests_one_at_a_time_under_slow_uploads(tmp_path):
    """Both workers reach max_requests while slow uploads hold connections on each: a restarting worker stops
    accepting and waits for its uploads, so two at once left nobody accepting (every new connection stalled for
    seconds). One at a time, normal requests keep being answered; the restarts still happen."""
    import threading

    proc, base, log = start(tmp_path, GRADIENT_WORKERS="2", GRADIENT_MAX_REQUESTS="40",
                            GRADIENT_MAX_REQUESTS_JITTER="0", GRADIENT_LOG_LEVEL="info")
    try:
        wait_ready(proc, base, log)
        stop_at = time.monotonic() + 8
        body_head = (b"POST /v1/gradients HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100000\r\n\r\n" + b" " * 10)
        results: list = []
        threads = [threading.Thread(target=dribble, args=(base, body_head, stop_at, results)) for _ in range(8)]
        for t in threads:
            t.start()
        time.sleep(1.0)
        latencies = []
        while time.monotonic() < stop_at - 0.5:
            t0 = time.monotonic()
            status, _, _ = request(base + "/healthz")
            latencies.append(time.monotonic() - t0)
            assert status == 200
        for t in threads:
            t.join(timeout=15)
        restarts = log.read_text().count("Autorestarting worker")
        assert restarts >= 1, log.read_text()[-2000:]
        assert len(latencies) >= 80 and max(latencies) < 1.0, (len(latencies), max(latencies), restarts)
    finally:
        stop(proc)


def test_sigterm_turns_readiness_503_while_in_flight_requests_finish(tmp_path):
    """GRADIENT_DRAIN_SECONDS after SIGTERM: /readyz is 503, /healthz and new requests still served, a request in
    flight (its body still arriving) finishes with 200; then gunicorn stops with exit code 0."""
    import threading

    proc, base, log = start(tmp_path, GRADIENT_WORKERS="1", GRADIENT_DRAIN_SECONDS="3")
    try:
        wait_ready(proc, base, log)
        url = urllib.parse.urlsplit(base)
        in_flight: list = []

        def slow_upload():
            with socket.create_connection((url.hostname, url.port), timeout=20) as s:
                s.sendall(b"POST /v1/gradients HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                          b"Content-Length: %d\r\n\r\n" % len(EXAMPLE))
                for i in range(0, len(EXAMPLE), len(EXAMPLE) // 4 + 1):
                    s.sendall(EXAMPLE[i:i + len(EXAMPLE) // 4 + 1])
                    time.sleep(0.6)
                raw = b""
                while chunk := s.recv(65536):
                    raw += chunk
            in_flight.append(raw)

        uploader = threading.Thread(target=slow_upload)
        uploader.start()
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        status, _, body = request(base + "/readyz")
        assert status == 503 and json.loads(body)["status"] == "draining"
        assert request(base + "/healthz")[0] == 200
        assert request(base + "/v1/gradients", EXAMPLE)[0] == 200
        uploader.join(timeout=20)
        code, _, body = parse_response(in_flight[0])
        assert code == 200 and json.loads(body)["cost"] == pytest.approx(0.676733526293133, rel=1e-15)
        assert proc.wait(timeout=30) == 0
        assert "SIGTERM: /readyz answers 503" in log.read_text()
    finally:
        if proc.poll() is None:
            stop(proc)


@pytest.mark.parametrize("threads, worker_class", [("1", "service.worker.GeventWorker"), ("2", "gthread")])
def test_gunicorn_conf_picks_the_gevent_worker_unless_threads_are_asked_for(tmp_path, threads, worker_class):
    env = {**os.environ, "GRADIENT_THREADS": threads, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "m")}
    out = subprocess.run([str(GUNICORN), "-c", str(ROOT / "gunicorn.conf.py"), "--print-config", "service.wsgi:app"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=60).stdout
    config = {k.strip(): v.strip() for k, _, v in (line.partition(" = ") for line in out.splitlines()) if v}
    assert config["worker_class"] == worker_class, out[:2000]
    assert config["keepalive"] == "0"


def test_body_budget_waits_new_bodies_refuses_past_hard_and_never_deadlocks():
    """service.worker.BodyBudget on its own (gevent's hub, no server): the rules that bound the memory of bodies."""
    import gevent
    from werkzeug.exceptions import ServiceUnavailable

    from service.worker import BodyBudget

    budget = BodyBudget(soft=10, hard=20)
    budget.admit(started=False, deadline=time.monotonic() + 1)  # room: admitted at once
    budget.add(12)
    t0 = time.monotonic()
    with pytest.raises(ServiceUnavailable):  # over soft: a new body waits, then gives up at its deadline
        budget.admit(started=False, deadline=time.monotonic() + 0.2)
    assert 0.15 < time.monotonic() - t0 < 2
    budget.admit(started=True, deadline=time.monotonic() + 1)  # a started body never waits below hard
    budget.add(8)
    with pytest.raises(ServiceUnavailable):  # ...and is refused at hard
        budget.admit(started=True, deadline=time.monotonic() + 1)
    waiter = gevent.spawn(budget.admit, False, time.monotonic() + 5)
    gevent.sleep(0.05)
    assert not waiter.ready()  # waiting for room
    budget.release(15)  # 5 left: under soft, the waiter goes on
    waiter.join(timeout=2)
    assert waiter.successful() and budget.used == 5

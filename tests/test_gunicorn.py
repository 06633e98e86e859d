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

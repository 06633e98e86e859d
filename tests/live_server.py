"""A live gunicorn for the client and autograder tests, and small stub servers for what gunicorn does not do on
demand (503 then 200, a slow answer). Everything binds 127.0.0.1 and is stopped by its PID or shut down.

Import the fixtures into a test module (``from tests.live_server import live_url  # noqa: F401``).
"""

from __future__ import annotations

import http.server
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from tests.test_gunicorn import start, stop, wait_ready


@pytest.fixture(scope="module")
def live_url(tmp_path_factory) -> Iterator[str]:
    """The base URL of gunicorn with gunicorn.conf.py and 2 workers (1 BLAS thread each), for the module."""
    proc, base, log = start(tmp_path_factory.mktemp("gunicorn"), GRADIENT_WORKERS="2", GRADIENT_LOG_LEVEL="warning")
    try:
        wait_ready(proc, base, log)
        yield base
    finally:
        stop(proc)


# One scripted answer: (status, headers, body bytes, seconds to wait before answering).
Answer = tuple[int, dict[str, str], bytes, float]


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        server = self.server
        with server.lock:
            server.requests.append((self.command, self.path, dict(self.headers), body))
            status, headers, content, delay = server.script(len(server.requests) - 1)
        if delay:
            server.stopping.wait(delay)
        self.send_response(status)
        for name, value in {"Content-Type": "application/json", **headers}.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        self.wfile.write(content)

    do_GET = do_POST = _answer

    def log_message(self, *args) -> None:  # quiet
        pass


@contextmanager
def stub_server(script: Callable[[int], Answer], port: int = 0) -> Iterator[tuple[str, list]]:
    """A threaded HTTP server on 127.0.0.1 (``port``, or a free one) answering request n with ``script(n)``;
    yields its URL and the list of requests it received (method, path, headers, body)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), _Handler)
    server.daemon_threads = True
    server.script, server.requests, server.lock = script, [], threading.Lock()
    server.stopping = threading.Event()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", server.requests
    finally:
        server.stopping.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

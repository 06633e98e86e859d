"""The gunicorn worker every shipped way of running the service uses (gunicorn.conf.py names it).

gunicorn's gevent worker, so that a slow client costs a greenlet rather than a whole worker process: with the sync
worker, two clients sending one byte a second held both workers (gunicorn's documentation asks for a buffering
proxy in front of sync workers, or an async worker without one). On top of it:

- read deadlines: the request line and headers must arrive within GRADIENT_HEADER_TIMEOUT of the connection (then
  408, or a plain close when nothing arrived), the body within GRADIENT_BODY_TIMEOUT of the headers (the body
  reader in service/http.py answers 408), and each write of the response must be taken within
  GRADIENT_BODY_TIMEOUT; so no client holds a greenlet or its memory for longer;
- a budget for request bodies being received: one worker now reads many bodies at once, and without a bound a
  thousand connections could each hold up to GRADIENT_MAX_BODY_BYTES. A new body waits while the bodies in flight
  hold 2 x GRADIENT_MAX_BODY_BYTES, and any is refused (503) past 4 x (BodyBudget);
- the errors gunicorn answers itself (400, 408, 414, 417, 431, 501) as RFC 9457 problem+json, like every other
  error of the service, instead of gunicorn's text/html page;
- one worker at a time restarts after its max_requests (service.lifecycle.claim_recycle): a restarting worker
  stops accepting and waits for its open connections, slow uploads included, so two at once left no worker
  accepting for as long as the slowest upload (measured: 5 s stalls of every new connection under slow bodies).

numpy releases nothing to gevent: a computation runs to its end without yielding, so a worker still computes one
request at a time (as the sync worker did) while its other connections wait for their bytes at no cost.
"""

from __future__ import annotations

import datetime
import os
import sys
import time
import uuid

import orjson
from gevent.event import Event
from gunicorn import util
from gunicorn.http import errors as gerrors
from gunicorn.http.wsgi import Response, default_environ
from gunicorn.workers.ggevent import GeventWorker as _GunicornGeventWorker
from werkzeug.exceptions import ServiceUnavailable

from service import lifecycle
from service.config import Settings

# Largest single read of a body: bounds how far the bodies in flight can overshoot their budget (each connection
# that was already waiting in recv() adds at most this much) while keeping large bodies fast to read.
MAX_RECV = 64 * 1024
# What a closing connection reads and discards, at most, of a body nobody will read (see TimedSocket.close).
LINGER_BYTES = 1024 * 1024


class HeaderTimeout(Exception):
    """The request line and headers did not arrive in time; ``received`` bytes of them did."""

    def __init__(self, received: int, seconds: int):
        super().__init__(f"the request line and headers did not arrive within {seconds} s")
        self.received = received


class BodyTimeout(TimeoutError):
    """The body did not arrive in time (a TimeoutError, which the body reader answers with 408)."""


class BodyBudget:
    """Bytes of request bodies that one worker's connections hold at once (read, request not yet answered).

    A body that has not started waits while they are at ``soft`` or more; one that has started never waits (so
    bodies in flight always finish and free their bytes: no deadlock), but is refused once they reach ``hard``.
    Accounting is after each read, so a connection waiting for its next byte holds nothing: slow clients cannot
    use the budget up. Memory held by bodies in flight: at most ``hard`` plus one read (MAX_RECV) per connection.
    """

    def __init__(self, soft: int, hard: int):
        self.soft, self.hard = soft, hard
        self.used = 0
        self._freed = Event()

    def admit(self, started: bool, deadline: float) -> None:
        if started:
            if self.used >= self.hard:
                raise ServiceUnavailable("too many large request bodies are arriving at once; retry in a moment")
            return
        while self.used >= self.soft:
            remaining = deadline - time.monotonic()
            # A fresh Event per release: each waiter wakes on the one it holds and looks at `used` again.
            if remaining <= 0 or not self._freed.wait(remaining):
                raise ServiceUnavailable("too many large request bodies are arriving at once; retry in a moment")

    def add(self, n: int) -> None:
        self.used += n

    def release(self, n: int) -> None:
        self.used -= n
        freed, self._freed = self._freed, Event()
        freed.set()


class TimedSocket:
    """A client socket whose reads end at a deadline: the headers' from the connection's start, then the body's
    from ``start_body()``. Every other attribute is the socket's own."""

    def __init__(self, sock, settings: Settings, budget: BodyBudget):
        self._sock = sock
        self._settings = settings
        self._budget = budget
        self._deadline = time.monotonic() + settings.header_timeout
        self._in_body = False
        self.received = 0  # bytes read in the current phase (headers, then body)

    def __getattr__(self, name):
        return getattr(self._sock, name)

    def start_body(self) -> None:
        self._in_body, self.received = True, 0
        self._deadline = time.monotonic() + self._settings.body_timeout

    def finish(self) -> None:
        """The request is answered: its body's bytes leave the budget."""
        if self._in_body:
            self._budget.release(self.received)
            self._in_body, self.received = False, 0

    def recv(self, size: int, *flags) -> bytes:
        if self._in_body:
            self._budget.admit(self.received > 0, self._deadline)
            size = min(size, MAX_RECV)
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise self._expired()
        self._sock.settimeout(remaining)
        try:
            data = self._sock.recv(size, *flags)
        except TimeoutError:
            raise self._expired() from None
        self.received += len(data)
        if self._in_body:
            self._budget.add(len(data))
        return data

    def _expired(self) -> Exception:
        if self._in_body:
            return BodyTimeout(f"the body did not arrive within {self._settings.body_timeout} s")
        return HeaderTimeout(self.received, self._settings.header_timeout)

    def sendall(self, data, *flags):
        # gevent applies a socket timeout to the whole sendall: a client that stops reading is cut off.
        self._sock.settimeout(self._settings.body_timeout)
        return self._sock.sendall(data, *flags)

    def close(self) -> None:
        # Half-close, let the client's last bytes drain (at most 1 MiB or 2 s), then close: closing with unread
        # bytes in the buffer sends a reset, which can destroy the response before the client reads it (a client
        # still sending the body of a request answered early, say with a 413).
        util.close_graceful(self._sock, timeout=2.0, max_drain=LINGER_BYTES)


# gunicorn's request errors -> status, reason, where in the request (the `location` of the problem's error item).
# First match wins: subclasses before their bases. Any other ParseException is a 400, anything else a 500.
_PROTOCOL_ERRORS = (
    (HeaderTimeout, 408, "Request Timeout", "headers"),
    (gerrors.LimitRequestLine, 414, "URI Too Long", "path"),
    (gerrors.LimitRequestHeaders, 431, "Request Header Fields Too Large", "headers"),
    (gerrors.ExpectationFailed, 417, "Expectation Failed", "header.Expect"),
    (gerrors.UnsupportedTransferCoding, 501, "Not Implemented", "header.Transfer-Encoding"),
    (gerrors.ForbiddenProxyRequest, 403, "Forbidden", "request"),
    # A header the application tried to send, or gunicorn's own configuration: the service's fault.
    ((gerrors.InvalidResponseHeader, gerrors.InvalidResponseHeaderName, gerrors.ConfigurationProblem), 500,
     "Internal Server Error", "request"),
    (gerrors.InvalidRequestMethod, 400, "Bad Request", "method"),
    ((gerrors.InvalidRequestLine, gerrors.InvalidHTTPVersion), 400, "Bad Request", "request-line"),
    ((gerrors.InvalidHeader, gerrors.InvalidHeaderName, gerrors.ObsoleteFolding), 400, "Bad Request", "headers"),
    ((gerrors.InvalidChunkSize, gerrors.ChunkMissingTerminator, gerrors.InvalidChunkExtension), 400,
     "Bad Request", "body"),
    (gerrors.ParseException, 400, "Bad Request", "request"),
)


def classify(exc: BaseException) -> tuple[int, str, str] | None:
    """(status, reason, location) of an error gunicorn met while reading a request; None when it is not one."""
    for kinds, status, reason, location in _PROTOCOL_ERRORS:
        if isinstance(exc, kinds):
            return status, reason, location
    return None


def problem_bytes(status: int, reason: str, detail: str, location: str, path: str | None,
                  request_id: str) -> bytes:
    """A whole HTTP/1.1 response carrying an RFC 9457 problem, shaped as service/errors.py shapes every other."""
    body = orjson.dumps({
        "type": "about:blank", "title": reason, "status": status, "detail": detail, "instance": path,
        "errors": [{"location": location, "message": detail, "type": f"http_{status}"}], "request_id": request_id,
    })
    head = (f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\nContent-Type: application/problem+json\r\n"
            f"Content-Length: {len(body)}\r\nX-Request-ID: {request_id}\r\n\r\n")
    return head.encode("latin-1") + body


class GeventWorker(_GunicornGeventWorker):
    """gunicorn's gevent worker with read deadlines, a body budget and problem+json protocol errors."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.settings = Settings.load()
        self.budget = None  # made in run(), in the worker process, once gevent's hub is set up
        # gunicorn restarts a worker as soon as it reaches max_requests; this one restarts when no other is.
        self.recycle_at, self.max_requests = self.max_requests, sys.maxsize

    def run(self):
        limit = self.settings.max_body_bytes
        self.budget = BodyBudget(soft=2 * limit, hard=4 * limit)
        super().run()

    def handle(self, listener, client, addr):
        super().handle(listener, TimedSocket(client, self.settings, self.budget), addr)

    def handle_request(self, listener_name, req, sock, addr):
        sock.start_body()
        try:
            return super().handle_request(listener_name, req, sock, addr)
        finally:
            sock.finish()
            if self.nr >= self.recycle_at and self.alive and lifecycle.claim_recycle(os.getpid()):
                self.log.info("Autorestarting worker after %d requests", self.nr)
                self.alive = False

    def handle_error(self, req, client, addr, exc):
        kind = classify(exc)
        if kind is None or kind[0] == 500:
            # Not the client's fault: gunicorn logs the traceback; the client still gets a problem, not HTML.
            self.log.exception("Error handling request %s", getattr(req, "uri", "(no URI read)"), exc_info=exc)
            kind = (500, "Internal Server Error", "request")
            detail = "the service failed to handle this request; it has been logged"
        elif isinstance(exc, HeaderTimeout) and exc.received == 0:
            self.log.debug("closing a connection that sent nothing in %d s", self.settings.header_timeout)
            return
        else:
            detail = str(exc) or kind[1]
            self.log.warning("Invalid request from ip=%s: %s", (addr or ("",))[0], detail)
        status, reason, location = kind
        request_id = uuid.uuid4().hex
        if req is None and hasattr(exc, "req"):
            req = exc.req  # the request line was read: the access log can name it
        path = getattr(req, "path", None)
        data = problem_bytes(status, reason, detail, location, path, request_id)
        self._count_rejection(status)
        if req is not None:
            self._log_access(req, client, addr, status, reason, len(data), request_id)
        try:
            util.write_nonblock(client, data)
        except Exception:  # the client is gone: nothing to tell it
            self.log.debug("failed to send a %d problem", status)

    def _log_access(self, req, client, addr, status, reason, length, request_id):
        environ = default_environ(req, client, self.cfg)
        environ["REMOTE_ADDR"], environ["REMOTE_PORT"] = (addr or ("", -1))[0], str((addr or ("", -1))[1])
        resp = Response(req, client, self.cfg)
        resp.status, resp.response_length = f"{status} {reason}", length
        resp.headers = [("X-Request-ID", request_id)]
        self.log.access(resp, req, environ, datetime.timedelta(0))

    @staticmethod
    def _count_rejection(status: int) -> None:
        # Imported here: service.metrics belongs to the worker process (Prometheus multiprocess mode), not the master
        # that imports this module to find the worker class.
        from service import metrics

        if 400 <= status < 500:
            metrics.REJECTED.labels(f"http_{status}").inc()

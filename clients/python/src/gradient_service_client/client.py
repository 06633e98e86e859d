"""``Client`` and ``AsyncClient``: one method per route, numpy in and out, typed errors, retries, in-process mode.

Every route method is ``post(route, body)`` plus a result type: a body is any JSON-able dict (numpy arrays
anywhere, any key name), given whole, as keyword fields, or both (the fields win), so routes and keys the service
adds later need no new client. ``post`` encodes the body with a codec (``JSONCodec``; a binary tensor codec for
the /v2 routes slots in beside it: ``send`` takes the encoded bytes and content type from whichever codec the route
uses, and ``decode`` reads the answer by its media type), sends it with retries, raises a typed error for an error
response, and decodes the rest.

Retries (tenacity): connection errors (refused, reset, closed without an answer, a connect timeout), 429 and 503
only, ``max_retries`` times, with exponential backoff and jitter, waiting at least the ``Retry-After`` the service
sends (and not at all when it asks for longer than ``Backoff.max_retry_after``: the error is raised at once). A
read timeout is not retried: the work may still be running on the server. Every route is a pure computation, so a
repeated POST is safe.

In-process mode (``local=True``): the service's own Flask app (``service.create_app``) runs in this process
behind httpx's WSGI transport, so a request goes through the same validation, engine and serializer as on a
server, and the response bytes are the server's (tests/test_client_local.py checks this against gunicorn).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import httpx
import tenacity

from gradient_service_client import wire
from gradient_service_client.errors import (APIError, ConnectionFailed, RequestTimeout, error_for)
from gradient_service_client.wire import Result

__version__ = "0.1.0"

DEFAULT_TIMEOUT = 60.0
LOCAL_URL = "http://gradient-service.local"
RETRIED_STATUSES = (429, 503)


@dataclass(frozen=True)
class Backoff:
    """Waits between attempts: ``initial * 2**n`` plus up to ``jitter`` seconds, at most ``max``; at least the
    service's ``Retry-After``, unless that is over ``max_retry_after`` (then the error is raised without waiting)."""

    initial: float = 0.5
    max: float = 8.0
    jitter: float = 0.5
    max_retry_after: float = 30.0


class GradientsResult(Result):
    """The answer of POST /v1/gradients: ``cost``, ``AL``, ``gradients`` (also ``grads``), ``caches``, ``warnings``."""

    __slots__ = ()

    @property
    def grads(self) -> Result:
        return self["gradients"]


class JSONCodec:
    """Bodies as JSON (numpy converted, see ``wire``); answers by media type: JSON -> Results and arrays,
    XML and text -> str, anything else -> bytes."""

    content_type = "application/json"

    def encode(self, body: Any) -> bytes:
        return wire.encode(body)

    def decode(self, response: httpx.Response) -> Any:
        media = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if media == "application/json" or media.endswith("+json"):
            return wire.decode(response.content)
        if media.endswith("xml") or media.startswith("text/"):
            return response.text
        return response.content


def merge(body: Mapping[str, Any] | None, fields: Mapping[str, Any]) -> dict[str, Any]:
    """``body`` with ``fields`` laid over it; fields given as None are left out (the service's default holds)."""
    out = dict(body or {})
    out.update({k: v for k, v in fields.items() if v is not None})
    return out


def _local_app(settings: Any) -> Any:
    try:
        from service import create_app
    except ImportError as exc:
        raise ImportError("Client(local=True) runs gradient-service in this process and needs its package "
                          "installed (pip install <path to the gradient-service repository>)") from exc
    return create_app(settings)


class _Routes:
    """The routes, written once for both clients: ``_call`` returns the value (Client) or a coroutine
    (AsyncClient)."""

    def _call(self, method: str, route: str, body: Any, wrap: Callable[[Any], Any]) -> Any:
        raise NotImplementedError

    def gradients(self, body: Mapping[str, Any] | None = None, /, **fields: Any) -> GradientsResult:
        """POST /v1/gradients: cost, AL, every gradient (``result.grads["dW1"]``), caches with
        ``include_caches=True``."""
        return self._call("POST", "/v1/gradients", merge(body, fields), _as(GradientsResult))

    def grade(self, body: Mapping[str, Any] | None = None, /, **fields: Any) -> Result | str:
        """POST /v1/grade: the network plus ``submission`` (or ``submissions``); ``format`` native, gradescope or
        prairielearn (a Result), or junit (the XML text)."""
        return self._call("POST", "/v1/grade", merge(body, fields), _same)

    def gradient_check(self, body: Mapping[str, Any] | None = None, /, **fields: Any) -> Result:
        """POST /v1/gradient-check: central differences of dW and db (the service's, or ``gradients=``)."""
        return self._call("POST", "/v1/gradient-check", merge(body, fields), _same)

    def explain(self, body: Mapping[str, Any] | None = None, /, **fields: Any) -> Result:
        """POST /v1/explain: the last layer's story with the posted numbers."""
        return self._call("POST", "/v1/explain", merge(body, fields), _same)

    def layer_forward(self, body: Mapping[str, Any] | None = None, /, **fields: Any) -> Result:
        """POST /v1/layer/forward: one ``layer`` and its ``A_prev`` -> Z, A, the kind's cache (and state)."""
        return self._call("POST", "/v1/layer/forward", merge(body, fields), _same)

    def layer_backward(self, body: Mapping[str, Any] | None = None, /, **fields: Any) -> Result:
        """POST /v1/layer/backward: one ``layer``, ``A_prev``, ``dA`` (with the cached ``Z``) or ``dZ`` ->
        dA_prev, dZ and the parameters' gradients (dW, db, ...)."""
        return self._call("POST", "/v1/layer/backward", merge(body, fields), _same)

    def network_backward(self, body: Mapping[str, Any] | None = None, /, **fields: Any) -> Result:
        """POST /v1/network/backward: ``layers``, their ``caches`` and ``dAL`` (or AL, Y, cost) -> the course's
        grads (dA0.., dW1.., db1.., dZ1..)."""
        return self._call("POST", "/v1/network/backward", merge(body, fields), _same)

    def cost(self, body: Mapping[str, Any] | None = None, /, **fields: Any) -> Result:
        """POST /v1/cost: ``cost``, ``Y`` and ``AL`` (or the logits ``ZL``) -> cost, dAL, dZL."""
        return self._call("POST", "/v1/cost", merge(body, fields), _same)

    def optimizer_step(self, body: Mapping[str, Any] | None = None, /, **fields: Any) -> Result:
        """POST /v1/optimizer-step: ``optimizer``, ``params``, ``grads`` (and ``state``, ``t``, hyperparameters)
        -> the new params and state."""
        return self._call("POST", "/v1/optimizer-step", merge(body, fields), _same)

    def info(self) -> Result:
        """GET /v1: version, activations, costs, layouts, conventions, limits."""
        return self._call("GET", "/v1", None, _same)


def _same(value: Any) -> Any:
    return value


def _as(cls: type[Result]) -> Callable[[Any], Any]:
    return lambda value: cls(value) if isinstance(value, dict) else value


class _Base(_Routes):
    def __init__(self, base_url: str | None = None, api_key: str | None = None, *, timeout: float = DEFAULT_TIMEOUT,
                 max_retries: int = 2, backoff: Backoff = Backoff(), local: bool = False, settings: Any = None,
                 headers: Mapping[str, str] | None = None,
                 on_retry: Callable[[int, BaseException, float], None] | None = None):
        if local and base_url:
            raise ValueError("give base_url or local=True, not both")
        base_url = LOCAL_URL if local else (base_url or os.environ.get("GRADIENT_SERVICE_URL"))
        if not base_url:
            raise ValueError("no service URL: pass base_url, set GRADIENT_SERVICE_URL, or use local=True")
        if max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        self.base_url, self.local, self.timeout = base_url.rstrip("/"), local, timeout
        self.max_retries, self.backoff, self.on_retry = max_retries, backoff, on_retry
        self.codec = JSONCodec()
        self.headers = {"User-Agent": f"gradient-service-client/{__version__}",
                        "Accept": "application/json, application/problem+json, application/xml"}
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"
        self.headers.update(headers or {})
        self._app = _local_app(settings) if local else None

    def _encoded(self, body: Any, headers: Mapping[str, str] | None,
                 codec: JSONCodec | None) -> tuple[bytes | None, dict[str, str]]:
        """The body's bytes and headers from ``codec`` (default ``self.codec``): where a binary codec plugs in."""
        out = dict(headers or {})
        if body is None:
            return None, out
        codec = codec or self.codec
        out.setdefault("Content-Type", codec.content_type)
        return codec.encode(body), out

    def _retrying(self, cls: type[tenacity.BaseRetrying]) -> tenacity.BaseRetrying:
        return cls(stop=tenacity.stop_after_attempt(self.max_retries + 1), wait=_Wait(self.backoff),
                   retry=tenacity.retry_if_exception(self._retryable), before_sleep=self._before_sleep, reraise=True)

    def _retryable(self, exc: BaseException) -> bool:
        if isinstance(exc, ConnectionFailed):
            return True
        if isinstance(exc, APIError) and exc.status in RETRIED_STATUSES:
            return exc.retry_after is None or exc.retry_after <= self.backoff.max_retry_after
        return False

    def _before_sleep(self, state: tenacity.RetryCallState) -> None:
        if self.on_retry is not None:
            self.on_retry(state.attempt_number, state.outcome.exception(), state.next_action.sleep)

    def _failed(self, exc: httpx.HTTPError, method: str, route: str) -> Exception:
        """httpx's exception -> ours: a timeout waiting for the answer, or a connection that failed."""
        where = f"{method} {self.base_url}{route}"
        if isinstance(exc, httpx.TimeoutException) and not isinstance(exc, httpx.ConnectTimeout):
            return RequestTimeout(f"{where}: no answer within {self.timeout} s ({type(exc).__name__})")
        return ConnectionFailed(f"{where}: {type(exc).__name__}: {exc}")

    @staticmethod
    def _checked(response: httpx.Response) -> httpx.Response:
        if response.status_code >= 400:
            raise error_for(response)
        return response


class _Wait(tenacity.wait.wait_base):
    """Exponential backoff with jitter, and never less than the service's Retry-After."""

    def __init__(self, backoff: Backoff):
        self._exp = (tenacity.wait_exponential(multiplier=backoff.initial, max=backoff.max)
                     + tenacity.wait_random(0, backoff.jitter))

    def __call__(self, state: tenacity.RetryCallState) -> float:
        wait = self._exp(state)
        exc = state.outcome.exception() if state.outcome else None
        retry_after = exc.retry_after if isinstance(exc, APIError) else None
        return max(wait, retry_after) if retry_after is not None else wait


class Client(_Base):
    """A synchronous client. ``Client("http://127.0.0.1:8000")``, ``Client(url, api_key=...)``, or
    ``Client(local=True)`` for the service in this process (``settings``: service settings for it, as
    ``service.create_app`` takes them). Use as a context manager, or call ``close()``."""

    def __init__(self, base_url: str | None = None, api_key: str | None = None, **kwargs: Any):
        super().__init__(base_url, api_key, **kwargs)
        transport = httpx.WSGITransport(app=self._app) if self.local else None
        self._http = httpx.Client(base_url=self.base_url, timeout=self.timeout, headers=self.headers,
                                  transport=transport)

    def send(self, method: str, route: str, body: Any = None, *, headers: Mapping[str, str] | None = None,
             codec: JSONCodec | None = None) -> httpx.Response:
        """One request with retries: the response, or a typed error (``APIError`` subclasses, ``ConnectionFailed``,
        ``RequestTimeout``). ``codec`` encodes the body (default: the client's, JSON)."""
        content, hdrs = self._encoded(body, headers, codec)
        for attempt in self._retrying(tenacity.Retrying):
            with attempt:
                try:
                    response = self._http.request(method, route, content=content, headers=hdrs)
                except httpx.HTTPError as exc:
                    raise self._failed(exc, method, route) from exc
                self._checked(response)
        return response

    def post(self, route: str, body: Any = None, **fields: Any) -> Any:
        """POST any route: the decoded answer (Results and ndarrays for JSON, str for XML)."""
        return self.codec.decode(self.send("POST", route, merge(body, fields)))

    def get(self, route: str) -> Any:
        return self.codec.decode(self.send("GET", route))

    def _call(self, method: str, route: str, body: Any, wrap: Callable[[Any], Any]) -> Any:
        return wrap(self.codec.decode(self.send(method, route, body)))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class _AsyncWSGITransport(httpx.AsyncBaseTransport):
    """The in-process app for the async client: each request runs in a worker thread (the app is synchronous)."""

    def __init__(self, app: Any):
        self._sync = httpx.WSGITransport(app=app)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        import anyio

        await request.aread()

        def run() -> tuple[int, list, bytes]:
            response = self._sync.handle_request(request)
            return response.status_code, response.headers.raw, response.read()

        status, headers, content = await anyio.to_thread.run_sync(run)
        return httpx.Response(status, headers=headers, content=content)


class AsyncClient(_Base):
    """The asynchronous twin of ``Client``: the same constructor and methods, each awaited."""

    def __init__(self, base_url: str | None = None, api_key: str | None = None, **kwargs: Any):
        super().__init__(base_url, api_key, **kwargs)
        transport = _AsyncWSGITransport(self._app) if self.local else None
        self._http = httpx.AsyncClient(base_url=self.base_url, timeout=self.timeout, headers=self.headers,
                                       transport=transport)

    async def send(self, method: str, route: str, body: Any = None, *, headers: Mapping[str, str] | None = None,
                   codec: JSONCodec | None = None) -> httpx.Response:
        content, hdrs = self._encoded(body, headers, codec)
        async for attempt in self._retrying(tenacity.AsyncRetrying):
            with attempt:
                try:
                    response = await self._http.request(method, route, content=content, headers=hdrs)
                except httpx.HTTPError as exc:
                    raise self._failed(exc, method, route) from exc
                self._checked(response)
        return response

    async def post(self, route: str, body: Any = None, **fields: Any) -> Any:
        return self.codec.decode(await self.send("POST", route, merge(body, fields)))

    async def get(self, route: str) -> Any:
        return self.codec.decode(await self.send("GET", route))

    async def _call(self, method: str, route: str, body: Any, wrap: Callable[[Any], Any]) -> Any:
        return wrap(self.codec.decode(await self.send(method, route, body)))

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

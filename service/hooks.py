"""Per-request plumbing around every route: request id, API keys and their policies, rate limits, metrics, CORS."""

from __future__ import annotations

import hmac
import math
import re
import time
import uuid
from dataclasses import dataclass

from flask import Flask, g, request
from flask_cors import CORS
from flask_limiter import Limiter
from werkzeug.exceptions import Unauthorized

from schemas.errors import ErrorItem, InvalidRequest
from schemas.policy import Policy, key_id
from service import metrics
from service.config import Settings
from service.wire import oip

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
PROTECTED_PREFIX = "/v1"
PROTECTED_PREFIXES = (PROTECTED_PREFIX, oip.PREFIX)
# Metric labels come from fixed sets only, never from the request: a client sending random methods must not create
# a series per method (the route label is the URL rule, or "unmatched").
METRIC_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


@dataclass(frozen=True)
class Caller:
    """Who sent the request, as far as limits go: the policy that applies and the rate-limit counter's name
    (the key's digest, or the client address for anonymous use)."""

    policy_name: str
    policy: Policy
    rate_key: str


def _key_table(settings: Settings) -> list[tuple[bytes, Caller]]:
    """Every configured key with its caller: GRADIENT_API_KEYS under the default policy, each policy's own keys."""
    table = [(k.get_secret_value().encode(), Caller("default", settings.default_policy, "key:" + key_id(k.get_secret_value())))
             for k in settings.api_keys]
    for name, policy in settings.policies.items():
        table += [(k.get_secret_value().encode(), Caller(name, policy, "key:" + key_id(k.get_secret_value())))
                  for k in policy.keys]
    return table


def _match(given: str, table: list[tuple[bytes, Caller]]) -> Caller | None:
    # Compare with every key (no early exit) in constant time per key.
    given_bytes = given.encode()
    found = None
    for key, caller in table:
        if hmac.compare_digest(given_bytes, key):
            found = caller
    return found


def _is_protected(path: str) -> bool:
    """/v1 routes and the Open Inference Protocol's /v2 routes, whose inference answers what /v1/gradients does;
    the protocol's health probes stay open, as /healthz and /readyz do."""
    return any(path == p or path.startswith(p + "/") for p in PROTECTED_PREFIXES) and not oip.is_health_path(path)


def install(app: Flask, settings: Settings) -> None:
    table = _key_table(settings)

    @app.before_request
    def _start():
        g.start = time.perf_counter()
        incoming = request.headers.get("X-Request-ID", "")
        g.request_id = incoming if _REQUEST_ID.match(incoming) else uuid.uuid4().hex
        if request.method == "OPTIONS":
            return None
        path = request.path
        if not table:
            g.caller = Caller("default", settings.default_policy, "address:" + (request.remote_addr or "unknown"))
        elif _is_protected(path) or (path == "/metrics" and settings.metrics_require_key):
            scheme, _, token = request.headers.get("Authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not token:
                raise Unauthorized("this route needs an API key: send Authorization: Bearer <key>")
            g.caller = _match(token.strip(), table)
            if g.caller is None:
                raise Unauthorized("the API key is not valid")
        caller = g.get("caller")
        if (caller is not None and caller.policy.routes is not None and _is_protected(path)
                and path not in caller.policy.routes):
            raise InvalidRequest([ErrorItem(location="path", type="policy_forbidden",
                                            message=f"this key's policy {caller.policy_name!r} allows only "
                                                    f"{', '.join(caller.policy.routes)}")],
                                 status=403, title="Not allowed by this key's policy", slug="policy-forbidden")
        return None

    _install_limiter(app, settings)

    @app.after_request
    def _finish(response):
        response.headers["X-Request-ID"] = g.get("request_id", "")
        route = request.url_rule.rule if request.url_rule is not None else "unmatched"
        status = response.status_code
        method = request.method if request.method in METRIC_METHODS else "other"
        metrics.REQUESTS.labels(route, method, str(status)).inc()
        if "start" in g:
            metrics.LATENCY.labels(route).observe(time.perf_counter() - g.start)
        if request.content_length:
            metrics.BODY_BYTES.labels(route).observe(request.content_length)
        if 400 <= status < 500:
            metrics.REJECTED.labels(g.get("reject_reason", f"http_{status}")).inc()
        return response

    if settings.cors_origins:
        CORS(app, origins=settings.cors_origins, allow_headers=["Content-Type", "Authorization", "X-Request-ID"],
             expose_headers=["X-Request-ID"], methods=["GET", "POST", "OPTIONS"], max_age=600, vary_header=True,
             # No Origin, no CORS request: send nothing (flask-cors would list every allowed origin).
             always_send=False)

        @app.after_request
        def _vary_on_origin(response):
            # The answer depends on Origin whether or not it is allowed: caches must key on it.
            response.vary.add("Origin")
            return response


def _rate_limit() -> str | None:
    """The rate limit of this request's caller: its policy's, on the protected (/v1, /v2) routes only."""
    caller = g.get("caller")
    if caller is None or caller.policy.rate_limit is None or not _is_protected(request.path):
        return None
    return caller.policy.rate_limit


def _on_breach(limit) -> None:
    # Remembered for the 429's Retry-After (service.errors): seconds until the window frees a request.
    g.retry_after = max(1, math.ceil(limit.reset_at - time.time()))
    g.rate_limit_text = str(limit.limit)


def _install_limiter(app: Flask, settings: Settings) -> Limiter:
    """flask-limiter, counting each caller's /v1 requests against its policy's ``rate_limit`` in one budget
    shared by every route (an application limit), in GRADIENT_RATE_LIMIT_STORAGE: per process with memory://,
    shared by every worker and replica with redis://. A moving window: at most N requests in any window.
    Store errors surface as ``limits.errors.StorageError`` (a 503 in service.errors), never as a hang: redis
    connections time out after 2 s."""
    options: dict = {"wrap_exceptions": True}
    if settings.rate_limit_storage.startswith(("redis://", "rediss://", "redis+unix://")):
        options.update(socket_timeout=2, socket_connect_timeout=2)
    limiter = Limiter(key_func=lambda: g.caller.rate_key, app=app, storage_uri=settings.rate_limit_storage,
                      storage_options=options, strategy="moving-window", application_limits=[_rate_limit],
                      on_breach=_on_breach, key_prefix="gradient-service", headers_enabled=False)
    limiter.request_filter(lambda: _rate_limit() is None)
    return limiter

"""Per-request plumbing around every route: request id, API keys, metrics, CORS."""

from __future__ import annotations

import hmac
import re
import time
import uuid

from flask import Flask, g, request
from flask_cors import CORS
from werkzeug.exceptions import Unauthorized

from service import metrics
from service.config import Settings

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
PROTECTED_PREFIX = "/v1"
# Metric labels come from fixed sets only, never from the request: a client sending random methods must not create
# a series per method (the route label is the URL rule, or "unmatched").
METRIC_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def _key_matches(given: str, keys: list[bytes]) -> bool:
    # Compare with every key (no early exit) in constant time per key.
    given_bytes = given.encode()
    found = False
    for key in keys:
        found |= hmac.compare_digest(given_bytes, key)
    return found


def install(app: Flask, settings: Settings) -> None:
    keys = [k.get_secret_value().encode() for k in settings.api_keys]

    @app.before_request
    def _start():
        g.start = time.perf_counter()
        incoming = request.headers.get("X-Request-ID", "")
        g.request_id = incoming if _REQUEST_ID.match(incoming) else uuid.uuid4().hex
        if not keys or request.method == "OPTIONS":
            return None
        path = request.path
        needs_key = path == PROTECTED_PREFIX or path.startswith(PROTECTED_PREFIX + "/") or (
            path == "/metrics" and settings.metrics_require_key)
        if needs_key:
            scheme, _, token = request.headers.get("Authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not token:
                raise Unauthorized("this route needs an API key: send Authorization: Bearer <key>")
            if not _key_matches(token.strip(), keys):
                raise Unauthorized("the API key is not valid")
        return None

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

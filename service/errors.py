"""The one place that turns errors into responses: RFC 9457 problem details as application/problem+json."""

from __future__ import annotations

import logging

import orjson
from flask import Flask, Response, current_app, g, request
from flask_limiter import RateLimitExceeded
from limits.errors import StorageError
from werkzeug.exceptions import HTTPException

from schemas.errors import PROBLEM_TYPE_PREFIX, ErrorItem, InvalidRequest
from service.engine import NumericalOverflow
from service.wire import oip

log = logging.getLogger(__name__)

MAX_LISTED_ERRORS = 100


def problem_response(status: int, title: str, detail: str, errors: list[ErrorItem] = (),
                     slug: str | None = None, headers: dict | None = None) -> Response:
    g.reject_reason = slug or f"http_{status}"
    if request.path == oip.PREFIX or request.path.startswith(oip.PREFIX + "/"):
        # The Open Inference Protocol's error body: {"error": text}, the same status, the located problems in
        # the text under the protocol's names (inputs, parameters).
        return Response(orjson.dumps({"error": oip.error_text(detail, errors)}), status=status, headers=headers,
                        mimetype="application/json")
    body = {
        "type": PROBLEM_TYPE_PREFIX + slug if slug else "about:blank",
        "title": title,
        "status": status,
        "detail": detail,
        "instance": request.path,
        "errors": [e.model_dump() for e in errors[:MAX_LISTED_ERRORS]],
        "request_id": g.get("request_id"),
    }
    return Response(orjson.dumps(body), status=status, headers=headers,
                    mimetype="application/problem+json")


def _invalid_request(exc: InvalidRequest) -> Response:
    n = len(exc.errors)
    shown = "" if n <= MAX_LISTED_ERRORS and not exc.truncated else f" (the first {min(n, MAX_LISTED_ERRORS)} are listed)"
    first = f"{exc.errors[0].location}: {exc.errors[0].message}" if n else exc.title
    count = f"at least {n + 1}" if exc.truncated else str(n)
    detail = first if n == 1 and not exc.truncated else f"{count} problems in the request{shown}; first: {first}"
    return problem_response(exc.status, exc.title, detail, exc.errors, slug=exc.slug)


def _overflow(exc: NumericalOverflow) -> Response:
    location = exc.location or ("cost" if exc.stage == "cost" else f"layers[{exc.layer - 1}]")
    item = ErrorItem(location=location, type="numerical_overflow",
                     message=f"the {exc.stage} overflows float64 at {exc.quantity}; scale down the weights or inputs")
    return _invalid_request(InvalidRequest([item], title="Numerical overflow", slug="numerical-overflow"))


def _http_error(exc: HTTPException) -> Response:
    code = exc.code or 500
    headers = {}
    if code == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="gradient-service"'
    if code == 405 and exc.valid_methods:
        headers["Allow"] = ", ".join(exc.valid_methods)
    location = {401: "header.Authorization", 404: "path", 405: "method", 413: "body", 415: "header.Content-Type"}.get(code, "request")
    detail = exc.description or exc.name
    if code == 413:
        detail = f"the body is larger than this service's limit of {current_app.config['MAX_CONTENT_LENGTH']} bytes"
    return problem_response(code, exc.name, detail, [ErrorItem(location=location, message=detail, type=f"http_{code}")],
                            headers=headers)


def _rate_limited(exc: RateLimitExceeded) -> Response:
    # Raised by flask-limiter (service.hooks), which left the window's reset time and the limit in g.
    caller = g.get("caller")
    keyed = caller is not None and caller.rate_key.startswith("key:")
    whose = f"this key's policy {caller.policy_name!r}" if keyed else "the policy of anonymous use"
    retry = g.get("retry_after", 1)
    detail = f"over the rate limit of {whose} ({g.get('rate_limit_text', exc.description)}): retry after {retry} s"
    item = ErrorItem(location="header.Authorization" if keyed else "request", message=detail, type="rate_limited")
    return problem_response(429, "Too Many Requests", detail, [item], slug="rate-limited",
                            headers={"Retry-After": str(retry)})


def _store_down(exc: StorageError) -> Response:
    # Fail closed: without its counter a rate limit cannot be kept, and a 500 would say the request was at fault.
    log.error("rate-limit store unreachable: %s: %s", type(exc.storage_error).__name__, exc.storage_error)
    detail = "the rate-limit store (GRADIENT_RATE_LIMIT_STORAGE) cannot be reached; retry later"
    return problem_response(503, "Service Unavailable", detail,
                            [ErrorItem(location="request", message=detail, type="rate_limit_store_unavailable")],
                            slug="rate-limit-store-unavailable", headers={"Retry-After": "5"})


def _unexpected(exc: Exception) -> Response:
    # The traceback goes to the log, never to the client.
    log.exception("unhandled error on %s %s", request.method, request.path)
    return problem_response(500, "Internal Server Error", "the service failed to handle this request; it has been logged")


def register_error_handlers(app: Flask) -> None:
    app.register_error_handler(InvalidRequest, _invalid_request)
    app.register_error_handler(NumericalOverflow, _overflow)
    app.register_error_handler(RateLimitExceeded, _rate_limited)
    app.register_error_handler(StorageError, _store_down)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected)

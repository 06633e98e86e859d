"""Typed errors: one class per kind of failure, each carrying what the service said.

Every error response of the service is an RFC 9457 problem (``application/problem+json``) with located
``errors[]``; ``APIError`` keeps all of it: ``status``, ``type``, ``title``, ``detail``, ``errors`` (a list of
``ErrorItem(location, message, type)``), ``request_id``, and the raw ``problem`` and ``response``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import httpx


class GradientServiceError(Exception):
    """Base class of every error this client raises."""


class ConnectionFailed(GradientServiceError):
    """The service could not be reached (refused, reset, closed without an answer), after the retries."""


class RequestTimeout(GradientServiceError, TimeoutError):
    """No answer within the client's timeout. Not retried: the work may still be running on the server."""


@dataclass(frozen=True)
class ErrorItem:
    """One located problem of a request: where (``layers[1].W``, ``submission.dW1[0][1]``), why, and a stable code."""

    location: str
    message: str
    type: str

    def __str__(self) -> str:
        return f"{self.location}: {self.message}"


class APIError(GradientServiceError):
    """An error response (4xx or 5xx)."""

    def __init__(self, response: httpx.Response):
        self.response = response
        self.status: int = response.status_code
        self.problem: dict[str, Any] = _problem(response)
        self.type: str = self.problem.get("type", "about:blank")
        self.title: str = self.problem.get("title", response.reason_phrase or "HTTP error")
        self.detail: str = self.problem.get("detail", "")
        self.request_id: str | None = self.problem.get("request_id") or response.headers.get("X-Request-ID")
        self.errors: list[ErrorItem] = [ErrorItem(str(e.get("location", "")), str(e.get("message", "")),
                                                  str(e.get("type", "")))
                                        for e in self.problem.get("errors") or [] if isinstance(e, dict)]
        super().__init__(self._text())

    @property
    def retry_after(self) -> float | None:
        """Seconds from the ``Retry-After`` header (429, 503), when it is a number."""
        value = self.response.headers.get("Retry-After")
        try:
            return max(0.0, float(value)) if value is not None else None
        except ValueError:
            return None

    def _text(self) -> str:
        head = f"{self.status} {self.title}"
        if len(self.errors) <= 1:
            return f"{head}: {self.detail}" if self.detail else head
        lines = [f"{head}: {len(self.errors)} problems"] + [f"  {e}" for e in self.errors]
        return "\n".join(lines)


class BadRequest(APIError):
    """400: the body is not valid JSON."""


class Unauthorized(APIError):
    """401: a key is needed (the service has API keys) or the key is wrong."""


class Forbidden(APIError):
    """403: outside the key's policy (a route, ``reveal``, a tolerance, the batch size); the field is located."""


class NotFound(APIError):
    """404: no such route (a step route of a newer service, say)."""


class PayloadTooLarge(APIError):
    """413: the body is over the service's size limit."""


class UnsupportedMediaType(APIError):
    """415: the body was not sent as JSON."""


class ValidationError(APIError):
    """422: the body parsed but is invalid; ``errors`` lists every located problem."""


class RateLimited(APIError):
    """429: over the key's rate limit; ``retry_after`` says when a request is free again."""


class ServerError(APIError):
    """500 and other 5xx: the service failed (it logged why; ``request_id`` finds it)."""


class ServiceUnavailable(ServerError):
    """503: not ready, or its rate-limit store is down; retried with backoff."""


_BY_STATUS = {400: BadRequest, 401: Unauthorized, 403: Forbidden, 404: NotFound, 413: PayloadTooLarge,
              415: UnsupportedMediaType, 422: ValidationError, 429: RateLimited, 503: ServiceUnavailable}


def error_for(response: httpx.Response) -> APIError:
    """The typed error of an error response."""
    cls = _BY_STATUS.get(response.status_code, ServerError if response.status_code >= 500 else APIError)
    return cls(response)


def _problem(response: httpx.Response) -> dict[str, Any]:
    """The problem details, or a stand-in built from the status when the body is not one (a proxy's HTML page)."""
    try:
        body = json.loads(response.content)
    except ValueError:
        body = None
    if isinstance(body, dict):
        return body
    text = response.text.strip()
    return {"title": response.reason_phrase or "HTTP error", "detail": text[:500]}

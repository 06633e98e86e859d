"""Prometheus metrics. In multiprocess mode (PROMETHEUS_MULTIPROC_DIR set, as gunicorn.conf.py does) every
worker writes its own samples and ``render()`` merges them, so /metrics is right under several workers."""

from __future__ import annotations

import os

from prometheus_client import (CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Counter, Histogram,
                               generate_latest)

REQUESTS = Counter("gradient_http_requests_total", "HTTP requests by route, method and status.",
                   ["route", "method", "status"])
LATENCY = Histogram("gradient_http_request_duration_seconds", "Time to handle a request, by route.", ["route"],
                    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
BODY_BYTES = Histogram("gradient_http_request_body_bytes", "Request body size in bytes (from Content-Length).",
                       ["route"], buckets=(256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 33554432))
COMPUTE = Histogram("gradient_engine_compute_seconds", "Engine time (forward, cost, backward) per request.",
                    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))
REJECTED = Counter("gradient_rejected_requests_total", "Requests answered with a 4xx, by reason.", ["reason"])


def render() -> tuple[bytes, str]:
    """The exposition text of every worker's samples, and its content type."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = REGISTRY
    return generate_latest(registry), CONTENT_TYPE_LATEST

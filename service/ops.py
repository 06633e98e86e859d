"""Operational routes: health, readiness, metadata, metrics, the OpenAPI document and its docs page."""

from __future__ import annotations

import dataclasses
import math
from importlib.metadata import PackageNotFoundError, version

import numpy as np
from flask import Blueprint, Response, current_app
from flask_swagger_ui import get_swaggerui_blueprint

from schemas.gradients import LAYOUTS, WEIGHT_LAYOUTS
from schemas.meta import ActivationInfo, CostInfo, Health, KindInfo, ServiceInfo, kind_info, optimizer_info
from schemas.step_grading import TASKS
from service import engine, lifecycle, metrics
from service.engine import ACTIVATIONS, COSTS, INTERMEDIATES, KINDS, dense
from service.engine.optimizers import OPTIMIZERS
from service.http import json_response
from service.openapi import build_spec, documented

bp = Blueprint("ops", __name__)

try:
    VERSION = version("gradient-service")
except PackageNotFoundError:  # running from a checkout that was not installed
    VERSION = "0.0.0"


def _readiness_checks() -> dict[str, str]:
    """Two tiny networks whose every number is known in closed form."""
    checks = {}
    # Linear + MSE: Z = [3, 5], J = (9 + 25) / 4, dW = (3*1 + 5*2) / 2, db = (3 + 5) / 2, dA0 = W^T dZ = [6, 10].
    r = engine.compute(np.array([[1.0, 2.0]]), np.zeros((1, 2)), [dense(np.array([[2.0]]), np.array([[1.0]]), "linear")],
                       "mean_squared_error")
    ok = (r.cost == 8.5 and r.grads[0]["W"][0, 0] == 6.5 and r.grads[0]["b"][0, 0] == 4.0
          and r.dA[0].tolist() == [[6.0, 10.0]])
    checks["linear_mse"] = "ok" if ok else "wrong"
    # Sigmoid + BCE at z = 0, y = 1: a = 1/2, J = log 2, dZ = a - y = -1/2.
    r = engine.compute(np.array([[1.0]]), np.ones((1, 1)), [dense(np.zeros((1, 1)), np.zeros((1, 1)), "sigmoid")],
                       "binary_cross_entropy")
    ok = abs(r.cost - math.log(2)) < 1e-15 and r.dZ[0][0, 0] == -0.5 and r.dA[1][0, 0] == -2.0
    checks["sigmoid_bce"] = "ok" if ok else "wrong"
    return checks


@bp.get("/healthz")
@documented("Liveness: the process is up.", response=Health, tags=("operations",))
def healthz():
    return json_response({"status": "ok", "checks": {}})


@bp.get("/readyz")
@documented("Readiness: the engine answers two tiny built-in networks exactly.", response=Health,
            errors=(503,), tags=("operations",),
            description="503 with status `draining` from SIGTERM on (GRADIENT_DRAIN_SECONDS): the service is stopping.")
def readyz():
    if lifecycle.draining():
        # Still serving, but stopping: balancers that probe readiness send new requests elsewhere.
        return json_response({"status": "draining", "checks": {"draining": "shutting down"}}, status=503)
    checks = _readiness_checks()
    ready = all(v == "ok" for v in checks.values())
    return json_response({"status": "ok" if ready else "failing", "checks": checks}, status=200 if ready else 503)


@bp.get("/v1")
@documented("Service version, supported activations and costs (from the engine's registries), active limits.",
            response=ServiceInfo, tags=("metadata",), secured=True)
def info():
    settings = current_app.config["SETTINGS"]
    body = ServiceInfo(
        name="gradient-service",
        version=VERSION,
        activations=[ActivationInfo(name=a.name, formula=a.formula, derivative_formula=a.derivative_formula,
                                    output_only=a.output_only) for a in ACTIVATIONS.values()],
        costs=[CostInfo(name=c.name, formula=c.formula, dA_formula=c.dA_formula, label_domain=c.label_domain,
                        output_domain=c.output_domain,
                        fused_activation=c.fused_activation, fused_formula=c.fused_formula,
                        output_activations=None if c.output_activations is None else sorted(c.output_activations))
               for c in COSTS.values()],
        kinds=[kind_info(kind) for kind in KINDS.values()],
        optimizers=[optimizer_info(unit) for unit in OPTIMIZERS.values()],
        grading_tasks={"gradients": "/v1/gradients", **{name: task.path for name, task in TASKS.items()}},
        layouts=list(LAYOUTS),
        weight_layouts=list(WEIGHT_LAYOUTS),
        intermediates=list(INTERMEDIATES),
        limits={"max_body_bytes": settings.max_body_bytes, **dataclasses.asdict(settings.limits())},
        api_keys_required=bool(settings.api_keys),
    )
    return json_response(body.model_dump())


@bp.get("/metrics")
@documented("Prometheus metrics (text exposition format).", response_media_type="text/plain", tags=("operations",),
            description="Open unless GRADIENT_METRICS_REQUIRE_KEY is set (then a 401 without a key).", errors=(401,))
def prometheus_metrics():
    data, content_type = metrics.render()
    return Response(data, mimetype=None, content_type=content_type)


@bp.get("/openapi.json")
@documented("This OpenAPI 3.1 document.", tags=("metadata",))
def openapi():
    return json_response(build_spec(current_app, VERSION))


def docs_blueprint() -> Blueprint:
    """Swagger UI at /docs, its assets served from the flask-swagger-ui package (no CDN)."""
    # validatorUrl None: Swagger UI would otherwise send the document to an online validator for its badge.
    return get_swaggerui_blueprint("/docs", "/openapi.json",
                                   config={"app_name": "gradient-service", "validatorUrl": None})

"""The Open Inference Protocol v2 REST routes (KServe's, as Triton's and KServe's clients speak them): server and
model metadata, health, and inference with the model ``gradients``, which is /v1/gradients after decoding (one code
path: validation, limits, engine and wire form are service.routes.compute_gradients). The codec, the mapping of the
/v1 body to tensors and parameters, and the error text are service.wire.oip; the error body {"error": ...} is built
in service.errors for every /v2 path. Register with ``app.register_blueprint(oip_routes.bp)``.

Grading (/v1/grade) has no model here: its answer is a report (statuses, diagnoses, points), not tensors, and its
policies (reveal, feedback, tolerances) are /v1's.
"""

from __future__ import annotations

from flask import Blueprint, Response, current_app, request
from pydantic import ValidationError
from werkzeug.exceptions import NotFound

from schemas.gradients import GradientRequest, check_limits
from schemas.limits import Limits
from service import lifecycle, ops
from service.http import json_response, read_body, structure_caps, validated
from service.routes import compute_gradients
from service.wire import json_body, oip

bp = Blueprint("oip", __name__)


def _model(model: str, version: str | None) -> None:
    if model != oip.MODEL:
        raise NotFound(f"unknown model {model!r}: this server's model is {oip.MODEL!r}")
    if version is not None and version != oip.MODEL_VERSION:
        raise NotFound(f"model {model!r} has no version {version!r}: its version is {oip.MODEL_VERSION!r}")


@bp.get("/v2")
def server_metadata():
    return json_response({"name": "gradient-service", "version": ops.VERSION, "extensions": list(oip.EXTENSIONS)})


@bp.get("/v2/health/live")
def live():
    return json_response({"live": True})


@bp.get("/v2/health/ready")
def ready():
    """Ready as /readyz is: the engine answers its two built-in networks exactly, and the server is not draining."""
    ok = not lifecycle.draining() and all(v == "ok" for v in ops._readiness_checks().values())
    return json_response({"ready": ok}, status=200 if ok else 503)


@bp.get("/v2/models/<model>")
@bp.get("/v2/models/<model>/versions/<version>")
def model_metadata(model: str, version: str | None = None):
    _model(model, version)
    return json_response(oip.model_metadata())


@bp.get("/v2/models/<model>/ready")
@bp.get("/v2/models/<model>/versions/<version>/ready")
def model_ready(model: str, version: str | None = None):
    _model(model, version)
    return json_response({"name": model, "ready": True})


@bp.post("/v2/models/<model>/infer")
@bp.post("/v2/models/<model>/versions/<version>/infer")
def infer(model: str, version: str | None = None):
    """Decode (binary or JSON tensors), price every limit from the header, validate and compute as
    /v1/gradients, encode each output as asked. Content-Type is not looked at: the framing is the protocol's."""
    _model(model, version)
    limits = current_app.config["SETTINGS"].limits()
    decoded = oip.parse(read_body(), request.headers.get(oip.HEADER), structure_caps(limits))
    _price_from_header(decoded, limits)
    req = validated(GradientRequest, decoded.to_body())
    header, parts = oip.encode(compute_gradients(req), decoded)
    return _respond(header, parts)


def _price_from_header(decoded: oip.InferRequest, limits: Limits) -> None:
    """Every limit of /v1/gradients, from the header's shapes, before any tensor is read: the request is validated
    with a one-entry array of each tensor's rank, given stand-ins of the declared shapes (zero-stride: no memory)
    and priced by the limits' one implementation. A request that does not validate even so is left to the full
    validation, which reports each of its problems (reading its tensors: no more than the body)."""
    try:
        light = GradientRequest.model_validate(decoded.outline())
    except ValidationError:
        return
    decoded.shape_into(light)
    check_limits(light, limits)


def _respond(header: dict, parts: list) -> Response:
    """JSON alone when no output is binary; else the JSON header, then each binary output's bytes (little-endian
    FP64, row-major), one output at a time, with Inference-Header-Content-Length."""
    if not parts:
        return json_response(header)
    head = json_body.encode(header)

    def stream():
        yield head
        for a in parts:
            yield a.astype("<f8", copy=False).tobytes()

    length = len(head) + sum(a.nbytes for a in parts)
    return current_app.response_class(stream(), status=200, content_type="application/octet-stream",
                                      headers={oip.HEADER: str(len(head)), "Content-Length": str(length)})

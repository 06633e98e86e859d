"""HTTP routes: parse and validate, call the engine, serialize."""

from __future__ import annotations

from pathlib import Path

import orjson
from flask import Blueprint, current_app

from schemas.gradients import GradientRequest, GradientResponse, prepare, to_wire
from service import engine, metrics
from service.http import json_response, parse_body
from service.openapi import documented

bp = Blueprint("gradients", __name__)

EXAMPLES = Path(__file__).parent / "examples"


def _example(name: str) -> dict:
    return orjson.loads((EXAMPLES / name).read_bytes())


@bp.post("/v1/gradients")
@documented(
    "Forward pass, cost and every backprop gradient of the posted network.",
    description="Runs the forward pass, the cost and backpropagation in float64 and returns `cost`, `AL` and "
                "`gradients` (dW1..dWL, db1..dbL, dZ1..dZL, dA0..dAL). See the formulas in the API description.",
    request=GradientRequest, response=GradientResponse, errors=(400, 413, 415, 422), tags=("gradients",),
    secured=True,
    examples={"two_layer_sigmoid_bce": _example("two_layer_sigmoid_bce.json"),
              "three_layer_softmax_examples_first": _example("three_layer_softmax_examples_first.json")})
def gradients():
    """Forward pass, cost and every backprop gradient of the posted network."""
    return json_response(compute_gradients(parse_body(GradientRequest)))


def compute_gradients(req: GradientRequest) -> dict:
    """A validated request -> the /v1/gradients response body (numpy arrays): the cross-field checks and limits,
    the engine, the wire form. Every wire format of the gradients (JSON here, the Open Inference Protocol in
    service.oip_routes) goes through this one function after decoding."""
    prep = prepare(req, current_app.config["SETTINGS"].limits())
    with metrics.COMPUTE.time():
        result = engine.compute(prep.X, prep.Y, prep.layers, req.cost, l2=req.l2, dropout=prep.dropout,
                                intermediates=req.intermediates)
    return to_wire(result, prep, req.include_caches)

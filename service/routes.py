"""HTTP routes: parse and validate, call the engine, serialize."""

from __future__ import annotations

from flask import Blueprint, current_app

from schemas import GradientRequest, prepare, to_wire
from service import engine
from service.http import json_response, parse_body

bp = Blueprint("gradients", __name__)


@bp.post("/v1/gradients")
def gradients():
    """Forward pass, cost and every backprop gradient of the posted network."""
    req = parse_body(GradientRequest)
    prep = prepare(req, current_app.config["SETTINGS"].limits())
    result = engine.compute(prep.X, prep.Y, prep.layers, req.cost, l2=req.l2, dropout=prep.dropout,
                            intermediates=req.intermediates)
    return json_response(to_wire(result, prep, req.include_caches))

"""HTTP routes of the one-step functions: a layer's forward and backward, the cost of an output, an optimizer step.

Each route parses and validates (``schemas.steps``, ``schemas.optimizer``), calls the engine, serializes. Their
grading is /v1/grade with ``task`` (``service.grading_routes``).
"""

from __future__ import annotations

from pathlib import Path

import orjson
from flask import Blueprint, current_app

from schemas import optimizer as opt
from schemas import steps as wire
from service import metrics
from service.engine import steps
from service.http import json_response, parse_body
from service.openapi import documented

bp = Blueprint("steps", __name__)

EXAMPLES = Path(__file__).parent / "examples"


def _example(name: str) -> dict:
    return orjson.loads((EXAMPLES / "steps" / name).read_bytes())


def _limits():
    return current_app.config["SETTINGS"].limits()


@bp.post("/v1/layer/forward")
@documented(
    "One layer's forward pass: Z, A = g(Z) and what the kind's cache keeps.",
    description="The course's linear_forward and linear_activation_forward, conv_forward and pool_forward "
                "(cs231n's affine_forward, batchnorm_forward, layernorm_forward, conv_forward_naive, "
                "max_pool_forward_naive, spatial_batchnorm_forward, spatial_groupnorm_forward) for any layer kind: "
                "`Z` (dense: W A_prev + b), `A` = g(Z), `cache` (the norms: `xhat`, `mean`, `var`, `std`) and, for "
                "batchnorm and spatial_batchnorm, the updated running statistics under `state`. Image kinds take "
                "and return image batches by `image_layout`. The layer's `activation` defaults to `linear`.",
    request=wire.LayerForwardRequest, response=wire.LayerForwardResponse, errors=(400, 413, 415, 422),
    tags=("steps",), secured=True,
    examples={"sigmoid_layer_dlai_test_case": _example("layer_forward.json")})
def layer_forward():
    req = parse_body(wire.LayerForwardRequest)
    prep = wire.prepare_layer(req, _limits())
    with metrics.COMPUTE.time():
        step = steps.layer_forward(prep.layer, prep.A_prev)
    return json_response(wire.forward_to_wire(step, prep))


@bp.post("/v1/layer/backward")
@documented(
    "One layer's backward pass from the learner's cache: dA_prev, dZ and the parameters' gradients.",
    description="The course's linear_backward (send `dZ`) and linear_activation_backward (send `dA` and the cached "
                "`Z`; g'(Z) is evaluated on Z as sent, even where it is not the layer applied to A_prev, as the "
                "course's test cases build their caches), cs231n's affine_backward (`dZ`, `intermediates: mean`, "
                "`layout: examples_first`, `weight_layout: in_out`), conv_backward and pool_backward "
                "(cs231n's conv_backward_naive, max_pool_backward_naive: image batches by `image_layout`), for any "
                "layer kind. Returns `dA_prev`, `dZ` "
                "and d<param> for every parameter (dW = (1/m) dZ A_prev^T under `per_example`, dZ A_prev^T under "
                "`mean`), each in the shape it was sent in.",
    request=wire.LayerBackwardRequest, response=wire.LayerBackwardResponse, errors=(400, 413, 415, 422),
    tags=("steps",), secured=True,
    examples={"linear_activation_backward_dlai_test_case": _example("layer_backward.json"),
              "linear_backward_dlai_test_case": _example("linear_backward.json"),
              "max_pool_backward_naive_with_ties": _example("maxpool_backward.json")})
def layer_backward():
    req = parse_body(wire.LayerBackwardRequest)
    prep = wire.prepare_layer(req, _limits())
    with metrics.COMPUTE.time():
        step = steps.layer_backward(prep.layer, prep.A_prev, dA=prep.dA, dZ=prep.dZ, Z=prep.Z,
                                    intermediates=req.intermediates, l2=req.l2)
    return json_response(wire.backward_to_wire(step, prep))


@bp.post("/v1/cost")
@documented(
    "The cost of an output (AL or its logits ZL), dA_L and dZ_L.",
    description="The course's compute_cost(AL, Y) and compute_cost_with_regularization (`l2` and `weights`): `cost`, "
                "`dAL` (the course's dAL = -(Y/AL - (1-Y)/(1-AL)) for binary cross-entropy) and `dZL` (AL - Y for "
                "the canonical pairs). With AL at exactly 0 or 1 against its label the cost is infinite: a 422 "
                "locates the entry and suggests sending `ZL`, the logits, from which everything is exact.",
    request=wire.CostRequest, response=wire.CostResponse, errors=(400, 413, 415, 422), tags=("steps",),
    secured=True, examples={"compute_cost_dlai_test_case": _example("cost.json")})
def cost():
    req = parse_body(wire.CostRequest)
    prep = wire.prepare_cost(req, _limits())
    with metrics.COMPUTE.time():
        step = wire.compute_cost(prep, req)
    return json_response(wire.cost_to_wire(step, prep))


@bp.post("/v1/optimizer-step")
@documented(
    "One optimizer update: sgd, momentum, rmsprop or adam, in the deeplearning.ai or the cs231n convention.",
    description="The course's update_parameters_with_gd, _with_momentum, _with_adam (and update_lr, "
                "schedule_lr_decay through `learning_rate_decay`), cs231n's sgd, sgd_momentum, rmsprop and adam. "
                "Returns the new `params`, the new `state`, `t` as used, the `learning_rate` used and, for Adam, the "
                "bias-corrected moments. The formulas of each convention are in the README.",
    request=opt.OptimizerStepRequest, response=opt.OptimizerStepResponse, errors=(400, 413, 415, 422),
    tags=("steps",), secured=True, examples={"adam_dlai_test_case": _example("adam.json")})
def optimizer_step():
    req = parse_body(opt.OptimizerStepRequest)
    prep = opt.prepare_optimizer(req, _limits())
    with metrics.COMPUTE.time():
        outcome = opt.run(prep)
    return json_response(opt.outcome_to_wire(outcome))


@bp.post("/v1/network/backward")
@documented(
    "Backpropagation through every layer from the learner's caches (the course's L_model_backward).",
    description="For l = L..1: dZ_l = dA_l * g'(Z_l) with each layer's cached Z, then dA_{l-1} and the gradients "
                "from that layer's own cached input A_prev, used as sent even where the caches are not one "
                "consistent forward pass (the course's test case draws them independently). The upstream gradient "
                "is `dAL`, or the cost's formula of `AL` as cached (with `Y` and `cost`). Returns dA0..dAL, "
                "dZ1..dZL and every parameter's gradient, keyed as the course's grads dictionary.",
    request=wire.NetworkBackwardRequest, response=None, errors=(400, 413, 415, 422), tags=("steps",),
    secured=True, examples={"L_model_backward_dlai_test_case": _example("network_backward.json")})
def network_backward():
    req = parse_body(wire.NetworkBackwardRequest)
    prep = wire.prepare_network(req, _limits())
    with metrics.COMPUTE.time():
        result = steps.backward_from_caches(prep.layers, prep.A_prevs, prep.Zs, prep.dAL,
                                            intermediates=req.intermediates, l2=req.l2)
    return json_response(wire.network_backward_to_wire(result, prep))

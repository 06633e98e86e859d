"""HTTP routes for autograders and learners: grade a submission, gradient-check, explain the last layer.

Each route parses and validates (schemas.grading), calls the engine, serializes. Register with
``app.register_blueprint(grading_routes.bp)``.
"""

from __future__ import annotations

from pathlib import Path

import orjson
from flask import Blueprint, current_app, g

from schemas.explain import ExplainRequest, ExplainResponse, explain_to_wire, prepare_explain
from schemas.gradient_check import (DEFAULT_MAX_FORWARD_PASSES, GradientCheckRequest, GradientCheckResponse,
                                    check_to_wire, prepare_check)
from schemas import junit
from schemas.grading import (MAX_SUBMISSIONS, GradeAnyResponse, GradeRequest, apply_policy, grade_to_wire,
                             prepare_grading)
from schemas.errors import ErrorItem, InvalidRequest
from schemas.policy import Policy
from schemas.step_grading import TASKS, GradeAnyRequest, prepare_step_grading
from service import engine, metrics
from service.engine import explain as explain_engine
from service.engine import gradcheck, grading
from service.http import json_response, parse_body
from service.openapi import documented

bp = Blueprint("grading", __name__)

EXAMPLES = Path(__file__).parent / "examples"


def _network() -> dict:
    """The README's 2 -> 3 -> 1 sigmoid network with binary cross-entropy, as a request body."""
    return orjson.loads((EXAMPLES / "two_layer_sigmoid_bce.json").read_bytes())


# A student who forgot 1/m in dW2, sent db2 as a vector, and sent dZ2 = AL - Y as dA2.
_STUDENT = {
    "cost": 0.676733526293133,
    "dW1": [[0.05453110059066126, -0.046699241899016905], [-0.06590876771264695, 0.0571652310300554],
            [0.03164837549363317, -0.021509315958964492]],
    "dW2": [[0.2735458680743348, 0.17001528034429536, -0.06960193566862144]],
    "db2": [0.09181747225783912],
    "dA2": [[-0.4226574740999922, 0.5507130730376089, -0.35923673607357876, 0.5984510261673186]],
}
GRADE_EXAMPLES = {
    "one_submission_with_mistakes": {**_network(), "submission": _STUDENT,
                                     "points": {"cost": 1, "dW1": 2, "dW2": 2, "db1": 1, "db2": 1, "dA2": 1}},
    "class_batch_gradescope": {**_network(), "submissions": [_STUDENT, {"cost": 0.676733526293133}],
                               "points": {"cost": 1, "dW2": 2}, "format": "gradescope", "rtol": 1e-6},
}
CHECK_EXAMPLES = {
    "full_check": _network(),
    "sampled_submission": {**_network(), "mode": "entries", "samples": 5, "seed": 1, "epsilon": 1e-6,
                           "gradients": {"dW1": _STUDENT["dW1"], "db1": [[0.015346331118994881],
                                                                         [-0.018584187051511207],
                                                                         [0.012871412895237105]],
                                         "dW2": _STUDENT["dW2"], "db2": _STUDENT["db2"]}},
}
EXPLAIN_EXAMPLES = {
    "sigmoid_bce": _network(),
    "saturated_output": {"layers": [{"W": [[40.0]], "b": [[0.0]], "activation": "sigmoid"}],
                         "X": [[1.0, -1.0, 1.0, -1.0]], "Y": [[1, 0, 0, 1]], "cost": "binary_cross_entropy"},
    "sigmoid_mse_not_canonical": {**_network(), "cost": "mean_squared_error"},
}


@bp.post("/v1/grade")
@documented(
    "Grade a student's arrays (or a class's) against the reference, with diagnoses.",
    description="Computes the reference for the posted network once (as POST /v1/gradients does), then grades "
                "`submission` (or each of `submissions`, at most " + str(MAX_SUBMISSIONS) + ") key by key: status, "
                "errors, the worst entry, the course's difference, points, and for a wrong key the mistake its numbers "
                "point to (" + ", ".join(f"`{c}`" for c in grading.DIAGNOSES) + "), each with its evidence, only when "
                "the submission matches that mistake within the tolerance. An entry passes when "
                "|s - r| <= atol + rtol |r| (defaults rtol = 1e-5, atol = 1e-8); null reference entries (not "
                "representable) are not graded, and cost and dA_L also pass where they match the course's formula "
                "evaluated from the rounded A_L. Without `reveal` no number of the response is computed from the "
                "reference but the errors, rounded up to powers of ten (none at all under a policy with "
                "`feedback: status`); with it the reference is sent once, as `reference`. In the batch form each "
                "submission is validated on its own: a malformed one gets a result with `status: invalid` and its "
                "located errors, the others are graded. The batch is priced before any work (422 `limit_exceeded` "
                "over the limits). The API key's policy (a service setting) may forbid `reveal`, bound the "
                "tolerances and the batch size (403 naming the field and the policy) and limit the rate (429 with "
                "Retry-After). `format: gradescope` returns a Gradescope results.json as it is, `format: "
                "prairielearn` a PrairieLearn results.json, `format: junit` JUnit XML (`application/xml`).",
    request=GradeAnyRequest, response=GradeAnyResponse, errors=(400, 403, 413, 415, 422), tags=("grading",),
    response_description="`format: native`: `result` (or `results` in the batch form). `format: gradescope` or "
                         "`prairielearn`: that platform's results.json (or `{\"results\": [...]}`, one per "
                         "submission). `format: junit`: JUnit XML, `application/xml`, a testsuite per submission.",
    other_media={junit.MEDIA_TYPE: {"type": "string", "description": "JUnit XML (`format: junit`)."}},
    secured=True, examples=GRADE_EXAMPLES)
def grade():
    """Grade one submission or a batch against one reference."""
    req = parse_body(_grade_model)
    caller = g.get("caller")  # set by service.hooks from the API key
    effective = apply_policy(req, caller.policy if caller else Policy(), caller.policy_name if caller else "default")
    limits = current_app.config["SETTINGS"].limits()
    tol = effective.tolerance
    if req.task in TASKS:
        ref, subs = prepare_step_grading(TASKS[req.task], req, limits)  # the route's limits, then the grading's
    else:
        prep, subs = prepare_grading(req, limits)  # priced before any work: 422 over the limits
    with metrics.COMPUTE.time():
        if req.task not in TASKS:
            # The mistaken-backprop hypotheses may re-run at most one request's worth of work (GRADIENT_MAX_WORK)
            # and keep at most one pass's worth of numbers (GRADIENT_MAX_ACTIVATIONS); the rest are skipped with a
            # note.
            ref = grading.build_reference(prep.X, prep.Y, prep.layers, req.cost, l2=req.l2, dropout=prep.dropout,
                                          intermediates=req.intermediates, sent=prep.sent, layouts=prep.layouts,
                                          in_shapes=prep.shapes[:-1], variant_work=limits.max_work,
                                          variant_elements=limits.max_activations)
        grades = grading.grade_all(ref, subs.graded, tol, req.points, lenient_shapes=req.shape_policy == "lenient")
    body = grade_to_wire(grades, ref, req, subs, effective)
    if isinstance(body, junit.JUnitXML):
        return current_app.response_class(body, mimetype=junit.MEDIA_TYPE)
    return json_response(body)


def _grade_model(body):
    """The request model of a /v1/grade body: its ``task``'s (absent: ``gradients``, a whole network)."""
    task = body.get("task", "gradients") if isinstance(body, dict) else "gradients"
    if task == "gradients":
        return GradeRequest
    if isinstance(task, str) and task in TASKS:
        return TASKS[task].grade_request
    shown = repr(task) if isinstance(task, str) else "not a string"
    raise InvalidRequest([ErrorItem(location="task", type="unknown_task",
                                    message=f"unknown task {shown[:60]}: the tasks are gradients (the default), "
                                            f"{', '.join(TASKS)}")])


@bp.post("/v1/gradient-check")
@documented(
    "Check the analytic gradients (the service's or yours) by central differences.",
    description="numeric = (J(theta + eps) - J(theta - eps)) / (2 eps) per entry (eps default 1e-7); the course's "
                "difference ||a - n|| / (||a|| + ||n||) overall and per parameter, the worst entries, and pass when it "
                "is <= threshold (default 2e-7). `entries` and `directions` modes sample for large networks. The "
                "forward passes are counted before running and capped (default " + str(DEFAULT_MAX_FORWARD_PASSES)
                + "), and their price, fixed costs per layer included, must stay within GRADIENT_MAX_WORK; dropout "
                "needs its masks, which make J deterministic.",
    request=GradientCheckRequest, response=GradientCheckResponse, errors=(400, 413, 415, 422),
    tags=("grading",), secured=True, examples=CHECK_EXAMPLES)
def gradient_check():
    """Central-difference check of dW and db."""
    req = parse_body(GradientCheckRequest)
    prep, submitted = prepare_check(req, current_app.config["SETTINGS"].limits())
    with metrics.COMPUTE.time():
        grads = submitted
        if grads is None:
            grads = engine.compute(prep.X, prep.Y, prep.layers, req.cost, l2=req.l2, dropout=prep.dropout).grads
        # prepare_check refused any request over its caps; the engine's TooManyPasses is only its own guard.
        res = gradcheck.check(prep.X, prep.Y, prep.layers, req.cost, grads, l2=req.l2, dropout=prep.dropout,
                              epsilon=req.epsilon, threshold=req.threshold, mode=req.mode, samples=req.samples,
                              seed=req.seed, max_passes=req.max_forward_passes, worst=req.worst)
    return json_response(check_to_wire(res, prep, req))


@bp.post("/v1/explain")
@documented(
    "Why the last layer's gradient differs from a hidden layer's, told with your numbers.",
    description="Steps, each a sentence, a LaTeX formula and the numbers of the posted network (the same as POST "
                "/v1/gradients returns): the cost; dA_L from the cost's formula; g'(Z_L); dZ_L = dA_L * g'(Z_L); for "
                "the canonical pairs the fused dZ_L = A_L - Y with the largest difference, and the entries where the "
                "textbook chain rule is infinite or inaccurate (A_L at 0 or 1); for other pairs why no simplification "
                "applies; one hidden layer's dA = W^T dZ and dZ = dA * g'(Z); and why the two differ. Arrays show "
                "their first `units_shown` units and `examples_shown` examples, with their whole shapes.",
    request=ExplainRequest, response=ExplainResponse, errors=(400, 413, 415, 422), tags=("learning",),
    secured=True, examples=EXPLAIN_EXAMPLES)
def explain():
    """The last layer's story with the caller's numbers."""
    req = parse_body(ExplainRequest)
    prep = prepare_explain(req, current_app.config["SETTINGS"].limits())
    with metrics.COMPUTE.time():
        story = explain_engine.explain(prep.X, prep.Y, prep.layers, req.cost, l2=req.l2, dropout=prep.dropout,
                                       intermediates=req.intermediates, hidden_layer=req.hidden_layer,
                                       jacobian_units=req.units_shown)
    return json_response(explain_to_wire(story, prep, req))

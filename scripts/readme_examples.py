#!/usr/bin/env python
"""The README's example outputs, generated from the service: ``python scripts/readme_examples.py`` rewrites every
block between ``<!-- example: NAME -->`` and ``<!-- /example -->``; tests/test_readme.py checks that each block
is what the service answers now.

Numbers are shown to 12 significant digits: the service sends all 17, but the last one or two can change with
the CPU's BLAS kernel (fused multiply-adds, summation order), and the README must stay true on every machine.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DIGITS = 12
BLOCK = re.compile(r"(<!-- example: (?P<name>[a-z0-9_]+) -->\n)(?P<body>.*?)(\n<!-- /example -->)", re.S)


def _round(value):
    if isinstance(value, float):
        return float(f"{value:.{DIGITS}g}")
    if isinstance(value, list):
        return [_round(v) for v in value]
    if isinstance(value, dict):
        return {k: _round(v) for k, v in value.items()}
    return value


def _compact(value, indent: int = 0, column: int = 0) -> str:
    """JSON with objects one key per line (``indent``) and a matrix one row per line when it does not fit on
    one, its rows hanging under the first (``column``: where the value starts)."""
    if isinstance(value, dict):
        if not value:
            return "{}"
        pad = " " * (indent + 2)
        items = []
        for k, v in value.items():
            key = f"{pad}{json.dumps(k)}: "
            items.append(key + _compact(v, indent + 2, len(key)))
        return "{\n" + ",\n".join(items) + "\n" + " " * indent + "}"
    if isinstance(value, list) and value and all(isinstance(v, list) for v in value):
        rows = [json.dumps(v) for v in value]
        joined = "[" + ", ".join(rows) + "]"
        if len(joined) + column <= 118:
            return joined
        return "[" + (",\n" + " " * (column + 1)).join(rows) + "]"
    return json.dumps(value)


def _post(path: str, body: dict) -> dict:
    from service import create_app

    client = create_app().test_client()
    r = client.post(path, json=body, headers={"X-Request-ID": "readme-example"})
    return r.get_json()


def _example(name: str) -> dict:
    return json.loads((ROOT / "examples" / f"{name}.json").read_text())


def _shape_error() -> dict:
    body = _example("two_layer_sigmoid_bce")
    body["layers"][1]["W"] = [[0.1, 0.2]]
    problem = _post("/v1/gradients", body)
    problem.pop("request_id")
    return problem


def _conv_pool_nhwc() -> dict:
    """The image example: cost, the conv layer's gradients in the layout sent, and every gradient's shape."""
    out = _post("/v1/gradients", _example("images/conv_pool_nhwc"))
    g = out["gradients"]
    shapes = {}
    for key, value in g.items():
        shape, v = [], value
        while isinstance(v, list):
            shape.append(len(v))
            v = v[0]
        shapes[key] = shape
    return _round({"cost": out["cost"], "dW1": g["dW1"], "db1": g["db1"], "shapes": shapes})


def _step(name: str) -> dict:
    return json.loads((ROOT / "examples" / "steps" / f"{name}.json").read_text())


def _adam_without_bias_correction() -> dict:
    """The course's Adam test case graded against a student who left out the bias correction (the moments used
    as they are): computed here by hand from the published inputs, not by the service."""
    import numpy as np

    body = _step("adam")
    h = {k: body[k] for k in ("learning_rate", "beta1", "beta2", "epsilon")}
    submission = {"params": {}}
    for name, P in body["params"].items():
        dP = np.array(body["grads"]["d" + name])
        v, s = (1 - h["beta1"]) * dP, (1 - h["beta2"]) * dP * dP
        submission["params"][name] = (np.array(P) - h["learning_rate"] * v / (np.sqrt(s) + h["epsilon"])).tolist()
    graded = _post("/v1/grade", {**body, "task": "optimizer_step", "submission": submission})
    keys = graded["result"]["keys"]
    return {"score": graded["result"]["score"], "max_score": graded["result"]["max_score"],
            "W1": {k: keys[0][k] for k in ("key", "status", "max_abs_error")} | {"diagnosis": {
                k: keys[0]["diagnosis"][k] for k in ("code", "message")}},
            "diagnoses": graded["result"]["diagnoses"]}


def _batchnorm_hinge() -> dict:
    """The cs231n-style network of the layer kinds' section: its cost, the batchnorm layer's gradients and updated
    running statistics, and dW1 in the weight layout sent."""
    out = _post("/v1/gradients", _example("kinds/cs231n_batchnorm_hinge"))
    g = out["gradients"]
    return _round({"cost": out["cost"], "dW1": g["dW1"], "dgamma2": g["dgamma2"], "dbeta2": g["dbeta2"],
                   "state": out["state"]})


EXAMPLES = {
    "two_layer_sigmoid_bce": lambda: _round(_post("/v1/gradients", _example("two_layer_sigmoid_bce"))),
    "shape_error": _shape_error,
    "conv_pool_nhwc": _conv_pool_nhwc,
    "batchnorm_hinge": _batchnorm_hinge,
    "step_layer_backward": lambda: _round(_post("/v1/layer/backward", _step("layer_backward"))),
    "step_maxpool_backward": lambda: _round(_post("/v1/layer/backward", _step("maxpool_backward"))),
    "step_cost": lambda: _round(_post("/v1/cost", _step("cost"))),
    "step_adam": lambda: _round(_post("/v1/optimizer-step", _step("adam"))),
    "step_grade_adam": _adam_without_bias_correction,
}


def render(name: str) -> str:
    return "```json\n" + _compact(EXAMPLES[name]()) + "\n```"


def rewrite(text: str) -> str:
    return BLOCK.sub(lambda m: m.group(1) + render(m.group("name")) + m.group(4), text)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    README.write_text(rewrite(README.read_text()))
    print("README examples rewritten")

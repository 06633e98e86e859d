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


EXAMPLES = {
    "two_layer_sigmoid_bce": lambda: _round(_post("/v1/gradients", _example("two_layer_sigmoid_bce"))),
    "shape_error": _shape_error,
    "conv_pool_nhwc": _conv_pool_nhwc,
}


def render(name: str) -> str:
    return "```json\n" + _compact(EXAMPLES[name]()) + "\n```"


def rewrite(text: str) -> str:
    return BLOCK.sub(lambda m: m.group(1) + render(m.group("name")) + m.group(4), text)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    README.write_text(rewrite(README.read_text()))
    print("README examples rewritten")

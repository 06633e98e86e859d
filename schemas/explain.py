"""POST /v1/explain: the request and response models and the layout edge. The request extends ``GradientRequest``
and goes through its ``prepare``; the engine sees features first only.

The story shows the caller's numbers, not all of them: every array is cut to its first ``units_shown`` units
(rows; both axes of a (units, units) array such as W or the softmax Jacobian) and its first ``examples_shown``
examples, and each step says, per array, the whole shape and the shape shown. The response stays small whatever
the network: a 4096-unit softmax output shows a 16 x 16 block of its Jacobian, not 4096 x 4096.
"""

from __future__ import annotations

from typing import Annotated, Any, Optional

import numpy as np
from pydantic import BaseModel, Field, StrictInt

from schemas.errors import ErrorItem, InvalidRequest
from schemas.gradients import GradientRequest, Prepared, prepare
from schemas.grading import NotUsed
from schemas.limits import Limits
from service.engine import explain as explain_engine

DEFAULT_UNITS_SHOWN = 16
MAX_UNITS_SHOWN = 64


# The body of POST /v1/explain.
class ExplainRequest(GradientRequest):
    hidden_layer: Optional[Annotated[StrictInt, Field(ge=1)]] = Field(
        default=None, description="The hidden layer l (1..L-1) whose rule dA_l = W_(l+1)^T dZ_(l+1) is shown; default L-1.")
    examples_shown: Annotated[StrictInt, Field(ge=1, le=1000)] = Field(
        default=16, description="Per-example arrays show the first this many examples (columns, or rows with examples_first).")
    units_shown: Annotated[StrictInt, Field(ge=1, le=MAX_UNITS_SHOWN)] = Field(
        default=DEFAULT_UNITS_SHOWN, description=f"Every array shows at most its first this many units (default "
                                                 f"{DEFAULT_UNITS_SHOWN}, at most {MAX_UNITS_SHOWN}): rows of a (units, m) "
                                                 f"array, both axes of W and of the softmax Jacobian.")
    include_caches: NotUsed = Field(default=False, description="Accepted (a /v1/gradients body can be sent as it "
                                                               "is) and ignored by this route.")


def prepare_explain(req: ExplainRequest, limits: Limits) -> Prepared:
    prep = prepare(req, limits)
    L = len(prep.layers)
    if req.hidden_layer is not None and req.hidden_layer > L - 1:
        raise InvalidRequest([ErrorItem(location="hidden_layer", type="out_of_range",
                                        message=f"hidden_layer is {req.hidden_layer}, but this {L}-layer network has "
                                                + (f"hidden layers 1..{L - 1}" if L > 1 else "no hidden layer"))])
    return prep


# How much of one array a step shows.
class Extent(BaseModel):
    total: list[int] = Field(description="The whole array's shape, in the request's layout.")
    shown: list[int] = Field(description="The shape of the part shown: its first units and first examples.")


# One step of the story.
class ExplainStep(BaseModel):
    id: str = Field(description="`cost`, `dAL`, `activation_derivative`, `dZL_chain_rule`, `dZL_fused` or "
                                "`no_simplification`, `stability`, `hidden_dA`, `hidden_dZ`, `why`.")
    title: str
    text: str = Field(description="A plain-text sentence.")
    latex: str = Field(description="The formula in LaTeX.")
    values: dict[str, Any] = Field(description="The numbers, named as in the formula; arrays in the request's layout, "
                                               "cut to the first `units_shown` units and `examples_shown` examples "
                                               "(see `shapes`); null where not representable.")
    shapes: dict[str, Extent] = Field(default_factory=dict, description="For every array of `values`: its whole shape "
                                                                        "and the shape shown.")
    entries: Optional[list[list[int]]] = Field(default=None, description="In `stability`: the unstable entries' indices, in the request's layout.")


# The body of a 200 from POST /v1/explain.
class ExplainResponse(BaseModel):
    cost: str
    output_activation: str
    canonical: bool = Field(description="Whether dZ_L = A_L - Y applies (the output activation matches the cost).")
    layers: int
    hidden_layer: int = Field(description="The layer of the hidden step (0: the network has none; the step is about dA0).")
    intermediates: str
    layout: str
    m: int
    examples_shown: int = Field(description="Examples shown per array: min(`examples_shown`, m).")
    units_shown: int = Field(description="The most units shown per array axis.")
    unstable_count: int = Field(description="Entries where the textbook chain rule from A_L is infinite, NaN or inaccurate.")
    steps: list[ExplainStep]
    notes: list[str] = Field(default_factory=list)


def explain_to_wire(story: explain_engine.Story, prep: Prepared, req: ExplainRequest) -> dict:
    ex_first = prep.examples_first
    m = prep.Y.shape[1]
    k, u = min(req.examples_shown, m), req.units_shown

    layouts = prep.layouts
    # The parameters of the hidden step's layer (W2, gamma2, ...), shown as the request holds them (dense W in
    # its weight layout, conv2d's W in the image layout's form).
    params = {f"{p.name}{story.hidden_layer + 1}": p for p in prep.layers[story.hidden_layer].unit.params}

    def cut(name: str, v: Any, per_example: bool, full: tuple[int, ...] | None) -> tuple[Any, dict | None]:
        if not isinstance(v, np.ndarray):
            return (None if isinstance(v, float) and not np.isfinite(v) else v), None
        total = full or v.shape
        if per_example and v.ndim == 4:  # an image batch (m, C, H, W): the first examples and channels
            part, total = layouts.to_wire_activation(v[:k, :u]), layouts.index_to_wire(tuple(total))
            flip = False
        elif per_example:  # (units, m) or (m,)
            part = v[..., :k] if v.ndim == 1 else v[:u, :k]
            flip = v.ndim == 2 and ex_first
        elif v.ndim in (2, 4) and name in params:  # W as sent (in_out: (n_in, n_out); conv2d's by image layout)
            wire = params[name].to_wire
            part, total = wire(v[:u, :u], None, layouts), wire(np.empty(total, dtype=np.bool_), None, layouts).shape
            flip = False
        else:  # (units, units) blocks, or the stability step's short lists
            part = v[:u, :u] if v.ndim == 2 else v
            flip = False
        if flip:
            part, total = part.T, total[::-1]
        if part.dtype.kind == "f":
            part = np.where(np.isfinite(part), part, np.nan)
        return np.ascontiguousarray(part), {"total": list(total), "shown": list(part.shape)}

    steps = []
    for s in story.steps:
        values, shapes = {}, {}
        for name, v in s.values.items():
            values[name], extent = cut(name, v, name in s.per_example, s.full_shapes.get(name))
            if extent is not None:
                shapes[name] = extent
        entries = None
        if s.entries is not None:
            entries = [[int(j), int(i)] if ex_first else [int(i), int(j)] for i, j in s.entries]
        steps.append({"id": s.id, "title": s.title, "text": s.text, "latex": s.latex, "values": values,
                      "shapes": shapes, "entries": entries})
    return {"cost": story.cost, "output_activation": story.output_activation, "canonical": story.canonical,
            "layers": story.L, "hidden_layer": story.hidden_layer, "intermediates": story.intermediates,
            "layout": req.layout, "m": m, "examples_shown": k, "units_shown": u,
            "unstable_count": story.unstable_count, "steps": steps, "notes": story.notes}

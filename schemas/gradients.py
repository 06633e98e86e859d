"""POST /v1/gradients: the request and response models, the checks that span fields, and the layout edge.

Wire convention (``layout = features_first``, the course's): X (n_x, m), Y (n_y, m), W_l (n_l, n_{l-1}),
b_l (n_l, 1) or (n_l,). With ``examples_first`` X is (m, n_x), Y (m, n_y) and every (units, m) matrix of the
response is transposed to (m, units); W and b are the same in both. The engine only ever sees features first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal, Optional

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StrictBool

from schemas.arrays import array_list
from schemas.common import FiniteFloat, Matrix, MatrixOrVector
from schemas.errors import ErrorItem, InvalidRequest
from schemas.limits import Limits
from service.engine import ACTIVATIONS, COSTS, INTERMEDIATES, Dropout, Layer, Result, one_hot

ActivationName = Literal[tuple(ACTIVATIONS)]  # type: ignore[valid-type]
CostName = Literal[tuple(COSTS)]  # type: ignore[valid-type]
Intermediates = Literal[INTERMEDIATES]  # type: ignore[valid-type]
LAYOUTS = ("features_first", "examples_first")
Layout = Literal[LAYOUTS]  # type: ignore[valid-type]


# One dense layer of the network.
class LayerSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    W: Matrix = Field(description="Weights, (n_l, n_{l-1}) in both layouts.")
    b: MatrixOrVector = Field(description="Biases, a column (n_l, 1) or a vector (n_l,); db comes back in the same shape.")
    activation: ActivationName = Field(description="Activation g_l; `softmax` only on the output layer.")
    negative_slope: Optional[FiniteFloat] = Field(
        default=None, description="Slope of `leaky_relu` for z <= 0 (default 0.01); only allowed with `leaky_relu`.")


# Inverted dropout on the hidden activations with caller-supplied masks.
class DropoutSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    keep_prob: Annotated[FiniteFloat, Field(gt=0, le=1)] = Field(description="p in (0, 1].")
    masks: array_list(Matrix) = Field(description="D_1 .. D_{L-1}: 0/1 matrices shaped like A_l, (n_l, m) or (m, n_l) by layout.")


# The body of POST /v1/gradients.
class GradientRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    layers: Annotated[list[LayerSpec], Field(min_length=1)] = Field(description="Layers 1 .. L, input side first.")
    X: Matrix = Field(description="Inputs: (n_x, m) features first, or (m, n_x) examples first.")
    Y: MatrixOrVector = Field(description="Labels: (n_y, m) or (m, n_y) by layout; a flat list of m labels when n_y = 1; "
                                          "for categorical_cross_entropy also a flat list of m class indices.")
    cost: CostName = Field(description="The cost; it must pair with the output activation.")
    layout: Layout = Field(default="features_first", description="Orientation of X, Y, masks and of every (units, m) matrix returned.")
    l2: Annotated[FiniteFloat, Field(ge=0)] = Field(default=0.0, description="lambda >= 0: J += lambda/(2m) sum ||W_l||_F^2, dW_l += (lambda/m) W_l.")
    dropout: Optional[DropoutSpec] = Field(default=None, description="Inverted dropout with fixed masks (deterministic).")
    intermediates: Intermediates = Field(default="per_example", description="`per_example`: dA, dZ without 1/m (dZ_L = A_L - Y); "
                                                                           "`mean`: every quantity is the exact partial derivative of J.")
    include_caches: StrictBool = Field(default=False, description="Also return the layer caches Z1..ZL and A1..AL.")


@dataclass(frozen=True)
class Prepared:
    """A checked request in the engine's terms: features first, Y one-hot where indices were sent."""

    X: np.ndarray
    Y: np.ndarray
    layers: list[Layer]
    dropout: Dropout | None
    b_is_vector: list[bool]
    examples_first: bool


def _shape(a: np.ndarray) -> str:
    return "(" + ", ".join(str(n) for n in a.shape) + ")"


def _check_limits(req: GradientRequest, limits: Limits) -> list[ErrorItem]:
    """Size and work limits: counted from shapes alone, before anything is computed."""
    errors: list[ErrorItem] = []

    def over(location: str, what: str, got: int, limit: int) -> None:
        errors.append(ErrorItem(location=location, type="limit_exceeded",
                                message=f"{what} is {got}, over this service's limit of {limit}"))

    ex_first = req.layout == "examples_first"
    m, n_x = (req.X.shape if ex_first else req.X.shape[::-1])
    if len(req.layers) > limits.max_layers:
        over("layers", "the number of layers", len(req.layers), limits.max_layers)
    if m > limits.max_examples:
        over("X", "the number of examples m", m, limits.max_examples)
    if n_x > limits.max_units:
        over("X", "the number of input features", n_x, limits.max_units)
    elements = req.X.size + req.Y.size
    work = 0
    activations = n_x * m
    for i, layer in enumerate(req.layers):
        n_out, n_in = layer.W.shape
        if n_out > limits.max_units:
            over(f"layers[{i}].W", "the number of units", n_out, limits.max_units)
        elements += layer.W.size + layer.b.size
        work += n_out * n_in * m
        activations += n_out * m
    if req.dropout is not None:
        elements += sum(mask.size for mask in req.dropout.masks)
    if elements > limits.max_elements:
        over("body", "the total number of array elements", elements, limits.max_elements)
    if work > limits.max_work:
        over("body", "the work of one forward pass (sum of n_l * n_(l-1) * m)", work, limits.max_work)
    if activations > limits.max_activations:
        over("body", "the number of activation entries (sum over l = 0..L of n_l * m), which sizes memory and "
                     "the response,", activations, limits.max_activations)
    return errors


def _labels(req: GradientRequest, n_out: int, m: int, errors: list[ErrorItem]) -> np.ndarray | None:
    """Y in the engine's (n_L, m) form, or None with the reason appended to errors."""
    Y, cost = req.Y, COSTS[req.cost]
    if Y.ndim == 1:
        if Y.shape[0] != m:
            errors.append(ErrorItem(location="Y", type="shape_mismatch",
                                    message=f"Y is a flat list of {Y.shape[0]} labels but X has m = {m} examples"))
            return None
        if cost.class_indices:
            bad = (Y != np.floor(Y)) | (Y < 0) | (Y >= n_out)
            if bad.any():
                i = int(np.argmax(bad))
                errors.append(ErrorItem(
                    location=f"Y[{i}]", type="label_domain",
                    message=f"a flat Y for {req.cost} holds class indices: integers in [0, {n_out}) "
                            f"for {n_out} output units; got {float(Y[i]):g}"))
                return None
            return one_hot(Y.astype(np.intp), n_out)
        if n_out != 1:
            errors.append(ErrorItem(location="Y", type="shape_mismatch",
                                    message=f"Y is a flat list, which means one output unit, but the output layer has "
                                            f"{n_out} units; send Y as a matrix"))
            return None
        Y = Y[np.newaxis, :]
    else:
        want = (m, n_out) if req.layout == "examples_first" else (n_out, m)
        if Y.shape != want:
            errors.append(ErrorItem(
                location="Y", type="shape_mismatch",
                message=f"Y is {_shape(Y)} but the output layer has {n_out} units and X has m = {m} examples, so Y must "
                        f"be ({want[0]}, {want[1]}) ({req.layout})"))
            return None
        if req.layout == "examples_first":
            Y = Y.T
    problem = cost.label_error(Y)
    if problem:
        errors.append(ErrorItem(location="Y", type="label_domain", message=problem))
        return None
    return Y


def prepare(req: GradientRequest, limits: Limits) -> Prepared:
    """Cross-field checks (limits, shape chain, pairings, labels, masks) and conversion to features first.

    Raises InvalidRequest listing every problem found, each with its location.
    """
    errors = _check_limits(req, limits)
    if errors:
        raise InvalidRequest(errors, status=422, title="Request over the limits", slug="limit-exceeded")

    ex_first = req.layout == "examples_first"
    X = req.X.T if ex_first else req.X
    n_prev, m = X.shape
    L = len(req.layers)
    layers: list[Layer] = []
    b_is_vector: list[bool] = []
    for i, spec in enumerate(req.layers):
        n_out, n_in = spec.W.shape
        if n_in != n_prev:
            source = "X has" if i == 0 else f"layers[{i - 1}].W has"
            unit = "features" if i == 0 else "rows"
            errors.append(ErrorItem(location=f"layers[{i}].W", type="shape_mismatch",
                                    message=f"W is {_shape(spec.W)}: it needs {n_prev} columns because {source} "
                                            f"{n_prev} {unit}"))
        b = spec.b
        if b.shape not in ((n_out,), (n_out, 1)):
            errors.append(ErrorItem(location=f"layers[{i}].b", type="shape_mismatch",
                                    message=f"b is {_shape(b)} but W has {n_out} rows: send ({n_out}, 1) or ({n_out},)"))
        if spec.activation == "softmax" and i < L - 1:
            errors.append(ErrorItem(location=f"layers[{i}].activation", type="activation_placement",
                                    message="softmax is allowed on the output layer only"))
        if spec.negative_slope is not None and spec.activation != "leaky_relu":
            errors.append(ErrorItem(location=f"layers[{i}].negative_slope", type="extra_forbidden",
                                    message=f"negative_slope applies to leaky_relu only, not {spec.activation}"))
        slope = 0.01 if spec.negative_slope is None else spec.negative_slope
        layers.append(Layer(W=spec.W, b=b.reshape(-1, 1), activation=spec.activation, negative_slope=slope))
        b_is_vector.append(b.ndim == 1)
        n_prev = n_out

    cost = COSTS[req.cost]
    out_act = req.layers[-1].activation
    if cost.output_activations is not None and out_act not in cost.output_activations:
        needs = " or ".join(sorted(cost.output_activations))
        errors.append(ErrorItem(location="cost", type="cost_pairing",
                                message=f"{req.cost} needs a {needs} output layer, but layers[{L - 1}].activation is "
                                        f"{out_act!r}; use mean_squared_error for other outputs"))

    Y = None
    if not errors:
        Y = _labels(req, n_prev, m, errors)

    dropout = None
    if req.dropout is not None:
        dropout = _dropout(req, m, errors)
    if errors:
        raise InvalidRequest(errors)
    return Prepared(X=X, Y=Y, layers=layers, dropout=dropout, b_is_vector=b_is_vector, examples_first=ex_first)


def _dropout(req: GradientRequest, m: int, errors: list[ErrorItem]) -> Dropout | None:
    masks = req.dropout.masks
    L = len(req.layers)
    if len(masks) != L - 1:
        errors.append(ErrorItem(location="dropout.masks", type="shape_mismatch",
                                message=f"needs one mask per hidden layer: {L - 1} for {L} layers, got {len(masks)}"))
        return None
    converted = []
    for i, D in enumerate(masks):
        n_l = req.layers[i].W.shape[0]
        want = (m, n_l) if req.layout == "examples_first" else (n_l, m)
        if D.shape != want:
            errors.append(ErrorItem(location=f"dropout.masks[{i}]", type="shape_mismatch",
                                    message=f"mask D{i + 1} is {_shape(D)} but A{i + 1} is ({want[0]}, {want[1]})"))
            continue
        if not np.all((D == 0) | (D == 1)):
            errors.append(ErrorItem(location=f"dropout.masks[{i}]", type="mask_values",
                                    message=f"mask D{i + 1} must hold only 0 and 1"))
            continue
        converted.append(D.T if req.layout == "examples_first" else D)
    if len(converted) != len(masks):
        return None
    return Dropout(keep_prob=req.dropout.keep_prob, masks=tuple(converted))


# --- response -----------------------------------------------------------------------------------------------

# A non-representable value, replaced by null in the response.
class NullWarning(BaseModel):
    location: str = Field(description="The returned quantity, e.g. `gradients.dA2`.")
    message: str
    entries: list[list[int]] = Field(description="Indices of the null entries, in the response's layout (at most 100 listed).")
    count: int = Field(description="How many entries are null.")


Numbers = list[list[Optional[float]]]


# The body of a 200 from POST /v1/gradients.
class GradientResponse(BaseModel):
    cost: float = Field(description="J, including the L2 term.")
    AL: Numbers = Field(description="The output activation A_L, in the request's layout.")
    gradients: dict[str, Numbers | list[float]] = Field(
        description="dW1..dWL, db1..dbL (each in the shape b was sent), dZ1..dZL, dA0..dA{L}.")
    caches: Optional[dict[str, Numbers]] = Field(default=None, description="Z1..ZL and A1..AL, when include_caches.")
    warnings: list[NullWarning] = Field(default_factory=list, description="Entries returned as null, and why.")


MAX_LISTED_ENTRIES = 100


def to_wire(result: Result, prep: Prepared, include_caches: bool) -> dict:
    """The engine's features-first result -> the response body (numpy arrays, for orjson)."""

    def units_by_m(a: np.ndarray) -> np.ndarray:
        # orjson writes only C-contiguous arrays.
        return np.ascontiguousarray(a.T if prep.examples_first else a)

    L = len(prep.layers)
    grads: dict[str, np.ndarray] = {}
    for l in range(1, L + 1):
        grads[f"dW{l}"] = np.ascontiguousarray(result.dW[l - 1])
        db = result.db[l - 1]
        grads[f"db{l}"] = db.reshape(-1) if prep.b_is_vector[l - 1] else db
    for l in range(1, L + 1):
        grads[f"dZ{l}"] = units_by_m(result.dZ[l - 1])
    for l in range(L + 1):
        grads[f"dA{l}"] = units_by_m(result.dA[l])

    warnings = []
    if result.unrepresentable.any():
        idx = np.argwhere(result.unrepresentable)
        if prep.examples_first:
            idx = idx[:, ::-1]
        warnings.append({
            "location": f"gradients.dA{L}",
            "message": "these entries of dA_L = dJ/dA_L overflow float64 (A_L rounds to exactly 0 or 1 while the label "
                       "needs the other side) and are returned as null; dZ_L and every other gradient are exact",
            "entries": idx[:MAX_LISTED_ENTRIES].tolist(),
            "count": int(idx.shape[0]),
        })

    body = {"cost": result.cost, "AL": units_by_m(result.AL), "gradients": grads, "warnings": warnings}
    if include_caches:
        caches = {}
        for l in range(1, L + 1):
            caches[f"Z{l}"] = units_by_m(result.Z[l - 1])
            caches[f"A{l}"] = units_by_m(result.A[l - 1])
        body["caches"] = caches
    return body

"""POST /v1/gradients: the request and response models, the checks that span fields, and the layout edge.

Wire convention (``layout = features_first``, the course's): X (n_x, m), Y (n_y, m), dense W_l (n_l, n_{l-1})
(``weight_layout: out_in``; ``in_out`` holds it as (n_{l-1}, n_l)), b_l (n_l, 1) or (n_l,). With
``examples_first`` X, Y and every (units, m) matrix of the response are (m, units). Each layer kind's arrays are
converted to its engine form and back by the kind (``Param.to_engine`` / ``to_wire``); the engine sees features
first only.

Images (``image_layout``): a 4-D X is an image batch, (m, C, H, W) with ``NCHW`` (the default; cs231n, PyTorch)
or (m, H, W, C) with ``NHWC`` (deeplearning.ai, TensorFlow), and so is every 4-D activation, gradient, cache and
dropout mask; the engine holds images as (m, C, H, W) (``Layouts.to_engine_activation`` / ``to_wire_activation``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Annotated, Any, Literal, Optional

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StrictBool

from schemas.arrays import array_list
from schemas.arrays import array_type
from schemas.common import FiniteFloat, MatrixOrVector
from schemas.errors import ErrorItem, InvalidRequest
from schemas.layers import LayerSpec, hyperparameters, sent_arrays
from schemas.limits import Limits
from service.engine import COSTS, INTERMEDIATES, Dropout, Layer, Result, keys, one_hot
from service.engine.activations import ACTIVATIONS, DEFAULT_NEGATIVE_SLOPE
from service.engine.kinds import KINDS, Layouts
from service.engine.kinds.base import shape_text

CostName = Literal[tuple(COSTS)]  # type: ignore[valid-type]
Intermediates = Literal[INTERMEDIATES]  # type: ignore[valid-type]
LAYOUTS = ("features_first", "examples_first")
Layout = Literal[LAYOUTS]  # type: ignore[valid-type]
WEIGHT_LAYOUTS = ("out_in", "in_out")
IMAGE_LAYOUTS = ("NCHW", "NHWC")
# A matrix, or an image batch (4-D).
MatrixOrImages = array_type(2, 4)


# Inverted dropout on the hidden activations with caller-supplied masks.
class DropoutSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    keep_prob: Annotated[FiniteFloat, Field(gt=0, le=1)] = Field(description="p in (0, 1].")
    masks: array_list(Optional[MatrixOrImages]) = Field(
        description="D_1 .. D_{L-1}: 0/1 matrices shaped like A_l, (n_l, m) or (m, n_l) by layout (image batches "
                    "by image_layout); null for a hidden layer without dropout.")


# The body of POST /v1/gradients.
class GradientRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    layers: Annotated[list[LayerSpec], Field(min_length=1)] = Field(
        description="Layers 1 .. L, input side first; each a kind (`type`, default `dense`) with its parameters, "
                    "hyperparameters and an activation.")
    X: MatrixOrImages = Field(description="Inputs: (n_x, m) features first, or (m, n_x) examples first; or an image "
                                          "batch, (m, C, H, W) with image_layout NCHW, (m, H, W, C) with NHWC.")
    Y: MatrixOrVector = Field(description="Labels: (n_y, m) or (m, n_y) by layout; a flat list of m labels when n_y = 1; "
                                          "for the costs that take them also a flat list of m class indices.")
    cost: CostName = Field(description="The cost; it must pair with the output activation.")
    layout: Layout = Field(default="features_first", description="Orientation of X, Y, masks and of every (units, m) matrix returned.")
    weight_layout: Literal[WEIGHT_LAYOUTS] = Field(  # type: ignore[valid-type]
        default="out_in", description="Dense W as (n_l, n_{l-1}) (`out_in`, the course's) or (n_{l-1}, n_l) "
                                      "(`in_out`, as cs231n's affine layer and Keras hold it); dW comes back the same way.")
    image_layout: Literal[IMAGE_LAYOUTS] = Field(  # type: ignore[valid-type]
        default="NCHW", description="How image batches are held: `NCHW` (m, C, H, W) (cs231n, PyTorch; the default) or "
                                    "`NHWC` (m, H, W, C) (deeplearning.ai, TensorFlow). It fixes the shape of a 4-D X, "
                                    "of every 4-D activation, gradient, cache and mask, and of conv2d's W: "
                                    "(F, C, kh, kw) with NCHW, (kh, kw, C, F) with NHWC.")
    l2: Annotated[FiniteFloat, Field(ge=0)] = Field(default=0.0, description="lambda >= 0: J += lambda/(2m) sum ||W_l||_F^2, dW_l += (lambda/m) W_l.")
    dropout: Optional[DropoutSpec] = Field(default=None, description="Inverted dropout with fixed masks (deterministic).")
    intermediates: Intermediates = Field(default="per_example", description="`per_example`: dA, dZ without 1/m (dZ_L = A_L - Y); "
                                                                           "`mean`: every quantity is the exact partial derivative of J.")
    include_caches: StrictBool = Field(default=False, description="Also return the layer caches Z1..ZL and A1..AL.")


@dataclass(frozen=True)
class Prepared:
    """A checked request in the engine's terms: features first, Y one-hot where indices were sent. ``sent``: each
    layer's arrays as the request held them (gradients go back in their form); ``shapes``: the feature shape of X
    and of each layer's output (L + 1 entries)."""

    X: np.ndarray
    Y: np.ndarray
    layers: list[Layer]
    dropout: Dropout | None
    layouts: Layouts
    sent: list[dict[str, np.ndarray]]
    shapes: list[tuple[int, ...]]

    @property
    def examples_first(self) -> bool:
        return self.layouts.examples_first


def _layouts(req: GradientRequest) -> Layouts:
    return Layouts(examples_first=req.layout == "examples_first", weights_in_out=req.weight_layout == "in_out",
                   channels_last=req.image_layout == "NHWC")


def _features(X: np.ndarray) -> tuple[tuple[int, ...], int]:
    """The feature shape of an engine X ((n_x,) of (n_x, m); (C, H, W) of (m, C, H, W)) and m."""
    return ((X.shape[0],), X.shape[1]) if X.ndim == 2 else (tuple(X.shape[1:]), X.shape[0])


def _shape(a: np.ndarray) -> str:
    return shape_text(a.shape)


def _over(errors: list[ErrorItem], location: str, what: str, got: int, limit: int) -> None:
    errors.append(ErrorItem(location=location, type="limit_exceeded",
                            message=f"{what} is {got}, over this service's limit of {limit}"))


def _input_text(in_shape: tuple[int, ...], layouts: Layouts) -> str:
    if len(in_shape) == 1:
        return f"X has {in_shape[0]} features"
    C, H, W = in_shape
    return f"X holds {C} channel{'s' if C != 1 else ''} of {H} x {W}"


def _rank_words(rank: int) -> str:
    return "vectors (features, m)" if rank == 1 else "image batches (m, C, H, W)"


def _rank_error(i: int, spec, in_rank: int, source: str, layouts: Layouts) -> ErrorItem:
    """A layer whose kind takes the other rank than its input has: what turns one into the other, from the
    kinds' declared ranks (no kind is named here)."""
    kind = KINDS[spec.type]
    turning = [k.name for k in KINDS.values() if k.input_rank == in_rank and k.out_rank == kind.input_rank]
    message = f"{spec.type} takes {_rank_words(kind.input_rank)}, but its input is {_rank_words(in_rank)} because {source}"
    if turning:
        message += f": add a {' or '.join(turning)} layer before it"
    elif i == 0 and kind.input_rank == 3:
        image = "(m, H, W, C)" if layouts.channels_last else "(m, C, H, W)"
        message += f": send X as an image batch, {image} (image_layout {'NHWC' if layouts.channels_last else 'NCHW'})"
    else:
        undo = [k.name for k in KINDS.values() if k.input_rank == kind.input_rank and k.out_rank == in_rank]
        message += (f"; no layer kind turns {_rank_words(in_rank)} back into {_rank_words(kind.input_rank)}: put "
                    f"layers[{i}] before the {' or '.join(undo) or 'other'} layer")
    return ErrorItem(location=f"layers[{i}]", type="rank_mismatch", message=message)


def _chain(req: GradientRequest, layouts: Layouts, n_x: int | tuple[int, ...], sent: list[dict]
           ) -> tuple[list[tuple[int, ...] | None], list[ErrorItem]]:
    """Each layer's output shape through the kinds' shape rules, and their located errors. ``n_x``: X's feature
    shape ((n_x,) or (C, H, W)); an int is (n_x,). ``sent``: each layer's sent_arrays."""
    first = (n_x,) if isinstance(n_x, int) else tuple(n_x)
    shapes: list[tuple[int, ...] | None] = [first]
    errors: list[ErrorItem] = []
    source = _input_text(first, layouts)
    for i, spec in enumerate(req.layers):
        kind, where, in_shape = KINDS[spec.type], f"layers[{i}]", shapes[-1]
        if in_shape is None:
            shapes.append(None)
            continue
        if len(in_shape) != kind.input_rank:
            errors.append(_rank_error(i, spec, len(in_shape), source, layouts))
            shapes.append(None)
            continue
        arrays = sent[i]
        checked = kind.check(in_shape, arrays, hyperparameters(spec), layouts, where, source)
        errors += [ErrorItem(location=f"{where}.{e.field}" if e.field else where, type=e.type, message=e.message)
                   for e in checked.errors]
        shapes.append(checked.out_shape)
        if checked.out_shape is not None:
            source = kind.source_text(where, arrays, checked.out_shape, layouts)
    if shapes[-1] is not None and len(shapes[-1]) != 1:
        turning = [k.name for k in KINDS.values() if k.input_rank == len(shapes[-1]) and k.out_rank == 1]
        errors.append(ErrorItem(
            location=f"layers[{len(req.layers) - 1}]", type="rank_mismatch",
            message=f"the output layer gives {_rank_words(len(shapes[-1]))} because {source}, but the cost needs "
                    f"vectors (n_L, m): add a {' or '.join(turning)} layer and a layer with the output's units"))
    return shapes, errors


def _layout_hint(req: GradientRequest, layouts: Layouts, sent: list[dict]) -> list[ErrorItem]:
    """When the shape chain fails with the request's image layout and passes with the other one, the one error
    that says so, at ``image_layout``; else none."""
    other = replace(layouts, channels_last=not layouts.channels_last)
    features, _ = _features(other.to_engine_activation(req.X))
    if _chain(req, other, features, sent)[1]:
        return []
    name, image = ("NHWC", "(m, H, W, C)") if other.channels_last else ("NCHW", "(m, C, H, W)")
    return [ErrorItem(location="image_layout", type="layout_mismatch",
                      message=f"X is {_shape(req.X)} and the layers do not fit it as image_layout {req.image_layout}, "
                              f"but they do as {name}: X looks like {name} {image}: did you mean image_layout "
                              f"{name}?")]


def _check_limits(req: GradientRequest, limits: Limits, shapes: list, m: int, sent: list[dict]) -> list[ErrorItem]:
    """Size and work limits, priced from shapes by each kind before anything is computed."""
    errors: list[ErrorItem] = []
    first = shapes[0]
    if len(req.layers) > limits.max_layers:
        _over(errors, "layers", "the number of layers", len(req.layers), limits.max_layers)
    if m > limits.max_examples:
        _over(errors, "X", "the number of examples m", m, limits.max_examples)
    if first[0] > limits.max_units:
        _over(errors, "X", "the number of input features" if len(first) == 1 else "the number of input channels",
              first[0], limits.max_units)
    _image_sides(errors, "X", first, limits)
    elements = req.X.size + req.Y.size
    work = total = stored = 0
    activations = int(np.prod(first)) * m
    for i, spec in enumerate(req.layers):
        kind, arrays = KINDS[spec.type], sent[i]
        in_shape, out_shape = shapes[i], shapes[i + 1]
        # A layer with parameters sets its output's units (or channels); the others follow their input.
        if out_shape is not None and kind.params and out_shape[0] > limits.max_units:
            _over(errors, f"layers[{i}].{kind.params[0].name}", "the number of units", out_shape[0], limits.max_units)
        elements += sum(a.size for a in arrays.values())
        if in_shape is not None and out_shape is not None:
            price = kind.price(in_shape, out_shape, arrays, hyperparameters(spec), m)
            work, total, stored = work + price.forward_work, total + price.work, stored + price.stored
            activations += math.prod(out_shape) * m  # ints: np.prod's value, without building an array
            if price.window > limits.max_kernel_size:
                _over(errors, f"layers[{i}]", "the largest side of the kernel or window", price.window,
                      limits.max_kernel_size)
            _image_sides(errors, f"layers[{i}]", out_shape, limits)
    if req.dropout is not None:
        elements += sum(mask.size for mask in req.dropout.masks if mask is not None)
    if elements > limits.max_elements:
        _over(errors, "body", "the total number of array elements", elements, limits.max_elements)
    if work > limits.max_work:
        _over(errors, "body", "the work of one forward pass (sum of n_l * n_(l-1) * m)", work, limits.max_work)
    elif total > BACKWARD_FACTOR * limits.max_work:
        _over(errors, "body", f"the work of a forward and backward pass (multiply-adds as each layer kind prices "
                              f"them; at most {BACKWARD_FACTOR} times the forward limit)", total,
              BACKWARD_FACTOR * limits.max_work)
    if activations > limits.max_activations:
        _over(errors, "body", "the number of activation entries (sum over l = 0..L of n_l * m), which sizes memory and "
                              "the response,", activations, limits.max_activations)
    elif stored > limits.max_stored:  # the finer memory bound, for kinds that keep more than their outputs
        _over(errors, "body", "the numbers a forward and backward pass keeps in memory (caches, im2col buffers and "
                              "gradients, as each layer kind prices them)", stored, limits.max_stored)
    return errors


# Forward and backward together may cost this many times GRADIENT_MAX_WORK (a dense layer's backward is two
# products of its forward's size; so is a convolution's).
BACKWARD_FACTOR = 3


def _image_sides(errors: list[ErrorItem], location: str, shape: tuple[int, ...], limits: Limits) -> None:
    """An image's height and width (the feature shape (C, H, W)) within GRADIENT_MAX_IMAGE_SIZE."""
    if len(shape) == 3 and max(shape[1:]) > limits.max_image_size:
        _over(errors, location, "the largest side of an image", max(shape[1:]), limits.max_image_size)


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


def _activation_errors(req: GradientRequest) -> list[ErrorItem]:
    """Output-only activations on a hidden layer, and negative_slope with an activation that does not use it."""
    errors = []
    L = len(req.layers)
    slopes = " or ".join(name for name, unit in ACTIVATIONS.items() if unit.uses_slope)
    for i, spec in enumerate(req.layers):
        unit = ACTIVATIONS[spec.activation]
        if unit.output_only and i < L - 1:
            errors.append(ErrorItem(location=f"layers[{i}].activation", type="activation_placement",
                                    message=f"{spec.activation} is allowed on the output layer only"))
        if spec.negative_slope is not None and not unit.uses_slope:
            errors.append(ErrorItem(location=f"layers[{i}].negative_slope", type="extra_forbidden",
                                    message=f"negative_slope applies to {slopes} only, not {spec.activation}"))
    return errors


def _engine_layer(spec, layouts: Layouts, in_shape: tuple[int, ...]) -> Layer:
    kind = KINDS[spec.type]
    params = {p.name: p.to_engine(getattr(spec, p.name), layouts) for p in kind.params}
    state = {}
    for s in kind.states:
        sent = getattr(spec, s.name)
        state[s.name] = s.to_engine(sent, layouts) if sent is not None else s.initial(in_shape[0])
    slope = DEFAULT_NEGATIVE_SLOPE if spec.negative_slope is None else spec.negative_slope
    hyper = hyperparameters(spec)
    if kind.engine_hyper is not None:
        hyper = kind.engine_hyper(hyper, layouts)
    return Layer(spec.type, params, spec.activation, slope, hyper, state)


def check_limits(req: GradientRequest, limits: Limits) -> tuple[list, list[ErrorItem]]:
    """The shape chain (each layer's output shape, and the chain's located errors) and the size and work limits,
    from shapes alone: InvalidRequest (422 limit_exceeded) over any limit. No array entry is read, so it also
    prices a request whose arrays only have their shapes (the binary protocol checks every limit from its header
    before reading a tensor: service.oip_routes)."""
    shapes, chain_errors, _ = _checked(req, limits)
    return shapes, chain_errors


def _checked(req: GradientRequest, limits: Limits) -> tuple[list, list[ErrorItem], list[dict]]:
    """check_limits, also giving each layer's sent_arrays (read once, for the chain, the prices and prepare)."""
    layouts = _layouts(req)
    X = layouts.to_engine_activation(req.X)
    features, m = _features(X)
    sent = [sent_arrays(spec) for spec in req.layers]
    shapes, chain_errors = _chain(req, layouts, features, sent)
    errors = _check_limits(req, limits, shapes, m, sent)
    if errors:
        raise InvalidRequest(errors, status=422, title="Request over the limits", slug="limit-exceeded")
    return shapes, chain_errors, sent


def prepare(req: GradientRequest, limits: Limits) -> Prepared:
    """Cross-field checks (limits, shape chain, pairings, labels, masks) and conversion to the engine's form.

    Raises InvalidRequest listing every problem found, each with its location.
    """
    layouts = _layouts(req)
    X = layouts.to_engine_activation(req.X)
    m = _features(X)[1]
    shapes, chain_errors, sent = _checked(req, limits)
    L = len(req.layers)
    errors = _layout_hint(req, layouts, sent) if chain_errors and X.ndim == 4 else []
    if errors:  # every shape error comes from reading the images the wrong way round
        chain_errors = []
    activation_errors = _activation_errors(req)  # once, not once per layer: the list is the same each time
    for i, spec in enumerate(req.layers):
        errors += [e for e in chain_errors if e.location == f"layers[{i}]" or e.location.startswith(f"layers[{i}].")]
        errors += [e for e in activation_errors if e.location.startswith(f"layers[{i}].")]
    cost = COSTS[req.cost]
    out_act = req.layers[-1].activation
    if cost.output_activations is not None and out_act not in cost.output_activations:
        needs = " or ".join(sorted(cost.output_activations))
        errors.append(ErrorItem(location="cost", type="cost_pairing",
                                message=f"{req.cost} needs a {needs} output layer, but layers[{L - 1}].activation is "
                                        f"{out_act!r}; use mean_squared_error for other outputs"))
    Y = None
    if not errors:
        Y = _labels(req, shapes[-1][0], m, errors)
    dropout = _dropout(req, shapes, m, errors) if req.dropout is not None else None
    if errors:
        raise InvalidRequest(errors)
    layers = [_engine_layer(spec, layouts, shapes[i]) for i, spec in enumerate(req.layers)]
    return Prepared(X=X, Y=Y, layers=layers, dropout=dropout, layouts=layouts,
                    sent=sent, shapes=shapes)


def _dropout(req: GradientRequest, shapes: list, m: int, errors: list[ErrorItem]) -> Dropout | None:
    masks = req.dropout.masks
    L = len(req.layers)
    if len(masks) != L - 1:
        errors.append(ErrorItem(location="dropout.masks", type="shape_mismatch",
                                message=f"needs one mask per hidden layer: {L - 1} for {L} layers, got {len(masks)}"))
        return None
    converted: list[np.ndarray | None] = []
    for i, D in enumerate(masks):
        if D is None:
            converted.append(None)
            continue
        want = _activation_shape(shapes[i + 1], m, req)
        if D.shape != want:
            errors.append(ErrorItem(location=f"dropout.masks[{i}]", type="shape_mismatch",
                                    message=f"mask D{i + 1} is {_shape(D)} but A{i + 1} is {shape_text(want)}"))
            continue
        if not np.all((D == 0) | (D == 1)):
            errors.append(ErrorItem(location=f"dropout.masks[{i}]", type="mask_values",
                                    message=f"mask D{i + 1} must hold only 0 and 1"))
            continue
        converted.append(_layouts(req).to_engine_activation(D))
    if len(converted) != len(masks):
        return None
    return Dropout(keep_prob=req.dropout.keep_prob, masks=tuple(converted))


def _activation_shape(features: tuple[int, ...] | None, m: int, req: GradientRequest) -> tuple[int, ...]:
    """The wire shape of a layer's activation: (n, m) or (m, n) by layout; an image batch by image_layout."""
    if features is None:
        features = (0,)
    if len(features) == 1:
        return (m, features[0]) if req.layout == "examples_first" else (features[0], m)
    C, H, W = features
    return (m, H, W, C) if req.image_layout == "NHWC" else (m, C, H, W)


# --- response -----------------------------------------------------------------------------------------------

# A non-representable value, replaced by null in the response.
class NullWarning(BaseModel):
    location: str = Field(description="The returned quantity, e.g. `gradients.dA2`.")
    message: str
    entries: list[list[int]] = Field(description="Indices of the null entries, in the response's layout (at most 100 listed).")
    count: int = Field(description="How many entries are null.")


Numbers = list[list[Optional[float]]]
# An image batch: (m, C, H, W) or (m, H, W, C) by image_layout.
Images = list[list[list[list[Optional[float]]]]]


# The body of a 200 from POST /v1/gradients.
class GradientResponse(BaseModel):
    cost: float = Field(description="J, including the L2 term.")
    AL: Numbers = Field(description="The output activation A_L, in the request's layout.")
    gradients: dict[str, Numbers | list[float] | Images] = Field(
        description="d<param><l> for every parameter of every layer (dW1..dWL, db1..dbL, dgamma<l>, dbeta<l>; each in "
                    "the shape its parameter was sent in), dZ1..dZL, dA0..dA{L}; image batches (and conv2d's dW) "
                    "4-D, by image_layout.")
    caches: Optional[dict[str, Numbers | Images]] = Field(default=None, description="Z1..ZL and A1..AL, when "
                                                                                      "include_caches.")
    state: Optional[dict[str, dict[str, Numbers | list[float] | Images]]] = Field(
        default=None, description="Only for networks with running statistics (batchnorm): each such layer's updated "
                                  "`running_mean` and `running_var`, keyed by layer number, in the shapes sent (a "
                                  "column when not sent).")
    warnings: list[NullWarning] = Field(default_factory=list, description="Entries returned as null, and why.")


MAX_LISTED_ENTRIES = 100


def _per_example(a: np.ndarray, layouts: Layouts) -> np.ndarray:
    # orjson writes only C-contiguous arrays.
    return np.ascontiguousarray(layouts.to_wire_activation(a))


def gradient_arrays(result: Result, prep: Prepared) -> dict[str, np.ndarray]:
    """Every parameter's gradient in the form it was sent, keyed d<param><l>, layer by layer (dW1, db1, dW2, ...)."""
    out = {}
    for l, layer in enumerate(prep.layers, start=1):
        for param in layer.unit.params:
            grad = param.to_wire(result.grads[l - 1][param.name], prep.sent[l - 1][param.name], prep.layouts)
            out[keys.grad(param.name, l)] = np.ascontiguousarray(grad)
    return out


def state_arrays(result: Result, prep: Prepared) -> dict[str, dict[str, np.ndarray]]:
    """The running statistics each layer returns, in the shapes sent, keyed by layer number."""
    out = {}
    for l, layer in enumerate(prep.layers, start=1):
        if layer.unit.states:
            out[str(l)] = {s.name: np.ascontiguousarray(s.to_wire(result.state[l - 1][s.name],
                                                                  prep.sent[l - 1].get(s.name), prep.layouts))
                           for s in layer.unit.states}
    return out


def to_wire(result: Result, prep: Prepared, include_caches: bool) -> dict:
    """The engine's result -> the response body (numpy arrays, for orjson)."""
    L = len(prep.layers)
    grads: dict[str, Any] = gradient_arrays(result, prep)
    for l in range(1, L + 1):
        grads[keys.dZ(l)] = _per_example(result.dZ[l - 1], prep.layouts)
    for l in range(L + 1):
        grads[keys.dA(l)] = _per_example(result.dA[l], prep.layouts)

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

    body: dict[str, Any] = {"cost": result.cost, "AL": _per_example(result.AL, prep.layouts), "gradients": grads}
    state = state_arrays(result, prep)
    if state:
        body["state"] = state
    body["warnings"] = warnings
    if include_caches:
        caches = {}
        for l in range(1, L + 1):
            caches[keys.Z(l)] = _per_example(result.Z[l - 1], prep.layouts)
            caches[keys.A(l)] = _per_example(result.A[l - 1], prep.layouts)
        body["caches"] = caches
    return body

"""The one-step routes: POST /v1/layer/forward, /v1/layer/backward and /v1/cost. The request and response models,
the checks that span fields, the limits priced before any work, and the layout edge (the optimizer step is in
``schemas.optimizer``).

Arrays follow the request's layouts as in /v1/gradients: ``layout`` (A_prev, Z, A, dA, dZ, AL, ZL, Y and the
per-example values of a cache are (units, m) features first or (m, units) examples first), ``weight_layout``
(dense W as (n_l, n_{l-1}) or (n_{l-1}, n_l)) and ``image_layout`` (for the kinds on images the same arrays are
image batches, (m, C, H, W) with NCHW or (m, H, W, C) with NHWC, and conv2d's W is (F, C, kh, kw) or
(kh, kw, C, F)); each parameter's gradient comes back in the shape it was sent in. The conversions are the
Layouts' and the kinds' own (``Layouts.to_engine_activation``, ``Param.to_engine``), as /v1/gradients uses them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Annotated, Any, Literal, Optional

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from schemas.arrays import array_type
from schemas.common import FiniteFloat, Matrix, MatrixOrVector
from schemas.errors import ErrorItem, InvalidRequest
from schemas.gradients import (BACKWARD_FACTOR, IMAGE_LAYOUTS, LAYOUTS, MAX_LISTED_ENTRIES, WEIGHT_LAYOUTS, CostName,
                               Images, Intermediates, MatrixOrImages, NullWarning, Numbers, _activation_shape,
                               _engine_layer, _features, _image_sides, _labels, _rank_words)
from schemas.layers import ActivationName, LayerSpec, StepLayerSpec, hyperparameters, sent_arrays
from schemas.limits import Limits
from service.engine import COSTS, Layer, keys, steps
from service.engine.activations import ACTIVATIONS, DEFAULT_NEGATIVE_SLOPE
from service.engine.kinds import KINDS, Layouts
from service.engine.kinds.base import shape_text
from service.engine.kinds.windows import image_text

Layout = Literal[LAYOUTS]  # type: ignore[valid-type]
WeightLayout = Literal[WEIGHT_LAYOUTS]  # type: ignore[valid-type]
ImageLayout = Literal[IMAGE_LAYOUTS]  # type: ignore[valid-type]
_LAYER = ("One layer of any kind, as an entry of `layers` in /v1/gradients (`type`, default `dense`, its parameters, "
          "hyperparameters and running statistics); `activation` defaults to `linear` here (the course's "
          "linear_forward and linear_backward have none).")
_IMAGE_LAYOUT = ("How image batches are held: `NCHW` (m, C, H, W) (cs231n, PyTorch; the default) or `NHWC` (m, H, W, "
                 "C) (deeplearning.ai, TensorFlow): A_prev, Z, A, dA, dZ, dA_prev and the cache values of an image "
                 "kind, and conv2d's W ((F, C, kh, kw) or (kh, kw, C, F)), as in /v1/gradients.")
_ACTIVATION_ARRAY = "(units, m) or (m, units) by layout; an image batch by image_layout for the image kinds"


# The body of POST /v1/layer/forward.
class LayerForwardRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    layer: StepLayerSpec = Field(description=_LAYER)
    A_prev: MatrixOrImages = Field(description="The layer's input: (n_{l-1}, m) features first, or (m, n_{l-1}) "
                                               "examples first; for the kinds on images (conv2d, the poolings, "
                                               "flatten, the spatial norms) an image batch, (m, C, H, W) with "
                                               "image_layout NCHW, (m, H, W, C) with NHWC.")
    layout: Layout = Field(default="features_first", description="Orientation of A_prev and of every (units, m) array.")
    weight_layout: WeightLayout = Field(default="out_in", description="Dense W as (n_l, n_{l-1}) (`out_in`) or "
                                                                      "(n_{l-1}, n_l) (`in_out`, cs231n's).")
    image_layout: ImageLayout = Field(default="NCHW", description=_IMAGE_LAYOUT)


# The body of POST /v1/layer/backward.
class LayerBackwardRequest(LayerForwardRequest):
    Z: Optional[MatrixOrImages] = Field(default=None, description="The layer's output before the activation as the "
                                                                  "learner's cache holds it (with `dA` only): g'(Z) "
                                                                  "is evaluated on it as sent, even where it is not "
                                                                  "the layer applied to A_prev. Default: the layer "
                                                                  "applied to A_prev.")
    dA: Optional[MatrixOrImages] = Field(default=None, description="dJ/dA of the layer's output A (as "
                                                                   "linear_activation_backward takes it), "
                                                                   f"{_ACTIVATION_ARRAY}. Send this or `dZ`.")
    dZ: Optional[MatrixOrImages] = Field(default=None, description="dJ/dZ, before the activation (as linear_backward, "
                                                                   "cs231n's affine_backward(dout) and "
                                                                   "conv_backward_naive(dout) take it), "
                                                                   f"{_ACTIVATION_ARRAY}. Send this or `dA`.")
    intermediates: Intermediates = Field(default="per_example", description="`per_example` (the course's): dZ "
                                         "carries no 1/m and the parameters' gradients get it (dW = (1/m) dZ "
                                         "A_prev^T); `mean` (cs231n's): dZ is already dJ/dZ, so dW = dZ A_prev^T.")
    l2: Annotated[FiniteFloat, Field(ge=0)] = Field(default=0.0, description="lambda >= 0: the regularized "
                                                                             "parameters' gradients get + (lambda/m) W.")


@dataclass(frozen=True)
class LayerPrep:
    """A checked one-layer request in the engine's terms: the layer, A_prev in the kind's form (vectors (n, m),
    images (m, C, H, W)), the arrays as sent, the layouts, the feature shapes of the input and output, and m."""

    layer: Layer
    A_prev: np.ndarray
    sent: dict[str, np.ndarray]
    layouts: Layouts
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    m: int
    dA: np.ndarray | None = None
    dZ: np.ndarray | None = None
    Z: np.ndarray | None = None


def _layouts(req) -> Layouts:
    return Layouts(examples_first=req.layout == "examples_first",
                   weights_in_out=getattr(req, "weight_layout", "out_in") == "in_out",
                   channels_last=getattr(req, "image_layout", "NCHW") == "NHWC")


def to_engine(a: np.ndarray, layouts: Layouts) -> np.ndarray:
    """A per-example array of the wire -> the engine's form (vectors features first, images (m, C, H, W))."""
    return layouts.to_engine_activation(a)


def to_wire(a: np.ndarray, layouts: Layouts) -> np.ndarray:
    """A per-example array of the engine -> the request's layouts (C-contiguous, for orjson)."""
    return np.ascontiguousarray(layouts.to_wire_activation(a))


def _over(errors: list[ErrorItem], location: str, what: str, got: int, limit: int) -> None:
    errors.append(ErrorItem(location=location, type="limit_exceeded",
                            message=f"{what} is {got}, over this service's limit of {limit}"))


def _wire_shape(features: tuple[int, ...], m: int, req) -> tuple[int, ...]:
    """The wire shape of an activation of ``features`` (vectors by layout, image batches by image_layout)."""
    return _activation_shape(features, m, req)


def _layout_words(shape: tuple[int, ...], req) -> str:
    return req.layout if len(shape) == 2 else f"image_layout {req.image_layout}"


def _input_source(name: str, in_shape: tuple[int, ...], layouts: Layouts) -> str:
    """What fixed a layer's input size, for the kinds' shape messages: 'A_prev has 3 features'."""
    if len(in_shape) == 1:
        return f"{name} has {in_shape[0]} features"
    return f"{name} holds {image_text(in_shape, layouts)}"


def _rank_error(kind_name: str, a: np.ndarray, location: str, req) -> ErrorItem | None:
    """A kind's input of the other rank than the kind takes (its ``input_rank``), with the form to send and the
    kinds that turn one rank into the other (read from the registry's ranks)."""
    kind = KINDS[kind_name]
    rank = 1 if a.ndim == 2 else 3
    if rank == kind.input_rank:
        return None
    image = "(m, H, W, C)" if req.image_layout == "NHWC" else "(m, C, H, W)"
    vector = "(m, n)" if req.layout == "examples_first" else "(n, m)"
    want = f"an image batch {image} (image_layout {req.image_layout})" if kind.input_rank == 3 else \
        f"a matrix {vector} ({req.layout})"
    turning = [k.name for k in KINDS.values() if k.input_rank == rank and k.out_rank == kind.input_rank]
    hint = f"; a {' or '.join(turning)} layer turns {_rank_words(rank)} into {_rank_words(kind.input_rank)}" \
        if turning else ""
    return ErrorItem(location=location, type="rank_mismatch",
                     message=f"{kind_name} takes {_rank_words(kind.input_rank)}, but {location} is "
                             f"{shape_text(a.shape)}, {'an image batch' if rank == 3 else 'a matrix'}: send "
                             f"{location} as {want}{hint}")


def _kind_errors(spec, in_shape, layouts: Layouts, where: str, source: str) -> tuple[tuple | None, list[ErrorItem]]:
    """The kind's shape rule on its input, located under ``where``."""
    checked = KINDS[spec.type].check(in_shape, sent_arrays(spec), hyperparameters(spec), layouts, where, source)
    return checked.out_shape, [ErrorItem(location=f"{where}.{e.field}" if e.field else where, type=e.type,
                                         message=e.message) for e in checked.errors]


def _activation_errors(spec, where: str) -> list[ErrorItem]:
    """negative_slope with an activation that does not read it; an activation over a vector's units (softmax, the
    output-only ones) on a kind whose output is an image batch."""
    unit, kind = ACTIVATIONS[spec.activation], KINDS[spec.type]
    errors = []
    if spec.negative_slope is not None and not unit.uses_slope:
        slopes = " or ".join(name for name, a in ACTIVATIONS.items() if a.uses_slope)
        errors.append(ErrorItem(location=f"{where}.negative_slope", type="extra_forbidden",
                                message=f"negative_slope applies to {slopes} only, not {spec.activation}"))
    if unit.output_only and kind.out_rank != 1:
        elementwise = ", ".join(name for name, a in ACTIVATIONS.items() if not a.output_only)
        errors.append(ErrorItem(location=f"{where}.activation", type="activation_placement",
                                message=f"{spec.activation} normalises over the units of an output vector, but "
                                        f"{spec.type} outputs image batches: use an elementwise activation "
                                        f"({elementwise})"))
    return errors


def _layer_errors(req: LayerForwardRequest, layouts: Layouts, in_shape: tuple[int, ...]
                  ) -> tuple[tuple[int, ...] | None, list[ErrorItem]]:
    """The kind's shape rule and the activation's pairing, located under ``layer``; when the rule fails with the
    request's image layout and passes with the other one, the one error that says so, at ``image_layout``."""
    out_shape, errors = _kind_errors(req.layer, in_shape, layouts, "layer", _input_source("A_prev", in_shape, layouts))
    if errors and req.A_prev.ndim == 4:
        other = replace(layouts, channels_last=not layouts.channels_last)
        shape = _features(other.to_engine_activation(req.A_prev))[0]
        if not _kind_errors(req.layer, shape, other, "layer", "")[1]:
            name, image = ("NHWC", "(m, H, W, C)") if other.channels_last else ("NCHW", "(m, C, H, W)")
            errors = [ErrorItem(location="image_layout", type="layout_mismatch",
                                message=f"A_prev is {shape_text(req.A_prev.shape)} and the layer does not fit it as "
                                        f"image_layout {req.image_layout}, but it does as {name}: A_prev looks like "
                                        f"{name} {image}: did you mean image_layout {name}?")]
    return out_shape, errors + _activation_errors(req.layer, "layer")


def _price_errors(errors: list[ErrorItem], kind, spec, in_shape, out_shape, m: int, limits: Limits,
                  where: str) -> tuple[int, int, int]:
    """The kind's price of one layer (forward work, forward and backward work, stored numbers), and its window
    and output image sides against the limits; the caller adds the works up."""
    price = kind.price(in_shape, out_shape, sent_arrays(spec), hyperparameters(spec), m)
    if price.window > limits.max_kernel_size:
        _over(errors, where, "the largest side of the kernel or window", price.window, limits.max_kernel_size)
    _image_sides(errors, where, out_shape, limits)
    return price.forward_work, price.work, price.stored


def _totals(errors: list[ErrorItem], limits: Limits, work: int, total: int, stored: int, entries: int,
            backward: bool) -> None:
    """The work (the forward's; with a backward, the whole pass's too), the activations and the stored numbers."""
    if work > limits.max_work:
        _over(errors, "body", "the work of the layer's forward pass", work, limits.max_work)
    elif backward and total > BACKWARD_FACTOR * limits.max_work:
        _over(errors, "body", f"the work of the forward and backward pass (multiply-adds as each layer kind prices "
                              f"them; at most {BACKWARD_FACTOR} times the forward limit)", total,
              BACKWARD_FACTOR * limits.max_work)
    if entries > limits.max_activations:
        _over(errors, "body", "the number of activation entries (input and output)", entries, limits.max_activations)
    elif stored > limits.max_stored:
        _over(errors, "body", "the numbers a forward and backward pass keeps in memory (caches, im2col buffers and "
                              "gradients, as each layer kind prices them)", stored, limits.max_stored)


def _input_limits(errors: list[ErrorItem], location: str, in_shape, m: int, limits: Limits) -> None:
    if m > limits.max_examples:
        _over(errors, location, "the number of examples m", m, limits.max_examples)
    if in_shape[0] > limits.max_units:
        _over(errors, location, "the number of input features" if len(in_shape) == 1 else
              "the number of input channels", in_shape[0], limits.max_units)
    _image_sides(errors, location, in_shape, limits)


def _layer_limits(req: LayerForwardRequest, limits: Limits, in_shape, out_shape, m: int,
                  extra: list[np.ndarray]) -> None:
    """Sizes and the kind's price, before any work: 422 limit_exceeded."""
    errors: list[ErrorItem] = []
    spec, kind = req.layer, KINDS[req.layer.type]
    arrays = sent_arrays(spec)
    _input_limits(errors, "A_prev", in_shape, m, limits)
    if out_shape is not None and kind.params and out_shape[0] > limits.max_units:
        _over(errors, f"layer.{kind.params[0].name}", "the number of units", out_shape[0], limits.max_units)
    elements = req.A_prev.size + sum(a.size for a in arrays.values()) + sum(a.size for a in extra)
    if elements > limits.max_elements:
        _over(errors, "body", "the total number of array elements", elements, limits.max_elements)
    if out_shape is not None:
        work, total, stored = _price_errors(errors, kind, spec, in_shape, out_shape, m, limits, "layer")
        entries = (int(np.prod(in_shape)) + int(np.prod(out_shape))) * m
        _totals(errors, limits, work, total, stored, entries, isinstance(req, LayerBackwardRequest))
    if errors:
        raise InvalidRequest(errors, title="Request over the limits", slug="limit-exceeded")


def prepare_layer(req: LayerForwardRequest, limits: Limits) -> LayerPrep:
    """Checks (A_prev's rank against the kind's, limits, the kind's shape rule, the upstream gradient and cache of a
    backward request) and the conversion to the engine's form. InvalidRequest lists every problem, located."""
    rank = _rank_error(req.layer.type, req.A_prev, "A_prev", req)
    if rank is not None:
        raise InvalidRequest([rank])
    layouts = _layouts(req)
    A_prev = to_engine(req.A_prev, layouts)
    in_shape, m = _features(A_prev)
    out_shape, errors = _layer_errors(req, layouts, in_shape)
    upstream = [a for a in (getattr(req, n, None) for n in ("dA", "dZ", "Z")) if a is not None]
    _layer_limits(req, limits, in_shape, out_shape, m, upstream)
    if isinstance(req, LayerBackwardRequest) and out_shape is not None:
        errors += _backward_errors(req, _wire_shape(out_shape, m, req))
    if errors:
        raise InvalidRequest(errors)
    layer = _engine_layer(req.layer, layouts, in_shape)
    extra = {}
    if isinstance(req, LayerBackwardRequest):
        extra = {n: to_engine(getattr(req, n), layouts) if getattr(req, n) is not None else None
                 for n in ("dA", "dZ", "Z")}
    return LayerPrep(layer, A_prev, sent_arrays(req.layer), layouts, in_shape, out_shape, m, **extra)


def _mismatch(name: str, a: np.ndarray, want: tuple[int, ...], what: str, req) -> ErrorItem:
    """``name`` not of the shape ``want`` of ``what``; an image batch that is ``want`` in the other image layout is
    told so."""
    message = f"{name} is {shape_text(a.shape)} but {what} is {shape_text(want)} ({_layout_words(want, req)})"
    if len(want) == 4 and a.ndim == 4:
        m, *rest = want
        other = (m, rest[1], rest[2], rest[0]) if req.image_layout == "NCHW" else (m, rest[2], rest[0], rest[1])
        if a.shape == other and other != want:
            message += f": {name} looks like the other image layout; send it as A_prev is, {req.image_layout}"
    return ErrorItem(location=name, type="shape_mismatch", message=message)


def _backward_errors(req: LayerBackwardRequest, want: tuple[int, ...]) -> list[ErrorItem]:
    """Exactly one of dA and dZ; Z only with dA; each shaped like the layer's output."""
    errors = []
    if req.dA is None and req.dZ is None:
        errors.append(ErrorItem(location="dA", type="missing_upstream_gradient",
                                message="send the upstream gradient: dA (w.r.t. the layer's output A, as "
                                        "linear_activation_backward takes it) or dZ (before the activation, as "
                                        "linear_backward and affine_backward take it)"))
    if req.dA is not None and req.dZ is not None:
        errors.append(ErrorItem(location="dZ", type="both_upstream_gradients",
                                message="send exactly one of dA and dZ: dZ = dA * g'(Z) follows from dA"))
    if req.Z is not None and req.dA is None:
        errors.append(ErrorItem(location="Z", type="extra_forbidden",
                                message="Z is used with dA only (to evaluate g'(Z)); with dZ it has no effect: leave "
                                        "it out"))
    for name in ("dA", "dZ", "Z"):
        a = getattr(req, name)
        if a is not None and a.shape != want:
            errors.append(_mismatch(name, a, want, "the layer's output", req))
    return errors


# --- layer responses ----------------------------------------------------------------------------------------

Array = Numbers | list[float] | Images
Activation = Numbers | Images


# The body of a 200 from POST /v1/layer/forward.
class LayerForwardResponse(BaseModel):
    Z: Activation = Field(description="The kind's output before the activation (dense: W A_prev + b; conv2d: the "
                                      "cross-correlation plus b), in the layout; an image batch by image_layout for "
                                      "the kinds whose output is one.")
    A: Activation = Field(description="g(Z), as Z.")
    cache: dict[str, Array] = Field(description="What the kind's cache keeps, by name (none for dense, conv2d, the "
                                                "poolings and flatten, whose caches are their inputs and parameters; "
                                                "batchnorm, layernorm, spatial_batchnorm, groupnorm: `xhat`, `mean`, "
                                                "`var`, `std` = sqrt(var + eps)). Values shaped like the activations "
                                                "follow the layouts (xhat); per-feature and per-channel ones come in "
                                                "the shape gamma was sent in (batchnorm's and spatial_batchnorm's "
                                                "mean, var, std); groupnorm's mean, var and std are (m, G), one per "
                                                "example and group.")
    state: Optional[dict[str, Array]] = Field(default=None, description="Only for kinds with running statistics "
                                                                        "(batchnorm, spatial_batchnorm): the updated "
                                                                        "`running_mean` and `running_var`, in the "
                                                                        "shapes sent.")


# The body of a 200 from POST /v1/layer/backward.
class LayerBackwardResponse(BaseModel):
    model_config = ConfigDict(extra="allow", json_schema_extra={
        "description": "dA_prev, dZ and d<param> for every parameter of the kind (dW, db; dgamma, dbeta), each "
                       "parameter's gradient in the shape it was sent in (conv2d's dW in the image layout's form)."})

    dA_prev: Activation = Field(description="dJ/dA_prev = the kind's backward of dZ (dense: W^T dZ), as A_prev was "
                                            "sent.")
    dZ: Activation = Field(description="dZ as sent, or dA * g'(Z), as the layer's output.")


def _activation_ranks(kind) -> tuple[int, ...]:
    """The numbers of dimensions of a kind's input and output activations: 2 for vectors, 4 for image batches."""
    return tuple(2 if rank == 1 else 4 for rank in (kind.input_rank, kind.out_rank))


def _cache_value(value: np.ndarray, prep: LayerPrep) -> np.ndarray:
    """A cache value in wire form (the contract of ``Kind.cache_values``): per feature or channel (1-D, (D,)) in
    the shape of the parameter of D entries as sent; shaped like the kind's activations ((rows, m) or (m, C, H, W))
    in the layouts; any other (groupnorm's (m, G)) as the kind gives it."""
    if value.ndim == 1:
        for p in prep.layer.unit.params:
            if prep.layer.params[p.name].size == value.size:
                return np.ascontiguousarray(p.to_wire(value.reshape(prep.layer.params[p.name].shape),
                                                      prep.sent[p.name], prep.layouts))
    if value.ndim in _activation_ranks(prep.layer.unit):
        return to_wire(value, prep.layouts)
    return np.ascontiguousarray(value)


def forward_to_wire(step: steps.ForwardStep, prep: LayerPrep) -> dict:
    body: dict[str, Any] = {"Z": to_wire(step.Z, prep.layouts), "A": to_wire(step.A, prep.layouts),
                            "cache": {k: _cache_value(v, prep) for k, v in step.cache_values.items()}}
    if prep.layer.unit.states:
        body["state"] = {s.name: np.ascontiguousarray(s.to_wire(step.state[s.name], prep.sent.get(s.name),
                                                                prep.layouts))
                         for s in prep.layer.unit.states}
    return body


def backward_to_wire(step: steps.BackwardStep, prep: LayerPrep) -> dict:
    body: dict[str, Any] = {"dA_prev": to_wire(step.dA_prev, prep.layouts), "dZ": to_wire(step.dZ, prep.layouts)}
    for p in prep.layer.unit.params:
        body[f"d{p.name}"] = np.ascontiguousarray(p.to_wire(step.grads[p.name], prep.sent[p.name], prep.layouts))
    return body


# --- the cost ----------------------------------------------------------------------------------------------

AnyArray = array_type(1, 2, 3, 4)


# The body of POST /v1/cost.
class CostRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cost: CostName = Field(description="The cost.")
    Y: MatrixOrVector = Field(description="Labels: (n_L, m) or (m, n_L) by layout; a flat list of m labels when n_L = "
                                          "1; for the costs that take them also a flat list of m class indices.")
    AL: Optional[Matrix] = Field(default=None, description="The output A_L, as the course's compute_cost(AL, Y) takes "
                                                           "it, taken as exact. Send this or `ZL`. At exactly 0 or 1 "
                                                           "against its label the cost is infinite (a 422 that says "
                                                           "where): send ZL then.")
    ZL: Optional[Matrix] = Field(default=None, description="The output's logits Z_L: the cost and dA_L computed from "
                                                           "them are exact where A_L rounds to 0 or 1 (recommended).")
    activation: Optional[ActivationName] = Field(default=None, description="The output activation. Default: the "
                                                 "cost's canonical one (sigmoid for binary cross-entropy, softmax "
                                                 "for categorical, linear otherwise). With AL, dZL is returned for the "
                                                 "canonical pair only.")
    negative_slope: Optional[FiniteFloat] = Field(default=None, description="Slope of `leaky_relu` for z <= 0 "
                                                                            "(default 0.01), with ZL.")
    l2: Annotated[FiniteFloat, Field(ge=0)] = Field(default=0.0, description="lambda >= 0: J += lambda/(2m) sum "
                                                    "||W||_F^2 over `weights` (compute_cost_with_regularization).")
    weights: list[AnyArray] = Field(default_factory=list, description="The weights the L2 term sums over (W1, W2, "
                                                                      "...), any shapes; needed with l2 > 0.")
    layout: Layout = Field(default="features_first", description="Orientation of Y, AL, ZL, dAL and dZL.")
    intermediates: Intermediates = Field(default="per_example", description="`per_example`: dAL and dZL without "
                                         "1/m (dZL = AL - Y); `mean`: with it (the exact partial derivatives of J).")


@dataclass(frozen=True)
class CostPrep:
    """A checked cost request: Y (n_L, m), AL or ZL features first, the activation, and the layouts."""

    Y: np.ndarray
    AL: np.ndarray | None
    ZL: np.ndarray | None
    activation: str
    negative_slope: float
    layouts: Layouts


def prepare_cost(req: CostRequest, limits: Limits) -> CostPrep:
    """Limits, exactly one of AL and ZL, the activation's pairing, the labels and AL's domain."""
    errors: list[ErrorItem] = []
    sent = req.AL if req.AL is not None else req.ZL
    elements = req.Y.size + sum(a.size for a in (req.AL, req.ZL) if a is not None) + sum(w.size for w in req.weights)
    if elements > limits.max_elements:
        _over(errors, "body", "the total number of array elements", elements, limits.max_elements)
    if sent is not None:
        m = sent.shape[0] if req.layout == "examples_first" else sent.shape[1]
        if m > limits.max_examples:
            _over(errors, "AL" if req.AL is not None else "ZL", "the number of examples m", m, limits.max_examples)
    if errors:
        raise InvalidRequest(errors, title="Request over the limits", slug="limit-exceeded")
    if (req.AL is None) == (req.ZL is None):
        where = "ZL" if req.AL is not None else "AL"
        raise InvalidRequest([ErrorItem(location=where, type="output_form", message=(
            "send exactly one of AL and ZL" if req.AL is not None else
            "send the output: AL (as compute_cost(AL, Y) takes it) or ZL, its logits (exact where AL saturates)"))])
    unit = COSTS[req.cost]
    activation = req.activation or unit.fused_activation
    if unit.output_activations is not None and activation not in unit.output_activations:
        needs = " or ".join(sorted(unit.output_activations))
        errors.append(ErrorItem(location="activation", type="cost_pairing",
                                message=f"{req.cost} needs a {needs} output, got {activation!r}"))
    if req.negative_slope is not None and not ACTIVATIONS[activation].uses_slope:
        errors.append(ErrorItem(location="negative_slope", type="extra_forbidden",
                                message=f"negative_slope applies to leaky_relu only, not {activation}"))
    if req.l2 and not req.weights:
        errors.append(ErrorItem(location="weights", type="missing", message="l2 > 0 needs the weights it sums over: "
                                                                            "send `weights`, a list of W1, W2, ..."))
    layouts = _layouts(req)
    output = to_engine(sent, layouts)
    Y = None if errors else _labels(req, output.shape[0], output.shape[1], errors)
    if req.AL is not None and not errors:
        problem = unit.output_error(output)
        if problem:
            errors.append(ErrorItem(location="AL", type="output_domain", message=problem))
    if errors:
        raise InvalidRequest(errors)
    slope = DEFAULT_NEGATIVE_SLOPE if req.negative_slope is None else req.negative_slope
    return CostPrep(Y, output if req.AL is not None else None, output if req.ZL is not None else None, activation,
                    slope, layouts)


def compute_cost(prep: CostPrep, req: CostRequest) -> steps.CostStep:
    """The engine's cost; an infinite cost of the AL given is a 422 at its first entry, suggesting ZL."""
    if prep.ZL is not None:
        return steps.cost_of_logits(req.cost, prep.ZL, prep.Y, prep.activation, negative_slope=prep.negative_slope,
                                    l2=req.l2, weights=req.weights, intermediates=req.intermediates)
    try:
        return steps.cost_of_output(req.cost, prep.AL, prep.Y, canonical=prep.activation == COSTS[req.cost].fused_activation,
                                    l2=req.l2, weights=req.weights, intermediates=req.intermediates)
    except steps.InfiniteCost as exc:
        raise InvalidRequest([_infinite(exc.entries, prep)]) from None


def _infinite(entries: np.ndarray, prep: CostPrep) -> ErrorItem:
    k, i = (int(v) for v in entries[0])
    label = prep.Y[k, i]
    where = [i, k] if prep.layouts.examples_first else [k, i]
    more = f" (and {len(entries) - 1} more entries)" if len(entries) > 1 else ""
    return ErrorItem(location=f"AL[{where[0]}][{where[1]}]", type="infinite_cost",
                     message=f"AL is exactly {prep.AL[k, i]:g} where the label is {label:g}{more}: the loss there is "
                             f"infinite in float64 (log 0); send ZL, the logits, whose cost is exact and finite")


# The body of a 200 from POST /v1/cost.
class CostResponse(BaseModel):
    cost: float = Field(description="J, with the L2 term.")
    dAL: Numbers = Field(description="dJ/dA_L per `intermediates` (the course's dAL = -(Y/AL - (1-Y)/(1-AL)) for "
                                     "binary cross-entropy), in the layout; null entries where not representable "
                                     "(see `warnings`).")
    dZL: Optional[Numbers] = Field(default=None, description="dJ/dZ_L per `intermediates`: AL - Y for the canonical "
                                                             "pairs; with ZL for any activation; absent with AL and a "
                                                             "non-canonical activation (g'(Z) needs Z).")
    AL: Optional[Numbers] = Field(default=None, description="g(ZL), when ZL was sent.")
    warnings: list[NullWarning] = Field(default_factory=list, description="Entries returned as null, and why.")


def cost_to_wire(step: steps.CostStep, prep: CostPrep) -> dict:
    body: dict[str, Any] = {"cost": step.cost, "dAL": to_wire(step.dAL, prep.layouts)}
    if step.dZL is not None:
        body["dZL"] = to_wire(step.dZL, prep.layouts)
    if prep.ZL is not None:
        body["AL"] = to_wire(step.AL, prep.layouts)
    warnings = []
    if step.unrepresentable.any():
        idx = np.argwhere(step.unrepresentable)
        if prep.layouts.examples_first:
            idx = idx[:, ::-1]
        warnings.append({"location": "dAL", "message": "these entries of dA_L overflow float64 (A_L rounds to exactly "
                                                       "0 or 1 while the label needs the other side) and are returned "
                                                       "as null; dZL is exact",
                         "entries": idx[:MAX_LISTED_ENTRIES].tolist(), "count": int(idx.shape[0])})
    body["warnings"] = warnings
    return body


# --- backpropagation from the learner's caches ----------------------------------------------------------------

# One layer's cache as the course keeps it: its input and its pre-activation.
class CacheSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    A_prev: MatrixOrImages = Field(description="The layer's input as cached (the course's linear_cache A), in the "
                                               "layout; an image batch by image_layout for the image kinds.")
    Z: Optional[MatrixOrImages] = Field(default=None, description="The layer's pre-activation as cached (the "
                                                                  "course's activation_cache); default: the layer "
                                                                  "applied to A_prev.")


# The body of POST /v1/network/backward.
class NetworkBackwardRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    layers: Annotated[list[LayerSpec], Field(min_length=1)] = Field(description="Layers 1 .. L as in /v1/gradients.")
    caches: Annotated[list[CacheSpec], Field(min_length=1)] = Field(
        description="One cache per layer, as the course's caches list holds them: each layer's own input A_prev and "
                    "pre-activation Z, used as sent even where they are not what the previous layer outputs (the "
                    "course's L_model_backward test case draws them independently).")
    dAL: Optional[MatrixOrImages] = Field(default=None, description="dJ/dA_L, the upstream gradient of the output "
                                                                    "(an image batch when the last layer outputs "
                                                                    "one). Send this or `AL`, `Y` and `cost`.")
    AL: Optional[Matrix] = Field(default=None, description="The output as cached: dA_L is then the cost's formula of "
                                                           "it (binary cross-entropy: -(Y/AL - (1-Y)/(1-AL))), AL as "
                                                           "sent (the course's test case has AL > 1).")
    Y: Optional[MatrixOrVector] = Field(default=None, description="Labels, with AL.")
    cost: Optional[CostName] = Field(default=None, description="The cost, with AL.")
    layout: Layout = Field(default="features_first", description="Orientation of every (units, m) array.")
    weight_layout: WeightLayout = Field(default="out_in", description="Dense W as (n_l, n_{l-1}) or (n_{l-1}, n_l).")
    image_layout: ImageLayout = Field(default="NCHW", description=_IMAGE_LAYOUT)
    intermediates: Intermediates = Field(default="per_example", description="As in /v1/layer/backward.")
    l2: Annotated[FiniteFloat, Field(ge=0)] = Field(default=0.0, description="lambda >= 0: dW_l += (lambda/m) W_l.")


@dataclass(frozen=True)
class NetworkPrep:
    """A checked request: the layers, each cache's A_prev and Z features first, dA_L, the arrays as sent, the
    layouts, each layer's input feature shape, and m."""

    layers: list[Layer]
    A_prevs: list[np.ndarray]
    Zs: list[np.ndarray | None]
    dAL: np.ndarray
    sent: list[dict[str, np.ndarray]]
    layouts: Layouts
    in_shapes: list[tuple[int, ...]]
    m: int


def _cache_errors(req: NetworkBackwardRequest, layouts: Layouts) -> tuple[list, list[ErrorItem]]:
    """Each layer against its own cache: its A_prev's rank against the kind's, the kind's shape rule on it, its Z,
    and the chain (layer l's output is layer l + 1's input); returns the output shapes and the errors."""
    errors: list[ErrorItem] = []
    if len(req.caches) != len(req.layers):
        return [], [ErrorItem(location="caches", type="shape_mismatch",
                              message=f"needs one cache per layer: {len(req.layers)}, got {len(req.caches)}")]
    outs: list = []
    m = _features(to_engine(req.caches[0].A_prev, layouts))[1]
    for i, (spec, cache) in enumerate(zip(req.layers, req.caches)):
        at = f"caches[{i}].A_prev"
        rank = _rank_error(spec.type, cache.A_prev, at, req)
        if rank is not None:
            errors.append(rank)
            outs.append(None)
            continue
        in_shape, m_i = _features(to_engine(cache.A_prev, layouts))
        if m_i != m:
            errors.append(ErrorItem(location=at, type="shape_mismatch",
                                    message=f"{at} has {m_i} examples but caches[0].A_prev has {m}"))
        out, found = _kind_errors(spec, in_shape, layouts, f"layers[{i}]", _input_source(at, in_shape, layouts))
        errors += found + _activation_errors(spec, f"layers[{i}]")
        outs.append(out)
        if i > 0 and outs[i - 1] is not None and outs[i - 1] != in_shape:
            errors.append(_mismatch(at, cache.A_prev, _wire_shape(outs[i - 1], m_i, req), f"layers[{i - 1}]'s output",
                                    req))
        if cache.Z is not None and out is not None and cache.Z.shape != _wire_shape(out, m, req):
            errors.append(_mismatch(f"caches[{i}].Z", cache.Z, _wire_shape(out, m, req), f"layers[{i}]'s output",
                                    req))
    return outs, errors


def _network_limits(req: NetworkBackwardRequest, limits: Limits, layouts: Layouts) -> None:
    """Sizes and the kinds' prices, from each layer's own cached input, before any work."""
    errors: list[ErrorItem] = []
    if len(req.layers) > limits.max_layers:
        _over(errors, "layers", "the number of layers", len(req.layers), limits.max_layers)
    elements = sum(a.size for a in (req.dAL, req.AL, req.Y) if a is not None)
    work = total = stored = entries = 0
    for i, (spec, cache) in enumerate(zip(req.layers, req.caches)):
        kind, arrays, hyper = KINDS[spec.type], sent_arrays(spec), hyperparameters(spec)
        elements += sum(a.size for a in arrays.values()) + cache.A_prev.size + (0 if cache.Z is None else cache.Z.size)
        if _rank_error(spec.type, cache.A_prev, "", req) is not None:
            continue  # priced once the rank is right
        in_shape, m = _features(to_engine(cache.A_prev, layouts))
        _input_limits(errors, f"caches[{i}].A_prev", in_shape, m, limits)
        out = kind.check(in_shape, arrays, hyper, layouts, f"layers[{i}]", "").out_shape
        if out is not None:
            w, t, s = _price_errors(errors, kind, spec, in_shape, out, m, limits, f"layers[{i}]")
            work, total, stored = work + w, total + t, stored + s
            entries += (int(np.prod(in_shape)) + int(np.prod(out))) * m
    if elements > limits.max_elements:
        _over(errors, "body", "the total number of array elements", elements, limits.max_elements)
    if work > limits.max_work:
        _over(errors, "body", "the work of the layers' forward passes", work, limits.max_work)
    elif total > BACKWARD_FACTOR * limits.max_work:
        _over(errors, "body", f"the work of the layers' forward and backward passes (multiply-adds as each layer kind "
                              f"prices them; at most {BACKWARD_FACTOR} times the forward limit)", total,
              BACKWARD_FACTOR * limits.max_work)
    if entries > limits.max_activations:
        _over(errors, "body", "the number of activation entries (each layer's input and output)", entries,
              limits.max_activations)
    elif stored > limits.max_stored:
        _over(errors, "body", "the numbers a backward pass keeps in memory (caches, im2col buffers and gradients, as "
                              "each layer kind prices them)", stored, limits.max_stored)
    if errors:
        raise InvalidRequest(errors, title="Request over the limits", slug="limit-exceeded")


def prepare_network(req: NetworkBackwardRequest, limits: Limits) -> NetworkPrep:
    """Limits, each layer against its cache, and the upstream gradient: dAL, or AL with Y and cost."""
    layouts = _layouts(req)
    _network_limits(req, limits, layouts)
    outs, errors = _cache_errors(req, layouts)
    if errors:
        raise InvalidRequest(errors)
    A_prevs = [to_engine(c.A_prev, layouts) for c in req.caches]
    m = _features(A_prevs[0])[1]
    want = _wire_shape(outs[-1], m, req) if outs[-1] is not None else None
    dAL = _upstream(req, want, layouts, errors)
    if errors:
        raise InvalidRequest(errors)
    in_shapes = [_features(A)[0] for A in A_prevs]
    layers = [_engine_layer(spec, layouts, shape) for spec, shape in zip(req.layers, in_shapes)]
    return NetworkPrep(layers, A_prevs, [to_engine(c.Z, layouts) if c.Z is not None else None for c in req.caches],
                       dAL, [sent_arrays(spec) for spec in req.layers], layouts, in_shapes, m)


def _upstream(req: NetworkBackwardRequest, want, layouts: Layouts, errors: list[ErrorItem]) -> np.ndarray | None:
    """dA_L in the engine's form: as sent, or the cost's formula of AL as sent (no domain check: the course's test
    case has AL > 1), times 1/m under ``intermediates`` mean."""
    if (req.dAL is None) == (req.AL is None):
        errors.append(ErrorItem(location="dAL", type="output_form", message=(
            "send exactly one of dAL and AL" if req.dAL is not None else
            "send the upstream gradient: dAL, or AL with Y and cost (dAL is then the cost's formula of AL)")))
        return None
    sent, name = (req.dAL, "dAL") if req.dAL is not None else (req.AL, "AL")
    if want is not None and sent.shape != want:
        errors.append(_mismatch(name, sent, want, "the last layer's output", req))
        return None
    if req.dAL is not None:
        return to_engine(req.dAL, layouts)
    missing = [f for f in ("Y", "cost") if getattr(req, f) is None]
    if missing:
        errors += [ErrorItem(location=f, type="missing", message=f"AL needs {f} to give dAL") for f in missing]
        return None
    AL = to_engine(req.AL, layouts)
    Y = _labels(req, AL.shape[0], AL.shape[1], errors)
    if Y is None:
        return None
    with np.errstate(all="ignore"):
        dAL = COSTS[req.cost].output_dA(AL, Y)
    if not np.isfinite(dAL).all():
        k, i = (int(v) for v in np.argwhere(~np.isfinite(dAL))[0])
        where = [i, k] if layouts.examples_first else [k, i]
        errors.append(ErrorItem(location=f"AL[{where[0]}][{where[1]}]", type="infinite_gradient",
                                message=f"dAL is infinite where AL is exactly {AL[k, i]:g} against the label "
                                        f"{Y[k, i]:g}: send dAL itself"))
        return None
    # Under `mean` dA_L is dJ/dA_L, as /v1/cost and /v1/gradients return it: the 1/m is in it.
    return dAL * (1.0 / AL.shape[1]) if req.intermediates == "mean" else dAL


def network_backward_to_wire(result: steps.CachedBackward, prep: NetworkPrep) -> dict:
    """dA0..dAL, dZ1..dZL and every parameter's gradient (as sent), keyed by the course's names."""
    body: dict[str, Any] = {}
    for l, layer in enumerate(prep.layers, start=1):
        for p in layer.unit.params:
            body[keys.grad(p.name, l)] = np.ascontiguousarray(p.to_wire(result.grads[l - 1][p.name],
                                                                        prep.sent[l - 1][p.name], prep.layouts))
    for l in range(1, len(prep.layers) + 1):
        body[keys.dZ(l)] = to_wire(result.dZ[l - 1], prep.layouts)
    for l in range(len(prep.layers) + 1):
        body[keys.dA(l)] = to_wire(result.dA[l], prep.layouts)
    return body

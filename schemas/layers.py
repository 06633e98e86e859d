"""The request model of each layer kind, built from the kind's declarations (``service.engine.kinds``).

A layer object is ``{"type": <kind>, <its parameters>, <its running statistics>, <its hyperparameters>,
"activation", "negative_slope"}``; ``type`` defaults to ``dense``. The models form a union discriminated by
``type``; the pydantic field of each declaration comes from its neutral form here, so that a kind is one engine
module and nothing in this package names one. OpenAPI documents the union as a ``oneOf`` of the kinds' schemas,
each with its ``type`` as an enum of one name: exactly one matches any layer (a dense one may leave ``type`` out,
which an OpenAPI ``discriminator`` would forbid: its property must be present).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Optional, Union

from pydantic import (BaseModel, ConfigDict, Discriminator, Field, PlainValidator, StrictInt, Tag, WithJsonSchema,
                      create_model)
from pydantic_core import PydanticCustomError

from schemas.arrays import array_type
from schemas.common import FiniteFloat
from service.engine.activations import ACTIVATIONS
from service.engine.kinds import KINDS, REQUIRED, Hyper, Kind

ActivationName = Literal[tuple(ACTIVATIONS)]  # type: ignore[valid-type]
KIND_NAMES = tuple(KINDS)
DEFAULT_KIND = "dense"


def _hyper_field(h: Hyper) -> tuple[Any, Any]:
    """The pydantic type and Field of a hyperparameter."""
    bounds = {k: v for k, v in (("gt", h.gt), ("ge", h.ge), ("le", h.le)) if v is not None}
    if h.type == "float":
        kind: Any = Annotated[FiniteFloat, Field(**bounds)]
    elif h.type == "int":
        kind = Annotated[StrictInt, Field(**bounds)]
    elif h.type == "int_pair":
        kind = _int_pair(h)
    elif h.type == "choice":
        kind = Literal[h.choices]  # type: ignore[valid-type]
    else:
        raise TypeError(f"hyperparameter {h.name!r}: unknown type {h.type!r}")
    default = ... if h.default is REQUIRED else h.default
    if h.default is None:  # optional: null or absent means the kind's own default (a pooling stride: the window)
        kind = Optional[kind]
    return kind, Field(default=default, description=h.description)


def _value_text(value: Any) -> str:
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, str):
        return f"the string {value[:40]!r}"
    if isinstance(value, list):
        return f"a list of {len(value)}" if any(not isinstance(v, int) or isinstance(v, bool) for v in value) \
            else str(value)
    if isinstance(value, dict):
        return "an object"
    return repr(value)[:40]


def _int_pair(h: Hyper) -> Any:
    """An int or a pair [a, b] of ints (a stride, a padding, a window), each >= the hyperparameter's bound, with
    one error that says what to send (pydantic's union would report each member's failure)."""
    low = h.ge if h.ge is not None else (int(h.gt) + 1 if h.gt is not None else None)
    words = {1: "a positive integer", 0: "an integer >= 0"}.get(low, "an integer")

    def ok(v: Any) -> bool:
        return type(v) is int and (low is None or v >= low)

    def validate(value: Any) -> Any:
        if ok(value) or (type(value) is list and len(value) == 2 and all(ok(v) for v in value)):
            return value
        raise PydanticCustomError("int_pair", "{name} must be {words}, or a pair [a, b] of them (rows, columns); got "
                                              "{got}", {"name": h.name, "words": words, "got": _value_text(value)})

    one: dict = {"type": "integer"} if low is None else {"type": "integer", "minimum": low}
    schema = {"anyOf": [one, {"type": "array", "items": one, "minItems": 2, "maxItems": 2}]}
    return Annotated[Any, PlainValidator(validate), WithJsonSchema(schema)]


def _model(kind: Kind, activation: str | None = None, suffix: str = "Layer") -> type[BaseModel]:
    """The request model of one kind; ``activation``: a default that replaces the kind's own (the step routes'
    ``linear``)."""
    fields: dict[str, Any] = {
        "type": (Literal[kind.name], Field(default=kind.name, description=f"`{kind.name}`: {kind.description}"
                                           + (" The default when `type` is absent." if kind.name == DEFAULT_KIND
                                              else ""))),
    }
    for p in kind.params:
        fields[p.name] = (array_type(*p.ranks), Field(description=p.description))
    for s in kind.states:
        fields[s.name] = (Optional[array_type(*s.ranks)], Field(default=None, description=s.description))
    for h in kind.hypers:
        fields[h.name] = _hyper_field(h)
    default = activation or kind.default_activation
    fields["activation"] = (ActivationName, Field(default=... if default is None else default, description=(
        "Activation g_l applied to the kind's output; `softmax` only on the output layer."
        + ("" if default is None else f" Default `{default}`."))))
    fields["negative_slope"] = (Optional[FiniteFloat], Field(
        default=None, description="Slope of `leaky_relu` for z <= 0 (default 0.01); only allowed with `leaky_relu`."))
    name = "".join(part.capitalize() for part in kind.name.split("_")) + suffix
    model = create_model(name, __config__=ConfigDict(extra="forbid"), **fields)
    model.__doc__ = kind.description
    return model


LAYER_MODELS: dict[str, type[BaseModel]] = {name: _model(kind) for name, kind in KINDS.items()}


def _layer_kind(value: Any) -> str | None:
    """The union tag of a raw layer: its ``type`` (dense when absent); None when it is not an object."""
    if isinstance(value, dict):
        kind = value.get("type", DEFAULT_KIND)
        return kind if isinstance(kind, str) else None
    return getattr(value, "type", None)


def _union(models: dict[str, type[BaseModel]]) -> Any:
    return Annotated[
        Union[tuple(Annotated[model, Tag(name)] for name, model in models.items())],  # type: ignore[misc]
        # A layer that is not an object: reported as pydantic reports a model (schemas.errors renames the type).
        Discriminator(_layer_kind, custom_error_type="layer_type",
                      custom_error_message="Input should be a valid dictionary or instance of LayerSpec"),
    ]


# One layer of any kind.
LayerSpec = _union(LAYER_MODELS)
# The layer of a one-step route: `activation` defaults to linear (the course's linear_forward and linear_backward
# have none).
STEP_ACTIVATION = "linear"
StepLayerSpec = _union({name: _model(kind, STEP_ACTIVATION, "StepLayer") for name, kind in KINDS.items()})


def sent_arrays(spec: BaseModel) -> dict[str, Any]:
    """A layer's parameters and running statistics as the request held them (absent statistics left out)."""
    kind = KINDS[spec.type]
    out = {p.name: getattr(spec, p.name) for p in kind.params}
    out.update({s.name: getattr(spec, s.name) for s in kind.states if getattr(spec, s.name) is not None})
    return out


def hyperparameters(spec: BaseModel) -> dict[str, Any]:
    return {h.name: getattr(spec, h.name) for h in KINDS[spec.type].hypers}


def field_owners(field: str) -> list[str]:
    """The kinds that have a field of this name (for 'gamma is a field of batchnorm, layernorm' messages)."""
    return [name for name, model in LAYER_MODELS.items() if field in model.model_fields and field != "type"]

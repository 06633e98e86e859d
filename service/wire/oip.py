"""The KServe Open Inference Protocol v2 (REST) with its binary tensor data extension, for the model ``gradients``.

Decoding: ``parse`` checks an inference request's structure and framing; ``InferRequest.to_body`` gives the same
dict a /v1/gradients JSON body decodes to, its arrays as numpy arrays, for the same validation, limits and engine
(service.oip_routes). Encoding: ``encode`` turns the /v1/gradients response into OIP outputs, each in JSON or binary.

The body is a JSON header; with ``Inference-Header-Content-Length: N`` (the header's length in bytes) the binary
tensors follow it: each input with ``"parameters": {"binary_data_size": n}`` has its n bytes (little-endian,
row-major, no padding) appended in the order of ``inputs``. Without that header the whole body is the JSON header,
and every tensor carries ``data``: its entries in row-major order, flat or nested as its shape.

The mapping, generated from the registries (GET /v2/models/gradients lists it with every description):

    inputs      X, Y; <array><l> for each array of layer l (W1, b1, gamma2, running_mean2, ...: every parameter and
                running statistic of every kind); D<l>: the dropout mask of hidden layer l (absent: none there)
    parameters  the request's other fields by name (cost, layout, weight_layout, l2, intermediates,
                include_caches); keep_prob (dropout); <field><l> for layer l's other fields (type1, activation1,
                negative_slope1, eps2, mode2, ...); binary_data_output (the protocol's)
    outputs     cost (FP64, shape [1]), AL, and every key of the /v1/gradients response: d<param><l>, dZ<l>, dA<l>,
                <state><l> (updated running statistics) and, with include_caches (or when one is requested), Z<l>, A<l>

Strictness, all of it checked from the header before any tensor is read: the header length lies within the body;
each binary tensor's byte count is its shape's product times its datatype's size; the binary parts add up to
exactly the rest of the body; a JSON tensor holds exactly its shape's product of entries. Those are 400s (a
malformed request). An input, parameter or output this model does not have, or a datatype it does not take, is a
422, as an unknown field of a JSON body is. Datatypes: FP64 (used in place: little-endian FP64 bytes are not copied
unless misaligned), FP32 (widened), and INT32 / INT64 for Y (class indices); NaN and infinities are refused by the
validators that refuse them in JSON.
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import orjson

from schemas.arrays import ArrayErrors, NullEntries, structure_shape
from schemas.errors import ErrorItem, InvalidRequest
from schemas.gradients import DropoutSpec, GradientRequest
from schemas.layers import DEFAULT_KIND, LAYER_MODELS
from service.engine import keys
from service.engine.kinds import KINDS, param_names, state_names
from service.wire import json_body

PREFIX = "/v2"
HEADER = "Inference-Header-Content-Length"
MODEL, MODEL_VERSION = "gradients", "1"
EXTENSIONS = ("binary_tensor_data",)

# Every datatype of the protocol and its size in bytes (BYTES elements are length-prefixed: no fixed size).
SIZES = {"BOOL": 1, "UINT8": 1, "UINT16": 2, "UINT32": 4, "UINT64": 8, "INT8": 1, "INT16": 2, "INT32": 4,
         "INT64": 8, "FP16": 2, "FP32": 4, "FP64": 8, "BF16": 2, "BYTES": None}
# The datatypes this model takes, as little-endian numpy dtypes: floats for every input, integers also for Y.
NUMPY = {"FP64": "<f8", "FP32": "<f4", "INT32": "<i4", "INT64": "<i8"}
FLOATS = ("FP64", "FP32")
LABEL_TYPES = ("FP64", "FP32", "INT32", "INT64")
MAX_RANK = 8
MASK = "D"
BINARY_OUTPUT = "binary_data_output"
# Fields of the request body that are not parameters: the tensors, and the lists the tensors' names place them in.
BODY_TENSORS, BODY_LISTS = ("X", "Y"), ("layers", "dropout")
_REQUEST_KEYS = ("id", "model_name", "model_version", "parameters", "inputs", "outputs")
_INPUT_KEYS = ("name", "shape", "datatype", "parameters", "data")
_OUTPUT_KEYS = ("name", "parameters")
# The /v2 routes a load balancer or Kubernetes probes: open like /healthz and /readyz, whatever the API keys.
_HEALTH = re.compile(r"^/v2/health/(live|ready)$|^/v2/models/[^/]+(/versions/[^/]+)?/ready$")


def is_health_path(path: str) -> bool:
    return _HEALTH.match(path) is not None


def _ordered(names) -> tuple[str, ...]:
    return tuple(dict.fromkeys(names))


# Names of the mapping, from the registries and the request model (no kind is named here).
TENSOR_FIELDS = _ordered(item.name for kind in KINDS.values() for item in (*kind.params, *kind.states))
LAYER_FIELDS = _ordered(name for model in LAYER_MODELS.values() for name in model.model_fields
                        if name not in TENSOR_FIELDS)
REQUEST_FIELDS = tuple(n for n in GradientRequest.model_fields if n not in BODY_TENSORS + BODY_LISTS)
DROPOUT_FIELDS = tuple(n for n in DropoutSpec.model_fields if n != "masks")


def _layered(names) -> re.Pattern:
    """<name><l> for the given names (longest first, so that no name shadows a longer one), l = 1, 2, ..."""
    alternatives = "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))
    return re.compile(rf"^({alternatives})([1-9][0-9]*)$")


_TENSOR_NAME = _layered((*TENSOR_FIELDS, MASK))
_LAYER_PARAMETER = _layered(LAYER_FIELDS)
for _name in (*REQUEST_FIELDS, *DROPOUT_FIELDS, BINARY_OUTPUT):
    if _LAYER_PARAMETER.match(_name) or _name in LAYER_FIELDS:
        raise RuntimeError(f"the request field {_name!r} reads as a layer's parameter: rename one of them")
if MASK in TENSOR_FIELDS or set(BODY_TENSORS) & set(TENSOR_FIELDS):
    raise RuntimeError("a layer array is named like X, Y or the dropout mask D: the tensor names would clash")


def _malformed(location: str, message: str) -> InvalidRequest:
    return InvalidRequest([ErrorItem(location=location, type="oip_malformed", message=message)], status=400,
                          title="Malformed inference request", slug="malformed-inference-request")


@dataclass
class Tensor:
    """One input as the header declares it: binary (``size`` bytes at ``offset`` of the body) or JSON ``data``."""

    index: int
    name: str
    datatype: str
    shape: tuple[int, ...]
    size: int | None = None
    offset: int | None = None
    data: Any = None

    @property
    def count(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class Output:
    """A requested output: its name and its ``binary_data`` parameter (None: the request's default)."""

    index: int
    name: str
    binary: bool | None


def _target(name: str) -> tuple | None:
    """Where an input goes in the body: (X,), (Y,), (mask, l), (layer, l, field); None for no input of the model."""
    if name in BODY_TENSORS:
        return (name,)
    match = _TENSOR_NAME.match(name)
    if match is None:
        return None
    field, layer = match.group(1), int(match.group(2))
    return ("mask", layer) if field == MASK else ("layer", layer, field)


def _parameter_target(key: str) -> tuple | None:
    """Where a request parameter goes: (protocol,), (request, field), (dropout, field), (layer, l, field)."""
    if key == BINARY_OUTPUT:
        return ("protocol",)
    if key in REQUEST_FIELDS:
        return ("request", key)
    if key in DROPOUT_FIELDS:
        return ("dropout", key)
    match = _LAYER_PARAMETER.match(key)
    return None if match is None else ("layer", int(match.group(2)), match.group(1))


def _output_key(name: str) -> keys.Key | None:
    try:
        return keys.parse(name, param_names(), state_names())
    except ValueError:
        return None


# --- decoding ----------------------------------------------------------------------------------------------------

@dataclass
class InferRequest:
    """A parsed inference request: its framing checked, its names known to the model (``parse``)."""

    raw: bytes | None
    tensors: list[Tensor]
    parameters: dict[str, Any]
    outputs: list[Output] | None
    id: str | None
    binary_output: bool

    def outline(self) -> dict:
        """The body with each tensor a one-entry array of its rank: validating it reads no tensor, and
        ``shape_into`` then gives the validated request stand-ins of the declared shapes (for the limits)."""
        return self._body(lambda t: np.zeros(tuple(min(n, 1) for n in t.shape)))

    def shape_into(self, req: GradientRequest) -> None:
        """Put into a validated ``outline`` a stand-in of each tensor's declared shape, holding no memory."""
        zero = np.zeros((), dtype=np.float64)
        for t in self.tensors:
            stand_in, target = np.broadcast_to(zero, t.shape), _target(t.name)
            if len(target) == 1:
                setattr(req, t.name, stand_in)
            elif target[0] == "mask":
                req.dropout.masks[target[1] - 1] = stand_in
            else:
                setattr(req.layers[target[1] - 1], target[2], stand_in)

    def to_body(self) -> dict:
        """The /v1/gradients body this request stands for, its tensors as numpy arrays (binary FP64 ones are views
        of the body). Drops this request's hold on the body and on JSON tensor data: the body dict holds them now."""
        value = self._body(self._array)
        self.raw = None
        for t in self.tensors:
            t.data = None
        return value

    def _body(self, array) -> dict:
        out: dict[str, Any] = {}
        layers: dict[int, dict] = {}
        masks: dict[int, Any] = {}
        dropout: dict[str, Any] = {}
        for key, value in self.parameters.items():
            target = _parameter_target(key)
            if target[0] == "request":
                out[key] = value
            elif target[0] == "dropout":
                dropout[key] = value
            elif target[0] == "layer":
                layers.setdefault(target[1], {})[target[2]] = value
        for t in self.tensors:
            target = _target(t.name)
            if len(target) == 1:
                out[t.name] = array(t)
            elif target[0] == "mask":
                masks[target[1]] = array(t)
            else:
                layers.setdefault(target[1], {})[target[2]] = array(t)
        n_layers = max(layers, default=0)
        out["layers"] = [layers.get(l, {}) for l in range(1, n_layers + 1)]
        if masks or dropout:
            # One entry per hidden layer, or more when a mask names a layer past them (the validator says so).
            n_masks = max(n_layers - 1, max(masks, default=0))
            out["dropout"] = {**dropout, "masks": [masks.get(l) for l in range(1, n_masks + 1)]}
        if "include_caches" not in self.parameters and any(
                (k := _output_key(o.name)) is not None and k.quantity in ("Z", "A") for o in self.outputs or ()):
            out["include_caches"] = True
        return out

    def _array(self, t: Tensor) -> Any:
        if t.offset is None:
            return _json_array(t)
        a = np.frombuffer(self.raw, dtype=NUMPY[t.datatype], count=t.count, offset=t.offset).reshape(t.shape)
        # numpy's matrix products take a slower path on misaligned float64 (about 3x here): copy those once.
        # (FP32 and integers are widened into new arrays by the validator anyway.)
        return a.copy() if t.datatype == "FP64" and not a.flags.aligned else a


def parse(raw: bytes, header_length: str | None, caps: json_body.Structure) -> InferRequest:
    """An inference request's JSON header and framing (400 when malformed), then the model's names (422)."""
    json_end = _header_length(header_length, len(raw))
    header = json_body.decode(raw if json_end == len(raw) else raw[:json_end], caps)
    if not isinstance(header, dict):
        raise _malformed("request", "the JSON header must be an object with inputs (and optionally id, parameters, "
                                    "outputs)")
    _known(header, _REQUEST_KEYS, "request")
    request_id = header.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise _malformed("id", "id must be a string")
    if header.get("model_name", MODEL) != MODEL:
        raise _malformed("model_name", f"the body names the model {header['model_name']!r}, the path {MODEL!r}")
    if header.get("model_version", MODEL_VERSION) != MODEL_VERSION:
        raise _malformed("model_version", f"the body names the version {header['model_version']!r}; the model's "
                                          f"is {MODEL_VERSION!r}")
    parameters = _object(header.get("parameters", {}), "parameters")
    binary_output = parameters.get(BINARY_OUTPUT, False)
    if not isinstance(binary_output, bool):
        raise _malformed(f"parameters.{BINARY_OUTPUT}", f"{BINARY_OUTPUT} must be true or false")
    inputs = header.get("inputs")
    if not isinstance(inputs, list):
        raise _malformed("inputs", "inputs must be a list of tensors, each with name, shape, datatype and data "
                                   "(or parameters.binary_data_size)")
    tensors = [_tensor(i, item) for i, item in enumerate(inputs)]
    _frame(tensors, len(raw), json_end, header_length is not None)
    req = InferRequest(raw, tensors, parameters, _outputs(header.get("outputs")), request_id, binary_output)
    errors = _model_errors(req)
    if errors:
        raise InvalidRequest(errors)
    return req


def _header_length(value: str | None, size: int) -> int:
    """Where the JSON header ends: Inference-Header-Content-Length, which must lie within the body; the whole
    body without it."""
    if value is None:
        return size
    if re.fullmatch(r"[0-9]{1,19}", value.strip()) is None:
        raise _malformed(f"header.{HEADER}", f"{HEADER} must be the JSON header's length in bytes, a non-negative "
                                             f"integer; got {value[:40]!r}")
    n = int(value)
    if n > size:
        raise _malformed(f"header.{HEADER}", f"{HEADER} is {n} but the body has only {size} bytes: the JSON header "
                                             "must lie within the body")
    return n


def _known(value: dict, allowed: tuple[str, ...], where: str) -> None:
    unknown = [k for k in value if k not in allowed]
    if unknown:
        raise _malformed(f"{where}.{unknown[0]}", f"unknown field {unknown[0]!r} in {where}: its fields are "
                                                  f"{', '.join(allowed)}")


def _object(value: Any, where: str) -> dict:
    if not isinstance(value, dict):
        raise _malformed(where, f"{where} must be an object")
    return value


def _count(value: Any, where: str) -> int:
    """A non-negative integer of the header (a shape's dimension, a byte count)."""
    if type(value) is not int or value < 0:
        raise _malformed(where, f"{where} must be a non-negative integer; got {repr(value)[:40]}")
    return value


def _tensor(i: int, item: Any) -> Tensor:
    where = f"inputs[{i}]"
    if not isinstance(item, dict):
        raise _malformed(where, "each input is an object with name, shape, datatype and data (or "
                                "parameters.binary_data_size)")
    _known(item, _INPUT_KEYS, where)
    name, shape, datatype = item.get("name"), item.get("shape"), item.get("datatype")
    if not isinstance(name, str) or not name:
        raise _malformed(f"{where}.name", "each input needs a name (a string)")
    if not isinstance(shape, list) or len(shape) > MAX_RANK:
        raise _malformed(f"{where}.shape", f"input {name}: shape must be a list of at most {MAX_RANK} dimensions")
    dims = tuple(_count(n, f"{where}.shape[{k}]") for k, n in enumerate(shape))
    if datatype not in SIZES:
        raise _malformed(f"{where}.datatype", f"input {name}: {str(datatype)[:40]!r} is not a datatype of the "
                                              f"protocol ({', '.join(SIZES)})")
    parameters = _object(item.get("parameters", {}), f"{where}.parameters")
    other = [k for k in parameters if k != "binary_data_size"]
    if other:
        raise _malformed(f"{where}.parameters.{other[0]}", f"input {name}: the parameter {other[0]!r} is not "
                                                           f"supported (this server has the extensions "
                                                           f"{', '.join(EXTENSIONS)})")
    size = parameters.get("binary_data_size")
    if size is not None:
        size = _count(size, f"{where}.parameters.binary_data_size")
    if (size is None) == ("data" not in item):
        raise _malformed(where, f"input {name} needs exactly one of data (JSON) and parameters.binary_data_size "
                                "(binary)")
    return Tensor(i, name, datatype, dims, size=size, data=item.get("data"))


def _frame(tensors: list[Tensor], body_size: int, json_end: int, has_header: bool) -> None:
    """Each binary tensor's place in the body; 400 unless every size is its shape times its datatype's and they
    add up to exactly the body after the JSON header. JSON tensors: their entries flattened and counted."""
    offset = json_end
    for t in tensors:
        where = f"inputs[{t.index}]"
        if t.size is None:
            t.data = _flat(t, f"{where}.data")
            continue
        if not has_header:
            raise _malformed(f"{where}.parameters.binary_data_size",
                             f"input {t.name} is binary but the request has no {HEADER} header: send the JSON "
                             "header's length in bytes in it")
        itemsize = SIZES[t.datatype]
        if itemsize is not None and t.size != t.count * itemsize:
            raise _malformed(f"{where}.parameters.binary_data_size",
                             f"input {t.name}: binary_data_size is {t.size} bytes but shape {list(t.shape)} of "
                             f"{t.datatype} takes {t.count} x {itemsize} = {t.count * itemsize}")
        if offset + t.size > body_size:
            raise _malformed("body", f"input {t.name}'s {t.size} bytes run past the end of the body: "
                                     f"{body_size - offset} bytes are left after the JSON header and the binary "
                                     "inputs before it")
        t.offset = offset
        offset += t.size
    if offset != body_size:
        raise _malformed("body", f"the body has {body_size - offset} bytes more than the JSON header ({json_end} "
                                 f"bytes) and the binary inputs ({offset - json_end} bytes): they must add up to "
                                 "the body exactly")


def _flat(t: Tensor, where: str) -> Any:
    """A JSON tensor's entries in row-major order (a flat list, or the array a dense body's decoder built), after
    checking that there are as many as its shape takes."""
    data = t.data
    if isinstance(data, ArrayErrors):
        return data  # a dense body's array that is not rectangular or holds non-numbers: the validator says where
    if isinstance(data, (np.ndarray, NullEntries)):  # a dense body's numbers, already converted
        nested = data.shape if isinstance(data, np.ndarray) else data.array.shape
    elif isinstance(data, list):
        nested = structure_shape(data) if data and type(data[0]) is list else (len(data),)
        if isinstance(nested, ArrayErrors):
            raise _malformed(where, f"input {t.name}: nested data must be rectangular: "
                                    f"{nested.items[0]['type'].message()}")
    else:
        raise _malformed(where, f"input {t.name}: data must be a list of the tensor's entries in row-major order")
    if len(nested) > 1 and nested != t.shape:
        raise _malformed(where, f"input {t.name}: data is nested as {list(nested)} but the shape is "
                                f"{list(t.shape)}: send the entries flat, or nested as the shape")
    if math.prod(nested) != t.count:
        raise _malformed(where, f"input {t.name} holds {math.prod(nested)} entries but its shape {list(t.shape)} "
                                f"takes {t.count}")
    if isinstance(data, list):
        for _ in range(len(nested) - 1):
            data = list(itertools.chain.from_iterable(data))
    return data


def _json_array(t: Tensor) -> Any:
    """A JSON tensor as the validators take it: a numpy array of its shape when every entry is a number (FP32
    rounded to float32, as its binary form would be), else nested lists of its shape, whose bad entries the
    validator reports each at its location (X[0][3])."""
    data = t.data
    if isinstance(data, ArrayErrors):
        return data
    if isinstance(data, NullEntries):
        return NullEntries(data.array.reshape(t.shape))
    if isinstance(data, np.ndarray):
        if t.datatype.startswith("INT") and not np.array_equal(data, np.floor(data)):
            _not_integers(t, int(np.argmax(data.reshape(-1) != np.floor(data.reshape(-1)))), data.reshape(-1))
        return data.reshape(t.shape).astype(np.float32) if t.datatype == "FP32" else data.reshape(t.shape)
    types = set(map(type, data))
    if t.datatype.startswith("INT") and float in types:
        _not_integers(t, next(k for k, v in enumerate(data) if type(v) is float), data)
    if types <= {int, float}:
        try:
            with np.errstate(over="ignore"):  # an FP32 entry beyond float32 becomes inf, refused as not finite
                return np.array(data, dtype=np.float32 if t.datatype == "FP32" else np.float64).reshape(t.shape)
        except OverflowError:  # an integer beyond float64: the validator locates it
            pass
    return _nest(data, t.shape)


def _not_integers(t: Tensor, k: int, flat) -> None:
    index = "".join(f"[{int(i)}]" for i in np.unravel_index(k, t.shape))
    message = f"{t.name} is {t.datatype}: its entries are integers; got {float(flat[k])!r}"
    raise InvalidRequest([ErrorItem(location=f"{t.name}{index}", type="int_type", message=message)])


def _nest(flat: list, shape: tuple[int, ...]) -> list:
    rows = flat
    for n in reversed(shape[1:]):
        rows = [rows[i:i + n] for i in range(0, len(rows), n)]
    return rows


def _outputs(value: Any) -> list[Output] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        raise _malformed("outputs", "outputs must be a list of objects, each with a name")
    out, seen = [], set()
    for i, item in enumerate(value):
        where = f"outputs[{i}]"
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise _malformed(where, "each requested output is an object with a name (a string)")
        _known(item, _OUTPUT_KEYS, where)
        parameters = _object(item.get("parameters", {}), f"{where}.parameters")
        other = [k for k in parameters if k != "binary_data"]
        if other:
            raise _malformed(f"{where}.parameters.{other[0]}", f"output {item['name']}: the parameter {other[0]!r} is "
                                                               "not supported (only binary_data)")
        binary = parameters.get("binary_data")
        if binary is not None and not isinstance(binary, bool):
            raise _malformed(f"{where}.parameters.binary_data", "binary_data must be true or false")
        if item["name"] in seen:
            raise _malformed(where, f"the output {item['name']} is requested twice")
        seen.add(item["name"])
        out.append(Output(i, item["name"], binary))
    return out


def _model_errors(req: InferRequest) -> list[ErrorItem]:
    """Inputs, datatypes, parameters and outputs this model does not have (422, every one listed)."""
    errors, seen = [], set()
    for t in req.tensors:
        where, target = f"inputs[{t.index}]", _target(t.name)
        if target is None:
            errors.append(ErrorItem(location=where, type="unknown_input", message=f"unknown input {t.name!r}: the "
                                    f"inputs are {_input_names()}"))
            continue
        if t.count == 0:
            # Every array of the model has entries (and no dimension of an empty one is bounded by the body).
            errors.append(ErrorItem(location=f"{where}.shape", type="too_short",
                                    message=f"input {t.name} is empty (shape {list(t.shape)}): it needs entries"))
        if t.name in seen:
            errors.append(ErrorItem(location=where, type="duplicate_input", message=f"input {t.name} is sent twice"))
        seen.add(t.name)
        allowed = LABEL_TYPES if t.name == "Y" else FLOATS
        if t.datatype not in allowed:
            errors.append(ErrorItem(location=f"{where}.datatype", type="datatype", message=(
                f"input {t.name} is {t.datatype}; it takes {' or '.join(allowed)}"
                + (" (integers: class indices)" if t.name == "Y" else " (FP32 is widened to FP64)"))))
    for key in req.parameters:
        if _parameter_target(key) is None:
            errors.append(ErrorItem(location=f"parameters.{key}", type="unknown_parameter", message=(
                f"unknown parameter {key!r}: the parameters are {', '.join((*REQUEST_FIELDS, *DROPOUT_FIELDS))}, "
                f"<field><l> for layer l's {', '.join(LAYER_FIELDS)} (type1, activation1, ...), and {BINARY_OUTPUT}")))
    for o in req.outputs or ():
        if _output_key(o.name) is None:
            errors.append(ErrorItem(location=f"outputs[{o.index}]", type="unknown_output", message=(
                f"unknown output {o.name!r}: the outputs are {_output_names()}")))
    return errors


def _input_names() -> str:
    return f"X, Y, {MASK}<l> (dropout masks) and <array><l> for layer l's {', '.join(TENSOR_FIELDS)} (W1, b1, ...)"


def _output_names() -> str:
    grads = ", ".join(keys.grad(p, "<l>") for p in param_names())
    states = ", ".join(keys.state(s, "<l>") for s in state_names())
    return f"{keys.COST}, {keys.OUTPUT}, {grads}, dZ<l>, dA<l>, {states}, Z<l>, A<l>"


# --- encoding ----------------------------------------------------------------------------------------------------

def outputs_of(wire: dict) -> dict[str, np.ndarray]:
    """The /v1/gradients response as named arrays, in its order: cost (one entry), AL, every gradient, each
    layer's updated running statistics (<state><l>), and the caches."""
    out = {keys.COST: np.array([wire["cost"]], dtype=np.float64), keys.OUTPUT: wire["AL"], **wire["gradients"]}
    for layer, states in (wire.get("state") or {}).items():
        out.update({keys.state(name, int(layer)): a for name, a in states.items()})
    out.update(wire.get("caches") or {})
    return out


def encode(wire: dict, req: InferRequest) -> tuple[dict, list[np.ndarray]]:
    """The response's JSON header and its binary parts, in order: the requested outputs (all of them when none
    was named), each binary when its ``binary_data`` (else the request's ``binary_data_output``) says so. The
    /v1 warnings (entries returned as null, NaN here) are the response parameter ``warnings``, as JSON text."""
    available = outputs_of(wire)
    chosen = req.outputs if req.outputs is not None else [Output(i, n, None) for i, n in enumerate(available)]
    missing = [o for o in chosen if o.name not in available]
    if missing:
        names = ", ".join(list(available)[:40]) + (", ..." if len(available) > 40 else "")
        raise InvalidRequest([ErrorItem(location=f"outputs[{o.index}]", type="unknown_output",
                                        message=f"{o.name} is not an output of this request (Z<l> and A<l> need "
                                                f"include_caches); it has {names}") for o in missing])
    header: dict[str, Any] = {"model_name": MODEL, "model_version": MODEL_VERSION}
    if req.id is not None:
        header["id"] = req.id
    if wire["warnings"]:
        header["parameters"] = {"warnings": orjson.dumps(wire["warnings"]).decode()}
    entries, parts = [], []
    for o in chosen:
        a = available[o.name]
        entry: dict[str, Any] = {"name": o.name, "datatype": "FP64", "shape": list(a.shape)}
        if req.binary_output if o.binary is None else o.binary:
            entry["parameters"] = {"binary_data_size": a.nbytes}
            parts.append(a)
        else:
            entry["data"] = a.reshape(-1)  # row-major; orjson writes NaN entries as null
        entries.append(entry)
    header["outputs"] = entries
    return header, parts


# --- errors --------------------------------------------------------------------------------------------------------

_LAYER_REF = re.compile(r"layers\[(\d+)\](?:\.([A-Za-z_][A-Za-z0-9_]*))?")
_MASK_REF = re.compile(r"dropout\.masks\[(\d+)\]")


def wire_names(text: str) -> str:
    """/v1 names in a text, in this mapping's: layers[1].W -> W2, layers[0].activation -> parameters.activation1,
    layers[2] -> layer 3, dropout.masks[0] -> D1."""
    def layer(m: re.Match) -> str:
        l, field = int(m.group(1)) + 1, m.group(2)
        if field is None:
            return f"layer {l}"
        return f"{field}{l}" if field in TENSOR_FIELDS else f"parameters.{field}{l}"

    return _LAYER_REF.sub(layer, _MASK_REF.sub(lambda m: f"{MASK}{int(m.group(1)) + 1}", text))


def location(loc: str) -> str:
    """A /v1 error location in this mapping's names: cost -> parameters.cost, dropout.keep_prob ->
    parameters.keep_prob, body -> request, layers[1].W[0][2] -> W2[0][2]."""
    parts = re.split(r"[.\[]", loc, maxsplit=2)
    if parts[0] in REQUEST_FIELDS:
        return f"parameters.{loc}"
    if parts[0] == "dropout" and len(parts) > 1 and parts[1] in DROPOUT_FIELDS:
        return f"parameters.{loc[len('dropout.'):]}"
    if loc in ("dropout", "dropout.masks"):
        return f"the dropout masks {MASK}<l>" if loc.endswith("masks") else f"dropout (keep_prob, {MASK}<l>)"
    return "request" if loc == "body" else wire_names(loc)


def error_text(detail: str, errors: list[ErrorItem]) -> str:
    """The protocol's error message: every located problem (at most ten), in this mapping's names."""
    if not errors:
        return detail
    # An HTTP error (404, 413, 401 ...) says it all in its message; a validation problem is named by its location.
    items = [wire_names(e.message) if e.type.startswith("http_") else f"{location(e.location)}: {wire_names(e.message)}"
             for e in errors[:10]]
    if len(errors) == 1:
        return items[0]
    shown = f" (the first 10 of {len(errors)})" if len(errors) > 10 else ""
    return f"{len(errors)} problems in the request{shown}: " + "; ".join(items)


# --- metadata ------------------------------------------------------------------------------------------------------

def _ranks(schema: dict) -> set[int]:
    """The numbers of dimensions a JSON schema of nested arrays allows (null alternatives left out)."""
    if "anyOf" in schema:
        return set().union(*(_ranks(s) for s in schema["anyOf"]))
    if schema.get("type") == "array":
        return {1 + r for r in _ranks(schema["items"])}
    return set() if schema.get("type") == "null" else {0}


def _tensor_doc(name: str, description: str, ranks: set[int], shape: list[int] | None = None, **extra) -> dict:
    return {"name": name, "datatype": "FP64", "shape": shape or [-1] * max(ranks),
            "parameters": {"description": description, "ranks": sorted(ranks), **extra}}


def _inputs_doc(request: dict, dropout: dict) -> list[dict]:
    props = request["properties"]
    docs = [_tensor_doc(n, props[n]["description"], _ranks(props[n]), datatypes=list(LABEL_TYPES if n == "Y" else
                                                                                       FLOATS), required=True)
            for n in BODY_TENSORS]
    for field in TENSOR_FIELDS:
        owners = [(kind, item) for kind in KINDS.values() for item in (*kind.params, *kind.states)
                  if item.name == field]
        kind, item = owners[0]
        docs.append(_tensor_doc(
            f"{field}<l>", f"Layer l's {field}: {item.description}", set().union(*(set(i.ranks) for _, i in owners)),
            datatypes=list(FLOATS), kinds=[k.name for k, _ in owners],
            required=any(item in k.params for k, item in owners)))
    masks = dropout["properties"]["masks"]
    docs.append(_tensor_doc(f"{MASK}<l>", masks["description"] + " Absent: no dropout on that layer.",
                            _ranks(masks["items"]), datatypes=list(FLOATS), required=False))
    return docs


def _outputs_doc(per_example: set[int]) -> list[dict]:
    docs = [_tensor_doc(keys.COST, "J, including the L2 term.", {1}, shape=[1]),
            _tensor_doc(keys.OUTPUT, "The output activation A_L, in the request's layout.", per_example)]
    for kind in KINDS.values():
        for p in kind.params:
            name = keys.grad(p.name, "<l>")
            if all(d["name"] != name for d in docs):
                docs.append(_tensor_doc(name, f"dJ/d{p.name} of layer l, in the shape {p.name}<l> was sent in.",
                                        set(p.ranks)))
    docs += [_tensor_doc(keys.dZ("<l>"), "dJ/dZ_l (per_example: without 1/m).", per_example),
             _tensor_doc(keys.dA("<l>"), "dJ/dA_l, l = 0..L (dA0: with respect to X).", per_example)]
    for s in dict.fromkeys(s for kind in KINDS.values() for s in kind.states):
        docs.append(_tensor_doc(keys.state(s.name, "<l>"), f"Layer l's updated {s.name}.", set(s.ranks)))
    docs += [_tensor_doc(keys.Z("<l>"), "Cache: Z_l, with include_caches (or when requested).", per_example),
             _tensor_doc(keys.A("<l>"), "Cache: A_l after dropout, with include_caches (or when requested).",
                         per_example)]
    return docs


def _parameter_doc(schema: dict) -> dict:
    return {k: v for k, v in schema.items() if k != "title"} | {"required": "default" not in schema}


def _parameters_doc(request: dict, dropout: dict) -> dict:
    docs = {n: _parameter_doc(request["properties"][n]) for n in REQUEST_FIELDS}
    docs.update({n: _parameter_doc(dropout["properties"][n]) | {"description": "dropout: "
                 + dropout["properties"][n].get("description", "")} for n in DROPOUT_FIELDS})
    for field in LAYER_FIELDS:
        owners = [(name, model.model_json_schema()["properties"][field]) for name, model in LAYER_MODELS.items()
                  if field in model.model_fields]
        doc = _parameter_doc(owners[0][1]) | {"kinds": [name for name, _ in owners]}
        enums = [s.get("enum", [s["const"]] if "const" in s else None) for _, s in owners]
        if all(e is not None for e in enums):
            doc["enum"] = list(dict.fromkeys(itertools.chain.from_iterable(enums)))
            doc.pop("const", None)
        defaults = {orjson.dumps(s.get("default")) for _, s in owners}
        if field == "type":
            doc["default"] = DEFAULT_KIND
            doc["description"] = "Layer l's kind (default dense): " + "; ".join(
                f"`{k.name}`: {k.description}" for k in KINDS.values())
        elif len(defaults) > 1:
            doc.pop("default", None)
            doc["description"] = doc.get("description", "") + " (Its default depends on the kind.)"
        docs[f"{field}<l>"] = doc
    docs[BINARY_OUTPUT] = {"type": "boolean", "default": False,
                           "description": "Return every output whose binary_data is not set as binary data."}
    return docs


@lru_cache(maxsize=1)
def model_metadata() -> dict:
    """GET /v2/models/gradients: the protocol's model metadata (inputs and outputs with datatype and shape, -1 for
    a variable dimension, <l> for a layer's number), plus this model's request ``parameters``, every description
    read from the request models and the registries."""
    request = GradientRequest.model_json_schema()
    dropout = DropoutSpec.model_json_schema()
    per_example = _ranks(request["properties"]["X"]) | {2}
    return {"name": MODEL, "versions": [MODEL_VERSION], "platform": "gradient-service",
            "inputs": _inputs_doc(request, dropout), "outputs": _outputs_doc(per_example),
            "parameters": _parameters_doc(request, dropout)}

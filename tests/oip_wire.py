"""A small Open Inference Protocol v2 encoder and decoder written for the tests from the protocol's text (not from
service/wire/oip.py), and the README's mapping of a /v1/gradients body to tensors and parameters. The tests use
it to build exact (and exactly wrong) bodies; the real clients (tritonclient, kserve) are in test_oip_clients.py.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson

HEADER = "Inference-Header-Content-Length"
# The arrays a layer object may hold: every other layer field is a parameter <field><l>.
LAYER_ARRAYS = {"W", "b", "gamma", "beta", "running_mean", "running_var"}
DTYPES = {"FP64": "<f8", "FP32": "<f4", "INT32": "<i4", "INT64": "<i8", "INT8": "<i1", "BOOL": "?", "FP16": "<f2"}


def split(body: dict) -> tuple[dict[str, Any], dict[str, Any]]:
    """A /v1/gradients body -> (tensors by name, request parameters), as the README maps it."""
    tensors: dict[str, Any] = {}
    parameters: dict[str, Any] = {}
    for key, value in body.items():
        if value is None:
            continue  # null is the default of every optional field
        if key in ("X", "Y"):
            tensors[key] = value
        elif key == "layers":
            for l, layer in enumerate(value, start=1):
                for field, v in layer.items():
                    if v is None:
                        continue
                    (tensors if field in LAYER_ARRAYS else parameters)[f"{field}{l}"] = v
        elif key == "dropout":
            parameters["keep_prob"] = value["keep_prob"]
            for l, mask in enumerate(value["masks"], start=1):
                if mask is not None:
                    tensors[f"D{l}"] = mask
        else:
            parameters[key] = value
    return tensors, parameters


def encode(tensors: dict[str, Any], parameters: dict[str, Any] | None = None, *, binary: bool | set = True,
           datatypes: dict[str, str] | None = None, outputs: list | None = None, binary_output: bool | None = None,
           pad_to: int | None = None, extra: dict | None = None) -> tuple[bytes, dict[str, str]]:
    """(body, headers) of an inference request. ``binary``: every tensor binary (True), none (False) or those named;
    ``datatypes``: per tensor (default FP64); ``outputs``: names, or (name, binary_data) pairs; ``pad_to``: pad the
    JSON header with spaces to a multiple of this many bytes (aligned binary tensors)."""
    datatypes = datatypes or {}
    inputs, raw = [], []
    for name, value in tensors.items():
        dt = datatypes.get(name, "FP64")
        a = np.ascontiguousarray(np.asarray(value), dtype=DTYPES[dt])
        entry = {"name": name, "shape": list(a.shape), "datatype": dt}
        if binary is True or (isinstance(binary, set) and name in binary):
            entry["parameters"] = {"binary_data_size": a.nbytes}
            raw.append(a.tobytes())
        else:
            entry["data"] = a.reshape(-1).tolist()
        inputs.append(entry)
    header: dict[str, Any] = {"inputs": inputs}
    params = dict(parameters or {})
    if binary_output is not None:
        params["binary_data_output"] = binary_output
    if params:
        header["parameters"] = params
    if outputs is not None:
        header["outputs"] = [{"name": o} if isinstance(o, str) else
                             {"name": o[0], "parameters": {"binary_data": o[1]}} for o in outputs]
    header.update(extra or {})
    head = orjson.dumps(header)
    if pad_to:
        head += b" " * (-len(head) % pad_to)
    headers = {HEADER: str(len(head))} if raw else {}
    return head + b"".join(raw), headers


def decode(data: bytes, headers) -> tuple[dict, dict[str, np.ndarray]]:
    """An inference response -> (its JSON header, every output as a numpy array of its shape)."""
    n = int(headers.get(HEADER, len(data)))
    header = orjson.loads(data[:n])
    arrays, offset = {}, n
    for out in header["outputs"]:
        size = (out.get("parameters") or {}).get("binary_data_size")
        if size is None:
            values = [np.nan if v is None else v for v in out["data"]]
            arrays[out["name"]] = np.array(values, dtype=np.float64).reshape(out["shape"])
        else:
            arrays[out["name"]] = np.frombuffer(data[offset:offset + size], dtype="<f8").reshape(out["shape"])
            offset += size
    assert offset == len(data), "binary outputs must add up to the body"
    return header, arrays


def v1_outputs(response: dict) -> dict[str, np.ndarray]:
    """A /v1/gradients JSON response as the OIP outputs it stands for (null entries as NaN)."""
    def arr(v):
        return np.array([[np.nan if x is None else x for x in row] for row in v] if v and isinstance(v[0], list)
                        else [np.nan if x is None else x for x in v], dtype=np.float64)

    out = {"cost": np.array([response["cost"]]), "AL": arr(response["AL"])}
    out.update({k: arr(v) for k, v in response["gradients"].items()})
    for layer, states in (response.get("state") or {}).items():
        out.update({f"{name}{layer}": arr(v) for name, v in states.items()})
    out.update({k: arr(v) for k, v in (response.get("caches") or {}).items()})
    return out


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal shapes and equal float64 bits, every NaN counted as one NaN."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        return False
    return np.where(np.isnan(a), np.nan, a).tobytes() == np.where(np.isnan(b), np.nan, b).tobytes()

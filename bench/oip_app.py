"""The service's app plus the floor of bench/oip.py: a do-nothing route of the same app (same factory, hooks,
metrics, error handling) that takes the same bytes as an Open Inference Protocol request and answers the same
bytes as its response, doing only what moving them needs: the body read as the protocol route reads it, the JSON
header parsed, ``np.frombuffer`` of every tensor, and ``tobytes`` of every result.

POST /bench/oip-floor/results stores a binary response of the real route (its outputs become this worker's
results); POST /bench/oip-floor then answers every request with them.
"""

import numpy as np
import orjson
from flask import request

from service import create_app
from service.http import read_body
from service.wire import oip

app = create_app()
_RESULTS: dict = {}


def _tensors(body: bytes, key: str) -> tuple[dict, list[np.ndarray]]:
    """The JSON header of a binary body and a frombuffer view of each of its tensors (``key``: inputs/outputs)."""
    n = int(request.headers[oip.HEADER])
    header = orjson.loads(body[:n])
    arrays, offset = [], n
    for t in header[key]:
        size = t["parameters"]["binary_data_size"]
        arrays.append(np.frombuffer(body, dtype=oip.NUMPY[t["datatype"]], count=size // oip.SIZES[t["datatype"]],
                                    offset=offset).reshape(t["shape"]))
        offset += size
    return header, arrays


@app.post("/bench/oip-floor/results")
def store_results():
    header, arrays = _tensors(read_body(), "outputs")
    _RESULTS["header"] = orjson.dumps({k: v for k, v in header.items()})
    _RESULTS["arrays"] = [a.copy() for a in arrays]
    return {"stored": len(arrays)}


@app.post("/bench/oip-floor")
def floor():
    _tensors(read_body(), "inputs")
    head, arrays = _RESULTS["header"], _RESULTS["arrays"]

    def stream():
        yield head
        for a in arrays:
            yield a.tobytes()

    return app.response_class(stream(), content_type="application/octet-stream",
                              headers={oip.HEADER: str(len(head)),
                                       "Content-Length": str(len(head) + sum(a.nbytes for a in arrays))})

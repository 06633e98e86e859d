"""Peak memory of one request, measured in a fresh interpreter, and the worst-case bodies of every route.

``measure(path, body)`` runs the app in a new Python process (no torch, nothing else loaded), warms up every
POST route with a small valid body, resets the kernel's peak-RSS counter (``/proc/self/clear_refs``), sends the
body through the Flask test client and consumes the response piece by piece as a server writes it out, and
reports how far the process's peak RSS (VmHWM) rose above its RSS before the request, the request's time, and the
time a bare parse of the same bytes takes there (orjson, or the standard library where orjson refuses them;
measured after the request, so it adds nothing to the peak). The body is built before
the baseline (a worker has it on the socket, not in memory), and the test client's copy of it counts, as a
worker's read would.

Used by tests/test_memory.py (moderate sizes) and bench/memory.py (up to the body limit).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MiB = 1 << 20
ROUTES = ("/v1/gradients", "/v1/grade", "/v1/gradient-check", "/v1/explain")

_PROBE = r"""
import gc, json, sys
from service import create_app

def status():
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, value = line.split(":", 1)
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) * 1024
    return out

path, body_file, settings = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
app = create_app(settings)
client = app.test_client()
small = json.loads(sys.argv[4])
for route, extra in (("/v1/gradients", {}), ("/v1/grade", {"submission": {"cost": 0.5}}),
                     ("/v1/gradient-check", {}), ("/v1/explain", {})):
    r = client.post(route, json={**small, **extra})
    assert r.status_code == 200, (route, r.status_code, r.get_data()[:300])
with open(body_file, "rb") as f:
    body = f.read()
gc.collect()
before = status()["VmRSS"]
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
import time
t0 = time.perf_counter()
r = client.post(path, data=body, content_type="application/json", buffered=False)
size, head = 0, b""
for chunk in r.response:
    if len(head) < 400:
        head += chunk[: 400 - len(head)]
    size += len(chunk)
r.close()
seconds = time.perf_counter() - t0
peak = status()["VmHWM"]
# The time a bare parse of the same bytes takes (orjson; the standard library where orjson refuses them).
import orjson
from service.wire import lenient
t0 = time.perf_counter()
try:
    orjson.loads(body)
except orjson.JSONDecodeError:
    try:
        lenient.loads(body)
    except Exception:
        pass
parse_seconds = time.perf_counter() - t0
print(json.dumps({"status": r.status_code, "growth": peak - before, "response_bytes": size,
                  "head": head.decode("utf-8", "replace"), "seconds": seconds, "parse_seconds": parse_seconds}))
"""


@dataclass(frozen=True)
class Measurement:
    """One request: its status, the peak RSS growth, the body and response sizes and the response's start."""

    path: str
    status: int
    growth: int
    body_bytes: int
    response_bytes: int
    head: str
    seconds: float = 0.0
    parse_seconds: float = 0.0

    @property
    def bound(self) -> int:
        """The issue's budget: 8x the body (plus the response, for a 200) + 64 MiB."""
        return 8 * (self.body_bytes + (self.response_bytes if self.status == 200 else 0)) + 64 * MiB


def small_network() -> dict:
    return json.loads((ROOT / "examples" / "two_layer_sigmoid_bce.json").read_text())


def measure(path: str, body: bytes, settings: dict | None = None) -> Measurement:
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        f.write(body)
        f.flush()
        proc = subprocess.run([sys.executable, "-c", _PROBE, path, f.name, json.dumps(settings or {}),
                               json.dumps(small_network())],
                              cwd=ROOT, capture_output=True, text=True, timeout=600,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    if proc.returncode != 0:
        raise RuntimeError(f"probe failed ({proc.returncode}): {proc.stderr[-3000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    return Measurement(path, out["status"], out["growth"], len(body), out["response_bytes"], out["head"],
                       out["seconds"], out["parse_seconds"])


# --- worst-case bodies ------------------------------------------------------------------------------------------
# Each takes a target size in bytes and returns a body of about that size (never more). Every route takes a
# /v1/gradients body, so one builder serves all four routes.

def _fill(prefix: bytes, item: bytes, suffix: bytes, size: int, sep: bytes = b",") -> bytes:
    n = max(1, (size - len(prefix) - len(suffix)) // (len(item) + len(sep)))
    return prefix + sep.join([item] * n) + suffix


def empty_layers(size: int) -> bytes:
    """The issue's first case: a list of empty layer objects."""
    return _fill(b'{"layers":[', b"{}", b'],"X":[[1]],"Y":[[1]],"cost":"mean_squared_error"}', size)


def short_floats_in_X(size: int) -> bytes:
    """One long row of the shortest floats (4 bytes each with the comma, ~32 bytes each as Python objects)."""
    return _fill(b'{"X":[[', b"0.5", b']],"layers":[],"Y":[[1]],"cost":"mean_squared_error"}', size)


def zeros_in_X(size: int) -> bytes:
    """The issue's 16M zeros in X (at 32 MiB)."""
    return _fill(b'{"X":[[', b"0", b']],"layers":[],"Y":[[1]],"cost":"mean_squared_error"}', size)


def one_element_rows(size: int) -> bytes:
    """The issue's 8M one-element rows (at 32 MiB): the most lists per byte."""
    return _fill(b'{"X":[', b"[0.5]", b'],"layers":[],"Y":[[1]],"cost":"mean_squared_error"}', size)


def nan_tokens(size: int) -> bytes:
    """NaN tokens: orjson refuses them, the lenient parse turns each into a shared marker."""
    return _fill(b'{"X":[[', b"NaN", b']],"layers":[],"Y":[[1]],"cost":"mean_squared_error"}', size)


def strings_in_X(size: int) -> bytes:
    """Strings where numbers belong."""
    return _fill(b'{"X":[[', b'"a"', b']],"layers":[],"Y":[[1]],"cost":"mean_squared_error"}', size)


def unknown_keys(size: int) -> bytes:
    """One object with many distinct unknown keys (each an extra_forbidden error)."""
    n = max(1, (size - 80) // 12)
    keys = b",".join(b'"k%07d":1' % i for i in range(n))
    return b'{' + keys + b',"X":[[1]],"Y":[[1]],"cost":"mean_squared_error"}'


def booleans_in_W(size: int) -> bytes:
    """A valid network whose W is full of booleans: every entry is a located error, capped per array."""
    return _fill(b'{"layers":[{"W":[[', b"true", b']],"b":[0],"activation":"linear"}],"X":[[1]],"Y":[[1]],'
                 b'"cost":"mean_squared_error"}', size)


def _dumps(body: dict) -> bytes:
    import orjson

    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)


def wide_input(size: int) -> dict:
    """A valid network whose input X (n_x, m) of 17-digit floats fills about ``size`` bytes: dA0 is as large."""
    import numpy as np

    rng = np.random.default_rng(0)
    n_x = 500
    m = max(2, size // (n_x * 21))
    return {"layers": [{"W": rng.standard_normal((4, n_x)) * 0.05, "b": np.zeros(4), "activation": "tanh"},
                       {"W": rng.standard_normal((1, 4)), "b": [0.0], "activation": "sigmoid"}],
            "X": rng.standard_normal((n_x, m)), "Y": (rng.random((1, m)) > 0.5).astype(float),
            "cost": "binary_cross_entropy"}


def valid_gradients(size: int) -> bytes:
    return _dumps({**wide_input(size), "include_caches": True})


def valid_grade_wrong_key(size: int) -> bytes:
    """A class of one whose dA0 (as large as X) is wrong by the 1/m convention: every candidate of a mistake is
    built for it."""
    body = wide_input(size // 2)
    import numpy as np

    m = body["X"].shape[1]
    wrong = np.random.default_rng(1).standard_normal(body["X"].shape) / m
    return _dumps({**body, "submission": {"dA0": wrong, "cost": 0.5}})


def valid_gradient_check(size: int) -> bytes:
    return _dumps({**wide_input(size), "mode": "entries", "samples": 3})


def valid_explain(size: int) -> bytes:
    return _dumps(wide_input(size))


VALID_BODIES = {
    "/v1/gradients": valid_gradients,
    "/v1/grade": valid_grade_wrong_key,
    "/v1/gradient-check": valid_gradient_check,
    "/v1/explain": valid_explain,
}


INVALID_BODIES = {
    "empty_layers": empty_layers,
    "short_floats_in_X": short_floats_in_X,
    "zeros_in_X": zeros_in_X,
    "one_element_rows": one_element_rows,
    "nan_tokens": nan_tokens,
    "strings_in_X": strings_in_X,
    "unknown_keys": unknown_keys,
    "booleans_in_W": booleans_in_W,
}

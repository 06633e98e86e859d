#!/usr/bin/env python
"""The gradient-service benchmark: one run measures both targets of the issue and writes bench/results.md.

(a) Engine vs torch autograd: ``service.engine.compute`` (forward, cost, every gradient) against the same network
    in torch float64 (forward + loss + backward), on [784, 256, 128, 10] with m = 256 and [1024, 1024, 1024, 10]
    with m = 1024, relu hidden layers, softmax + categorical cross-entropy. numpy's BLAS and torch get the same
    number of threads. Target: engine / torch <= 1.

(b) Request handling: a JSON request of about 1M floats through the Flask app (and, piece by piece, through what
    the route does), minus the engine's compute, against the bare ``orjson.loads`` + ``np.asarray`` of the same
    bytes plus ``orjson.dumps`` of the same result arrays. Target: ratio <= 1.5.

Run from the repository root with the project's venv active: ``python bench/run.py`` (one to two minutes on an idle
2-core machine).
See bench/README.md for what every figure means.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import gc
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager, nullcontext
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import orjson  # noqa: E402
import torch  # noqa: E402

try:  # optional: reads and limits numpy's BLAS thread pool (pip install threadpoolctl)
    import threadpoolctl
except ImportError:  # pragma: no cover - depends on the environment
    threadpoolctl = None

from service import create_app, engine, tuning  # noqa: E402
from service.engine import dense  # noqa: E402
from schemas.gradients import GradientRequest, prepare, to_wire  # noqa: E402
from schemas.limits import Limits  # noqa: E402

COST = "categorical_cross_entropy"
ENGINE_CONFIGS = [([784, 256, 128, 10], 256), ([1024, 1024, 1024, 10], 1024)]
TARGET_ENGINE = 1.0
TARGET_HANDLING = 1.5
BLOCK_PAUSE = 0.2  # seconds between timing blocks, so that one library's spinning worker threads settle
SEP = "=" * 100


# --- timing helpers -------------------------------------------------------------------------------------------

def time_block(fn, reps: int, warmup: int) -> list[float]:
    """perf_counter seconds of ``reps`` calls of fn after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    gc.collect()
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def interleaved(variants: dict, rounds: int, reps: int, warmup: int) -> dict[str, list[float]]:
    """Rounds of one block per variant (A B C A B C ...), so that slow drift of the machine hits all alike."""
    samples = {name: [] for name in variants}
    for r in range(rounds):
        for name, fn in variants.items():
            time.sleep(BLOCK_PAUSE)
            samples[name] += time_block(fn, reps, warmup if r == 0 else 1)
    return samples


class Contention:
    """How much CPU other processes took while a section ran: busy time of the whole machine (/proc/stat) minus
    this process's own (os.times), as a share of wall time x usable cores. Above a few percent the figures of that
    section are not trustworthy. ``exclude``: pids of the processes the section measures (a server it started),
    whose CPU is theirs, not other work's."""

    def __init__(self, exclude: tuple[int, ...] = ()):
        self.exclude = exclude

    def __enter__(self):
        self.t0, self.stat0, self.own0 = time.perf_counter(), self._stat(), os.times()
        self.excluded0 = self._ticks(self.exclude)
        return self

    def __exit__(self, *exc):
        wall = time.perf_counter() - self.t0
        stat1, own1 = self._stat(), os.times()
        tick = os.sysconf("SC_CLK_TCK")
        busy = (stat1 - self.stat0) / tick if stat1 is not None and self.stat0 is not None else float("nan")
        own = (own1.user - self.own0.user) + (own1.system - self.own0.system)
        own += (self._ticks(self.exclude) - self.excluded0) / tick
        self.others = max(0.0, busy - own) / (wall * len(os.sched_getaffinity(0)))
        return False

    @staticmethod
    def _ticks(pids: tuple[int, ...]) -> int:
        """User + system clock ticks of these processes so far (/proc/<pid>/stat; 0 for one that is gone)."""
        total = 0
        for pid in pids:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])
            except (OSError, ValueError, IndexError):
                pass
        return total

    @staticmethod
    def _stat():
        try:
            values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:8]]
        except (OSError, ValueError):
            return None
        return sum(values) - values[3] - values[4]  # busy jiffies: all but idle and iowait

    def describe(self) -> str:
        flag = "" if self.others < 0.05 else "  <- the machine was busy with other work: figures unreliable"
        return f"other processes' CPU load during this section: {self.others:.0%}{flag}"


BUSY = 0.05  # other processes' share of the CPU above which a measurement is retried and flagged
RETRY = {"attempts": 3, "budget": 120.0}  # set from the command line; budget: seconds of waiting left for the run


def others_load(window: float = 2.0) -> float:
    """Share of the machine's CPU that other processes used over ``window`` seconds while this one slept."""
    with Contention() as c:
        time.sleep(window)
    return c.others


def wait_idle(max_wait: float) -> float:
    """Sleep until other processes use under BUSY of the CPU (measured over 2 s), at most max_wait seconds;
    returns the last load seen."""
    deadline = time.monotonic() + max_wait
    load = others_load()
    while load >= BUSY and time.monotonic() < deadline:
        load = others_load()
    return load


def settled(run_once, what: str):
    """run_once() on a quiet machine: wait for other processes to go idle, measure, and retry (up to
    RETRY['attempts'] in all) when they took more than BUSY of the CPU meanwhile. Returns the result of the
    quietest attempt and the other processes' load during it."""
    best = None
    for attempt in range(RETRY["attempts"]):
        if RETRY["budget"] > 0:
            t0 = time.monotonic()
            before = wait_idle(RETRY["budget"])
            RETRY["budget"] -= time.monotonic() - t0
            if before >= BUSY:
                print(f"    (machine busy: other processes take {before:.0%} of the CPU and the waiting budget is "
                      f"spent; measuring anyway)", flush=True)
        with Contention() as c:
            result = run_once()
        if best is None or c.others < best[1]:
            best = (result, c.others)
        if c.others < BUSY or RETRY["budget"] <= 0:
            break
        if attempt + 1 < RETRY["attempts"]:
            print(f"    ({what}: other processes took {c.others:.0%} of the CPU meanwhile; measuring again)", flush=True)
    return best


def med(xs) -> float:
    return statistics.median(xs)


def ms(x: float) -> str:
    return f"{x * 1e3:.2f}"


# --- machine --------------------------------------------------------------------------------------------------

def _pkg(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def blas_pools() -> list[dict]:
    if threadpoolctl is None:
        return []
    return threadpoolctl.threadpool_info()


def numpy_blas_threads() -> tuple[int, str]:
    """Threads numpy's BLAS uses now, and how that was found."""
    if threadpoolctl is not None:
        for pool in blas_pools():
            if pool.get("user_api") == "blas" and "numpy" in pool.get("filepath", ""):
                return int(pool["num_threads"]), "threadpoolctl"
        for pool in blas_pools():
            if pool.get("user_api") == "blas":
                return int(pool["num_threads"]), "threadpoolctl"
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var]), f"${var} (threadpoolctl not installed)"
    return len(os.sched_getaffinity(0)), "usable cores (threadpoolctl not installed: OpenBLAS default assumed)"


@contextmanager
def threads(n: int):
    """numpy's BLAS and torch both limited to n threads; restored afterwards."""
    before = torch.get_num_threads()
    limit = threadpoolctl.threadpool_limits(limits=n, user_api="blas") if threadpoolctl else nullcontext()
    torch.set_num_threads(n)
    try:
        with limit:
            yield
    finally:
        torch.set_num_threads(before)


def machine_info() -> dict:
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.M)
    flags = re.search(r"^flags\s*:\s*(.+)$", cpuinfo, re.M)
    flagset = set(flags.group(1).split()) if flags else set()
    simd = [f for f in ("avx", "avx2", "fma", "avx512f", "avx512dq", "avx512bw", "avx512vl") if f in flagset]
    meminfo = Path("/proc/meminfo").read_text() if Path("/proc/meminfo").exists() else ""
    mem = re.search(r"^MemTotal:\s*(\d+) kB", meminfo, re.M)
    try:
        date = subprocess.run(["date", "-u"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        date = datetime.datetime.now(datetime.timezone.utc).strftime("%a %b %d %H:%M:%S UTC %Y")
    try:
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.rstrip("\n")
        if dirty:
            changed = [line[3:] for line in dirty.splitlines() if line.strip()]
            commit += " with uncommitted changes to " + ", ".join(changed[:8]) + (", ..." if len(changed) > 8 else "")
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    np_blas = {}
    try:
        np_blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
    except Exception:  # noqa: BLE001 - show_config's layout varies across numpy versions
        pass
    torch_cfg = torch.__config__.show()
    torch_blas = re.search(r"BLAS_INFO=(\w+)", torch_cfg)
    torch_cap = re.search(r"CPU capability usage: (\w+)", torch_cfg)
    env_vars = {k: v for k, v in sorted(os.environ.items())
                if re.search(r"BLAS|OMP_|MKL|CORETYPE|GOTO|KMP_|NUM_THREADS", k)}
    n_threads, how = numpy_blas_threads()
    return {
        "date": date,
        "commit": commit,
        "cpu": model.group(1).strip() if model else platform.processor() or "unknown",
        "cores": len(os.sched_getaffinity(0)),
        "cpu_count": os.cpu_count(),
        "simd": ", ".join(simd) or "none reported",
        "memory": f"{int(mem.group(1)) / 2**20:.1f} GiB" if mem else "unknown",
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": {name: _pkg(name) for name in
                     ("numpy", "torch", "orjson", "pydantic", "pydantic-core", "flask", "werkzeug", "threadpoolctl")},
        "numpy_blas_build": f"{np_blas.get('name', '?')} {np_blas.get('version', '')}".strip(),
        "numpy_blas_threads": n_threads,
        "numpy_blas_threads_from": how,
        "torch_blas": torch_blas.group(1) if torch_blas else "unknown",
        "torch_cpu_capability": torch_cap.group(1) if torch_cap else "unknown",
        "torch_threads_default": torch.get_num_threads(),
        "pools": blas_pools(),
        "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE"),
        "env": env_vars,
        "freed_arrays_kept": KEEP_FREED_ARRAYS,
    }


# --- (a) engine vs torch autograd -----------------------------------------------------------------------------

def make_network(sizes: list[int], m: int, seed: int):
    """X (n_0, m), one-hot Y (n_L, m), He-scaled relu layers and a softmax output, from default_rng(seed)."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((sizes[0], m))
    Y = np.zeros((sizes[-1], m))
    Y[rng.integers(0, sizes[-1], m), np.arange(m)] = 1.0
    layers = []
    for l in range(1, len(sizes)):
        W = rng.standard_normal((sizes[l], sizes[l - 1])) * np.sqrt(2.0 / sizes[l - 1])
        b = rng.standard_normal((sizes[l], 1)) * 0.1
        layers.append(dense(W, b, "relu" if l < len(sizes) - 1 else "softmax"))
    return X, Y, layers


class TorchNet:
    """The same network in torch float64, features first (Z_l = W_l A_{l-1} + b_l, the engine's matmuls)."""

    def __init__(self, X, Y, layers):
        self.m = X.shape[1]
        self.X = torch.from_numpy(X.copy()).requires_grad_()
        self.Y = torch.from_numpy(Y.copy())
        self.labels = torch.from_numpy(Y.argmax(axis=0))
        self.W = [torch.from_numpy(layer.params["W"].copy()).requires_grad_() for layer in layers]
        self.b = [torch.from_numpy(layer.params["b"].copy()).requires_grad_() for layer in layers]
        self.Z: list = []
        self.A: list = []

    def _clear(self):
        for p in (self.X, *self.W, *self.b):
            p.grad = None

    def full(self):
        """Equal work to the engine: dW, db, and dZ_l, dA_l (retain_grad) for every layer, dA_0 (X.grad).

        The loss goes through A_L (-sum Y log softmax(Z_L) / m) so that dA_L exists, as the engine returns it.
        """
        self._clear()
        A, Zs, As = self.X, [], []
        last = len(self.W) - 1
        for l, (W, b) in enumerate(zip(self.W, self.b)):
            Z = W @ A + b
            Z.retain_grad()
            A = torch.relu(Z) if l < last else torch.softmax(Z, dim=0)
            A.retain_grad()
            Zs.append(Z)
            As.append(A)
        loss = -(self.Y * torch.log(A)).sum() / self.m
        loss.backward()
        self.Z, self.A = Zs, As
        return loss.detach()

    def plain(self):
        """Idiomatic torch: fused cross_entropy on the logits, parameter gradients only (no dA_0, no retain_grad)."""
        for p in (*self.W, *self.b):
            p.grad = None
        A = self.X.detach()
        last = len(self.W) - 1
        for l, (W, b) in enumerate(zip(self.W, self.b)):
            Z = W @ A + b
            A = torch.relu(Z) if l < last else Z
        loss = torch.nn.functional.cross_entropy(A.T, self.labels)
        loss.backward()
        return loss.detach()


def compare_gradients(res, net: TorchNet) -> tuple[float, float]:
    """Max abs difference and max relative difference (to the largest |entry| of each array) between the engine's
    gradients and torch's. The engine's per_example dA and dZ carry no 1/m, so torch's are scaled by m."""
    loss = net.full()
    m = net.m
    L = len(net.W)
    pairs = [(abs(res.cost - loss.item()), abs(loss.item()))]
    for l in range(L):
        pairs.append((res.grads[l]["W"], net.W[l].grad.numpy()))
        pairs.append((res.grads[l]["b"], net.b[l].grad.numpy()))
        pairs.append((res.dZ[l], m * net.Z[l].grad.numpy()))
        pairs.append((res.dA[l + 1], m * net.A[l].grad.numpy()))
    pairs.append((res.dA[0], m * net.X.grad.numpy()))
    worst_abs = worst_rel = 0.0
    for ours, theirs in pairs[1:]:
        diff = float(np.max(np.abs(ours - theirs)))
        worst_abs = max(worst_abs, diff)
        worst_rel = max(worst_rel, diff / max(float(np.max(np.abs(theirs))), 1e-300))
    worst_abs = max(worst_abs, pairs[0][0])
    worst_rel = max(worst_rel, pairs[0][0] / pairs[0][1])
    return worst_abs, worst_rel


def products(layers, A: list, dZ: list, lib):
    """The network's matrix products alone, back to back: per layer the forward W A_{l-1}, dW's dZ A_{l-1}^T and
    dA_{l-1}'s W^T dZ (9 for 3 layers), on numpy arrays (lib=np) or the same memory as torch tensors."""
    conv = (lambda a: a) if lib is np else torch.from_numpy
    W = [conv(layer.params["W"]) for layer in layers]
    A = [conv(a) for a in A]
    dZ = [conv(d) for d in dZ]

    def run():
        for l in range(len(W)):
            W[l] @ A[l]
            dZ[l] @ A[l].T
            W[l].T @ dZ[l]
    return run


def bench_engine(n_threads: int, quick: bool) -> list[dict]:
    rows = []
    for sizes, m in ENGINE_CONFIGS:
        X, Y, layers = make_network(sizes, m, seed=sum(sizes) + m)
        net = TorchNet(X, Y, layers)
        with threads(n_threads):
            res = engine.compute(X, Y, layers, COST)
            max_abs, max_rel = compare_gradients(res, net)
            flops = 2 * m * sum(sizes[l] * sizes[l - 1] for l in range(1, len(sizes)))  # one forward pass
            big = flops > 1e9
            rounds, reps = (2, 3) if quick else ((3, 8) if big else (3, 40))
            samples, load = settled(lambda: interleaved({
                "engine": lambda: engine.compute(X, Y, layers, COST),
                "torch_full": net.full,
                "torch_plain": net.plain,
                "blas_np": products(layers, [X] + res.A, res.dZ, np),
                "blas_torch": products(layers, [X] + res.A, res.dZ, torch),
            }, rounds=rounds, reps=reps, warmup=3), f"{sizes}, {n_threads} thread(s)")
        row = {"sizes": sizes, "m": m, "threads": n_threads, "n": len(samples["engine"]),
               "max_abs": max_abs, "max_rel": max_rel, "load": load}
        for name, xs in samples.items():
            row[name] = (med(xs), min(xs))
        row["ratio_full"] = row["engine"][0] / row["torch_full"][0]
        row["ratio_plain"] = row["engine"][0] / row["torch_plain"][0]
        row["ratio_full_min"] = row["engine"][1] / row["torch_full"][1]
        row["ratio_blas"] = row["blas_np"][0] / row["blas_torch"][0]
        row["rest_engine"] = row["engine"][0] - row["blas_np"][0]
        row["rest_torch"] = row["torch_full"][0] - row["blas_torch"][0]
        row["met"] = row["ratio_full"] <= TARGET_ENGINE
        rows.append(row)
        print(f"  {str(sizes):22} m={m:<5} threads={n_threads}  engine {ms(row['engine'][0]):>8} ms  "
              f"torch(all grads) {ms(row['torch_full'][0]):>8} ms  torch(params) {ms(row['torch_plain'][0]):>8} ms  "
              f"ratio {row['ratio_full']:.2f} / {row['ratio_plain']:.2f}  max|diff| {max_abs:.1e}  "
              f"others' load {load:.0%}" + ("  UNRELIABLE" if load >= BUSY else ""), flush=True)
        print(f"  {'':22} {'':7} {'':9}  products alone: numpy {ms(row['blas_np'][0]):>8} ms  torch "
              f"{ms(row['blas_torch'][0]):>8} ms  (ratio {row['ratio_blas']:.2f}); the rest: engine "
              f"{ms(row['rest_engine'])} ms, torch {ms(row['rest_torch'])} ms", flush=True)
    return rows


# --- (b) request handling -------------------------------------------------------------------------------------

def make_request(seed: int = 7):
    """About 1M floats: X (1000, 1000) features first into a [1000, 16, 10] relu/softmax network, one-hot Y."""
    rng = np.random.default_rng(seed)
    n_x, m, h, k = 1000, 1000, 16, 10
    X = rng.standard_normal((n_x, m))
    Y = np.zeros((k, m))
    Y[rng.integers(0, k, m), np.arange(m)] = 1.0
    body = {
        "layers": [
            {"W": rng.standard_normal((h, n_x)) * np.sqrt(2.0 / n_x), "b": rng.standard_normal((h, 1)) * 0.1,
             "activation": "relu"},
            {"W": rng.standard_normal((k, h)) * np.sqrt(2.0 / h), "b": rng.standard_normal((k, 1)) * 0.1,
             "activation": "softmax"},
        ],
        "X": X, "Y": Y, "cost": COST,
    }
    floats = X.size + Y.size + sum(L["W"].size + L["b"].size for L in body["layers"])
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY), floats


# The service's defaults, whatever GRADIENT_* variables the environment holds (an API key would turn every request
# of the bench into a 401).
APP_CONFIG = {"api_keys": [], "cors_origins": [], "max_body_bytes": 32 * 1024 * 1024,
              **{f.name: f.default for f in dataclasses.fields(Limits)}}


def bench_handling(quick: bool) -> dict:
    body, n_floats = make_request()
    app = create_app(APP_CONFIG)
    settings = app.config["SETTINGS"]
    limits = settings.limits()
    client = app.test_client()
    dumps_opt = orjson.OPT_SERIALIZE_NUMPY

    # The same inputs the route hands the engine, and the same arrays it serializes.
    req = GradientRequest.model_validate_json(body)
    prep = prepare(req, limits)
    res = engine.compute(prep.X, prep.Y, prep.layers, req.cost, l2=req.l2, dropout=prep.dropout,
                         intermediates=req.intermediates)
    wire = to_wire(res, prep, req.include_caches)
    response_bytes = orjson.dumps(wire, option=dumps_opt)
    n_out = sum(a.size for a in wire["gradients"].values()) + wire["AL"].size

    # Engine time inside each request, measured in place: the route calls service.engine.compute by attribute.
    inner: list[float] = []
    original = engine.compute

    def timed_compute(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            inner.append(time.perf_counter() - t0)

    recording = [False]  # warm-up calls run with this off
    client_rows: list[tuple[float, float]] = []  # (whole request, engine.compute inside it)

    def via_client():
        k = len(inner)
        t0 = time.perf_counter()
        r = client.post("/v1/gradients", data=body, content_type="application/json")
        dt = time.perf_counter() - t0
        if r.status_code != 200:
            raise RuntimeError(f"the service answered {r.status_code}: {r.data[:500]!r}")
        if recording[0]:
            client_rows.append((dt, sum(inner[k:])))
        return r

    pieces = {k: [] for k in ("parse", "prepare", "compute", "to_wire", "dumps")}

    def via_pieces():
        t0 = time.perf_counter()
        q = GradientRequest.model_validate_json(body)
        t1 = time.perf_counter()
        p = prepare(q, limits)
        t2 = time.perf_counter()
        r = original(p.X, p.Y, p.layers, q.cost, l2=q.l2, dropout=p.dropout, intermediates=q.intermediates)
        t3 = time.perf_counter()
        w = to_wire(r, p, q.include_caches)
        t4 = time.perf_counter()
        orjson.dumps(w, option=dumps_opt)
        t5 = time.perf_counter()
        if recording[0]:
            for key, dt in zip(pieces, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)):
                pieces[key].append(dt)

    base = {k: [] for k in ("loads", "asarray", "dumps")}

    def baseline():
        t0 = time.perf_counter()
        d = orjson.loads(body)
        t1 = time.perf_counter()
        arrays = [np.asarray(d["X"], dtype=np.float64), np.asarray(d["Y"], dtype=np.float64)]
        for layer in d["layers"]:
            arrays += [np.asarray(layer["W"], dtype=np.float64), np.asarray(layer["b"], dtype=np.float64)]
        t2 = time.perf_counter()
        orjson.dumps(wire, option=dumps_opt)
        t3 = time.perf_counter()
        if recording[0]:
            for key, dt in zip(base, (t1 - t0, t2 - t1, t3 - t2)):
                base[key].append(dt)

    # Transport alone: the same app stack (hooks, error handlers) with a route that reads the body and answers a
    # prebuilt body of the response's size: what the test client, Werkzeug and Flask add around the route's work.
    echo_app = create_app(APP_CONFIG)

    @echo_app.post("/bench/echo")
    def _echo():
        from flask import request
        request.get_data(cache=False)
        return echo_app.response_class(response_bytes, mimetype="application/json")

    echo_client = echo_app.test_client()
    echo_total: list[float] = []

    def via_echo():
        t0 = time.perf_counter()
        r = echo_client.post("/bench/echo", data=body, content_type="application/json")
        dt = time.perf_counter() - t0
        assert r.status_code == 200
        if recording[0]:
            echo_total.append(dt)

    compute_alone: list[float] = []

    def compute_only():
        t0 = time.perf_counter()
        original(prep.X, prep.Y, prep.layers, req.cost, l2=req.l2, dropout=prep.dropout,
                 intermediates=req.intermediates)
        if recording[0]:
            compute_alone.append(time.perf_counter() - t0)

    rounds, reps = (2, 2) if quick else (3, 6)
    recorded = (client_rows, echo_total, compute_alone, *pieces.values(), *base.values())

    def measure_all():
        for xs in recorded:
            xs.clear()
        for r in range(rounds):
            for fn in (via_client, via_pieces, baseline, via_echo, compute_only):
                time.sleep(BLOCK_PAUSE)
                recording[0] = False
                fn()  # one warm-up call per block
                gc.collect()
                recording[0] = True
                for _ in range(reps):
                    fn()
        recording[0] = False

    engine.compute = timed_compute
    try:
        same_bytes = via_client().data == response_bytes
        _, load = settled(measure_all, "request handling")
    finally:
        engine.compute = original
        recording[0] = False

    handling_client = [t - c for t, c in client_rows]
    handling_pieces = [sum(pieces[k][i] for k in ("parse", "prepare", "to_wire", "dumps"))
                       for i in range(len(pieces["parse"]))]
    baseline_total = [sum(base[k][i] for k in base) for i in range(len(base["loads"]))]
    out = {
        "body_bytes": len(body), "floats_in": n_floats, "response_bytes": len(response_bytes), "floats_out": n_out,
        "same_bytes": same_bytes, "n": len(client_rows),
        "client_total": med([t for t, _ in client_rows]), "client_compute": med([c for _, c in client_rows]),
        "handling_client": med(handling_client), "handling_client_min": min(handling_client),
        "compute_alone": med(compute_alone),
        "pieces": {k: med(v) for k, v in pieces.items()},
        "handling_pieces": med(handling_pieces), "handling_pieces_min": min(handling_pieces),
        "baseline": {k: med(v) for k, v in base.items()},
        "baseline_total": med(baseline_total), "baseline_total_min": min(baseline_total),
        "echo": med(echo_total), "load": load,
    }
    out["ratio_client"] = out["handling_client"] / out["baseline_total"]
    out["ratio_pieces"] = out["handling_pieces"] / out["baseline_total"]
    out["met_client"] = out["ratio_client"] <= TARGET_HANDLING
    out["met_pieces"] = out["ratio_pieces"] <= TARGET_HANDLING
    return out


# --- report ---------------------------------------------------------------------------------------------------

def yes(flag: bool) -> str:
    return "**met**" if flag else "**missed**"


def load_str(share: float) -> str:
    return f"{share:.0%}" + ("" if share < BUSY else " (unreliable)")


def render(info: dict, engine_rows: list[dict], handling: dict, elapsed: float) -> str:
    v = info["versions"]
    lines = [
        "# Benchmark results",
        "",
        "Written by `python bench/run.py`; see bench/README.md for what each figure means. Times are medians "
        "(min in brackets) of interleaved repetitions, in milliseconds, measured with `time.perf_counter`. "
        "\"Others' load\" is the share of the machine's CPU that other processes took during a measurement; "
        f"above {BUSY:.0%} its figures are unreliable.",
        "",
        "## Machine",
        "",
        f"- Date: {info['date']}",
        f"- Commit: {info['commit']}",
        f"- CPU: {info['cpu']}; {info['cores']} usable cores (os.cpu_count() = {info['cpu_count']}); "
        f"SIMD flags: {info['simd']}; memory {info['memory']}",
        f"- OS: {info['platform']}; Python {info['python']}",
        f"- Allocator: freed arrays kept on the heap for reuse (service/tuning.py, as gunicorn.conf.py sets for the "
        f"service; applies to the engine and torch alike): {info['freed_arrays_kept']}",
        f"- numpy {v['numpy']} (BLAS: {info['numpy_blas_build']}), torch {v['torch']} (BLAS: {info['torch_blas']}, "
        f"CPU capability {info['torch_cpu_capability']}), orjson {v['orjson']}, pydantic {v['pydantic']} "
        f"(core {v['pydantic-core']}), flask {v['flask']}, werkzeug {v['werkzeug']}, threadpoolctl {v['threadpoolctl']}",
        f"- numpy BLAS threads: {info['numpy_blas_threads']} (from {info['numpy_blas_threads_from']}); "
        f"torch threads by default: {info['torch_threads_default']}",
        "- OPENBLAS_CORETYPE: " + (f"`{info['OPENBLAS_CORETYPE']}`" if info["OPENBLAS_CORETYPE"] is not None
                                   else "not set"),
    ]
    if info["env"]:
        lines.append("- Thread/BLAS environment: " + ", ".join(f"`{k}={val}`" for k, val in info["env"].items()))
    for pool in info["pools"]:
        lines.append(f"- Thread pool: {pool.get('internal_api')} {pool.get('version') or ''} "
                     f"({pool.get('user_api')}, {pool.get('num_threads')} threads"
                     + (f", kernel {pool['architecture']}" if pool.get("architecture") else "")
                     + (f", {pool['threading_layer']}" if pool.get("threading_layer") else "")
                     + f") from `{Path(pool.get('filepath', '?')).name}`")
    lines += [
        "",
        "## (a) Engine vs torch autograd (float64, same thread count)",
        "",
        f"Target: engine / torch <= {TARGET_ENGINE:g}, judged against torch computing the same gradients "
        "(all grads: dW, db, every dZ and dA including dA0).",
        "",
        "| network | m | threads | runs | engine | torch, all grads | torch, params only | engine / torch all "
        "| engine / torch params | max abs diff (max rel) | others' load | target |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in engine_rows:
        lines.append(
            f"| {r['sizes']} | {r['m']} | {r['threads']} | {r['n']} | {ms(r['engine'][0])} ({ms(r['engine'][1])}) "
            f"| {ms(r['torch_full'][0])} ({ms(r['torch_full'][1])}) | {ms(r['torch_plain'][0])} "
            f"({ms(r['torch_plain'][1])}) | {r['ratio_full']:.2f} (min/min {r['ratio_full_min']:.2f}) "
            f"| {r['ratio_plain']:.2f} | {r['max_abs']:.1e} ({r['max_rel']:.1e}) | {load_str(r['load'])} | {yes(r['met'])} |")
    lines += ["", "Where the time goes: the network's 9 matrix products alone, back to back, in numpy (OpenBLAS here) "
                  "and in torch (its own BLAS) on the same arrays, measured in the same interleaved rounds; \"the rest\" "
                  "is the whole pass minus its products (elementwise passes, reductions, checks, allocation, Python).",
              "",
              "| network | threads | products, numpy | products, torch | numpy / torch products | the rest, engine "
              "| the rest, torch all grads |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in engine_rows:
        lines.append(f"| {r['sizes']} | {r['threads']} | {ms(r['blas_np'][0])} | {ms(r['blas_torch'][0])} "
                     f"| {r['ratio_blas']:.2f} | {ms(r['rest_engine'])} | {ms(r['rest_torch'])} |")
    h = handling
    p, b = h["pieces"], h["baseline"]
    lines += [
        "",
        "## (b) Request handling vs bare orjson + numpy",
        "",
        f"Request: {h['body_bytes'] / 2**20:.2f} MiB of JSON, {h['floats_in']:,} floats in (X 1000 x 1000 into "
        f"[1000, 16, 10], one-hot Y); response {h['response_bytes'] / 2**20:.2f} MiB, {h['floats_out']:,} floats out. "
        f"Target: (handling - compute) / baseline <= {TARGET_HANDLING:g}. {h['n']} runs each; other processes' "
        f"load meanwhile {load_str(h['load'])}.",
        "",
        "| measurement | median ms | min ms |",
        "| --- | --- | --- |",
        f"| Flask test client, POST /v1/gradients, whole | {ms(h['client_total'])} | |",
        f"| engine.compute inside those requests | {ms(h['client_compute'])} | |",
        f"| **handling via the test client (whole - compute)** | **{ms(h['handling_client'])}** "
        f"| {ms(h['handling_client_min'])} |",
        f"| route pieces: model_validate_json (JSON -> lists -> ndarrays) | {ms(p['parse'])} | |",
        f"| route pieces: prepare | {ms(p['prepare'])} | |",
        f"| route pieces: engine.compute | {ms(p['compute'])} | |",
        f"| route pieces: to_wire | {ms(p['to_wire'])} | |",
        f"| route pieces: orjson.dumps | {ms(p['dumps'])} | |",
        f"| **handling, route pieces without compute** | **{ms(h['handling_pieces'])}** "
        f"| {ms(h['handling_pieces_min'])} |",
        f"| baseline: orjson.loads | {ms(b['loads'])} | |",
        f"| baseline: np.asarray of every array | {ms(b['asarray'])} | |",
        f"| baseline: orjson.dumps of the result arrays | {ms(b['dumps'])} | |",
        f"| **baseline total** | **{ms(h['baseline_total'])}** | {ms(h['baseline_total_min'])} |",
        f"| transport alone: same app, a route that reads the body and answers prebuilt bytes | {ms(h['echo'])} | |",
        f"| engine.compute alone on the prepared inputs | {ms(h['compute_alone'])} | |",
        "",
        f"- Ratio via the test client: {h['ratio_client']:.2f} -> {yes(h['met_client'])}",
        f"- Ratio of the route's own pieces: {h['ratio_pieces']:.2f} -> {yes(h['met_pieces'])}",
        f"- The client's response bytes equal orjson.dumps(to_wire(...)): {h['same_bytes']}",
        "",
        f"Total run time: {elapsed:.0f} s.",
        "",
    ]
    return "\n".join(lines)


README_START = "<!-- bench:results:start -->"
README_END = "<!-- bench:results:end -->"


def update_readme(path: Path, info: dict, engine_rows: list[dict], handling: dict) -> bool:
    """Replace the figures block of bench/README.md between its markers; False if the markers are missing."""
    if not path.exists():
        return False
    text = path.read_text()
    if README_START not in text or README_END not in text:
        return False
    h = handling
    block = [README_START, "",
             f"Last run: {info['date']}, commit {info['commit']}, on {info['cpu']} ({info['cores']} cores, "
             f"numpy {info['versions']['numpy']} with {info['numpy_blas_build']}, torch {info['versions']['torch']} "
             f"with {info['torch_blas']}, {info['numpy_blas_threads']} BLAS threads, OPENBLAS_CORETYPE "
             f"{info['OPENBLAS_CORETYPE'] or 'not set'}).", "",
             "| figure | engine / service | reference | ratio | target |", "| --- | --- | --- | --- | --- |"]
    for r in engine_rows:
        block.append(f"| (a) {r['sizes']}, m = {r['m']}, {r['threads']} thread(s) | {ms(r['engine'][0])} ms "
                     f"| torch all grads {ms(r['torch_full'][0])} ms (params only {ms(r['torch_plain'][0])} ms) "
                     f"| {r['ratio_full']:.2f} ({r['ratio_plain']:.2f}) | <= {TARGET_ENGINE:g}: {yes(r['met'])} |")
    block.append(f"| (b) handling via test client, minus compute | {ms(h['handling_client'])} ms "
                 f"| orjson + np.asarray + orjson.dumps {ms(h['baseline_total'])} ms | {h['ratio_client']:.2f} "
                 f"| <= {TARGET_HANDLING:g}: {yes(h['met_client'])} |")
    block.append(f"| (b) route pieces, minus compute | {ms(h['handling_pieces'])} ms "
                 f"| same baseline | {h['ratio_pieces']:.2f} | <= {TARGET_HANDLING:g}: {yes(h['met_pieces'])} |")
    block += ["", "Full table: [results.md](results.md).", "", README_END]
    before, rest = text.split(README_START, 1)
    after = rest.split(README_END, 1)[1]
    path.write_text(before + "\n".join(block) + after)
    return True


# The service runs with this allocator setting (gunicorn.conf.py); measure the engine as it is deployed. It is
# process-wide, so torch's arrays get it too.
KEEP_FREED_ARRAYS = tuning.keep_freed_arrays()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="few repetitions: a smoke run, figures not for the record")
    ap.add_argument("--out", type=Path, default=Path(__file__).with_name("results.md"), help="results file")
    ap.add_argument("--no-write", action="store_true", help="print only; write neither results.md nor README.md")
    ap.add_argument("--single-thread", dest="single", action=argparse.BooleanOptionalAction, default=True,
                    help="also run (a) with 1 thread each, the per-worker BLAS setting of the default gunicorn "
                         "config (default: on; needs threadpoolctl)")
    ap.add_argument("--attempts", type=int, default=3,
                    help="measure a figure up to this many times while other processes load the CPU (default 3)")
    ap.add_argument("--wait-idle", type=float, default=120.0,
                    help="seconds in all that the run may wait for other processes to go idle before its measurements "
                         "(default 120; 0: never wait, never measure again)")
    args = ap.parse_args()
    RETRY.update(attempts=max(1, args.attempts), budget=max(0.0, args.wait_idle))
    t_start = time.perf_counter()

    # Build the app once now, so that every service module is imported before the long measurements start.
    create_app(APP_CONFIG)
    info = machine_info()
    n = info["numpy_blas_threads"]
    print(SEP)
    print(f"gradient-service benchmark  {info['date']}  commit {info['commit']}")
    print(f"CPU {info['cpu']}, {info['cores']} cores; numpy {info['versions']['numpy']} ({info['numpy_blas_build']}, "
          f"{n} threads), torch {info['versions']['torch']} ({info['torch_blas']}); OPENBLAS_CORETYPE="
          f"{info['OPENBLAS_CORETYPE'] or '(not set)'}")
    if threadpoolctl is None:
        print("note: threadpoolctl is not installed; numpy's BLAS thread count is assumed, not read")
    print(SEP)

    print(f"(a) engine vs torch autograd, float64, {n} threads each (median ms; ratio vs torch all grads / params only)")
    engine_rows = bench_engine(n, args.quick)
    if args.single and threadpoolctl is not None and n != 1:
        print("(a') the same with 1 thread each (gunicorn's default: one BLAS thread per worker on this machine)")
        engine_rows += bench_engine(1, args.quick)

    print("(b) request handling of ~1M floats vs orjson.loads + np.asarray + orjson.dumps")
    handling = bench_handling(args.quick)
    h = handling
    print(f"  body {h['body_bytes'] / 2**20:.2f} MiB ({h['floats_in']:,} floats); response "
          f"{h['response_bytes'] / 2**20:.2f} MiB ({h['floats_out']:,} floats)")
    print(f"  test client whole {ms(h['client_total'])} ms, compute inside {ms(h['client_compute'])} ms "
          f"-> handling {ms(h['handling_client'])} ms")
    print("  route pieces: " + ", ".join(f"{k} {ms(t)}" for k, t in h["pieces"].items())
          + f" -> handling {ms(h['handling_pieces'])} ms")
    print("  baseline: " + ", ".join(f"{k} {ms(t)}" for k, t in h["baseline"].items())
          + f" -> {ms(h['baseline_total'])} ms")
    print(f"  transport alone (echo route through the same app and test client): {ms(h['echo'])} ms")
    print(f"  ratio via test client {h['ratio_client']:.2f}, route pieces {h['ratio_pieces']:.2f} "
          f"(target <= {TARGET_HANDLING:g})")
    print(f"  others' load {h['load']:.0%}" + ("  UNRELIABLE" if h["load"] >= BUSY else ""))

    elapsed = time.perf_counter() - t_start
    print(SEP)
    print("targets:")
    for r in engine_rows:
        print(f"  (a) {str(r['sizes']):22} m={r['m']:<5} threads={r['threads']}: engine/torch {r['ratio_full']:.2f} "
              f"-> {'met' if r['met'] else 'MISSED'}")
    print(f"  (b) handling/baseline {h['ratio_client']:.2f} (test client), {h['ratio_pieces']:.2f} (pieces) -> "
          f"{'met' if h['met_client'] and h['met_pieces'] else 'MISSED'}")
    busy = [r for r in engine_rows if r["load"] >= BUSY] + ([h] if h["load"] >= BUSY else [])
    if busy:
        print(f"WARNING: {len(busy)} measurement(s) ran while other processes took over {BUSY:.0%} of the CPU; "
              "their figures are unreliable (see the 'others' load' column)")
    print(f"total {elapsed:.0f} s")

    if not args.no_write:
        args.out.write_text(render(info, engine_rows, handling, elapsed))
        print(f"wrote {args.out}")
        if not args.quick and update_readme(Path(__file__).with_name("README.md"), info, engine_rows, handling):
            print("updated the figures in bench/README.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""The engine against its peers and its limit, at the same thread count (issue 11, "Speed").

For each network, ``service.engine.compute`` (forward pass, cost and every gradient, exactly what /v1/gradients
calls) is timed against:

- **torch** float64 autograd doing the same work: dW, db, dZ, dA of every layer (``retain_grad``) and dA0
  (``X.requires_grad``), the loss taken through A_L so that dA_L exists, as the engine returns it;
- **JAX** (``jax_enable_x64``): ``jit(value_and_grad(..., has_aux=True))`` with the same outputs (Z_l, A_l as aux;
  dZ_l and dA_l as the gradients of zero perturbations added to Z_l and A_l, dA0 as the gradient of X). Compile
  time is measured apart (``lower(...).compile()``) and excluded from the call times;
- **own matmuls**: exactly the matrix products the engine makes, forward ``W_l A_{l-1}``, ``dZ_l A_{l-1}^T`` and
  ``W_l^T dZ_l`` for every layer (dA0 included), on the engine's own arrays, through numpy; nothing else.

Networks: [2, 4, 1] m = 4 and [12288, 20, 7, 5, 1] m = 209 (relu hidden layers, sigmoid output, binary
cross-entropy), [784, 256, 128, 10] m = 256 and [1024, 1024, 1024, 10] m = 1024 (relu, softmax, categorical
cross-entropy), features first, He-scaled weights from a seeded generator.

Every measurement runs in a child process, one per (BLAS kernel, thread count): the environment as given, and the
other OpenBLAS kernel choice (OPENBLAS_CORETYPE unset -> the child sets OPENBLAS_CORETYPE=Haswell; set -> the
child runs without OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE), each on 1 and 2 threads: threadpoolctl limits numpy's
BLAS, torch.set_num_threads torch, XLA_FLAGS JAX (set before JAX starts, hence the child). The active kernel is
read back with threadpoolctl in the child. The service, the tests and CI never change these variables; only this
benchmark's children do.

    python bench/engine.py            # about 5 minutes on an idle 2-core machine; writes bench/engine_results.md
    python bench/engine.py --quick    # a smoke run (few repeats); its figures are not for the record

It asserts nothing: it reports medians, ratios and whether each target is met.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "engine_results.md"

# (sizes, m, output activation, cost)
NETWORKS = [
    ([2, 4, 1], 4, "sigmoid", "binary_cross_entropy"),
    ([12288, 20, 7, 5, 1], 209, "sigmoid", "binary_cross_entropy"),
    ([784, 256, 128, 10], 256, "softmax", "categorical_cross_entropy"),
    ([1024, 1024, 1024, 10], 1024, "softmax", "categorical_cross_entropy"),
]
VARIANTS = ("engine", "torch", "jax", "matmuls")
# Targets of issue 11: on the three larger networks engine / own matmuls <= 1.10 and engine / JAX <= 0.9; on the
# tiny one engine / JAX <= 1.3.
TARGET_OWN, TARGET_JAX, TARGET_TINY_JAX = 1.10, 0.9, 1.3
BLOCK_PAUSE = 0.1  # seconds between timing blocks: one library's spinning threads settle before the next runs


def xla_flags(threads: int) -> str:
    """XLA's CPU client on ``threads`` threads: one means no Eigen thread pool and one intra-op thread."""
    base = os.environ.get("XLA_FLAGS", "")
    if threads == 1:
        return (base + " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1").strip()
    return base


# --- the child: one kernel, one thread count ---------------------------------------------------------------------

def make_network(sizes, m, out_act, seed):
    """X (n_0, m), labels Y (n_L, m) (0/1 for a sigmoid output, one-hot for softmax), relu layers + out_act."""
    import numpy as np

    from service import engine
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((sizes[0], m))
    if sizes[-1] == 1:
        Y = (rng.random((1, m)) < 0.5).astype(np.float64)
    else:
        Y = np.zeros((sizes[-1], m))
        Y[rng.integers(0, sizes[-1], m), np.arange(m)] = 1.0
    layers = [engine.dense(rng.standard_normal((sizes[l], sizes[l - 1])) * np.sqrt(2.0 / sizes[l - 1]),
                           rng.standard_normal((sizes[l], 1)) * 0.1, "relu" if l < len(sizes) - 1 else out_act)
              for l in range(1, len(sizes))]
    return X, Y, layers


def own_matmuls(layers, X, res):
    """The engine's matrix products alone, on its arrays: per layer W A_prev, dZ A_prev^T, W^T dZ."""
    W = [layer.params["W"] for layer in layers]
    A = [X] + res.A[:-1]
    dZ = res.dZ

    def run():
        for l in range(len(W)):
            W[l] @ A[l]
            dZ[l] @ A[l].T
            W[l].T @ dZ[l]
    return run


class TorchNet:
    """The same network in torch float64 with the engine's outputs: dW, db, and (retain_grad) dZ_l, dA_l, dA0."""

    def __init__(self, X, Y, layers, cost):
        import torch
        self.torch, self.cost, self.m = torch, cost, X.shape[1]
        self.X = torch.from_numpy(X.copy()).requires_grad_()
        self.Y = torch.from_numpy(Y.copy())
        self.W = [torch.from_numpy(layer.params["W"].copy()).requires_grad_() for layer in layers]
        self.b = [torch.from_numpy(layer.params["b"].copy()).requires_grad_() for layer in layers]
        self.Z: list = []
        self.A: list = []

    def __call__(self):
        torch = self.torch
        for p in (self.X, *self.W, *self.b):
            p.grad = None
        A, self.Z, self.A = self.X, [], []
        last = len(self.W) - 1
        for l, (W, b) in enumerate(zip(self.W, self.b)):
            Z = W @ A + b
            Z.retain_grad()
            if l < last:
                A = torch.relu(Z)
            else:
                A = torch.sigmoid(Z) if self.cost == "binary_cross_entropy" else torch.softmax(Z, dim=0)
            A.retain_grad()
            self.Z.append(Z)
            self.A.append(A)
        if self.cost == "binary_cross_entropy":
            loss = -(self.Y * torch.log(A) + (1 - self.Y) * torch.log(1 - A)).sum() / self.m
        else:
            loss = -(self.Y * torch.log(A)).sum() / self.m
        loss.backward()
        return loss.detach()

    def outputs(self):
        """cost, then per layer dW, db, dZ, dA (the engine's per_example dZ, dA: m times torch's), then dA0."""
        loss = float(self())
        out = [loss]
        for l in range(len(self.W)):
            out += [self.W[l].grad.numpy(), self.b[l].grad.numpy(), self.m * self.Z[l].grad.numpy(),
                    self.m * self.A[l].grad.numpy()]
        return out + [self.m * self.X.grad.numpy()]


def make_jax(X, Y, layers, cost):
    """jit(value_and_grad) of the network's cost with Z_l, A_l as aux and dZ_l, dA_l, dA0 as gradients (of zero
    perturbations of Z_l and A_l, and of X). Returns (compiled function, its arguments, compile seconds)."""
    import jax
    import jax.numpy as jnp
    jax.config.update("jax_enable_x64", True)
    params = [(jnp.asarray(layer.params["W"]), jnp.asarray(layer.params["b"])) for layer in layers]
    Xj, Yj, m = jnp.asarray(X), jnp.asarray(Y), X.shape[1]
    eZ = [jnp.zeros((W.shape[0], m)) for W, _ in params]
    eA = [jnp.zeros((W.shape[0], m)) for W, _ in params]
    last = len(params) - 1

    def loss(params, X, eZ, eA):
        A, Zs, As = X, [], []
        for l, (W, b) in enumerate(params):
            Z = W @ A + b + eZ[l]
            if l < last:
                A = jax.nn.relu(Z)
            else:
                A = jax.nn.sigmoid(Z) if cost == "binary_cross_entropy" else jax.nn.softmax(Z, axis=0)
            A = A + eA[l]
            Zs.append(Z)
            As.append(A)
        if cost == "binary_cross_entropy":
            J = -jnp.sum(Yj * jnp.log(A) + (1 - Yj) * jnp.log(1 - A)) / m
        else:
            J = -jnp.sum(Yj * jnp.log(A)) / m
        return J, (Zs, As)

    args = (params, Xj, eZ, eA)
    t0 = time.perf_counter()
    compiled = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3), has_aux=True)).lower(*args).compile()
    compile_s = time.perf_counter() - t0

    def run():
        return jax.block_until_ready(compiled(*args))
    return run, compile_s


def jax_outputs(out, m):
    """The JAX result in TorchNet.outputs' order (dZ, dA scaled by m)."""
    import numpy as np
    (J, _), (dparams, dX, dZ, dA) = out
    res = [float(J)]
    for l, (dW, db) in enumerate(dparams):
        res += [np.asarray(dW), np.asarray(db), m * np.asarray(dZ[l]), m * np.asarray(dA[l])]
    return res + [m * np.asarray(dX)]


def engine_outputs(res):
    out = [res.cost]
    for l, g in enumerate(res.grads):
        out += [g["W"], g["b"], res.dZ[l], res.dA[l + 1]]
    return out + [res.dA[0]]


def max_rel_diff(ours, theirs) -> float:
    """The largest difference between two output lists, relative to the largest |entry| of each array."""
    import numpy as np
    worst = abs(ours[0] - theirs[0]) / max(abs(theirs[0]), 1e-300)
    for a, b in zip(ours[1:], theirs[1:]):
        worst = max(worst, float(np.max(np.abs(a - b))) / max(float(np.max(np.abs(b))), 1e-300))
    return worst


def time_block(fn, reps: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    gc.collect()
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def repeats(sizes, m, quick: bool) -> tuple[int, int]:
    """(rounds, calls per block): about the same wall time per network."""
    macs = m * sum(sizes[l] * sizes[l - 1] for l in range(1, len(sizes)))
    if quick:
        return 2, (200 if macs < 1e5 else (10 if macs < 5e8 else 2))
    return 3, (2000 if macs < 1e5 else (60 if macs < 5e8 else 8))


def measure_network(spec, quick: bool) -> dict:
    """One network in this child: the four variants in interleaved rounds, their medians, the accuracy check."""
    from service import engine
    sizes, m, out_act, cost = spec
    X, Y, layers = make_network(sizes, m, out_act, seed=sum(sizes) + m)
    res = engine.compute(X, Y, layers, cost)
    net = TorchNet(X, Y, layers, cost)
    jax_run, compile_s = make_jax(X, Y, layers, cost)
    ours = engine_outputs(res)
    diffs = {"torch": max_rel_diff(ours, net.outputs()), "jax": max_rel_diff(ours, jax_outputs(jax_run(), m))}
    fns = {"engine": lambda: engine.compute(X, Y, layers, cost), "torch": net, "jax": jax_run,
           "matmuls": own_matmuls(layers, X, res)}
    rounds, reps = repeats(sizes, m, quick)
    samples = {k: [] for k in fns}
    load0 = os.getloadavg()[0]
    for r in range(rounds):
        for name, fn in fns.items():
            time.sleep(BLOCK_PAUSE)
            samples[name] += time_block(fn, reps, warmup=3 if r == 0 else 1)
    med = {k: statistics.median(v) for k, v in samples.items()}
    return {"sizes": sizes, "m": m, "cost": cost, "n": len(samples["engine"]), "median": med,
            "min": {k: min(v) for k, v in samples.items()}, "compile_s": compile_s, "max_rel_diff": diffs,
            "loadavg": [load0, os.getloadavg()[0]]}


def child(threads: int, quick: bool) -> None:
    """Runs in the child process; prints one JSON object on its last line."""
    import threadpoolctl
    import torch
    sys.path.insert(0, str(ROOT))
    from service import tuning

    # The service's allocator setting (gunicorn.conf.py applies it before the workers fork): freed arrays stay
    # on the heap, so a pass does not pay fresh pages for every large array. Every side of the run shares it.
    tuning.keep_freed_arrays()
    torch.set_num_threads(threads)
    with threadpoolctl.threadpool_limits(limits=threads, user_api="blas"):
        import numpy  # noqa: F401  (numpy's OpenBLAS is loaded, so threadpoolctl sees it)
        pools = [p for p in threadpoolctl.threadpool_info() if p.get("user_api") == "blas"]
        numpy_pool = next((p for p in pools if "numpy" in p.get("filepath", "")), pools[0] if pools else {})
        rows = []
        for spec in NETWORKS:
            rows.append(measure_network(spec, quick))
            print(f"    {str(spec[0]):24} done", file=sys.stderr, flush=True)
    print(json.dumps({"threads": threads, "kernel": numpy_pool.get("architecture", "?"),
                      "blas_threads": numpy_pool.get("num_threads"), "blas_version": numpy_pool.get("version"),
                      "torch_threads": torch.get_num_threads(), "xla_flags": os.environ.get("XLA_FLAGS", ""),
                      "openblas_env": {k: v for k, v in os.environ.items() if k.startswith("OPENBLAS")},
                      "rows": rows}))


# --- the parent: the children, the table, the record ----------------------------------------------------------

def kernel_envs() -> list[tuple[str, dict]]:
    """(label, environment): the environment as given, and the other OpenBLAS kernel choice."""
    here = dict(os.environ)
    other = dict(os.environ)
    if "OPENBLAS_CORETYPE" in here:
        other.pop("OPENBLAS_CORETYPE")
        other.pop("OPENBLAS_L2_SIZE", None)
        return [(f"as given (OPENBLAS_CORETYPE={here['OPENBLAS_CORETYPE']})", here),
                ("OpenBLAS' own choice (env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE)", other)]
    other["OPENBLAS_CORETYPE"] = "Haswell"
    return [("as given (OPENBLAS_CORETYPE unset: OpenBLAS' own choice)", here),
            ("OPENBLAS_CORETYPE=Haswell", other)]


def run_child(env: dict, threads: int, quick: bool) -> dict:
    env = dict(env, XLA_FLAGS=xla_flags(threads), PYTHONPATH=str(ROOT))
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(threads)] + (["--quick"] if quick else [])
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def verdict(row: dict) -> list[str]:
    med = row["median"]
    own, jax = med["engine"] / med["matmuls"], med["engine"] / med["jax"]
    if row["sizes"] == [2, 4, 1]:
        return [f"engine/JAX {jax:.2f} {'<=' if jax <= TARGET_TINY_JAX else '>'} {TARGET_TINY_JAX}"]
    return [f"engine/own {own:.2f} {'<=' if own <= TARGET_OWN else '>'} {TARGET_OWN}",
            f"engine/JAX {jax:.2f} {'<=' if jax <= TARGET_JAX else '>'} {TARGET_JAX}"]


def table(label: str, result: dict) -> list[str]:
    lines = [f"### {label}, {result['threads']} thread(s)", "",
             f"numpy's BLAS: OpenBLAS {result['blas_version']} kernel **{result['kernel']}**, "
             f"{result['blas_threads']} thread(s); torch {result['torch_threads']} thread(s); "
             f"XLA_FLAGS `{result['xla_flags'] or '(none: all cores)'}`; OPENBLAS_* {result['openblas_env'] or '{}'}",
             "",
             "| network | m | calls | engine | torch | JAX | own matmuls | engine/torch | engine/JAX | engine/own | "
             "min/min: torch, JAX, own | JAX compile | max rel diff torch, JAX | loadavg | targets |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in result["rows"]:
        med = row["median"]
        t = {k: f"{med[k] * 1e6:.1f} us" if med[k] < 1e-3 else f"{med[k] * 1e3:.2f} ms" for k in VARIANTS}
        lines.append(
            f"| {row['sizes']} | {row['m']} | {row['n']} | {t['engine']} | {t['torch']} | {t['jax']} | "
            f"{t['matmuls']} | {med['engine'] / med['torch']:.2f} | {med['engine'] / med['jax']:.2f} | "
            f"{med['engine'] / med['matmuls']:.2f} | "
            + ", ".join(f"{row['min']['engine'] / row['min'][k]:.2f}" for k in ("torch", "jax", "matmuls"))
            + f" | {row['compile_s']:.2f} s | "
            f"{row['max_rel_diff']['torch']:.0e}, {row['max_rel_diff']['jax']:.0e} | "
            f"{row['loadavg'][0]:.2f}-{row['loadavg'][1]:.2f} | {'; '.join(verdict(row))} |")
    return lines + [""]


def machine_lines(load_before, load_after, quick: bool) -> list[str]:
    from importlib.metadata import version
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip() or "unknown"
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    commit += " with uncommitted changes" if dirty else ""
    busy = max(load_before[0], load_after[0]) > 0.5
    return [f"- date (UTC): {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M}; commit {commit}",
            f"- CPU: {cpu}, {len(os.sched_getaffinity(0))} usable cores; Python {platform.python_version()}; "
            f"numpy {version('numpy')}, torch {version('torch')}, jax {version('jax')}, jaxlib {version('jaxlib')}",
            f"- machine load (os.getloadavg, 1/5/15 min): before {', '.join(f'{x:.2f}' for x in load_before)}; "
            f"after {', '.join(f'{x:.2f}' for x in load_after)}"
            + ("  **(the machine was busy with other work: figures unreliable)**" if busy else ""),
            "- " + ("**--quick: a smoke run with few repeats, not for the record**" if quick else
                    "full run: medians of 3 interleaved rounds per variant"), ""]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="few repeats: a smoke run")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--no-write", action="store_true", help=f"print only; do not write {RESULTS.name}")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.child, args.quick)
    load_before = os.getloadavg()
    lines = []
    for label, env in kernel_envs():
        for n in args.threads:
            print(f"{label}, {n} thread(s):", file=sys.stderr, flush=True)
            part = table(label, run_child(env, n, args.quick))
            print("\n".join(part), flush=True)
            lines += part
    head = ["# Engine against torch, JAX and its own matrix products", "",
            "Written by `python bench/engine.py` (see bench/README.md). Times are medians per call; `own` is the "
            "engine's matrix products alone; ratios are median / median (and min / min, steadier on a busy "
            "machine). The targets are judged on the medians.", ""]
    text = "\n".join(head + machine_lines(load_before, os.getloadavg(), args.quick) + lines)
    if not args.no_write:
        args.out.write_text(text)
        print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()

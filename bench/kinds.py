#!/usr/bin/env python
"""The layer-kinds benchmark (issue 8): the engine's forward and backward pass on
[784, 256 batchnorm relu, 128 batchnorm relu, 10 softmax] with m = 256 against torch float64 autograd on the same
number of threads. Target: engine / torch <= 1. Writes bench/kinds_results.md.

The network is five layers in the service's terms: dense 784 -> 256 (linear), batchnorm (train mode) relu, dense
256 -> 128 (linear), batchnorm relu, dense 128 -> 10 softmax, categorical cross-entropy. ``engine.compute``
returns the cost, A_L, every Z and A, every parameter's gradient (dW, db, dgamma, dbeta), every dZ and dA (dA_0
included) and the updated running statistics. torch does the same work the idiomatic way (examples first,
``F.linear`` and the native ``F.batch_norm`` with running buffers) keeping every intermediate's gradient
(``retain_grad``, X with ``requires_grad``): "torch, all grads", the figure the target is judged against;
"torch, params only" (fused cross_entropy, parameter gradients alone) is shown for scale.

One command measures both BLAS kernels: first in this process's environment, then in a child process whose
environment alone lacks OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE (``env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE``,
as a container without them runs); threadpoolctl reports the kernel each one ran. The timing helpers (interleaved
blocks, waiting for an idle machine, the other processes' load) are bench/run.py's.

Run from the repository root with the project's venv: ``python bench/kinds.py`` (under a minute on an idle 2-core
machine; ``--quick`` for a smoke run whose figures are not for the record).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

# bench/run.py: the project's timing helpers, machine description and the deployed allocator setting.
from run import (BUSY, RETRY, SEP, interleaved, load_str, machine_info, med, ms, products,  # noqa: E402
                 settled, threadpoolctl, threads)

from service import engine  # noqa: E402
from service.engine import Layer  # noqa: E402

SIZES = [784, 256, 128, 10]
M = 256
COST = "categorical_cross_entropy"
EPS, MOMENTUM = 1e-5, 0.9
TARGET = 1.0
KERNEL_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
RESULTS = HERE / "kinds_results.md"


def make_network(seed: int = 8) -> tuple[np.ndarray, np.ndarray, list[Layer]]:
    """X (784, m), one-hot Y (10, m); He-scaled dense layers, each hidden one followed by a batchnorm with relu."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((SIZES[0], M))
    Y = np.zeros((SIZES[-1], M))
    Y[rng.integers(0, SIZES[-1], M), np.arange(M)] = 1.0
    layers = []
    for l in range(1, len(SIZES)):
        n, last = SIZES[l], l == len(SIZES) - 1
        W = rng.standard_normal((n, SIZES[l - 1])) * np.sqrt(2.0 / SIZES[l - 1])
        b = rng.standard_normal((n, 1)) * 0.1
        layers.append(Layer("dense", {"W": W, "b": b}, "softmax" if last else "linear"))
        if not last:
            layers.append(Layer("batchnorm", {"gamma": 1 + 0.1 * rng.standard_normal((n, 1)),
                                              "beta": 0.1 * rng.standard_normal((n, 1))}, "relu",
                                hyper={"eps": EPS, "momentum": MOMENTUM, "mode": "train"},
                                state={"running_mean": np.zeros((n, 1)), "running_var": np.ones((n, 1))}))
    return X, Y, layers


class TorchNet:
    """The same network in torch float64, examples first: Z = F.linear(A, W, b), F.batch_norm with running
    buffers (momentum 1 - 0.9), relu, softmax."""

    def __init__(self, X: np.ndarray, Y: np.ndarray, layers: list[Layer]):
        self.m = X.shape[1]
        self.X = torch.from_numpy(X.T.copy()).requires_grad_()
        self.Y = torch.from_numpy(Y.T.copy())
        self.labels = torch.from_numpy(Y.argmax(axis=0))
        self.layers = []
        for layer in layers:
            p = {k: torch.from_numpy(v.reshape(-1) if k != "W" else v.copy()).clone().requires_grad_()
                 for k, v in layer.params.items()}
            s = {k: torch.from_numpy(v.reshape(-1).copy()) for k, v in layer.state.items()}
            self.layers.append((layer.kind, layer.activation, p, s))
        self.Z: list = []
        self.A: list = []

    def _layer(self, kind, p, s, A):
        if kind == "dense":
            return F.linear(A, p["W"], p["b"])
        return F.batch_norm(A, s["running_mean"], s["running_var"], p["gamma"], p["beta"], training=True,
                            momentum=1 - MOMENTUM, eps=EPS)

    def _zero(self):
        self.X.grad = None
        for _, _, p, _ in self.layers:
            for t in p.values():
                t.grad = None

    def full(self):
        """Every gradient the engine returns: parameters, each Z and A (retain_grad) and X; the loss through A_L
        (-sum Y log softmax / m) so that dA_L exists."""
        self._zero()
        A, Zs, As = self.X, [], []
        for kind, act, p, s in self.layers:
            Z = self._layer(kind, p, s, A)
            Z.retain_grad()
            A = torch.relu(Z) if act == "relu" else torch.softmax(Z, dim=1) if act == "softmax" else Z
            if A is not Z:
                A.retain_grad()
            Zs.append(Z)
            As.append(A)
        loss = -(self.Y * torch.log(A)).sum() / self.m
        loss.backward()
        self.Z, self.A = Zs, As
        return loss.detach()

    def plain(self):
        """Idiomatic training step: fused cross_entropy on the logits, parameter gradients only."""
        self._zero()
        A = self.X.detach()
        for kind, act, p, s in self.layers:
            Z = self._layer(kind, p, s, A)
            A = torch.relu(Z) if act == "relu" else Z
        loss = F.cross_entropy(A, self.labels)
        loss.backward()
        return loss.detach()


def compare(res, net: TorchNet) -> tuple[float, float]:
    """Largest abs difference, and largest relative to each array's largest entry, over the cost and every
    gradient (the engine's per_example dZ and dA are m times torch's; torch's are examples first). The relative
    figure leaves out the arrays that are 0 in exact arithmetic and rounding noise in both (db of a dense layer
    followed by a batchnorm, which subtracts the mean): their entries count in the absolute figure only."""
    loss = net.full()
    pairs = []
    for l, (_, _, p, _) in enumerate(net.layers):
        pairs += [(res.grads[l][k].reshape(-1) if k != "W" else res.grads[l][k], t.grad.numpy().reshape(-1)
                   if k != "W" else t.grad.numpy()) for k, t in p.items()]
        pairs.append((res.dZ[l], net.m * net.Z[l].grad.numpy().T))
        A = net.A[l]
        pairs.append((res.dA[l + 1], net.m * (A.grad if A.grad is not None else net.Z[l].grad).numpy().T))
    pairs.append((res.dA[0], net.m * net.X.grad.numpy().T))
    worst_abs = abs(res.cost - loss.item())
    worst_rel = worst_abs / abs(loss.item())
    largest = max(float(np.max(np.abs(theirs))) for _, theirs in pairs)
    for ours, theirs in pairs:
        diff = float(np.max(np.abs(ours - theirs)))
        worst_abs = max(worst_abs, diff)
        scale = float(np.max(np.abs(theirs)))
        if scale > 1e-9 * largest:
            worst_rel = max(worst_rel, diff / scale)
    return worst_abs, worst_rel


def measure(n_threads: int, quick: bool) -> dict:
    X, Y, layers = make_network()
    net = TorchNet(X, Y, layers)
    with threads(n_threads):
        res = engine.compute(X, Y, layers, COST)
        max_abs, max_rel = compare(res, net)
        rounds, reps = (2, 5) if quick else (5, 30)
        # The dense layers' matrix products alone (forward, dW, dA_prev), numpy against torch on the same memory:
        # how much of the difference is the BLAS kernel.
        dense = [i for i, layer in enumerate(layers) if layer.kind == "dense"]
        inputs = [X if i == 0 else res.A[i - 1] for i in dense]
        dZ = [res.dZ[i] for i in dense]
        samples, load = settled(lambda: interleaved({
            "engine": lambda: engine.compute(X, Y, layers, COST),
            "torch_full": net.full,
            "torch_plain": net.plain,
            "blas_np": products([layers[i] for i in dense], inputs, dZ, np),
            "blas_torch": products([layers[i] for i in dense], inputs, dZ, torch),
        }, rounds=rounds, reps=reps, warmup=3), f"{n_threads} thread(s)")
    row = {"threads": n_threads, "n": len(samples["engine"]), "max_abs": max_abs, "max_rel": max_rel, "load": load}
    for name, xs in samples.items():
        row[name] = [med(xs), min(xs)]
    row["ratio"] = row["engine"][0] / row["torch_full"][0]
    row["ratio_min"] = row["engine"][1] / row["torch_full"][1]
    row["ratio_plain"] = row["engine"][0] / row["torch_plain"][0]
    row["met"] = row["ratio"] <= TARGET
    row["rest_engine"] = row["engine"][0] - row["blas_np"][0]
    row["rest_torch"] = row["torch_full"][0] - row["blas_torch"][0]
    print(f"  threads={n_threads}  engine {ms(row['engine'][0]):>7} ms  torch(all grads) {ms(row['torch_full'][0]):>7} "
          f"ms  torch(params) {ms(row['torch_plain'][0]):>7} ms  ratio {row['ratio']:.2f} "
          f"(params {row['ratio_plain']:.2f})"
          f"  max|diff| {max_abs:.1e} (rel {max_rel:.1e})  others' load {load:.0%}"
          + ("  UNRELIABLE" if load >= BUSY else ""), flush=True)
    print(f"             products alone: numpy {ms(row['blas_np'][0])} ms, torch {ms(row['blas_torch'][0])} ms; "
          f"the rest: engine {ms(row['rest_engine'])} ms, torch {ms(row['rest_torch'])} ms", flush=True)
    return row


def kernels() -> list[dict]:
    """threadpoolctl's report of the loaded thread pools (the BLAS kernel in ``architecture``)."""
    if threadpoolctl is None:
        return []
    keep = ("user_api", "internal_api", "version", "architecture", "threading_layer", "num_threads", "filepath")
    return [{k: pool.get(k) for k in keep} for pool in threadpoolctl.threadpool_info()]


def run_here(args) -> dict:
    """Every measurement in this process's environment."""
    info = machine_info()
    n = info["numpy_blas_threads"]
    env = {k: os.environ.get(k) for k in KERNEL_VARS}
    label = ", ".join(f"{k}={v}" if v is not None else f"{k} unset" for k, v in env.items())
    print(f"environment: {label}; numpy BLAS: " + "; ".join(
        f"{p['internal_api']} {p['version']} kernel {p['architecture']}" for p in kernels() if p["user_api"] == "blas"),
        flush=True)
    rows = [measure(n, args.quick)]
    if threadpoolctl is not None and n != 1 and not args.no_single_thread:
        rows.append(measure(1, args.quick))
    return {"env": env, "kernels": kernels(), "info": {k: v for k, v in info.items() if k != "pools"}, "rows": rows}


def run_child(args, env_changes: dict[str, str | None]) -> dict:
    """This script once more in a child process whose environment alone differs (None: the variable removed)."""
    env = dict(os.environ)
    for k, v in env_changes.items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "child.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child-json", str(out), "--wait-idle", "0"]
        cmd += ["--quick"] if args.quick else []
        cmd += ["--no-single-thread"] if args.no_single_thread else []
        subprocess.run(cmd, env=env, check=True, cwd=HERE.parent)
        return json.loads(out.read_text())


def render(runs: list[tuple[str, str, dict]], elapsed: float) -> str:
    info = runs[0][2]["info"]
    v = info["versions"]
    lines = [
        "# Layer kinds benchmark",
        "",
        "Written by `python bench/kinds.py` (see its docstring). The engine's forward and backward pass on "
        f"{SIZES[0]} -> 256 batchnorm relu -> 128 batchnorm relu -> 10 softmax, m = {M}, float64, against torch "
        "autograd on the same number of threads. Times are medians (min in brackets) of interleaved repetitions, in "
        f"milliseconds. \"Others' load\": the share of the CPU other processes took meanwhile; above {BUSY:.0%} "
        "the row is unreliable. Target: engine / torch (all grads) <= 1.",
        "",
        "## Machine",
        "",
        f"- Date: {info['date']}",
        f"- Commit: {info['commit']}",
        f"- CPU: {info['cpu']}; {info['cores']} usable cores; SIMD flags: {info['simd']}; memory {info['memory']}",
        f"- OS: {info['platform']}; Python {info['python']}",
        f"- numpy {v['numpy']} (BLAS: {info['numpy_blas_build']}), torch {v['torch']} (BLAS: {info['torch_blas']}, "
        f"CPU capability {info['torch_cpu_capability']}), threadpoolctl {v['threadpoolctl']}",
        f"- Allocator: freed arrays kept for reuse (service/tuning.py, as deployed): {info['freed_arrays_kept']}",
        f"- Total time of the run: {elapsed:.0f} s",
        "",
    ]
    for title, command, run in runs:
        lines += [f"## {title}", "", f"Command: `{command}`" + ("" if run is runs[0][2] else
                                                                 " (run as a child by the command above)"), ""]
        lines.append("- Environment: " + ", ".join(f"`{k}={val}`" if val is not None else f"`{k}` unset"
                                                   for k, val in run["env"].items()))
        for p in run["kernels"]:
            lines.append(f"- threadpoolctl: {p['internal_api']} {p['version'] or ''} ({p['user_api']}, "
                         f"{p['num_threads']} threads"
                         + (f", kernel **{p['architecture']}**" if p["architecture"] else "")
                         + (f", {p['threading_layer']}" if p["threading_layer"] else "")
                         + f") from `{Path(p['filepath'] or '?').name}`")
        if all(val is None for val in run["env"].values()):
            lines.append("- (neither variable is set here, so this run's kernel is the one OpenBLAS picks for the CPU)")
        lines += ["", "| threads | runs | engine | torch, all grads | torch, params only | engine / torch all "
                      "| engine / torch params | max abs diff (max rel) | others' load | target |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for r in run["rows"]:
            lines.append(
                f"| {r['threads']} | {r['n']} | {ms(r['engine'][0])} ({ms(r['engine'][1])}) | {ms(r['torch_full'][0])} "
                f"({ms(r['torch_full'][1])}) | {ms(r['torch_plain'][0])} ({ms(r['torch_plain'][1])}) | "
                f"{r['ratio']:.2f} (min/min {r['ratio_min']:.2f}) | {r['ratio_plain']:.2f} | "
                f"{r['max_abs']:.1e} ({r['max_rel']:.1e}) | {load_str(r['load'])} | "
                f"{'**met**' if r['met'] else '**missed**'}{' (unreliable)' if r['load'] >= BUSY else ''} |")
        lines += ["", "Where the time goes: the dense layers' matrix products alone (forward, dW, dA_prev of the three "
                      "dense layers), numpy against torch on the same arrays, and the rest (everything else: "
                      "batchnorm, activations, softmax, cost, bookkeeping).", "",
                  "| threads | products: numpy | products: torch | numpy / torch | the rest: engine "
                  "| the rest: torch |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for r in run["rows"]:
            lines.append(f"| {r['threads']} | {ms(r['blas_np'][0])} | {ms(r['blas_torch'][0])} | "
                         f"{r['blas_np'][0] / r['blas_torch'][0]:.2f} | {ms(r['rest_engine'])} | "
                         f"{ms(r['rest_torch'])} |")
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="few repetitions: a smoke run, figures not for the record")
    ap.add_argument("--no-single-thread", action="store_true", help="skip the 1-thread rows")
    ap.add_argument("--wait-idle", type=float, default=60.0,
                    help="seconds in all the run may wait for other processes to go idle (default 60)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--no-write", action="store_true", help="print only")
    ap.add_argument("--child-json", type=Path, help=argparse.SUPPRESS)  # internal: a child run writes its rows here
    args = ap.parse_args()
    RETRY.update(budget=max(0.0, args.wait_idle))
    torch.manual_seed(0)
    if args.child_json is not None:
        args.child_json.write_text(json.dumps(run_here(args)))
        return 0

    t0 = time.perf_counter()
    print(SEP)
    print("(1) this environment")
    here = run_here(args)
    print("(2) a child process without " + " and ".join(KERNEL_VARS) + " (env -u ..., as a container runs)")
    bare = run_child(args, {k: None for k in KERNEL_VARS})
    elapsed = time.perf_counter() - t0
    cmd = "python bench/kinds.py" + (" --quick" if args.quick else "")
    runs = [("In the machine's environment", cmd, here),
            ("Without OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE (a child process of the same command)",
             f"env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE {cmd}", bare)]
    print(SEP)
    for title, _, run in runs:
        for r in run["rows"]:
            print(f"  {title[:40]:40} threads={r['threads']}: engine/torch {r['ratio']:.2f} -> "
                  f"{'met' if r['met'] else 'MISSED'}" + ("  (unreliable: the machine was busy)" if r["load"] >= BUSY
                                                          else ""))
    if not args.no_write:
        args.out.write_text(render(runs, elapsed))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

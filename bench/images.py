#!/usr/bin/env python
"""The image kinds' benchmark: one run times the engine's forward and backward pass of a small convolutional
network against torch float64 autograd computing the same gradients, at the same thread counts, and writes
bench/images_results.md.

The network (the image issue's): X [m = 64, 3 x 32 x 32] (NCHW) -> conv 3x3, 16 filters, pad 1, relu -> maxpool 2
-> conv 3x3, 32 filters, pad 1, relu -> maxpool 2 -> flatten -> dense 10, softmax; categorical cross-entropy.
Both sides return every gradient (dW, db of every layer, every dZ and dA, dA0), as POST /v1/gradients does:
torch's intermediates are kept with retain_grad. Target: engine / torch <= 1.

OpenBLAS picks its kernels by ``OPENBLAS_CORETYPE`` (this machine's environment sets Haswell); the results file
keeps one section per kernel, so the record has both when the script runs twice:

    python bench/images.py                                             # the environment's kernel
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/images.py  # the kernel OpenBLAS detects (SkylakeX)

Run from the repository root with the project's venv (the bench extra); about a minute on an idle 2-core
machine. It reuses bench/run.py's timing, idle-waiting and machine description.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import run as base  # noqa: E402  (bench/run.py: also keeps freed arrays on the heap, as the service does)
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from service.engine.network import Layer, compute  # noqa: E402

COST = "categorical_cross_entropy"
M, CHANNELS, SIDE, CLASSES = 64, 3, 32, 10
NETWORK = ("[64, 3x32x32] -> conv 3x3 16 pad 1 relu -> maxpool 2 -> conv 3x3 32 pad 1 relu -> maxpool 2 -> flatten "
           "-> dense 10 softmax")
START, END = "<!-- section: ", " -->"


def make_network(seed: int = 9):
    """X (m, 3, 32, 32), one-hot Y (10, m), He-scaled kernels, the engine's layers and the raw arrays."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((M, CHANNELS, SIDE, SIDE))
    Y = np.zeros((CLASSES, M))
    Y[rng.integers(0, CLASSES, M), np.arange(M)] = 1.0
    W1 = rng.standard_normal((16, 3, 3, 3)) * np.sqrt(2 / 27)
    W2 = rng.standard_normal((32, 16, 3, 3)) * np.sqrt(2 / 144)
    W3 = rng.standard_normal((CLASSES, 32 * 8 * 8)) * np.sqrt(2 / 2048)
    b1, b2, b3 = rng.standard_normal(16) * 0.1, rng.standard_normal(32) * 0.1, rng.standard_normal((CLASSES, 1)) * 0.1
    pool = {"size": 2, "stride": None, "ties": "first"}
    layers = [Layer("conv2d", {"W": W1, "b": b1}, "relu", hyper={"stride": 1, "pad": 1}),
              Layer("maxpool2d", {}, "linear", hyper=pool),
              Layer("conv2d", {"W": W2, "b": b2}, "relu", hyper={"stride": 1, "pad": 1}),
              Layer("maxpool2d", {}, "linear", hyper=pool),
              Layer("flatten", {}, "linear", hyper={"channels_last": False}),
              Layer("dense", {"W": W3, "b": b3}, "softmax")]
    return X, Y, layers


class TorchNet:
    """The same network in torch float64; ``full`` keeps every intermediate's gradient, as the engine returns."""

    def __init__(self, X, Y, layers):
        leaf = lambda a: torch.from_numpy(np.array(a)).requires_grad_()  # noqa: E731
        self.X, self.Y = leaf(X), torch.from_numpy(Y.copy())
        self.params = [leaf(layers[0].params["W"]), leaf(layers[0].params["b"]), leaf(layers[2].params["W"]),
                       leaf(layers[2].params["b"]), leaf(layers[5].params["W"]), leaf(layers[5].params["b"])]
        self.Z: list = []

    def full(self):
        for p in (self.X, *self.params):
            p.grad = None
        W1, b1, W2, b2, W3, b3 = self.params
        Z1 = F.conv2d(self.X, W1, b1, padding=1)
        A1 = torch.relu(Z1)
        Z2 = F.max_pool2d(A1, 2)
        Z3 = F.conv2d(Z2, W2, b2, padding=1)
        A3 = torch.relu(Z3)
        Z4 = F.max_pool2d(A3, 2)
        Z5 = Z4.reshape(M, -1).T
        Z6 = W3 @ Z5 + b3
        A6 = torch.softmax(Z6, dim=0)
        self.Z = [Z1, A1, Z2, Z3, A3, Z4, Z5, Z6, A6]
        for t in self.Z:
            t.retain_grad()
        loss = -(self.Y * torch.log(A6)).sum() / M  # through A_L, so that dA_L exists as the engine returns it
        loss.backward()
        return loss.detach()


def compare(res, net: TorchNet) -> tuple[float, float]:
    """Max abs and max relative (to each array's largest entry) difference of every gradient; the engine's
    per_example dA and dZ carry no 1/m, so torch's are scaled by m."""
    loss = net.full()
    Z1, A1, Z2, Z3, A3, Z4, Z5, Z6, A6 = net.Z
    g = lambda t: t.grad.numpy()  # noqa: E731
    pairs = [(res.grads[0]["W"], g(net.params[0])), (res.grads[0]["b"], g(net.params[1])),
             (res.grads[2]["W"], g(net.params[2])), (res.grads[2]["b"], g(net.params[3])),
             (res.grads[5]["W"], g(net.params[4])), (res.grads[5]["b"], g(net.params[5])),
             (res.dA[0], M * g(net.X)), (res.dZ[0], M * g(Z1)), (res.dA[1], M * g(A1)), (res.dZ[1], M * g(Z2)),
             (res.dZ[2], M * g(Z3)), (res.dA[3], M * g(A3)), (res.dZ[3], M * g(Z4)), (res.dZ[4], M * g(Z5)),
             (res.dZ[5], M * g(Z6)), (res.dA[6], M * g(A6))]
    worst_abs = abs(res.cost - float(loss))
    worst_rel = worst_abs / abs(float(loss))
    for ours, theirs in pairs:
        diff = float(np.max(np.abs(ours - theirs)))
        worst_abs = max(worst_abs, diff)
        worst_rel = max(worst_rel, diff / max(float(np.max(np.abs(theirs))), 1e-300))
    return worst_abs, worst_rel


def kernel(info: dict) -> str:
    """OpenBLAS's kernel (threadpoolctl's ``architecture``) for numpy's BLAS."""
    for pool in info["pools"]:
        if pool.get("internal_api") == "openblas":
            return str(pool.get("architecture") or "unknown")
    return "unknown (threadpoolctl not installed)"


def cpu_interleaved(variants: dict, rounds: int, reps: int, warmup: int) -> dict[str, list[float]]:
    """bench/run.py's interleaved rounds, timed by this process's CPU time (time.process_time): on one thread
    that is the wall time an idle machine would show, and other processes' load barely moves it."""
    samples = {name: [] for name in variants}
    for r in range(rounds):
        for name, fn in variants.items():
            for _ in range(warmup if r == 0 else 1):
                fn()
            for _ in range(reps):
                t0 = time.process_time()
                fn()
                samples[name].append(time.process_time() - t0)
    return samples


def bench(n_threads: int, quick: bool, clock: str = "wall") -> dict:
    X, Y, layers = make_network()
    net = TorchNet(X, Y, layers)
    with base.threads(n_threads):
        res = compute(X, Y, layers, COST)
        max_abs, max_rel = compare(res, net)
        rounds, reps = (2, 3) if quick else (4, 8)
        variants = {"engine": lambda: compute(X, Y, layers, COST), "torch": net.full}
        if clock == "cpu":
            samples, load = cpu_interleaved(variants, rounds, reps, 2), float("nan")
        else:
            samples, load = base.settled(lambda: base.interleaved(variants, rounds=rounds, reps=reps, warmup=2),
                                         f"{n_threads} thread(s)")
    row = {"threads": n_threads, "clock": clock, "n": len(samples["engine"]), "max_abs": max_abs, "max_rel": max_rel,
           "load": load,
           "engine": (base.med(samples["engine"]), min(samples["engine"])),
           "torch": (base.med(samples["torch"]), min(samples["torch"]))}
    row["ratio"] = row["engine"][0] / row["torch"][0]
    row["ratio_min"] = row["engine"][1] / row["torch"][1]
    print(f"  threads={n_threads}  engine {base.ms(row['engine'][0])} ms  torch {base.ms(row['torch'][0])} ms  "
          f"ratio {row['ratio']:.2f} (min/min {row['ratio_min']:.2f})  max|diff| {max_abs:.1e} (rel {max_rel:.1e})  "
          + (f"others' load {load:.0%}" + ("  UNRELIABLE" if load >= base.BUSY else "") if clock == "wall"
             else "CPU time"), flush=True)
    return row


def section(info: dict, rows: list[dict], quick: bool) -> str:
    k = kernel(info)
    lines = [f"{START}{k}{END}", f"## OpenBLAS kernel {k} (OPENBLAS_CORETYPE "
             f"{info['OPENBLAS_CORETYPE'] or 'not set'})", "",
             f"- Date: {info['date']}; commit {info['commit']}" + ("; **--quick run: not for the record**" if quick
                                                                   else ""),
             f"- CPU: {info['cpu']}; {info['cores']} usable cores; SIMD {info['simd']}; memory {info['memory']}",
             f"- numpy {info['versions']['numpy']} ({info['numpy_blas_build']}), torch {info['versions']['torch']} "
             f"(BLAS {info['torch_blas']}, CPU capability {info['torch_cpu_capability']}), threadpoolctl "
             f"{info['versions']['threadpoolctl']}; freed arrays kept on the heap: {info['freed_arrays_kept']}", "",
             "| threads | clock | runs | engine ms | torch ms | engine / torch | min / min | max abs diff (rel) "
             "| others' load | target |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        load = "not measured (CPU time)" if r["clock"] == "cpu" else \
            f"{r['load']:.0%}{' (unreliable)' if r['load'] >= base.BUSY else ''}"
        lines.append(f"| {r['threads']} | {r['clock']} | {r['n']} | {base.ms(r['engine'][0])} "
                     f"({base.ms(r['engine'][1])}) | {base.ms(r['torch'][0])} ({base.ms(r['torch'][1])}) | "
                     f"{r['ratio']:.2f} | {r['ratio_min']:.2f} | {r['max_abs']:.1e} ({r['max_rel']:.1e}) | {load} | "
                     f"{'met' if r['ratio'] <= 1 else '**missed**'} |")
    return "\n".join(lines) + "\n"


def write(path: Path, text: str, kernel_name: str) -> None:
    """The results file with this kernel's section replaced (or added); the other kernels' sections kept."""
    header = ("# Image kinds: engine vs torch autograd\n\nWritten by `python bench/images.py` (see its docstring). "
              f"Network: {NETWORK}; categorical cross-entropy; float64; every gradient on both sides (torch keeps "
              "its intermediates' gradients with retain_grad). Times are medians (min in brackets) of interleaved "
              "repetitions, `time.perf_counter`, in milliseconds. Target: engine / torch <= 1 at the same thread "
              "count.\n\n")
    sections = {}
    if path.exists():
        for chunk in path.read_text().split(START)[1:]:
            name = chunk.split(END, 1)[0]
            sections[name] = START + chunk.rstrip() + "\n"
    sections[kernel_name] = text
    path.write_text(header + "\n".join(sections[k] for k in sorted(sections)))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts (default 1,2)")
    ap.add_argument("--quick", action="store_true", help="few repetitions: a smoke run, figures not for the record")
    ap.add_argument("--out", type=Path, default=HERE / "images_results.md", help="results file")
    ap.add_argument("--no-write", action="store_true", help="print only")
    ap.add_argument("--wait-idle", type=float, default=60.0, help="seconds the run may wait for an idle machine")
    ap.add_argument("--cpu-time", action="store_true",
                    help="also time the 1-thread rows by CPU time (robust on a shared machine; not for 2+ threads)")
    args = ap.parse_args()
    base.RETRY.update(attempts=3, budget=max(0.0, args.wait_idle))
    t0 = time.perf_counter()
    info = base.machine_info()
    print(f"image kinds benchmark: {NETWORK}\nkernel {kernel(info)} (OPENBLAS_CORETYPE "
          f"{info['OPENBLAS_CORETYPE'] or 'not set'}), torch {info['versions']['torch']} ({info['torch_blas']})")
    rows = [bench(int(n), args.quick) for n in args.threads.split(",")]
    if args.cpu_time:
        rows.append(bench(1, args.quick, clock="cpu"))
    print(f"total {time.perf_counter() - t0:.0f} s")
    if not args.no_write:
        write(args.out, section(info, rows, args.quick), kernel(info))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

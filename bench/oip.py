#!/usr/bin/env python
"""The Open Inference Protocol's binary tensors against the JSON route, end to end through gunicorn over loopback.

The request is bench/run.py's ~1M-float network (X (1000, 1000) into [1000, 16, 10] relu/softmax, one-hot Y),
sent four ways to one gunicorn (gunicorn.conf.py, 1 worker) serving bench/oip_app.py, the production app plus a
floor route:

- **json**: POST /v1/gradients with the JSON body (~19 MiB);
- **binary**: POST /v2/models/gradients/infer, every tensor binary FP64 and every output requested binary, the JSON
  header as a client writes it (its length not a multiple of 8: the tensors land misaligned and X is copied once);
- **binary, aligned**: the same with the JSON header padded with spaces to a multiple of 8 bytes (X used in place);
- **floor**: POST /bench/oip-floor, a do-nothing route of the same app: the same bytes in as **binary**, the same
  bytes out, and in between only the body read, the JSON header parsed, np.frombuffer of every tensor and tobytes
  of every result.

Each request is timed by the client from sending to the last byte received, on a new connection (the service
serves one request per connection). The engine's time inside each request is read from the service's own metric
(gradient_engine_compute_seconds_sum of /metrics, read between requests); handling = whole - engine. The worker's
peak memory during one request: its VmHWM after the request minus its VmRSS before (the kernel's peak counter
reset through /proc/<pid>/clear_refs first), against the raw tensor bytes in and out.

Targets (issue 11): binary handling at least 5x lower than json's; binary handling at most 1.3x the floor; peak
worker memory at most 3x the raw tensor bytes in and out.

    python bench/oip.py [--rounds 4] [--per-round 5] [--no-write] [--out bench/oip_results.md]

It writes the full record to bench/oip_results.md and the figures into the README's *Speed* section (between its
oip:results markers); --no-write prints only.

Traffic goes to 127.0.0.1 only; gunicorn is stopped by its PID at the end.
"""

from __future__ import annotations

import argparse
import http.client
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

import numpy as np  # noqa: E402
import orjson  # noqa: E402

from run import Contention, machine_info, make_request  # noqa: E402  (bench/run.py: the network, the machine)

HEADER = "Inference-Header-Content-Length"
TARGET_VS_JSON, TARGET_VS_FLOOR, TARGET_MEMORY = 5.0, 1.3, 3.0
MiB = 1 << 20


# --- the requests ----------------------------------------------------------------------------------------------

def bodies() -> dict:
    """The JSON body of bench/run.py and its OIP forms (tensor names and parameters as the README maps them)."""
    json_body, _ = make_request()
    body = orjson.loads(json_body)
    tensors = {"X": np.array(body["X"]), "Y": np.array(body["Y"])}
    parameters = {"cost": body["cost"], "binary_data_output": True}
    for l, layer in enumerate(body["layers"], start=1):
        tensors[f"W{l}"], tensors[f"b{l}"] = np.array(layer["W"]), np.array(layer["b"])
        parameters[f"activation{l}"] = layer["activation"]
    inputs = [{"name": k, "shape": list(a.shape), "datatype": "FP64", "parameters": {"binary_data_size": a.nbytes}}
              for k, a in tensors.items()]
    head = orjson.dumps({"inputs": inputs, "parameters": parameters})
    if len(head) % 8 == 0:
        head += b" "  # as a client writes it: the tensors after it are not 8-byte aligned
    raw = b"".join(a.tobytes() for a in tensors.values())
    aligned = head + b" " * (-len(head) % 8)
    return {"json": (json_body, {"Content-Type": "application/json"}, "/v1/gradients"),
            "binary": (head + raw, {HEADER: str(len(head))}, "/v2/models/gradients/infer"),
            "binary, aligned": (aligned + raw, {HEADER: str(len(aligned))}, "/v2/models/gradients/infer"),
            "floor": (head + raw, {HEADER: str(len(head))}, "/bench/oip-floor"),
            "raw_in": sum(a.nbytes for a in tensors.values())}


# --- the server ------------------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(tmp: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    env = {**os.environ, "GRADIENT_BIND": f"127.0.0.1:{port}", "GRADIENT_WORKERS": "1",
           "GRADIENT_LOG_LEVEL": "warning", "PROMETHEUS_MULTIPROC_DIR": str(tmp / "metrics"),
           "PYTHONPATH": os.pathsep.join([str(ROOT / "bench"), str(ROOT), os.environ.get("PYTHONPATH", "")])}
    env.pop("GRADIENT_API_KEYS", None)
    proc = subprocess.Popen([str(Path(sys.executable).parent / "gunicorn"), "-c", str(ROOT / "gunicorn.conf.py"),
                             "oip_app:app"], cwd=ROOT, env=env, stdout=(tmp / "server.log").open("wb"),
                            stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"gunicorn exited:\n{(tmp / 'server.log').read_text()}")
        try:
            if call(port, "GET", "/readyz")[0] == 200:
                return proc, port
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("gunicorn was not ready within 60 s")


def worker_pid(master: int) -> int:
    children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    if len(children) != 1:
        raise SystemExit(f"expected one gunicorn worker, found {children}")
    return int(children[0])


def call(port: int, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    """(status, headers, body, seconds from sending to the last byte) on a new connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        t0 = time.perf_counter()
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        data = r.read()
        return r.status, dict(r.getheaders()), data, time.perf_counter() - t0
    finally:
        conn.close()


def engine_seconds(port: int) -> float:
    text = call(port, "GET", "/metrics")[2].decode()
    return sum(float(v) for v in re.findall(r"^gradient_engine_compute_seconds_sum(?:\{[^}]*\})? (\S+)$", text, re.M))


def status_kib(pid: int, key: str) -> int:
    return int(re.search(rf"^{key}:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.M).group(1))


# --- measuring ---------------------------------------------------------------------------------------------

def measure(port: int, pid: int, requests: dict, rounds: int, per_round: int) -> dict:
    """Interleaved rounds (json, binary, binary aligned, floor, json, ...) of ``per_round`` requests each."""
    rows = {name: [] for name in requests}
    for _ in range(rounds):
        for name, (body, headers, path) in requests.items():
            for _ in range(per_round):
                before = engine_seconds(port)
                status, _, data, seconds = call(port, "POST", path, body, headers)
                if status != 200:
                    raise SystemExit(f"{name}: {status} {data[:300]!r}")
                rows[name].append((seconds, engine_seconds(port) - before))
    return rows


def tiny_requests() -> list[tuple[str, bytes, dict]]:
    """The README's 2-3-1 network as JSON and as binary OIP: a warm-up that loads every code path of both routes."""
    body = orjson.loads((ROOT / "examples" / "two_layer_sigmoid_bce.json").read_bytes())
    tensors = {"X": body["X"], "Y": body["Y"]}
    parameters = {"cost": body["cost"], "binary_data_output": True}
    for l, layer in enumerate(body["layers"], start=1):
        tensors[f"W{l}"], tensors[f"b{l}"] = layer["W"], layer["b"]
        parameters[f"activation{l}"] = layer["activation"]
    arrays = {k: np.asarray(v, dtype=np.float64) for k, v in tensors.items()}
    head = orjson.dumps({"inputs": [{"name": k, "shape": list(a.shape), "datatype": "FP64",
                                     "parameters": {"binary_data_size": a.nbytes}} for k, a in arrays.items()],
                         "parameters": parameters})
    return [("/v1/gradients", orjson.dumps(body), {"Content-Type": "application/json"}),
            ("/v2/models/gradients/infer", head + b"".join(a.tobytes() for a in arrays.values()),
             {HEADER: str(len(head))})]


def peak_memory(tmp: Path, body: bytes, headers: dict, path: str) -> int:
    """The growth of a fresh worker's peak RSS during one request, in bytes: a new gunicorn, warmed up with tiny
    requests of both routes (so that the large request pays for itself only: a worker that served larger
    requests before keeps their freed memory in its RSS, and the peak would hide in it), its kernel peak counter
    reset, then the request."""
    proc, port = start(tmp)
    try:
        pid = worker_pid(proc.pid)
        for warm in tiny_requests():
            assert call(port, "POST", *warm)[0] == 200
        rss = status_kib(pid, "VmRSS")
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        status, _, data, _ = call(port, "POST", path, body, headers)
        assert status == 200, data[:300]
        return (status_kib(pid, "VmHWM") - rss) * 1024
    finally:
        stop(proc)


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def raw_out(response: bytes, headers: dict) -> int:
    n = int(headers[HEADER])
    return sum(o["parameters"]["binary_data_size"] for o in orjson.loads(response[:n])["outputs"])


def summary(rows: dict) -> dict:
    out = {}
    for name, samples in rows.items():
        whole = [s for s, _ in samples]
        engine = [e for _, e in samples]
        handling = [s - e for s, e in samples]
        out[name] = {"n": len(samples), "whole": statistics.median(whole), "engine": statistics.median(engine),
                     "handling": statistics.median(handling), "handling_min": min(handling)}
    return out


# --- report ------------------------------------------------------------------------------------------------

def ms(x: float) -> str:
    return f"{x * 1e3:.1f}"


def report(stats: dict, memory: dict, sizes: dict, info: dict, load: float, args) -> str:
    json_h, floor = stats["json"]["handling"], stats["floor"]["whole"]
    lines = [
        "# Open Inference Protocol: binary tensors against the JSON route (bench/oip.py)", "",
        f"- date: {info['date']}", f"- commit: {info['commit']}",
        f"- machine: {info['cpu']}, {info['cores']} cores, {info['memory']}; Python {info['python']}, numpy "
        f"{info['versions']['numpy']}, orjson {info['versions']['orjson']}; OPENBLAS_CORETYPE="
        f"{info['OPENBLAS_CORETYPE']}",
        f"- gunicorn.conf.py with 1 worker on 127.0.0.1, a new connection per request; {args.rounds} interleaved "
        f"rounds of {args.per_round} requests per variant; other processes' CPU load during the run: {load:.0%}"
        + ("  <- the machine was busy: figures unreliable" if load >= 0.05 else ""),
        f"- request: bench/run.py's network, {sizes['raw_in'] / MiB:.2f} MiB of raw tensors in "
        f"({sizes['json_body'] / MiB:.1f} MiB as JSON), {sizes['raw_out'] / MiB:.2f} MiB out "
        f"({sizes['json_response'] / MiB:.1f} MiB as JSON)", "",
        "| variant | whole (ms) | engine (ms) | handling = whole - engine (ms) | min handling (ms) |",
        "|---|---|---|---|---|",
    ]
    for name, s in stats.items():
        lines.append(f"| {name} | {ms(s['whole'])} | {ms(s['engine'])} | {ms(s['handling'])} | "
                     f"{ms(s['handling_min'])} |")
    lines += ["", "Medians. The floor's engine time is 0: it computes nothing; its whole time is the floor.", "",
              "| target | figure | met |", "|---|---|---|"]
    for name in ("binary", "binary, aligned"):
        h = stats[name]["handling"]
        lines.append(f"| {name}: handling at least {TARGET_VS_JSON:g}x lower than json's | {json_h / h:.1f}x lower "
                     f"({ms(h)} vs {ms(json_h)} ms) | {'yes' if json_h / h >= TARGET_VS_JSON else 'no'} |")
        lines.append(f"| {name}: handling at most {TARGET_VS_FLOOR:g}x the floor | {h / floor:.2f}x ({ms(h)} vs "
                     f"{ms(floor)} ms) | {'yes' if h / floor <= TARGET_VS_FLOOR else 'no'} |")
    bound = sizes["raw_in"] + sizes["raw_out"]
    for name, growth in memory.items():
        met = growth <= TARGET_MEMORY * bound if name != "json" else None
        lines.append(f"| {name}: peak worker memory at most {TARGET_MEMORY:g}x the raw tensors in and out "
                     f"({bound / MiB:.1f} MiB) | {growth / MiB:.1f} MiB = {growth / bound:.2f}x | "
                     f"{'-' if met is None else 'yes' if met else 'no'} |")
    lines += ["", "(json's memory is shown for scale: the target is the binary route's.)"]
    return "\n".join(lines) + "\n"


README = ROOT / "README.md"
README_BLOCK = re.compile(r"(<!-- oip:results:start -->\n)(.*?)(<!-- oip:results:end -->)", re.S)


def readme_block(stats: dict, memory: dict, sizes: dict, info: dict, load: float) -> str:
    """The README's figures (its *Speed* section), from this run."""
    cpu = "Intel Xeon" if "Xeon" in info["cpu"] else info["cpu"]
    busy = (f"the shared development machine while other work took {load:.0%} of its CPU (flagged unreliable; the "
            f"command is for an idle machine)" if load >= 0.05 else "an otherwise idle machine")
    json_h, floor = stats["json"]["handling"], stats["floor"]["whole"]
    b, a = stats["binary"]["handling"], stats["binary, aligned"]["handling"]
    bound = sizes["raw_in"] + sizes["raw_out"]

    def met(ok: bool) -> str:
        return "**met**" if ok else "**missed**"

    def row(label: str, s: dict, engine: bool = True) -> str:
        engine_ms = ms(s["engine"]) + " ms" if engine else "-"
        return f"| {label} | {ms(s['whole'])} ms | {engine_ms} | {ms(s['handling'])} ms |"

    lines = [
        f"bench/run.py's ~1M-float request end to end through gunicorn (one worker) over loopback, measured on "
        f"{info['date']} on {busy}: {cpu}, {info['cores']} cores, {info['memory']}, Python {info['python']}, numpy "
        f"{info['versions']['numpy']}, commit {info['commit']}.", "",
        "| variant | whole | engine | handling = whole - engine |", "|---|---|---|---|",
        row(f"JSON, `POST /v1/gradients` ({sizes['json_body'] / MiB:.1f} MiB in, {sizes['json_response'] / MiB:.1f} "
            f"MiB out)", stats["json"]),
        row(f"binary OIP, header as a client writes it ({sizes['raw_in'] / MiB:.1f} MiB in, "
            f"{sizes['raw_out'] / MiB:.1f} MiB out)", stats["binary"]),
        row("binary OIP, header padded to 8 bytes (tensors used in place)", stats["binary, aligned"]),
        row("floor: the same bytes through a do-nothing route of the same app, frombuffer and tobytes",
            stats["floor"], engine=False), "",
        f"Binary handling is **{json_h / b:.1f}x lower** than JSON's ({json_h / a:.1f}x aligned; target at least "
        f"{TARGET_VS_JSON:g}x: {met(min(json_h / b, json_h / a) >= TARGET_VS_JSON)}) and "
        f"**{b / floor:.2f}x the floor** "
        f"({a / floor:.2f}x aligned; target at most {TARGET_VS_FLOOR:g}x: "
        f"{met(max(b, a) / floor <= TARGET_VS_FLOOR)}). Peak "
        f"worker memory for the request, in a fresh worker: **{memory['binary'] / MiB:.1f} MiB, "
        f"{memory['binary'] / bound:.2f}x** the raw tensors in and out ({bound / MiB:.1f} MiB; "
        f"{memory['binary, aligned'] / MiB:.1f} MiB, {memory['binary, aligned'] / bound:.2f}x aligned; target at most "
        f"{TARGET_MEMORY:g}x: {met(max(memory['binary'], memory['binary, aligned']) <= TARGET_MEMORY * bound)}), "
        f"against {memory['json'] / MiB:.1f} MiB ({memory['json'] / bound:.1f}x) for the JSON route.",
    ]
    wrap = {0, len(lines) - 1}  # the prose, wrapped as the README is; the table rows stay whole
    return "\n".join(textwrap.fill(line, 115, break_long_words=False, break_on_hyphens=False) if i in wrap else line
                     for i, line in enumerate(lines)) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--per-round", type=int, default=5)
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "oip_results.md")
    args = parser.parse_args()

    built = bodies()
    requests = {k: v for k, v in built.items() if k != "raw_in"}
    info = machine_info()
    with tempfile.TemporaryDirectory() as tmp:
        proc, port = start(Path(tmp))
        try:
            pid = worker_pid(proc.pid)
            status, headers, response, _ = call(port, "POST", *_args(requests["binary"]))
            assert status == 200, response[:300]
            assert call(port, "POST", "/bench/oip-floor/results", response, {HEADER: headers[HEADER]})[0] == 200
            json_response = call(port, "POST", *_args(requests["json"]))[2]
            sizes = {"raw_in": built["raw_in"], "raw_out": raw_out(response, headers),
                     "json_body": len(requests["json"][0]), "json_response": len(json_response)}
            for name in requests:  # warm-up: one of each
                call(port, "POST", *_args(requests[name]))
            with Contention(exclude=(pid, proc.pid)) as load:  # the server it measures is not other work
                rows = measure(port, pid, requests, args.rounds, args.per_round)
        finally:
            stop(proc)
        memory = {}
        for name in ("binary", "binary, aligned", "json"):
            (Path(tmp) / name).mkdir()
            memory[name] = peak_memory(Path(tmp) / name, *requests[name])
    stats = summary(rows)
    text = report(stats, memory, sizes, info, load.others, args)
    print(text)
    if not args.no_write:
        args.out.write_text(text)
        readme = README.read_text()
        block = readme_block(stats, memory, sizes, info, load.others)
        README.write_text(README_BLOCK.sub(lambda m: m.group(1) + block + m.group(3), readme, count=1))
        print(f"written to {args.out} and the README's Speed section")


def _args(request: tuple) -> tuple:
    body, headers, path = request
    return path, body, headers


if __name__ == "__main__":
    main()

"""Load test on loopback: the tiny-network gradient request against a trivial JSON endpoint, same gunicorn.

    python bench/load.py [--duration 10] [--connections 8]

Starts gunicorn with gunicorn.conf.py on a free 127.0.0.1 port (stopped by its PID at the end) serving
bench/load_app.py: the production app plus POST /bench/trivial, a trivial JSON endpoint that receives the same
body and answers a constant JSON object through the same hooks and metrics. wrk then measures POST /bench/trivial,
POST /v1/gradients with a [2, 4, 1] network and m = 4, and (for reference) GET /healthz, and the script writes
bench/load_results.md. Targets (issue 3): at least 0.8x the trivial endpoint's requests per second, p99 latency at
most 1.5x. Traffic goes to 127.0.0.1 only; each run is bounded by --duration.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def tiny_request() -> dict:
    """[2, 4, 1]: tanh hidden layer, sigmoid output, binary cross-entropy, m = 4 (seeded)."""
    rng = np.random.default_rng(0)
    return {"layers": [{"W": rng.standard_normal((4, 2)).tolist(), "b": [[0.0]] * 4, "activation": "tanh"},
                       {"W": rng.standard_normal((1, 4)).tolist(), "b": [[0.0]], "activation": "sigmoid"}],
            "X": rng.standard_normal((2, 4)).tolist(), "Y": [[1, 0, 1, 0]], "cost": "binary_cross_entropy"}


def percentile(sorted_values: list[float], p: float) -> float:
    """The p-th percentile (nearest rank) of an ascending list; nan when empty."""
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, max(0, int(round(p / 100 * len(sorted_values))) - 1))]


def provenance() -> list[str]:
    """Markdown lines naming when, where and what was measured: UTC date, CPU model and cores, commit."""
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        model = next(l.split(":", 1)[1].strip() for l in lscpu.splitlines() if l.startswith("Model name"))
    except (OSError, StopIteration, subprocess.SubprocessError):
        model = platform.processor() or "unknown CPU"
    git = ["git", "-C", str(ROOT)]
    try:
        commit = subprocess.run(git + ["rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(git + ["status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True).stdout.strip()
    except OSError:
        commit, dirty = "unknown", ""
    return [f"- date: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
            f"- machine: {model}, {len(os.sched_getaffinity(0))} cores, Python {platform.python_version()}; "
            f"load average before the run {os.getloadavg()[0]:.2f}",
            f"- commit: {commit}{' (with uncommitted changes)' if dirty else ''}"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wrk(url: str, duration: int, connections: int, script: Path | None) -> dict:
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", "--timeout", "5s"]
    if script:
        cmd += ["-s", str(script)]
    out = subprocess.run(cmd + [url], capture_output=True, text=True, timeout=duration + 30, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))

    def latency(p: str) -> float:
        value, unit = re.search(rf"\s{p}%\s+([\d.]+)(us|ms|s)", out).groups()
        return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]

    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": rps, "p50_ms": latency("50"), "p99_ms": latency("99"),
            "non_2xx": int(errors.group(1)) if errors else 0, "raw": out}


def start_server(tmp: Path) -> tuple[subprocess.Popen, str]:
    """gunicorn with gunicorn.conf.py serving bench/load_app.py on a free 127.0.0.1 port, once it is ready."""
    port = free_port()
    env = {**os.environ, "GRADIENT_BIND": f"127.0.0.1:{port}", "PROMETHEUS_MULTIPROC_DIR": str(tmp / "metrics"),
           "GRADIENT_LOG_LEVEL": "warning"}
    gunicorn = Path(sys.executable).parent / "gunicorn"
    log = (tmp / "server.log").open("wb")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "bench"), str(ROOT), env.get("PYTHONPATH", "")])
    server = subprocess.Popen([str(gunicorn), "-c", str(ROOT / "gunicorn.conf.py"), "load_app:app"], cwd=ROOT,
                              env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            urllib.request.urlopen(base + "/readyz", timeout=2)
            break
        except OSError:
            time.sleep(0.2)
    return server, base


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--mixed", action="store_true",
                        help="the mixed load instead: valid, invalid and slow clients on 64 connections "
                             "(default duration then 180 s); writes bench/load_mixed_results.md")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is not installed (apt-get install wrk)")
    if args.mixed:
        return mixed(args.duration if args.duration != 10 else 180)

    tmp = Path(tempfile.mkdtemp(prefix="gradient-load-"))
    body = json.dumps(tiny_request())
    script = tmp / "post.lua"
    script.write_text('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
                      f"wrk.body = {json.dumps(body)}\n")
    server, base = start_server(tmp)
    try:
        check = urllib.request.Request(base + "/v1/gradients", data=body.encode(),
                                       headers={"Content-Type": "application/json"})
        assert urllib.request.urlopen(check).status == 200
        wrk(base + "/bench/trivial", 2, args.connections, script)  # warm-up
        trivial = wrk(base + "/bench/trivial", args.duration, args.connections, script)
        tiny = wrk(base + "/v1/gradients", args.duration, args.connections, script)
        health = wrk(base + "/healthz", args.duration, args.connections, None)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
        # gunicorn's access log is quiet at warning level; keep nothing else.
        shutil.rmtree(tmp, ignore_errors=True)

    rps_ratio = tiny["rps"] / trivial["rps"]
    p99_ratio = tiny["p99_ms"] / trivial["p99_ms"]
    cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                if l.startswith("model name")), platform.processor())
    from service.config import Settings

    s = Settings.load()
    lines = [
        "# Load test results (bench/load.py)",
        "",
        f"- date: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- machine: {cpu}, {os.cpu_count()} cores, Python {platform.python_version()}",
        f"- gunicorn.conf.py defaults: {s.workers} workers x {s.threads} threads; wrk -t1 -c{args.connections} "
        f"-d{args.duration}s on 127.0.0.1 (wrk shares the cores)",
        "",
        "| endpoint | requests/s | p50 ms | p99 ms | non-2xx |",
        "|---|---|---|---|---|",
        f"| POST /bench/trivial (same body, constant JSON answer) | {trivial['rps']:.0f} | {trivial['p50_ms']:.2f} | {trivial['p99_ms']:.2f} | {trivial['non_2xx']} |",
        f"| POST /v1/gradients [2, 4, 1], m = 4 | {tiny['rps']:.0f} | {tiny['p50_ms']:.2f} | {tiny['p99_ms']:.2f} | {tiny['non_2xx']} |",
        f"| GET /healthz (for reference) | {health['rps']:.0f} | {health['p50_ms']:.2f} | {health['p99_ms']:.2f} | {health['non_2xx']} |",
        "",
        "Ratios: /v1/gradients against /bench/trivial.",
        "",
        f"- throughput ratio: {rps_ratio:.2f}x (target >= 0.8x): {'met' if rps_ratio >= 0.8 else 'NOT met'}",
        f"- p99 ratio: {p99_ratio:.2f}x (target <= 1.5x): {'met' if p99_ratio <= 1.5 else 'NOT met'}",
        "",
    ]
    (ROOT / "bench" / "load_results.md").write_text("\n".join(lines))
    print("\n".join(lines))


# ------------------------------------------------------------------------------------------- the mixed load (issue 7)
MIXED_LUA = r"""
-- Each request: the example POST (valid, 60%), malformed JSON (15%), a 422 (shape error, 15%), GET /healthz (10%).
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args)
  counts = {}
  valid = args[1]; invalid = args[2]
end
function request()
  local r = math.random(100)
  local h = {["Content-Type"] = "application/json"}
  if r <= 60 then return wrk.format("POST", "/v1/gradients", h, valid)
  elseif r <= 75 then return wrk.format("POST", "/v1/gradients", h, '{"layers": [')
  elseif r <= 90 then return wrk.format("POST", "/v1/gradients", h, invalid)
  else return wrk.format("GET", "/healthz") end
end
function response(status, headers, body)
  counts[status] = (counts[status] or 0) + 1
end
function done(summary, latency, requests)
  local total = {}
  for _, t in ipairs(threads) do
    for k, v in pairs(t:get("counts")) do total[k] = (total[k] or 0) + v end
  end
  for k, v in pairs(total) do io.write(string.format("STATUS %d %d\n", k, v)) end
end
"""


def mixed(duration: int, connections: int = 64, slow: int = 8) -> None:
    """64 connections for `duration` s: wrk keeps 56 busy with valid and invalid requests (MIXED_LUA), 8 threads
    here dribble headers or bodies at 1 byte/s (reconnecting when cut off). Writes bench/load_mixed_results.md."""
    import threading

    import slow_clients  # bench/slow_clients.py: its dribbler

    tmp = Path(tempfile.mkdtemp(prefix="gradient-mixed-"))
    script = tmp / "mixed.lua"
    script.write_text(MIXED_LUA)
    valid = json.dumps(tiny_request())
    bad = tiny_request()
    bad["X"] = bad["X"][:1]  # X has 1 row where layers[0].W needs 2: a 422
    server, base = start_server(tmp)
    stop = threading.Event()
    stats = {"connections": 0, "cut": 0}
    port = int(base.rsplit(":", 1)[1])
    dribblers = [threading.Thread(target=slow_clients.dribbler,
                                  args=("127.0.0.1", port, "headers" if i % 2 else "bodies", stop, stats), daemon=True)
                 for i in range(slow)]
    try:
        for t in dribblers:
            t.start()
        time.sleep(1)
        cmd = ["wrk", "-t2", f"-c{connections - slow}", f"-d{duration}s", "--latency", "--timeout", "5s",
               "-s", str(script), base, "--", valid, json.dumps(bad)]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60, check=True).stdout
    finally:
        stop.set()
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=180)
        for t in dribblers:
            t.join(timeout=10)
        shutil.rmtree(tmp, ignore_errors=True)
    statuses = {int(k): int(v) for k, v in re.findall(r"STATUS (\d+) (\d+)", out)}

    def latency(p: str) -> str:
        m = re.search(rf"\s{p}%\s+([\d.]+\w+)", out)
        return m.group(1) if m else "?"

    socket_errors = re.search(r"Socket errors:.*", out)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)
    server_errors = sum(n for code, n in statuses.items() if code >= 500)
    lines = ["# Mixed load (bench/load.py --mixed)", "", *provenance(),
             f"- gunicorn.conf.py defaults on 127.0.0.1; {connections} connections for {duration} s: wrk -t2 "
             f"-c{connections - slow} (60% valid POST /v1/gradients [2, 4, 1] m = 4, 15% malformed JSON, 15% a 422, "
             f"10% GET /healthz) and {slow} slow clients at 1 byte/s (half headers, half bodies; reconnecting "
             "when cut off); wrk shares the 2 cores", "",
             "| requests/s | p50 | p90 | p99 | statuses | 5xx | socket errors | slow connections opened / cut |",
             "|---|---|---|---|---|---|---|---|",
             f"| {rps} | {latency('50')} | {latency('90')} | {latency('99')} | "
             f"{', '.join(f'{k}: {v}' for k, v in sorted(statuses.items()))} | {server_errors} | "
             f"{socket_errors.group(0) if socket_errors else 'none'} | {stats['connections']} / {stats['cut']} |", ""]
    text = "\n".join(lines)
    (ROOT / "bench" / "load_mixed_results.md").write_text(text)
    print(text)
    print(out)


if __name__ == "__main__":
    main()

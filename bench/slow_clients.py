"""Slow clients against the service as shipped: do normal requests stay fast while 20 connections dribble?

    python bench/slow_clients.py [--duration 60] [--slow 20] [--url http://127.0.0.1:8000]

Starts gunicorn with gunicorn.conf.py (its defaults: what the README command, the image, compose and Kubernetes
run) on a free 127.0.0.1 port, stopped by its PID at the end; or, with --url, measures a server already running
(say the container). Three phases of --duration seconds each:

1. baseline: no slow client;
2. headers: --slow connections send a request's headers one byte a second;
3. bodies: --slow connections send complete headers with Content-Length: 100000, then the body one byte a second.

A dribbler the server cuts off (its header or body deadline) reconnects at once, so --slow of them are always at
work. Meanwhile two closed-loop clients send normal requests (POST /v1/gradients with the README's example, and
GET /healthz), each with a 5 s timeout; their latencies give p50/p99/max per phase, and every answer is checked.
The target (issue 7): p99 under 1 s in both slow phases. Writes bench/slow_clients_results.md. Traffic goes to
127.0.0.1 only; every loop ends with its phase.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from load import free_port, percentile, provenance  # noqa: E402  (bench/load.py)

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = (ROOT / "examples" / "two_layer_sigmoid_bce.json").read_bytes()
COST = 0.676733526293133
HEADERS = b"POST /v1/gradients HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\nX-Slow: " + b"s" * 4000
BODY_HEAD = (b"POST /v1/gradients HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
             b"Content-Length: 100000\r\n\r\n")


def dribbler(host: str, port: int, mode: str, stop: threading.Event, stats: dict) -> None:
    """One slow client: headers (or, in `bodies` mode, a body) one byte a second; reconnects when cut off."""
    while not stop.is_set():
        try:
            with socket.create_connection((host, port), timeout=5) as s:
                stats["connections"] += 1
                if mode == "bodies":
                    s.sendall(BODY_HEAD)
                payload = HEADERS if mode == "headers" else b" " * 100000
                for i in range(len(payload)):
                    if stop.wait(1.0 if i else 0):
                        return
                    s.sendall(payload[i:i + 1])
        except OSError:  # cut off by the server (408 and close): the next connection starts at once
            stats["cut"] += 1


def normal_client(host: str, port: int, stop: threading.Event, out: list, errors: list) -> None:
    """Closed loop of normal requests: the example POST, then GET /healthz; each latency and each bad answer."""
    i = 0
    while not stop.is_set():
        post = i % 2 == 0
        i += 1
        t0 = time.monotonic()
        try:
            conn = http.client.HTTPConnection(host, port, timeout=5)
            if post:
                conn.request("POST", "/v1/gradients", body=EXAMPLE, headers={"Content-Type": "application/json"})
            else:
                conn.request("GET", "/healthz")
            r = conn.getresponse()
            body = r.read()
            conn.close()
            good = r.status == 200 and (not post or abs(json.loads(body)["cost"] - COST) < 1e-12)
            if not good:
                errors.append(f"{r.status} {body[:100]!r}")
        except (OSError, http.client.HTTPException, ValueError) as exc:
            errors.append(repr(exc))
        out.append(time.monotonic() - t0)


def phase(host: str, port: int, mode: str | None, slow: int, duration: float) -> dict:
    stop = threading.Event()
    stats = {"connections": 0, "cut": 0}
    latencies: list[float] = []
    errors: list[str] = []
    slow_threads = [threading.Thread(target=dribbler, args=(host, port, mode, stop, stats), daemon=True)
                    for _ in range(slow if mode else 0)]
    for t in slow_threads:
        t.start()
    time.sleep(1.0 if mode else 0)  # the dribblers are connected before the measurement starts
    normal = [threading.Thread(target=normal_client, args=(host, port, stop, latencies, errors), daemon=True)
              for _ in range(2)]
    for t in normal:
        t.start()
    time.sleep(duration)
    stop.set()
    for t in normal + slow_threads:
        t.join(timeout=10)
    lat = sorted(latencies)
    return {"mode": mode or "baseline", "n": len(lat), "p50": percentile(lat, 50), "p99": percentile(lat, 99),
            "max": lat[-1] if lat else float("nan"), "errors": errors, **stats}


def start_server(tmp: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    env = {**os.environ, "GRADIENT_BIND": f"127.0.0.1:{port}", "PROMETHEUS_MULTIPROC_DIR": str(tmp / "metrics"),
           "GRADIENT_LOG_LEVEL": "warning"}
    gunicorn = Path(sys.executable).parent / "gunicorn"
    proc = subprocess.Popen([str(gunicorn), "-c", str(ROOT / "gunicorn.conf.py"), "service.wsgi:app"], cwd=ROOT,
                            env=env, stdout=(tmp / "server.log").open("wb"), stderr=subprocess.STDOUT)
    for _ in range(150):
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/readyz")
            if conn.getresponse().status == 200:
                return proc, port
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("gunicorn did not become ready:\n" + (tmp / "server.log").read_text())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=float, default=60, help="seconds per phase")
    parser.add_argument("--slow", type=int, default=20, help="slow connections in each slow phase")
    parser.add_argument("--url", help="measure this running server instead of starting gunicorn (loopback only)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "slow_clients_results.md"), help="'' to print only")
    args = parser.parse_args()
    proc = None
    if args.url:
        url = urllib.parse.urlsplit(args.url)
        host, port = url.hostname, url.port or 80
        if not host.startswith("127.") and host not in ("localhost", "::1"):
            sys.exit("--url must be a loopback address")
    else:
        tmp = Path(tempfile.mkdtemp(prefix="gradient-slow-"))
        proc, port = start_server(tmp)
        host = "127.0.0.1"
    try:
        results = [phase(host, port, mode, args.slow, args.duration) for mode in (None, "headers", "bodies")]
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=180)
    report(args, results)


def report(args, results: list[dict]) -> None:
    from service.config import Settings

    s = Settings.load()
    target = args.url or f"gunicorn.conf.py defaults ({s.workers} workers, worker class gevent unless "
    target += "" if args.url else "GRADIENT_THREADS > 1)"
    lines = ["# Slow clients (bench/slow_clients.py)", "", *provenance(),
             # getattr: the script also measures older checkouts, which had neither deadline.
             f"- server: {target}; header timeout {getattr(s, 'header_timeout', 'none')} s, body timeout "
             f"{getattr(s, 'body_timeout', 'none')} s",
             f"- {args.slow} slow connections at 1 byte/s per slow phase, {args.duration:.0f} s per phase; two "
             "closed-loop normal clients (POST /v1/gradients with the example, GET /healthz), 5 s timeout", "",
             "| phase | normal requests | p50 ms | p99 ms | max ms | bad answers | slow connections opened | cut off |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['mode']} | {r['n']} | {r['p50'] * 1e3:.1f} | {r['p99'] * 1e3:.1f} | {r['max'] * 1e3:.1f} "
                     f"| {len(r['errors'])} | {r['connections']} | {r['cut']} |")
    met = all(r["p99"] < 1.0 and not r["errors"] for r in results[1:])
    lines += ["", f"Target (p99 of normal requests under 1 s, every answer right, in both slow phases): "
              f"{'met' if met else 'NOT met'}", ""]
    for r in results:
        lines += [f"- {r['mode']}: {e}" for e in r["errors"][:5]]
    text = "\n".join(lines) + "\n"
    if args.out:
        Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()

"""Restart under load behind nginx: does a rolling restart of the replicas lose requests?

    sudo python bench/restart.py [--duration 60] [--connections 16] [--nginx-conf deploy/nginx/nginx.conf]

The shipped deploy/nginx/nginx.conf, unchanged, in front of three gunicorn replicas (gunicorn.conf.py, one worker
each, as docker-compose.scale.yml runs them). The config balances over the name `gradient-service:8000`, so the
script re-runs itself as root inside a private mount and network namespace (`unshare --mount --net`): there,
loopback is the only interface, /etc/hosts (bind-mounted over, in that namespace only) resolves gradient-service
to 127.0.0.2, .3 and .4, and /tmp is a fresh tmpfs for nginx's pid and temporary files. Nothing outside the
namespace is touched and no traffic leaves it.

Meanwhile --connections client threads POST /v1/gradients through nginx (keep-alive to nginx, a new connection
after any error) and check every answer; the replicas are stopped with SIGTERM (gunicorn's graceful stop) and
started again one after the other, each back to ready before the next goes, for as long as --duration lasts.
A lost request is one whose answer is not the right 200. Then the replicas are stopped for good and the script
checks that nginx's own errors are problem+json (502 with no replica, 413, 414). It writes
bench/restart_results.md (date, machine, commit, the figures) and exits non-zero if a request was lost.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from load import percentile, provenance  # noqa: E402  (bench/load.py)

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = (ROOT / "examples" / "two_layer_sigmoid_bce.json").read_bytes()
COST = 0.676733526293133
REPLICAS = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
NGINX_PORT = 8080  # the shipped config's listen port


def start_replica(host: str, tmp: Path) -> subprocess.Popen:
    env = {**os.environ, "GRADIENT_BIND": f"{host}:8000", "GRADIENT_WORKERS": "1", "GRADIENT_BLAS_THREADS": "1",
           "GRADIENT_LOG_LEVEL": "warning", "PROMETHEUS_MULTIPROC_DIR": str(tmp / f"metrics-{host}")}
    log = (tmp / f"replica-{host}.log").open("ab")
    gunicorn = Path(sys.executable).parent / "gunicorn"
    return subprocess.Popen([str(gunicorn), "-c", str(ROOT / "gunicorn.conf.py"), "service.wsgi:app"], cwd=ROOT,
                            env=env, stdout=log, stderr=subprocess.STDOUT)


def wait_ready(host: str, port: int = 8000, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection(host, port, timeout=2)
            conn.request("GET", "/readyz")
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"{host}:{port} not ready in {seconds} s")


class Client(threading.Thread):
    """POSTs the example through nginx until told to stop; records each outcome and latency."""

    def __init__(self, stop: threading.Event):
        super().__init__(daemon=True)
        self.stop, self.ok, self.lost, self.latencies = stop, 0, [], []

    def run(self):
        conn = None
        while not self.stop.is_set():
            t0 = time.monotonic()
            try:
                conn = conn or http.client.HTTPConnection("127.0.0.1", NGINX_PORT, timeout=30)
                conn.request("POST", "/v1/gradients", body=EXAMPLE, headers={"Content-Type": "application/json"})
                r = conn.getresponse()
                body = r.read()
                good = r.status == 200 and abs(json.loads(body)["cost"] - COST) < 1e-12
                outcome = "ok" if good else f"{r.status} {body[:120]!r}"
            except (OSError, http.client.HTTPException, ValueError) as exc:
                outcome, conn = f"error {exc!r}", None
            self.latencies.append(time.monotonic() - t0)
            if outcome == "ok":
                self.ok += 1
            else:
                self.lost.append(outcome)


def nginx_problem_checks(tmp: Path) -> list[str]:
    """nginx's own errors through the shipped config, with every replica down: each must be problem+json."""
    results = []
    for name, method, path, body, want in [
        ("no replica", "POST", "/v1/gradients", EXAMPLE, 502),
        ("URI too long", "GET", "/" + "a" * 9000, None, 414),
        ("body over 32m", "POST", "/v1/gradients", b" " * (33 * 1024 * 1024), 413),
    ]:
        conn = http.client.HTTPConnection("127.0.0.1", NGINX_PORT, timeout=30)
        try:
            conn.request(method, path, body=body, headers={"Content-Type": "application/json"})
            r = conn.getresponse()
            data, ctype = r.read(), r.getheader("Content-Type")
            ok = r.status == want and ctype == "application/problem+json" and json.loads(data)["status"] == want
            results.append(f"{name}: {r.status} {ctype} {'ok' if ok else 'WRONG ' + repr(data[:200])}")
        except (OSError, http.client.HTTPException, ValueError) as exc:
            results.append(f"{name}: WRONG {exc!r}")
    return results


def inner(args) -> int:
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256m", "tmpfs", "/tmp"], check=True)  # nginx's pid, temp
    tmp = Path(tempfile.mkdtemp(prefix="gradient-restart-"))  # in that tmpfs: logs, metrics, the hosts file
    hosts = tmp / "hosts"
    hosts.write_text("127.0.0.1 localhost\n" + "".join(f"{h} gradient-service\n" for h in REPLICAS))
    subprocess.run(["mount", "--bind", str(hosts), "/etc/hosts"], check=True)
    replicas = {h: start_replica(h, tmp) for h in REPLICAS}
    for h in REPLICAS:
        wait_ready(h)
    nginx = subprocess.Popen(["nginx", "-e", "stderr", "-c", str(Path(args.nginx_conf).resolve())],
                             stdout=(tmp / "nginx.log").open("wb"), stderr=subprocess.STDOUT)
    wait_ready("127.0.0.1", NGINX_PORT)
    stop = threading.Event()
    clients = [Client(stop) for _ in range(args.connections)]
    for c in clients:
        c.start()
    restarts, started = 0, time.monotonic()
    try:
        time.sleep(2)
        while time.monotonic() - started < args.duration:
            for h in REPLICAS:
                replicas[h].send_signal(signal.SIGTERM)
                replicas[h].wait(timeout=180)
                replicas[h] = start_replica(h, tmp)
                wait_ready(h)
                restarts += 1
                time.sleep(args.pause)
        time.sleep(2)
    finally:
        stop.set()
        for c in clients:
            c.join(timeout=40)
        for p in replicas.values():
            p.send_signal(signal.SIGTERM)
        for p in replicas.values():
            p.wait(timeout=180)
    checks = nginx_problem_checks(tmp)
    nginx.send_signal(signal.SIGQUIT)
    nginx.wait(timeout=30)
    errors = [l for l in (tmp / "nginx.log").read_text(errors="replace").splitlines() if "[error]" in l]
    for line in errors[:5] + errors[-5:]:
        print("nginx:", line[:300], file=sys.stderr)
    return report(args, clients, restarts, time.monotonic() - started, checks)


def report(args, clients, restarts, elapsed, checks) -> int:
    ok = sum(c.ok for c in clients)
    lost = [x for c in clients for x in c.lost]
    lat = sorted(x for c in clients for x in c.latencies)
    kinds: dict[str, int] = {}
    for x in lost:
        kinds[x[:100]] = kinds.get(x[:100], 0) + 1
    conf = Path(args.nginx_conf).resolve()
    lines = [
        "# Restart under load behind nginx (bench/restart.py)", "", *provenance(),
        f"- nginx config: `{conf.relative_to(ROOT) if conf.is_relative_to(ROOT) else conf}`; 3 replicas, "
        f"gunicorn.conf.py with 1 worker each; {args.connections} client connections through nginx; "
        f"{elapsed:.0f} s, {restarts} replica restarts (SIGTERM, back to ready, next one, {args.pause} s apart)", "",
        "| requests | right 200 | lost | p50 ms | p99 ms | max ms |", "|---|---|---|---|---|---|",
        f"| {ok + len(lost)} | {ok} | {len(lost)} | {percentile(lat, 50) * 1e3:.1f} | "
        f"{percentile(lat, 99) * 1e3:.1f} | {lat[-1] * 1e3:.1f} |", "",
        *(f"- lost: {n} x {k}" for k, n in sorted(kinds.items())),
        "nginx's own errors, every replica stopped:", "", *(f"- {c}" for c in checks), "",
    ]
    text = "\n".join(lines)
    if args.out:
        Path(args.out).write_text(text)
    print(text)
    return 0 if not lost and all(c.endswith("ok") for c in checks) else 1


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=float, default=60, help="seconds of restarts under load")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--pause", type=float, default=1.0, help="seconds between two replica restarts")
    parser.add_argument("--nginx-conf", default=str(ROOT / "deploy" / "nginx" / "nginx.conf"))
    parser.add_argument("--out", default=str(ROOT / "bench" / "restart_results.md"), help="'' to print only")
    parser.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inner:
        sys.exit(inner(args))
    if os.geteuid() != 0:
        sys.exit("needs root (unshare --mount --net)")
    cmd = ["unshare", "--mount", "--net", "--fork", sys.executable, __file__, "--inner", *sys.argv[1:]]
    sys.exit(subprocess.run(cmd).returncode)


if __name__ == "__main__":
    main()

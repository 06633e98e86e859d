#!/usr/bin/env python
"""Two worst-case requests at once against a running container, and the container's peak memory (issue 7).

    python scripts/container_memory.py URL CONTAINER [--limit BYTES] [--results PATH]

Run by scripts/container_test.sh against the docker-compose.yml container (its 1 GiB memory limit and its worker
count). For each worst case, two copies of one body of nearly the size limit (GRADIENT_MAX_BODY_BYTES) are sent at
the same moment on two connections; both must be answered (200 for the valid ones, 422 for the invalid ones, never
a 5xx or a dropped connection), the container must still run and must not have been OOM-killed, and its memory
cgroup's peak (cgroup v1 ``memory.max_usage_in_bytes``, reset before each case; v2 ``memory.peak``) must stay under
the limit. The worst cases are tests/memory_probe.py's: the grading of a wrong dA0 as large as X (every candidate
of a mistake is built for it), a valid /v1/gradients with its caches (the largest response), and the invalid bodies
that cost the most to refuse (a million empty layers, one-element rows).

Exit status 0 when every case passes; one line per case on stdout; with ``--results`` a Markdown table too.
"""

from __future__ import annotations

import argparse
import datetime
import glob
import http.client
import os
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests import memory_probe as probe  # noqa: E402

MiB = 1 << 20


def _docker(*args: str) -> str:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=True).stdout.strip()


def _cgroup_files(container: str) -> tuple[str | None, str | None]:
    """The host paths of the container's memory peak counter (cgroup v1, or v2) and of its current usage."""
    cid = _docker("inspect", "--format", "{{.Id}}", container)
    for peak, usage in (("memory.max_usage_in_bytes", "memory.usage_in_bytes"), ("memory.peak", "memory.current")):
        found = glob.glob(f"/sys/fs/cgroup/**/*{cid}*/{peak}", recursive=True)
        if found:
            return found[0], str(Path(found[0]).with_name(usage))
    return None, None


def _read(path: str | None) -> int | None:
    try:
        return int(Path(path).read_text().split()[0]) if path else None
    except (OSError, ValueError):
        return None


def _reset(path: str | None) -> None:
    if path and path.endswith("max_usage_in_bytes"):
        Path(path).write_text("0")  # cgroup v1: writing 0 resets the peak to the current usage


def _post(url: str, route: str, body: bytes, out: list, i: int, start: threading.Event) -> None:
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=300)
    try:
        start.wait()
        t0 = time.perf_counter()
        conn.request("POST", route, body=body, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        size = len(response.read())
        out[i] = (response.status, size, time.perf_counter() - t0)
    except (OSError, http.client.HTTPException) as exc:
        out[i] = (f"{type(exc).__name__}: {exc}", 0, 0.0)
    finally:
        conn.close()


def _fitted(build, limit: int) -> bytes:
    """The largest body of ``build`` (a size -> bytes builder, which may overshoot its size) within ``limit``."""
    size = limit
    while True:
        body = build(size)
        if len(body) <= limit:
            return body
        size = int(size * limit / len(body) * 0.995)


def cases(limit: int) -> list[tuple[str, str, bytes, int]]:
    """(name, route, body, expected status), each body at most ``limit`` bytes."""
    return [(name, route, _fitted(build, limit), want) for name, route, build, want in (
        ("grade a wrong dA0 as large as X", "/v1/grade", probe.valid_grade_wrong_key, 200),
        ("gradients with caches", "/v1/gradients", probe.valid_gradients, 200),
        ("a million empty layers", "/v1/gradients", probe.empty_layers, 422),
        ("one-element rows", "/v1/grade", probe.one_element_rows, 422),
    )]


def run_case(url: str, container: str, route: str, body: bytes, files) -> dict:
    peak_file, usage_file = files
    _reset(peak_file)
    before = _read(usage_file)
    out: list = [None, None]
    start = threading.Event()
    threads = [threading.Thread(target=_post, args=(url, route, body, out, i, start)) for i in range(2)]
    for t in threads:
        t.start()
    start.set()
    for t in threads:
        t.join()
    status, oom = _docker("inspect", "--format", "{{.State.Status}} {{.State.OOMKilled}}", container).split()
    state = status + (", OOM-killed" if oom == "true" else ", never OOM-killed")
    return {"answers": out, "before": before, "peak": _read(peak_file), "state": state}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("url")
    ap.add_argument("container")
    ap.add_argument("--limit", type=int, default=1 << 30, help="the container's memory limit (bytes)")
    ap.add_argument("--body-limit", type=int, default=32 * MiB, help="GRADIENT_MAX_BODY_BYTES of the container")
    ap.add_argument("--results", type=Path, help="also write a Markdown table here")
    args = ap.parse_args()
    files = _cgroup_files(args.container)
    rows, ok = [], True
    for name, route, body, want in cases(args.body_limit):
        got = run_case(args.url, args.container, route, body, files)
        statuses = [a[0] for a in got["answers"]]
        passed = (statuses == [want, want] and got["state"] == "running, never OOM-killed"
                  and (got["peak"] is None or got["peak"] < args.limit))
        ok &= passed
        peak = "n/a" if got["peak"] is None else f"{got['peak'] / MiB:.0f} MiB"
        before = "n/a" if got["before"] is None else f"{got['before'] / MiB:.0f} MiB"
        seconds = max(a[2] for a in got["answers"])
        rows.append((name, route, len(body) / MiB, statuses, before, peak, seconds, got["state"], passed))
        print(f"container memory: {name} ({route}, 2 x {len(body) / MiB:.1f} MiB at once): {statuses}, "
              f"{before} before, peak {peak} of {args.limit / MiB:.0f} MiB, {seconds:.1f} s, {got['state']}: "
              f"{'ok' if passed else 'FAIL'}", flush=True)
    if args.results:
        _write(args.results, rows, args.limit)
    return 0 if ok else 1


def _write(path: Path, rows: list, limit: int) -> None:
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    lines = [f"# Two worst-case requests at once in the {limit / MiB:.0f} MiB container",
             "", f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, {cpu}, {os.cpu_count()} cores, "
             f"commit {commit}; `scripts/container_memory.py` run by `scripts/container_test.sh` against the "
             f"docker-compose.yml container (peak: the memory cgroup's, page cache included, reset before each case).",
             "", "| case | route | body | statuses | before | peak | slowest | container | ok |", "|---|---|---|---|---|---|---|---|---|"]
    for name, route, mib, statuses, before, peak, seconds, state, passed in rows:
        lines.append(f"| {name} | `{route}` | 2 x {mib:.1f} MiB | {statuses[0]}, {statuses[1]} | {before} | {peak} | "
                     f"{seconds:.1f} s | {state} | {'yes' if passed else 'NO'} |")
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())

#!/usr/bin/env python
"""Worst-case memory and time per route: bench/memory_results.md.

Every POST route gets each invalid body class of tests/memory_probe.py at 8, 16 and just under 32 MiB (the
default body limit), and a large valid request, each in a fresh interpreter. For each: the status, the peak RSS
growth of the process against the issue's budget (8x the body + 64 MiB; for a 200, 8x (body + response) + 64
MiB), the request's time and the time a bare parse of the same bytes takes (the issue's bound: no request slower
than parsing its body plus its priced work).

Run from the repository root: ``python bench/memory.py`` (about five minutes on 2 cores).
"""

from __future__ import annotations

import datetime
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.memory_probe import INVALID_BODIES, MiB, ROUTES, VALID_BODIES, measure  # noqa: E402

SIZES = (8 * MiB, 16 * MiB, 32 * MiB - 4096)


def machine() -> str:
    try:
        model = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor() or "unknown CPU"
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    return f"{model}, {len(__import__('os').sched_getaffinity(0))} cores, Python {platform.python_version()}, commit {commit.strip()}"


def main() -> int:
    rows, worst = [], 0.0
    cases = [(route, name, builder, size) for route in ROUTES for name, builder in INVALID_BODIES.items()
             for size in SIZES]
    cases += [(route, "valid", VALID_BODIES[route], size) for route in ROUTES for size in SIZES]
    for route, name, builder, size in cases:
        m = measure(route, builder(size))
        ratio = m.growth / m.bound
        worst = max(worst, ratio)
        rows.append(f"| `{route}` | {name} | {m.body_bytes / MiB:.1f} | {m.status} | {m.response_bytes / MiB:.1f} | "
                    f"{m.growth / MiB:.1f} | {m.bound / MiB:.0f} | {ratio:.2f} | {m.seconds * 1000:.0f} | "
                    f"{m.parse_seconds * 1000:.0f} |")
        print(rows[-1], flush=True)
    text = "\n".join([
        "# Worst-case memory per route (bench/memory.py)",
        "",
        f"Measured {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC on {machine()}.",
        "Each row is one request in a fresh interpreter (tests/memory_probe.py): the peak RSS growth over the RSS",
        "before the request, against the budget (8x the body + 64 MiB; for a 200, 8x (body + response) + 64 MiB),",
        "and the request's time against a bare parse of the same bytes (orjson, or the standard library where",
        "orjson refuses them).",
        "",
        f"Largest growth / budget: **{worst:.2f}** (target: at most 1).",
        "",
        "| route | body | body MiB | status | response MiB | growth MiB | budget MiB | growth / budget | ms | bare parse ms |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
    ])
    (ROOT / "bench" / "memory_results.md").write_text(text)
    print(f"largest growth / budget: {worst:.2f}")
    return 0 if worst <= 1 else 1


if __name__ == "__main__":
    raise SystemExit(main())

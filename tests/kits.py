"""Shared pieces of the autograder kits' end-to-end tests: the kits, the three fake submissions, a config with a
short time limit, and running a kit's script as the platform would."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KITS = ROOT / "examples" / "autograders"
SUBMISSIONS = KITS / "submissions"
NAMES = ("correct", "missing_1_over_m", "broken")
TIME_LIMIT = 2  # seconds per function in the tests (the kits ship 10 and 5): the broken submission hangs once


def short_config(src: Path, dst: Path) -> dict:
    """The kit's config with the tests' time limit, written to ``dst``."""
    config = json.loads(src.read_text())
    config["time_limit_seconds"] = TIME_LIMIT
    dst.write_text(json.dumps(config))
    return config


def put_submission(name: str, where: Path) -> None:
    """The fake submission ``name`` as the platform lays it out: the student's files alone in ``where``."""
    shutil.rmtree(where, ignore_errors=True)
    shutil.copytree(SUBMISSIONS / name, where)


def kit_env(**extra: str) -> dict[str, str]:
    """The environment of a kit's script here: this interpreter for the grader and for the student's code (it has
    numpy, the client and the service), the student's code as this user, no service unless given."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRADIENT_SERVICE_")}
    env.update(KIT_PYTHON=sys.executable, KIT_STUDENT_PYTHON=sys.executable, KIT_RUN_AS="", **extra)
    return env


def run(cmd: list[str], env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc


def without_network() -> list[str]:
    """A prefix that runs a command in a new network namespace (no network at all, loopback down), where this
    process may make one (root with unshare); empty otherwise."""
    if os.geteuid() == 0 and shutil.which("unshare"):
        probe = subprocess.run(["unshare", "--net", "true"], capture_output=True)
        if probe.returncode == 0:
            return ["unshare", "--net"]
    return []

"""Run a student's function in a subprocess with a time limit and a memory limit, and read back what it returned.

Each call is its own process (``runner.py`` under the configured interpreter, ``python -I``), so a hang, a crash or
a memory blow-up costs that test only. Limits: wall-clock ``seconds`` (then the process group is killed), CPU
seconds (RLIMIT_CPU, a little above), address space (RLIMIT_AS, ``memory_mb``), file size (RLIMIT_FSIZE), no core
dumps. The child's environment has no variable that looks like a secret (the service key above all), and one BLAS
thread, so that the memory limit means the same on every machine. With ``run_as`` (a user name) and root, the
child runs as that user, who should not be able to read the grader's files.
"""

from __future__ import annotations

import json
import os
import re
import resource
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

RUNNER = Path(__file__).with_name("runner.py")
SECRET = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|CREDENTIAL|^GRADIENT_SERVICE_", re.IGNORECASE)
MAX_FILE_BYTES = 256 * 1024 * 1024
TAIL = 2000  # characters of the student's output kept for the feedback
IMPORT_SECONDS = 20.0  # the student's module and numpy may take this long to import on a slow, busy machine


@dataclass(frozen=True)
class Limits:
    seconds: float = 10.0
    memory_mb: int = 512
    python: str = sys.executable
    run_as: str | None = None


@dataclass
class Outcome:
    """``ok`` and ``value`` (the returned value, arrays as ndarrays), or ``kind`` (timeout, memory, crash,
    exception, import, missing_function, bad_output) and ``reason``, the text the student sees."""

    ok: bool
    value: Any = None
    kind: str = ""
    reason: str = ""
    stdout: str = ""
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)


class Arrays:
    """Builds the spec of the arguments (see runner.py), collecting their arrays."""

    def __init__(self):
        self.arrays: dict[str, np.ndarray] = {}

    def __call__(self, value: Any) -> Any:
        if isinstance(value, np.ndarray):
            name = f"a{len(self.arrays)}"
            self.arrays[name] = value
            return {"$a": name}
        if isinstance(value, tuple):
            return {"$t": [self(v) for v in value]}
        if isinstance(value, list):
            return [self(v) for v in value]
        if isinstance(value, dict):
            return {"$d": {"items": [[k, self(v)] for k, v in value.items()]}}
        return value


def _decode(spec: Any, arrays: dict[str, np.ndarray]) -> Any:
    if isinstance(spec, dict) and "$a" in spec:
        return arrays[spec["$a"]]
    if isinstance(spec, dict) and "$t" in spec:
        return tuple(_decode(v, arrays) for v in spec["$t"])
    if isinstance(spec, dict) and "$d" in spec:
        return {k: _decode(v, arrays) for k, v in spec["$d"]["items"]}
    if isinstance(spec, dict) and "$x" in spec:
        return Unsupported(spec["$x"], spec.get("repr", ""))
    if isinstance(spec, list):
        return [_decode(v, arrays) for v in spec]
    return spec


@dataclass(frozen=True)
class Unsupported:
    """A returned value that is not a number or an array (a string, None, an object)."""

    type: str
    repr: str


def child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not SECRET.search(k)}
    env.update(OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1")
    return env


def _limit(limits: Limits, calls: int):
    memory = limits.memory_mb * 1024 * 1024
    cpu = int(limits.seconds * calls + IMPORT_SECONDS) + 1  # the wall-clock limit of each call is the grader's

    def apply() -> None:  # in the child, before exec
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
        resource.setrlimit(resource.RLIMIT_FSIZE, (MAX_FILE_BYTES, MAX_FILE_BYTES))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if limits.run_as and os.geteuid() == 0:
            import pwd

            user = pwd.getpwnam(limits.run_as)
            os.setgroups([])
            os.setgid(user.pw_gid)
            os.setuid(user.pw_uid)

    return apply


def call(module: Path, function: str, args: tuple, limits: Limits) -> Outcome:
    """Call ``function(*args)`` of the student's ``module`` under ``limits``."""
    return call_all(module, [(function, args)], limits)[0]


def call_all(module: Path, calls: list[tuple[str, tuple]], limits: Limits) -> list[Outcome]:
    """Each ``(function, args)`` of ``calls`` called in order, each within ``limits``: one process imports the
    module once and runs them; after a call that hangs or kills its process, a new process runs the rest."""
    work = Path(tempfile.mkdtemp(prefix="gradient-kit-"))
    try:
        if limits.run_as:
            os.chmod(work, 0o777)  # the student's user writes the results there
        # A copy the student's user can read even when the grader's environment is closed to it.
        shutil.copyfile(RUNNER, work / "runner.py")
        specs = []
        for i, (function, args) in enumerate(calls):
            pack = Arrays()
            specs.append({"function": function, "args": pack(list(args)), "arrays": str(work / f"in{i}.npz"),
                          "out": str(work / f"out{i}.npz"), "status": str(work / f"status{i}.json")})
            np.savez(work / f"in{i}.npz", **pack.arrays)
        outcomes: list[Outcome | None] = [None] * len(calls)
        first = 0
        while first < len(calls):
            first = _Process(work, module, specs, first, limits, outcomes).run()
        return outcomes
    finally:
        shutil.rmtree(work, ignore_errors=True)


class _Process:
    """One runner process for the calls ``first..``: fills ``outcomes`` and returns where the next process starts."""

    def __init__(self, work: Path, module: Path, specs: list[dict], first: int, limits: Limits, outcomes: list):
        self.work, self.module, self.specs, self.first = work, module, specs, first
        self.limits, self.outcomes = limits, outcomes
        self.stdout_path = work / f"stdout{first}.txt"

    def run(self) -> int:
        request = self.work / f"request{self.first}.json"
        request.write_text(json.dumps({"module": str(self.module), "calls": self.specs[self.first:]}))
        read_end, write_end = os.pipe()
        with open(self.stdout_path, "wb") as out:
            proc = subprocess.Popen([self.limits.python, "-I", "-u", str(self.work / "runner.py"), str(request),
                                     str(write_end)], cwd=self.module.parent, env=child_env(), stdout=out,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, pass_fds=(write_end,),
                                    preexec_fn=_limit(self.limits, len(self.specs) - self.first),
                                    start_new_session=True)
        os.close(write_end)
        try:
            return self._follow(proc, os.fdopen(read_end, "r"))
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def _follow(self, proc: subprocess.Popen, events) -> int:
        """Read ``start i`` / ``done i`` from the pipe, each call (and the import) within the time limit."""
        current, started = None, time.monotonic()  # None: importing the module (numpy too: its own limit)
        with events:
            while True:
                limit = self.limits.seconds if current is not None else max(self.limits.seconds, IMPORT_SECONDS)
                ready, _, _ = select.select([events], [], [], max(0.0, started + limit - time.monotonic()))
                if not ready:  # over the time limit: the process is killed by run()
                    return self._timed_out(current, started)
                line = events.readline()
                if not line:  # the process ended
                    return self._ended(proc, current, started)
                parts = line.split()
                if len(parts) != 2 or parts[0] not in ("start", "done") or not parts[1].isdigit():
                    continue  # not the runner's (the student's code may write to any descriptor)
                event, index = parts[0], self.first + int(parts[1])
                if index >= len(self.specs):
                    continue
                if event == "start":
                    current, started = index, time.monotonic()
                else:
                    self.outcomes[index] = self._read(index, time.monotonic() - started)
                    current, started = None, time.monotonic()
                    if index == len(self.specs) - 1:
                        return len(self.specs)

    def _stdout(self) -> str:
        return self.stdout_path.read_bytes()[-TAIL:].decode("utf-8", "replace")

    def _timed_out(self, current: int | None, started: float) -> int:
        reason = f"did not finish within the time limit of {self.limits.seconds:g} s (an endless loop?)"
        if current is None:  # still importing: every call left gets it
            for i in range(self.first, len(self.specs)):
                if self.outcomes[i] is None:
                    self.outcomes[i] = Outcome(False, kind="timeout", stdout=self._stdout(),
                                               reason="was not reached: importing the module " + reason[4:])
            return len(self.specs)
        self.outcomes[current] = Outcome(False, kind="timeout", reason=reason, stdout=self._stdout(),
                                         seconds=time.monotonic() - started)
        return current + 1

    def _ended(self, proc: subprocess.Popen, current: int | None, started: float) -> int:
        code = proc.wait()
        if code == -signal.SIGXCPU:
            return self._timed_out(current, started)
        died = _died(code, self._stdout(), time.monotonic() - started, self.limits)
        if current is None:  # died while importing (os._exit at import, a crash): nothing left can run
            for i in range(self.first, len(self.specs)):
                if self.outcomes[i] is None:
                    self.outcomes[i] = died
            return len(self.specs)
        self.outcomes[current] = died
        return current + 1

    def _read(self, index: int, elapsed: float) -> Outcome:
        status = json.loads(Path(self.specs[index]["status"]).read_text())
        if not status["ok"]:
            return _failed(status, self._stdout(), elapsed, self.limits)
        with np.load(self.specs[index]["out"], allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
        return Outcome(True, value=_decode(status["value"], arrays), stdout=self._stdout(), seconds=elapsed)


def _died(code: int, stdout: str, elapsed: float, limits: Limits) -> Outcome:
    """The process ended without a status: killed by a signal, or it exited on its own (os._exit)."""
    if code < 0:
        name = signal.Signals(-code).name
        kind = "memory" if name == "SIGKILL" else "crash"
        reason = (f"was killed ({name}), probably for using more than {limits.memory_mb} MB of memory"
                  if kind == "memory" else f"crashed ({name})")
    else:
        kind, reason = "crash", f"ended the process (exit status {code}) before returning"
    return Outcome(False, kind=kind, reason=reason, stdout=stdout, seconds=elapsed)


def _failed(status: dict, stdout: str, elapsed: float, limits: Limits) -> Outcome:
    stage, error = status["stage"], status["error"]
    kinds = {"import": ("import", "could not be imported:\n"), "function": ("missing_function", ""),
             "memory": ("memory", f"ran out of memory (the limit is {limits.memory_mb} MB):\n"),
             "call": ("exception", "raised an exception:\n"), "output": ("bad_output", "returned a value that "
                                                                         "cannot be read: ")}
    kind, prefix = kinds[stage]
    return Outcome(False, kind=kind, reason=prefix + error, stdout=stdout, seconds=elapsed)

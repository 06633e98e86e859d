"""The kit's sandbox (gradient_service_client.kit.sandbox): each call's limits, what the student's code can see,
and that one call's hang or crash does not take the others with it."""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from gradient_service_client.kit import course, sandbox

LIMITS = sandbox.Limits(seconds=3, memory_mb=400)

MODULE = '''
import os, resource, signal, time
import numpy as np

def env():
    return {k: 1.0 for k in os.environ}

def limits():
    return [float(resource.getrlimit(resource.RLIMIT_AS)[0]), float(resource.getrlimit(resource.RLIMIT_FSIZE)[0])]

def double(a, pair, d):
    return {"a": 2 * a, "pair": (pair[0] + 1, pair[1]), "b": d["b"] * 3}

def segfault():
    os.kill(os.getpid(), signal.SIGSEGV)

def leave():
    os._exit(3)

def text():
    return "hello"

def sleep():
    time.sleep(60)

def who(path):
    try:
        open(path).read()
        readable = 1.0
    except PermissionError:
        readable = 0.0
    return [float(os.getuid()), readable]
'''


@pytest.fixture
def module(tmp_path):
    path = tmp_path / "student.py"
    path.write_text(MODULE)
    return path


def test_arguments_and_answers_keep_their_structure(module):
    (out,) = sandbox.call_all(module, [("double", (np.arange(3.0), (np.ones(2), 5.0), {"b": np.eye(2)}))], LIMITS)
    assert out.ok, out.reason
    assert np.array_equal(out.value["a"], [0.0, 2.0, 4.0]) and np.array_equal(out.value["b"], 3 * np.eye(2))
    assert isinstance(out.value["pair"], tuple) and np.array_equal(out.value["pair"][0], [2.0, 2.0])


def test_the_student_sees_no_secret_and_one_blas_thread(module, monkeypatch):
    monkeypatch.setenv("GRADIENT_SERVICE_API_KEY", "a-secret-key-0123456789")
    monkeypatch.setenv("COURSE_TOKEN", "t")
    monkeypatch.setenv("HARMLESS", "1")
    out = sandbox.call(module, "env", (), LIMITS)
    assert out.ok, out.reason
    seen = set(out.value)
    assert "GRADIENT_SERVICE_API_KEY" not in seen and "COURSE_TOKEN" not in seen and "HARMLESS" in seen
    assert "OPENBLAS_NUM_THREADS" in seen
    if "OPENBLAS_CORETYPE" in os.environ:  # the machine's BLAS settings are passed on unchanged
        assert "OPENBLAS_CORETYPE" in seen


def test_limits_are_set_in_the_child(module):
    out = sandbox.call(module, "limits", (), LIMITS)
    assert out.ok and out.value == [400 * 1024 * 1024, float(sandbox.MAX_FILE_BYTES)]


def test_a_crash_or_an_exit_costs_its_call_only(module):
    calls = [("segfault", ()), ("leave", ()), ("sleep", ()), ("text", ()), ("missing", ()), ("limits", ())]
    outs = sandbox.call_all(module, calls, sandbox.Limits(seconds=1, memory_mb=400))
    assert [o.kind for o in outs] == ["crash", "crash", "timeout", "", "missing_function", ""]
    assert "SIGSEGV" in outs[0].reason and "exit status 3" in outs[1].reason
    assert outs[3].ok and isinstance(outs[3].value, sandbox.Unsupported) and outs[5].ok
    sub, problems = course.submission({"AL": outs[3].value}, ["AL"])
    assert sub == {} and "not an array of numbers" in problems["AL"]


def test_a_module_that_hangs_at_import_times_out_every_call(tmp_path, monkeypatch):
    monkeypatch.setattr(sandbox, "IMPORT_SECONDS", 0.5)
    path = tmp_path / "slow.py"
    path.write_text("import time\ntime.sleep(60)\n")
    outs = sandbox.call_all(path, [("f", ()), ("g", ())], sandbox.Limits(seconds=0.5))
    assert [o.kind for o in outs] == ["timeout", "timeout"] and "importing the module" in outs[0].reason


def test_the_answer_is_read_as_the_service_takes_it():
    sub, problems = course.submission({"dW1": np.array([[1.0, np.inf], [np.nan, 2.0]]), "cost": np.array([[0.5]]),
                                       "db1": np.ones((2, 2, 2)), "dA0": [1, 2]}, ["dW1", "cost", "db1", "dA0", "dZ1"])
    assert np.isnan(sub["dW1"]).sum() == 2 and sub["cost"] == 0.5
    assert set(problems) == {"db1", "dA0"} and "shape (2, 2, 2)" in problems["db1"]
    sub, problems = course.submission(course.KINDS["backward"].answer([1.0, 2.0]), ["dW1", "db1"])
    assert sub == {} and set(problems) == {"dW1", "db1"} and "not a dict of gradients" in problems["dW1"]


def _nobody_can_run(python: str) -> bool:
    user = pwd.getpwnam("nobody")
    try:
        probe = subprocess.run([python, "-I", "-c", "import numpy"], capture_output=True,
                               preexec_fn=lambda: (os.setgroups([]), os.setgid(user.pw_gid), os.setuid(user.pw_uid)))
    except OSError:  # the interpreter itself is out of its reach (a pyenv under /root, say)
        return False
    return probe.returncode == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping to another user needs root")
def test_run_as_drops_to_the_user_who_cannot_read_the_graders_files():
    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user nobody")
    # The student's interpreter: Debian's python3 with python3-numpy (.ci/run installs it), else this one.
    python = next((p for p in ("/usr/bin/python3", sys.executable) if _nobody_can_run(p)), None)
    if python is None:
        pytest.skip("the user nobody can run no interpreter with numpy here (apt-get install python3-numpy)")
    with tempfile.TemporaryDirectory() as where:
        os.chmod(where, 0o755)
        student = Path(where) / "student.py"
        student.write_text(MODULE)
        secret = Path(where) / "config.json"
        secret.write_text("{}")
        os.chmod(secret, 0o600)
        limits = sandbox.Limits(seconds=5, memory_mb=400, python=python, run_as="nobody")
        out = sandbox.call(student, "who", (str(secret),), limits)
        assert out.ok, out.reason
        assert out.value == [float(nobody.pw_uid), 0.0]
        as_root = sandbox.call(student, "who", (str(secret),), sandbox.Limits(seconds=5, python=python))
        assert as_root.value == [0.0, 1.0]

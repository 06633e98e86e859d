"""The Gradescope kit end to end (examples/autograders/gradescope): make_zip.sh builds the autograder, which is
unpacked into a directory laid out like Gradescope's (/autograder/source, submission, results); run_autograder
grades three fake submissions (correct; a planted 1/m mistake; one that hangs, raises and runs out of memory)
through a live gunicorn and in process, and results.json is checked: tests per key, partial credit, the
diagnosis as feedback, hidden tests honoured."""

from __future__ import annotations

import json
import subprocess
import time
import zipfile

import pytest

from tests.kits import KITS, NAMES, TIME_LIMIT, kit_env, put_submission, run, short_config
from tests.live_server import live_url  # noqa: F401  (fixture)

KIT = KITS / "gradescope"
CONFIG = json.loads((KIT / "config.json").read_text())
MAX = sum(sum(t["points"].values()) if "points" in t else 9 for t in CONFIG["tests"])  # 9: a 3-layer backward
HIDDEN = "L_model_backward, a deeper network"


def _autograder(tmp_path, *zip_args: str):
    """An /autograder directory with the zip unpacked in source/ (config with the tests' time limit)."""
    root = tmp_path / "autograder"
    (root / "source").mkdir(parents=True)
    archive = tmp_path / "autograder.zip"
    subprocess.run(["bash", str(KIT / "make_zip.sh"), *zip_args, "-o", str(archive)], check=True,
                   capture_output=True)
    with zipfile.ZipFile(archive) as z:
        z.extractall(root / "source")
        names = set(z.namelist())
    assert {"setup.sh", "run_autograder", "config.json", "vendor/gradient-service-client/pyproject.toml"} <= names
    short_config(root / "source" / "config.json", root / "source" / "config.json")
    return root, names


def _grade(root, name: str) -> tuple[dict, float]:
    put_submission(name, root / "submission")
    started = time.monotonic()
    run(["bash", str(root / "source" / "run_autograder")], kit_env(AUTOGRADER_ROOT=str(root)))
    return json.loads((root / "results" / "results.json").read_text()), time.monotonic() - started


@pytest.fixture(scope="module")
def live_results(live_url, tmp_path_factory):
    root, names = _autograder(tmp_path_factory.mktemp("live"), "--url", live_url)
    assert "service.env" in names and not any(n.startswith("vendor/gradient-service/") for n in names)
    return {name: _grade(root, name) for name in NAMES}


def _tests(doc: dict) -> dict[str, dict]:
    return {t["name"]: t for t in doc["tests"]}


def _valid(doc: dict) -> None:
    assert {"score", "output", "tests"} <= set(doc)
    for t in doc["tests"]:
        assert {"name", "score", "max_score", "status", "output", "visibility"} <= set(t)
        assert 0 <= t["score"] <= t["max_score"] and t["status"] in ("passed", "failed")
        assert "the reference is" not in t["output"]  # reveal is false: no reference value in any feedback
    assert doc["score"] == pytest.approx(sum(t["score"] for t in doc["tests"]))
    assert sum(t["max_score"] for t in doc["tests"]) == MAX


def test_the_correct_submission_gets_full_marks(live_results):
    doc, _ = live_results["correct"]
    _valid(doc)
    assert doc["score"] == MAX == 19 and {t["status"] for t in doc["tests"]} == {"passed"}
    tests = _tests(doc)
    assert tests["L_model_forward: AL"]["max_score"] == 2 and tests["compute_cost: cost"]["score"] == 1
    assert {n.split(": ")[1] for n in tests if n.startswith("L_model_backward: ")} == \
        {"dW1", "dW2", "dW3", "db1", "db2", "db3", "dA0", "dA1", "dA2"}
    assert doc["stdout_visibility"] == "hidden"


def test_a_planted_1_over_m_costs_the_dW_keys_only_with_the_diagnosis(live_results):
    doc, _ = live_results["missing_1_over_m"]
    _valid(doc)
    failed = {n for n, t in _tests(doc).items() if t["status"] == "failed"}
    assert failed == {f"L_model_backward: dW{l}" for l in (1, 2, 3)} | {f"{HIDDEN}: dW{l}" for l in (1, 2, 3, 4)}
    assert doc["score"] == MAX - 7 == 12
    for name in failed:
        output = _tests(doc)[name]["output"]
        assert "Likely mistake: " in output and "1/m factor is missing" in output
    # the summary tells the visible mistake; the hidden test stays out of it
    assert "L_model_backward: 6 / 9" in doc["output"] and "1/m factor is missing" in doc["output"]
    assert HIDDEN not in doc["output"]
    assert {t["visibility"] for n, t in _tests(doc).items() if n.startswith(HIDDEN)} == {"after_due_date"}


def test_a_hanging_raising_memory_hungry_submission_fails_each_test_with_its_reason(live_results):
    doc, seconds = live_results["broken"]
    _valid(doc)
    assert doc["score"] == 0 and {t["status"] for t in doc["tests"]} == {"failed"}
    tests = _tests(doc)
    assert f"did not finish within the time limit of {TIME_LIMIT} s" in tests["L_model_forward: AL"]["output"]
    assert "NameError: name 'undefined_name' is not defined" in tests["compute_cost: cost"]["output"]
    assert "importing the broken submission" in tests["compute_cost: cost"]["output"]  # the student's own output
    assert "ran out of memory (the limit is 512 MB)" in tests["L_model_backward: dW1"]["output"]
    assert seconds < TIME_LIMIT + 20  # one hang, bounded by the limit


def test_in_process_grading_writes_the_same_results(live_results, tmp_path):
    root, names = _autograder(tmp_path, "--local")
    assert "vendor/gradient-service/pyproject.toml" in names and "service.env" not in names
    for name in ("correct", "missing_1_over_m"):
        doc, _ = _grade(root, name)
        assert doc == live_results[name][0], name

"""The PrairieLearn kit end to end (examples/autograders/prairielearn): the question's tests/run.sh, the external
grader's entrypoint, grades three fake submissions in a directory laid out like PrairieLearn's (/grade/tests,
/grade/student, /grade/results) with the service in process and, where the test may make one, in a network
namespace with no network at all, as PrairieLearn runs graders by default."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.kits import KITS, NAMES, TIME_LIMIT, kit_env, put_submission, run, short_config, without_network

QUESTION = KITS / "prairielearn" / "questions" / "dnnStepByStep"
MAX = 2 + 1 + 9


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    grade = tmp_path_factory.mktemp("grade")
    shutil.copytree(QUESTION / "tests", grade / "tests")
    short_config(grade / "tests" / "config.json", grade / "tests" / "config.json")
    out = {}
    for name in NAMES:
        put_submission(name, grade / "student")
        shutil.rmtree(grade / "results", ignore_errors=True)
        run([*without_network(), "bash", str(grade / "tests" / "run.sh")], kit_env(PL_GRADE_ROOT=str(grade)))
        out[name] = json.loads((grade / "results" / "results.json").read_text())
    return out


def _valid(doc: dict) -> None:
    assert doc["gradable"] is True and 0.0 <= doc["score"] <= 1.0 and isinstance(doc["message"], str)
    for t in doc["tests"]:
        assert {"name", "points", "max_points", "message", "output"} <= set(t)
        assert 0 <= t["points"] <= t["max_points"]
    assert sum(t["max_points"] for t in doc["tests"]) == MAX
    assert doc["score"] == pytest.approx(sum(t["points"] for t in doc["tests"]) / MAX)


def test_the_question_runs_its_grader_without_network():
    info = json.loads((QUESTION / "info.json").read_text())
    options = info["externalGradingOptions"]
    assert info["gradingMethod"] == "External" and options["enabled"] is True
    assert options["entrypoint"] == "/grade/tests/run.sh" and options["enableNetworking"] is False
    assert options["timeout"] <= 30


def test_correct_scores_one(results):
    doc = results["correct"]
    _valid(doc)
    assert doc["score"] == 1.0 and all(t["points"] == t["max_points"] for t in doc["tests"])
    assert "L_model_backward: 9 / 9" in doc["message"]


def test_the_1_over_m_mistake_is_partial_credit_with_the_diagnosis(results):
    doc = results["missing_1_over_m"]
    _valid(doc)
    assert doc["score"] == pytest.approx((MAX - 3) / MAX)
    failed = {t["name"]: t for t in doc["tests"] if t["points"] < t["max_points"]}
    assert set(failed) == {"L_model_backward: dW1", "L_model_backward: dW2", "L_model_backward: dW3"}
    assert all("1/m factor is missing" in t["message"] for t in failed.values())
    assert "1/m factor is missing" in doc["message"]


def test_a_broken_submission_scores_zero_with_the_reasons(results):
    doc = results["broken"]
    _valid(doc)
    assert doc["score"] == 0.0
    tests = {t["name"]: t for t in doc["tests"]}
    assert tests["L_model_forward: AL"]["message"].startswith(f"your function did not finish within the time limit "
                                                               f"of {TIME_LIMIT} s")
    assert "NameError" in tests["compute_cost: cost"]["message"]
    assert "ran out of memory" in tests["L_model_backward: dW1"]["message"]

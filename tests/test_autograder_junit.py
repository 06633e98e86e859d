"""The JUnit kit end to end (examples/autograders/junit/grade.sh, for CI-based graders such as CodeGrade): three
fake submissions graded through a live gunicorn, the XML written where CodeGrade's $CG_JUNIT_XML_LOCATION says."""

from __future__ import annotations

from xml.etree import ElementTree as ET

import pytest

from tests.kits import KITS, NAMES, kit_env, put_submission, run, short_config
from tests.live_server import live_url  # noqa: F401  (fixture)

KIT = KITS / "junit"


@pytest.fixture(scope="module")
def suites(live_url, tmp_path_factory):
    work = tmp_path_factory.mktemp("junit")
    kit = work / "kit"
    kit.mkdir()
    (kit / "grade.sh").write_bytes((KIT / "grade.sh").read_bytes())
    short_config(KIT / "config.json", kit / "config.json")
    out = {}
    for name in NAMES:
        put_submission(name, work / "submission")
        xml = work / f"{name}.xml"
        run(["bash", str(kit / "grade.sh"), str(work / "submission")],
            kit_env(GRADIENT_SERVICE_URL=live_url, CG_JUNIT_XML_LOCATION=str(xml)))
        root = ET.parse(xml).getroot()
        assert root.tag == "testsuites"
        for field in ("tests", "failures", "errors"):
            assert int(root.get(field)) == sum(int(s.get(field)) for s in root.findall("testsuite")), field
        out[name] = {s.get("name"): s for s in root.findall("testsuite")}
    return out


def _cases(suite: ET.Element) -> dict[str, ET.Element]:
    return {c.get("name"): c for c in suite.findall("testcase")}


def test_a_suite_per_test_and_a_case_per_key(suites):
    correct = suites["correct"]
    assert list(correct) == ["L_model_forward", "compute_cost", "L_model_backward"]
    assert set(_cases(correct["L_model_backward"])) == {"dW1", "dW2", "dW3", "db1", "db2", "db3", "dA0", "dA1", "dA2"}
    for suite in correct.values():
        assert suite.get("failures") == "0" and suite.get("errors") == "0"
        assert all(c.get("classname") == suite.get("name") for c in suite.findall("testcase"))


def test_the_diagnosis_is_the_failure_message(suites):
    backward = suites["missing_1_over_m"]["L_model_backward"]
    failures = {name: c.find("failure") for name, c in _cases(backward).items() if c.find("failure") is not None}
    assert set(failures) == {"dW1", "dW2", "dW3"}
    for f in failures.values():
        assert f.get("type") == "incorrect" and "1/m factor is missing" in f.get("message")
    assert suites["missing_1_over_m"]["L_model_forward"].get("failures") == "0"


def test_code_that_hangs_raises_or_runs_out_of_memory_is_an_error_per_key(suites):
    broken = suites["broken"]
    kinds = {name: {c.find("error").get("type") for c in s.findall("testcase")} for name, s in broken.items()}
    assert kinds == {"L_model_forward": {"timeout"}, "compute_cost": {"exception"}, "L_model_backward": {"memory"}}
    assert broken["L_model_backward"].get("errors") == "9"
    assert "NameError" in _cases(broken["compute_cost"])["cost"].find("error").get("message")

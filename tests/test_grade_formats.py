"""POST /v1/grade with ``format: prairielearn`` (schemas/prairielearn.py) and ``format: junit`` (schemas/junit.py):
the documents their platforms read, the same grades as the native result, and no number from the reference."""

from __future__ import annotations

from xml.etree import ElementTree as ET

import orjson
import pytest

from tests.test_grade import (REVEAL_BODIES, _four_submissions, _probe_bodies, _wire, foreign_numbers, network,
                              student)

RAGGED = {"dW1": [[0.1, 0.2], [0.3]]}
POINTS = {"dW1": 2, "dW2": 2, "db1": 1, "db2": 1, "cost": 1}
PL_TOP = {"gradable", "score", "message", "output", "images", "tests", "format_errors"}
PL_TEST = {"name", "description", "points", "max_points", "message", "output", "images"}


def _bodies():
    body = network(32, "categorical_cross_entropy", "softmax", ["relu"], m=4)
    return body, _wire(student(body)), _wire(student(body, "missing_1_over_m", 2))


def _grade(client, body: dict):
    r = client.post("/v1/grade", data=orjson.dumps(body), content_type="application/json")
    return r.status_code, r.headers["Content-Type"], r.data


def _native(client, body: dict) -> dict:
    status, _, data = _grade(client, {**body, "format": "native"})
    assert status == 200, data
    return orjson.loads(data)


def _valid_prairielearn(doc: dict) -> None:
    assert set(doc) <= PL_TOP and {"gradable", "score", "tests", "message"} <= set(doc)
    assert 0.0 <= doc["score"] <= 1.0
    for t in doc["tests"]:
        assert set(t) <= PL_TEST and {"name", "points", "max_points", "message", "output"} <= set(t)
        assert 0 <= t["points"] <= t["max_points"]
        assert all(isinstance(t[f], str) for f in ("name", "description", "message", "output"))


def test_prairielearn_document_has_the_native_grades(client):
    body, _, wrong = _bodies()
    request = {**body, "submission": wrong, "points": POINTS}
    status, media, data = _grade(client, {**request, "format": "prairielearn"})
    assert status == 200 and media == "application/json"
    doc = orjson.loads(data)
    _valid_prairielearn(doc)
    native = _native(client, request)["result"]
    assert doc["gradable"] is True
    assert doc["score"] == pytest.approx(native["score"] / native["max_score"]) and 0 < doc["score"] < 1
    tests = {t["name"]: t for t in doc["tests"]}
    assert set(tests) == {k["key"] for k in native["keys"]}
    for k in native["keys"]:
        assert (tests[k["key"]]["points"], tests[k["key"]]["max_points"]) == (k["earned"], k["points"])
    # the wrong key names its mistake in the message PrairieLearn shows
    mistake = next(k["diagnosis"] for k in native["keys"] if k["key"] == "dW2")
    assert mistake["code"] == "missing_1_over_m"
    assert tests["dW2"]["points"] == 0 and mistake["message"] in tests["dW2"]["message"]
    assert tests["cost"]["message"] == "cost: correct" and tests["cost"]["points"] == 1
    assert f"Score: {native['score']:g} / 7" in doc["message"]
    assert all(d["message"] in doc["message"] for d in native["diagnoses"])


def test_prairielearn_batch_marks_a_malformed_submission_not_gradable(client):
    body, good, wrong = _bodies()
    status, _, data = _grade(client, {**body, "submissions": [good, wrong, RAGGED], "points": POINTS,
                                      "format": "prairielearn"})
    assert status == 200
    docs = orjson.loads(data)["results"]
    for doc in docs:
        _valid_prairielearn(doc)
    assert [d["gradable"] for d in docs] == [True, True, False]
    assert docs[0]["score"] == 1.0 and docs[1]["score"] < 1.0
    assert docs[2]["format_errors"] == ["submissions[2].dW1[1]: ragged matrix: row 1 has 1 entries but row 0 has 2"]
    assert docs[2]["tests"] == []


def test_prairielearn_score_is_zero_when_nothing_is_worth_points(client):
    body, good, _ = _bodies()
    status, _, data = _grade(client, {**body, "submission": good, "points": {"dW1": 0}, "format": "prairielearn"})
    doc = orjson.loads(data)
    assert status == 200 and doc["score"] == 0.0 and doc["tests"][0]["max_points"] == 0


def _suites(data: bytes) -> list[ET.Element]:
    root = ET.fromstring(data)
    assert root.tag == "testsuites"
    suites = root.findall("testsuite")
    for field in ("tests", "failures", "errors"):
        assert int(root.get(field)) == sum(int(s.get(field)) for s in suites), field
    for s in suites:
        cases = s.findall("testcase")
        assert int(s.get("tests")) == len(cases)
        assert int(s.get("failures")) == sum(c.find("failure") is not None for c in cases)
        assert int(s.get("errors")) == sum(c.find("error") is not None for c in cases)
    return suites


def _properties(suite: ET.Element) -> dict[str, str]:
    return {p.get("name"): p.get("value") for p in suite.find("properties")}


def test_junit_is_xml_with_a_testcase_per_key_and_the_diagnosis_in_the_failure(client):
    body, _, wrong = _bodies()
    request = {**body, "submission": wrong, "points": POINTS}
    status, media, data = _grade(client, {**request, "format": "junit"})
    assert status == 200 and media.startswith("application/xml")
    (suite,) = _suites(data)
    native = _native(client, request)["result"]
    assert suite.get("name") == "submission"
    assert _properties(suite) == {"score": f"{native['score']:g}", "max_score": "7"}
    cases = {c.get("name"): c for c in suite.findall("testcase")}
    assert set(cases) == {k["key"] for k in native["keys"]}
    for k in native["keys"]:
        failure = cases[k["key"]].find("failure")
        assert (failure is None) == (k["status"] == "correct"), k["key"]
        assert cases[k["key"]].find("system-out").text == f"points: {k['earned']:g} / {k['points']:g}"
    failure = cases["dW2"].find("failure")
    assert failure.get("type") == "incorrect"
    mistake = next(k["diagnosis"] for k in native["keys"] if k["key"] == "dW2")
    assert mistake["code"] == "missing_1_over_m" and mistake["message"] in failure.get("message")
    assert failure.text.startswith("dW2: incorrect:")


def test_junit_batch_has_a_suite_per_submission_and_an_error_for_a_malformed_one(client):
    body, good, wrong = _bodies()
    status, _, data = _grade(client, {**body, "submissions": [good, wrong, RAGGED], "format": "junit"})
    assert status == 200
    suites = _suites(data)
    assert [s.get("name") for s in suites] == ["submissions[0]", "submissions[1]", "submissions[2]"]
    assert suites[0].get("failures") == "0" and int(suites[1].get("failures")) > 0
    (case,) = suites[2].findall("testcase")
    error = case.find("error")
    assert case.get("name") == "submission" and error.get("type") == "invalid"
    assert "submissions[2].dW1[1]: ragged matrix" in error.text


def test_errors_stay_problem_json_in_the_junit_format(client):
    body, _, _ = _bodies()
    r = client.post("/v1/grade", data=orjson.dumps({**body, "submission": {"dW9": [[1.0]]}, "format": "junit"}),
                    content_type="application/json")
    assert r.status_code == 422 and r.headers["Content-Type"] == "application/problem+json"
    assert orjson.loads(r.data)["errors"][0]["location"] == "submission.dW9"


def _plain(doc, fmt: str):
    """The document with PrairieLearn's score fraction left out (checked on its own: points over max points)."""
    if fmt != "prairielearn":
        return doc
    docs = doc["results"] if "results" in doc else [doc]
    for d in docs:
        earned, worth = sum(t["points"] for t in d["tests"]), sum(t["max_points"] for t in d["tests"])
        assert d["score"] == pytest.approx(earned / worth if worth else 0.0)
    return [{k: v for k, v in d.items() if k != "score"} for d in docs]


@pytest.mark.parametrize("fmt", ["prairielearn", "junit"])
def test_reveal_false_holds_no_number_computed_from_the_reference(client, post, fmt):
    """As tests/test_grade.py checks the native and Gradescope formats: every number of an unrevealed document is
    one the request holds, a count or index, or a power-of-ten error bucket; with reveal the check finds others."""
    bodies = _probe_bodies() + [{**b, "submissions": list(_four_submissions(post, b).values())}
                                for b in REVEAL_BODIES.values()]
    for body in bodies:
        for reveal in (False, True):
            status, _, data = _grade(client, {**body, "format": fmt, "reveal": reveal})
            assert status == 200, data
            doc = _plain(orjson.loads(data), fmt) if fmt == "prairielearn" else data.decode()
            found = foreign_numbers(doc, body)
            assert (found == []) if not reveal else found, (fmt, reveal, found[:5])


def test_openapi_documents_both_formats(client):
    spec = orjson.loads(client.get("/openapi.json").data)
    ok = spec["paths"]["/v1/grade"]["post"]["responses"]["200"]["content"]
    assert set(ok) == {"application/json", "application/xml"}
    fmt = spec["components"]["schemas"]["GradeRequest"]["properties"]["format"]
    assert set(fmt["enum"]) == {"native", "gradescope", "prairielearn", "junit"}
    assert "PrairieLearnResults" in spec["components"]["schemas"]

"""Grading policies per API key (schemas.policy, GRADIENT_POLICIES / GRADIENT_DEFAULT_POLICY): what a key may ask
of POST /v1/grade, refused with a 403 that names the field and the policy."""

from __future__ import annotations

import orjson
import pytest

from service import create_app
from service.config import ConfigError
from tests.test_grade import (REVEAL_BODIES, _four_submissions, _gradients, _probe_bodies, foreign_numbers, network,
                              student, _wire)

OPEN_KEY = "open-key-0123456789"
STRICT_KEY = "strict-key-0123456789"
GRADER_KEY = "grader-key-0123456789"
STRICT = {"keys": [STRICT_KEY], "reveal": False, "feedback": "status", "max_submissions": 1,
          "min_rtol": 1e-5, "max_rtol": 1e-5, "min_atol": 1e-8, "max_atol": 1e-8}
GRADER = {"keys": [GRADER_KEY], "reveal": False, "max_submissions": 50, "min_rtol": 1e-6, "max_rtol": 1e-3,
          "routes": ["/v1/grade"]}


@pytest.fixture
def keyed():
    app = create_app({"api_keys": [OPEN_KEY], "policies": {"strict": STRICT, "grader": GRADER}})
    client = app.test_client()

    def post(body, key, path="/v1/grade"):
        r = client.post(path, data=orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY),
                        content_type="application/json", headers={"Authorization": f"Bearer {key}"})
        return r.status_code, orjson.loads(r.data), r

    return post


def _refusal(status, problem, location, policy):
    assert status == 403, problem
    assert problem["type"].endswith(":policy-forbidden") and problem["status"] == 403
    item = problem["errors"][0]
    assert item["location"] == location and item["type"] == "policy_forbidden"
    assert f"policy {policy!r}" in item["message"], item["message"]


BODY = network(51, "binary_cross_entropy", "sigmoid", ["tanh"], m=4)


def test_reveal_is_refused_where_the_policy_forbids_it(keyed):
    sub = {"cost": 0.5}
    status, problem, _ = keyed({**BODY, "submission": sub, "reveal": True}, STRICT_KEY)
    _refusal(status, problem, "reveal", "strict")
    status, problem, _ = keyed({**BODY, "submission": sub, "reveal": True}, GRADER_KEY)
    _refusal(status, problem, "reveal", "grader")
    status, out, _ = keyed({**BODY, "submission": sub, "reveal": True}, OPEN_KEY)  # the default policy allows it
    assert status == 200 and out["reveal"] is True and "reference" in out


def test_batch_size_is_bounded_by_the_policy(keyed):
    status, problem, _ = keyed({**BODY, "submissions": [{"cost": 0.5}] * 2}, STRICT_KEY)
    _refusal(status, problem, "submissions", "strict")
    assert "2 submissions in one request, over the 1 allowed" in problem["errors"][0]["message"]
    assert keyed({**BODY, "submissions": [{"cost": 0.5}]}, STRICT_KEY)[0] == 200
    assert keyed({**BODY, "submissions": [{"cost": 0.5}] * 50}, GRADER_KEY)[0] == 200
    _refusal(*keyed({**BODY, "submissions": [{"cost": 0.5}] * 51}, GRADER_KEY)[:2], "submissions", "grader")
    # over the service's own ceiling it stays the service's 422, whatever the policy
    status, problem, _ = keyed({**BODY, "submissions": [{"cost": 0.5}] * 501}, OPEN_KEY)
    assert status == 422 and problem["errors"][0]["type"] == "limit_exceeded"


@pytest.mark.parametrize("field,value,key,policy", [
    ("rtol", 1e-4, STRICT_KEY, "strict"), ("rtol", 1e-6, STRICT_KEY, "strict"), ("atol", 1.0, STRICT_KEY, "strict"),
    ("atol", 0.0, STRICT_KEY, "strict"), ("rtol", 1e4, GRADER_KEY, "grader"), ("rtol", 1e-7, GRADER_KEY, "grader"),
])
def test_a_tolerance_outside_the_policy_is_refused(keyed, field, value, key, policy):
    status, problem, _ = keyed({**BODY, "submission": {"cost": 0.5}, field: value}, key)
    _refusal(status, problem, field, policy)
    assert f"{field} = {value:g} is outside" in problem["errors"][0]["message"]


def test_a_tolerance_not_sent_is_moved_into_the_bounds(keyed):
    status, out, _ = keyed({**BODY, "submission": {"cost": 0.5}}, GRADER_KEY)
    assert status == 200 and out["tolerance"] == {"rtol": 1e-5, "atol": 1e-8}  # the defaults are inside
    app = create_app({"policies": {"loose": {"keys": [GRADER_KEY], "min_rtol": 1e-3, "max_atol": 1e-10}}})
    client = app.test_client()

    def post(body, path="/v1/gradients"):
        r = client.post(path, data=orjson.dumps(body), content_type="application/json",
                        headers={"Authorization": f"Bearer {GRADER_KEY}"})
        return r.status_code, orjson.loads(r.data)

    J = _gradients(post, BODY)["cost"]
    status, out = post({**BODY, "submission": {"cost": J * (1 + 5e-4)}}, path="/v1/grade")
    assert status == 200 and out["tolerance"] == {"rtol": 1e-3, "atol": 1e-10}
    assert out["result"]["keys"][0]["status"] == "correct"  # graded with the moved rtol, not the default 1e-5


def test_status_feedback_reports_no_error_at_all(keyed):
    body = REVEAL_BODIES["bce_l2"]
    subs = _four_submissions(lambda b, path="/v1/gradients": keyed(b, OPEN_KEY, path)[:2], body)
    for name, sub in subs.items():
        for fmt in ("native", "gradescope"):
            status, out, _ = keyed({**body, "submission": sub, "format": fmt}, STRICT_KEY)
            assert status == 200, out
            assert foreign_numbers(out, {**body, "submission": sub}) == []
            if fmt == "native":
                assert out["error_precision"] == "none"
                for k in out["result"]["keys"]:
                    assert k["max_abs_error"] is k["max_rel_error"] is k["difference"] is None, k
                    assert k["wrong_entries"] is None and k["worst"] is None
            else:
                for t in out["tests"]:
                    assert "max abs error" not in t["output"] and "worst entry" not in t["output"]
    # the statuses and diagnoses are the same as under the default policy
    wrong = _wire(student(body, "missing_1_over_m"))
    strict = keyed({**body, "submission": wrong}, STRICT_KEY)[1]["result"]
    default = keyed({**body, "submission": wrong}, OPEN_KEY)[1]["result"]
    assert [(k["key"], k["status"], (k["diagnosis"] or {}).get("code")) for k in strict["keys"]] == \
           [(k["key"], k["status"], (k["diagnosis"] or {}).get("code")) for k in default["keys"]]
    assert any(k["diagnosis"] for k in strict["keys"])


def test_the_issue_attack_is_refused_or_answered_without_numbers_under_a_strict_policy(keyed):
    attack = _probe_bodies()[-1]  # 1e12 at one entry, rtol = 1e4, a batch
    status, problem, _ = keyed(attack, STRICT_KEY)
    assert status == 403  # rtol outside, and the batch too large
    status, problem, _ = keyed({**attack, "rtol": 1e-5, "submissions": attack["submissions"][:1]}, STRICT_KEY)
    assert status == 200 and foreign_numbers(problem, attack) == []


def test_routes_outside_the_policy_are_refused(keyed):
    status, problem, _ = keyed(BODY, GRADER_KEY, path="/v1/gradients")
    assert status == 403 and problem["errors"][0]["location"] == "path"
    assert "'grader' allows only /v1/grade" in problem["errors"][0]["message"]
    assert keyed(BODY, OPEN_KEY, path="/v1/gradients")[0] == 200
    assert keyed(BODY, STRICT_KEY, path="/v1/gradients")[0] == 200  # strict lists no routes: every one


def test_keys_are_still_checked(keyed):
    status, problem, r = keyed({**BODY, "submission": {"cost": 0.5}}, "not-a-key-0123456789")
    assert status == 401 and "WWW-Authenticate" in r.headers


def test_the_default_policy_applies_to_anonymous_use():
    app = create_app({"default_policy": {"reveal": False, "max_submissions": 2}})
    client = app.test_client()

    def post(body):
        r = client.post("/v1/grade", data=orjson.dumps(body), content_type="application/json")
        return r.status_code, orjson.loads(r.data)

    _refusal(*post({**BODY, "submission": {"cost": 0.5}, "reveal": True}), "reveal", "default")
    _refusal(*post({**BODY, "submissions": [{"cost": 0.5}] * 3}), "submissions", "default")
    assert post({**BODY, "submissions": [{"cost": 0.5}] * 2})[0] == 200


def test_nothing_configured_keeps_the_open_behaviour(post):
    status, out = post({**BODY, "submissions": [{"cost": 0.5}] * 500, "reveal": True, "rtol": 1e4, "atol": 3.0},
                       path="/v1/grade")
    assert status == 200 and out["tolerance"] == {"rtol": 1e4, "atol": 3.0} and out["error_precision"] == "exact"


@pytest.mark.parametrize("config,message", [
    ({"policies": {"a": {"keys": ["short"]}}}, "GRADIENT_POLICIES (a.keys): Value error, key #1 is shorter"),
    ({"policies": {"a": {"rate_limit": "often"}}}, "GRADIENT_POLICIES (a.rate_limit)"),
    ({"policies": {"a": {"max_submissions": 0}}}, "GRADIENT_POLICIES (a.max_submissions)"),
    ({"policies": {"a": {"min_atol": 1.0, "max_atol": 0.1}}}, "min_atol (1) is above max_atol (0.1)"),
    ({"policies": {"a": {"reveal": "sometimes"}}}, "GRADIENT_POLICIES (a.reveal)"),
    ({"policies": {"a": {"limit": 3}}}, "GRADIENT_POLICIES (a.limit): Extra inputs are not permitted"),
    ({"policies": {"a": {"keys": [GRADER_KEY]}, "b": {"keys": [GRADER_KEY]}}}, "also listed in policy 'a'"),
    ({"api_keys": [GRADER_KEY], "policies": {"a": {"keys": [GRADER_KEY]}}}, "also listed in GRADIENT_API_KEYS"),
    ({"default_policy": {"keys": [GRADER_KEY]}}, "GRADIENT_DEFAULT_POLICY: Value error, the default policy has no keys"),
])
def test_bad_policies_stop_the_start_naming_the_setting(config, message):
    with pytest.raises(ConfigError) as err:
        create_app(config)
    assert message in str(err.value), str(err.value)


def test_policies_are_read_from_the_environment(monkeypatch):
    monkeypatch.setenv("GRADIENT_POLICIES", orjson.dumps({"strict": STRICT}).decode())
    monkeypatch.setenv("GRADIENT_DEFAULT_POLICY", '{"reveal": false}')
    app = create_app()
    settings = app.config["SETTINGS"]
    assert settings.policies["strict"].max_submissions == 1 and settings.default_policy.reveal is False
    r = app.test_client().post("/v1/grade", data=orjson.dumps({**BODY, "submission": {"cost": 0.5}}),
                               content_type="application/json")
    assert r.status_code == 401  # a policy's keys are API keys: the service is no longer open
    r = app.test_client().post("/v1/grade", data=orjson.dumps({**BODY, "submission": {"cost": 0.5}}),
                               content_type="application/json", headers={"Authorization": f"Bearer {STRICT_KEY}"})
    assert r.status_code == 200 and orjson.loads(r.data)["error_precision"] == "none"

"""POST /v1/grade in the batch form: every submission is validated on its own, so one malformed submission does
not fail the others; and ``cost`` sent as a one-element array is graded as the number it holds."""

from __future__ import annotations

import orjson
import pytest

from tests.test_grade import SMALL, _gradients, _valid_gradescope, network, student, _wire

RAGGED = {"dW1": [[0.1, 0.2], [0.3]]}


def _post_raw(client, text: str):
    r = client.post("/v1/grade", data=text, content_type="application/json")
    return r.status_code, orjson.loads(r.data)


def _good_and_bad(post):
    body = network(41, "binary_cross_entropy", "sigmoid", ["tanh"], m=4)
    good = _wire(student(body))
    wrong = _wire(student(body, "sign_flipped"))
    return body, good, wrong


def test_one_ragged_submission_does_not_fail_the_batch(post):
    """The issue's case: [good, good, {"dW1": [[0.1, 0.2], [0.3]]}] was a 422 for everyone."""
    body, good, wrong = _good_and_bad(post)
    status, out = post({**body, "submissions": [good, wrong, RAGGED]}, path="/v1/grade")
    assert status == 200, out
    first, second, bad = out["results"]
    assert first["status"] == "graded" and first["score"] == first["max_score"] > 0 and first["errors"] == []
    assert second["status"] == "graded" and second["score"] < second["max_score"]
    assert {d["code"] for d in second["diagnoses"]} == {"sign_flipped"}
    assert bad["status"] == "invalid" and bad["keys"] == [] and bad["score"] == 0.0
    assert bad["errors"] == [{"location": "submissions[2].dW1[1]", "type": "ragged_matrix",
                              "message": "ragged matrix: row 1 has 1 entries but row 0 has 2"}]
    assert bad["max_score"] == 1.0  # what it would have been worth: one valid key, 1 point


@pytest.mark.parametrize("fragment,location,kind", [
    ('{"dW1": [[0.1, "x"]]}', "submissions[1].dW1[0][1]", "float_type"),
    ('{"dW1": [[0.1, true]]}', "submissions[1].dW1[0][1]", "float_type"),
    ('{"dW1": [[0.1, NaN]]}', "submissions[1].dW1[0][1]", "finite_number"),
    ('{"dW1": [[0.1, 1e400]]}', "submissions[1].dW1[0][1]", "finite_number"),
    ('{"dW1": [[0.1], [0.2, 0.3]]}', "submissions[1].dW1[1]", "ragged_matrix"),
    ('{"dW1": {"a": 1}}', "submissions[1].dW1", "matrix_or_vector_type"),
    ('{"dW1": []}', "submissions[1].dW1", "too_short"),
    ('{"cost": "0.5"}', "submissions[1].cost", "float_type"),
    ('{"cost": [0.5, 0.6]}', "submissions[1].cost", "cost_not_one_number"),
    ('{"dZ0": [[1.0]]}', "submissions[1].dZ0", "unknown_key"),
    ('{}', "submissions[1]", "empty_submission"),
    ('"dW1"', "submissions[1]", "model_type"),
    ('[1, 2]', "submissions[1]", "model_type"),
])
def test_each_malformed_submission_gets_its_own_located_result(client, fragment, location, kind):
    text = orjson.dumps(SMALL).decode()[:-1] + ', "submissions": [{"cost": 1.0}, ' + fragment + ', {"dW1": [[0.1, 0.2]]}]}'
    status, out = _post_raw(client, text)
    assert status == 200, out
    first, bad, last = out["results"]
    assert first["status"] == last["status"] == "graded"
    assert [k["key"] for k in first["keys"]] == ["cost"] and [k["key"] for k in last["keys"]] == ["dW1"]
    assert bad["status"] == "invalid" and bad["keys"] == [] and bad["diagnoses"] == []
    assert bad["errors"][0]["location"] == location and bad["errors"][0]["type"] == kind, bad
    assert bad["errors"][0]["message"]


def test_every_problem_of_a_malformed_submission_is_listed(client):
    text = orjson.dumps(SMALL).decode()[:-1] + ', "submissions": [{"dW1": [[0.1, "x"]], "db1": [[null], [true]], ' \
                                               '"cost": false}]}'
    status, out = _post_raw(client, text)
    assert status == 200
    locations = {e["location"] for e in out["results"][0]["errors"]}
    assert locations == {"submissions[0].dW1[0][1]", "submissions[0].db1[1][0]", "submissions[0].cost"}


def test_a_batch_of_only_malformed_submissions_is_answered_per_submission(post):
    status, out = post({**SMALL, "submissions": [RAGGED, {"dW9": [[1.0]]}], "points": {"dW1": 2, "cost": 1}},
                       path="/v1/grade")
    assert status == 200, out
    assert [r["status"] for r in out["results"]] == ["invalid", "invalid"]
    assert [r["max_score"] for r in out["results"]] == [3.0, 3.0]  # the total of `points`
    assert out["results"][1]["errors"][0]["location"] == "submissions[1].dW9"


def test_request_level_problems_are_still_422s(post):
    # The network, the points and the batch's own limits concern every submission alike.
    status, problem = post({**SMALL, "submissions": [{"cost": 1.0}, RAGGED], "points": {"db9": 1}}, path="/v1/grade")
    assert status == 422 and problem["errors"][0]["location"] == "points.db9"
    bad_net = {**SMALL, "layers": [{"W": [[0.5]], "b": [[0.1]], "activation": "sigmoid"}]}
    status, problem = post({**bad_net, "submissions": [{"cost": 1.0}, RAGGED]}, path="/v1/grade")
    assert status == 422 and problem["errors"][0]["location"] == "layers[0].W"


def test_a_malformed_submission_is_a_failed_gradescope_test(post):
    body, good, _ = _good_and_bad(post)
    points = {"dW1": 2, "db2": 1}
    status, out = post({**body, "submissions": [good, RAGGED], "points": points, "format": "gradescope",
                        "visibility": "hidden"}, path="/v1/grade")
    assert status == 200, out
    ok, bad = out["results"]
    _valid_gradescope(ok)
    _valid_gradescope(bad)
    assert ok["score"] == 3.0
    assert bad["score"] == 0.0 and len(bad["tests"]) == 1
    test = bad["tests"][0]
    assert test["name"] == "submission" and test["status"] == "failed" and test["visibility"] == "hidden"
    assert test["score"] == 0.0 and test["max_score"] == 3.0
    assert "submissions[1].dW1[1]: ragged matrix: row 1 has 1 entries but row 0 has 2" in test["output"]


def test_malformed_submissions_under_examples_first(post):
    body = {**network(42, "mean_squared_error", "linear", ["relu"], m=3)}
    ex_first = {**body, "layout": "examples_first", "X": [list(r) for r in zip(*body["X"])],
                "Y": [list(r) for r in zip(*body["Y"])]}
    out = _gradients(post, ex_first)
    good = {"AL": out["AL"], "dZ1": out["gradients"]["dZ1"]}
    status, graded = post({**ex_first, "submissions": [{"AL": [[0.1], [0.2, 0.3]]}, good]}, path="/v1/grade")
    assert status == 200, graded
    assert graded["results"][0]["errors"][0]["location"] == "submissions[0].AL[1]"
    assert graded["results"][1]["score"] == graded["results"][1]["max_score"] == 2.0


# --- cost as a one-element array ---------------------------------------------------------------------------------

@pytest.mark.parametrize("wrap", [lambda j: [j], lambda j: [[j]], lambda j: [[[j]]]])
def test_cost_as_a_one_element_array_is_graded_as_the_scalar(post, wrap):
    body = network(43, "binary_cross_entropy", "sigmoid", ["tanh"], m=4)
    J = _gradients(post, body)["cost"]
    status, out = post({**body, "submission": {"cost": wrap(J)}}, path="/v1/grade")
    assert status == 200, out
    k = out["result"]["keys"][0]
    assert (k["key"], k["status"], k["earned"], k["shape"], k["expected_shape"]) == ("cost", "correct", 1.0, [], [])
    assert any("cost was sent as an array of shape" in n for n in k["notes"]), k["notes"]
    # and a wrong one is graded as wrong, with the scalar's diagnoses
    status, out = post({**body, "submissions": [{"cost": wrap(-J)}, {"cost": wrap(J)}]}, path="/v1/grade")
    wrong, right = (r["keys"][0] for r in out["results"])
    assert wrong["status"] == "incorrect" and wrong["diagnosis"]["code"] == "sign_flipped"
    assert right["status"] == "correct"


def test_cost_as_a_plain_number_has_no_note(post):
    body = network(43, "binary_cross_entropy", "sigmoid", ["tanh"], m=4)
    J = _gradients(post, body)["cost"]
    status, out = post({**body, "submission": {"cost": J}}, path="/v1/grade")
    assert out["result"]["keys"][0]["notes"] == [] and out["result"]["keys"][0]["status"] == "correct"
    status, out = post({**body, "submission": {"cost": [None]}}, path="/v1/grade")
    assert out["result"]["keys"][0]["status"] == "not_a_number"

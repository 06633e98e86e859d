"""The Python SDK (clients/python, gradient_service_client) against a live gunicorn: every route, numpy in and
out, typed errors with their locations, the async twin."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import numpy as np
import pytest

import gradient_service_client as gsc
from gradient_service_client import AsyncClient, Client
from tests.live_server import live_url  # noqa: F401  (fixture)
from service.app import create_app
from tests.test_grade import network, student

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = json.loads((ROOT / "examples" / "two_layer_sigmoid_bce.json").read_text())
SOFTMAX = json.loads((ROOT / "examples" / "three_layer_softmax_examples_first.json").read_text())


@pytest.fixture(scope="module")
def client(live_url):
    with Client(live_url, timeout=30) as c:
        yield c


def _numpy(body: dict) -> dict:
    """The same body with every array as numpy (b as a column)."""
    layers = [{**layer, "W": np.array(layer["W"]), "b": np.array(layer["b"])} for layer in body["layers"]]
    return {**body, "layers": layers, "X": np.array(body["X"]), "Y": np.array(body["Y"])}


def test_gradients_returns_numpy_arrays_under_the_course_names(client, live_url):
    import httpx

    result = client.gradients(EXAMPLE)
    raw = httpx.post(live_url + "/v1/gradients", json=EXAMPLE).json()
    assert isinstance(result, gsc.GradientsResult) and isinstance(result, dict)
    assert result.cost == raw["cost"] and isinstance(result.cost, float)
    assert set(result.grads) == set(raw["gradients"])
    for key, value in raw["gradients"].items():
        a = result.grads[key]
        assert isinstance(a, np.ndarray) and a.dtype == np.float64
        assert np.array_equal(a, np.array(value)), key  # the same float64 values, read exactly
    assert result.grads.dW1 is result.grads["dW1"] is result.gradients["dW1"]
    assert result.AL.shape == (1, 4) and result.warnings == []
    with pytest.raises(AttributeError, match="no field 'dW9'"):
        result.grads.dW9


def test_numpy_bodies_and_keyword_fields_give_the_same_answer(client):
    plain = client.gradients(SOFTMAX)
    as_numpy = client.gradients(_numpy(SOFTMAX))
    with_fields = client.gradients({k: v for k, v in SOFTMAX.items() if k != "l2"}, l2=SOFTMAX["l2"])
    for other in (as_numpy, with_fields):
        assert other.cost == plain.cost
        for key in plain.grads:
            assert np.array_equal(other.grads[key], plain.grads[key]), key
    cached = client.gradients(SOFTMAX, include_caches=True)
    assert {"Z1", "A3"} <= set(cached.caches) and isinstance(cached.caches.A3, np.ndarray)


def test_integer_lists_stay_lists_and_nulls_become_nan(client):
    # A saturated output: dA1 is not representable where A1 rounds to 0, so it is null there, with a warning.
    body = {"layers": [{"W": [[1000.0]], "b": [[0.0]], "activation": "sigmoid"}], "X": [[1.0, -1.0, 0.5]],
            "Y": [[0, 1, 1]], "cost": "binary_cross_entropy"}
    result = client.gradients(body)
    dA1 = result.grads.dA1
    assert isinstance(dA1, np.ndarray) and np.isnan(dA1).any() and np.isfinite(dA1).any()
    (warning,) = result.warnings
    assert warning.location == "gradients.dA1"
    assert isinstance(warning.entries, list) and all(isinstance(i, int) for e in warning.entries for i in e)


def test_grade_every_format_and_the_response_fed_back_scores_full_marks(client):
    body = network(61, "binary_cross_entropy", "sigmoid", ["relu"], m=5)
    reference = client.gradients(body)
    native = client.grade(body, submission=reference.grads, points={"dW1": 2, "db2": 1})
    assert native.result.score == native.result.max_score == 3.0
    keys = native.result["keys"]  # a field named like a dict method wins as an attribute, too
    assert native.result.keys is keys and {k.status for k in keys} == {"correct"}
    assert {k.key for k in keys} == set(reference.grads)  # every submitted key graded, the unlisted ones for 0
    wrong = {k: np.asarray(v) for k, v in student(body, "missing_1_over_m", 1).items() if k.startswith("dW")}
    graded = client.grade(body, submission=wrong)
    assert {d.code for d in graded.result.diagnoses} == {"missing_1_over_m"}
    gradescope = client.grade(body, submission=wrong, format="gradescope", visibility="hidden")
    assert gradescope.score == 0 and {t.visibility for t in gradescope.tests} == {"hidden"}
    pl = client.grade(body, submission=wrong, format="prairielearn")
    assert pl.gradable is True and pl.score == 0.0 and "1/m" in pl.tests[0].message
    xml = client.grade(body, submission=wrong, format="junit")
    assert isinstance(xml, str) and xml.startswith("<?xml") and "<testsuites" in xml
    # a NaN entry is sent as null and graded not_a_number
    nan = {"dW1": np.where(np.eye(*reference.grads.dW1.shape) > 0, np.nan, reference.grads.dW1)}
    assert client.grade(body, submission=nan).result["keys"][0].status == "not_a_number"


def test_gradient_check_explain_info_and_the_generic_post(client):
    check = client.gradient_check(EXAMPLE)
    assert check.passed is True and check.difference < 1e-7 and check.checked == "service"
    story = client.explain(EXAMPLE)
    assert story.canonical is True and [s.id for s in story.steps][0] == "cost"
    assert isinstance(story.steps[1]["values"]["dA2"], np.ndarray)
    info = client.info()
    assert {"sigmoid", "relu"} <= {a.name for a in info.activations} and info.version
    direct = client.post("/v1/gradients", EXAMPLE)
    assert direct.cost == client.gradients(EXAMPLE).cost


def test_errors_are_typed_and_carry_every_located_problem(client):
    bad = {**EXAMPLE, "layers": [EXAMPLE["layers"][0], {**EXAMPLE["layers"][1], "activation": "sigmod"}], "l2": -1}
    with pytest.raises(gsc.ValidationError) as caught:
        client.gradients(bad)
    err = caught.value
    assert err.status == 422 and err.type.endswith(":validation-error")
    locations = {e.location for e in err.errors}
    assert locations == {"l2", "layers[1].activation"}, err.errors
    assert all(isinstance(e, gsc.ErrorItem) and e.message and e.type for e in err.errors)
    assert err.request_id and "layers[1].activation" in str(err) and "2 problems" in str(err)
    shapes = {**EXAMPLE, "layers": [EXAMPLE["layers"][0], {**EXAMPLE["layers"][1], "W": [[1.0, 2.0]]}]}
    with pytest.raises(gsc.ValidationError) as chain:
        client.gradients(shapes)
    assert [(e.location, e.type) for e in chain.value.errors] == [("layers[1].W", "shape_mismatch")]
    with pytest.raises(gsc.NotFound):  # a route of a later service
        client.post("/v1/no-such-route", {"A_prev": np.ones((2, 2))})
    with pytest.raises(gsc.ValidationError) as step:  # a generic post reaches the step routes with numpy arrays
        client.post("/v1/layer/forward", {"A_prev": np.ones((2, 2))})
    assert [(e.location, e.type) for e in step.value.errors] == [("layer", "missing")]
    with pytest.raises(gsc.UnsupportedMediaType) as media:
        client.send("POST", "/v1/gradients", EXAMPLE, headers={"Content-Type": "text/plain"})
    assert media.value.errors[0].location == "header.Content-Type"
    with pytest.raises(ValueError, match="infinity"):
        client.gradients({**EXAMPLE, "X": np.full((2, 4), np.inf)})


def test_keys_policies_limits_and_rate_limits_raise_their_errors():
    key = "sdk-test-key-0123456789"
    settings = {"api_keys": [key], "max_body_bytes": 20_000,
                "policies": {"course": {"keys": ["course-key-0123456789"], "reveal": False, "routes": ["/v1/grade"]},
                             "limited": {"keys": ["limited-key-0123456789"], "rate_limit": "1/minute"}}}
    with Client(local=True, settings=settings) as anonymous:
        with pytest.raises(gsc.Unauthorized):
            anonymous.gradients(EXAMPLE)
    with Client(local=True, settings=settings, api_key=key) as keyed:
        assert keyed.gradients(EXAMPLE).cost > 0
        with pytest.raises(gsc.PayloadTooLarge):
            keyed.gradients({**EXAMPLE, "X": np.ones((2, 2000)), "Y": np.ones((1, 2000))})
    with Client(local=True, settings=settings, api_key="course-key-0123456789", max_retries=2) as course:
        with pytest.raises(gsc.Forbidden) as refused:
            course.gradients(EXAMPLE)
        assert refused.value.errors[0].location == "path"
        with pytest.raises(gsc.Forbidden) as reveal:
            course.grade(EXAMPLE, submission={"cost": 0.5}, reveal=True)
        assert reveal.value.errors[0].location == "reveal"
    with Client(local=True, settings=settings, api_key="limited-key-0123456789", max_retries=2) as limited_client:
        # one request uses the budget; the window frees one in about a minute, longer than the client waits
        # (Backoff.max_retry_after), so the 429 is raised at once, with its Retry-After
        assert limited_client.grade(EXAMPLE, submission={"cost": 0.5}).result.score == 0
        started = time.monotonic()
        with pytest.raises(gsc.RateLimited) as limited:
            limited_client.grade(EXAMPLE, submission={"cost": 0.5})
        assert time.monotonic() - started < 5
        assert limited.value.retry_after > 30 and limited.value.errors[0].location == "header.Authorization"


def test_the_async_client_is_the_same_client_awaited(live_url):
    async def run():
        async with AsyncClient(live_url) as client:
            results = await asyncio.gather(client.gradients(EXAMPLE), client.gradients(_numpy(SOFTMAX)),
                                           client.grade(EXAMPLE, submission={"cost": 0.676733526293133}),
                                           client.explain(EXAMPLE), client.gradient_check(EXAMPLE))
            with pytest.raises(gsc.ValidationError) as caught:
                await client.gradients({**EXAMPLE, "cost": "hinge"})
            return results, caught.value

    (grads, softmax, grade, story, check), err = asyncio.run(run())
    with Client(live_url) as sync:
        expected = sync.gradients(EXAMPLE)
    assert all(np.array_equal(grads.grads[k], expected.grads[k]) for k in expected.grads)
    assert softmax.grads.dW3.shape == (3, 2) and softmax.grads.dA0.shape == (5, 3)
    assert grade.result.score == 1.0 and story.canonical and check.passed
    assert err.errors[0].location == "cost"


def test_the_step_routes_have_methods_and_answer_as_the_service():
    steps = ROOT / "service" / "examples" / "steps"
    cases = [("layer_forward", "/v1/layer/forward", "layer_forward"), ("layer_backward", "/v1/layer/backward",
             "layer_backward"), ("network_backward", "/v1/network/backward", "network_backward"),
             ("cost", "/v1/cost", "cost"), ("optimizer_step", "/v1/optimizer-step", "adam")]
    app = create_app().test_client()
    with gsc.Client(local=True) as client:
        for method, route, example in cases:
            body = json.loads((steps / f"{example}.json").read_text())
            got = getattr(client, method)(body)
            assert isinstance(got, gsc.Result)
            _same_values(got, app.post(route, json=body).get_json(), method)
        with pytest.raises(gsc.ValidationError) as bad:
            client.layer_backward(json.loads((steps / "layer_backward.json").read_text()), dZ=[[1.0, 2.0]])
        assert [(e.location, e.type) for e in bad.value.errors] == [("dZ", "both_upstream_gradients")]


def _same_values(got, want, where: str) -> None:
    """The SDK's decoded answer (arrays as float64 ndarrays) holds exactly the service's JSON values."""
    if isinstance(want, dict):
        assert set(got) == set(want), where
        for k in want:
            _same_values(got[k], want[k], f"{where}.{k}")
    elif isinstance(want, list) and want and isinstance(want[0], (list, float, int)):
        assert np.array_equal(np.asarray(got, dtype=float), np.asarray(want, dtype=float)), where
    else:
        assert got == want, where

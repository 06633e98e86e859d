"""The OpenAPI document: generated from the models, valid, complete, and the service conforms to it."""

from __future__ import annotations

import re

import orjson
import pytest
import schemathesis
from schemathesis.specs.openapi.checks import positive_data_acceptance
from hypothesis import HealthCheck, settings

from service import create_app
from service.engine import ACTIVATIONS, COSTS, KINDS

APP = create_app()
schema = schemathesis.openapi.from_wsgi("/openapi.json", APP)


@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_route_conforms_and_never_5xx(case):
    # call_and_validate checks: no 5xx, status documented, body matches the documented schema, content type.
    # Excluded: "a schema-valid body must be accepted". JSON Schema cannot state the shape chain (W_l's columns
    # = W_{l-1}'s rows, Y matching the output), so most generated bodies are rightly a 422.
    case.call_and_validate(excluded_checks=[positive_data_acceptance])


@pytest.fixture(scope="module")
def spec():
    r = APP.test_client().get("/openapi.json")
    assert r.status_code == 200
    return orjson.loads(r.data)


def test_spec_is_openapi_3_1_and_lists_every_route(spec):
    assert spec["openapi"] == "3.1.0"
    routes = {(path, method) for path, ops in spec["paths"].items() for method in ops}
    assert {("/v1/gradients", "post"), ("/healthz", "get"), ("/readyz", "get"), ("/v1", "get"),
            ("/metrics", "get"), ("/openapi.json", "get")} <= routes


def test_gradients_operation_documents_bodies_errors_and_examples(spec):
    op = spec["paths"]["/v1/gradients"]["post"]
    body = op["requestBody"]["content"]["application/json"]
    assert body["schema"]["$ref"].endswith("/GradientRequest")
    assert {"two_layer_sigmoid_bce", "three_layer_softmax_examples_first"} <= set(body["examples"])
    assert op["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/GradientResponse")
    for status in ("400", "401", "404", "405", "413", "415", "422", "500"):
        problem = op["responses"][status]["content"]["application/problem+json"]["schema"]
        assert problem["$ref"].endswith("/Problem"), status


def test_metrics_documents_its_optional_401(spec):
    responses = spec["paths"]["/metrics"]["get"]["responses"]
    assert "401" in responses and "text/plain" in responses["200"]["content"]


def test_request_schema_enumerates_the_registries(spec):
    schemas = spec["components"]["schemas"]
    layers = schemas["GradientRequest"]["properties"]["layers"]["items"]
    # A union discriminated by `type`: one schema per registered kind, each with its `type` and its own fields.
    by_type = {}
    for ref in layers["oneOf"]:
        schema = schemas[ref["$ref"].rsplit("/", 1)[1]]
        by_type[schema["properties"]["type"]["const"] if "const" in schema["properties"]["type"]
                else schema["properties"]["type"]["enum"][0]] = schema
    assert set(by_type) == set(KINDS)
    for name, kind in KINDS.items():
        layer = by_type[name]
        assert set(layer["properties"]["activation"]["enum"]) == set(ACTIVATIONS)
        expected = {"type", "activation", "negative_slope", *(p.name for p in kind.params),
                    *(s.name for s in kind.states), *(h.name for h in kind.hypers)}
        assert set(layer["properties"]) == expected and layer["additionalProperties"] is False
        assert {p.name for p in kind.params} <= set(layer.get("required", ()))  # a kind may have none (flatten)
    assert set(schemas["GradientRequest"]["properties"]["cost"]["enum"]) == set(COSTS)
    assert schemas["GradientRequest"]["additionalProperties"] is False


def test_description_carries_every_formula(spec):
    text = spec["info"]["description"]
    for unit in ACTIVATIONS.values():
        assert unit.formula in text and unit.derivative_formula in text
    for unit in COSTS.values():
        assert unit.formula in text and unit.dA_formula in text
    for kind in KINDS.values():
        assert kind.formulas.forward in text and kind.formulas.backward in text
    # Every table row has exactly its columns (Swagger UI's Markdown has no escaped pipe: formulas write abs(z)).
    for line in text.splitlines():
        if line.startswith("| `"):
            assert line.count("|") in (4, 5, 6), line


def test_docs_page_and_its_assets_are_served_locally():
    client = APP.test_client()
    page = client.get("/docs/")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert '"/openapi.json"' in html
    # No online validator badge: Swagger UI would send the document to a third party.
    assert '"validatorUrl": null' in html
    # Every script and stylesheet comes from this service, none from a CDN.
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert assets and all(a.startswith("/docs/") for a in assets), assets
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css", "swagger-ui-standalone-preset.js"):
        r = client.get(f"/docs/{asset}")
        assert r.status_code == 200 and len(r.data) > 10_000, asset

"""OpenAPI 3.1, generated from the pydantic models the routes validate with (no hand-kept duplicate).

A route opts in with ``@documented(...)``; ``build_spec(app)`` walks the app's URL map and reads that metadata.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from flask import Flask
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from schemas.errors import Problem
from service.engine import ACTIVATIONS, COSTS, KINDS

REF = "#/components/schemas/{model}"
LEARN_LINK = ("**Learners:** [/learn](/learn) shows your network's forward and backward pass with every formula's "
              "numbers, and why the last layer's gradient is A_L - Y while a hidden layer's is W^T dZ.\n\n")

ERROR_TEXT = {
    400: "Malformed JSON.",
    401: "Missing or wrong API key (only when keys are configured).",
    404: "No such route.",
    405: "Method not allowed on this route.",
    413: "Body over the size limit; refused before it is read.",
    403: "Not allowed by the policy of this API key (service setting): the field and the policy are named.",
    415: "Content-Type is not application/json.",
    422: "The body parsed but is invalid: every problem is listed with its location.",
    429: "Over the rate limit of this API key's policy; `Retry-After` says when to retry.",
    500: "Unexpected failure (logged; no traceback is sent).",
    503: "Not ready (a readiness check failed), or the rate-limit store cannot be reached.",
}


@dataclass(frozen=True)
class RouteDoc:
    """What the OpenAPI document says of one route."""

    summary: str
    description: str = ""
    request: type[BaseModel] | None = None
    response: type[BaseModel] | None = None
    response_description: str = "Success."
    response_media_type: str = "application/json"
    other_media: dict[str, dict] = field(default_factory=dict)  # other media types of a 200 -> their schemas
    errors: tuple[int, ...] = ()
    tags: tuple[str, ...] = ()
    secured: bool = False
    examples: dict[str, Any] = field(default_factory=dict)  # name -> request body example


def documented(summary: str, **kwargs) -> Callable:
    """Attach a RouteDoc to a view function."""

    def wrap(view: Callable) -> Callable:
        view.route_doc = RouteDoc(summary=summary, **kwargs)
        return view

    return wrap


def formulas_markdown() -> str:
    """The activation and cost formulas, read from the engine's registries."""
    lines = ["**Activations**", "", "| name | g(z) | derivative |", "|---|---|---|"]
    lines += [f"| `{a.name}` | {a.formula} | {a.derivative_formula} |" for a in ACTIVATIONS.values()]
    lines += ["", "**Costs** (plus lambda/(2m) sum ||W_l||_F^2 with `l2`)", "",
              "| name | output | labels | J | dA_L |", "|---|---|---|---|---|"]
    for c in COSTS.values():
        outputs = "any" if c.output_activations is None else ", ".join(sorted(c.output_activations))
        lines.append(f"| `{c.name}` | {outputs} | {c.label_domain} | {c.formula} | {c.dA_formula} |")
    lines += ["", "**Layer kinds** (`layers[i].type`; absent means `dense`)", "",
              "| type | parameters | forward | backward |", "|---|---|---|---|"]
    for k in KINDS.values():
        params = ", ".join(p.name + (" (L2)" if p.l2 else "") for p in k.params)
        lines.append(f"| `{k.name}` | {params} | {k.formulas.forward} | {k.formulas.backward} |")
    return "\n".join(lines)


def build_spec(app: Flask, version: str) -> dict:
    """The OpenAPI 3.1 document of every documented route of ``app``."""
    docs: list[tuple[str, str, RouteDoc]] = []
    for rule in app.url_map.iter_rules():
        doc = getattr(app.view_functions.get(rule.endpoint), "route_doc", None)
        if doc is None:
            continue
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            docs.append((rule.rule, method.lower(), doc))

    models = {Problem}
    for _, _, doc in docs:
        models.update(m for m in (doc.request, doc.response) if m is not None)
    keyed = sorted(((m, "validation") for m in models), key=lambda p: p[0].__name__)
    keyed += [(m, "serialization") for m, _ in keyed]
    refs, defs = models_json_schema(keyed, ref_template=REF)
    schemas = defs.get("$defs", {})

    paths: dict[str, dict] = {}
    for path, method, doc in docs:
        op: dict[str, Any] = {"summary": doc.summary, "operationId": f"{method}_{path.strip('/').replace('/', '_') or 'root'}",
                              "responses": {}}
        if doc.description:
            op["description"] = doc.description
        if doc.tags:
            op["tags"] = list(doc.tags)
        if doc.request is not None:
            media: dict[str, Any] = {"schema": refs[(doc.request, "validation")]}
            if doc.examples:
                media["examples"] = {name: {"value": value} for name, value in doc.examples.items()}
            op["requestBody"] = {"required": True, "content": {"application/json": media}}
        ok: dict[str, Any] = {"description": doc.response_description}
        if doc.response is not None:
            ok["content"] = {doc.response_media_type: {"schema": refs[(doc.response, "serialization")]}}
        elif doc.response_media_type != "application/json":
            ok["content"] = {doc.response_media_type: {"schema": {"type": "string"}}}
        for media, media_schema in doc.other_media.items():
            ok.setdefault("content", {})[media] = {"schema": media_schema}
        op["responses"]["200"] = ok
        statuses = set(doc.errors) | {404, 405, 500}
        if doc.secured:
            statuses |= {401, 403, 429, 503}  # key, its policy's routes and rate limit, the limit's store
            op["security"] = [{"bearerAuth": []}, {}]
        problem_ref = refs[(Problem, "serialization")]
        for status in sorted(statuses):
            op["responses"][str(status)] = {"description": ERROR_TEXT[status],
                                            "content": {"application/problem+json": {"schema": problem_ref}}}
        paths.setdefault(path, {})[method] = op

    return {
        "openapi": "3.1.0",
        "info": {
            "title": "gradient-service",
            "version": version,
            "description": "Forward pass, cost and every backpropagation gradient of a fully connected network, "
                           "in float64.\n\n" + LEARN_LINK + formulas_markdown(),
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer",
                                               "description": "Needed only when the service has API keys configured."}},
        },
    }

"""The learner page's routes (service/learn.py), in process: the page and its files, the examples, LaTeX to MathML.
The page itself, in a browser, is tests/test_learn_page.py."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from service import create_app, learn

ROOT = Path(__file__).parent.parent


def test_the_page_and_its_files_are_served_with_a_same_origin_policy(client):
    r = client.get("/learn")
    assert r.status_code == 200 and r.mimetype == "text/html"
    html = r.get_data(as_text=True)
    assert '<script type="module" src="/learn/static/learn.js">' in html
    csp = r.headers["Content-Security-Policy"]
    assert "default-src 'self'" in csp and "connect-src 'self'" in csp and "script-src 'self'" in csp
    for name in ("learn.js", "formulas.js", "arrays.js", "model.js", "state.js", "learn.css"):
        f = client.get(f"/learn/static/{name}")
        assert f.status_code == 200, name
        assert f.headers["Content-Security-Policy"] == csp
    # Nothing the page loads names another origin: no CDN, no font service, no analytics.
    for path in sorted((ROOT / "service" / "static" / "learn").iterdir()):
        text = path.read_text()
        assert "http://" not in text.replace("http://www.w3.org/1998/Math/MathML", ""), path.name
        assert "https://" not in text and "//cdn" not in text, path.name


def test_examples_lists_every_shipped_file_and_each_is_a_valid_request(client, post):
    answer = client.get("/learn/examples").get_json()
    assert answer["api_keys_required"] is False
    listed = answer["examples"]
    files = sorted((ROOT / "service" / "examples").glob("*.json"))
    assert [e["name"] for e in listed] == [p.stem for p in files]
    assert {"two_layer_sigmoid_bce", "softmax_three_classes"} <= {e["name"] for e in listed}
    for e in listed:
        assert e["body"] == json.loads((ROOT / "service" / "examples" / f"{e['name']}.json").read_text())
        status, out = post(e["body"])
        assert status == 200, (e["name"], out)
        status, out = post(e["body"], path="/v1/explain")
        assert status == 200, (e["name"], out)


def test_examples_says_when_the_api_needs_a_key():
    keyed = create_app({"api_keys": ["learner-key-0123456789abcdef"]}).test_client()
    assert keyed.get("/learn/examples").get_json()["api_keys_required"] is True
    assert keyed.get("/learn").status_code == 200  # the page itself stays open, as /docs/ does


def test_the_examples_folder_is_the_packaged_one():
    assert (ROOT / "examples").resolve() == (ROOT / "service" / "examples").resolve()


def test_the_saturated_example_shows_where_the_chain_rule_breaks(post):
    body = json.loads((ROOT / "service" / "examples" / "saturated_sigmoid_bce.json").read_text())
    status, out = post(body, path="/v1/explain")
    assert status == 200 and out["canonical"] and out["unstable_count"] >= 1


def test_mathml_converts_the_engines_latex(post):
    story = post(json.loads((ROOT / "examples" / "two_layer_sigmoid_bce.json").read_text()), path="/v1/explain")[1]
    latex = [s["latex"] for s in story["steps"]]
    status, out = post({"latex": latex}, path="/learn/mathml")
    assert status == 200 and len(out["mathml"]) == len(latex)
    for text in out["mathml"]:
        root = ET.fromstring(text)
        assert root.tag == "{http://www.w3.org/1998/Math/MathML}math"
    frac = ET.fromstring(post({"latex": [r"\frac{a}{b}"]}, path="/learn/mathml")[1]["mathml"][0])
    assert [e.tag.split("}")[1] for e in frac.iter()][:3] == ["math", "mrow", "mfrac"]


@pytest.mark.parametrize("latex", [r"\text{<script>alert(1)</script>}", r"\text{a & b}", "{" * 900,
                                   r"\frac" * 200, "x^x^x"])
def test_mathml_that_cannot_be_made_safely_is_null(post, latex):
    status, out = post({"latex": [latex, "x"]}, path="/learn/mathml")
    assert status == 200
    assert out["mathml"][0] is None and out["mathml"][1] is not None


def test_mathml_keeps_only_allowlisted_elements_and_attributes():
    good = learn.to_mathml(r"\mathrm{d}x")
    assert good is not None and "<mi" in good
    bad = learn._rebuild(ET.fromstring('<math xmlns="http://www.w3.org/1998/Math/MathML"><mi onclick="x" '
                                       'mathvariant="normal">a</mi></math>'))
    assert ET.tostring(bad, encoding="unicode").count("onclick") == 0
    assert learn._rebuild(ET.fromstring('<math xmlns="http://www.w3.org/1998/Math/MathML"><mtext><a href="x">a</a>'
                                        '</mtext></math>')) is None


@pytest.mark.parametrize("body, location, kind", [
    ({"latex": []}, "latex", "too_short"),
    ({"latex": ["x"] * (learn.MAX_FORMULAS + 1)}, "latex", "too_long"),
    ({"latex": ["x" * (learn.MAX_FORMULA_CHARS + 1)]}, "latex[0]", "string_too_long"),
    ({"latex": ["x" * learn.MAX_FORMULA_CHARS] * 9}, "latex", "limit_exceeded"),
    ({"latex": [1]}, "latex[0]", "string_type"),
    ({"latex": ["x"], "extra": 1}, "extra", "extra_forbidden"),
], ids=["empty", "too_many", "too_long", "too_much_in_all", "not_a_string", "unknown_field"])
def test_mathml_rejects_bad_bodies_with_a_located_problem(client, body, location, kind):
    r = client.post("/learn/mathml", json=body)
    assert r.status_code == 422 and r.mimetype == "application/problem+json"
    errors = r.get_json()["errors"]
    assert errors[0]["location"] == location and errors[0]["type"] == kind, errors


def test_the_page_is_linked_from_the_docs_and_the_readme(client):
    spec = client.get("/openapi.json").get_json()
    assert "](/learn)" in spec["info"]["description"]
    assert "/learn" in (ROOT / "README.md").read_text()

"""The learner page: GET /learn, a browser page that shows the forward and backward pass of a network with the
learner's own numbers, every entry's formula with its numbers plugged in, and why the last layer's gradient is
A_L - Y while a hidden layer's is W^T dZ.

The page is static files (service/static/learn/) that call the public API from the browser (/v1, /v1/gradients,
/v1/explain, /v1/grade): every number it shows is the service's. Two small helper routes serve it:

- ``GET /learn/examples``: the shipped example networks, every ``service/examples/*.json`` (a /v1/gradients body
  each; adding an example is adding a file), and whether /v1 needs an API key.
- ``POST /learn/mathml``: ``{"latex": [...]}`` -> ``{"mathml": [...]}``, the LaTeX the engine writes rendered as
  MathML on the server (latex2mathml), so the page draws formulas with no script or font from the network. Every
  converted document is re-parsed and rebuilt from an allowlist of MathML elements and attributes (latex2mathml
  copies ``\\text{...}`` into the output unescaped); an item that fails is ``null`` and the page shows its LaTeX.

Every response of the page is sent with a Content-Security-Policy that allows only this origin, so the browser
itself refuses any request that would leave it.
"""

from __future__ import annotations

import functools
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Annotated

import orjson
from flask import Blueprint, current_app, send_from_directory
from latex2mathml.converter import convert
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from schemas.errors import ErrorItem, InvalidRequest
from service.http import json_response, parse_body

STATIC = Path(__file__).parent / "static" / "learn"
EXAMPLES = Path(__file__).parent / "examples"

# Conversion takes ~25 us per character (measured): these bounds keep one request under ~0.2 s of a worker.
MAX_FORMULAS = 32
MAX_FORMULA_CHARS = 1000
MAX_TOTAL_CHARS = 8000

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'self'")

MATHML_NS = "http://www.w3.org/1998/Math/MathML"
MATHML_ELEMENTS = frozenset(
    "math mrow mi mn mo ms mtext mspace mfrac msqrt mroot msub msup msubsup munder mover munderover mtable mtr mtd "
    "mstyle mpadded mphantom menclose merror semantics annotation mmultiscripts mprescripts none".split())
MATHML_ATTRIBUTES = frozenset(
    "display mathvariant stretchy fence separator lspace rspace accent accentunder form largeop movablelimits "
    "symmetric minsize maxsize columnalign rowalign columnspacing rowspacing columnlines rowlines frame "
    "displaystyle scriptlevel linethickness width height depth notation encoding".split())

bp = Blueprint("learn", __name__, static_folder=str(STATIC), static_url_path="/learn/static")


class MathmlRequest(BaseModel):
    """The body of POST /learn/mathml."""

    model_config = ConfigDict(extra="forbid")
    latex: Annotated[list[Annotated[str, StringConstraints(max_length=MAX_FORMULA_CHARS)]],
                     Field(min_length=1, max_length=MAX_FORMULAS)]


@bp.after_request
def _csp(response):
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


@bp.get("/learn")
def page():
    """The page itself (static HTML; its scripts build everything from the API)."""
    response = send_from_directory(STATIC, "index.html")
    response.headers["Cache-Control"] = "no-cache"
    return response


@bp.get("/learn/examples")
def examples():
    """Every shipped example, ``[{"name": file stem, "body": /v1/gradients body}]``, sorted by name, and whether
    the /v1 routes need an API key (so that the page asks for one before its first call, not after a 401)."""
    settings = current_app.config["SETTINGS"]
    listed = [{"name": p.stem, "body": orjson.loads(p.read_bytes())} for p in sorted(EXAMPLES.glob("*.json"))]
    keys = bool(settings.api_keys) or any(policy.keys for policy in settings.policies.values())
    return json_response({"examples": listed, "api_keys_required": keys})


@bp.post("/learn/mathml")
def mathml():
    """LaTeX to MathML, one result per formula: a MathML string, or null when it cannot be converted safely."""
    req = parse_body(MathmlRequest)
    total = sum(len(s) for s in req.latex)
    if total > MAX_TOTAL_CHARS:
        raise InvalidRequest([ErrorItem(location="latex", type="limit_exceeded",
                                        message=f"the formulas hold {total} characters in all, over the limit of "
                                                f"{MAX_TOTAL_CHARS}: send fewer or shorter formulas")])
    return json_response({"mathml": [to_mathml(s) for s in req.latex]})


@functools.lru_cache(maxsize=1024)
def to_mathml(latex: str) -> str | None:
    """``latex`` as a MathML ``<math>`` element rebuilt from the allowlist, or None if it cannot be."""
    try:
        raw = convert(latex)
    except Exception:  # a third-party parser on caller text: any failure (RecursionError included) means no math
        return None
    try:
        root = ET.fromstring(raw)
    except ET.ParseError:  # e.g. \text{a & b}, which latex2mathml copies out unescaped
        return None
    clean = _rebuild(root)
    if clean is None:
        return None
    ET.register_namespace("", MATHML_NS)
    return ET.tostring(clean, encoding="unicode")


def _rebuild(node: ET.Element) -> ET.Element | None:
    """A copy of ``node`` with allowlisted MathML elements and attributes only; None if anything else is in it."""
    tag = node.tag.removeprefix("{" + MATHML_NS + "}")
    if tag not in MATHML_ELEMENTS or not node.tag.startswith("{" + MATHML_NS + "}"):
        return None
    out = ET.Element(node.tag, {k: v for k, v in node.attrib.items() if k in MATHML_ATTRIBUTES})
    out.text = node.text
    for child in node:
        copy = _rebuild(child)
        if copy is None:
            return None
        copy.tail = child.tail
        out.append(copy)
    return out

"""Every /v1 POST body the test suite sent before the layer kinds existed gets the same response, byte for byte
(tests/data/golden.jsonl.gz, recorded by ``python -m tests.golden record``; request ids masked).

Two differences are allowed, and only they: where pydantic lists the accepted values of an enumeration ("Input
should be 'a', 'b' or 'c'"), the names registered since the recording (``ADDED``) are taken out of the new response
before comparing (a body with an unknown cost is told every cost there is, the new ones included); and explain's
LaTeX of dA_L under ``intermediates: mean``, which read 1/m - (...) for 1/m (...) when it was recorded and now has
its parentheses, and its stability step, which spoke of binary cross-entropy for every cost (``FIXED_LATEX``).
"""

from __future__ import annotations

import base64
import re

import orjson

from service.engine import COSTS
from tests.golden import load, normalised, replay

# Names added since tests/data/golden.jsonl.gz was recorded: a cost (issue 8), two grade formats (issue 12).
ADDED = ("multiclass_hinge", "prairielearn", "junit")
_ENUMERATION = re.compile(rb"Input should be ((?:'[a-z_]+', )*'[a-z_]+' or '[a-z_]+')")


def _without_added(body: bytes) -> bytes:
    def rewrite(match: re.Match) -> bytes:
        names = re.findall(rb"'([a-z_]+)'", match.group(1))
        kept = [n for n in names if n.decode() not in ADDED]
        listed = b", ".join(b"'" + n + b"'" for n in kept[:-1]) + b" or '" + kept[-1] + b"'" if len(kept) > 1 else \
            b"'" + kept[0] + b"'"
        return b"Input should be " + listed

    return _ENUMERATION.sub(rewrite, body)


def _json_text(text: str) -> bytes:
    return orjson.dumps(text)[1:-1]


# The recorded (wrong) form of each cost's dA_L under the mean convention, and today's.
_DA = r"\frac{\partial \mathcal{L}}{\partial A^{[L]}} = \frac{1}{m}"
FIXED_LATEX = [(_json_text(_DA + r"\left(" + c.dA_latex + r"\right)"), _json_text(_DA + c.dA_latex))
               for c in COSTS.values()]
# Explain's stability step told every canonical pair binary cross-entropy's breakdown (1 - A_L, |z| above ~37 with
# a sigmoid) when it was recorded; each cost now tells its own.
_BCE = COSTS["binary_cross_entropy"]
FIXED_LATEX += [(_json_text(c.breakdown_latex), _json_text(_BCE.breakdown_latex)) for c in COSTS.values()]
FIXED_LATEX += [(_json_text(c.breakdown_none.format(L=L)), _json_text(_BCE.breakdown_none.format(L=L)))
                for c in COSTS.values() for L in range(1, 10)]


def _as_recorded(body: bytes) -> bytes:
    for today, recorded in FIXED_LATEX:
        body = body.replace(today, recorded)
    return _without_added(body)


def test_every_recorded_body_gets_the_recorded_response():
    entries = load()
    assert len(entries) > 1000
    differ = []
    for e, status, body in replay(entries):
        want = base64.b64decode(e["response"])
        if status != e["status"] or normalised(_as_recorded(body)) != normalised(want):
            differ.append(f"{e['path']} {base64.b64decode(e['body'])[:200]!r}\n  want {e['status']} "
                          f"{want[:300]!r}\n  got  {status} {body[:300]!r}")
    assert not differ, f"{len(differ)} of {len(entries)} responses changed:\n" + "\n".join(differ[:10])

"""Every /v1 POST body the test suite sent before the layer kinds existed gets the same response, byte for byte
(tests/data/golden.jsonl.gz, recorded by ``python -m tests.golden record``; request ids masked)."""

from __future__ import annotations

import base64

from tests.golden import load, normalised, replay


def test_every_recorded_body_gets_the_recorded_response():
    entries = load()
    assert len(entries) > 1000
    differ = []
    for e, status, body in replay(entries):
        want = base64.b64decode(e["response"])
        if status != e["status"] or normalised(body) != normalised(want):
            differ.append(f"{e['path']} {base64.b64decode(e['body'])[:200]!r}\n  want {e['status']} "
                          f"{want[:300]!r}\n  got  {status} {body[:300]!r}")
    assert not differ, f"{len(differ)} of {len(entries)} responses changed:\n" + "\n".join(differ[:10])

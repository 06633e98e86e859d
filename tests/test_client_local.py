"""The in-process mode (``Client(local=True)``): the same validation, engine and serializer as the server, so the
same bytes. Every body below is sent to a live gunicorn and to the local client with the same X-Request-ID (the
one part of an error body that would differ otherwise); status, media type and body must be identical, byte for
byte, for answers and errors alike, on every route and in every grade format."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest

import gradient_service_client as gsc
from gradient_service_client import AsyncClient, Client
from tests.live_server import live_url  # noqa: F401  (fixture)
from tests.test_grade import HIDDEN, OUTPUTS, network, student, _wire

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = [json.loads(p.read_text()) for p in sorted((ROOT / "examples").glob("*.json"))]
MISTAKES = [None, "missing_1_over_m", "sign_flipped", "derivative_on_A", "dAL_sent_as_dZL", "transposed"]


def _networks() -> list[dict]:
    """Random networks over every output pair and hidden activation, with the request options varied."""
    out = list(EXAMPLES)
    for i, (cost, act) in enumerate(OUTPUTS):
        hidden = [HIDDEN[(i + j) % len(HIDDEN)] for j in range(1 + i % 3)]
        body = network(100 + i, cost, act, hidden, m=3 + i, l2=0.1 * (i % 2), keep_prob=0.8 if i % 3 == 0 else None,
                       b_vector=i % 2 == 1)
        if i % 2:
            body["intermediates"] = "mean"
        out.append(body)
    # a larger one: BLAS kernels with blocking, and a response big enough to be streamed in pieces
    rng = np.random.default_rng(7)
    sizes = [64, 48, 32, 10]
    out.append({"layers": [{"W": (rng.normal(size=(sizes[i + 1], sizes[i])) / 8).tolist(),
                            "b": rng.normal(size=(sizes[i + 1], 1)).tolist(),
                            "activation": "relu" if i < 2 else "softmax"} for i in range(3)],
                "X": rng.normal(size=(64, 300)).tolist(), "Y": rng.integers(0, 10, 300).tolist(),
                "cost": "categorical_cross_entropy"})
    return out


def _requests() -> list[tuple[str, dict]]:
    reqs = []
    nets = _networks()
    for i, body in enumerate(nets):
        reqs.append(("/v1/gradients", {**body, "include_caches": i % 2 == 0}))
        reqs.append(("/v1/explain", body))
        reqs.append(("/v1/gradient-check", {**body, "mode": "entries", "samples": 6, "seed": i}))
    for i, body in enumerate(nets[len(EXAMPLES):len(EXAMPLES) + 6]):  # the random ones: students' mistakes, every format
        subs = [_wire(student(body, mistake, 1)) for mistake in MISTAKES]
        for fmt in ("native", "gradescope", "prairielearn", "junit"):
            reqs.append(("/v1/grade", {**body, "submissions": subs + [{"dW1": [[0.1], [0.2, 0.3]]}], "format": fmt}))
            reqs.append(("/v1/grade", {**body, "submission": subs[i % len(subs)], "format": fmt, "reveal": True}))
    bad = EXAMPLES[0]
    reqs += [("/v1/gradients", {**bad, "cost": "hinge", "l2": -1}),
             ("/v1/gradients", {**bad, "layers": [bad["layers"][0], {**bad["layers"][1], "W": [[1.0, 2.0]]}]}),
             ("/v1/gradients", {**bad, "X": [[1.0, 2.0], [3.0]], "lambda": 0.1}),
             ("/v1/grade", {**bad, "submission": {"dW7": [[1.0]]}}),
             ("/v1/gradient-check", {**bad, "mode": "entries"}),
             ("/v1/explain", {**bad, "hidden_layer": 9}),
             ("/v1/no-such-route", {"A_prev": [[1.0]]})]
    return reqs


REQUESTS = _requests()


def _raw(client: Client, route: str, body: dict, request_id: str):
    try:
        return client.send("POST", route, body, headers={"X-Request-ID": request_id})
    except gsc.APIError as exc:
        return exc.response


def test_local_answers_are_the_servers_byte_for_byte(live_url):
    assert len(REQUESTS) >= 80
    statuses = set()
    with Client(live_url, timeout=60) as remote, Client(local=True) as local:
        for n, (route, body) in enumerate(REQUESTS):
            rid = f"bit-identical-{n}"
            a, b = _raw(remote, route, body, rid), _raw(local, route, body, rid)
            assert (a.status_code, a.headers["Content-Type"]) == (b.status_code, b.headers["Content-Type"]), route
            assert a.content == b.content, (n, route, a.status_code)
            statuses.add(a.status_code)
    assert statuses == {200, 404, 422}  # the errors were compared too


def test_local_results_decode_to_the_same_bits(live_url):
    body = _networks()[-1]
    with Client(live_url) as remote, Client(local=True) as local:
        a, b = remote.gradients(body), local.gradients(body)
    for key in a.grads:
        assert a.grads[key].tobytes() == b.grads[key].tobytes(), key
    assert a.cost.hex() == b.cost.hex()


def test_local_mode_takes_settings_and_needs_no_url():
    with Client(local=True, settings={"max_layers": 1}) as client:
        with pytest.raises(gsc.ValidationError) as caught:
            client.gradients(EXAMPLES[0])
        assert caught.value.status == 422 and "limit" in str(caught.value)
    with pytest.raises(ValueError, match="not both"):
        Client("http://127.0.0.1:1", local=True)


def test_the_async_client_runs_locally_too():
    async def run():
        async with AsyncClient(local=True) as client:
            return await asyncio.gather(*(client.gradients(b) for b in EXAMPLES))

    with Client(local=True) as sync:
        expected = [sync.gradients(b) for b in EXAMPLES]
    for got, want in zip(asyncio.run(run()), expected):
        assert all(got.grads[k].tobytes() == want.grads[k].tobytes() for k in want.grads)

"""A worker's peak memory growth for one request stays within 8x the body + 64 MiB (invalid bodies), or 8x (body +
response) + 64 MiB (valid ones), on every POST route: each case in a fresh interpreter (tests/memory_probe.py).

The bodies are the hardening issue's (empty layer objects, zeros, one-element rows) and the other classes that
cost the most Python objects per byte (the shortest floats, NaN tokens, strings and booleans where numbers
belong, distinct unknown keys), at 8 MiB: large enough that each would have broken the budget before (the empty
objects took 2 GB from 1 MiB), small enough for CI. bench/memory.py runs them up to the body limit.
"""

from __future__ import annotations

import pytest

from tests.memory_probe import INVALID_BODIES, MiB, ROUTES, VALID_BODIES, measure

SIZE = 8 * MiB
# On every route: the two classes that cost the most per byte of body.
HEAVIEST = ("short_floats_in_X", "zeros_in_X")


def assert_within_budget(m) -> None:
    assert m.growth <= m.bound, (f"{m.path}: peak growth {m.growth / MiB:.1f} MiB for a {m.body_bytes / MiB:.1f} "
                                 f"MiB body (response {m.response_bytes / MiB:.1f} MiB) is over the budget of "
                                 f"{m.bound / MiB:.0f} MiB; status {m.status}: {m.head}")


@pytest.mark.parametrize("name", list(INVALID_BODIES))
def test_invalid_bodies_stay_within_budget_on_gradients(name):
    m = measure("/v1/gradients", INVALID_BODIES[name](SIZE))
    assert m.status == 422, m.head
    assert_within_budget(m)


@pytest.mark.parametrize("route", [r for r in ROUTES if r != "/v1/gradients"])
@pytest.mark.parametrize("name", HEAVIEST)
def test_the_heaviest_invalid_bodies_stay_within_budget_on_every_route(route, name):
    m = measure(route, INVALID_BODIES[name](SIZE))
    assert m.status == 422, m.head
    assert_within_budget(m)


@pytest.mark.parametrize("route", ROUTES)
def test_large_valid_requests_stay_within_budget(route):
    m = measure(route, VALID_BODIES[route](SIZE))
    assert m.status == 200, m.head
    assert_within_budget(m)


def test_the_issue_body_of_empty_layers_is_refused_before_it_is_built():
    # 1 MiB of {} layers: 349,000 objects, over the structural cap; refused by counting, not by validating.
    m = measure("/v1/gradients", INVALID_BODIES["empty_layers"](1 * MiB))
    assert m.status == 422 and "limit" in m.head, m.head
    assert m.growth < 16 * MiB, m.growth

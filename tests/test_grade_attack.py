"""The attack script of the README's *Threat model*: searches for hidden reference values through POST /v1/grade
with ``reveal: false``, under three policies, counting the requests they need.

The client controls the submissions (and, where its policy lets it, the tolerances and the batch size) but not the
network. Each search keeps an interval that provably holds the value and narrows it with what the responses say:

* ``bucket_bisection``: the power-of-ten error bucket is a comparison. With s = c + D (D a power of ten at least
  the interval's width), ``max_abs_error <= D`` exactly when r >= c. A batch of n such submissions cuts the
  interval into n + 1 parts per request.
* ``atol_bisection`` (the issue's): with a client-chosen atol at least the interval's width and rtol = 0, s = c + atol
  is ``correct`` exactly when r >= c; again n + 1 parts per request of n submissions.
* ``window_scan`` (no error numbers, a fixed tolerance): a guess is ``correct`` exactly when r lies in its window
  [(s - atol)/(1 + rtol), (s + atol)/(1 - rtol)]; the scan lays windows end to end across the prior until one
  answers ``correct``, then bisects on the window's lower edge (s = c (1 + rtol) + atol is correct iff r >= c).
* ``entry_bisection``: every entry of an array at once, from the count of wrong entries, with a client-chosen atol:
  probe entry j at s_j = c + atol with the others far off; ``wrong_entries`` drops by one exactly when r_j >= c.

``python tests/test_grade_attack.py`` prints the table the README quotes; the tests assert its bounds.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import orjson
import pytest

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from service import create_app
from service.engine import grading
from service.engine.grading.diagnose import local_candidates
from tests.test_grade import REVEAL_BODIES, reference

KEYS = {"default": "attack-default-0123456789", "single": "attack-single-0123456789",
        "strict": "attack-strict-0123456789"}
FIXED = {"min_rtol": 1e-5, "max_rtol": 1e-5, "min_atol": 1e-8, "max_atol": 1e-8}
POLICIES = {
    # GRADIENT_API_KEYS under the default policy: no limit (the service's default).
    "single": {"keys": [KEYS["single"]], "reveal": False, "max_submissions": 1, **FIXED},
    "strict": {"keys": [KEYS["strict"]], "reveal": False, "max_submissions": 1, "feedback": "status", **FIXED},
}
BODY = REVEAL_BODIES["cce"]  # J = 0.4254...
PRIOR = (0.0, 10.0)  # what a client may assume of a cross-entropy cost of a small network
NARROW_PRIOR = (0.42, 0.43)  # the strict scan's prior: already two digits of J (a scan from PRIOR is too long here)


@dataclass
class Oracle:
    """POST /v1/grade as one key, counting requests."""

    policy: str
    body: dict = field(default_factory=lambda: BODY)
    requests: int = 0

    def __post_init__(self):
        app = create_app({"api_keys": [KEYS["default"]], "policies": POLICIES})
        self.client = app.test_client()

    def grade(self, submissions: list[dict], **fields) -> list[dict]:
        self.requests += 1
        r = self.client.post("/v1/grade", data=orjson.dumps({**self.body, "submissions": submissions, **fields}),
                             content_type="application/json",
                             headers={"Authorization": f"Bearer {KEYS[self.policy]}"})
        assert r.status_code == 200, r.data
        return [res["keys"][0] for res in orjson.loads(r.data)["results"]]


@dataclass
class Search:
    """The interval [lo, hi] after each request, as (requests, lo, hi)."""

    history: list[tuple[int, float, float]] = field(default_factory=list)

    def requests_to(self, truth: float, rel: float) -> int | None:
        """Requests until the interval is at most rel * |truth| wide (None: never); asserts it always held truth."""
        for n, lo, hi in self.history:
            assert lo <= truth <= hi, (n, lo, hi, truth)
            if hi - lo <= rel * abs(truth):
                return n
        return None


def _power_of_ten_at_least(x: float) -> float:
    k = math.ceil(math.log10(x))
    return 10.0 ** k if 10.0 ** k >= x else 10.0 ** (k + 1)


def bucket_bisection(oracle: Oracle, prior: tuple[float, float], batch: int, rel: float,
                     max_requests: int = 200) -> Search:
    """Narrow [lo, hi] around the cost with ``batch`` bucket comparisons per request (see the module doc)."""
    lo, hi = prior
    search = Search()
    while hi - lo > rel * max(abs(lo), abs(hi)) / 2 and oracle.requests < max_requests:
        D = _power_of_ten_at_least(hi - lo)
        cuts = [lo + (hi - lo) * (j + 1) / (batch + 1) for j in range(batch)]
        keys = oracle.grade([{"cost": c + D} for c in cuts])
        above = [k["max_abs_error"] <= D for k in keys]  # r >= cut
        new_lo = max([c for c, a in zip(cuts, above) if a], default=lo)
        new_hi = min([c for c, a in zip(cuts, above) if not a], default=hi)
        lo, hi = new_lo, new_hi
        search.history.append((oracle.requests, lo, hi))
    return search


def atol_bisection(oracle: Oracle, prior: tuple[float, float], batch: int, rel: float,
                   max_requests: int = 200) -> Search:
    """Narrow [lo, hi] around the cost from the ``correct`` bit alone, choosing atol (see the module doc)."""
    lo, hi = prior
    search = Search()
    while hi - lo > rel * max(abs(lo), abs(hi)) / 2 and oracle.requests < max_requests:
        atol = hi - lo
        cuts = [lo + (hi - lo) * (j + 1) / (batch + 1) for j in range(batch)]
        keys = oracle.grade([{"cost": c + atol} for c in cuts], atol=atol, rtol=0.0)
        above = [k["status"] == "correct" for k in keys]  # r >= cut
        lo = max([c for c, a in zip(cuts, above) if a], default=lo)
        hi = min([c for c, a in zip(cuts, above) if not a], default=hi)
        search.history.append((oracle.requests, lo, hi))
    return search


def _window(s: float, rtol: float, atol: float) -> tuple[float, float]:
    """The r > 0 for which s is graded correct: |s - r| <= atol + rtol r."""
    return (s - atol) / (1 + rtol), (s + atol) / (1 - rtol)


def window_scan(oracle: Oracle, prior: tuple[float, float], rel: float, rtol: float = 1e-5, atol: float = 1e-8,
                max_requests: int = 5000) -> Search:
    """Status only, one guess per request, a fixed tolerance: scan windows across the prior, then bisect."""
    lo, hi = prior
    search = Search()
    start = lo
    while oracle.requests < max_requests:  # the scan
        s = start * (1 + rtol) + atol  # its window starts at `start`
        w_lo, w_hi = _window(s, rtol, atol)
        if oracle.grade([{"cost": s}])[0]["status"] == "correct":
            lo, hi = max(lo, start), min(hi, w_hi)
            search.history.append((oracle.requests, lo, hi))
            break
        start = w_hi
        lo = start  # every r below is ruled out
        search.history.append((oracle.requests, lo, hi))
    while hi - lo > rel * lo / 2 and oracle.requests < max_requests:  # bisection on the window's lower edge
        c = (lo + hi) / 2
        if oracle.grade([{"cost": c * (1 + rtol) + atol}])[0]["status"] == "correct":
            lo = c
        else:
            hi = c
        search.history.append((oracle.requests, lo, hi))
    return search


def entry_bisection(oracle: Oracle, key: str, shape: tuple[int, ...], prior: tuple[float, float], batch: int,
                    rounds: int) -> list[Search]:
    """Every entry of ``key`` at once: each request spends its ``batch`` submissions evenly over the entries, each
    a comparison read from ``wrong_entries`` (see the module doc)."""
    n = int(np.prod(shape))
    lo, hi = np.full(n, prior[0]), np.full(n, prior[1])
    searches = [Search() for _ in range(n)]
    per = batch // n
    far = 1e12
    for _ in range(rounds):
        atol = float(np.max(hi - lo))
        subs, probes = [], []
        for j in range(n):
            for t in range(per):
                c = lo[j] + (hi[j] - lo[j]) * (t + 1) / (per + 1)
                s = np.full(n, far)
                s[j] = c + atol
                subs.append({key: s.reshape(shape).tolist()})
                probes.append((j, c))
        keys = oracle.grade(subs, atol=atol, rtol=0.0)
        for (j, c), k in zip(probes, keys):
            if k["wrong_entries"] == n - 1:  # entry j passes: r_j in [c, c + 2 atol], so r_j >= c
                lo[j] = max(lo[j], c)
            else:
                hi[j] = min(hi[j], c)
        for j in range(n):
            searches[j].history.append((oracle.requests, lo[j], hi[j]))
    return searches


# --- the measured table --------------------------------------------------------------------------------------

def true_cost() -> float:
    return float(reference(BODY).arrays["cost"])


def measure() -> dict[str, dict[str, int]]:
    """Requests to pin the cost (and, under the default policy, every entry of dW1) to 1e-3 and 1e-6."""
    J = true_cost()
    out = {}
    for name, batch in (("default", 500), ("single", 1)):
        search = bucket_bisection(Oracle(name), PRIOR, batch, rel=1e-6)
        out[name] = {"1e-3": search.requests_to(J, 1e-3), "1e-6": search.requests_to(J, 1e-6)}
    search = atol_bisection(Oracle("default"), PRIOR, 500, rel=1e-6)
    out["default, correct bit with a chosen atol"] = {"1e-3": search.requests_to(J, 1e-3),
                                                      "1e-6": search.requests_to(J, 1e-6)}
    search = window_scan(Oracle("strict"), NARROW_PRIOR, rel=1e-6)
    out["strict"] = {"1e-3": search.requests_to(J, 1e-3), "1e-6": search.requests_to(J, 1e-6)}
    dW1 = reference(BODY).arrays["dW1"]
    scale = float(np.max(np.abs(dW1)))
    searches = entry_bisection(Oracle("default"), "dW1", dW1.shape, (-10.0, 10.0), 500, rounds=6)
    out["default, every entry of dW1"] = {
        rel: max(s.requests_to(float(r), float(rel) * scale / abs(r)) or 99 for s, r in zip(searches, dW1.ravel()))
        for rel in ("1e-3", "1e-6")}
    return out


def cost_windows() -> int:
    """Windows of r one status-only answer about a cost can tell apart: its own, and one per hypothesis a wrong
    cost is tested against (m r, r / m, -r here; with L2 also the two without its term), each as narrow."""
    return 1 + len(list(local_candidates(reference(BODY), "cost")))


def strict_lower_bound(prior: tuple[float, float], rtol: float = 1e-5) -> int:
    """Fewest status-only requests, one guess each, that can cover ``prior`` (r > 0): a guess is correct on a
    window of relative width 2 rtol / (1 - rtol), and its diagnoses add at most ``cost_windows() - 1`` more."""
    lo, hi = prior
    return math.ceil(math.log(hi / lo) / math.log((1 + rtol) / (1 - rtol)) / cost_windows())


# --- the bounds the README states ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def J():
    value = true_cost()
    assert NARROW_PRIOR[0] < value < NARROW_PRIOR[1]
    return value


def test_default_policy_pins_a_value_in_a_few_requests(J):
    # The README: 2 requests to 1e-3 and 3 to 1e-6 (from [0, 10], 500 submissions a request).
    search = bucket_bisection(Oracle("default"), PRIOR, 500, rel=1e-6)
    assert search.requests_to(J, 1e-3) <= 2
    assert search.requests_to(J, 1e-6) <= 3


def test_default_policy_the_issue_atol_search(J):
    # The issue's search: the correct bit with a chosen atol, 500 guesses a request; the same 2 and 3 requests.
    search = atol_bisection(Oracle("default"), PRIOR, 500, rel=1e-6)
    assert search.requests_to(J, 1e-3) <= 2 and search.requests_to(J, 1e-6) <= 3


def test_one_submission_per_request_costs_a_bit_per_request(J):
    # The README: 15 requests to 1e-3 and 25 to 1e-6: one comparison a request, log2(10 / (rel J)) of them.
    oracle = Oracle("single")
    search = bucket_bisection(oracle, PRIOR, 1, rel=1e-6)
    assert search.requests_to(J, 1e-3) <= 15 and search.requests_to(J, 1e-6) <= 25
    assert search.requests_to(J, 1e-6) >= math.floor(math.log2((PRIOR[1] - PRIOR[0]) / (1e-6 * J)))
    # and the 500-guesses batch of the issue is refused
    r = oracle.client.post("/v1/grade", data=orjson.dumps({**BODY, "submissions": [{"cost": 0.5}] * 2}),
                           content_type="application/json", headers={"Authorization": f"Bearer {KEYS['single']}"})
    assert r.status_code == 403


def test_strict_policy_needs_a_scan_of_windows(J):
    # The README: from a prior of relative width 2.4% the scan took 639 requests to find J (which pins it to
    # 2e-5 at once, so 1e-3 and 1e-5 cost the same) and 5 more to 1e-6; no search can do with fewer than
    # ln(hi/lo) / (2 rtol) / 4 requests over a prior [lo, hi] (4 windows an answer: cost_windows).
    search = window_scan(Oracle("strict"), NARROW_PRIOR, rel=1e-6)
    to_1e3, to_1e6 = search.requests_to(J, 1e-3), search.requests_to(J, 1e-6)
    scan = math.ceil(math.log(J / NARROW_PRIOR[0]) / math.log((1 + 1e-5) / (1 - 1e-5)))
    assert abs(to_1e3 - scan) <= 2, (to_1e3, scan)  # the scan is the whole cost (atol widens windows a little)
    assert to_1e6 - to_1e3 <= 6
    assert to_1e3 >= strict_lower_bound((NARROW_PRIOR[0], J))


def test_every_entry_of_an_array_under_the_default_policy():
    # The README: every entry of dW1 (12) to 1e-6 of its largest in 5 requests (41 comparisons per entry each).
    dW1 = reference(BODY).arrays["dW1"]
    scale = float(np.max(np.abs(dW1)))
    searches = entry_bisection(Oracle("default"), "dW1", dW1.shape, (-10.0, 10.0), 500, rounds=6)
    for s, r in zip(searches, dW1.ravel()):
        assert s.requests_to(float(r), 1e-6 * scale / abs(r)) <= 5


def test_strict_policy_refuses_every_shortcut():
    oracle = Oracle("strict")
    for fields in ({"submissions": [{"cost": 0.5}] * 2}, {"submissions": [{"cost": 0.5}], "atol": 1.0},
                   {"submissions": [{"cost": 0.5}], "rtol": 1e4}, {"submissions": [{"cost": 0.5}], "reveal": True}):
        r = oracle.client.post("/v1/grade", data=orjson.dumps({**BODY, **fields}), content_type="application/json",
                               headers={"Authorization": f"Bearer {KEYS['strict']}"})
        assert r.status_code == 403, fields


if __name__ == "__main__":
    t = time.perf_counter()
    J = true_cost()
    print(f"J = {J!r}; prior {PRIOR}, strict scan from {NARROW_PRIOR}")
    for name, counts in measure().items():
        print(f"{name:42s} to 1e-3: {counts['1e-3']:5d} requests   to 1e-6: {counts['1e-6']:5d} requests")
    print(f"strict: {cost_windows()} windows an answer; no search needs fewer than {strict_lower_bound(NARROW_PRIOR)} "
          f"requests over {NARROW_PRIOR}, {strict_lower_bound((0.1, 1.0))} over (0.1, 1)")
    print(f"({time.perf_counter() - t:.1f} s)")

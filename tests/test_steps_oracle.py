"""The one-step routes against an independent torch float64 oracle (tests/step_oracle.py), through HTTP.

At least 100 seeded random cases per route and per layer kind (batchnorm in train and in test mode with running
statistics), each compared entry by entry to |got - want| <= 1e-10 |want| + 1e-13 max(1, max |want|), shapes
included. The groups are taken from the registries (KINDS, ACTIVATIONS, COSTS, OPTIMIZERS), so that a unit added
there is tested here by default: the oracle raises KeyError for a unit it does not know, and the test fails.
"""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from service.app import create_app
from service.engine import ACTIVATIONS, COSTS, KINDS

# The kinds on vectors, which tests/step_oracle.py knows; the image kinds are tested against torch in
# tests/test_steps_images.py.
VECTOR_KINDS = {name: kind for name, kind in KINDS.items() if kind.input_rank == 1}
from service.engine.optimizers import CONVENTIONS, OPTIMIZERS
from tests import step_oracle as so

N_CASES = 100


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    with so.torch_threads(1):
        yield


@pytest.fixture(scope="module")
def send():
    """send(path, body) -> (status, parsed body), one app for the module (the routes keep no state)."""
    client = create_app().test_client()

    def _send(path: str, body: dict):
        r = client.post(path, data=orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY),
                        content_type="application/json")
        return r.status_code, orjson.loads(r.data)

    return _send


def _groups() -> list[tuple[str, str | None]]:
    """(kind, mode) for every kind of the registry, and each mode of a kind that has one (batchnorm)."""
    out = []
    for name, kind in VECTOR_KINDS.items():
        modes = next((h.choices for h in kind.hypers if h.name == "mode"), (None,))
        out += [(name, mode) for mode in modes]
    return out


GROUPS = _groups()
ACTS = list(ACTIVATIONS)


def _run(send, path: str, cases, check) -> None:
    """Every case through HTTP and the oracle; the failures, each with its seed, reported together."""
    failures = []
    for case in cases:
        status, body = send(path, case.body())
        try:
            assert status == 200, body
            check(case, body)
        except AssertionError as exc:
            failures.append(f"seed {case.seed}: {exc}")
    assert not failures, f"{len(failures)} of {len(cases)} cases failed:\n" + "\n".join(failures[:10])


# --- POST /v1/layer/forward ---------------------------------------------------------------------------------

def _forward_cases(kind: str, mode: str | None) -> list[so.LayerCase]:
    # m >= 2 for the norms: with one example a per-example cache value (xhat, (D, 1)) is returned in gamma's shape
    # (test_layer_forward_one_example_keeps_the_layout below).
    min_m = 2 if kind != "dense" else 1
    return [so.random_layer_case(seed, kind, ACTS, mode=mode, min_m=min_m) for seed in range(N_CASES)]


@pytest.mark.parametrize("kind,mode", GROUPS)
def test_layer_forward_matches_torch(send, kind, mode):
    _run(send, "/v1/layer/forward", _forward_cases(kind, mode), so.check_forward)


@pytest.mark.parametrize("kind,mode", [g for g in GROUPS if g[0] != "dense"])
def test_layer_forward_one_example_keeps_the_layout(send, kind, mode):
    cases = [c for c in (so.random_layer_case(seed, kind, ACTS, mode=mode) for seed in range(400)) if c.m == 1]
    assert len(cases) >= 10
    _run(send, "/v1/layer/forward", cases, so.check_forward)


# --- POST /v1/layer/backward --------------------------------------------------------------------------------

def _backward_cases(kind: str, mode: str | None) -> list[so.LayerCase]:
    return [so.random_layer_case(seed, kind, ACTS, mode=mode, backward=True) for seed in range(N_CASES)]


@pytest.mark.parametrize("kind,mode", GROUPS)
def test_layer_backward_matches_torch(send, kind, mode):
    _run(send, "/v1/layer/backward", _backward_cases(kind, mode), so.check_backward)


@pytest.mark.parametrize("kind,mode", GROUPS)
def test_the_cached_Z_is_used_as_sent(send, kind, mode):
    """Where the cache's Z is not the layer of A_prev, the route's dZ is dA * g'(Z sent) (the oracle above), and
    not what the consistent cache gives: leaving Z out changes the answer."""
    cases = [c for c in _backward_cases(kind, mode) if c.Z is not None and c.wl.layer.activation != "linear"]
    changed = 0
    for case in cases:
        status, sent = send("/v1/layer/backward", case.body())
        assert status == 200, sent
        so.check_backward(case, sent)
        case.Z = None
        status, consistent = send("/v1/layer/backward", case.body())
        so.check_backward(case, consistent)
        # (a one-unit softmax, or a ReLU negative at both, has g'(Z) = 0 either way)
        changed += not np.allclose(so.as_array(sent["dZ"]), so.as_array(consistent["dZ"]))
    assert changed >= 10, f"only {changed} of {len(cases)} cases tell the cached Z from the consistent one"


@pytest.mark.parametrize("kind,mode", GROUPS)
def test_layer_cases_cover_the_contract(kind, mode):
    """The seeds above exercise what the issue lists, for each kind (so the suite cannot go blind)."""
    fwd, bwd = _forward_cases(kind, mode), _backward_cases(kind, mode)
    for cases in (fwd, bwd):
        assert {c.wl.layer.activation for c in cases} == set(ACTS)
        assert {c.examples_first for c in cases} == {True, False}
        assert any("activation" not in c.wl.spec for c in cases)
        leaky = [c.wl.layer.slope for c in cases if c.wl.layer.activation == "leaky_relu"]
        assert None in leaky and any(s is not None for s in leaky)
        shapes = {len(s) for c in cases for s in c.wl.shapes.values()}
        assert shapes >= {1, 2}, "parameters sent as vectors and as columns"
    assert any(c.m == 1 for c in bwd) and any(c.m == 8 for c in bwd)
    assert sum(c.dZ is not None for c in bwd) >= 30 and sum(c.dA is not None and c.Z is None for c in bwd) >= 15
    assert sum(c.Z is not None for c in bwd) >= 15, "inconsistent caches: a Z that is not the layer of A_prev"
    assert {c.intermediates for c in bwd} == {"per_example", "mean", None}
    assert any(c.l2 > 0 for c in bwd) and any(c.l2 == 0 for c in bwd)
    if kind == "dense":
        assert any(c.wl.in_out for c in bwd) and any(not c.wl.in_out for c in bwd)
    if mode == "train":
        assert any("running_mean" in c.wl.spec for c in fwd) and any("running_mean" not in c.wl.spec for c in fwd)
        assert any("momentum" in c.wl.spec for c in fwd)


# --- POST /v1/network/backward ------------------------------------------------------------------------------

KIND_LIST, COST_LIST = list(VECTOR_KINDS), list(COSTS)


def _network_cases(kind: str) -> list[so.NetworkCase]:
    # AL under `mean` is test_network_backward_from_AL_follows_the_convention: the random cases send AL with
    # per_example only.
    return [so.random_network_case(seed, kind, KIND_LIST, ACTS, COST_LIST) for seed in range(N_CASES)]


@pytest.mark.parametrize("kind", KIND_LIST)
def test_network_backward_matches_torch(send, kind):
    _run(send, "/v1/network/backward", _network_cases(kind), so.check_network)


@pytest.mark.parametrize("kind", KIND_LIST)
def test_network_cases_cover_the_contract(kind):
    cases = _network_cases(kind)
    assert {len(c.wls) for c in cases} == {1, 2, 3, 4}
    assert all(any(wl.layer.kind == kind for wl in c.wls) for c in cases)
    assert {wl.layer.kind for c in cases for wl in c.wls} == set(KIND_LIST)
    assert {wl.layer.activation for c in cases for wl in c.wls} == set(ACTS)
    assert sum(c.dAL is not None for c in cases) >= 30 and sum(c.AL is not None for c in cases) >= 30
    assert {c.cost for c in cases if c.AL is not None} == set(COST_LIST)
    assert any(c.cost == "binary_cross_entropy" and (c.AL > 1).any() for c in cases if c.AL is not None)
    assert any(Z is None for c in cases for Z in c.Zs) and any(Z is not None for c in cases for Z in c.Zs)
    assert {c.examples_first for c in cases} == {True, False} and any(c.in_out for c in cases)
    assert {c.intermediates for c in cases} == {"per_example", "mean", None}
    assert any(c.l2 > 0 for c in cases) and any(c.m == 1 for c in cases)


def test_network_backward_from_AL_follows_the_convention(send):
    """Under `mean` dA_L derived from AL is dJ/dA_L = (1/m) d sum_i loss_i / dA_L, as /v1/cost and /v1/gradients
    return it; the gradients of the parameters are then the same in both conventions."""
    cases = [so.random_network_case(seed, "dense", KIND_LIST, ACTS, COST_LIST, intermediates="mean",
                                    upstream="AL") for seed in range(40)]
    cases = [c for c in cases if c.m > 1]
    failures = []
    for case in cases:
        status, body = send("/v1/network/backward", case.body())
        try:
            assert status == 200, body
            so.check_network(case, body, dAL_scale=1.0 / case.m)
        except AssertionError as exc:
            failures.append(f"seed {case.seed}: {exc}")
    assert not failures, f"{len(failures)} of {len(cases)} failed:\n" + "\n".join(failures[:5])


# --- POST /v1/cost ------------------------------------------------------------------------------------------

def _cost_cases(cost: str) -> list[so.CostCase]:
    return [so.random_cost_case(seed, cost, ACTS) for seed in range(N_CASES)]


@pytest.mark.parametrize("cost", COST_LIST)
def test_cost_matches_torch(send, cost):
    _run(send, "/v1/cost", _cost_cases(cost), so.check_cost)


@pytest.mark.parametrize("cost", COST_LIST)
def test_cost_cases_cover_the_contract(cost):
    cases = _cost_cases(cost)
    assert sum(c.form == "AL" for c in cases) >= 30 and sum(c.form == "ZL" for c in cases) >= 30
    assert {c.examples_first for c in cases} == {True, False}
    assert {c.intermediates for c in cases} == {"per_example", "mean", None}
    assert any(c.l2 > 0 and len(c.weights) > 1 for c in cases) and any(c.l2 == 0 for c in cases)
    assert any(c.send_act for c in cases)
    assert {c.y_format for c in cases} >= {"matrix", "indices" if cost in so.ONE_HOT_COSTS else "flat"}
    if cost == "mean_squared_error":
        assert {c.act for c in cases} == set(ACTS)
        assert any(c.form == "AL" and not c.canonical for c in cases), "AL with an activation: no dZL"
        assert any(c.slope is not None for c in cases)
    if cost == "binary_cross_entropy":
        labels = np.concatenate([c.Y.ravel() for c in cases])
        assert ((labels > 0) & (labels < 1)).any() and (labels == 0).any() and (labels == 1).any()


SATURATED = {
    # |Z| ~ 40: A_L rounds to exactly 1 (and 1 - A_L to 0) while the loss, dA_L and dZ_L are finite
    "binary_cross_entropy": (np.array([[40.0, -40.0, 38.0, -38.0, 40.0, -40.0, 39.5]]),
                             np.array([[1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 0.3]])),
    "categorical_cross_entropy": (np.array([[40.0, -40.0, 39.0], [-40.0, 40.0, -39.0], [-40.0, 0.0, 0.0]]),
                                  np.eye(3)[:, [0, 0, 1]]),
}


@pytest.mark.parametrize("cost", list(SATURATED))
@pytest.mark.parametrize("intermediates", ["per_example", "mean"])
def test_cost_from_logits_is_exact_where_AL_rounds_to_1(send, cost, intermediates):
    """The ZL form keeps full relative precision at |Z| ~ 40: every entry of cost, dAL and dZL to 1e-12 relative
    and no absolute floor (dZL = -sigmoid(-40) = -4.2e-18 is not 0)."""
    ZL, Y = SATURATED[cost]
    case = so.CostCase(0, cost, "ZL", ZL, Y, "matrix", so.CANONICAL[cost], False, False, intermediates)
    status, body = send("/v1/cost", case.body())
    assert status == 200, body
    assert (so.as_array(body["AL"]) == 1.0).any(), "the case must saturate"
    so.check_cost(case, body, rtol=1e-12, floor=0.0)
    dZL = so.as_array(body["dZL"])
    assert (np.abs(dZL) < 1e-16).any() and (dZL != 0).all()


# --- POST /v1/optimizer-step --------------------------------------------------------------------------------

RULES = [(o, c) for o in OPTIMIZERS for c in CONVENTIONS]


def _optimizer_cases(optimizer: str, convention: str) -> list[so.OptimizerCase]:
    return [so.random_optimizer_case(seed, optimizer, convention) for seed in range(N_CASES)]


@pytest.mark.parametrize("optimizer,convention", RULES)
def test_optimizer_step_matches_torch(send, optimizer, convention):
    _run(send, "/v1/optimizer-step", _optimizer_cases(optimizer, convention), so.check_optimizer)


@pytest.mark.parametrize("optimizer,convention", RULES)
def test_optimizer_cases_cover_the_contract(optimizer, convention):
    cases = _optimizer_cases(optimizer, convention)
    rule = OPTIMIZERS[optimizer].rules[convention]
    assert set(so.DEFAULTS[(optimizer, convention)]) == set(rule.defaults), "the oracle's defaults are the rule's"
    for name in rule.defaults:
        assert any(name in c.hyper for c in cases) and any(name not in c.hyper for c in cases)
    if rule.state:
        assert any(c.state is None for c in cases) and any(c.state is not None for c in cases)
    assert {(c.decay or {}).get("kind") for c in cases} == {None, "inverse_time", "scheduled"}
    assert any(c.decay and c.decay["kind"] == "scheduled" and "time_interval" not in c.decay for c in cases)
    assert {len(P.shape) for c in cases for P in c.params.values()} == {1, 2, 3, 4}
    if optimizer == "adam" and convention == "cs231n":
        assert {c.t is None for c in cases} == {True, False} and any(c.t == 0 for c in cases)

"""POST /v1/gradients on random image networks against the torch float64 oracle (tests/oracle_images.py).

Every returned key (cost, AL, every parameter's gradient, every dZ and dA, dA0, the caches when asked and the
running statistics) must match elementwise within |got - want| <= 1e-10 |want| + 1e-13, as tests/test_oracle.py
asks of dense networks, in both image layouts and both layouts, with every shape as the wire holds it.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.oracle import as_array, assert_close
from tests.oracle_images import IMAGE_LAYOUTS, random_image_case

N_SEEDS = 208
RTOL, ATOL = 1e-10, 1e-13


def _close(got, want, name: str) -> None:
    assert_close(got, want, name, RTOL, ATOL)


def check_response(case, body: dict) -> None:
    want = case.expected()
    assert body["warnings"] == []
    _close(body["cost"], want["cost"], "cost")
    _close(body["AL"], want["AL"], "AL")
    assert set(body["gradients"]) == set(want["gradients"])
    for key, value in want["gradients"].items():
        assert as_array(body["gradients"][key]).shape == value.shape, f"{key} shape"
        _close(body["gradients"][key], value, key)
    if case.include_caches:
        assert set(body["caches"]) == set(want["caches"])
        for key, value in want["caches"].items():
            _close(body["caches"][key], value, key)
    if "state" in want:
        assert set(body["state"]) == set(want["state"])
        for l, stats in want["state"].items():
            for key, value in stats.items():
                assert as_array(body["state"][l][key]).shape == np.shape(value), f"state {l} {key} shape"
                _close(body["state"][l][key], value, f"state {l} {key}")
    else:
        assert "state" not in body


@pytest.mark.parametrize("seed", range(N_SEEDS))
def test_random_image_network_matches_torch(post, seed):
    case = random_image_case(seed)
    status, body = post(case.request())
    assert status == 200, body
    check_response(case, body)


def test_the_cases_cover_the_issue():
    """Both image layouts, every kind, both tie policies on windows that hold ties, rectangular images and
    kernels, strides and padding, m = 1 upwards, both ways of sending b and gamma."""
    cases = [random_image_case(s) for s in range(N_SEEDS)]
    assert {c.image_layout for c in cases} == set(IMAGE_LAYOUTS)
    kinds = {spec["type"] for c in cases for spec in c.layers}
    assert kinds == {"conv2d", "maxpool2d", "avgpool2d", "flatten", "spatial_batchnorm", "groupnorm", "dense"}
    assert any(c.m == 1 for c in cases) and max(c.m for c in cases) >= 5
    assert any(c.X.shape[2] != c.X.shape[3] for c in cases)
    convs = [spec for c in cases for spec in c.layers if spec["type"] == "conv2d"]
    assert any(spec["params"]["W"].shape[2] != spec["params"]["W"].shape[3] for spec in convs)
    assert any(spec["hyper"].get("stride", 1) not in (1, [1, 1]) for spec in convs)
    assert any(spec["hyper"].get("pad", 0) not in (0, [0, 0]) for spec in convs)
    assert {spec["sent"]["b"] for spec in convs} >= {(spec["params"]["b"].size,) for spec in convs[:1]}
    assert any(len(spec["sent"]["b"]) == 4 for spec in convs)
    pools = [(c, spec) for c in cases for spec in c.layers if spec["type"] == "maxpool2d"]
    assert {spec["hyper"]["ties"] for _, spec in pools} == {"first", "all"}
    tied = {spec["hyper"]["ties"] for c, spec in pools if c.extra["ties"] and c.layers[0] is spec}
    assert tied == {"first", "all"}, "both policies on pooling windows of integer-valued X"
    assert any(c.masks is not None for c in cases) and any(c.include_caches for c in cases)
    assert any(spec.get("hyper", {}).get("mode") == "test" for c in cases for spec in c.layers)

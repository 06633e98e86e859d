"""service.engine.costs: each cost's ``fused_outputs`` is bit for bit its loss, dA and fused dZ, on ordinary,
saturated and signed-zero logits and under both scales (the network uses it in place of the three)."""

from __future__ import annotations

import numpy as np
import pytest

from service.engine import COSTS, activations

FUSED = [name for name, unit in COSTS.items() if unit.fused_outputs is not None]


def _logits(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    Z = rng.standard_normal((n, 9)) * np.array([1, 1, 30, 300, 800, 1e4, 1, 1, 1])
    Z[0, 6:] = [0.0, -0.0, 1e-320]
    return Z


def _labels(name: str, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed + 1)
    if name == "binary_cross_entropy":
        return (rng.random((n, 9)) < 0.5).astype(np.float64)
    Y = np.zeros((n, 9))
    Y[rng.integers(0, n, 9), np.arange(9)] = 1.0
    return Y


def test_the_canonical_pairs_have_fused_outputs():
    assert {"binary_cross_entropy", "categorical_cross_entropy"} <= set(FUSED)


@pytest.mark.parametrize("name", FUSED)
@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("scale", [1.0, 1.0 / 9])
def test_fused_outputs_are_the_three_functions_bit_for_bit(name, seed, scale):
    unit = COSTS[name]
    n = 1 if name == "binary_cross_entropy" else 4
    Z, Y = _logits(n, seed), _labels(name, n, seed)
    A = activations.get(unit.fused_activation).forward(Z, 0.0)
    with np.errstate(over="ignore", invalid="ignore"):
        fused = unit.fused_outputs(Z, A, Y, scale)
        apart = (unit.loss(Z, A, Y), unit.dA(Z, A, Y, scale), unit.fused_dZ(Z, A, Y))
    for got, want in zip(fused, apart):
        assert got.shape == want.shape and got.tobytes() == want.tobytes()

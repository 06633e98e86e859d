"""service.engine.network's finiteness checks where a kind's bound replaces a reduction (dense's dA0 bound on a
wide input): the same results and the same overflow named as with the full check, and the bound really used."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from service.engine import NumericalOverflow, compute, dense
from service.engine.kinds import KINDS
from service.engine.kinds import dense as dense_kind


def _wide(big_w: float, w2: float, seed: int = 0):
    """[300, 1, 1] with a linear hidden unit: W1[0, 0] = big_w reads an all-zero input row (Z1 stays small), so
    dA0[0] = W1[0, 0] dZ1 is as large as big_w times dZ1 ~ w2."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((300, 3)) * 1e-3
    X[0] = 0.0
    W1 = rng.standard_normal((1, 300)) * 1e-3
    W1[0, 0] = big_w
    layers = [dense(W1, np.zeros(1), "linear"), dense(np.array([[w2]]), np.zeros(1), "sigmoid")]
    return X, np.array([[1.0, 0.0, 1.0]]), layers


@pytest.fixture
def without_bound(monkeypatch):
    """The dense kind without its bound: every finiteness reduction runs."""
    def disable():
        monkeypatch.setitem(KINDS, "dense", dataclasses.replace(KINDS["dense"], input_grad_bound=None))
    return disable


def _outcome(X, Y, layers):
    try:
        res = compute(X, Y, layers, "binary_cross_entropy")
    except NumericalOverflow as e:
        return ("overflow", e.quantity, e.layer, e.stage)
    return ("ok", res.cost, res.dA[0].tobytes(), [g["W"].tobytes() for g in res.grads])


@pytest.mark.parametrize("big_w, w2", [(1e300, 1e10), (1e290, 1e10), (1.0, 1.0), (1e300, 1e-300)])
def test_the_bound_gives_the_full_checks_outcome(big_w, w2, without_bound):
    X, Y, layers = _wide(big_w, w2)
    with_bound = _outcome(X, Y, layers)
    without_bound()
    assert _outcome(X, Y, layers) == with_bound


def test_dA0_overflow_is_named_with_the_bound():
    X, Y, layers = _wide(1e300, 1e10)
    with pytest.raises(NumericalOverflow) as err:
        compute(X, Y, layers, "binary_cross_entropy")
    assert (err.value.quantity, err.value.layer, err.value.stage) == ("dA0", 1, "backward pass")


def test_the_bound_is_used_on_a_wide_input_and_not_on_a_narrow_one(monkeypatch):
    calls = []
    real = dense_kind.input_grad_bound

    def spy(dZ, cache):
        calls.append(real(dZ, cache))
        return calls[-1]

    monkeypatch.setitem(KINDS, "dense", dataclasses.replace(KINDS["dense"], input_grad_bound=spy))
    compute(*_wide(1.0, 1.0), "binary_cross_entropy")
    assert len(calls) == 1 and calls[0] is not None and 0 < calls[0] < 1e300
    rng = np.random.default_rng(1)
    narrow = [dense(rng.standard_normal((4, 2)), np.zeros(4), "relu"), dense(rng.standard_normal((1, 4)), np.zeros(1),
                                                                            "sigmoid")]
    compute(rng.standard_normal((2, 4)), np.array([[1.0, 0.0, 1.0, 0.0]]), narrow, "binary_cross_entropy")
    assert calls[1] is None  # reading W and dZ twice would cost more than reading dA0 once

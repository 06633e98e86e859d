"""Every key of a network's quantities, built and parsed here and nowhere else.

Layers are numbered 1..L, as in the course: ``A0`` is the input X, ``Z{l}`` a layer's output before its
activation, ``A{l}`` after it (and after dropout), ``AL`` the output.

    cost, AL                      the cost J and the output
    d<param><l>                   the gradient of a layer's parameter: dW1, db1, dgamma2, dbeta2
    dZ<l>, dA<l>                  dJ/dZ_l, dJ/dA_l (dA0: with respect to X)
    Z<l>, A<l>                    the caches
    <state><l>                    a layer's updated running statistics: running_mean2, running_var2

Which parameter and state names exist is the layer kinds' business (``kinds``); this module is told them.
``Key.per_example`` says whether an array follows the request's layout ((units, m) features first).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

COST, OUTPUT = "cost", "AL"
# Quantities whose arrays are (units, m) per example (or images (m, ...)): they follow the request's layouts.
PER_EXAMPLE = frozenset({"AL", "dZ", "dA", "Z", "A"})

_LAYERED = re.compile(r"^([A-Za-z_]+?)([0-9]+)$")


@dataclass(frozen=True)
class Key:
    """A parsed key: ``quantity`` is cost, AL, grad, dZ, dA, Z, A or state; ``name`` the parameter or state name
    (grad, state); ``layer`` 1..L (0 for dA0), None for cost and AL."""

    quantity: str
    name: str = ""
    layer: int | None = None

    @property
    def per_example(self) -> bool:
        return self.quantity in PER_EXAMPLE

    def __str__(self) -> str:
        if self.quantity in (COST, OUTPUT):
            return self.quantity
        if self.quantity == "grad":
            return grad(self.name, self.layer)
        if self.quantity == "state":
            return state(self.name, self.layer)
        return f"{self.quantity}{self.layer}"


def grad(param: str, layer: int) -> str:
    """dW2, dgamma3."""
    return f"d{param}{layer}"


def dZ(layer: int) -> str:
    return f"dZ{layer}"


def dA(layer: int) -> str:
    return f"dA{layer}"


def Z(layer: int) -> str:
    return f"Z{layer}"


def A(layer: int) -> str:
    return f"A{layer}"


def state(name: str, layer: int) -> str:
    """running_mean2."""
    return f"{name}{layer}"


@lru_cache(maxsize=8192)
def parse(key: str, params: frozenset[str], states: frozenset[str] = frozenset()) -> Key:
    """The Key of ``key`` given the parameter and state names that exist; ValueError for anything else."""
    if key in (COST, OUTPUT):
        return Key(key)
    match = _LAYERED.match(key)
    if match is not None:
        head, layer = match.group(1), int(match.group(2))
        if head in ("dZ", "dA", "Z", "A"):
            return Key(head, layer=layer)
        if head.startswith("d") and head[1:] in params:
            return Key("grad", head[1:], layer)
        if head in states:
            return Key("state", head, layer)
    raise ValueError(f"not a key: {key!r}")

"""The numeric engine: numpy and the standard library only (no Flask, no pydantic)."""

from service.engine.activations import ACTIVATIONS, Activation
from service.engine.costs import COSTS, Cost, one_hot
from service.engine.network import (INTERMEDIATES, Dropout, Layer, NumericalOverflow, Result, compute,
                                    forward)

__all__ = ["ACTIVATIONS", "Activation", "COSTS", "Cost", "one_hot", "INTERMEDIATES", "Dropout", "Layer",
           "NumericalOverflow", "Result", "compute", "forward"]

"""The numeric engine: numpy and the standard library only (no Flask, no pydantic)."""

from service.engine import keys
from service.engine.activations import ACTIVATIONS, Activation
from service.engine.costs import COSTS, Cost, one_hot
from service.engine.kinds import KINDS, Kind, Layouts
from service.engine.network import (INTERMEDIATES, Dropout, Layer, NumericalOverflow, Result, compute, dense,
                                    forward)

__all__ = ["ACTIVATIONS", "Activation", "COSTS", "Cost", "one_hot", "INTERMEDIATES", "Dropout", "KINDS", "Kind",
           "Layer", "Layouts", "NumericalOverflow", "Result", "compute", "dense", "forward", "keys"]

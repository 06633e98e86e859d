"""Layer kinds: one module per kind, each registering one ``Kind`` (base.py) in ``KINDS``.

Adding a kind is one module here (imported below, in the order /v1 and OpenAPI list them) and its tests.
"""

# The order of registration is the order of /v1's list and of the parameters' keys (dW, db, dgamma, dbeta).
from service.engine.kinds import dense  # noqa: F401,I001  (each registers itself)
from service.engine.kinds import batchnorm  # noqa: F401
from service.engine.kinds import layernorm  # noqa: F401
from service.engine.kinds import conv2d  # noqa: F401
from service.engine.kinds import maxpool2d  # noqa: F401
from service.engine.kinds import avgpool2d  # noqa: F401
from service.engine.kinds import flatten  # noqa: F401
from service.engine.kinds import spatial_batchnorm  # noqa: F401
from service.engine.kinds import groupnorm  # noqa: F401
from service.engine.kinds.base import (KINDS, REQUIRED, Checked, Formulas, Hyper, InputStory, Kind, Layouts,
                                       Mistake, Param,
                                       Price, ShapeError, State, param_names, state_names)

__all__ = ["KINDS", "REQUIRED", "Checked", "Formulas", "Hyper", "InputStory", "Kind", "Layouts", "Mistake", "Param", "Price",
           "ShapeError", "State", "param_names", "state_names"]

"""The wire contract: pydantic models with validation of shapes and values. No math here."""

from schemas.errors import ErrorItem, InvalidRequest, Problem, from_validation_error
from schemas.gradients import GradientRequest, GradientResponse, Limits, Prepared, prepare, to_wire

__all__ = ["ErrorItem", "InvalidRequest", "Problem", "from_validation_error", "GradientRequest", "GradientResponse",
           "Limits", "Prepared", "prepare", "to_wire"]

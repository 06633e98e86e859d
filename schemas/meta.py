"""Models of the service's own routes: health and metadata."""

from __future__ import annotations

from typing import Optional

from pydantic import BaseModel, Field


# GET /healthz and GET /readyz.
class Health(BaseModel):
    status: str = Field(description="`ok` when healthy.")
    checks: dict[str, str] = Field(default_factory=dict, description="Each readiness check and its outcome.")


# One registered activation.
class ActivationInfo(BaseModel):
    name: str
    formula: str
    derivative_formula: str
    output_only: bool


# One registered cost.
class CostInfo(BaseModel):
    name: str
    output_activations: Optional[list[str]] = Field(description="Output activations it pairs with; null: any.")
    fused_activation: str = Field(description="The output activation for which dZ_L = A_L - Y exactly.")
    formula: str
    dA_formula: str
    label_domain: str


# GET /v1: what this deployment supports and allows.
class ServiceInfo(BaseModel):
    name: str
    version: str
    activations: list[ActivationInfo]
    costs: list[CostInfo]
    layouts: list[str]
    intermediates: list[str]
    limits: dict[str, int] = Field(description="Active per-request limits, body bytes included.")
    api_keys_required: bool

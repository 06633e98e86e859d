"""Configuration: one settings object, read from GRADIENT_* environment variables."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from schemas.gradients import Limits


class Settings(BaseSettings):
    """Every setting of the service; ``GRADIENT_MAX_BODY_BYTES=1048576`` sets ``max_body_bytes``."""

    model_config = SettingsConfigDict(env_prefix="GRADIENT_", extra="forbid")

    max_body_bytes: int = Field(default=32 * 1024 * 1024, gt=0, description="Largest request body; larger is a 413.")
    max_layers: int = Field(default=Limits.max_layers, gt=0, description="Most layers in one network.")
    max_units: int = Field(default=Limits.max_units, gt=0, description="Most units in one layer (and input features).")
    max_examples: int = Field(default=Limits.max_examples, gt=0, description="Most examples m in one request.")
    max_elements: int = Field(default=Limits.max_elements, gt=0, description="Most numbers in one request's arrays.")
    max_work: int = Field(default=Limits.max_work, gt=0,
                          description="Most multiply-adds of one forward pass: sum over layers of n_l * n_(l-1) * m.")

    def limits(self) -> Limits:
        return Limits(max_layers=self.max_layers, max_units=self.max_units, max_examples=self.max_examples,
                      max_elements=self.max_elements, max_work=self.max_work)

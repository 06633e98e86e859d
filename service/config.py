"""Configuration: one settings object, read from GRADIENT_* environment variables (pydantic-settings).

Imports no numpy and no Flask: gunicorn.conf.py reads it in the master process before any worker loads BLAS.
"""

from __future__ import annotations

import os
from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from schemas.limits import Limits
from schemas.policy import Policy, check_unique_keys

_DEFAULTS = Limits()


class ConfigError(SystemExit):
    """Invalid configuration: raised at start, with one line per bad setting."""


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class Settings(BaseSettings):
    """Every setting of the service. Each field is the environment variable GRADIENT_<NAME>."""

    # An empty variable means "not set": compose passes every setting as ${GRADIENT_X:-}, and JSON settings such as
    # GRADIENT_POLICIES cannot have a default written inside ${...} (a "}" in it would end the substitution).
    model_config = SettingsConfigDict(env_prefix="GRADIENT_", extra="forbid", env_ignore_empty=True)

    # --- server (read by gunicorn.conf.py) ---
    bind: str = Field(default="127.0.0.1:8000", description="Address gunicorn listens on.")
    workers: int | None = Field(default=None, ge=1, le=64,
                                description="gunicorn worker processes; default: one per CPU core.")
    threads: int = Field(default=1, ge=1, le=64, description="Threads per worker (gthread when > 1).")
    blas_threads: int | None = Field(default=None, ge=1, le=64,
                                     description="BLAS threads per worker; default: cores // (workers * threads), at least 1.")
    timeout: int = Field(default=120, ge=1, description="Seconds a worker may spend on one request before it is restarted.")
    graceful_timeout: int = Field(default=30, ge=1, description="Seconds to finish in-flight requests on shutdown.")
    max_requests: int = Field(default=20000, ge=0,
                              description="Restart a worker after this many requests (0: never); a worker's boot "
                                          "costs about half a second of CPU, so not too often.")
    max_requests_jitter: int = Field(default=2000, ge=0, description="Random extra requests before that restart.")
    log_level: Literal["debug", "info", "warning", "error", "critical"] = Field(default="info", description="Log level.")

    # --- slow clients and shutdown (read by gunicorn.conf.py and service/worker.py) ---
    header_timeout: int = Field(default=10, ge=1, le=3600,
                                description="Seconds for a request line and headers to arrive; then 408 (or the "
                                            "connection is closed when nothing arrived).")
    body_timeout: int = Field(default=60, ge=1, le=3600,
                              description="Seconds for a request body to arrive (then 408), and for the client to take "
                                          "each write of the response.")
    drain_seconds: int = Field(default=0, ge=0, le=3600,
                               description="On SIGTERM, seconds during which /readyz answers 503 while requests are "
                                           "still served, before gunicorn stops accepting.")

    # --- HTTP ---
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Browser origins allowed by CORS, comma-separated; none by default.")
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list, description="Bearer keys for /v1/... routes, comma-separated; none: the service is open.")
    metrics_require_key: bool = Field(default=False, description="Whether /metrics also needs an API key.")

    # --- grading policies and rate limits (schemas/policy.py; README "Threat model") ---
    policies: dict[str, Policy] = Field(
        default_factory=dict, description="Named policies as JSON, each with its `keys` and limits: "
                                          '{"strict": {"keys": ["..."], "reveal": false, "max_submissions": 1}}.')
    default_policy: Policy = Field(
        default_factory=Policy, description="The policy (JSON, without keys) of the keys in GRADIENT_API_KEYS and of "
                                            "anonymous use when no key is configured; default: no limit.")
    rate_limit_storage: str = Field(
        default="memory://", description="Where rate-limit counters live: memory:// (per worker process) or "
                                         "redis://host:port/db (shared by every worker and replica).")

    # --- per-request limits ---
    max_body_bytes: int = Field(default=32 * 1024 * 1024, gt=0, description="Largest request body; larger is a 413.")
    max_layers: int = Field(default=_DEFAULTS.max_layers, gt=0, description="Most layers in one network.")
    max_units: int = Field(default=_DEFAULTS.max_units, gt=0, description="Most units in one layer (and input features).")
    max_examples: int = Field(default=_DEFAULTS.max_examples, gt=0, description="Most examples m in one request.")
    max_elements: int = Field(default=_DEFAULTS.max_elements, gt=0, description="Most numbers in one request's arrays.")
    max_work: int = Field(default=_DEFAULTS.max_work, gt=0,
                          description="Most multiply-adds of one forward pass: sum over layers of n_l * n_(l-1) * m.")
    max_activations: int = Field(default=_DEFAULTS.max_activations, gt=0,
                                 description="Most activation entries: sum over l = 0..L of n_l * m (bounds memory and "
                                             "response size).")
    max_image_size: int = Field(default=_DEFAULTS.max_image_size, gt=0,
                                description="Largest height or width of an image: X's or any layer's output.")
    max_kernel_size: int = Field(default=_DEFAULTS.max_kernel_size, gt=0,
                                 description="Largest height or width of a convolution kernel or pooling window.")
    max_stored: int = Field(default=_DEFAULTS.max_stored, gt=0,
                            description="Most numbers one forward and backward pass keeps in memory, as each layer "
                                        "kind prices it (caches, im2col buffers, gradients).")

    @field_validator("cors_origins", "api_keys", mode="before")
    @classmethod
    def _split_commas(cls, value):
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("api_keys")
    @classmethod
    def _keys_long_enough(cls, keys: list[SecretStr]) -> list[SecretStr]:
        for i, key in enumerate(keys):
            if len(key.get_secret_value()) < 16:
                raise ValueError(f"API key #{i + 1} is shorter than 16 characters")
        return keys

    @field_validator("default_policy")
    @classmethod
    def _default_has_no_keys(cls, policy: Policy) -> Policy:
        if policy.keys:
            raise ValueError("the default policy has no keys of its own: list keys in GRADIENT_POLICIES")
        return policy

    @field_validator("policies")
    @classmethod
    def _one_policy_per_key(cls, policies: dict[str, Policy], info: ValidationInfo) -> dict[str, Policy]:
        check_unique_keys(info.data.get("api_keys", []), policies)
        return policies

    @model_validator(mode="after")
    def _defaults_from_cores(self) -> "Settings":
        cores = _cpu_count()
        if self.workers is None:
            self.workers = cores
        if self.blas_threads is None:
            self.blas_threads = max(1, cores // (self.workers * self.threads))
        return self

    def limits(self) -> Limits:
        return Limits(max_layers=self.max_layers, max_units=self.max_units, max_examples=self.max_examples,
                      max_elements=self.max_elements, max_work=self.max_work,
                      max_activations=self.max_activations, max_image_size=self.max_image_size,
                      max_kernel_size=self.max_kernel_size, max_stored=self.max_stored)

    @classmethod
    def load(cls, **overrides) -> "Settings":
        """Settings from the environment and ``overrides``; ConfigError (exit status 2) names each bad setting."""
        try:
            return cls(**overrides)
        except ValidationError as exc:
            lines = []
            for err in exc.errors(include_url=False):
                name = str(err["loc"][0]) if err["loc"] else "?"
                inside = ".".join(str(part) for part in err["loc"][1:])  # e.g. a policy's field
                lines.append(f"  GRADIENT_{name.upper()}{f' ({inside})' if inside else ''}: {err['msg']}")
            message = "invalid configuration:\n" + "\n".join(lines)
            raise ConfigError(message) from None

"""Grading policies: what a caller holding one API key may do, set by the operator (GRADIENT_POLICIES,
GRADIENT_DEFAULT_POLICY in ``service.config``), never by the request.

A policy bounds what a client that controls the submissions (and perhaps the other grading fields) can learn
about a reference it does not see: whether it may ask for ``reveal``, which tolerances it may choose, how many
submissions one request may carry, how much feedback a wrong key gets, and how many requests it may send. The
README's *Threat model* says how many requests a search for a reference value needs under each setting.

Imports pydantic and ``limits`` (the rate-limit string parser) only: the gunicorn master reads it with the
settings.
"""

from __future__ import annotations

import hashlib
from typing import Literal, Optional

import limits
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

# The service's own ceiling on a batch (schemas.grading imports it from here).
MAX_SUBMISSIONS = 500


class Policy(BaseModel):
    """One policy. Every field's default is today's open behaviour, so ``Policy()`` limits nothing."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    keys: list[SecretStr] = Field(default_factory=list, description="API keys under this policy (at least 16 "
                                  "characters each). Only in GRADIENT_POLICIES; these keys authenticate like those "
                                  "of GRADIENT_API_KEYS.")
    reveal: bool = Field(default=True, description="Whether a request may set `reveal: true` (403 otherwise).")
    feedback: Literal["errors", "status"] = Field(
        default="errors", description="What an unrevealed wrong key reports: `errors` (power-of-ten errors, the "
                                      "count of wrong entries, the worst entry, diagnoses) or `status` (the status "
                                      "and the diagnosis only).")
    max_submissions: int = Field(default=MAX_SUBMISSIONS, ge=1, le=MAX_SUBMISSIONS,
                                 description="Most submissions in one request (403 over it).")
    min_rtol: Optional[float] = Field(default=None, ge=0, description="Smallest `rtol` a request may send.")
    max_rtol: Optional[float] = Field(default=None, ge=0, description="Largest `rtol` a request may send.")
    min_atol: Optional[float] = Field(default=None, ge=0, description="Smallest `atol` a request may send.")
    max_atol: Optional[float] = Field(default=None, ge=0, description="Largest `atol` a request may send.")
    rate_limit: Optional[str] = Field(default=None, description="Requests per key to /v1 and /v2 routes, in "
                                      "flask-limiter's notation (`60/minute`, `1000 per day`, `10/second;500/hour`); "
                                      "none: no limit.")
    routes: Optional[list[str]] = Field(default=None, description="The /v1 and /v2 paths the key may call (e.g. "
                                        "[\"/v1/grade\"]); none: every one.")

    @field_validator("keys")
    @classmethod
    def _keys_long_enough(cls, keys: list[SecretStr]) -> list[SecretStr]:
        for i, key in enumerate(keys):
            if len(key.get_secret_value()) < 16:
                raise ValueError(f"key #{i + 1} is shorter than 16 characters")
        return keys

    @field_validator("rate_limit")
    @classmethod
    def _parses(cls, value: Optional[str]) -> Optional[str]:
        if value is None:
            return None
        try:
            limits.parse_many(value)
        except ValueError:
            raise ValueError(f"{value!r} is not a rate limit: write e.g. '60/minute' or '10/second;500/hour'") from None
        return value

    @model_validator(mode="after")
    def _ranges(self) -> "Policy":
        for name in ("rtol", "atol"):
            low, high = getattr(self, f"min_{name}"), getattr(self, f"max_{name}")
            if low is not None and high is not None and low > high:
                raise ValueError(f"min_{name} ({low:g}) is above max_{name} ({high:g})")
        return self

    def tolerance_bounds(self, name: str) -> tuple[float, float]:
        """(lowest, highest) allowed value of ``rtol`` or ``atol``."""
        low, high = getattr(self, f"min_{name}"), getattr(self, f"max_{name}")
        return (0.0 if low is None else low), (float("inf") if high is None else high)


def key_id(key: str) -> str:
    """A stable, non-secret name of a key for the rate-limit store (shared by every replica): no key is stored."""
    return hashlib.sha256(key.encode()).hexdigest()[:24]


def check_unique_keys(api_keys: list[SecretStr], policies: dict[str, Policy]) -> None:
    """ValueError when one key is listed twice (in GRADIENT_API_KEYS or any policy): its policy would be ambiguous."""
    seen: dict[str, str] = {}
    listed = [("GRADIENT_API_KEYS", k) for k in api_keys]
    listed += [(f"policy {name!r}", k) for name, p in policies.items() for k in p.keys]
    for where, key in listed:
        value = key.get_secret_value()
        if value in seen:
            raise ValueError(f"a key of {where} is also listed in {seen[value]}: each key has one policy")
        seen[value] = where

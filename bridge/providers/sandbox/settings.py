"""The sandbox's settings: none is required, so `bridge dev` works with no provider account."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, SecretStr

from bridge.providers.base import HttpUrl, ProviderSettings, Secret, WholeNumber


class SandboxSettings(ProviderSettings):
    secret: Secret = SecretStr("sandbox-only-secret-not-for-production-use")   # signs join tokens (HS256)
    join_base: HttpUrl = "http://127.0.0.1:8000/sandbox"
    token_ttl_s: Annotated[WholeNumber, Field(ge=1)] = 3600
    # Simulated provider latency, for plugin developers and for crash tests with jobs in flight.
    delay_s: Annotated[float, Field(ge=0)] = 0.0

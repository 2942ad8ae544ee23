"""What every provider's webhook receiver (bridge/providers/<kind>/receiver.py) gives the intake.

A receiver checks that a request really comes from the provider (its signature or its fixed
headers) and turns the body into a `Notice`: the provider's idempotency key, the room it names, and
the provider-neutral fact the attendance ledger or the recording pipeline acts on.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bridge.providers.base import ProviderSettings
from bridge.schema.provider_events import Fact


class ReceiverAuthError(Exception):
    """The request does not carry the provider's proof; the message names what is wrong (never a secret)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


@dataclass(frozen=True)
class Notice:
    event_id: str                # the provider's idempotency key: a repeat of it is a duplicate
    type: str                    # the provider's own event type
    rooms: tuple[str, ...]       # the provider's names for the room (its id, the bridge's room name)
    fact: Fact | None            # None: a type the bridge does not act on (accepted, ignored)


class Receiver:
    """Built once per web process from the provider's checked settings."""

    def __init__(self, name: str, settings: ProviderSettings) -> None:
        self.name = name
        self.settings = settings

    def configured(self) -> bool:
        """Whether the provider's table has the settings that let its webhooks in."""
        raise NotImplementedError

    def verify(self, headers: Mapping[str, str], body: bytes, now: float) -> None:
        """Raises ReceiverAuthError unless the request carries the provider's proof over this exact body."""
        raise NotImplementedError

    def notice(self, document: dict[str, Any]) -> Notice:
        """The body as a Notice; raises pydantic's ValidationError for a body of the wrong shape."""
        raise NotImplementedError

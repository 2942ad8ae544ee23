"""The canonical event format: validation and normalisation through bridge.schema.events.

Moodle events are turned into this shape and validated by the same code, so workers only ever
see one shape.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from bridge.schema.events import CANONICAL, EVENT_TYPES, FROM_SOURCE, INTERNAL_TYPES, first_problem, iso
from bridge.sources.base import InvalidEvent, Parsed

if TYPE_CHECKING:
    from bridge.config import SourceConfig

__all__ = ["EVENT_TYPES", "INTERNAL_TYPES", "iso", "parse", "validate"]


def validate(item: Any, default_provider: str, *, internal: bool = False) -> dict[str, Any]:
    """Return the normalised canonical event or raise InvalidEvent naming the field path."""
    if not isinstance(item, dict):
        raise InvalidEvent("", f"an event must be a JSON object, got {type(item).__name__}")
    try:
        event = (FROM_SOURCE if internal else CANONICAL).validate_python(item)
    except ValidationError as exc:
        raise InvalidEvent(*first_problem(exc, item)) from None
    return event.stored(default_provider, item.get("data") or {})


def parse(source: SourceConfig, item: Any) -> Parsed:
    event = validate(item, source.provider)
    raw = {k: v for k, v in item.items() if k != "token"}
    return Parsed(event_id=event["id"], raw=raw, event=event)

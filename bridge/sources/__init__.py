"""Inbound formats: one module per format turns a raw JSON item into a canonical event.

Adding a format is one module exposing `parse(source, item) -> Parsed` plus a line in FORMATS.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bridge.config import SourceConfig


class InvalidEvent(Exception):
    """Schema error: `path` is the JSON path of the offending field (e.g. `[3].lesson.id`)."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path or '<body>'}: {message}")
        self.path = path
        self.message = message

    def at(self, prefix: str) -> InvalidEvent:
        return InvalidEvent(f"{prefix}{'.' if self.path and not self.path.startswith('[') else ''}{self.path}",
                            self.message)


@dataclass(frozen=True)
class Parsed:
    event_id: str
    raw: dict[str, Any]                   # the item as received, secrets removed
    event: dict[str, Any] | None          # canonical form; None when the source ignores the event
    ignored_reason: str | None = None


def _moodle(source: SourceConfig, item: Any) -> Parsed:
    from bridge.sources import moodle
    return moodle.parse(source, item)


def _canonical(source: SourceConfig, item: Any) -> Parsed:
    from bridge.sources import canonical
    return canonical.parse(source, item)


FORMATS: dict[str, Callable[[SourceConfig, Any], Parsed]] = {
    "moodle": _moodle,
    "canonical": _canonical,
}

"""What every inbound format returns or raises."""

from __future__ import annotations

from typing import Any, NamedTuple


class InvalidEvent(Exception):
    """Schema error: `path` is the JSON path of the offending field (e.g. `[3].lesson.id`)."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path or '<body>'}: {message}")
        self.path = path
        self.message = message

    def at(self, prefix: str) -> InvalidEvent:
        return InvalidEvent(f"{prefix}{'.' if self.path and not self.path.startswith('[') else ''}{self.path}",
                            self.message)


class Parsed(NamedTuple):   # a NamedTuple: built for every event on the accept path
    event_id: str
    raw: dict[str, Any]                   # the item as received, secrets removed
    event: dict[str, Any] | None          # canonical form; None when the source ignores the event
    ignored_reason: str | None = None

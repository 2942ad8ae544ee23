"""One event-log entry as the operator's tools read it, and the ids and times that locate entries."""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from bridge.routing import event_ref

_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|min|h|d|w)\s*$", re.IGNORECASE)
_UNITS = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_time(value: str, now: datetime | None = None) -> datetime:
    """An ISO 8601 time (UTC when no zone is given) or a relative one such as `2h`, `30m`, `7d`."""
    now = now or datetime.now(UTC)
    relative = _RELATIVE.match(value)
    if relative:
        try:
            return now - timedelta(seconds=float(relative.group(1)) * _UNITS[relative.group(2).lower()])
        except (OverflowError, ValueError):
            raise ValueError(f"{value!r} reaches back before the year 1") from None
    try:
        moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ValueError(f"{value!r} is neither an ISO 8601 time (2026-11-22T10:00:00Z) "
                         "nor a relative one (90s, 30m, 2h, 7d, 1w)") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def epoch_ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def entry_time(entry_id: str) -> datetime:
    return datetime.fromtimestamp(int(entry_id.split("-", 1)[0]) / 1000, UTC)


MAX_ID_PART = 2**64 - 1
_ENTRY_ID = re.compile(r"^(\d{1,20})-(\d{1,20})$")


def parse_entry_id(value: str) -> tuple[int, int]:
    """A stream entry id `<ms>-<seq>` as Redis accepts it; ValueError otherwise."""
    match = _ENTRY_ID.match(value)
    if not match or int(match.group(1)) > MAX_ID_PART or int(match.group(2)) > MAX_ID_PART:
        raise ValueError(f"{value!r} is not a log entry id (<ms>-<seq>)")
    return int(match.group(1)), int(match.group(2))


def new_replay_id() -> str:
    """Time-ordered and unique: `<ms hex><random hex>`."""
    return f"{int(time.time() * 1000):x}{secrets.token_hex(4)}"


@dataclass
class LogEvent:
    """One event-log entry (or one line of an export)."""

    id: str
    source: str
    received_at: str
    raw: Any
    canonical: dict[str, Any]
    entry_id: str | None = None
    jobs: list[str] = field(default_factory=list)
    replay_of: str | None = None
    replay: str | None = None

    @property
    def ref(self) -> str:
        return event_ref(self.source, self.id, self.replay)

    @property
    def type(self) -> str | None:
        return self.canonical.get("type")

    @property
    def lesson_id(self) -> str | None:
        return (self.canonical.get("lesson") or {}).get("id")

    @property
    def original_id(self) -> str:
        return self.replay_of or self.id

    @property
    def functions(self) -> list[str]:
        prefix = f"{self.ref}:"
        return [job[len(prefix):] if job.startswith(prefix) else job for job in self.jobs]

    def when(self) -> datetime | None:
        """When the bridge received it: the log entry's time, else the recorded received_at."""
        if self.entry_id:
            return entry_time(self.entry_id)
        try:
            return parse_time(self.received_at)
        except (ValueError, AttributeError):
            return None

    @classmethod
    def from_entry(cls, entry_id: bytes | str, fields: Mapping[bytes, bytes]) -> LogEvent:
        f = {k.decode(): v.decode() for k, v in fields.items()}
        return cls(id=f["id"], source=f["source"], received_at=f.get("received_at", ""),
                   raw=json.loads(f.get("raw") or "null"), canonical=json.loads(f.get("canonical") or "{}"),
                   entry_id=entry_id.decode() if isinstance(entry_id, bytes) else entry_id,
                   jobs=json.loads(f.get("jobs") or "[]"), replay_of=f.get("replay_of") or None,
                   replay=f.get("replay") or None)

    def summary(self) -> dict[str, Any]:
        return {"entry_id": self.entry_id, "id": self.id, "source": self.source, "type": self.type,
                "lesson_id": self.lesson_id, "received_at": self.received_at, "replay_of": self.replay_of,
                "replay": self.replay}

"""The current UTC time as ISO 8601 text, for log lines and received_at stamps.

Both are written for every request, and a datetime per call costs as much as the rest of a log line,
so the date and time are formatted once a second and only the microseconds per call.
"""

from __future__ import annotations

import time

_second = -1
_prefix = ""


def utc_now_iso() -> str:
    """E.g. 2026-11-25T01:45:07.187692Z (always with microseconds)."""
    global _second, _prefix
    now = time.time()
    second = int(now)
    if second != _second:
        _prefix, _second = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)), second
    return f"{_prefix}.{int((now - second) * 1_000_000):06d}Z"


def iso_from_ms(ms: int) -> str:
    """E.g. 2026-11-25T01:45:07.187000Z: a time kept in milliseconds, written as utc_now_iso writes it."""
    second, rest = divmod(ms, 1000)
    return f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(second))}.{rest * 1000:06d}Z"

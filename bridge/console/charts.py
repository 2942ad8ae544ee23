"""Geometry for the console's server-rendered SVG charts; the templates only draw what this computes."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from bridge.eventlog.entries import parse_time

LABEL_CHARS = 24                   # a participant's name in the timeline's left column


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    label: str
    value: int | float | None
    title: str


@dataclass(frozen=True)
class BarChart:
    width: int
    height: int
    bars: list[Bar]
    peak: float
    caption: str

    @property
    def baseline(self) -> int:
        return self.height - 18            # room under the bars for labels


def bar_chart(points: list[tuple[str, int | float | None]], caption: str, *, width: int = 640, height: int = 180,
              label_every: int = 1) -> BarChart:
    """One bar per point; a None value (unknown) draws no bar but keeps its place."""
    peak = max([v for _, v in points if v is not None] or [0]) or 1
    slot = width / max(1, len(points))
    bars = []
    usable = height - 18 - 14              # 14: room above the tallest bar for its value
    for index, (label, value) in enumerate(points):
        bar_height = (value or 0) / peak * usable
        bars.append(Bar(x=round(index * slot + slot * 0.1, 1), y=round(height - 18 - bar_height, 1),
                        width=round(slot * 0.8, 1), height=round(bar_height, 1),
                        label=label if index % label_every == 0 else "",
                        value=value, title=f"{label}: {'unknown' if value is None else value}"))
    return BarChart(width, height, bars, max([v for _, v in points if v is not None] or [0]), caption)


@dataclass(frozen=True)
class Span:
    x: float
    width: float
    title: str


@dataclass(frozen=True)
class TimelineRow:
    label: str
    y: float
    spans: list[Span]


@dataclass(frozen=True)
class Timeline:
    width: int
    height: int
    left: int
    rows: list[TimelineRow]
    start: str
    end: str


def attendance_timeline(report: dict[str, Any], now: datetime | None = None, *, width: int = 760,
                        row_height: int = 26, left: int = 180) -> Timeline | None:
    """One row per participant, one bar per interval, across the session (to now while it is open)."""
    participants = report.get("participants") or []
    if not participants or not report.get("started_at"):
        return None
    start = parse_time(report["started_at"])
    end = parse_time(report["ended_at"]) if report.get("ended_at") else (now or datetime.now(UTC))
    for person in participants:
        for _, left_at in person.get("intervals") or []:
            end = max(end, parse_time(left_at))
    total = max((end - start).total_seconds(), 1.0)
    plot = width - left - 10
    rows = []
    for index, person in enumerate(participants):
        spans = []
        for joined_at, left_at in person.get("intervals") or []:
            begin = (parse_time(joined_at) - start).total_seconds() / total * plot
            length = (parse_time(left_at) - parse_time(joined_at)).total_seconds() / total * plot
            spans.append(Span(round(left + begin, 1), round(max(length, 2), 1), f"{joined_at} → {left_at}"))
        who = str(person.get("name") or person.get("user_id") or "?")
        who = who if len(who) <= LABEL_CHARS else who[:LABEL_CHARS - 1] + "…"
        rows.append(TimelineRow(f"{who} ({person.get('role')})", index * row_height + 8, spans))
    shown = "%Y-%m-%d %H:%M:%S UTC"
    return Timeline(width, len(rows) * row_height + 30, left, rows, start.strftime(shown), end.strftime(shown))


def duration_label(seconds: float) -> str:
    """A histogram bound as people read it: 5ms, 250ms, 2.5s, 15m, 4h."""
    if seconds < 1:
        return f"{seconds * 1000:g}ms"
    if seconds < 60:
        return f"{seconds:g}s"
    if seconds < 3600:
        return f"{seconds / 60:g}m"
    return f"{seconds / 3600:g}h"

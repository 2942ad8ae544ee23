"""Inbound formats: one module per format turns a raw JSON item into a canonical event.

Adding a format is one module exposing `parse(source, item) -> Parsed` plus a line in FORMATS.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from bridge.sources import canonical, moodle
from bridge.sources.base import InvalidEvent, Parsed

if TYPE_CHECKING:
    from bridge.config import SourceConfig

__all__ = ["FORMATS", "InvalidEvent", "Parsed", "canonical", "moodle"]

FORMATS: dict[str, Callable[[SourceConfig, Any], Parsed]] = {
    "moodle": moodle.parse,
    "canonical": canonical.parse,
}

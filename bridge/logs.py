"""structlog as one JSON line per request and per job; secrets are scrubbed before rendering."""

from __future__ import annotations

import asyncio
import atexit
import logging
import re
import sys
import threading
from collections.abc import Mapping
from typing import Any, BinaryIO

import orjson
import structlog

from bridge.clock import utc_now_iso

SECRET_KEYS = re.compile(r"(token|secret|password|private_key|authorization|signature|api_key|app_secret|jwt)",
                         re.IGNORECASE)
REDACTED = "[redacted]"


_secret_key_seen: dict[str, bool] = {}     # key → is it secret-looking; keys come from code, so few


def _is_secret(key: str) -> bool:
    known = _secret_key_seen.get(key)
    if known is None:
        known = bool(SECRET_KEYS.search(key))
        if len(_secret_key_seen) < 10_000:   # bounded: a log call with data-driven keys can't grow it forever
            _secret_key_seen[key] = known
    return known


def _scrub(mapping: dict[str, Any], depth: int = 0) -> dict[str, Any]:
    """Redact values under secret-looking keys, in nested dicts too (runs on every line, so the common
    case — nothing to redact — returns the mapping untouched)."""
    if not any(type(value) is dict or _is_secret(key) for key, value in mapping.items()):
        return mapping
    clean = {}
    for key, value in mapping.items():
        if _is_secret(key):
            clean[key] = REDACTED
        elif isinstance(value, dict) and depth < 4:
            clean[key] = _scrub(value, depth + 1)
        else:
            clean[key] = value
    return clean


def scrub_secrets(_logger: Any, _method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    return _scrub(event_dict)


def add_timestamp(_logger: Any, _method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    event_dict["timestamp"] = utc_now_iso()
    return event_dict


class LinesPerLoopTurn:
    """A structlog logger writing each event-loop turn's lines with one write and one flush.

    A flushed write per line costs a system call per request, as much as the rest of the line. Lines
    logged outside a running loop (start-up, CLI commands) are written at once; the rest at the end of
    the loop turn, or at exit. A process killed mid-turn loses that turn's lines, never more.
    """

    def __init__(self, file: BinaryIO) -> None:
        self.file = file
        self.lines: list[bytes] = []
        self.lock = threading.Lock()              # lines may come from a thread other than the loop's
        self.flush_on: asyncio.AbstractEventLoop | None = None
        atexit.register(self.flush)

    def msg(self, message: bytes) -> None:
        with self.lock:
            self.lines.append(message)
            if self.flush_on is not None and self.flush_on.is_running():
                return
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                loop = None
            if loop is not None:
                self.flush_on = loop
                loop.call_soon(self.flush)
                return
        self.flush()

    def flush(self) -> None:
        with self.lock:
            lines, self.lines, self.flush_on = self.lines, [], None
        if lines:
            lines.append(b"")
            self.file.write(b"\n".join(lines))
            self.file.flush()

    log = debug = info = warn = warning = msg
    fatal = failure = err = error = critical = exception = msg


_stdout: LinesPerLoopTurn | None = None


def _stdout_lines() -> LinesPerLoopTurn:
    global _stdout
    if _stdout is None:
        _stdout = LinesPerLoopTurn(sys.stdout.buffer)
    return _stdout


def _adding(fields: Mapping[str, Any]) -> structlog.types.Processor:
    def add(_logger: Any, _method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
        for key, value in fields.items():
            event_dict.setdefault(key, value)
        return event_dict
    return add


def configure(level: str = "INFO", every_line: Mapping[str, Any] | None = None) -> None:
    """`every_line`: fields on each line, ours and the libraries' (a pooled worker process adds its pid)."""
    tagged = [_adding(every_line)] if every_line else []
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            add_timestamp,
            *tagged,
            scrub_secrets,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(serializer=orjson.dumps),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=lambda *_: _stdout_lines(),
        cache_logger_on_first_use=True,
    )
    # Provider adapters, the recording engine, arq and uvicorn log through the standard library: render
    # those as the same JSON lines (scrubbed too). Our own modules at `level`, libraries at WARNING
    # (httpx logs request URLs at INFO, and some providers put credentials in query strings).
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.contextvars.merge_contextvars, structlog.stdlib.add_logger_name,
                           structlog.processors.add_log_level,
                           add_timestamp, *tagged, structlog.stdlib.ExtraAdder()],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, scrub_secrets,
                    structlog.processors.format_exc_info,
                    structlog.processors.JSONRenderer(serializer=lambda obj, **_: orjson.dumps(obj).decode())],
    ))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("bridge").setLevel(logging.getLevelName(level))

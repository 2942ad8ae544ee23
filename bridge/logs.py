"""structlog as one JSON line per request and per job; secrets are scrubbed before rendering."""

from __future__ import annotations

import logging
import re
import sys
from typing import Any

import orjson
import structlog

SECRET_KEYS = re.compile(r"(token|secret|password|private_key|authorization|signature|api_key|app_secret|jwt)",
                         re.IGNORECASE)
REDACTED = "[redacted]"


def _scrub(mapping: dict[str, Any], depth: int = 0) -> dict[str, Any]:
    """Redact values under secret-looking keys, in nested dicts too (cheap: runs on every line)."""
    clean = {}
    for key, value in mapping.items():
        if SECRET_KEYS.search(key):
            clean[key] = REDACTED
        elif isinstance(value, dict) and depth < 4:
            clean[key] = _scrub(value, depth + 1)
        else:
            clean[key] = value
    return clean


def scrub_secrets(_logger: Any, _method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    return _scrub(event_dict)


def configure(level: str = "INFO") -> None:
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            scrub_secrets,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(serializer=orjson.dumps),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=structlog.BytesLoggerFactory(file=sys.stdout.buffer),
        cache_logger_on_first_use=True,
    )
    # Provider adapters, the recording engine, arq and uvicorn log through the standard library: render
    # those as the same JSON lines (scrubbed too). Our own modules at `level`, libraries at WARNING
    # (httpx logs request URLs at INFO, and some providers put credentials in query strings).
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.contextvars.merge_contextvars, structlog.stdlib.add_logger_name,
                           structlog.processors.add_log_level,
                           structlog.processors.TimeStamper(fmt="iso", utc=True), structlog.stdlib.ExtraAdder()],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, scrub_secrets,
                    structlog.processors.format_exc_info,
                    structlog.processors.JSONRenderer(serializer=lambda obj, **_: orjson.dumps(obj).decode())],
    ))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("bridge").setLevel(logging.getLevelName(level))

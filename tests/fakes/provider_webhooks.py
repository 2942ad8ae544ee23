"""The webhooks a simulated provider (JaaS, 100ms) would send, kept until the test sends them.

A provider sends out of order and more than once, so the test picks: `outbox.events` in any order,
any event any number of times, through `send`. Each simulator supplies `headers(body)`, its auth.
Event times come from the simulator's clock: set `clock_ms` for times a test can predict.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import httpx


class Outbox:
    def __init__(self, headers: Callable[[bytes], dict[str, str]]) -> None:
        self.headers = headers
        self.events: list[dict[str, Any]] = []
        self.clock_ms: int | None = None              # None: the real time
        self._lock = threading.Lock()

    def now_ms(self) -> int:
        return self.clock_ms if self.clock_ms is not None else int(time.time() * 1000)

    def advance(self, seconds: float) -> None:
        assert self.clock_ms is not None, "set clock_ms first"
        self.clock_ms += round(seconds * 1000)

    def add(self, event: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            self.events.append(event)
        return event

    def of_type(self, event_type: str, key: str) -> list[dict[str, Any]]:
        return [event for event in self.events if event[key] == event_type]

    async def send(self, http: httpx.AsyncClient, url: str, events: Iterable[dict[str, Any]] | None = None
                   ) -> list[httpx.Response]:
        """POST each event (all of them by default) as the provider would, one after the other."""
        answers = []
        for event in list(self.events if events is None else events):
            body = json.dumps(event).encode()
            answers.append(await http.post(url, content=body,
                                           headers={"Content-Type": "application/json", **self.headers(body)}))
        return answers

"""How many 100ms app tokens (HmsProvider.join) one process mints per second.

`hms_tokens_per_second(seconds)` is meant to be folded into bench/tokens.py; run this file alone to
print the number. It makes no network call: join mints the HS256 app token locally.
"""

from __future__ import annotations

import asyncio
import sys
import time

import httpx

from bridge.providers.base import Lesson, Room, User
from bridge.providers.hms import HmsProvider

MAX_SECONDS = 60.0
MAX_TOKENS = 5_000_000
_SETTINGS = {"access_key": "bench-access-key", "app_secret": "bench-app-secret-0123456789abcdef0123456789",
             "api_base": "http://127.0.0.1:9", "policy_base": "http://127.0.0.1:9"}


async def _run(seconds: float) -> float:
    async with httpx.AsyncClient() as http:
        provider = HmsProvider("bench", _SETTINGS, http)
        lesson = Lesson(id="bench:lesson:1", title="Bench")
        room = Room(id="6571b1f1e3b6c2a5b1f0c0de", name=lesson.room_name)
        users = [User(id=str(n), name=f"User {n}", role="teacher" if n % 10 == 0 else "student")
                 for n in range(100)]
        await provider.join(lesson, room, users[0])              # warm-up
        count = 0
        start = time.perf_counter()
        deadline = start + seconds
        while count < MAX_TOKENS:
            for user in users:                                     # check the clock every 100 tokens
                await provider.join(lesson, room, user)
            count += len(users)
            if time.perf_counter() >= deadline:
                break
        return count / (time.perf_counter() - start)


def hms_tokens_per_second(seconds: float) -> float:
    """App tokens minted per second through HmsProvider.join over `seconds` (capped at 60 s)."""
    seconds = min(max(float(seconds), 0.05), MAX_SECONDS)
    return asyncio.run(_run(seconds))


if __name__ == "__main__":
    duration = float(sys.argv[1]) if len(sys.argv) > 1 else 2.0
    print(f"100ms app tokens: {hms_tokens_per_second(duration):,.0f}/s")

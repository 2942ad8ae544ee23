"""A small HTTP/1.1 load generator on raw asyncio sockets (uvloop), run as its own process.

Python HTTP clients cost more CPU per request than the servers under test; raw keep-alive sockets
don't, so the generator is not the bottleneck on a 2-core machine. Every request carries a unique
event id so the bridge does real accept work, never the cheaper duplicate path.

Usage: python bench/loadgen.py URL --connections 50 --seconds 5 [--rate N]  → JSON on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import time
from urllib.parse import urlparse

import uvloop

BODY = ('{{"id": "bench-{n}", "type": "user.joined", "occurred_at": "2026-11-22T10:00:00Z", '
        '"lesson": {{"id": "lesson-{lesson}", "title": "Algebra I"}}, '
        '"user": {{"id": "{user}", "name": "Student {user}", "email": "s{user}@example.edu", "role": "student"}}}}')


async def worker(host: str, port: int, path: str, counter: itertools.count, stop_at: float, pace: asyncio.Queue | None,
                 latencies: list[float], statuses: dict[int, int], run_id: str) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while time.perf_counter() < stop_at:
            if pace is not None:
                try:
                    await asyncio.wait_for(pace.get(), timeout=max(0.001, stop_at - time.perf_counter()))
                except TimeoutError:
                    return
            n = next(counter)
            body = BODY.format(n=f"{run_id}-{n}", lesson=n % 200, user=n % 5000).encode()
            request = (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                       f"Content-Length: {len(body)}\r\n\r\n").encode() + body
            started = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - started)
            status = int(head[9:12])
            statuses[status] = statuses.get(status, 0) + 1
    finally:
        writer.close()


async def pacer(queue: asyncio.Queue, rate: float, stop_at: float) -> None:
    interval = 1.0 / rate
    next_at = time.perf_counter()
    while next_at < stop_at:
        now = time.perf_counter()
        while next_at <= now:
            queue.put_nowait(None)
            next_at += interval
        await asyncio.sleep(min(0.001, max(0.0, next_at - now)))


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else float("nan")


async def run(url: str, connections: int, seconds: float, rate: float | None) -> dict:
    parsed = urlparse(url)
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    counter = itertools.count()
    started = time.perf_counter()
    stop_at = started + seconds
    pace: asyncio.Queue | None = asyncio.Queue() if rate else None
    tasks = [worker(parsed.hostname or "127.0.0.1", parsed.port or 80, parsed.path, counter, stop_at, pace,
                    latencies, statuses, f"{int(started * 1000)}") for _ in range(connections)]
    if pace is not None and rate:
        tasks.append(pacer(pace, rate, stop_at))
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - started
    return {"requests": len(latencies), "per_s": len(latencies) / elapsed, "statuses": statuses,
            "p50_ms": percentile(latencies, 0.50) * 1000, "p99_ms": percentile(latencies, 0.99) * 1000}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--rate", type=float, default=None, help="open loop: requests/s in total")
    args = parser.parse_args()
    print(json.dumps(uvloop.run(run(args.url, args.connections, args.seconds, args.rate))))


if __name__ == "__main__":
    main()

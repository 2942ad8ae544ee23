"""Redis footprint per join (issue #17): what a join leaves in Redis once its join.ready is delivered and
its jobs have finished, family by family, and what that makes over a day's joins kept for their lifetimes.

The join-storm stack (bench/join_storm.py): one `bridge serve`, ONE `bridge worker`, JaaS, an embedded
Redis, a receiver verifying every signature. Ten lessons are scheduled and a warm-up round of joins runs;
then N joins at a steady rate. Before and after them, once everything is delivered and done:
  - INFO memory used_memory: the delta per join is what a Redis plan must hold;
  - every key's MEMORY USAGE (the event-log stream's per entry), summed by family: bytes and keys per join.
used_memory minus the families' MEMORY USAGE is the keyspace's own cost (its hash tables, the TTL index):
charged to the families per key. The sizing table multiplies each family's bytes per join by how long it
lives: dedupe markers `dedupe_window_s`, event-log entries `event_retention_s` (at most
`event_retention_max` entries), runs and delivery records record_retention_s.

Run: make bench-footprint   (or .venv/bin/python bench/redis_footprint.py --joins 2000; a short run overstates
the keyspace's share: a doubling of its tables lands on few joins)
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections import Counter
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import redis.asyncio as aioredis  # noqa: E402

from bench.attendance import start, start_stack, stop_stack  # noqa: E402
from bench.join_storm import (  # noqa: E402
    LESSONS,
    Receiver,
    join_request,
    payloads_lapsed,
    post_all,
    scheduled_request,
    settled,
)
from bench.pipeline import wait_worker  # noqa: E402
from bridge.config import load_settings  # noqa: E402
from bridge.processes import free_port, wait_for_port  # noqa: E402
from bridge.store import DELIVERED_PAYLOAD_KEEP_S, EVENT_LOG, LESSON_TTL_S, key_family  # noqa: E402

DAY_S = 86400
JOINS_PER_DAY = (1_000, 10_000, 100_000)
# (event-log days, runs and delivery records days): the defaults, a 7-day log by configuration
# (event_retention_s), and a week for both (and record_retention_s).
RETENTIONS = ((30, 30), (7, 30), (7, 7))
CONNECTIONS = 20


class Footprint(NamedTuple):
    used_memory: int
    bytes: Counter[str]          # family → MEMORY USAGE summed over its keys
    keys: Counter[str]           # family → keys
    log_entries: int


async def footprint(redis: aioredis.Redis) -> Footprint:
    keys = [key.decode() async for key in redis.scan_iter(count=1000)]
    async with redis.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.memory_usage(key, samples=0)
        usages = await pipe.execute()
    by_bytes: Counter[str] = Counter()
    by_keys: Counter[str] = Counter()
    for key, usage in zip(keys, usages, strict=True):
        by_bytes[key_family(key)] += usage or 0        # (a key that expired meanwhile counts nothing)
        by_keys[key_family(key)] += 1
    used = (await redis.info("memory"))["used_memory"]
    return Footprint(used, by_bytes, by_keys, await redis.xlen(EVENT_LOG))


async def sample_keys(redis: aioredis.Redis, families: tuple[str, ...]) -> list[str]:
    """One key of each family as Redis holds it: its encoding, MEMORY USAGE, and each field's bytes (a hash
    with a value over hash-max-listpack-value bytes is a hashtable, not a compact listpack)."""
    lines = []
    for family in families:
        key = next(iter([k async for k in redis.scan_iter(f"{family}:*", count=1000)][-1:]), None)
        if key is None:
            continue
        kind, encoding = (await redis.type(key)).decode(), (await redis.object("encoding", key)).decode()
        shape = ""
        if kind == "hash":
            fields = await redis.hgetall(key)
            shape = ", ".join(f"{name.decode().split(':')[0]} {len(name) + len(value)} B"
                              for name, value in sorted(fields.items(), key=lambda item: -len(item[1])))
        print_line = f"`{family}` ({kind}, {encoding}, {await redis.memory_usage(key, samples=0)} B): {shape}"
        lines.append(print_line)
    return lines


async def run(args: argparse.Namespace) -> tuple[Footprint, Footprint, Footprint, int, str, list[str]]:
    receiver = Receiver()
    stack = await start_stack("bench-footprint-", receiver.handle)
    work, redis, env = stack.work, stack.redis, stack.env
    port = free_port()
    processes = [start(["serve", "--host", "127.0.0.1"], {**env, "PORT": str(port)}, work, "web.log"),
                 start(["worker"], env, work, "worker.log")]
    try:
        if not wait_for_port(port, 30):
            raise SystemExit("bridge serve did not start")
        await wait_worker(redis)
        await post_all(port, [(f"schedule-{n}", scheduled_request(n)) for n in range(LESSONS)], 1)
        for run_name, joins in (("warm", min(500, args.joins)), ("measured", args.joins)):
            requests = [join_request(run_name, n) for n in range(joins)]
            receiver.expect([event_id for event_id, _ in requests])
            await settled(redis)
            await payloads_lapsed(redis)
            await asyncio.sleep(1.2)           # every process's buffered metrics are in Redis
            before = await footprint(redis)
            statuses = (await post_all(port, requests, CONNECTIONS, args.rate)).statuses
            await asyncio.wait_for(receiver.all_arrived.wait(), timeout=120 + joins / 50)
            await settled(redis)
            await asyncio.sleep(1.2)
            at_delivery = await footprint(redis)
            await payloads_lapsed(redis)
            after = await footprint(redis)
        if receiver.bad_signatures or receiver.duplicates:
            raise SystemExit(f"{receiver.bad_signatures} bad signatures, {receiver.duplicates} duplicates")
        print(f"intake statuses: {statuses}")
        lesson_bytes = after.bytes["lb:lesson"] + after.bytes["lb:room"]
        samples = await sample_keys(redis, ("lb:delivery", "lb:runs", "lb:seen"))
        info = await redis.info("server")
        server_name = f"{info.get('server_name', 'redis')} {info.get('valkey_version') or info['redis_version']}"
    finally:
        await stop_stack(stack, processes)
    return before, at_delivery, after, lesson_bytes, server_name, samples


class PerJoin(NamedTuple):
    families: dict[str, tuple[float, float]]   # family → (keys, bytes with its share of the keyspace's own cost)
    used: float                                # used_memory
    keyspace_per_key: float                    # the keyspace's own cost of one key


def per_join(before: Footprint, after: Footprint, joins: int) -> PerJoin:
    families = sorted(set(before.bytes) | set(after.bytes))
    grown = {f: (after.keys[f] - before.keys[f], after.bytes[f] - before.bytes[f]) for f in families}
    grown = {f: (keys, size) for f, (keys, size) in grown.items() if keys or abs(size) > joins}
    used = after.used_memory - before.used_memory
    new_keys = sum(max(0, keys) for keys, _ in grown.values())
    overhead = (used - sum(size for _, size in grown.values())) / new_keys if new_keys else 0.0
    return PerJoin({f: (keys / joins, (size + max(0, keys) * overhead) / joins) for f, (keys, size) in grown.items()},
                   used / joins, overhead)


def sizing(bytes_per_join: dict[str, float], joins_per_day: int, log_days: int, record_days: int,
           dedupe_days: float, log_cap: int) -> float:
    """MB held in steady state: each family's bytes per join times the joins its lifetime spans."""
    total = bytes_per_join.get("lb:seen", 0) * joins_per_day * dedupe_days
    total += bytes_per_join.get("lb:events", 0) * min(joins_per_day * log_days, log_cap)
    total += sum(bytes_per_join.get(f, 0) for f in ("lb:runs", "lb:delivery")) * joins_per_day * record_days
    return total / 1e6


def report(before: Footprint, at_delivery: Footprint, after: Footprint, lesson_bytes: int, joins: int, server: str,
           samples: list[str]) -> None:
    settings = load_settings({})
    measured = per_join(before, after, joins)
    families = measured.families
    lifetimes = {"lb:seen": f"dedupe_window_s ({settings.dedupe_window_s / DAY_S:g} d)",
                 "lb:events": f"event_retention_s ({settings.event_retention_s / DAY_S:g} d), "
                              f"at most event_retention_max ({settings.event_retention_max:,}) entries",
                 "lb:runs": f"record_retention_s ({settings.record_retention_s / DAY_S:g} d)",
                 "lb:delivery": f"record_retention_s ({settings.record_retention_s / DAY_S:g} d)"}
    print(f"\nRedis footprint ({server}): {joins} JaaS joins through `bridge serve` + ONE `bridge worker`, every "
          "join.ready delivered and every job finished\n")
    print("| family | keys per join | bytes per join | lives |")
    print("|---|---|---|---|")
    for family, (keys, size) in sorted(families.items(), key=lambda item: -item[1][1]):
        print(f"| `{family}` | {keys:.2f} | {size:.0f} | {lifetimes.get(family, '')} |")
    print(f"| **used_memory** | | **{measured.used:.0f}** | |")
    delivered = per_join(before, at_delivery, joins)
    print(f"\nWhen the last join.ready arrived: {delivered.used:.0f} B per join, of it the payloads "
          f"{delivered.families.get('lb:payload', (0, 0))[1]:.0f} B (`lb:payload`, kept {DELIVERED_PAYLOAD_KEEP_S} s "
          f"once delivered at the first attempt; the table is a minute later)")
    print(f"\n(each key's bytes include {measured.keyspace_per_key:.0f} B of the keyspace's own tables; "
          f"{after.log_entries - before.log_entries} log entries added); lesson state and room owners: "
          f"{lesson_bytes / LESSONS:.0f} B per lesson, for {LESSON_TTL_S / DAY_S:g} d")
    print("\nOne key of each kind:\n" + "\n".join(f"- {line}" for line in samples))
    bytes_per_join = {family: size for family, (_, size) in families.items()}
    print(f"\nSteady-state MB by joins per day, event-log and records' retention (dedupe "
          f"{settings.dedupe_window_s / DAY_S:g} d; the log capped at {settings.event_retention_max:,} entries)\n")
    print("| joins/day | " + " | ".join(f"log {log} d, records {records} d" for log, records in RETENTIONS) + " |")
    print("|---|" + "---|" * len(RETENTIONS))
    for per_day in JOINS_PER_DAY:
        cells = [sizing(bytes_per_join, per_day, log, records, settings.dedupe_window_s / DAY_S,
                        settings.event_retention_max) for log, records in RETENTIONS]
        print(f"| {per_day:,} | " + " | ".join(f"{mb:,.1f} MB" for mb in cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--joins", type=int, default=5000, help="joins measured")
    parser.add_argument("--rate", type=float, default=250, help="joins/s")
    args = parser.parse_args()
    before, at_delivery, after, lesson_bytes, server, samples = asyncio.run(run(args))
    report(before, at_delivery, after, lesson_bytes, args.joins, server, samples)


if __name__ == "__main__":
    main()

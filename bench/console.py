"""The console's events page over a log of 1,000,000 events, through real HTTP against a real web process.

Fills the event log (XADD in pipelines, the entry shape the accept script writes: id, source,
received_at, raw, canonical, jobs), then times the first page of /console/events, one filtered page
(?type=user.joined, a type a third of the log has) and one rare filter (a lesson no entry names, which reads
the most a page may read, PAGE_SCAN_LIMIT entries, before it hands back a cursor). Baselines in the same
run: the same page over the empty log (measured before the fill) and the admin API's JSON list of the
same page (/v1/admin/events?limit=50). Target: first page <= 300 ms.

Run: .venv/bin/python bench/console.py [--events 1000000] [--rounds 20]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bridge.embedded import EmbeddedRedis  # noqa: E402
from bridge.processes import free_port, wait_for_port  # noqa: E402
from bridge.store import EVENT_LOG, job_runs_key  # noqa: E402

TOKEN = "bench-console-admin-token"
TYPES = ("user.joined", "user.left", "lesson.started")
BATCH = 5000
TARGET_MS = 300


def entry(n: int, received_at: str) -> dict[str, str]:
    kind = TYPES[n % len(TYPES)]
    lesson = {"id": f"course-{n % 500}-lesson-{n % 37}", "title": "Algebra I", "provider": "sandbox"}
    user = {"id": str(n % 3000), "name": f"Student {n % 3000}", "role": "student"}
    raw = {"id": f"evt_{n}", "type": kind, "lesson": lesson, "user": user}
    canonical = {**raw, "occurred_at": received_at, "data": {},
                 "lesson": {**lesson, "starts_at": None, "ends_at": None, "record": False},
                 "user": {**user, "email": ""}}
    function = kind.replace(".", "_")
    return {"id": f"evt_{n}", "source": "default", "received_at": received_at, "raw": json.dumps(raw),
            "canonical": json.dumps(canonical), "jobs": json.dumps([f"default:evt_{n}:{function}"])}


def fill(client: redis.Redis, count: int) -> float:
    started = time.perf_counter()
    received_at = time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())
    for first in range(0, count, BATCH):
        pipe = client.pipeline(transaction=False)
        for n in range(first, min(count, first + BATCH)):
            pipe.xadd(EVENT_LOG, entry(n, received_at))
        pipe.execute()
    # The newest page's events have run: some jobs ok, some failed (what the page looks up per row).
    pipe = client.pipeline(transaction=False)
    for n in range(max(0, count - 1000), count):
        function = TYPES[n % len(TYPES)].replace(".", "_")
        status = "failed" if n % 10 == 0 else "ok"
        pipe.hset(job_runs_key(f"default:evt_{n}"), function, json.dumps({"status": status, "try": 1, "ms": 12}))
    pipe.execute()
    return time.perf_counter() - started


def timed(http: httpx.Client, path: str, rounds: int, headers: dict[str, str] | None = None) -> list[float]:
    http.get(path, headers=headers).raise_for_status()          # warm: templates compiled, connections open
    out = []
    for _ in range(rounds):
        started = time.perf_counter()
        answer = http.get(path, headers=headers)
        out.append((time.perf_counter() - started) * 1000)
        answer.raise_for_status()
    return out


def line(label: str, samples: list[float]) -> float:
    median = statistics.median(samples)
    p95 = sorted(samples)[max(0, int(len(samples) * 0.95) - 1)]
    print(f"  {label:<58} median {median:7.1f} ms   p95 {p95:7.1f} ms")
    return median


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-console-") as tmp:
        server = EmbeddedRedis(Path(tmp) / "redis", appendfsync="no").start()
        web = None
        try:
            port = free_port()
            env = {**os.environ, "REDIS_URL": server.url, "BRIDGE_ADMIN_TOKEN": TOKEN, "PORT": str(port),
                   "PYTHONPATH": str(ROOT)}
            env.pop("BRIDGE_CONFIG", None)
            web = subprocess.Popen([sys.executable, "-m", "bridge.cli", "serve", "--host", "127.0.0.1"], env=env,
                                   cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            if not wait_for_port(port, 30):
                raise SystemExit("bridge serve did not start")
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
                signin = http.post("/console/signin", data={"token": TOKEN, "name": "bench"})
                assert signin.status_code == 303, signin.text
                admin = {"Authorization": f"Bearer {TOKEN}"}
                print(f"console events page, {args.rounds} rounds each, real HTTP to `bridge serve` on loopback")
                print("empty log (baseline):")
                empty = line("/console/events", timed(http, "/console/events", args.rounds))
                client = redis.Redis.from_url(server.url)
                seconds = fill(client, args.events)
                print(f"filled {client.xlen(EVENT_LOG):,} events in {seconds:.1f} s "
                      f"({args.events / seconds:,.0f} XADD/s, pipelines of {BATCH})")
                print(f"log of {args.events:,} events:")
                first = line("/console/events (first page)", timed(http, "/console/events", args.rounds))
                typed = line("/console/events?type=user.joined",
                             timed(http, "/console/events?type=user.joined", args.rounds))
                rare = line("/console/events?lesson=nowhere (reads 10,000 entries)",
                            timed(http, "/console/events?lesson=nowhere", args.rounds))
                api = line("/v1/admin/events?limit=50 (admin API JSON, baseline)",
                           timed(http, "/v1/admin/events?limit=50", args.rounds, admin))
            print(f"first page: {first:.1f} ms ({'within' if first <= TARGET_MS else 'OVER'} the {TARGET_MS} ms "
                  f"target); {first / empty:.2f}x the empty log's, {first / api:.2f}x the admin API's JSON; "
                  f"filtered {typed / api:.2f}x, rare filter {rare / api:.2f}x the admin API's")
        finally:
            if web is not None:
                web.terminate()
                web.wait(timeout=20)
            server.stop()


if __name__ == "__main__":
    main()

"""Intake throughput and latency: the bridge's accept path against a bare JSON-parsing endpoint.

Both servers run as one uvicorn process each (httptools, uvloop), one after the other on this
machine, driven by the same load generator in a separate process. The bridge writes to a real
Redis-protocol server (embedded valkey/redis, AOF fsynced on every write, as `bridge dev` runs it;
the last run: AOF everysec with no fsync confirmation, what a 2xx meant before) — that is the work
being measured.

Run: make bench-ingest   (or .venv/bin/python bench/ingest.py --seconds 10)
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
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bridge.embedded import EmbeddedRedis  # noqa: E402
from bridge.processes import die_with_parent, free_port, wait_for_port  # noqa: E402

BARE_APP = """
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route
import json

async def events(request):
    json.loads(await request.body())
    return JSONResponse({"accepted": []}, status_code=202)

app = Starlette(routes=[Route("/v1/events/{source}", events, methods=["POST"])])
"""

# The durable write alone: the bare endpoint plus the bridge's own group-committed accept call (dedupe +
# event log + arq job in one script run) for the parsed body, with no validation, auth or log line.
# The gap between this and the bare endpoint is the floor any intake with a durable 2xx pays here.
ACCEPT_ONLY_APP = """
import contextlib
import os
import orjson
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route
from bridge.clock import utc_now_iso
from bridge.intake import AcceptBatcher, DurableAccept
from bridge.processes import tune_gc_for_service
from bridge.store import ACCEPT_SCRIPT, WORKER_QUEUE, EventRecord, JobSpec, redis_client

state = {}

@contextlib.asynccontextmanager
async def lifespan(app):
    client = redis_client(os.environ["REDIS_URL"])
    accept = DurableAccept(client, client.register_script(ACCEPT_SCRIPT), os.environ.get("REDIS_CONFIRM_FSYNC") != "0")
    state["batcher"] = AcceptBatcher(accept, 7 * 86400 * 1000)
    tune_gc_for_service()                      # as the bridge's web process does
    yield

async def events(request):
    event = orjson.loads(await request.body())
    ref = f"default:{event['id']}"
    job = JobSpec(WORKER_QUEUE, "user_joined", f"{ref}:user_joined", {"ref": ref, "source": "default", "event": event})
    await state["batcher"].submit([EventRecord("default", event["id"], utc_now_iso(), event, event, [job])])
    return JSONResponse({"accepted": [event["id"]]}, status_code=202)

app = Starlette(routes=[Route("/v1/events/{source}", events, methods=["POST"])], lifespan=lifespan)
"""


def start(command: list[str], env: dict[str, str], port: int, cwd: Path) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(command, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               preexec_fn=die_with_parent)
    if not wait_for_port(port, 30):
        process.kill()
        raise SystemExit(f"server did not start: {command}")
    return process


def load(url: str, connections: int, seconds: float, rate: float | None = None) -> dict:
    command = [sys.executable, str(ROOT / "bench" / "loadgen.py"), url, "--connections", str(connections),
               "--seconds", str(seconds)]
    if rate:
        command += ["--rate", str(rate)]
    output = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60, check=True)
    return json.loads(output.stdout)


def measure(name: str, url: str, args: argparse.Namespace) -> dict:
    load(url, args.connections, 1.0)                                   # warm up
    closed = load(url, args.connections, args.seconds)
    paced = load(url, args.connections, args.seconds, rate=args.rate)
    return {"name": name, "closed": closed, "paced": paced}


def fsync_latency_ms(directory: Path, count: int = 200) -> tuple[float, float]:
    """p50 and p99 of append + fsync on this disk: what `always` pays per event-loop turn of the server."""
    path = directory / "fsync-probe"
    samples = []
    with open(path, "ab") as handle:
        for _ in range(count):
            started = time.perf_counter()
            handle.write(b"x" * 200)
            handle.flush()
            os.fsync(handle.fileno())
            samples.append((time.perf_counter() - started) * 1000)
    path.unlink()
    samples.sort()
    return samples[len(samples) // 2], samples[min(len(samples) - 1, int(0.99 * len(samples)))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--rate", type=float, default=1000, help="open-loop rate for the latency run")
    parser.add_argument("--rounds", type=int, default=3,
                        help="durable vs everysec bridge pairs (their ratio is the median: the disk is noisy)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    redis = EmbeddedRedis(work / "redis").start()                  # appendfsync always, as the bridge runs it
    everysec = EmbeddedRedis(work / "redis-everysec", appendfsync="everysec").start()
    (work / "bare_app.py").write_text(BARE_APP)
    env = {**os.environ, "REDIS_URL": redis.url, "PYTHONPATH": f"{ROOT}:{work}", "BRIDGE_LOG_LEVEL": "WARNING"}
    env.pop("BRIDGE_CONFIG", None)
    results = []
    uvicorn = [sys.executable, "-m", "uvicorn", "--log-level", "warning", "--no-access-log"]
    serve = [sys.executable, "-m", "bridge.cli", "serve", "--host", "127.0.0.1"]
    (work / "accept_only_app.py").write_text(ACCEPT_ONLY_APP)
    runs = [
        ("bare Starlette (parse JSON only)", [*uvicorn, "bare_app:app"], {}),
        ("bare + the accept call only (no validation, auth, log)", [*uvicorn, "accept_only_app:app"], {}),
        ("bridge (auth, validate, dedupe + log + enqueue; AOF fsynced before every 2xx)", serve, {}),
        # What the bridge did before a 2xx meant "on disk": the server fsyncs once a second, no WAITAOF.
        ("bridge, appendfsync everysec, no fsync confirmation (before)", serve,
         {"REDIS_URL": everysec.url, "REDIS_CONFIRM_FSYNC": "0"}),
    ]

    def run(name: str, command: list[str], extra_env: dict[str, str]) -> dict[str, Any]:
        port = free_port()
        with_port = command if command is serve else [*command, "--port", str(port)]
        server = start(with_port, {**env, "PORT": str(port), **extra_env}, port, work)
        try:
            return measure(name, f"http://127.0.0.1:{port}/v1/events/default", args)
        finally:
            server.terminate()
            server.wait(timeout=30)

    # The floor under the durable ratio: the accept call alone (no bridge work) on the same two servers.
    everysec_env = {"REDIS_URL": everysec.url, "REDIS_CONFIRM_FSYNC": "0"}
    accept_only_everysec = ("accept call only, appendfsync everysec", [*uvicorn, "accept_only_app:app"],
                            everysec_env)

    def ratio_of(durable: tuple[str, list[str], dict[str, str]], before: tuple[str, list[str], dict[str, str]]
                 ) -> float:
        return run(*durable)["closed"]["per_s"] / run(*before)["closed"]["per_s"]

    pairs: list[float] = []
    floors: list[float] = []
    fsync_p50, fsync_p99 = fsync_latency_ms(work)
    try:
        results = [run(*spec) for spec in runs]
        pairs.append(results[2]["closed"]["per_s"] / results[3]["closed"]["per_s"])
        for round_number in range(args.rounds):
            if round_number:
                pairs.append(ratio_of(runs[2], runs[3]))
            floors.append(ratio_of(runs[1], accept_only_everysec))
    finally:
        redis.stop()
        everysec.stop()

    baseline, accept_only_result, bridge_result, _ = results
    print(f"\nIntake, {args.connections} connections, {args.seconds:.0f} s per run, 1 server process each\n")
    print(f"| server | events/s (closed loop) | p50 ms | p99 ms | p50 ms @ {args.rate:.0f}/s | "
          f"p99 ms @ {args.rate:.0f}/s | non-2xx |")
    print("|---|---|---|---|---|---|---|")
    for result in results:
        closed, paced = result["closed"], result["paced"]
        errors = sum(v for k, v in {**closed["statuses"], **paced["statuses"]}.items() if int(k) >= 300)
        print(f"| {result['name']} | {closed['per_s']:.0f} | {closed['p50_ms']:.2f} | {closed['p99_ms']:.2f} | "
              f"{paced['p50_ms']:.2f} | {paced['p99_ms']:.2f} | {errors} |")
    ratio = bridge_result["closed"]["per_s"] / baseline["closed"]["per_s"]
    print(f"\naccept call only / bare = {accept_only_result['closed']['per_s'] / baseline['closed']['per_s']:.2f}"
          " (the durable write's own cost)")
    print(f"append + fsync on this disk, alone: p50 {fsync_p50:.2f} ms, p99 {fsync_p99:.2f} ms "
          "(what `always` adds to every reply: the floor under the durable run)")
    print(f"durable / everysec = {statistics.median(pairs):.2f}, median of {len(pairs)} pairs "
          f"({', '.join(f'{r:.2f}' for r in pairs)}; target >= 0.9): what a 2xx that survives a power loss costs")
    print(f"floor: the accept call alone, always / everysec = {statistics.median(floors):.2f}, median of "
          f"{len(floors)} pairs ({', '.join(f'{r:.2f}' for r in floors)}): the server's fsync, no bridge work")
    print(f"ratio bridge / bare = {ratio:.2f}  (target >= 0.6); "
          f"bridge p99 at {args.rate:.0f}/s = {bridge_result['paced']['p99_ms']:.2f} ms (target <= 10 ms)")


if __name__ == "__main__":
    main()

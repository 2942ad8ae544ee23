"""What `appendfsync always` costs against `everysec`, measured on the accept path of the bridge.

The same load as bench/ingest.py (bench/loadgen.py, raw keep-alive sockets, a unique event per
request) against one `bridge serve` process, twice: once with the embedded Redis-protocol server
fsyncing its append-only file every second (`everysec`, the default), once on every write (`always`).
Each request is one accept-script run: dedupe key + event-log entry + job, so every acknowledged
event costs one AOF write, and with `always` one fsync (the server groups the writes of one event-loop
turn into one fsync, so concurrent requests share it).

The data directory must be on the disk Redis really uses (not tmpfs): by default ./var/bench-persistence.

Run: .venv/bin/python bench/persistence.py [--seconds 6] [--connections 50] [--rate 500] [--rounds 1]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from ingest import fsync_latency_ms, load, start  # noqa: E402  (bench/ingest.py: same load generator, same server start)

from bridge.embedded import EmbeddedRedis  # noqa: E402
from bridge.processes import free_port  # noqa: E402

MODES = ("everysec", "always")


def filesystem(path: Path) -> str:
    try:
        out = subprocess.run(["df", "-T", str(path)], capture_output=True, text=True, timeout=10).stdout
        return out.splitlines()[1].split()[1]
    except (OSError, IndexError, subprocess.SubprocessError):
        return "unknown"


def run_mode(mode: str, work: Path, args: argparse.Namespace) -> dict:
    data = work / f"redis-{mode}"
    shutil.rmtree(data, ignore_errors=True)
    redis = EmbeddedRedis(data, appendfsync=mode).start()
    env = {**os.environ, "REDIS_URL": redis.url, "PYTHONPATH": str(ROOT), "WEB_CONCURRENCY": "1"}
    env.pop("BRIDGE_CONFIG", None)
    port = free_port()
    bridge = None
    try:
        bridge = start([sys.executable, "-m", "bridge.cli", "serve", "--host", "127.0.0.1"],
                       {**env, "PORT": str(port)}, port, work)
        url = f"http://127.0.0.1:{port}/v1/events/default"
        load(url, args.connections, 1.0)                                      # warm up
        closed = load(url, args.connections, args.seconds)
        paced = load(url, args.connections, args.seconds, rate=args.rate)
    finally:
        if bridge is not None:
            bridge.terminate()
            bridge.wait(timeout=30)
        redis.stop()
    errors = sum(v for k, v in {**closed["statuses"], **paced["statuses"]}.items() if int(k) >= 300)
    return {"mode": mode, "per_s": closed["per_s"], "p50_ms": closed["p50_ms"], "p99_ms": closed["p99_ms"],
            "paced_p50_ms": paced["p50_ms"], "paced_p99_ms": paced["p99_ms"], "errors": errors}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=6)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--rate", type=float, default=500, help="open-loop rate for the latency run")
    parser.add_argument("--rounds", type=int, default=1, help="alternate the modes this many times; medians")
    parser.add_argument("--dir", type=Path, default=ROOT / "var" / "bench-persistence")
    args = parser.parse_args()
    work = args.dir.absolute()
    work.mkdir(parents=True, exist_ok=True)

    fsync_p50, fsync_p99 = fsync_latency_ms(work)
    results: dict[str, list[dict]] = {mode: [] for mode in MODES}
    for _ in range(args.rounds):
        for mode in MODES:
            results[mode].append(run_mode(mode, work, args))
    shutil.rmtree(work, ignore_errors=True)

    def median(mode: str, key: str) -> float:
        return statistics.median(r[key] for r in results[mode])

    print(f"\nAccept path, appendfsync everysec vs always: {args.connections} connections, {args.seconds:.0f} s "
          f"per run, {args.rounds} round(s), 1 web process, data on {filesystem(work.parent)} "
          f"(append + fsync: p50 {fsync_p50:.2f} ms, p99 {fsync_p99:.2f} ms)\n")
    print(f"| appendfsync | events/s (closed loop) | p50 ms | p99 ms | p50 ms @ {args.rate:.0f}/s | "
          f"p99 ms @ {args.rate:.0f}/s | non-2xx |")
    print("|---|---|---|---|---|---|---|")
    for mode in MODES:
        print(f"| {mode} | {median(mode, 'per_s'):.0f} | {median(mode, 'p50_ms'):.2f} | {median(mode, 'p99_ms'):.2f} | "
              f"{median(mode, 'paced_p50_ms'):.2f} | {median(mode, 'paced_p99_ms'):.2f} | "
              f"{sum(r['errors'] for r in results[mode])} |")
    print(f"\nratio always / everysec: throughput {median('always', 'per_s') / median('everysec', 'per_s'):.2f}, "
          f"p99 (closed loop) {median('always', 'p99_ms') / median('everysec', 'p99_ms'):.2f}, "
          f"p99 @ {args.rate:.0f}/s {median('always', 'paced_p99_ms') / median('everysec', 'paced_p99_ms'):.2f}")


if __name__ == "__main__":
    main()

"""Uploading a 1 GiB recording to an S3-protocol server: our verified, resumable multipart upload against
the library's own plain upload (aiobotocore `put_object` of the open file), in the same run, and, for a
like-for-like multipart reference, boto3's managed `upload_file` (8 MiB parts, 10 threads).

Both run in a fresh child process each (moto's standalone server on loopback is the service), so each
one's memory is its own: the child notes its resident memory once the client is set up and one small
object has gone up (idle), uploads, and reports the time and its peak RSS above that idle level.
Targets: throughput ratio >= 0.9x, our peak above idle <= 64 MiB. The CPU seconds of the uploader and
of the server show which side a difference comes from, and the seconds spent waiting for
CompleteMultipartUpload how much of a multipart upload's time is the service joining the parts after the
last one arrived (moto copies the whole object in memory there; a plain PUT never pays that).

Run: .venv/bin/python bench/storage.py [--mib 1024] [--rounds 2] [--concurrency 8] [--part-mib 8]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.storage.conftest import ACCESS_KEY, SECRET_KEY, MotoServer  # noqa: E402

BUCKET = "bench-recordings"
WAYS = {"plain": "library's plain put_object", "ours": "our multipart upload",
        "managed": "boto3 upload_file (multipart, threads)"}

CHILD = """
import asyncio, json, resource, sys, time
from pathlib import Path
from bridge.storage import S3Storage

def rss_kib() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * 4

completing = {"started": 0.0, "seconds": 0.0}

def time_completion(events) -> None:
    # Seconds spent waiting for CompleteMultipartUpload: the service's own work after the last part.
    def before(**_):
        completing["started"] = time.perf_counter()
    def after(**_):
        completing["seconds"] += time.perf_counter() - completing["started"]
    events.register("before-call.s3.CompleteMultipartUpload", before)
    events.register("after-call.s3.CompleteMultipartUpload", after)

async def main(way: str, endpoint: str, path: Path) -> None:
    storage = S3Storage(sys.argv[4], sys.argv[5], sys.argv[6], endpoint_url=endpoint, concurrency=int(sys.argv[7]),
                        part_size=int(sys.argv[8]) * 2**20)
    client = await storage.client()
    time_completion(client.meta.events)
    await client.put_object(Bucket=storage.bucket, Key="warm-up", Body=b"x" * 1024)
    await storage.delete("rec_bench")          # the last round's copy: found whole, it would not be re-sent
    for key in ("recordings/plain.mp4", "recordings/managed.mp4"):
        await client.delete_object(Bucket=storage.bucket, Key=key)
    idle = rss_kib()
    before = resource.getrusage(resource.RUSAGE_SELF)
    cpu_before = before.ru_utime + before.ru_stime
    started = time.perf_counter()
    if way == "ours":
        await storage.upload("rec_bench", path)
    elif way == "managed":
        import boto3
        s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=sys.argv[5],
                          aws_secret_access_key=sys.argv[6], region_name="us-east-1")
        time_completion(s3.meta.events)
        await asyncio.to_thread(s3.upload_file, str(path), storage.bucket, "recordings/managed.mp4")
    else:
        with path.open("rb") as body:
            await client.put_object(Bucket=storage.bucket, Key="recordings/plain.mp4", Body=body,
                                    ContentType="video/mp4")
    elapsed = time.perf_counter() - started
    usage = resource.getrusage(resource.RUSAGE_SELF)
    await storage.aclose()
    print(json.dumps({"seconds": elapsed, "completion_s": completing["seconds"],
                      "peak_above_idle_mib": (usage.ru_maxrss - idle) / 1024,
                      "cpu_s": usage.ru_utime + usage.ru_stime - cpu_before}))

asyncio.run(main(sys.argv[1], sys.argv[2], Path(sys.argv[3])))
"""


def make_file(path: Path, mib: int) -> None:
    """Data that differs from MiB to MiB (nothing a service could deduplicate), written quickly."""
    block = os.urandom(1024 * 1024)
    with path.open("wb") as f:
        for i in range(mib):
            f.write(i.to_bytes(8, "big") + block[8:])


def cpu_s(pid: int) -> float:
    """User + system CPU seconds a process has used (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(way: str, server: MotoServer, path: Path, concurrency: int, part_mib: int) -> dict[str, float]:
    assert server.process is not None
    server_cpu = cpu_s(server.process.pid)
    out = subprocess.run([sys.executable, "-c", CHILD, way, server.url, str(path), BUCKET, ACCESS_KEY, SECRET_KEY,
                          str(concurrency), str(part_mib)],
                         cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                         timeout=900, check=False)
    if out.returncode != 0:
        raise SystemExit(f"{way} upload failed:\n{out.stderr[-3000:]}")
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    result["server_cpu_s"] = cpu_s(server.process.pid) - server_cpu
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=8, help="parts in flight in our upload")
    parser.add_argument("--part-mib", type=int, default=8, help="our upload's part size")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-storage-", dir="/tmp"))
    server = MotoServer(work / "moto.log").start()
    path = work / f"{uuid.uuid4().hex}.mp4"
    try:
        make_file(path, args.mib)
        subprocess.run([sys.executable, "-c", "import boto3,sys; boto3.client('s3', endpoint_url=sys.argv[1], "
                        "aws_access_key_id='a', aws_secret_access_key='b', region_name='us-east-1')"
                        ".create_bucket(Bucket=sys.argv[2])", server.url, BUCKET], check=True, timeout=60)
        results: dict[str, list[dict[str, float]]] = {way: [] for way in WAYS}
        for _ in range(args.rounds):       # alternated, so a drift of the machine hits all alike
            for way in WAYS:
                results[way].append(run(way, server, path, args.concurrency, args.part_mib))
        size_mib = path.stat().st_size / 2**20
        speed = {way: statistics.median(size_mib / r["seconds"] for r in rs) for way, rs in results.items()}
        peak = {way: max(r["peak_above_idle_mib"] for r in rs) for way, rs in results.items()}
        cpu = {way: {k: statistics.median(r[k] for r in rs) for k in ("cpu_s", "server_cpu_s", "completion_s")}
               for way, rs in results.items()}
        print(f"file: {size_mib:.0f} MiB, {args.rounds} round(s), moto server on loopback, "
              f"our upload {args.concurrency} part(s) of {args.part_mib} MiB in flight")
        for way, label in WAYS.items():
            print(f"  {label:38s} {speed[way]:7.1f} MiB/s   peak RSS above idle {peak[way]:6.1f} MiB   "
                  f"CPU s: uploader {cpu[way]['cpu_s']:5.1f}, server {cpu[way]['server_cpu_s']:5.1f}   "
                  f"waiting for CompleteMultipartUpload {cpu[way]['completion_s']:4.1f} s")
        ratio = speed["ours"] / speed["plain"]
        print(f"throughput ratio ours/plain: {ratio:.2f}x (target >= 0.9x); "
              f"ours/boto3 managed multipart: {speed['ours'] / speed['managed']:.2f}x")
        print(f"our peak RSS above idle: {peak['ours']:.1f} MiB (target <= 64 MiB)")
    finally:
        path.unlink(missing_ok=True)
        server.stop()


if __name__ == "__main__":
    main()

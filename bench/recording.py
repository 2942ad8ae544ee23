"""N concurrent recordings through the bridge's supervisor vs. the same N plain FFmpeg processes.

    .venv/bin/python bench/recording.py            # 50 recordings, 20 s each
    .venv/bin/python bench/recording.py -n 10 --duration 10 --no-finalize

Each recording pulls a pre-generated 720p30 H.264 (2.5 Mbps) + AAC MPEG-TS file in real time (``-re``,
looped) and stream-copies it into a part, exactly as a live pull would. The source is encoded once and
cached under var/bench/. Both phases run the same FFmpeg input/output options; the bridge adds
``-progress`` parsing, stall/disk supervision, the q→SIGINT→SIGKILL stop and the part probe.

CPU is read from /proc (utime+stime of this process and every FFmpeg child) over a steady-state window
and reported as a percentage of all cores. Target: ≥ 50 recordings using ≤ 60 % of 2 cores.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bridge.recording import (  # noqa: E402
    EndReason,
    RecorderConfig,
    RecordingSession,
    RecordingSpec,
    finalize,
    locate_ffmpeg,
)
from bridge.recording.ffmpeg import FFmpegBinaries  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
NCPU = os.cpu_count() or 1


# ------------------------------------------------------------------------------------------ /proc utils


def cpu_ticks(pid: int | str) -> int:
    """utime + stime of one process (all its threads), in clock ticks; 0 if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])        # fields 14 and 15 of proc(5)


def mem_kib(pid: int | str) -> tuple[int, int]:
    """(RSS, PSS) in KiB. PSS splits shared pages (the FFmpeg binary) between the processes."""
    rss = pss = 0
    with_status = Path(f"/proc/{pid}/status")
    try:
        for line in with_status.read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                pss = int(line.split()[1])
    except OSError:
        pass
    return rss, pss


@dataclass
class Phase:
    name: str
    n: int
    cpu_pct: float = 0.0                 # of all cores, steady window
    window_s: float = 0.0
    cpu_pct_self: float = 0.0            # this Python process's share
    rss_kib: list[int] = field(default_factory=list)
    pss_kib: list[int] = field(default_factory=list)
    py_rss_growth_kib: int = 0
    start_latency: list[float] = field(default_factory=list)
    stop_latency: list[float] = field(default_factory=list)
    lost: int = 0
    lost_why: list[str] = field(default_factory=list)
    finalize_s: float | None = None
    finalize_ok: int = 0
    wall_s: float = 0.0


def window_cpu(pids: list[int], seconds: float) -> tuple[float, float, float]:
    """Sleep ``seconds`` while measuring: (total % of all cores, this process's %, wall)."""
    before = {p: cpu_ticks(p) for p in pids}
    self_before = cpu_ticks("self")
    t0 = time.monotonic()
    time.sleep(seconds)
    wall = time.monotonic() - t0
    total = sum(cpu_ticks(p) - before[p] for p in pids)
    own = cpu_ticks("self") - self_before
    scale = 100.0 / (CLK_TCK * wall * NCPU)
    return (total + own) * scale, own * scale, wall


async def async_window_cpu(pids: list[int], seconds: float) -> tuple[float, float, float]:
    """Same, but the event loop keeps running (the supervisor works during the window)."""
    before = {p: cpu_ticks(p) for p in pids}
    self_before = cpu_ticks("self")
    t0 = time.monotonic()
    await asyncio.sleep(seconds)
    wall = time.monotonic() - t0
    total = sum(cpu_ticks(p) - before[p] for p in pids)
    own = cpu_ticks("self") - self_before
    scale = 100.0 / (CLK_TCK * wall * NCPU)
    return (total + own) * scale, own * scale, wall


# -------------------------------------------------------------------------------------------- source


def ensure_source(ffbin: FFmpegBinaries, seconds: int, cache: Path) -> Path:
    cache.mkdir(parents=True, exist_ok=True)
    src = cache / f"source-720p30-h264-2500k-aac-{seconds}s.ts"
    if src.exists() and src.stat().st_size > 0:
        return src
    t0 = time.monotonic()
    tmp = src.with_suffix(".tmp.ts")
    subprocess.run(
        [ffbin.ffmpeg, "-hide_banner", "-loglevel", "error", "-nostdin", "-y",
         "-f", "lavfi", "-i", "testsrc2=size=1280x720:rate=30",
         "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000",
         "-t", str(seconds), "-c:v", "libx264", "-preset", "veryfast", "-b:v", "2500k", "-maxrate", "2500k",
         "-bufsize", "5000k", "-g", "60", "-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", "128k", "-ac", "2",
         "-f", "mpegts", str(tmp)], check=True, timeout=300)
    tmp.replace(src)
    print(f"generated {src} in {time.monotonic() - t0:.1f}s", flush=True)
    return src


# -------------------------------------------------------------------------------------------- phases


async def bridge_phase(args: argparse.Namespace, ffbin: FFmpegBinaries, src: Path, root: Path) -> Phase:
    phase = Phase("bridge", args.n)
    config = RecorderConfig(dir=root, min_free_bytes=256 * 2**20, ffmpeg=ffbin.ffmpeg,
                            ffprobe=ffbin.ffprobe or "none")
    py_rss_before = mem_kib("self")[0]
    sessions = [RecordingSession(RecordingSpec(recording_id=f"bench-{i:03d}", lesson_id="bench",
                                               source_url=str(src), realtime=True,
                                               input_options={"stream_loop": -1}), config)
                for i in range(args.n)]
    t_begin = time.monotonic()
    starts = await asyncio.gather(*(s.start() for s in sessions), return_exceptions=True)
    for s, err in zip(sessions, starts, strict=True):
        if isinstance(err, BaseException):
            phase.lost += 1
            phase.lost_why.append(f"{s.spec.recording_id}: start failed: {err!r}")
    running = [s for s, err in zip(sessions, starts, strict=True) if not isinstance(err, BaseException)]
    await asyncio.gather(*(s.wait_started(30) for s in running))
    phase.start_latency = [s.first_media_at - s.requested_at for s in running
                           if s.first_media_at is not None and s.requested_at is not None]
    settle = 2.0
    await asyncio.sleep(settle)
    pids = [s.pid for s in running if s.pid]
    for pid in pids:
        rss, pss = mem_kib(pid)
        phase.rss_kib.append(rss)
        phase.pss_kib.append(pss)
    phase.py_rss_growth_kib = max(0, mem_kib("self")[0] - py_rss_before)
    remaining = args.duration - (time.monotonic() - t_begin)
    phase.cpu_pct, phase.cpu_pct_self, phase.window_s = await async_window_cpu(pids, max(1.0, remaining))
    results = await asyncio.gather(*(s.stop() for s in running), return_exceptions=True)
    phase.wall_s = time.monotonic() - t_begin
    for s, res in zip(running, results, strict=True):
        if isinstance(res, BaseException):
            phase.lost += 1
            phase.lost_why.append(f"{s.spec.recording_id}: {res!r}")
            continue
        if s.ended_at is not None and s.stop_requested_at is not None:
            phase.stop_latency.append(s.ended_at - s.stop_requested_at)
        expected = args.duration - (s.first_media_at or t_begin) + t_begin - 1.5
        if not res.ok or res.reason is not EndReason.STOPPED or res.recorded_s < expected:
            phase.lost += 1
            phase.lost_why.append(f"{s.spec.recording_id}: {res.reason} {res.recorded_s:.1f}s "
                                  f"(expected ≥ {expected:.1f}s) {res.stderr_tail[-1:]}")
    if args.finalize:
        t0 = time.monotonic()
        sem = asyncio.Semaphore(2)

        async def one(s: RecordingSession) -> bool:
            async with sem:
                final = await finalize(s.spec.lesson_id, s.spec.recording_id, config, deep_verify=False)
            return final.ok and abs(final.duration_s - (s.result.recorded_s if s.result else 0)) < 1.0

        oks = await asyncio.gather(*(one(s) for s in running))
        phase.finalize_s = time.monotonic() - t0
        phase.finalize_ok = sum(oks)
    return phase


def baseline_phase(args: argparse.Namespace, ffbin: FFmpegBinaries, src: Path, root: Path) -> Phase:
    """The same FFmpeg input/output options, no supervision: no -progress, no pipes, SIGINT to stop."""
    phase = Phase("baseline", args.n)
    root.mkdir(parents=True, exist_ok=True)
    outs = [root / f"plain-{i:03d}.ts" for i in range(args.n)]
    t_begin = time.monotonic()
    procs = []
    for out in outs:
        cmd = [ffbin.ffmpeg, "-hide_banner", "-nostats", "-nostdin", "-loglevel", "warning",
               "-re", "-rw_timeout", "10000000", "-stream_loop", "-1", "-i", str(src),
               "-c", "copy", "-f", "mpegts", "-flush_packets", "1", "-n", str(out)]
        procs.append(subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL, start_new_session=True))
    # start latency: from the common start request until the first bytes reach the file (polled; the
    # CPU window starts after this), as the bridge phase measures from the common start() request
    pending = dict(enumerate(outs))
    deadline = time.monotonic() + 30
    while pending and time.monotonic() < deadline:
        for i, out in list(pending.items()):
            if out.exists() and out.stat().st_size > 0:
                phase.start_latency.append(time.monotonic() - t_begin)
                del pending[i]
        time.sleep(0.02)
    time.sleep(2.0)
    pids = [p.pid for p in procs if p.poll() is None]
    for pid in pids:
        rss, pss = mem_kib(pid)
        phase.rss_kib.append(rss)
        phase.pss_kib.append(pss)
    remaining = args.duration - (time.monotonic() - t_begin)
    phase.cpu_pct, phase.cpu_pct_self, phase.window_s = window_cpu(pids, max(1.0, remaining))
    t_stop = time.monotonic()
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGINT)
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=5)
        phase.stop_latency.append(time.monotonic() - t_stop)
    phase.wall_s = time.monotonic() - t_begin
    for out, p in zip(outs, procs, strict=True):
        if p.returncode not in (0, 255) or not out.exists() or out.stat().st_size < 1_000_000:
            phase.lost += 1
            phase.lost_why.append(f"{out.name}: rc={p.returncode}")
    return phase


# ----------------------------------------------------------------------------------------------- report


def _dist(values: list[float], unit: str = "s", scale: float = 1.0) -> str:
    if not values:
        return "n/a"
    v = sorted(x * scale for x in values)
    p95 = v[min(len(v) - 1, round(0.95 * (len(v) - 1)))]
    return f"median {statistics.median(v):.2f}{unit}  p95 {p95:.2f}{unit}  max {v[-1]:.2f}{unit}"


def report(phases: list[Phase], args: argparse.Namespace, ffbin: FFmpegBinaries) -> None:
    print()
    print(f"{args.n} recordings x {args.duration:g}s of 720p30 H.264 2.5 Mbps + AAC 128k, "
          f"stream copy to MPEG-TS; {NCPU} cores; ffmpeg {ffbin.version} ({ffbin.origin}); "
          f"load avg before {args.load_before}")
    for ph in phases:
        rss = statistics.mean(ph.rss_kib) / 1024 if ph.rss_kib else 0
        pss = statistics.mean(ph.pss_kib) / 1024 if ph.pss_kib else 0
        extra = ph.py_rss_growth_kib / 1024 / max(1, ph.n)
        print(f"\n[{ph.name}]")
        print(f"  CPU (steady {ph.window_s:.1f}s window): {ph.cpu_pct:.1f}% of {NCPU} cores"
              + (f"  (supervising Python: {ph.cpu_pct_self:.1f}%)" if ph.name == "bridge" else ""))
        print(f"  memory per recording: ffmpeg RSS {rss:.1f} MiB, PSS {pss:.1f} MiB"
              + (f", + supervisor {extra * 1024:.0f} KiB" if ph.name == "bridge" else ""))
        label = ("all started at once: request → first progress" if ph.name == "bridge"
                 else "all spawned at once: request → first bytes on disk")
        print(f"  start latency ({label}): {_dist(ph.start_latency)}")
        label = "stop → completed (part probed)" if ph.name == "bridge" else "SIGINT → exited"
        print(f"  stop latency ({label}): {_dist(ph.stop_latency)}")
        print(f"  lost: {ph.lost}" + (f"  {ph.lost_why[:5]}" if ph.lost_why else ""))
        if ph.finalize_s is not None:
            print(f"  finalize (join + probe + sha256, 2 at a time): {ph.finalize_ok}/{ph.n} ok in "
                  f"{ph.finalize_s:.1f}s")
        print(f"  phase wall time: {ph.wall_s:.1f}s")
    by = {p.name: p for p in phases}
    if "bridge" in by and "baseline" in by and by["baseline"].cpu_pct > 0:
        ratio = by["bridge"].cpu_pct / by["baseline"].cpu_pct
        print(f"\nratio bridge/baseline CPU: {ratio:.2f}x")
    b = by.get("bridge")
    if b and b.n < 50:
        print("\ntarget check needs -n 50 or more")
    elif b:
        verdict = "PASS" if b.n >= 50 and b.cpu_pct <= 60 and b.lost == 0 else "FAIL"
        print(f"target (≥ 50 recordings, ≤ 60% of CPU, 0 lost): {verdict} — "
              f"{b.n} recordings, {b.cpu_pct:.1f}%, {b.lost} lost")


async def amain(args: argparse.Namespace) -> int:
    ffbin = locate_ffmpeg()
    src = ensure_source(ffbin, args.source_seconds, Path(args.cache))
    args.load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    work = Path(tempfile.mkdtemp(prefix="bench-recording-", dir=args.workdir))
    phases = []
    try:
        if not args.skip_bridge:
            phases.append(await bridge_phase(args, ffbin, src, work / "bridge"))
        if not args.skip_baseline:
            phases.append(await asyncio.to_thread(baseline_phase, args, ffbin, src, work / "baseline"))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report(phases, args, ffbin)
    return 0 if all(p.lost == 0 for p in phases) else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", "--recordings", dest="n", type=int, default=50)
    parser.add_argument("--duration", type=float, default=20.0, help="seconds each recording runs")
    parser.add_argument("--source-seconds", type=int, default=20, help="length of the cached source")
    parser.add_argument("--cache", default=str(ROOT / "var" / "bench"), help="where the source is cached")
    parser.add_argument("--workdir", default=None, help="where recordings are written (default: $TMPDIR)")
    parser.add_argument("--no-finalize", dest="finalize", action="store_false")
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--skip-bridge", action="store_true")
    args = parser.parse_args()
    return asyncio.run(amain(args))


if __name__ == "__main__":
    sys.exit(main())

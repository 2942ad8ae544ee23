"""The recording lease: a live supervisor keeps it, and a lease gone for a live job is reclaimed by
exactly one other recorder, with never two FFmpeg processes for one recording at once.

Written against that behaviour only (not against what a recorder does once it finds it lost its
lease, which may change), with real recorder processes, real FFmpeg and a real Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from arq.constants import in_progress_key_prefix

from bridge.config import load_settings
from bridge.embedded import EmbeddedRedis
from bridge.recorder import may_reclaim, reclaim_orphans
from bridge.recording.ffmpeg import FFmpegBinaries
from bridge.store import ACTIVE_RECORDINGS, recording_key, recording_lease_key
from tests.conftest import default_config, wait_until
from tests.recording.conftest import ffmpeg_pids
from tests.recording.test_recorder_job import (  # noqa: F401 - long_source is a fixture
    long_source,
    recorded,
    recorded_at_least,
    recorder_config,
    recording_under_way,
)

LEASE_S = 3          # recorder_config's lease_s
JOB_ID = "default:rec_1:recording_start"


async def test_a_lapsed_lease_is_reclaimed_by_exactly_one_of_many_recorders(redis, redis_server: EmbeddedRedis,
                                                                            tmp_path) -> None:
    """reclaim_orphans as every recorder runs it, against a real Redis: a held lease keeps the job;
    once the lease key is gone, of five recorders reclaiming at once exactly one hands the job back."""
    config = default_config(tmp_path, extra=f"[recording]\nlease_s = {LEASE_S}")
    settings = load_settings({"BRIDGE_CONFIG": str(config), "REDIS_URL": redis_server.url})
    # A reclaimer acts only once it and Redis have been up a whole lease period.
    await wait_until(lambda: may_reclaim(redis, LEASE_S), timeout=LEASE_S + 5)
    recording_id = "rec_lease_test"
    await redis.zadd(ACTIVE_RECORDINGS, {recording_id: time.time()})
    await redis.hset(recording_key(recording_id), mapping={"job_id": JOB_ID, "status": "recording"})
    await redis.set(in_progress_key_prefix + JOB_ID, "1")
    await redis.set(recording_lease_key(recording_id), "recorder-a", px=LEASE_S * 1000)
    assert await reclaim_orphans(redis, settings) == []
    assert await redis.exists(in_progress_key_prefix + JOB_ID)            # a held lease keeps the job
    await redis.delete(recording_lease_key(recording_id))                 # the lease lapses
    clients = [aioredis.from_url(redis_server.url) for _ in range(5)]
    try:
        results = await asyncio.gather(*(reclaim_orphans(c, settings) for c in clients))
    finally:
        await asyncio.gather(*(c.aclose() for c in clients))
    assert sorted(results) == [[], [], [], [], [recording_id]]
    assert not await redis.exists(in_progress_key_prefix + JOB_ID)        # arq may run the job again
    assert await reclaim_orphans(redis, settings) == []                  # and nobody reclaims it twice
    # arq has started the re-run (its in-progress mark is back) and the run has not taken the lease
    # yet: the reclaimer's mark on the lease keeps every other reclaimer off it for a lease period.
    await redis.set(in_progress_key_prefix + JOB_ID, "1")
    assert await reclaim_orphans(redis, settings) == []
    assert await redis.exists(in_progress_key_prefix + JOB_ID)


class FFmpegWatch:
    """Samples the FFmpeg processes of one recording every 50 ms; remembers the most seen at once."""

    def __init__(self, recording_id: str) -> None:
        self.recording_id, self.most, self.pids = recording_id, 0, set[int]()

    async def run(self) -> None:
        while True:
            pids = ffmpeg_pids(self.recording_id)
            self.most = max(self.most, len(pids))
            self.pids |= set(pids)
            await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def watching(recording_id: str) -> AsyncIterator[FFmpegWatch]:
    watch = FFmpegWatch(recording_id)
    task = asyncio.ensure_future(watch.run())
    try:
        yield watch
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def reclaims(logs: Callable[[], str]) -> int:
    return logs().count("recording.reclaimed")


async def recording_with_two_more_recorders(make_bridge, client, redis, receiver, tmp_path, source: Path,
                                           binaries: FFmpegBinaries) -> tuple[Any, subprocess.Popen[bytes], str, str]:
    """A recording under way in one recorder while two others run their reclaim loops."""
    hook, hook_url = receiver
    bridge = make_bridge(recorder_config(tmp_path, hook_url, binaries))
    bridge.start_worker()
    supervisor = bridge.start_worker("recorder")
    recording_id = await recording_under_way(client, bridge, redis, hook, source, seconds=1)
    owner = (await recorded(redis, recording_id))["owner"]
    bridge.start_worker("recorder")
    bridge.start_worker("recorder")
    return bridge, supervisor, recording_id, owner


async def test_a_live_recording_keeps_its_lease_while_progress_goes_on(
        make_bridge, client, redis, receiver, tmp_path, long_source, media_bin) -> None:  # noqa: F811 - the fixture
    bridge, _, recording_id, owner = await recording_with_two_more_recorders(
        make_bridge, client, redis, receiver, tmp_path, long_source, media_bin)
    async with watching(recording_id) as watch:
        start = float((await recorded(redis, recording_id))["recorded_s"])
        await wait_until(lambda: recorded_at_least(redis, recording_id, start + 2.5 * LEASE_S), timeout=30)
    record = await recorded(redis, recording_id)
    assert (record["owner"], record["part"], record["status"]) == (owner, "0", "recording")
    assert await redis.exists(recording_lease_key(recording_id))
    assert reclaims(bridge.logs) == 0 and watch.most == 1 and len(watch.pids) == 1


async def test_a_lapsed_lease_of_a_live_job_is_taken_over_exactly_once(
        make_bridge, client, redis, receiver, tmp_path, long_source, media_bin) -> None:  # noqa: F811 - the fixture
    bridge, supervisor, recording_id, _ = await recording_with_two_more_recorders(
        make_bridge, client, redis, receiver, tmp_path, long_source, media_bin)
    try:
        async with watching(recording_id) as watch:
            # The supervisor stops renewing (frozen) while its FFmpeg goes on: the lease key goes away.
            supervisor.send_signal(signal.SIGSTOP)
            await wait_until(lambda: not_exists(redis, recording_lease_key(recording_id)), timeout=LEASE_S + 5)
            await wait_until(lambda: reclaims(bridge.logs) >= 1, timeout=10)
            # The taker's run either waits for the frozen supervisor's lock or records a new part.
            await wait_until(lambda: "is being written by another process" in bridge.logs() or len(watch.pids) > 1,
                             timeout=15)
            await asyncio.sleep(2)      # each other recorder's reclaim loop (1 s period) goes round again
            assert watch.most == 1, f"two FFmpeg processes recorded {recording_id} at once"
            assert reclaims(bridge.logs) == 1
    finally:
        supervisor.kill()               # a dead recorder: its FFmpeg dies with it (PR_SET_PDEATHSIG)
        supervisor.wait(timeout=10)
    await wait_until(lambda: not ffmpeg_pids(recording_id) or len(watch.pids) > 1, timeout=10)


async def not_exists(redis: aioredis.Redis, key: str) -> bool:
    return not await redis.exists(key)

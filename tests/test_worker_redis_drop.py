"""arq's claim of a job watches its in-progress key; a connection lost while watching must not end the worker."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
import redis.asyncio as aioredis
from arq.connections import RedisSettings, create_pool

from bridge.processes import free_port
from bridge.store import WORKER_QUEUE, arq_payload
from workers.worker import ResilientWorker


class DropAfterWatch:
    """Forwards to Redis; while `armed`, resets a client's connection when it sends EXISTS after WATCH."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port, self.port, self.armed, self.drops = upstream_port, free_port(), True, 0

    async def _client_to_redis(self, reader: asyncio.StreamReader, up: asyncio.StreamWriter,
                               down: asyncio.StreamWriter) -> None:
        watching = False
        while data := await reader.read(65536):
            watching = watching or b"WATCH" in data
            if self.armed and watching and b"EXISTS" in data:
                self.drops += 1
                down.transport.abort()
                up.transport.abort()
                return
            up.write(data)
            await up.drain()

    async def _redis_to_client(self, reader: asyncio.StreamReader, down: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            down.write(data)
            await down.drain()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        with contextlib.suppress(ConnectionError, OSError):
            await asyncio.gather(self._client_to_redis(reader, up_writer, writer),
                                 self._redis_to_client(up_reader, writer))
        writer.transport.abort()
        up_writer.transport.abort()


async def noop(ctx: dict) -> str:
    return "done"


@pytest.mark.timeout(60)
async def test_a_connection_lost_while_claiming_a_job_gives_the_slot_back_and_the_job_runs(
        redis_server, redis: aioredis.Redis) -> None:
    proxy = DropAfterWatch(int(redis_server.url.rsplit(":", 1)[1].split("/")[0]))
    server = await asyncio.start_server(proxy.handle, "127.0.0.1", proxy.port)
    pool = await create_pool(RedisSettings(host="127.0.0.1", port=proxy.port))
    worker = ResilientWorker(functions=[noop], redis_pool=pool, max_jobs=1, poll_delay=0.05,
                             handle_signals=False, burst=False)
    try:
        await redis.set("arq:job:drop-1", arq_payload("noop", (), 0))
        await redis.zadd(WORKER_QUEUE, {"drop-1": 1})
        free_slots = worker.sem._value
        for _ in range(3):              # each poll meets the dropped connection and survives it
            await worker._poll_iteration()
        assert proxy.drops >= 1
        assert worker.job_counter == 0 and worker.sem._value == free_slots    # the slot came back
        proxy.armed = False
        async with asyncio.timeout(20):
            while await redis.exists("arq:result:drop-1") == 0:
                await worker._poll_iteration()
                await asyncio.sleep(0.05)
    finally:
        await worker.close()
        server.close()
        await redis.delete("arq:result:drop-1", "arq:job:drop-1")

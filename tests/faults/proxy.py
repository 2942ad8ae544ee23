"""A TCP proxy on loopback between the bridge's processes and Redis, that can cut every connection.

`cut(refuse_s)` resets every open connection at once (RST, so commands in flight die mid-reply) and
resets each new one for `refuse_s` seconds: what a network blip or a load balancer in front of a
managed Redis does to its clients.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from collections.abc import Iterator
from contextlib import contextmanager

from bridge.processes import free_port
from tests.fakes.threaded_server import threaded_server


def _reset(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        try:   # linger 0: close() sends RST instead of FIN
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    writer.transport.abort()


class CuttingProxy:
    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = free_port()
        self.refuse_until = 0.0
        self.cuts = 0
        self.pairs: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self.loop: asyncio.AbstractEventLoop | None = None

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.transport.abort()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if time.monotonic() < self.refuse_until:
            _reset(writer)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            _reset(writer)
            return
        pair = (writer, up_writer)
        self.pairs.add(pair)
        try:
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        finally:
            self.pairs.discard(pair)

    def _cut(self, refuse_s: float) -> None:
        self.cuts += 1
        self.refuse_until = time.monotonic() + refuse_s
        for client, upstream in list(self.pairs):
            _reset(client)
            _reset(upstream)

    def cut(self, refuse_s: float) -> None:
        assert self.loop is not None
        self.loop.call_soon_threadsafe(self._cut, refuse_s)


@contextmanager
def cutting_proxy(upstream_port: int) -> Iterator[CuttingProxy]:
    proxy = CuttingProxy(upstream_port)
    with threaded_server(proxy._handle, proxy.port) as loop:
        proxy.loop = loop
        yield proxy

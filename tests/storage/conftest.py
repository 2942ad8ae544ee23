"""A real S3-protocol server (moto's standalone server) on loopback, and storages pointed at it."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from bridge.processes import die_with_parent, free_port, wait_for_port
from bridge.storage import S3Storage

ACCESS_KEY, SECRET_KEY = "test-access-key", "test-secret-key"
PART = 5 * 1024 * 1024          # S3's minimum part: small files still take the multipart path


class MotoServer:
    def __init__(self, log: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> MotoServer:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1",
                                             "-p", str(self.port)], stdout=log, stderr=subprocess.STDOUT,
                                            preexec_fn=die_with_parent)
        if not wait_for_port(self.port, 30):
            raise AssertionError(f"moto server did not start; see {self.log}")
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    server = MotoServer(tmp_path_factory.mktemp("moto") / "moto.log").start()
    yield server
    server.stop()


def s3_storage(server: MotoServer, bucket: str, **options: object) -> S3Storage:
    return S3Storage(bucket, ACCESS_KEY, SECRET_KEY, endpoint_url=server.url, prefix="recordings/",
                     part_size=PART, **options)  # type: ignore[arg-type]


@pytest.fixture
async def bucket(moto_server: MotoServer) -> AsyncIterator[str]:
    name = f"rec-{uuid.uuid4().hex[:12]}"
    storage = s3_storage(moto_server, name)
    await (await storage.client()).create_bucket(Bucket=name)
    yield name
    await storage.aclose()


@pytest.fixture
async def s3(moto_server: MotoServer, bucket: str) -> AsyncIterator[S3Storage]:
    storage = s3_storage(moto_server, bucket, retry_budget_s=5.0)
    yield storage
    await storage.aclose()


def write_file(path: Path, size: int) -> Path:
    """`size` bytes that differ part to part, so a part uploaded in the wrong place would be noticed."""
    block = uuid.uuid4().bytes * 4096
    with path.open("wb") as f:
        written = 0
        while written < size:
            piece = block[: min(len(block), size - written)]
            f.write(piece)
            written += len(piece)
            block = block[1:] + block[:1]
    return path

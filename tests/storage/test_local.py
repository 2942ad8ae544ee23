"""Local storage and its download route, served over real HTTP on loopback."""

from __future__ import annotations

import asyncio
import hashlib
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from starlette.applications import Starlette

from bridge.storage import InvalidRecording, LocalStorage, RecordingNotFound, VerificationFailed, recordings_route
from tests.fakes.server import serve
from tests.storage.conftest import write_file

SECRET = "link-secret-for-tests-0123456789"
SIZE = 300_000


@pytest.fixture
def storage(tmp_path: Path) -> LocalStorage:
    return LocalStorage(tmp_path / "store", "http://127.0.0.1:1", SECRET, url_ttl_s=60)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[LocalStorage, Path, str]]:
    """(storage, the stored recording's source file, base URL) with rec_1 stored and a secret file beside
    the storage directory, where `../` would lead."""
    (tmp_path / "secret.mp4").write_bytes(b"TOP-SECRET" * 100)
    app_storage = LocalStorage(tmp_path / "store", "http://127.0.0.1:1", SECRET, url_ttl_s=60)
    source = write_file(tmp_path / "lesson.mp4", SIZE)
    asyncio.run(app_storage.upload("rec_1", source))
    with serve(Starlette(routes=[recordings_route(app_storage)])) as base:
        yield LocalStorage(tmp_path / "store", base, SECRET, url_ttl_s=60), source, base


def signed_query(storage: LocalStorage, recording_id: str, expires: int | None = None) -> str:
    expires = expires or int(time.time()) + 60
    return f"expires={expires}&sig={storage.signature(recording_id, expires)}"


async def raw_get(base: str, target: str) -> tuple[int, bytes]:
    """A request line sent as written: HTTP clients would resolve `..` segments before sending."""
    url = urlsplit(base)
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    writer.write(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    return int(answer.split(b" ", 2)[1]), answer


async def test_upload_places_a_verified_file_under_the_id(storage: LocalStorage, tmp_path: Path) -> None:
    source = write_file(tmp_path / "lesson.mp4", SIZE)
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    stored = await storage.upload("rec_1", source, sha256=digest)
    assert (stored.key, stored.bytes, stored.sha256, stored.content_type) == ("rec_1.mp4", SIZE, digest, "video/mp4")
    assert (storage.directory / "rec_1.mp4").read_bytes() == source.read_bytes()
    assert await storage.upload("rec_1", source, sha256=digest) == stored       # safe to run twice
    assert sorted(p.name for p in storage.directory.iterdir()) == ["rec_1.mp4"]  # no temp file left


async def test_upload_from_another_file_system_is_copied_and_verified(storage: LocalStorage) -> None:
    with tempfile.TemporaryDirectory(dir="/dev/shm") as other:
        source = write_file(Path(other) / "lesson.mkv", SIZE)
        assert os.stat(other).st_dev != storage.directory.parent.stat().st_dev   # the copy path, not a link
        stored = await storage.upload("rec_2", source)
        assert (storage.directory / "rec_2.mkv").read_bytes() == source.read_bytes()
        assert stored.content_type == "video/x-matroska"


async def test_a_file_that_changed_since_finalize_is_refused(storage: LocalStorage, tmp_path: Path) -> None:
    source = write_file(tmp_path / "lesson.mp4", SIZE)
    with pytest.raises(VerificationFailed, match="SHA-256"):
        await storage.upload("rec_1", source, sha256="0" * 64)
    assert list(storage.directory.iterdir()) == [] and source.exists()


@pytest.mark.parametrize(("recording_id", "name"), [("../escape", "lesson.mp4"), ("rec_1", "lesson.exe"),
                                                    ("rec 1", "lesson.mp4"), ("", "lesson.mp4")])
async def test_upload_refuses_bad_ids_and_unknown_containers(storage: LocalStorage, tmp_path: Path,
                                                             recording_id: str, name: str) -> None:
    with pytest.raises(InvalidRecording):
        await storage.upload(recording_id, write_file(tmp_path / name, 10))


async def test_delete_is_idempotent(storage: LocalStorage, tmp_path: Path) -> None:
    await storage.upload("rec_1", write_file(tmp_path / "lesson.mp4", 10))
    assert await storage.delete("rec_1") is True
    assert await storage.delete("rec_1") is False
    with pytest.raises(RecordingNotFound):
        await storage.link("rec_1")


async def test_a_link_serves_the_whole_file_then_expires(served: tuple[LocalStorage, Path, str]) -> None:
    storage, source, base = served
    link = await storage.link("rec_1")
    assert link.url.startswith(f"{base}/v1/recordings/rec_1?expires={link.expires_at}&sig=")
    async with httpx.AsyncClient() as http:
        whole = await http.get(link.url)
        head = await http.head(link.url)
        expired = await http.get(f"{base}/v1/recordings/rec_1?{signed_query(storage, 'rec_1', int(time.time()) - 1)}")
    assert whole.status_code == 200 and whole.content == source.read_bytes()
    assert whole.headers["content-type"] == "video/mp4" and whole.headers["accept-ranges"] == "bytes"
    assert head.status_code == 200 and head.headers["content-length"] == str(SIZE) and head.content == b""
    assert expired.status_code == 403 and expired.json()["error"]["code"] == "link_expired"


@pytest.mark.parametrize(("header", "first", "last"), [("bytes=0-99", 0, 99), ("bytes=1000-", 1000, SIZE - 1),
                                                       ("bytes=-500", SIZE - 500, SIZE - 1),
                                                       ("bytes=299990-999999", 299990, SIZE - 1)])
async def test_a_single_range_is_206_with_its_bytes(served: tuple[LocalStorage, Path, str], header: str,
                                                    first: int, last: int) -> None:
    storage, source, _ = served
    async with httpx.AsyncClient() as http:
        answer = await http.get((await storage.link("rec_1")).url, headers={"Range": header})
    assert answer.status_code == 206
    assert answer.headers["content-range"] == f"bytes {first}-{last}/{SIZE}"
    assert answer.content == source.read_bytes()[first:last + 1]


@pytest.mark.parametrize("header", [f"bytes={SIZE}-", f"bytes={SIZE + 10}-{SIZE + 20}", "bytes=-0"])
async def test_an_unsatisfiable_range_is_416(served: tuple[LocalStorage, Path, str], header: str) -> None:
    storage = served[0]
    async with httpx.AsyncClient() as http:
        answer = await http.get((await storage.link("rec_1")).url, headers={"Range": header})
    assert answer.status_code == 416 and answer.headers["content-range"] == f"bytes */{SIZE}"
    assert answer.json()["error"]["code"] == "range_not_satisfiable"


@pytest.mark.parametrize("header", ["bytes=0-1,5-6", "items=0-5", "bytes=9-3"])
async def test_ranges_the_route_does_not_serve_get_the_whole_file(served: tuple[LocalStorage, Path, str],
                                                                  header: str) -> None:
    storage, source, _ = served
    async with httpx.AsyncClient() as http:
        answer = await http.get((await storage.link("rec_1")).url, headers={"Range": header})
    assert answer.status_code == 200 and answer.content == source.read_bytes()


async def test_bad_signatures_are_403(served: tuple[LocalStorage, Path, str]) -> None:
    storage, _, base = served
    await storage.upload("rec_other", served[1])
    expires = int(time.time()) + 60
    genuine = storage.signature("rec_1", expires)
    forged = genuine[:-1] + ("1" if genuine.endswith("0") else "0")
    cases = {
        "": "bad_signature",
        f"expires={expires}": "bad_signature",
        f"expires={expires}&sig={forged}": "bad_signature",
        f"expires={expires + 1}&sig={storage.signature('rec_1', expires)}": "bad_signature",  # a longer life
        signed_query(storage, "rec_other"): "bad_signature",                                 # another id's
        f"expires=-5&sig={storage.signature('rec_1', expires)}": "bad_signature",
    }
    async with httpx.AsyncClient() as http:
        for query, code in cases.items():
            answer = await http.get(f"{base}/v1/recordings/rec_1?{query}")
            assert (answer.status_code, answer.json()["error"]["code"]) == (403, code), query


@pytest.mark.parametrize("target", ["/v1/recordings/../secret", "/v1/recordings/..%2Fsecret",
                                    "/v1/recordings/%2E%2E%2Fsecret", "/v1/recordings/%2e%2e",
                                    "/v1/recordings/..%5Csecret", "/v1/recordings/secret%00",
                                    "/v1/recordings/%2E%2E%252Fsecret", "/v1/recordings/store%2F..%2F..%2Fsecret"])
async def test_traversal_attempts_serve_nothing(served: tuple[LocalStorage, Path, str], target: str) -> None:
    storage, _, base = served
    name = urlsplit(target).path.removeprefix("/v1/recordings/")
    for recording_id in {name, name.replace("%2F", "/").replace("%2E", ".").replace("%2e", "."), "secret"}:
        status, answer = await raw_get(base, f"{target}?{signed_query(storage, recording_id)}")
        assert status in (403, 404), (target, answer[:200])
        assert b"TOP-SECRET" not in answer


async def test_a_signed_id_that_is_not_stored_is_404(served: tuple[LocalStorage, Path, str]) -> None:
    storage, _, base = served
    async with httpx.AsyncClient() as http:
        answer = await http.get(f"{base}/v1/recordings/secret?{signed_query(storage, 'secret')}")
    assert answer.status_code == 404 and answer.json()["error"]["code"] == "not_found"


def test_settings_are_checked_when_built(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least 16 bytes"):
        LocalStorage(tmp_path, "http://127.0.0.1", "short")
    with pytest.raises(ValueError, match="7 days"):
        LocalStorage(tmp_path, "http://127.0.0.1", SECRET, url_ttl_s=8 * 24 * 3600)
    with pytest.raises(ValueError, match="public_url"):
        LocalStorage(tmp_path, "127.0.0.1:8000", SECRET)

"""S3 storage against moto's standalone server over loopback HTTP: real requests, real multipart."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import signal
import sys
import time
import zlib
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from bridge.storage import RecordingNotFound, S3Storage, StorageUnavailable, VerificationFailed
from tests.storage.conftest import PART, MotoServer, s3_storage, write_file

ROOT = Path(__file__).resolve().parents[2]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def stored_bytes(s3: S3Storage, key: str) -> bytes:
    answer = await (await s3.client()).get_object(Bucket=s3.bucket, Key=key)
    async with answer["Body"] as body:
        return bytes(await body.read())


async def pending_uploads(s3: S3Storage) -> list[dict]:
    answer = await (await s3.client()).list_multipart_uploads(Bucket=s3.bucket)
    return answer.get("Uploads", [])


async def is_stored(s3: S3Storage, key: str) -> bool:
    return bool((await (await s3.client()).list_objects_v2(Bucket=s3.bucket, Prefix=key)).get("KeyCount"))


async def test_a_file_larger_than_a_part_goes_up_in_parts_and_a_second_upload_sends_nothing(
        s3: S3Storage, tmp_path: Path) -> None:
    source = write_file(tmp_path / "lesson.mp4", 2 * PART + 12345)
    stored = await s3.upload("rec_big", source, sha256=sha256(source))

    assert (stored.key, stored.bytes, stored.content_type) == ("recordings/rec_big.mp4", 2 * PART + 12345, "video/mp4")
    assert stored.sha256 == sha256(source) and stored.parts_reused == 0
    assert await stored_bytes(s3, stored.key) == source.read_bytes()
    head = await (await s3.client()).head_object(Bucket=s3.bucket, Key=stored.key)
    assert head["ETag"].strip('"').endswith("-3") and head["ContentType"] == "video/mp4"
    assert await pending_uploads(s3) == []

    again = await s3.upload("rec_big", source)        # safe to run twice: found whole, nothing re-sent
    assert again.parts_reused == 3 and again.sha256 == stored.sha256


async def test_a_multipart_upload_declares_a_checksum_per_part_so_completion_only_combines_them(
        s3: S3Storage, tmp_path: Path) -> None:
    """Without a declared part checksum the service computes a full-object one at completion by re-reading
    the whole object (moto's server copies it in memory twice): completion then took as long as the parts."""
    source = write_file(tmp_path / "lesson.mp4", 2 * PART + 777)
    stored = await s3.upload("rec_crc", source)
    data = source.read_bytes()
    part_crc32s = b"".join(zlib.crc32(data[at:at + PART]).to_bytes(4, "big") for at in range(0, len(data), PART))
    composite = base64.b64encode(zlib.crc32(part_crc32s).to_bytes(4, "big")).decode()
    head = await (await s3.client()).head_object(Bucket=s3.bucket, Key=stored.key, ChecksumMode="ENABLED")
    assert head["ChecksumCRC32"].split("-")[0] == composite     # AWS appends "-<parts>"; moto does not


async def test_a_small_file_is_one_put(s3: S3Storage, tmp_path: Path) -> None:
    source = write_file(tmp_path / "short.webm", 1000)
    stored = await s3.upload("rec_small", source)
    assert (stored.key, stored.content_type) == ("recordings/rec_small.webm", "video/webm")
    head = await (await s3.client()).head_object(Bucket=s3.bucket, Key=stored.key)
    assert head["ETag"].strip('"') == hashlib.md5(source.read_bytes()).hexdigest()
    assert await stored_bytes(s3, stored.key) == source.read_bytes()
    assert await pending_uploads(s3) == []


@pytest.mark.parametrize("size", [1000, 2 * PART + 1])
async def test_a_file_that_changed_since_finalize_never_lands_under_the_key(
        s3: S3Storage, tmp_path: Path, size: int) -> None:
    source = write_file(tmp_path / "lesson.mp4", size)
    with pytest.raises(VerificationFailed, match="SHA-256"):
        await s3.upload("rec_changed", source, sha256="0" * 64)
    assert not await is_stored(s3, "recordings/rec_changed")
    assert source.exists()


async def test_an_object_that_does_not_match_after_upload_is_removed(s3: S3Storage, tmp_path: Path) -> None:
    source = write_file(tmp_path / "lesson.mp4", 2 * PART + 1)
    stored = await s3.upload("rec_mismatch", source)
    with pytest.raises(VerificationFailed, match="was removed"):
        await s3._verify(stored.key, stored.bytes, "not-the-etag-3")
    assert not await is_stored(s3, stored.key)


KILLABLE_UPLOAD = """
import asyncio, sys
from pathlib import Path
from bridge.storage import S3Storage
storage = S3Storage(sys.argv[1], "test-access-key", "test-secret-key", endpoint_url=sys.argv[2],
                    part_size=5 * 1024 * 1024, concurrency=1)
asyncio.run(storage.upload("rec_killed", Path(sys.argv[3])))
"""


async def test_an_upload_killed_mid_way_is_resumed_and_nothing_sits_under_the_key_meanwhile(
        moto_server: MotoServer, s3: S3Storage, tmp_path: Path) -> None:
    source = write_file(tmp_path / "lesson.mp4", 60 * PART + 99)
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", KILLABLE_UPLOAD, s3.bucket, moto_server.url, str(source), cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    client = await s3.client()
    try:
        deadline = time.monotonic() + 60
        while True:            # kill -9 once a few parts are in, well before the last
            uploads = await pending_uploads(s3)
            if uploads:
                parts = await client.list_parts(Bucket=s3.bucket, Key=uploads[0]["Key"],
                                                UploadId=uploads[0]["UploadId"])
                if len(parts.get("Parts", [])) >= 3:
                    break
            assert child.returncode is None and time.monotonic() < deadline, "the upload ended before it was killed"
            await asyncio.sleep(0.02)
        child.send_signal(signal.SIGKILL)
    finally:
        if child.returncode is None:
            child.kill()
        await asyncio.wait_for(child.wait(), 10)

    assert not await is_stored(s3, "recordings/rec_killed")
    (killed_upload,) = await pending_uploads(s3)
    done_before = (await client.list_parts(Bucket=s3.bucket, Key=killed_upload["Key"],
                                           UploadId=killed_upload["UploadId"]))["Parts"]
    assert 3 <= len(done_before) < 61

    stored = await s3.upload("rec_killed", source, sha256=sha256(source))
    assert stored.parts_reused >= len(done_before)
    assert await stored_bytes(s3, stored.key) == source.read_bytes()
    assert await pending_uploads(s3) == []


async def test_a_storage_outage_is_retried_within_the_budget_then_reported_and_the_file_is_kept(
        tmp_path: Path) -> None:
    server = MotoServer(tmp_path / "moto.log").start()
    server.stop()
    storage = s3_storage(server, "outage-bucket", retry_budget_s=2.0, connect_timeout_s=1.0)
    source = write_file(tmp_path / "lesson.mp4", 2 * PART)
    started = time.monotonic()
    try:
        with pytest.raises(StorageUnavailable, match=r"outage-bucket failed \d+ time\(s\) within 2 s"):
            await storage.upload("rec_outage", source)
    finally:
        await storage.aclose()
    assert 1.0 < time.monotonic() - started < 15
    assert source.stat().st_size == 2 * PART


async def test_an_outage_shorter_than_the_budget_ends_in_a_verified_upload(tmp_path: Path) -> None:
    server = MotoServer(tmp_path / "moto.log").start()
    server.stop()
    storage = s3_storage(server, "back-bucket", retry_budget_s=30.0, connect_timeout_s=1.0)
    source = write_file(tmp_path / "lesson.mp4", 2 * PART)
    upload = asyncio.ensure_future(storage.upload("rec_back", source))
    try:
        await asyncio.sleep(1.5)
        assert not upload.done()
        server.start()            # the same port: moto starts empty, so the bucket is made again
        await (await storage.client()).create_bucket(Bucket="back-bucket")
        stored = await asyncio.wait_for(upload, 40)
        assert await stored_bytes(storage, stored.key) == source.read_bytes()
    finally:
        upload.cancel()
        await storage.aclose()
        server.stop()


async def test_presigned_links_fetch_the_recording_and_carry_their_expiry(
        moto_server: MotoServer, bucket: str, tmp_path: Path) -> None:
    """moto serves presigned GETs but does not enforce their expiry (AWS, MinIO, R2 and Ceph do, from
    X-Amz-Date + X-Amz-Expires inside the signature): the link must carry both, signed."""
    storage = s3_storage(moto_server, bucket, url_ttl_s=120)
    source = write_file(tmp_path / "lesson.mp4", 3000)
    try:
        await storage.upload("rec_link", source)
        link = await storage.link("rec_link")
    finally:
        await storage.aclose()
    async with httpx.AsyncClient() as http:
        fresh = await http.get(link.url)
    assert fresh.status_code == 200 and fresh.content == source.read_bytes()
    query = parse_qs(urlsplit(link.url).query)
    signed_at = datetime.strptime(query["X-Amz-Date"][0], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC).timestamp()
    assert query["X-Amz-Expires"] == ["120"] and "X-Amz-Signature" in query
    assert abs(signed_at + 120 - link.expires_at) <= 1 and abs(link.expires_at - (time.time() + 120)) < 5
    assert link.url.startswith(f"{moto_server.url}/{bucket}/recordings/rec_link.mp4?")


async def test_delete_is_idempotent_and_drops_an_unfinished_upload(s3: S3Storage, tmp_path: Path) -> None:
    source = write_file(tmp_path / "lesson.mp4", 1000)
    await s3.upload("rec_gone", source)
    client = await s3.client()
    await client.create_multipart_upload(Bucket=s3.bucket, Key="recordings/rec_gone.mp4")

    assert await s3.delete("rec_gone") is True
    assert await s3.delete("rec_gone") is False
    assert await pending_uploads(s3) == []
    with pytest.raises(RecordingNotFound):
        await s3.link("rec_gone")


async def test_uploads_older_than_the_cutoff_are_aborted(s3: S3Storage) -> None:
    client = await s3.client()
    await client.create_multipart_upload(Bucket=s3.bucket, Key="recordings/rec_abandoned.mp4")
    # moto reports a fixed start time for every upload; the cutoff is set around whatever it says.
    (upload,) = await pending_uploads(s3)
    age_s = time.time() - upload["Initiated"].timestamp()
    assert await s3.abort_stale_uploads(older_than_s=age_s + 3600) == 0
    assert await s3.abort_stale_uploads(older_than_s=age_s - 3600) == 1
    assert await pending_uploads(s3) == []

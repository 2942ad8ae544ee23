"""`s3` storage: any S3-compatible service, through aiobotocore (README, "Recording storage").

Upload: one PUT up to `part_size`, a multipart upload above it, `concurrency` parts at a time, each
streamed from disk a chunk at a time (no part is ever held in memory whole). Integrity is checked
with MD5, the checksum every S3-compatible service implements: each part is sent with `Content-MD5`
(and a CRC32, see PART_CHECKSUM), so the service refuses a part damaged on the way, and after
completion the object's ETag must equal the multipart ETag computed here (MD5 of the parts' MD5s,
"-N") and its size the file's, or the object is deleted and the upload fails. The whole file's
SHA-256 is computed on the same read, and compared with finalize's before the upload completes.

A multipart object appears under its key only when CompleteMultipartUpload succeeds, all at once; until
then the parts sit under an upload id. A run killed mid-way leaves that upload open: the next run for
the same key finds it (ListMultipartUploads), keeps the parts whose size and MD5 match the local file
(ListParts), uploads the rest and completes. Other open uploads of the key are aborted.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import math
import time
import zlib
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import IO, Any, TypeVar

import aiohttp
import structlog
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotoConnectionError

from bridge.redis_link import backoff_s
from bridge.storage.base import (
    CONTENT_TYPES,
    Link,
    RecordingNotFound,
    StorageUnavailable,
    StoredRecording,
    VerificationFailed,
    check_recording_id,
    check_source_digest,
    check_url_ttl,
    file_size,
    stored_name,
)

log = structlog.get_logger("bridge.storage")
T = TypeVar("T")

MIB = 1024 * 1024
MIN_PART_SIZE = 5 * MIB          # S3's floor for every part but the last
MAX_PARTS = 10_000               # S3's ceiling: larger files get larger parts
HASH_CHUNK = 1024 * 1024
MAX_PAGES = 100                  # listing pages read per call (1000 entries each)
# Declared on every multipart upload, each part's value sent as a plain header (never an aws-chunked
# trailer): the service then keeps a checksum per part and combines those at completion. Declaring none
# invites a full-object checksum instead, which a service may compute by re-reading the whole object when
# the upload completes; moto's server does, in memory, and that took as long as sending the parts.
PART_CHECKSUM = "CRC32"
TRANSIENT_CODES = {"SlowDown", "RequestTimeout", "InternalError", "ServiceUnavailable", "NoSuchUpload"}


def _transient(exc: BaseException) -> bool:
    """Worth another try: the service unreachable or overloaded, or the upload id gone (a concurrent run
    completed or aborted it; the next pass finds the object or starts again)."""
    if isinstance(exc, ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return status >= 500 or exc.response.get("Error", {}).get("Code") in TRANSIENT_CODES
    return isinstance(exc, HTTPClientError | BotoConnectionError | aiohttp.ClientError | OSError | TimeoutError)


def _not_found(exc: ClientError) -> bool:
    return exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound")


def _read_part(file: IO[bytes], size: int, whole: Any) -> tuple[bytes, bytes]:
    """The next part (small files only) and its MD5; feeds the whole-file SHA-256 on the way."""
    chunk = file.read(size)
    whole.update(chunk)
    return chunk, hashlib.md5(chunk).digest()


def _hash_part(file: IO[bytes], length: int, whole: Any) -> tuple[bytes, str]:
    """MD5 and CRC32 (base64, as S3 takes it) of the next `length` bytes, read a chunk at a time; feeds the
    whole-file SHA-256 on the way."""
    md5 = hashlib.md5()
    crc = 0
    remaining = length
    while remaining > 0:
        chunk = file.read(min(HASH_CHUNK, remaining))
        if not chunk:
            raise VerificationFailed(f"{file.name}: the file got shorter while it was being uploaded")
        md5.update(chunk)
        crc = zlib.crc32(chunk, crc)
        whole.update(chunk)
        remaining -= len(chunk)
    return md5.digest(), base64.b64encode(crc.to_bytes(4, "big")).decode()


class FilePart(io.RawIOBase):
    """Bytes [start, start + length) of a file as a seekable stream: a part is sent from disk, a chunk at
    a time, and re-read from its start when botocore signs it or retries it."""

    def __init__(self, path: Path, start: int, length: int) -> None:
        super().__init__()
        self._file = path.open("rb", buffering=0)
        self._start, self._length, self._position = start, length, 0
        self._file.seek(start)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._length}[whence]
        self._position = min(max(0, base + offset), self._length)
        self._file.seek(self._start + self._position)
        return self._position

    def readinto(self, buffer: Any) -> int:
        wanted = min(len(buffer), self._length - self._position)
        if wanted <= 0:
            return 0
        got = self._file.readinto(memoryview(buffer)[:wanted]) or 0
        self._position += got
        return got

    def close(self) -> None:
        self._file.close()
        super().close()


def multipart_etag(part_md5s: list[bytes]) -> str:
    return f"{hashlib.md5(b''.join(part_md5s)).hexdigest()}-{len(part_md5s)}"


class S3Storage:
    kind = "s3"

    def __init__(self, bucket: str, access_key_id: str, secret_access_key: str, *, prefix: str = "recordings/",
                 endpoint_url: str | None = None, region: str = "us-east-1", url_ttl_s: int = 86400,
                 part_size: int = 8 * MIB, concurrency: int = 8, retry_budget_s: float = 120.0,
                 connect_timeout_s: float = 5.0, read_timeout_s: float = 60.0) -> None:
        if not bucket:
            raise ValueError("bucket is required for s3 storage")
        if not access_key_id or not secret_access_key:
            # Never fall back to botocore's credential chain: it probes instance metadata over the network.
            raise ValueError("access_key_id and secret_access_key are required for s3 storage")
        if part_size < MIN_PART_SIZE:
            raise ValueError(f"part_size must be at least {MIN_PART_SIZE} bytes (S3's minimum part)")
        if not 1 <= concurrency <= 32:
            raise ValueError("concurrency must be between 1 and 32")
        self.bucket, self.prefix, self.endpoint_url, self.region = bucket, prefix, endpoint_url, region
        self.url_ttl_s = check_url_ttl(url_ttl_s)
        self.part_size, self.concurrency, self.retry_budget_s = part_size, concurrency, retry_budget_s
        self._credentials = (access_key_id, secret_access_key)
        self._config = AioConfig(
            region_name=region, signature_version="s3v4",
            # Custom endpoints (MinIO, Ceph, R2, ...) all take path-style requests; not all resolve
            # bucket subdomains.
            s3={"addressing_style": "path" if endpoint_url else "auto"},
            connect_timeout=connect_timeout_s, read_timeout=read_timeout_s,
            retries={"mode": "standard", "total_max_attempts": 3},
            # botocore's default adds CRC32 trailers several S3-compatible services refuse; we send
            # Content-MD5 and a per-part CRC32 header ourselves (PART_CHECKSUM).
            request_checksum_calculation="when_required", response_checksum_validation="when_required",
            max_pool_connections=concurrency + 2,
        )
        self._exit = AsyncExitStack()
        self._client: Any = None
        self._client_lock = asyncio.Lock()

    async def client(self) -> Any:
        async with self._client_lock:
            if self._client is None:
                self._client = await self._exit.enter_async_context(get_session().create_client(
                    "s3", endpoint_url=self.endpoint_url, aws_access_key_id=self._credentials[0],
                    aws_secret_access_key=self._credentials[1], config=self._config))
            return self._client

    async def aclose(self) -> None:
        async with self._client_lock:
            await self._exit.aclose()
            self._client = None

    async def _retrying(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        """Run an idempotent step, retrying transient failures with back-off for `retry_budget_s`."""
        deadline = time.monotonic() + self.retry_budget_s
        failures = 0
        while True:
            try:
                return await call()
            except Exception as exc:
                if not _transient(exc):
                    raise
                failures += 1
                delay = backoff_s(failures, base_s=0.5, cap_s=10.0)
                if time.monotonic() + delay > deadline:
                    raise StorageUnavailable(
                        f"{what}: {self.endpoint_url or 'S3'} bucket {self.bucket} failed {failures} time(s) "
                        f"within {self.retry_budget_s:g} s; last error {type(exc).__name__}: {exc}") from exc
                log.warning("storage.retry", what=what, failures=failures, delay_s=round(delay, 2),
                            error=f"{type(exc).__name__}: {exc}"[:300])
                await asyncio.sleep(delay)

    # -- upload ------------------------------------------------------------------------------------------

    async def upload(self, recording_id: str, path: Path, sha256: str | None = None) -> StoredRecording:
        path = Path(path)
        name, content_type = stored_name(recording_id, path)
        size = file_size(path)
        key = self.prefix + name
        stored = await self._retrying(
            f"upload of {key}", lambda: self._upload_once(recording_id, key, path, size, content_type, sha256))
        log.info("storage.uploaded", key=key, bytes=size, parts_reused=stored.parts_reused)
        return stored

    def _plan_part_size(self, size: int) -> int:
        """Deterministic from the size, so a resumed run cuts the file where the killed one did."""
        return max(self.part_size, math.ceil(size / MAX_PARTS / MIB) * MIB)

    async def _upload_once(self, recording_id: str, key: str, path: Path, size: int, content_type: str,
                           expected_sha256: str | None) -> StoredRecording:
        """One pass; every step is idempotent, so a retried or re-run pass picks up where this one stopped.
        The file's SHA-256 is checked against `expected_sha256` before anything completes under `key`."""
        client = await self.client()
        part_size = self._plan_part_size(size)
        existing = await self._head(key)
        if existing is not None and existing["ContentLength"] == size:
            md5s, sha256 = await asyncio.to_thread(_hash_parts, path, size, part_size)
            if existing["ETag"].strip('"') == self._expected_etag(md5s, size):
                check_source_digest(path, expected_sha256, sha256)
                return StoredRecording(recording_id, key, size, content_type, sha256, parts_reused=len(md5s))
        if size <= self.part_size:
            sha = hashlib.sha256()
            with await asyncio.to_thread(path.open, "rb") as file:
                body, md5 = await asyncio.to_thread(_read_part, file, self.part_size, sha)
            check_source_digest(path, expected_sha256, sha.hexdigest())
            await client.put_object(Bucket=self.bucket, Key=key, Body=body, ContentType=content_type,
                                    ContentMD5=base64.b64encode(md5).decode())
            md5s, reused = [md5], 0
        else:
            md5s, sha, reused = await self._multipart(key, path, size, part_size, content_type, expected_sha256)
        await self._verify(key, size, self._expected_etag(md5s, size))
        return StoredRecording(recording_id, key, size, content_type, sha.hexdigest(), parts_reused=reused)

    def _expected_etag(self, md5s: list[bytes], size: int) -> str:
        return md5s[0].hex() if size <= self.part_size else multipart_etag(md5s)

    async def _multipart(self, key: str, path: Path, size: int, part_size: int, content_type: str,
                         expected_sha256: str | None) -> tuple[list[bytes], Any, int]:
        client = await self.client()
        upload_id, uploaded = await self._open_upload(key, content_type)
        count = math.ceil(size / part_size)
        md5s: list[bytes] = []
        etags: dict[int, str] = {}
        crc32s: dict[int, str] = {}
        sha = hashlib.sha256()
        reused = 0
        sending = asyncio.Semaphore(self.concurrency)

        async def send(number: int, length: int, md5: bytes) -> None:
            try:
                with FilePart(path, (number - 1) * part_size, length) as body:
                    answer = await client.upload_part(
                        Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=body,
                        ContentLength=length, ContentMD5=base64.b64encode(md5).decode(),
                        ChecksumCRC32=crc32s[number])
                etags[number] = answer["ETag"]
            finally:
                sending.release()

        try:
            async with asyncio.TaskGroup() as group:
                with await asyncio.to_thread(path.open, "rb") as file:
                    for number in range(1, count + 1):
                        length = min(part_size, size - (number - 1) * part_size)
                        # Hashed in order (the whole-file SHA-256 needs it) while earlier parts are sent.
                        md5, crc32s[number] = await asyncio.to_thread(_hash_part, file, length, sha)
                        md5s.append(md5)
                        if uploaded.get(number) == (md5.hex(), length):
                            etags[number] = f'"{md5.hex()}"'
                            reused += 1
                            continue
                        await sending.acquire()
                        group.create_task(send(number, length, md5))
        except BaseExceptionGroup as group_error:
            raise group_error.exceptions[0] from None
        check_source_digest(path, expected_sha256, sha.hexdigest())
        await client.complete_multipart_upload(
            Bucket=self.bucket, Key=key, UploadId=upload_id,
            MultipartUpload={"Parts": [{"PartNumber": n, "ETag": etags[n], "ChecksumCRC32": crc32s[n]}
                                       for n in range(1, count + 1)]})
        return md5s, sha, reused

    async def _open_upload(self, key: str, content_type: str) -> tuple[str, dict[int, tuple[str, int]]]:
        """Resume the newest open upload of `key` (aborting the others) or start one.
        Returns its id and the parts already there: number → (MD5 hex, size)."""
        client = await self.client()
        pending = sorted((u for u in await self._pending_uploads(key) if u["Key"] == key),
                         key=lambda u: u["Initiated"])
        for stale in pending[:-1]:
            await self._abort(stale["Key"], stale["UploadId"])
        if not pending:
            created = await client.create_multipart_upload(Bucket=self.bucket, Key=key, ContentType=content_type,
                                                           ChecksumAlgorithm=PART_CHECKSUM)
            return created["UploadId"], {}
        upload_id = pending[-1]["UploadId"]
        parts: dict[int, tuple[str, int]] = {}
        marker = 0
        for _ in range(MAX_PAGES):
            page = await client.list_parts(Bucket=self.bucket, Key=key, UploadId=upload_id,
                                           PartNumberMarker=marker)
            for part in page.get("Parts", []):
                parts[part["PartNumber"]] = (part["ETag"].strip('"'), part["Size"])
            if not page.get("IsTruncated"):
                break
            marker = page["NextPartNumberMarker"]
        log.info("storage.resume", key=key, upload_id=upload_id, parts=len(parts))
        return upload_id, parts

    async def _pending_uploads(self, prefix: str) -> list[dict[str, Any]]:
        client = await self.client()
        uploads: list[dict[str, Any]] = []
        markers: dict[str, str] = {}
        for _ in range(MAX_PAGES):
            page = await client.list_multipart_uploads(Bucket=self.bucket, Prefix=prefix, **markers)
            uploads += page.get("Uploads", [])
            if not page.get("IsTruncated"):
                break
            markers = {"KeyMarker": page["NextKeyMarker"], "UploadIdMarker": page["NextUploadIdMarker"]}
        return uploads

    async def _abort(self, key: str, upload_id: str) -> None:
        client = await self.client()
        try:
            await client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "NoSuchUpload":
                raise

    async def _head(self, key: str) -> dict[str, Any] | None:
        client = await self.client()
        try:
            answer: dict[str, Any] = await client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if _not_found(exc):
                return None
            raise
        return answer

    async def _verify(self, key: str, size: int, etag: str) -> None:
        head = await self._head(key)
        found = (head["ContentLength"], head["ETag"].strip('"')) if head else None
        if found != (size, etag):
            if head is not None:
                await self._delete_key(key)
            raise VerificationFailed(f"{key}: the service holds {found or 'nothing'} (bytes, ETag) after the "
                                     f"upload, the file has ({size}, {etag}); the object was removed")

    # -- links, delete, clean-up -------------------------------------------------------------------------

    async def _stored_keys(self, recording_id: str) -> list[str]:
        client = await self.client()
        stem = self.prefix + check_recording_id(recording_id)
        page = await client.list_objects_v2(Bucket=self.bucket, Prefix=stem + ".", MaxKeys=100)
        wanted = {stem + suffix for suffix in CONTENT_TYPES}
        return [item["Key"] for item in page.get("Contents", []) if item["Key"] in wanted]

    async def link(self, recording_id: str) -> Link:
        keys = await self._retrying(f"lookup of {recording_id}", lambda: self._stored_keys(recording_id))
        if not keys:
            raise RecordingNotFound(f"recording {recording_id} is not in bucket {self.bucket}")
        client = await self.client()
        expires = int(time.time()) + self.url_ttl_s
        url = await client.generate_presigned_url("get_object", Params={"Bucket": self.bucket, "Key": keys[0]},
                                                  ExpiresIn=self.url_ttl_s)
        return Link(url, expires)

    async def delete(self, recording_id: str) -> bool:
        return await self._retrying(f"delete of {recording_id}", lambda: self._delete_recording(recording_id))

    async def _delete_recording(self, recording_id: str) -> bool:
        # An interrupted upload of this recording must not complete into an object after the delete.
        for upload in await self._pending_uploads(self.prefix + check_recording_id(recording_id) + "."):
            await self._abort(upload["Key"], upload["UploadId"])
        keys = await self._stored_keys(recording_id)
        for key in keys:
            await self._delete_key(key)
        return bool(keys)

    async def _delete_key(self, key: str) -> None:
        client = await self.client()
        await client.delete_object(Bucket=self.bucket, Key=key)

    async def abort_stale_uploads(self, older_than_s: float) -> int:
        """Abort multipart uploads under the prefix started more than `older_than_s` ago (their recorder
        never came back for them); their parts are billed until then. Returns how many."""
        uploads = await self._retrying("listing of open uploads", lambda: self._pending_uploads(self.prefix))
        cutoff = time.time() - older_than_s
        stale = [u for u in uploads if u["Initiated"].timestamp() < cutoff]
        for upload in stale:
            await self._retrying(f"abort of {upload['Key']}", lambda u=upload: self._abort(u["Key"], u["UploadId"]))
        return len(stale)


def _hash_parts(path: Path, size: int, part_size: int) -> tuple[list[bytes], str]:
    """MD5 of every part and the whole file's SHA-256, for a file that may already be stored."""
    whole = hashlib.sha256()
    with path.open("rb") as file:      # an empty file is one empty part
        md5s = [_read_part(file, part_size, whole)[1] for _ in range(max(1, math.ceil(size / part_size)))]
    return md5s, whole.hexdigest()

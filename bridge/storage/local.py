"""`local` storage: files in one directory, served by the web process behind HMAC-signed, expiring links."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import hmac
import os
import time
import uuid
from pathlib import Path

from bridge.schema.config import MIN_LINK_SECRET_BYTES
from bridge.storage.base import (
    CONTENT_TYPES,
    InvalidRecording,
    Link,
    RecordingNotFound,
    StoredRecording,
    VerificationFailed,
    check_recording_id,
    check_source_digest,
    check_url_ttl,
    file_size,
    stored_name,
)

CHUNK = 1024 * 1024
STALE_TEMP_S = 3600          # a temp file this old belongs to an upload that was killed


class LinkRefused(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class LocalStorage:
    kind = "local"

    def __init__(self, directory: Path, public_url: str, secret: str | bytes, url_ttl_s: int = 86400) -> None:
        key = secret.encode() if isinstance(secret, str) else secret
        if len(key) < MIN_LINK_SECRET_BYTES:
            raise ValueError(f"the link signing secret must be at least {MIN_LINK_SECRET_BYTES} bytes")
        if not public_url.startswith(("http://", "https://")):
            raise ValueError(f"public_url must be an http(s) URL the LMS can reach, got {public_url!r}")
        self.directory = Path(directory)
        self.public_url = public_url.rstrip("/")
        self.url_ttl_s = check_url_ttl(url_ttl_s)
        self._key = key

    # -- links -------------------------------------------------------------------------------------------

    def signature(self, recording_id: str, expires: int) -> str:
        return hmac.new(self._key, f"{recording_id}\n{expires}".encode(), hashlib.sha256).hexdigest()

    async def link(self, recording_id: str) -> Link:
        check_recording_id(recording_id)
        if self.find(recording_id) is None:
            raise RecordingNotFound(f"recording {recording_id} is not in storage")
        expires = int(time.time()) + self.url_ttl_s
        return Link(f"{self.public_url}/v1/recordings/{recording_id}?expires={expires}"
                    f"&sig={self.signature(recording_id, expires)}", expires)

    def check_link(self, recording_id: str, expires: str | None, sig: str | None, now: float | None = None) -> int:
        """Raise LinkRefused unless `sig` signs this id and `expires` is still ahead; returns `expires`."""
        if not expires or not sig:
            raise LinkRefused("bad_signature", "the link needs both `expires` and `sig` query parameters")
        if not expires.isdigit() or len(expires) > 12:
            raise LinkRefused("bad_signature", "`expires` must be Unix seconds")
        # Checked before expiry so that an expired link with a forged signature learns nothing more.
        if not hmac.compare_digest(sig.encode(), self.signature(recording_id, int(expires)).encode()):
            raise LinkRefused("bad_signature", "the link's signature does not match this recording")
        if int(expires) < (time.time() if now is None else now):
            raise LinkRefused("link_expired", "the link has expired; ask the bridge for a new one")
        return int(expires)

    def find(self, recording_id: str) -> tuple[Path, str] | None:
        """(path, content type) of the stored file for a checked id, or None."""
        for suffix, content_type in CONTENT_TYPES.items():
            path = self.directory / (recording_id + suffix)
            if path.is_file():
                return path, content_type
        return None

    # -- upload / delete ---------------------------------------------------------------------------------

    async def upload(self, recording_id: str, path: Path, sha256: str | None = None) -> StoredRecording:
        return await asyncio.to_thread(self._store, recording_id, Path(path), sha256)

    def _store(self, recording_id: str, path: Path, expected_sha256: str | None) -> StoredRecording:
        name, content_type = stored_name(recording_id, path)
        size = file_size(path)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._remove_stale_temps(name)
        temp = self.directory / f".{name}.{uuid.uuid4().hex}.part"
        try:
            copied_digest = self._place(path, temp)
            # Verified from what is now under the storage directory, not from what was meant to be.
            stored_size, stored_digest = temp.stat().st_size, sha256_file(temp)
            if stored_size != size or copied_digest not in (None, stored_digest):
                raise VerificationFailed(f"{name}: stored {stored_size} bytes with SHA-256 {stored_digest}, "
                                         f"the file had {size} bytes with SHA-256 {copied_digest}")
            check_source_digest(path, expected_sha256, stored_digest)
            os.replace(temp, self.directory / name)       # atomic: the final name never holds a partial file
        finally:
            temp.unlink(missing_ok=True)
        _fsync_dir(self.directory)
        return StoredRecording(recording_id, name, size, content_type, stored_digest)

    def _place(self, source: Path, temp: Path) -> str | None:
        """Put the source's bytes at `temp`: a hard link on the same file system (no copy, no extra disk),
        else a streamed, fsynced copy. Returns the SHA-256 of the bytes copied; None for a hard link (one
        inode: there is no second copy to compare)."""
        try:
            os.link(source, temp)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
                raise InvalidRecording(f"{source}: cannot be read ({exc.strerror})") from None
        else:
            return None
        digest = hashlib.sha256()
        with source.open("rb") as src, temp.open("xb") as dst:
            while chunk := src.read(CHUNK):
                digest.update(chunk)
                dst.write(chunk)
            dst.flush()
            os.fsync(dst.fileno())
        return digest.hexdigest()

    def _remove_stale_temps(self, name: str) -> None:
        cutoff = time.time() - STALE_TEMP_S
        for temp in self.directory.glob(f".{name}.*.part"):
            with contextlib.suppress(FileNotFoundError):
                if temp.stat().st_mtime < cutoff:
                    temp.unlink()

    async def delete(self, recording_id: str) -> bool:
        check_recording_id(recording_id)
        removed = False
        for suffix in CONTENT_TYPES:
            with contextlib.suppress(FileNotFoundError):
                (self.directory / (recording_id + suffix)).unlink()
                removed = True
        return removed

    async def aclose(self) -> None:
        return None


def _fsync_dir(directory: Path) -> None:
    """The rename itself survives a power loss only once the directory entry is on disk."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

"""What every storage kind shares: the interface, the result shapes, ids, containers and errors."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from bridge.schema.events import RECORDING_ID

# The containers a recording can be stored as, by file suffix. The suffix is kept in the stored name so
# a downloaded file opens in a player; one id has one stored file.
CONTENT_TYPES = {
    ".mp4": "video/mp4",
    ".m4a": "audio/mp4",
    ".webm": "video/webm",
    ".mkv": "video/x-matroska",
    ".ts": "video/mp2t",
    ".mp3": "audio/mpeg",
}

# A link lives at most this long: SigV4 presigned URLs are refused past 7 days, and local links follow
# the same rule so both kinds accept the same [storage] url_ttl_s.
MAX_URL_TTL_S = 7 * 24 * 3600


class StorageError(Exception):
    """Base of the errors a storage kind raises; `code` is machine-readable (recording.failed)."""

    code = "storage_error"


class InvalidRecording(StorageError, ValueError):
    """The caller's input cannot be stored: a bad id, an unknown container, a missing file."""

    code = "invalid_recording"


class VerificationFailed(StorageError):
    """What landed differs from the local file (size or checksum): nothing was reported stored."""

    code = "verification_failed"


class StorageUnavailable(StorageError):
    """The storage service did not answer within the retry budget; the local file is untouched."""

    code = "storage_unavailable"


class RecordingNotFound(StorageError, LookupError):
    code = "not_found"


@dataclass(frozen=True)
class StoredRecording:
    recording_id: str
    key: str                 # the object key (s3) or the file name under the storage directory (local)
    bytes: int
    content_type: str
    sha256: str              # hex digest of the whole file, as read while it was stored
    parts_reused: int = 0    # multipart parts found already uploaded by an earlier, interrupted run


@dataclass(frozen=True)
class Link:
    url: str
    expires_at: int          # Unix seconds


class Storage(Protocol):
    kind: str

    async def upload(self, recording_id: str, path: Path, sha256: str | None = None) -> StoredRecording:
        """Store a finished file under `recording_id`, verified; safe to repeat, and after a crash.

        `sha256`, when given (FFmpeg's finalize computed it), must match the file read now. The local
        file is left in place: the caller removes it once this returns.
        """
        ...

    async def link(self, recording_id: str) -> Link:
        """A GET URL the LMS can fetch without other credentials, expiring after the configured TTL."""
        ...

    async def delete(self, recording_id: str) -> bool:
        """Remove the stored file (and any unfinished upload of it); False when there was nothing."""
        ...

    async def aclose(self) -> None: ...


def check_recording_id(recording_id: str) -> str:
    if not RECORDING_ID.fullmatch(recording_id):
        raise InvalidRecording(f"recording id {recording_id!r} must be 1-128 characters of A-Z a-z 0-9 _ -")
    return recording_id


def stored_name(recording_id: str, path: Path) -> tuple[str, str]:
    """(file name, content type) a recording is stored under, from its id and the local file's suffix."""
    check_recording_id(recording_id)
    suffix = path.suffix.lower()
    if suffix not in CONTENT_TYPES:
        raise InvalidRecording(f"{path.name}: container {suffix or '(none)'} is not one of "
                               f"{', '.join(CONTENT_TYPES)}")
    return recording_id + suffix, CONTENT_TYPES[suffix]


def check_url_ttl(url_ttl_s: int) -> int:
    if not 1 <= url_ttl_s <= MAX_URL_TTL_S:
        raise ValueError(f"url_ttl_s must be between 1 and {MAX_URL_TTL_S} (7 days), got {url_ttl_s}")
    return url_ttl_s


def file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        raise InvalidRecording(f"{path}: no such file to store") from None


def check_source_digest(path: Path, expected: str | None, actual: str) -> None:
    if expected is not None and expected.lower() != actual:
        raise VerificationFailed(f"{path}: SHA-256 is {actual}, not the {expected} it had when it was finalized")

"""Where finished recordings go so the LMS can fetch them: `local` (signed links served by web) or `s3`."""

from __future__ import annotations

from pathlib import Path

from bridge.storage.base import (
    InvalidRecording,
    Link,
    RecordingNotFound,
    Storage,
    StorageError,
    StorageUnavailable,
    StoredRecording,
    VerificationFailed,
)
from bridge.storage.local import LocalStorage
from bridge.storage.route import recordings_route
from bridge.storage.s3 import S3Storage

__all__ = ["InvalidRecording", "Link", "LocalStorage", "RecordingNotFound", "S3Storage", "Storage", "StorageError",
           "StorageUnavailable", "StoredRecording", "VerificationFailed", "build_storage", "recordings_route"]


def build_storage(kind: str, *, directory: Path | None = None, public_url: str | None = None,
                  link_secret: str | bytes | None = None, url_ttl_s: int = 86400, bucket: str = "",
                  prefix: str = "recordings/", endpoint_url: str | None = None, region: str = "us-east-1",
                  access_key_id: str = "", secret_access_key: str = "") -> Storage:
    """The storage a `[storage]` table describes; the caller resolves defaults (directory = [recording] dir,
    public_url = [bridge] public_url) and secrets from the environment."""
    if kind == "local":
        if directory is None or public_url is None or link_secret is None:
            raise ValueError("local storage needs directory, public_url and link_secret")
        return LocalStorage(directory, public_url, link_secret, url_ttl_s)
    if kind == "s3":
        return S3Storage(bucket, access_key_id, secret_access_key, prefix=prefix, endpoint_url=endpoint_url,
                         region=region, url_ttl_s=url_ttl_s)
    raise ValueError(f"storage kind {kind!r} is not one of: local, s3")

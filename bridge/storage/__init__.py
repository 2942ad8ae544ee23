"""Where finished recordings go so the LMS can fetch them: `local` (signed links served by web) or `s3`."""

from __future__ import annotations

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
from bridge.storage.configured import storage_from_settings
from bridge.storage.local import LocalStorage
from bridge.storage.route import recordings_route
from bridge.storage.s3 import S3Storage

__all__ = ["InvalidRecording", "Link", "LocalStorage", "RecordingNotFound", "S3Storage", "Storage", "StorageError",
           "StorageUnavailable", "StoredRecording", "VerificationFailed", "recordings_route", "storage_from_settings"]


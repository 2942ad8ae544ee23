"""Provider recordings (JaaS RECORDING_UPLOADED, 100ms recording.success: links valid 24 h) copied into
storage: the provider's link streamed to a temp file a chunk at a time, then the verified upload.

The link is fetched through the same SSRF guard as outbound webhooks (bridge.webhooks.checked_destination),
on every redirect hop; `allow_private_network` is the provider's setting of that name.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from pathlib import Path
from urllib.parse import urljoin

import httpx

from bridge.storage.base import CONTENT_TYPES, Storage, StorageError, StoredRecording, check_recording_id
from bridge.webhooks import UnsafeDestination, checked_destination

CHUNK = 1024 * 1024
MAX_REDIRECTS = 5
MAX_BYTES = 32 * 1024**3             # far above any lesson; stops a link that streams forever
TIMEOUT = httpx.Timeout(30.0, connect=10.0)   # per read: a large file takes as long as it takes
SUFFIXES = {content_type: suffix for suffix, content_type in CONTENT_TYPES.items()}


class ProviderLinkFailed(StorageError):
    """The provider's link did not give the recording. `retryable`: a later try may (an outage), or not
    (refused by the SSRF guard, expired or unknown: 4xx)."""

    code = "provider_link_failed"

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


def _suffix(url: httpx.URL, content_type: str) -> str:
    """The container: the answer's Content-Type, else the link's file name, else MP4 (what both send)."""
    by_type = SUFFIXES.get(content_type.split(";")[0].strip().lower())
    if by_type:
        return by_type
    by_name = Path(url.path).suffix.lower()
    return by_name if by_name in CONTENT_TYPES else ".mp4"


async def _download(client: httpx.AsyncClient, url: str, allow_private_network: bool, directory: Path,
                    stem: str) -> tuple[Path, str]:
    """The link's body in a temp file under `directory`; (path, SHA-256 hex)."""
    for _ in range(MAX_REDIRECTS + 1):
        try:
            destination = await checked_destination(url, allow_private_network)
        except UnsafeDestination as exc:
            raise ProviderLinkFailed(f"provider link refused: {exc}", retryable=False) from None
        request = client.build_request("GET", destination.url, headers=destination.headers,
                                       extensions=destination.extensions)
        try:
            # Redirects are followed here, each hop through the guard, never by the client.
            response = await client.send(request, stream=True, follow_redirects=False)
        except httpx.HTTPError as exc:
            raise ProviderLinkFailed(f"provider link: {type(exc).__name__}: {exc}", retryable=True) from None
        try:
            if response.is_redirect and "location" in response.headers:
                url = urljoin(url, response.headers["location"])
                continue
            if response.status_code != 200:
                raise ProviderLinkFailed(f"provider link answered HTTP {response.status_code}",
                                         retryable=response.status_code >= 500 or response.status_code == 429)
            suffix = _suffix(httpx.URL(url), response.headers.get("content-type", ""))
            path = directory / f".{stem}.{uuid.uuid4().hex}{suffix}"
            return path, await _save(response, path)
        finally:
            await response.aclose()
    raise ProviderLinkFailed(f"provider link redirected more than {MAX_REDIRECTS} times", retryable=False)


def _discard(path: Path) -> None:
    path.unlink(missing_ok=True)


async def _save(response: httpx.Response, path: Path) -> str:
    """The body into `path`, a chunk at a time; its SHA-256. Nothing is left behind on failure."""
    digest = hashlib.sha256()
    written = 0
    try:
        with path.open("xb") as file:
            async for chunk in response.aiter_bytes(CHUNK):
                written += len(chunk)
                if written > MAX_BYTES:
                    raise ProviderLinkFailed(f"provider recording is larger than {MAX_BYTES} bytes", retryable=False)
                digest.update(chunk)
                file.write(chunk)
        expected = response.headers.get("content-length")
        if "content-encoding" not in response.headers and expected and expected.isdigit() and int(expected) != written:
            raise ProviderLinkFailed(f"provider link gave {written} of {expected} bytes", retryable=True)
    except BaseException as exc:
        _discard(path)
        if isinstance(exc, httpx.HTTPError):
            raise ProviderLinkFailed(f"provider link broke off after {written} bytes: {type(exc).__name__}",
                                     retryable=True) from None
        raise
    return digest.hexdigest()


async def copy_provider_recording(storage: Storage, recording_id: str, url: str, *, directory: Path,
                                  allow_private_network: bool = False,
                                  client: httpx.AsyncClient | None = None) -> StoredRecording:
    """Copy the recording at a provider's link into storage under `recording_id`, verified (the upload
    checks the SHA-256 computed while downloading). `directory` holds the temp file ([recording] dir); it
    is removed whatever happens. Safe to repeat. Raises ProviderLinkFailed or the storage's errors.

    `client`: one without redirects of its own and without a whole-exchange deadline (not the workers'
    provider client, whose deadline would cut a large download); by default a client of its own."""
    check_recording_id(recording_id)
    if client is None:
        async with httpx.AsyncClient(timeout=TIMEOUT) as own:
            return await copy_provider_recording(storage, recording_id, url, directory=directory,
                                                 allow_private_network=allow_private_network, client=own)
    await asyncio.to_thread(directory.mkdir, parents=True, exist_ok=True)
    path, sha256 = await _download(client, url, allow_private_network, directory, recording_id)
    try:
        return await storage.upload(recording_id, path, sha256)
    finally:
        _discard(path)

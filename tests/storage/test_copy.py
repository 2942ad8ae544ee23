"""Provider recordings copied into storage: a provider's link served on loopback, streamed into moto's S3."""

from __future__ import annotations

import hashlib
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, RedirectResponse, Response
from starlette.routing import Route

from bridge.storage import S3Storage
from bridge.storage.copy import ProviderLinkFailed, copy_provider_recording
from tests.fakes.server import serve
from tests.storage.conftest import PART, write_file


def provider_app(recording: Path) -> Starlette:
    """A provider's recording link: the file behind one redirect (as presigned links often are)."""
    async def link(request: Request) -> Response:
        return RedirectResponse("/files/recording.mp4", status_code=302)

    async def file(request: Request) -> Response:
        return FileResponse(recording, media_type="video/mp4")

    async def gone(request: Request) -> Response:
        return Response("link expired", status_code=403)

    return Starlette(routes=[Route("/link", link), Route("/files/recording.mp4", file), Route("/expired", gone)])


async def test_a_provider_recording_is_streamed_into_storage_and_served_by_a_presigned_link(
        s3: S3Storage, tmp_path: Path) -> None:
    recording = write_file(tmp_path / "provider.mp4", PART + 4321)      # more than a part: multipart
    work = tmp_path / "work"
    with serve(provider_app(recording)) as base:
        stored = await copy_provider_recording(s3, "jaas_rec_1", f"{base}/link", directory=work,
                                               allow_private_network=True)
    assert (stored.key, stored.bytes, stored.content_type) == ("recordings/jaas_rec_1.mp4", PART + 4321, "video/mp4")
    assert stored.sha256 == hashlib.sha256(recording.read_bytes()).hexdigest()
    assert list(work.iterdir()) == []                                  # the temp file is gone
    async with httpx.AsyncClient() as client:
        fetched = await client.get((await s3.link("jaas_rec_1")).url)
    assert fetched.status_code == 200 and fetched.content == recording.read_bytes()


async def test_the_ssrf_guard_and_a_dead_link_store_nothing(s3: S3Storage, tmp_path: Path) -> None:
    recording = write_file(tmp_path / "provider.mp4", 1000)
    work = tmp_path / "work"
    with serve(provider_app(recording)) as base:
        # A loopback link without allow_private_network: refused before any request, for good.
        with pytest.raises(ProviderLinkFailed, match="non-public address") as refused:
            await copy_provider_recording(s3, "rec_ssrf", f"{base}/link", directory=work)
        assert not refused.value.retryable
        with pytest.raises(ProviderLinkFailed, match="HTTP 403") as expired:
            await copy_provider_recording(s3, "rec_expired", f"{base}/expired", directory=work,
                                          allow_private_network=True)
        assert not expired.value.retryable
    # The provider down: worth another try.
    with pytest.raises(ProviderLinkFailed) as down:
        await copy_provider_recording(s3, "rec_down", f"{base}/link", directory=work, allow_private_network=True)
    assert down.value.retryable
    listed = await (await s3.client()).list_objects_v2(Bucket=s3.bucket)
    assert listed.get("KeyCount", 0) == 0 and list(work.iterdir()) == []

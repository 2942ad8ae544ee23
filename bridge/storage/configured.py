"""The storage a process's settings describe, built once per process (web: the download route, only for
kind local; worker and recorder: their Runtime)."""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from typing import Any

from bridge.config import Settings
from bridge.storage.base import Storage
from bridge.storage.local import LocalStorage
from bridge.storage.s3 import S3Storage
from bridge.store import STORAGE_LINK_SECRET

DEFAULT_PORT = 8000          # `bridge serve` / `bridge dev` without PORT


def public_url(settings: Settings) -> str:
    """How the LMS reaches `web`: [bridge] public_url, else http://127.0.0.1:$PORT (contract)."""
    return settings.public_url or f"http://127.0.0.1:{settings.port or DEFAULT_PORT}"


async def link_secret(settings: Settings, redis: Any) -> str:
    """[storage] link_secret, else the deploy's random one in Redis (made by whichever process asks first)."""
    if settings.storage.link_secret:
        return settings.storage.link_secret
    await redis.set(STORAGE_LINK_SECRET, secrets.token_hex(32), nx=True)
    stored: bytes = await redis.get(STORAGE_LINK_SECRET)
    return stored.decode()


async def local_storage(settings: Settings, redis: Any) -> LocalStorage:
    return LocalStorage(settings.recording.dir, public_url(settings), await link_secret(settings, redis),
                        settings.storage.url_ttl_s)


async def storage_from_settings(settings: Settings, redis: Any) -> Storage:
    table = settings.storage
    if table.kind == "local":
        return await local_storage(settings, redis)
    # [storage] validation guarantees bucket and keys for kind s3.
    return S3Storage(table.bucket or "", table.access_key_id or "", table.secret_access_key or "",
                     prefix=table.prefix, endpoint_url=table.endpoint_url, region=table.region or "us-east-1",
                     url_ttl_s=table.url_ttl_s)


def local_storage_once(settings: Settings, redis: Callable[[], Any]) -> Callable[[], Awaitable[LocalStorage]]:
    """For web's download route: the local storage, built at its first request rather than at start-up, so
    web starts (and answers 503) while Redis, which may hold the link secret, is away."""
    built: list[LocalStorage] = []

    async def get() -> LocalStorage:
        if not built:
            built.append(await local_storage(settings, redis()))
        return built[0]

    return get

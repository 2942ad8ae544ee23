"""`GET /v1/recordings/{recording_id}`: the `local` kind's signed, expiring, seekable download."""

from __future__ import annotations

import os
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import anyio
from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from bridge.errors import error_response
from bridge.storage.base import RECORDING_ID
from bridge.storage.local import CHUNK, LinkRefused, LocalStorage

# One range of the form RFC 9110 calls int-range or suffix-range; 18 digits keep the numbers sane.
SINGLE_RANGE = re.compile(r"bytes=(\d{0,18})-(\d{0,18})")


class RangeNotSatisfiable(Exception):
    pass


def requested_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(first, last) byte of the single range asked for, or None for the whole file: no Range header, or
    several ranges or a malformed one, which RFC 9110 lets a server ignore. Raises RangeNotSatisfiable."""
    match = SINGLE_RANGE.fullmatch(header.strip()) if header else None
    if match is None or not (match[1] or match[2]):
        return None
    if match[1]:
        first = int(match[1])
        if first >= size:
            raise RangeNotSatisfiable
        last = int(match[2]) if match[2] else size - 1
        if last < first:
            return None
        return first, min(last, size - 1)
    suffix = int(match[2])
    if suffix == 0 or size == 0:
        raise RangeNotSatisfiable
    return max(0, size - suffix), size - 1


async def _chunks(file: anyio.AsyncFile[bytes], start: int, length: int) -> AsyncIterator[bytes]:
    try:
        await file.seek(start)
        remaining = length
        while remaining > 0:
            chunk = await file.read(min(CHUNK, remaining))
            if not chunk:             # the file shrank under us: the client sees a short body, not a hang
                break
            remaining -= len(chunk)
            yield chunk
    finally:
        await file.aclose()


def recordings_route(storage: LocalStorage | Callable[[], Awaitable[LocalStorage]]) -> Route:
    """The route over a storage, or over a coroutine that gives it (web builds it at the first request)."""
    async def download(request: Request) -> Response:
        recording_id = request.path_params["recording_id"]
        # Ids outside the charset never reach the file system: `..`, separators decoded from %2F, and the like.
        if not RECORDING_ID.fullmatch(recording_id):
            return error_response(404, "not_found", "no recording has this id")
        try:
            local = await get_storage()
        except RedisError as exc:        # the link secret lives in Redis when none is configured
            return error_response(503, "store_unavailable", f"Redis is unreachable ({type(exc).__name__})",
                                  headers={"Retry-After": "5"})
        try:
            expires = local.check_link(recording_id, request.query_params.get("expires"),
                                         request.query_params.get("sig"))
        except LinkRefused as exc:
            return error_response(403, exc.code, exc.message)
        found = local.find(recording_id)
        try:
            file = await anyio.open_file(found[0], "rb") if found else None
        except FileNotFoundError:     # deleted between the look-up and the open
            file = None
        if found is None or file is None:
            return error_response(404, "not_found", f"recording {recording_id} is not in storage (deleted?)")
        path, content_type = found
        size = os.fstat(file.wrapped.fileno()).st_size
        headers = {"Accept-Ranges": "bytes", "Content-Type": content_type,
                   "Content-Disposition": f'inline; filename="{path.name}"',
                   "Cache-Control": f"private, max-age={max(0, expires - int(time.time()))}"}
        try:
            wanted = requested_range(request.headers.get("range"), size)
        except RangeNotSatisfiable:
            await file.aclose()
            return error_response(416, "range_not_satisfiable",
                                  f"the range {request.headers['range']!r} lies outside the {size} bytes of the file",
                                  headers={"Content-Range": f"bytes */{size}"})
        status, start, length = 200, 0, size
        if wanted is not None:
            status, start, length = 206, wanted[0], wanted[1] - wanted[0] + 1
            headers["Content-Range"] = f"bytes {wanted[0]}-{wanted[1]}/{size}"
        headers["Content-Length"] = str(length)
        if request.method == "HEAD":
            await file.aclose()
            return Response(status_code=status, headers=headers)
        return StreamingResponse(_chunks(file, start, length), status_code=status, headers=headers)

    async def given() -> LocalStorage:
        assert isinstance(storage, LocalStorage)
        return storage

    get_storage = given if isinstance(storage, LocalStorage) else storage
    return Route("/v1/recordings/{recording_id}", download, methods=["GET", "HEAD"])

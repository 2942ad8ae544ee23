"""Open WebRTC Toolkit (OWT / Intel CS for WebRTC) MCU management API adapter.

Wire facts (../shared/provider-docs/owt-mcu-management-api.md):
- Every request carries ``Authorization: MAuth realm=http://webrtc.intel.com,mauth_signature_method=
  HMAC_SHA256,[mauth_username=<base64>,mauth_role=<role>,]mauth_serviceid=..,mauth_cnonce=..,
  mauth_timestamp=..,mauth_signature=..`` with no spaces after the commas (the server splits on ``,``
  and strips the ``mauth_`` prefix by position). The signature is base64 of the lowercase HEX
  HMAC-SHA256 (service key) of ``timestamp,cnonce[,username,role]``; username is base64 when sent
  and is signed in that form.
- Errors are ``{"error": {"code": 1003, "message": "..."}}``; the token endpoint answers plain text
  (base64 of a JSON object ``{tokenId, host, secure, signature, ...}``).
- Rooms have no unique name: ``create_room`` lists rooms and reuses the one named after the lesson.
- Join roles must exist in the room (``presenter`` for moderators, ``viewer`` otherwise by default).

Operations outside the bridge's Provider interface (participants, streams, streaming-ins/outs,
recordings) are public methods taking the Room.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import secrets
import time
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote, urlsplit

import httpx

from bridge.providers.base import (
    Capability,
    JoinGrant,
    Lesson,
    Provider,
    ProviderError,
    Room,
    SettingsError,
    User,
    raise_for_http,
    transport_error,
)

REALM = "http://webrtc.intel.com"
ROLE_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")      # a role is sent raw inside the MAuth header
SERVICE_ID_RE = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")
PAGE_SIZE = 100
MAX_PAGES = 200              # bounded listing: 20,000 rooms
NOT_FOUND = 404
# 404 codes meaning "that thing is gone" (not "service not found", 1002): general, room, stream,
# participant; "" when a proxy answered 404 without the OWT error body.
ABSENT_CODES = frozenset({"", "1001", "1003", "1004", "1005"})

# Documented enumerations (section 5).
AUDIO_CODECS = ("opus", "pcmu", "pcma", "aac", "ac3", "nellymoser")
VIDEO_CODECS = ("h264", "vp8", "h265", "vp9")
FRAMERATES = (6, 12, 15, 24, 30, 48, 60)
VIEW_BITRATES = ("0.2x", "0.4x", "0.6x", "0.8x")
KEY_FRAME_INTERVALS = (100, 30, 5, 2, 1)
FIT_POLICIES = ("letterbox", "crop")
BASE_TEMPLATES = ("fluid", "lecture", "void")
CONTAINERS = ("mp4", "mkv", "auto", "ts")
TRANSPORTS = ("udp", "tcp")
OUT_FRAMERATES = ("6", "12", "15", "24", "30", "48", "60")
OUT_BITRATES = ("x0.8", "x0.6", "x0.4", "x0.2")
OUT_KEY_FRAME_INTERVALS = ("1", "2", "5", "30", "100")
STREAMING_IN_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "http", "https", "srt")


# ---------------------------------------------------------------------------- validation


class Problems:
    """Collects `path: problem` strings; never records a value that could be a secret."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, path: str, problem: str) -> None:
        self.items.append(f"{path}: {problem}")

    def enum(self, path: str, value: Any, allowed: Iterable[Any]) -> None:
        allowed = tuple(allowed)
        if isinstance(value, bool) or value not in allowed:
            self.add(path, f"must be one of {', '.join(map(str, allowed))}")

    def kind(self, path: str, value: Any, kinds: type | tuple[type, ...], what: str) -> bool:
        if isinstance(value, bool) and bool not in (kinds if isinstance(kinds, tuple) else (kinds,)):
            self.add(path, f"must be {what}")
            return False
        if not isinstance(value, kinds):
            self.add(path, f"must be {what}")
            return False
        return True

    def patch_items(self, items: Any) -> Iterator[tuple[str, dict[str, Any]]]:
        """Each item of a PATCH body's list with its path, once the list itself is a non-empty list."""
        if not self.kind("items", items, list, "a list"):
            return
        if not items:
            self.add("items", "must not be empty")
        for i, item in enumerate(items):
            if self.kind(f"items[{i}]", item, dict, "an object {op, path, value}"):
                yield f"items[{i}]", item

    def int_range(self, path: str, value: Any, low: int, high: int | None = None) -> None:
        if self.kind(path, value, int, "a whole number") and (value < low or (high is not None and value > high)):
            self.add(path, f"must be between {low} and {high}" if high is not None else f"must be >= {low}")

    def bools(self, path: str, value: Any, keys: Iterable[str]) -> None:
        if self.kind(path, value, dict, "an object"):
            for key in keys:
                if key in value:
                    self.kind(f"{path}.{key}", value[key], bool, "true or false")


def _check_audio_format(p: Problems, path: str, fmt: Any, codecs: Iterable[str] = AUDIO_CODECS) -> None:
    if not p.kind(path, fmt, dict, "an object"):
        return
    p.enum(f"{path}.codec", fmt.get("codec"), codecs)
    for key in ("sampleRate", "channelNum"):
        if key in fmt:
            p.int_range(f"{path}.{key}", fmt[key], 1)


def _check_video_format(p: Problems, path: str, fmt: Any) -> None:
    if p.kind(path, fmt, dict, "an object"):
        p.enum(f"{path}.codec", fmt.get("codec"), VIDEO_CODECS)


def _check_resolution(p: Problems, path: str, value: Any) -> None:
    if p.kind(path, value, dict, "an object {width, height}"):
        p.int_range(f"{path}.width", value.get("width"), 1)
        p.int_range(f"{path}.height", value.get("height"), 1)


def _check_view_audio(p: Problems, path: str, audio: Any) -> None:
    if audio is False or not p.kind(path, audio, dict, "an object or false"):
        return
    if "format" in audio:
        _check_audio_format(p, f"{path}.format", audio["format"])
    if "vad" in audio:
        p.kind(f"{path}.vad", audio["vad"], bool, "true or false")


def _check_view_video(p: Problems, path: str, video: Any) -> None:
    if video is False or not p.kind(path, video, dict, "an object or false"):
        return
    if "format" in video:
        _check_video_format(p, f"{path}.format", video["format"])
    params = video.get("parameters")
    if params is not None and p.kind(f"{path}.parameters", params, dict, "an object"):
        if "resolution" in params:
            _check_resolution(p, f"{path}.parameters.resolution", params["resolution"])
        if "framerate" in params:
            p.enum(f"{path}.parameters.framerate", params["framerate"], FRAMERATES)
        if "bitrate" in params:
            p.enum(f"{path}.parameters.bitrate", params["bitrate"], VIEW_BITRATES)
        if "keyFrameInterval" in params:
            p.enum(f"{path}.parameters.keyFrameInterval", params["keyFrameInterval"], KEY_FRAME_INTERVALS)
    if "maxInput" in video:
        p.int_range(f"{path}.maxInput", video["maxInput"], 1)
    color = video.get("bgColor")
    if color is not None and p.kind(f"{path}.bgColor", color, dict, "an object {r, g, b}"):
        for channel in ("r", "g", "b"):
            p.int_range(f"{path}.bgColor.{channel}", color.get(channel), 0, 255)
    if "motionfactor" in video:
        p.kind(f"{path}.motionfactor", video["motionfactor"], (int, float), "a number")
    for key in ("keepActiveInputPrimary", "keepActiveInputPrimay"):     # the doc spells it both ways
        if key in video:
            p.kind(f"{path}.{key}", video[key], bool, "true or false")
    layout = video.get("layout")
    if layout is not None and p.kind(f"{path}.layout", layout, dict, "an object"):
        for key in ("fitPolicy", "fitPilicy"):                             # the doc's spelling too
            if key in layout:
                p.enum(f"{path}.layout.{key}", layout[key], FIT_POLICIES)
        templates = layout.get("templates")
        if templates is not None and p.kind(f"{path}.layout.templates", templates, dict, "an object"):
            if "base" in templates:
                p.enum(f"{path}.layout.templates.base", templates["base"], BASE_TEMPLATES)
            custom = templates.get("custom", [])
            if p.kind(f"{path}.layout.templates.custom", custom, list, "a list"):
                for i, entry in enumerate(custom):
                    _check_custom_layout(p, f"{path}.layout.templates.custom[{i}]", entry)


def _check_custom_layout(p: Problems, path: str, entry: Any) -> None:
    if not p.kind(path, entry, dict, "an object {primary, region}"):
        return
    if "primary" in entry:
        p.kind(f"{path}.primary", entry["primary"], str, "a region id")
    regions = entry.get("region", [])
    if p.kind(f"{path}.region", regions, list, "a list"):
        for j, region in enumerate(regions):
            rpath = f"{path}.region[{j}]"
            if not p.kind(rpath, region, dict, "an object"):
                continue
            p.kind(f"{rpath}.id", region.get("id"), str, "a string")
            if "shape" in region:
                p.kind(f"{rpath}.shape", region["shape"], str, "a string")
            area = region.get("area")
            if p.kind(f"{rpath}.area", area, dict, "an object"):
                for key in ("left", "top", "width", "height"):
                    p.kind(f"{rpath}.area.{key}", area.get(key), (int, float, str), "a number or fraction")


def validate_room_options(options: Any) -> list[str]:
    """Check a Room options object against the documented model and enumerations.

    Unknown keys are allowed (servers add fields across versions); known keys must be well-formed.
    """
    p = Problems()
    if not p.kind("options", options, dict, "an object"):
        return p.items
    for key in ("participantLimit", "inputLimit"):
        if key in options:
            p.int_range(key, options[key], -1)
    roles = options.get("roles")
    if roles is not None and p.kind("roles", roles, list, "a list"):
        for i, role in enumerate(roles):
            if not p.kind(f"roles[{i}]", role, dict, "an object"):
                continue
            if not isinstance(role.get("role"), str) or not ROLE_RE.match(role["role"]):
                p.add(f"roles[{i}].role", "must be a role name (letters, digits, '_', '-', '.')")
            for key in ("publish", "subscribe"):
                if key in role:
                    p.bools(f"roles[{i}].{key}", role[key], ("audio", "video"))
    views = options.get("views")
    if views is not None and p.kind("views", views, list, "a list"):
        for i, view in enumerate(views):
            if not p.kind(f"views[{i}]", view, dict, "an object"):
                continue
            if "label" in view:
                p.kind(f"views[{i}].label", view["label"], str, "a string")
            if "audio" in view:
                _check_view_audio(p, f"views[{i}].audio", view["audio"])
            if "video" in view:
                _check_view_video(p, f"views[{i}].video", view["video"])
    media_in = options.get("mediaIn")
    if media_in is not None and p.kind("mediaIn", media_in, dict, "an object"):
        _check_format_list(p, "mediaIn", media_in)
    media_out = options.get("mediaOut")
    if media_out is not None and p.kind("mediaOut", media_out, dict, "an object"):
        _check_media_out(p, media_out)
    transcoding = options.get("transcoding")
    if transcoding is not None and p.kind("transcoding", transcoding, dict, "an object"):
        if "audio" in transcoding:
            p.kind("transcoding.audio", transcoding["audio"], bool, "true or false")
        if "video" in transcoding:
            p.bools("transcoding.video", transcoding["video"],
                    ("format", "framerate", "bitrate", "keyFrameInterval", "resolution"))
    if "notifying" in options:
        p.bools("notifying", options["notifying"], ("participantActivities", "streamChange"))
    sip = options.get("sip")
    if sip is not None and sip is not False and p.kind("sip", sip, dict, "an object"):
        for key in ("sipServer", "username", "password"):
            if key in sip:
                p.kind(f"sip.{key}", sip[key], str, "a string")
    return p.items


def _check_format_list(p: Problems, path: str, media: Mapping[str, Any]) -> None:
    """mediaIn/mediaOut audio and video lists: format objects ({codec, ...}) or Audio/Video objects."""
    audio = media.get("audio", [])
    if p.kind(f"{path}.audio", audio, list, "a list"):
        for i, item in enumerate(audio):
            fmt = item.get("format", item) if isinstance(item, dict) else item
            _check_audio_format(p, f"{path}.audio[{i}]", fmt)
    video = media.get("video", [])
    if isinstance(video, list):
        for i, item in enumerate(video):
            fmt = item.get("format", item) if isinstance(item, dict) else item
            _check_video_format(p, f"{path}.video[{i}]", fmt)
    elif path == "mediaIn":
        p.add(f"{path}.video", "must be a list")


def _check_media_out(p: Problems, media_out: Mapping[str, Any]) -> None:
    _check_format_list(p, "mediaOut", {"audio": media_out.get("audio", [])})
    video = media_out.get("video")
    if video is None or not p.kind("mediaOut.video", video, dict, "an object {format, parameters}"):
        return
    formats = video.get("format", [])
    if p.kind("mediaOut.video.format", formats, list, "a list"):
        for i, item in enumerate(formats):
            fmt = item.get("format", item) if isinstance(item, dict) else item
            _check_video_format(p, f"mediaOut.video.format[{i}]", fmt)
    params = video.get("parameters")
    if params is None or not p.kind("mediaOut.video.parameters", params, dict, "an object"):
        return
    for key, kinds, what in (("resolution", str, "strings such as 'x3/4' or 'cif'"),
                             ("framerate", int, "whole numbers"),
                             ("bitrate", str, "strings such as 'x1.6'"),
                             ("keyFrameInterval", int, "whole numbers")):
        values = params.get(key, [])
        if p.kind(f"mediaOut.video.parameters.{key}", values, list, "a list"):
            for i, value in enumerate(values):
                if key == "keyFrameInterval":
                    p.enum(f"mediaOut.video.parameters.{key}[{i}]", value, KEY_FRAME_INTERVALS)
                else:
                    p.kind(f"mediaOut.video.parameters.{key}[{i}]", value, kinds, what)


def validate_participant_update(items: Any) -> list[str]:
    p = Problems()
    for path, item in p.patch_items(items):
        if item.get("op") != "replace":
            p.add(f"{path}.op", "must be 'replace'")
        target = item.get("path")
        if target in ("/permission/publish", "/permission/subscribe"):
            value = item.get("value")
            if value is not False:
                p.bools(f"{path}.value", value, ("audio", "video"))
                if isinstance(value, dict) and set(value) - {"audio", "video"}:
                    p.add(f"{path}.value", "may only hold audio and video")
        elif isinstance(target, str) and re.fullmatch(r"/permission/(publish|subscribe)/(audio|video)", target):
            p.kind(f"{path}.value", item.get("value"), bool, "true or false")
        else:
            p.add(f"{path}.path", "must be /permission/(publish|subscribe)[/(audio|video)]")
    return p.items


def validate_stream_update(items: Any) -> list[str]:
    p = Problems()
    for path, item in p.patch_items(items):
        op, target, value = item.get("op"), item.get("path"), item.get("value")
        if target == "/info/inViews":
            p.enum(f"{path}.op", op, ("add", "remove"))
            p.kind(f"{path}.value", value, str, "a view label")
        elif target in ("/media/audio/status", "/media/video/status"):
            p.enum(f"{path}.op", op, ("replace",))
            p.enum(f"{path}.value", value, ("active", "inactive"))
        elif isinstance(target, str) and re.fullmatch(r"/info/layout/[0-9]+/stream", target):
            p.enum(f"{path}.op", op, ("replace",))
            p.kind(f"{path}.value", value, str, "a stream id")
        else:
            p.add(f"{path}.path", "must be /info/inViews, /media/(audio|video)/status or "
                                  "/info/layout/<n>/stream")
    return p.items


def validate_subscription_update(items: Any) -> list[str]:
    """Streaming-out and recording PATCH items (SubscriptionControlInfo)."""
    p = Problems()
    for path, item in p.patch_items(items):
        p.enum(f"{path}.op", item.get("op"), ("replace",))
        target, value = item.get("path"), item.get("value")
        if target in ("/media/audio/from", "/media/video/from"):
            p.kind(f"{path}.value", value, str, "a stream id")
        elif target == "/media/video/parameters/resolution":
            _check_resolution(p, f"{path}.value", value)
        elif target == "/media/video/parameters/framerate":
            p.enum(f"{path}.value", value, OUT_FRAMERATES)
        elif target == "/media/video/parameters/bitrate":
            p.enum(f"{path}.value", value, OUT_BITRATES)
        elif target == "/media/video/parameters/keyFrameInterval":
            p.enum(f"{path}.value", value, OUT_KEY_FRAME_INTERVALS)
        else:
            p.add(f"{path}.path", "must be /media/(audio|video)/from or /media/video/parameters/<name>")
    return p.items


def _invalid(code: str, problems: list[str]) -> ProviderError:
    return ProviderError(code, "; ".join(problems)[:500], retryable=False)


# ---------------------------------------------------------------------------- the adapter


def _error_fields(response: httpx.Response) -> tuple[str, str]:
    try:
        body = response.json()
    except ValueError:
        return "", response.text.strip()[:200]
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict):
            return str(err.get("code") or ""), str(err.get("message") or "")
        if isinstance(err, str):
            return "", err
        if "message" in body:
            return str(body.get("code") or ""), str(body["message"])
    return "", str(body)[:200]


class OwtProvider(Provider):
    kind = "owt"
    capabilities = frozenset({
        Capability.ROOMS, Capability.JOIN, Capability.KICK, Capability.END_ROOM,
        Capability.RECORDING, Capability.STREAM_OUT,
    })

    def __init__(self, name: str, settings: Mapping[str, Any], http: httpx.AsyncClient) -> None:
        super().__init__(name, settings, http)
        self.base_url = self._url(settings, "base_url", None)
        self.join_base = self._url(settings, "join_base", self.base_url)
        service_id = settings.get("service_id")
        if not isinstance(service_id, str) or not SERVICE_ID_RE.match(service_id):
            raise SettingsError("service_id", "required: the OWT service id (no ',' '=' or spaces)")
        self.service_id = service_id
        service_key = settings.get("service_key")
        if not isinstance(service_key, str) or not service_key:
            raise SettingsError("service_key", "required: the OWT service key")
        self._key = service_key.encode()
        self.moderator_role = self._role(settings, "moderator_role", "presenter")
        self.guest_role = self._role(settings, "guest_role", "viewer")
        options = settings.get("room_options", {})
        problems = validate_room_options(options)
        if problems:
            raise SettingsError("room_options", problems[0])
        self.room_options: dict[str, Any] = dict(options)
        roles = {r.get("role") for r in self.room_options.get("roles", [])}
        for key in ("moderator_role", "guest_role"):
            if roles and getattr(self, key) not in roles:
                raise SettingsError(key, "is not one of the roles in room_options.roles")
        self.recording_container = settings.get("recording_container", "auto")
        if self.recording_container not in CONTAINERS:
            raise SettingsError("recording_container", f"must be one of {', '.join(CONTAINERS)}")
        self.mix_view = settings.get("mix_view", "common")
        if not isinstance(self.mix_view, str) or not self.mix_view:
            raise SettingsError("mix_view", "must be a view label")
        ttl = settings.get("token_ttl_s", 180)
        if isinstance(ttl, bool) or not isinstance(ttl, int) or not 1 <= ttl <= 86400:
            raise SettingsError("token_ttl_s", "must be a whole number of seconds between 1 and 86400")
        self.token_ttl_s = ttl
        preference = settings.get("token_preference", {"isp": "isp", "region": "region"})
        if not isinstance(preference, Mapping) or not all(isinstance(v, str) for v in preference.values()):
            raise SettingsError("token_preference", "must be a table like {isp = \"...\", region = \"...\"}")
        self.token_preference = dict(preference)
        self._last_ts = 0

    @staticmethod
    def _url(settings: Mapping[str, Any], key: str, default: str | None) -> str:
        value = settings.get(key, default)
        if not isinstance(value, str) or not value.strip():
            raise SettingsError(key, "required: an http(s) URL")
        parts = urlsplit(value.strip())
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise SettingsError(key, "must be an http(s) URL")
        return value.strip().rstrip("/")

    @staticmethod
    def _role(settings: Mapping[str, Any], key: str, default: str) -> str:
        value = settings.get(key, default)
        if not isinstance(value, str) or not ROLE_RE.match(value):
            raise SettingsError(key, "must be a role name (letters, digits, '_', '-', '.')")
        return value

    def __repr__(self) -> str:
        return f"<OwtProvider name={self.name!r} base_url={self.base_url!r} service_id={self.service_id!r}>"

    # ------------------------------------------------------------------ auth

    def _timestamp_ms(self) -> int:
        """Milliseconds, strictly increasing in this process (old servers refuse a repeated timestamp)."""
        now = int(time.time() * 1000)
        self._last_ts = max(now, self._last_ts + 1)
        return self._last_ts

    def authorization(self, username: str | None = None, role: str | None = None) -> str:
        timestamp = self._timestamp_ms()
        cnonce = secrets.randbelow(100000)
        fields = [f"MAuth realm={REALM}", "mauth_signature_method=HMAC_SHA256"]
        to_sign = f"{timestamp},{cnonce}"
        if username and role:
            encoded = base64.b64encode(username.encode()).decode()
            fields += [f"mauth_username={encoded}", f"mauth_role={role}"]
            to_sign += f",{encoded},{role}"
        digest = hmac.new(self._key, to_sign.encode(), hashlib.sha256).hexdigest()
        signature = base64.b64encode(digest.encode()).decode()
        fields += [f"mauth_serviceid={self.service_id}", f"mauth_cnonce={cnonce}",
                   f"mauth_timestamp={timestamp}", f"mauth_signature={signature}"]
        return ",".join(fields)

    # ------------------------------------------------------------------ HTTP

    async def _send(self, method: str, path: str, *, json_body: Any = None, params: Mapping[str, Any] | None = None,
                    auth: tuple[str, str] | None = None, absent_ok: bool = False) -> httpx.Response | None:
        headers = {"Authorization": self.authorization(*(auth or (None, None)))}
        try:
            response = await self.http.request(method, self.base_url + path, json=json_body, params=params,
                                               headers=headers)
        except httpx.TransportError as exc:
            raise transport_error(self.kind, exc) from exc
        if response.is_success:
            return response
        code, message = _error_fields(response)
        if absent_ok and response.status_code == NOT_FOUND and code in ABSENT_CODES:
            return None     # already gone: the repeat of a delete/drop/stop is done
        try:
            raise_for_http(self.kind, response, code, message or response.reason_phrase)
        except ProviderError as exc:
            if exc.retry_after is None and response.headers.get("retry-after"):
                try:
                    when = parsedate_to_datetime(response.headers["retry-after"])
                    exc.retry_after = max(0.0, (when - datetime.now(UTC)).total_seconds())
                except (TypeError, ValueError):
                    pass
            raise
        raise AssertionError("unreachable")   # pragma: no cover

    async def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = await self._send(method, path, **kwargs)
        if response is None:
            return None
        try:
            return response.json()
        except ValueError:
            raise ProviderError("bad_response", f"owt answered {method} {path.split('?')[0]} with non-JSON",
                                retryable=False, status=response.status_code) from None

    @staticmethod
    def _room_path(room: Room | str, *rest: str) -> str:
        room_id = room.id if isinstance(room, Room) else room
        return "/v1/rooms/" + "/".join(quote(part, safe="") for part in (room_id, *rest))

    @staticmethod
    def _id_of(data: Any, what: str) -> str:
        if isinstance(data, dict):
            value = data.get("id", data.get("_id"))
            if isinstance(value, str) and value:
                return value
        raise ProviderError("bad_response", f"owt {what} answer has no id", retryable=False)

    # ------------------------------------------------------------------ rooms

    async def list_rooms(self) -> list[dict[str, Any]]:
        """Every room of the service, page by page (bounded)."""
        rooms: list[dict[str, Any]] = []
        seen: set[str] = set()
        for page in range(1, MAX_PAGES + 1):
            batch = await self._json("GET", "/v1/rooms", params={"page": page, "per_page": PAGE_SIZE})
            if not isinstance(batch, list):
                raise ProviderError("bad_response", "owt room list is not a list", retryable=False)
            fresh = [r for r in batch if isinstance(r, dict) and str(r.get("_id")) not in seen]
            rooms.extend(fresh)
            seen.update(str(r.get("_id")) for r in fresh)
            if len(batch) < PAGE_SIZE or len(batch) > PAGE_SIZE or not fresh:
                break      # last page, or a server that ignores pagination
        return rooms

    async def find_room(self, name: str) -> dict[str, Any] | None:
        matches = [r for r in await self.list_rooms() if r.get("name") == name]
        return min(matches, key=lambda r: str(r.get("_id"))) if matches else None

    async def get_room(self, room: Room) -> dict[str, Any]:
        return await self._json("GET", self._room_path(room))

    def _options_for(self, lesson: Lesson, options: Mapping[str, Any] | None) -> dict[str, Any]:
        merged = {**self.room_options, **(options or {})}
        problems = validate_room_options(merged)
        if problems:
            raise _invalid("invalid_room_options", problems)
        return merged

    @staticmethod
    def _room_from(data: Any) -> Room:
        if not isinstance(data, dict) or not data.get("_id") or not isinstance(data.get("name"), str):
            raise ProviderError("bad_response", "owt room answer has no _id/name", retryable=False)
        return Room(id=str(data["_id"]), name=data["name"])

    async def create_room(self, lesson: Lesson, options: Mapping[str, Any] | None = None) -> Room:
        """Find the room named after the lesson, else create it (validated options, nothing sent if bad)."""
        body_options = self._options_for(lesson, options)
        existing = await self.find_room(lesson.room_name)
        if existing is not None:
            return self._room_from(existing)
        body: dict[str, Any] = {"name": lesson.room_name}
        if body_options:
            body["options"] = body_options
        return self._room_from(await self._json("POST", "/v1/rooms", json_body=body))

    async def update_room(self, lesson: Lesson, room: Room, options: Mapping[str, Any] | None = None) -> Room:
        """Replace the room's configuration (settings' room_options + `options` or room.extra['options'])."""
        extra = options if options is not None else room.extra.get("options")
        body = {"name": room.name or lesson.room_name, **self._options_for(lesson, extra)}
        data = await self._json("PUT", self._room_path(room), json_body=body, absent_ok=True)
        if data is None:        # deleted behind our back: look again by name, else recreate
            return await self.create_room(lesson, extra)
        updated = self._room_from(data)
        return Room(id=updated.id, name=updated.name, extra=dict(room.extra))

    async def delete_room(self, lesson: Lesson, room: Room) -> None:
        await self._send("DELETE", self._room_path(room), absent_ok=True)

    async def end_room(self, lesson: Lesson, room: Room) -> None:
        """Drop everyone (the room itself stays, so the lesson can start again)."""
        participants = await self.list_participants(room, absent_ok=True)
        for participant in participants:
            await self.drop_participant(room, self._id_of(participant, "participant"))

    # ------------------------------------------------------------------ tokens

    async def join(self, lesson: Lesson, room: Room, user: User) -> JoinGrant:
        if not user.id:
            raise ProviderError("invalid_user", "a join token needs the LMS user id", retryable=False)
        role = self.moderator_role if user.is_moderator else self.guest_role
        body = {"preference": self.token_preference, "user": user.id, "role": role}
        expires_at = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=self.token_ttl_s)
        response = await self._send("POST", self._room_path(room, "tokens"), json_body=body,
                                    auth=(user.id, role))
        assert response is not None
        token = self.check_token(response.text)
        url = f"{self.join_base}/?room={quote(room.id, safe='')}&token={quote(token, safe='')}"
        return JoinGrant(join_url=url, token=token, expires_at=expires_at, role=role)

    @staticmethod
    def decode_token(token: str) -> dict[str, Any]:
        """An OWT token is base64 of a JSON object ({tokenId, host, secure, signature, ...})."""
        try:
            data = json.loads(base64.b64decode(token, validate=True))
        except (binascii.Error, ValueError):
            raise ProviderError("bad_token", "owt token is not base64 JSON", retryable=False) from None
        if not isinstance(data, dict):
            raise ProviderError("bad_token", "owt token is not a JSON object", retryable=False)
        return data

    def check_token(self, text: str) -> str:
        token = text.strip()
        if token.startswith('"') and token.endswith('"'):       # some servers JSON-quote plain text
            try:
                token = json.loads(token)
            except ValueError:
                raise ProviderError("bad_token", "owt token is not base64 JSON", retryable=False) from None
        data = self.decode_token(token)
        if not data.get("tokenId") or not data.get("host") or not data.get("signature"):
            raise ProviderError("bad_token", "owt token lacks tokenId/host/signature", retryable=False)
        return token

    # ------------------------------------------------------------------ participants

    async def _list(self, room: Room, collection: str, *, absent_ok: bool = False) -> list[dict[str, Any]]:
        """GET a room's collection (participants, streams, streaming-outs, recordings) as a list of objects."""
        data = await self._json("GET", self._room_path(room, collection), absent_ok=absent_ok)
        if data is None:
            return []
        if not isinstance(data, list):
            raise ProviderError("bad_response", f"owt {collection} list is not a list", retryable=False)
        return [item for item in data if isinstance(item, dict)]

    async def _start_from_mix(self, room: Room, collection: str, body: dict[str, Any], what: str) -> str:
        """POST a streaming-out or recording fed by the room's mixed stream; returns its id."""
        mix = await self._mixed_stream(room)
        body = {**body, "media": {"audio": {"from": mix}, "video": {"from": mix}}}
        return self._id_of(await self._json("POST", self._room_path(room, collection), json_body=body), what)

    async def _update_output(self, room: Room, collection: str, output_id: str, items: list[dict[str, Any]]
                             ) -> dict[str, Any]:
        problems = validate_subscription_update(items)
        if problems:
            raise _invalid("invalid_request", problems)
        return await self._json("PATCH", self._room_path(room, collection, output_id), json_body=items)

    async def list_participants(self, room: Room, *, absent_ok: bool = False) -> list[dict[str, Any]]:
        return await self._list(room, "participants", absent_ok=absent_ok)

    async def get_participant(self, room: Room, participant_id: str) -> dict[str, Any]:
        return await self._json("GET", self._room_path(room, "participants", participant_id))

    async def update_participant(self, room: Room, participant_id: str, items: list[dict[str, Any]]
                                 ) -> dict[str, Any]:
        problems = validate_participant_update(items)
        if problems:
            raise _invalid("invalid_request", problems)
        return await self._json("PATCH", self._room_path(room, "participants", participant_id), json_body=items)

    async def drop_participant(self, room: Room, participant_id: str) -> None:
        await self._send("DELETE", self._room_path(room, "participants", participant_id), absent_ok=True)

    async def kick(self, lesson: Lesson, room: Room, user_id: str, participant_id: str | None = None) -> None:
        if participant_id:
            await self.drop_participant(room, participant_id)
            return
        if not user_id:
            raise ProviderError("invalid_participant", "no participant to kick", retryable=False)
        for participant in await self.list_participants(room, absent_ok=True):
            if str(participant.get("user")) == user_id:
                await self.drop_participant(room, self._id_of(participant, "participant"))

    # ------------------------------------------------------------------ streams and streaming-ins

    async def list_streams(self, room: Room) -> list[dict[str, Any]]:
        return await self._list(room, "streams")

    async def get_stream(self, room: Room, stream_id: str) -> dict[str, Any]:
        return await self._json("GET", self._room_path(room, "streams", stream_id))

    async def update_stream(self, room: Room, stream_id: str, items: list[dict[str, Any]]) -> dict[str, Any]:
        problems = validate_stream_update(items)
        if problems:
            raise _invalid("invalid_request", problems)
        return await self._json("PATCH", self._room_path(room, "streams", stream_id), json_body=items)

    async def delete_stream(self, room: Room, stream_id: str) -> None:
        await self._send("DELETE", self._room_path(room, "streams", stream_id), absent_ok=True)

    async def start_streaming_in(self, room: Room, url: str, *, transport: str = "tcp",
                                 buffer_size: int | None = None, audio: bool | str = "auto",
                                 video: bool | str = "auto") -> str:
        """Pull an external RTSP/RTMP stream into the room; returns the new stream id.

        OWT cannot list streaming-ins by URL, so a repeated call adds a second input: callers keep
        the returned id and stop it with `stop_streaming_in` (which is safe to repeat).
        """
        p = Problems()
        parts = urlsplit(url or "")
        if parts.scheme not in STREAMING_IN_SCHEMES or not parts.netloc:
            p.add("connection.url", f"must be a {'/'.join(STREAMING_IN_SCHEMES)} URL")
        p.enum("connection.transportProtocol", transport, TRANSPORTS)
        if buffer_size is not None:
            if transport != "udp":
                p.add("connection.bufferSize", "only applies to udp")
            p.int_range("connection.bufferSize", buffer_size, 1)
        for key, value in (("media.audio", audio), ("media.video", video)):
            if value not in ("auto", True, False):
                p.add(key, "must be 'auto', true or false")
        if p.items:
            raise _invalid("invalid_request", p.items)
        connection: dict[str, Any] = {"url": url, "transportProtocol": transport}
        if buffer_size is not None:
            connection["bufferSize"] = buffer_size
        data = await self._json("POST", self._room_path(room, "streaming-ins"),
                                json_body={"connection": connection, "media": {"audio": audio, "video": video}})
        return self._id_of(data, "streaming-in")

    async def stop_streaming_in(self, room: Room, stream_id: str) -> None:
        await self._send("DELETE", self._room_path(room, "streaming-ins", stream_id), absent_ok=True)

    async def _mixed_stream(self, room: Room) -> str:
        """The room's mixed stream for `mix_view` (it exists once the room is running)."""
        mixed = [s for s in await self.list_streams(room) if s.get("type") == "mixed"]
        preferred = [s for s in mixed if (s.get("info") or {}).get("label") == self.mix_view]
        chosen = (preferred or mixed or [None])[0]
        if chosen is None:
            raise ProviderError("no_mixed_stream", "the room has no mixed stream yet (nobody has joined)",
                                retryable=True, retry_after=10.0)
        return self._id_of(chosen, "stream")

    # ------------------------------------------------------------------ streaming-outs

    async def list_stream_outs(self, room: Room) -> list[dict[str, Any]]:
        return await self._list(room, "streaming-outs")

    async def start_stream_out(self, lesson: Lesson, room: Room, url: str) -> str:
        """Push the room's mixed stream to `url`; an existing streaming-out to the same URL is reused."""
        parts = urlsplit(url or "")
        if not parts.scheme or not parts.netloc:
            raise _invalid("invalid_request", ["url: must be an absolute URL (rtmp://, rtsp://, ...)"])
        for existing in await self.list_stream_outs(room):
            if existing.get("url") == url:
                return self._id_of(existing, "streaming-out")
        return await self._start_from_mix(room, "streaming-outs", {"url": url}, "streaming-out")

    async def update_stream_out(self, room: Room, stream_out_id: str, items: list[dict[str, Any]]
                                ) -> dict[str, Any]:
        return await self._update_output(room, "streaming-outs", stream_out_id, items)

    async def stop_stream_out(self, lesson: Lesson, room: Room, stream_out_id: str) -> None:
        await self._send("DELETE", self._room_path(room, "streaming-outs", stream_out_id), absent_ok=True)

    # ------------------------------------------------------------------ recordings

    async def list_recordings(self, room: Room) -> list[dict[str, Any]]:
        return await self._list(room, "recordings")

    async def start_recording(self, lesson: Lesson, room: Room, container: str | None = None) -> str:
        """One server-side recording per lesson: an ongoing one is returned instead of a second."""
        container = container or self.recording_container
        if container not in CONTAINERS:
            raise _invalid("invalid_request", [f"container: must be one of {', '.join(CONTAINERS)}"])
        ongoing = await self.list_recordings(room)
        if ongoing:
            return self._id_of(ongoing[0], "recording")
        return await self._start_from_mix(room, "recordings", {"container": container}, "recording")

    async def update_recording(self, room: Room, recording_id: str, items: list[dict[str, Any]]
                               ) -> dict[str, Any]:
        return await self._update_output(room, "recordings", recording_id, items)

    async def stop_recording(self, lesson: Lesson, room: Room, recording_id: str) -> None:
        await self._send("DELETE", self._room_path(room, "recordings", recording_id), absent_ok=True)

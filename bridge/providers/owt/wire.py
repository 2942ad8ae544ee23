"""The OWT (Open WebRTC Toolkit / Intel CS for WebRTC) MCU management API on the wire
(../shared/provider-docs/owt-mcu-management-api.md).

- Errors are `{"error": {"code": 1003, "message": "..."}}`; the token endpoint answers plain text
  (base64 of a JSON object `{tokenId, host, secure, signature, ...}`).
- Rooms have no unique name: the adapter lists rooms and reuses the one named after the lesson.
- Room options are checked against the documented model and enumerations (section 5) before they
  are sent: unknown keys are allowed (servers add fields across versions), known keys must be
  well-formed.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

ROLE_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")      # a role is sent raw inside the MAuth header
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




def error_fields(body: Any) -> tuple[str, str]:
    if not isinstance(body, dict):
        return "", ""
    err = body.get("error")
    if isinstance(err, dict):
        return str(err.get("code") or ""), str(err.get("message") or "")
    if isinstance(err, str):
        return "", err
    return str(body.get("code") or ""), str(body.get("message") or "")


def token_of(text: str) -> str | None:
    """The join token in a token answer (plain text, JSON-quoted by some servers), None when it is not
    base64 of a JSON object with tokenId, host and signature."""
    token = text.strip()
    if token.startswith('"') and token.endswith('"'):
        try:
            token = json.loads(token)
        except ValueError:
            return None
    try:
        data = json.loads(base64.b64decode(token, validate=True))
    except (binascii.Error, ValueError, TypeError):
        return None
    if not isinstance(data, dict) or not data.get("tokenId") or not data.get("host") or not data.get("signature"):
        return None
    return token

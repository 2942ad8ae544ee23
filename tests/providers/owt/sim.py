"""A strict local OWT MCU management API simulator (rooms, participants, streams, streaming-ins/outs,
recordings, tokens), with MAuth verification, state in memory and failure injection.

Auth is checked like the real server: the header must be ``MAuth realm=http://webrtc.intel.com,...``
with ``mauth_``-prefixed fields and no spaces; the signature is recomputed with the service key over
``timestamp,cnonce[,username,role]`` (username as sent, base64) as base64(lowercase hex HMAC-SHA256).
A timestamp outside `window_ms` of the sim's clock, or a repeated (timestamp, cnonce), answers 401.
`monotonic=True` also refuses a timestamp older than the last accepted one (old nuve behaviour).

Usage::

    sim = OwtSim("svc-id", "svc-key")
    with serve(sim.app) as base_url: ...
    pid = sim.redeem(token)                 # a client joins with a token the API minted
    sim.inject(503)                         # the next call answers 503 (tests/fakes/injection.py)

Injected answers come before any auth check (the call is still logged in `requests`); with no `body`, an
error status gets OWT's own error shape ``{"error": {"code", "message"}}`` and a success an empty body.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
import time
from collections.abc import Callable
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from tests.fakes.injection import InjectionMixin

REALM_PREFIX = "MAuth realm=http://webrtc.intel.com"
AUDIO_CODECS = {"opus", "pcmu", "pcma", "aac", "ac3", "nellymoser", "g722", "iSAC", "iLBC"}
VIDEO_CODECS = {"h264", "vp8", "h265", "vp9"}
FRAMERATES = {6, 12, 15, 24, 30, 48, 60}
VIEW_BITRATES = {"0.2x", "0.4x", "0.6x", "0.8x"}
KFI = {100, 30, 5, 2, 1}
CONTAINERS = {"mp4", "mkv", "auto", "ts"}


class OwtError(Exception):
    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def bad(message: str) -> OwtError:
    return OwtError(400, 1301, message)


def _new_id() -> str:
    return secrets.token_hex(12)       # 24 hex chars, like a MongoDB ObjectId


def default_room(name: str) -> dict[str, Any]:
    both = {"audio": True, "video": True}
    return {
        "name": name, "participantLimit": -1, "inputLimit": -1,
        "roles": [
            {"role": "presenter", "publish": dict(both), "subscribe": dict(both)},
            {"role": "viewer", "publish": {"audio": False, "video": False}, "subscribe": dict(both)},
            {"role": "guest", "publish": dict(both), "subscribe": dict(both)},
        ],
        "views": [{"label": "common",
                   "audio": {"format": {"codec": "opus", "sampleRate": 48000, "channelNum": 2}, "vad": False},
                   "video": {"format": {"codec": "vp8"},
                             "parameters": {"resolution": {"width": 640, "height": 480}, "framerate": 24,
                                            "bitrate": "0.8x", "keyFrameInterval": 100},
                             "maxInput": 16, "bgColor": {"r": 0, "g": 0, "b": 0}, "motionfactor": 0.8,
                             "keepActiveInputPrimary": False,
                             "layout": {"fitPolicy": "letterbox", "templates": {"base": "fluid", "custom": []}}}}],
        "mediaIn": {"audio": [{"codec": "opus", "sampleRate": 48000, "channelNum": 2}],
                    "video": [{"codec": "h264"}, {"codec": "vp8"}]},
        "mediaOut": {"audio": [{"codec": "opus", "sampleRate": 48000, "channelNum": 2}],
                     "video": {"format": [{"codec": "h264"}, {"codec": "vp8"}],
                               "parameters": {"resolution": ["x3/4", "x2/3"], "framerate": [6, 12, 15, 24, 30],
                                              "bitrate": ["x0.8", "x0.6"], "keyFrameInterval": [100, 30, 5]}}},
        "transcoding": {"audio": True, "video": {"format": True, "framerate": True, "bitrate": True,
                                                 "keyFrameInterval": True}},
        "notifying": {"participantActivities": True, "streamChange": True},
        "sip": False,
    }


def check_options(options: Any) -> None:
    """The server's own validation (independent of the adapter's)."""
    if not isinstance(options, dict):
        raise bad("options must be an object")
    for key in ("participantLimit", "inputLimit"):
        if key in options and (not isinstance(options[key], int) or isinstance(options[key], bool)
                               or options[key] < -1):
            raise bad(f"{key} must be an integer >= -1")
    roles = options.get("roles", [])
    if not isinstance(roles, list) or any(not isinstance(r, dict) or not isinstance(r.get("role"), str)
                                          for r in roles):
        raise bad("roles must be a list of {role, publish, subscribe}")
    views = options.get("views", [])
    if not isinstance(views, list):
        raise bad("views must be a list")
    for view in views:
        if not isinstance(view, dict):
            raise bad("view must be an object")
        audio, video = view.get("audio"), view.get("video")
        if isinstance(audio, dict) and "format" in audio and audio["format"].get("codec") not in AUDIO_CODECS:
            raise bad("views.audio.format.codec invalid")
        if isinstance(video, dict):
            if "format" in video and video["format"].get("codec") not in VIDEO_CODECS:
                raise bad("views.video.format.codec invalid")
            params = video.get("parameters", {})
            if "framerate" in params and params["framerate"] not in FRAMERATES:
                raise bad("views.video.parameters.framerate invalid")
            if "bitrate" in params and params["bitrate"] not in VIEW_BITRATES:
                raise bad("views.video.parameters.bitrate invalid")
            if "keyFrameInterval" in params and params["keyFrameInterval"] not in KFI:
                raise bad("views.video.parameters.keyFrameInterval invalid")
            layout = video.get("layout", {})
            policy = layout.get("fitPolicy", layout.get("fitPilicy", "letterbox"))
            if policy not in ("letterbox", "crop"):
                raise bad("views.video.layout.fitPolicy invalid")
            if layout.get("templates", {}).get("base", "fluid") not in ("fluid", "lecture", "void"):
                raise bad("views.video.layout.templates.base invalid")


class OwtSim(InjectionMixin):
    def __init__(self, service_id: str = "5f0c1a2b3c4d5e6f7a8b9c0d", service_key: str = "service-key",
                 *, host: str = "127.0.0.1:8080", window_ms: int = 300_000, monotonic: bool = False) -> None:
        self.service_id = service_id
        self.service_key = service_key
        self.host = host
        self.window_ms = window_ms
        self.monotonic = monotonic
        self.server_key = secrets.token_bytes(16)
        self._init_injection()
        self.reset()
        methods = ["GET", "POST", "PUT", "PATCH", "DELETE"]
        self.app = Starlette(routes=[Route("/{path:path}", self._entry, methods=methods)])
        self._routes: list[tuple[str, re.Pattern[str], Callable[..., Response]]] = [
            ("GET", re.compile(r"/v1/rooms/?"), self._list_rooms),
            ("POST", re.compile(r"/v1/rooms/?"), self._create_room),
            ("GET", re.compile(r"/v1/rooms/(?P<room>[^/]+)"), self._get_room),
            ("PUT", re.compile(r"/v1/rooms/(?P<room>[^/]+)"), self._put_room),
            ("DELETE", re.compile(r"/v1/rooms/(?P<room>[^/]+)"), self._delete_room),
            ("GET", re.compile(r"/v1/rooms/(?P<room>[^/]+)/participants"), self._list_participants),
            ("GET", re.compile(r"/v1/rooms/(?P<room>[^/]+)/participants/(?P<id>[^/]+)"), self._get_participant),
            ("PATCH", re.compile(r"/v1/rooms/(?P<room>[^/]+)/participants/(?P<id>[^/]+)"),
             self._patch_participant),
            ("DELETE", re.compile(r"/v1/rooms/(?P<room>[^/]+)/participants/(?P<id>[^/]+)"),
             self._drop_participant),
            ("GET", re.compile(r"/v1/rooms/(?P<room>[^/]+)/streams"), self._list_streams),
            ("GET", re.compile(r"/v1/rooms/(?P<room>[^/]+)/streams/(?P<id>[^/]+)"), self._get_stream),
            ("PATCH", re.compile(r"/v1/rooms/(?P<room>[^/]+)/streams/(?P<id>[^/]+)"), self._patch_stream),
            ("DELETE", re.compile(r"/v1/rooms/(?P<room>[^/]+)/streams/(?P<id>[^/]+)"), self._delete_stream),
            ("POST", re.compile(r"/v1/rooms/(?P<room>[^/]+)/streaming-ins"), self._start_streaming_in),
            ("DELETE", re.compile(r"/v1/rooms/(?P<room>[^/]+)/streaming-ins/(?P<id>[^/]+)"),
             self._stop_streaming_in),
            ("GET", re.compile(r"/v1/rooms/(?P<room>[^/]+)/streaming-outs"), self._list_outs("outs")),
            ("POST", re.compile(r"/v1/rooms/(?P<room>[^/]+)/streaming-outs"), self._start_out),
            ("PATCH", re.compile(r"/v1/rooms/(?P<room>[^/]+)/streaming-outs/(?P<id>[^/]+)"),
             self._patch_out("outs")),
            ("DELETE", re.compile(r"/v1/rooms/(?P<room>[^/]+)/streaming-outs/(?P<id>[^/]+)"),
             self._delete_out("outs")),
            ("GET", re.compile(r"/v1/rooms/(?P<room>[^/]+)/recordings"), self._list_outs("recordings")),
            ("POST", re.compile(r"/v1/rooms/(?P<room>[^/]+)/recordings"), self._start_recording),
            ("PATCH", re.compile(r"/v1/rooms/(?P<room>[^/]+)/recordings/(?P<id>[^/]+)"),
             self._patch_out("recordings")),
            ("DELETE", re.compile(r"/v1/rooms/(?P<room>[^/]+)/recordings/(?P<id>[^/]+)"),
             self._delete_out("recordings")),
            ("POST", re.compile(r"/v1/rooms/(?P<room>[^/]+)/tokens"), self._create_token),
        ]

    # ------------------------------------------------------------------ state and helpers for tests

    def reset(self) -> None:
        self.clear_injections()
        with self._lock:
            self.calls.clear()
            self.rooms: dict[str, dict[str, Any]] = {}
            self.participants: dict[str, dict[str, dict[str, Any]]] = {}
            self.streams: dict[str, dict[str, dict[str, Any]]] = {}
            self.outs: dict[str, dict[str, dict[str, Any]]] = {}
            self.recordings: dict[str, dict[str, dict[str, Any]]] = {}
            self.tokens: dict[str, dict[str, Any]] = {}
            self.requests: list[dict[str, Any]] = []
            self._nonces: set[tuple[str, str]] = set()
            self._last_ts = 0

    @staticmethod
    def _injected_body(status: int) -> dict[str, Any] | None:
        """What an injected answer without a `body` carries: OWT's error shape, or nothing on success."""
        return {"error": {"code": 2001, "message": f"injected {status}"}} if status >= 400 else None

    def add_room(self, name: str, **options: Any) -> str:
        """A room created behind the bridge's back (another tool, an operator)."""
        room_id = _new_id()
        with self._lock:
            self._store_room(room_id, {**default_room(name), **options})
        return room_id

    def add_participant(self, room_id: str, user: str, role: str = "viewer") -> str:
        with self._lock:
            return self._join(room_id, user, role)

    def leave(self, room_id: str, participant_id: str) -> None:
        """A client closes its tab: the participant is gone from the room."""
        with self._lock:
            del self.participants[room_id][participant_id]

    def redeem(self, token: str) -> str:
        """A client connects with a token the API minted: checks its signature, single use."""
        data = json.loads(base64.b64decode(token))
        expected = self._token_signature(data["tokenId"])
        with self._lock:
            record = self.tokens.get(data["tokenId"])
            if record is None or record["used"] or not hmac.compare_digest(expected, data.get("signature", "")):
                raise OwtError(401, 1101, "invalid token")
            record["used"] = True
            return self._join(record["room"], record["user"], record["role"])

    def publish(self, room_id: str, participant_id: str) -> str:
        stream_id = _new_id()
        with self._lock:
            self.streams[room_id][stream_id] = {
                "id": stream_id, "type": "forward",
                "media": {"audio": {"status": "active", "source": "mic", "format": {"codec": "opus"}},
                          "video": {"status": "active", "source": "camera", "format": {"codec": "vp8"}}},
                "info": {"owner": participant_id, "type": "webrtc", "inViews": ["common"], "attributes": {}}}
        return stream_id

    def sign(self, timestamp: int, cnonce: int, username: str | None = None, role: str | None = None,
             key: str | None = None) -> str:
        to_sign = f"{timestamp},{cnonce}" + (f",{username},{role}" if username and role else "")
        digest = hmac.new((key or self.service_key).encode(), to_sign.encode(), hashlib.sha256).hexdigest()
        return base64.b64encode(digest.encode()).decode()

    def _store_room(self, room_id: str, room: dict[str, Any]) -> None:
        self.rooms[room_id] = {**room, "_id": room_id}
        self.participants.setdefault(room_id, {})
        self.streams.setdefault(room_id, {})
        self.outs.setdefault(room_id, {})
        self.recordings.setdefault(room_id, {})

    def _join(self, room_id: str, user: str, role: str) -> str:
        room = self._room(room_id)
        spec = next((r for r in room["roles"] if r["role"] == role), None)
        if spec is None:
            raise bad("role not valid")
        limit = room.get("participantLimit", -1)
        if limit >= 0 and len(self.participants[room_id]) >= limit:
            raise OwtError(403, 1102, "participant limit reached")
        pid = _new_id()
        self.participants[room_id][pid] = {
            "id": pid, "role": role, "user": user,
            "permission": {"publish": dict(spec.get("publish", {})), "subscribe": dict(spec.get("subscribe", {}))}}
        for view in room.get("views", []):      # the room starts: its mixed streams appear
            label = view.get("label", "common")
            sid = f"{room_id}-{label}"
            self.streams[room_id].setdefault(sid, {
                "id": sid, "type": "mixed",
                "media": {"audio": {"status": "active", "format": view.get("audio", {}).get("format", {})},
                          "video": {"status": "active", "format": view.get("video", {}).get("format", {})}},
                "info": {"label": label, "layout": []}})
        return pid

    def _token_signature(self, token_id: str) -> str:
        digest = hmac.new(self.server_key, f"{token_id},{self.host},undefined".encode(),
                          hashlib.sha256).hexdigest()
        return base64.b64encode(digest.encode()).decode()

    def _room(self, room_id: str) -> dict[str, Any]:
        room = self.rooms.get(room_id)
        if room is None:
            raise OwtError(404, 1003, "Room not found")
        return room

    # ------------------------------------------------------------------ HTTP plumbing

    async def _entry(self, request: Request) -> Response:
        raw = await request.body()
        path = request.url.path
        auth = request.headers.get("authorization", "")
        with self._lock:
            self.requests.append({"method": request.method, "path": path, "query": dict(request.query_params),
                                  "auth": auth, "body": raw.decode("utf-8", "replace")})
        injected = await self._intercept(request.method, path, self._injected_body)
        if injected is not None:
            return injected
        try:
            with self._lock:
                params = self._authenticate(auth)
                body: Any = None
                if raw:
                    if not request.headers.get("content-type", "").startswith("application/json"):
                        raise bad("body must be application/json")
                    try:
                        body = json.loads(raw)
                    except ValueError:
                        raise bad("body is not JSON") from None
                for method, pattern, handler in self._routes:
                    match = pattern.fullmatch(path)
                    if match and method == request.method:
                        return handler(match.groupdict(), body, request, params)
                raise OwtError(404, 1001, "Resource not found")
        except OwtError as exc:
            return JSONResponse({"error": {"code": exc.code, "message": exc.message}}, exc.status)

    def _authenticate(self, header: str) -> dict[str, str]:
        def deny(why: str) -> OwtError:
            return OwtError(401, 1101, f"Not authenticated: {why}")

        if not header.startswith(REALM_PREFIX + ","):
            raise deny("MAuth realm=http://webrtc.intel.com expected")
        params: dict[str, str] = {}
        for part in header[len(REALM_PREFIX) + 1:].split(","):
            key, sep, value = part.partition("=")
            if not sep or not key.startswith("mauth_") or key != key.strip() or " " in value:
                raise deny("malformed field (no spaces after commas)")
            params[key[len("mauth_"):]] = value
        if params.get("signature_method") != "HMAC_SHA256":
            raise deny("signature method")
        if params.get("serviceid") != self.service_id:
            raise deny("unknown service")
        cnonce, timestamp = params.get("cnonce", ""), params.get("timestamp", "")
        if not cnonce.isdigit() or not 0 <= int(cnonce) <= 99999 or not timestamp.isdigit():
            raise deny("cnonce/timestamp")
        if abs(int(timestamp) - int(time.time() * 1000)) > self.window_ms:
            raise deny("stale timestamp")
        if (timestamp, cnonce) in self._nonces or (self.monotonic and int(timestamp) < self._last_ts):
            raise deny("replayed timestamp/cnonce")
        username, role = params.get("username"), params.get("role")
        expected = self.sign(int(timestamp), int(cnonce), username, role)
        if not hmac.compare_digest(expected, params.get("signature", "")):
            raise deny("wrong signature")
        if username is not None:
            try:
                params["user"] = base64.b64decode(username, validate=True).decode()
            except ValueError:
                raise deny("username must be base64") from None
        self._nonces.add((timestamp, cnonce))
        self._last_ts = max(self._last_ts, int(timestamp))
        return params

    # ------------------------------------------------------------------ rooms

    def _list_rooms(self, _: dict, body: Any, request: Request, auth: dict) -> Response:
        rooms = list(self.rooms.values())
        if "per_page" in request.query_params:
            try:
                per_page = int(request.query_params["per_page"])
                page = int(request.query_params.get("page", "1"))
            except ValueError:
                raise bad("page and per_page must be numbers") from None
            if per_page < 1 or page < 1:
                raise bad("page and per_page start at 1")
            rooms = rooms[(page - 1) * per_page: page * per_page]
        return JSONResponse(rooms)

    def _create_room(self, _: dict, body: Any, request: Request, auth: dict) -> Response:
        if not isinstance(body, dict) or not isinstance(body.get("name"), str) or not body["name"]:
            raise bad("name required")
        options = body.get("options", {})
        check_options(options)
        room_id = _new_id()
        self._store_room(room_id, {**default_room(body["name"]), **options, "name": body["name"]})
        return JSONResponse(self.rooms[room_id])

    def _get_room(self, p: dict, body: Any, request: Request, auth: dict) -> Response:
        return JSONResponse(self._room(p["room"]))

    def _put_room(self, p: dict, body: Any, request: Request, auth: dict) -> Response:
        room = self._room(p["room"])
        body = body or {}
        check_options(body)
        self.rooms[p["room"]] = {**default_room(room["name"]), **body, "_id": p["room"]}
        return JSONResponse(self.rooms[p["room"]])

    def _delete_room(self, p: dict, body: Any, request: Request, auth: dict) -> Response:
        self._room(p["room"])
        for table in (self.rooms, self.participants, self.streams, self.outs, self.recordings):
            table.pop(p["room"], None)
        return Response(status_code=200)

    # ------------------------------------------------------------------ participants

    def _participant(self, p: dict) -> dict[str, Any]:
        self._room(p["room"])
        found = self.participants[p["room"]].get(p["id"])
        if found is None:
            raise OwtError(404, 1005, "Participant not found")
        return found

    def _list_participants(self, p: dict, body: Any, request: Request, auth: dict) -> Response:
        self._room(p["room"])
        return JSONResponse(list(self.participants[p["room"]].values()))

    def _get_participant(self, p: dict, body: Any, request: Request, auth: dict) -> Response:
        return JSONResponse(self._participant(p))

    def _patch_participant(self, p: dict, body: Any, request: Request, auth: dict) -> Response:
        participant = self._participant(p)
        if not isinstance(body, list) or not body:
            raise bad("items must be a non-empty list")
        for item in body:
            if not isinstance(item, dict) or item.get("op") != "replace":
                raise bad("op must be replace")
            match = re.fullmatch(r"/permission/(publish|subscribe)(?:/(audio|video))?", str(item.get("path")))
            if match is None:
                raise bad("invalid path")
            kind, media = match.groups()
            value = item.get("value")
            if media:
                if not isinstance(value, bool):
                    raise bad("value must be boolean")
                participant["permission"].setdefault(kind, {})[media] = value
            else:
                if value is not False and (not isinstance(value, dict) or set(value) - {"audio", "video"}
                                           or not all(isinstance(v, bool) for v in value.values())):
                    raise bad("value must be {audio, video}")
                participant["permission"][kind] = value
        return JSONResponse(participant)

    def _drop_participant(self, p: dict, body: Any, request: Request, auth: dict) -> Response:
        self._participant(p)
        del self.participants[p["room"]][p["id"]]
        for sid, stream in list(self.streams[p["room"]].items()):
            if stream["info"].get("owner") == p["id"]:
                del self.streams[p["room"]][sid]
        return Response(status_code=200)

    # ------------------------------------------------------------------ streams

    def _stream(self, p: dict) -> dict[str, Any]:
        self._room(p["room"])
        found = self.streams[p["room"]].get(p["id"])
        if found is None:
            raise OwtError(404, 1004, "Stream not found")
        return found

    def _list_streams(self, p: dict, body: Any, request: Request, auth: dict) -> Response:
        self._room(p["room"])
        return JSONResponse(list(self.streams[p["room"]].values()))

    def _get_stream(self, p: dict, body: Any, request: Request, auth: dict) -> Response:
        return JSONResponse(self._stream(p))

    def _patch_stream(self, p: dict, body: Any, request: Request, auth: dict) -> Response:
        stream = self._stream(p)
        if not isinstance(body, list) or not body:
            raise bad("items must be a non-empty list")
        for item in body:
            op, path, value = (item.get("op"), item.get("path"), item.get("value")) if isinstance(item, dict) \
                else (None, None, None)
            if path == "/info/inViews" and op in ("add", "remove") and isinstance(value, str):
                views = stream["info"].setdefault("inViews", [])
                if op == "add" and value not in views:
                    views.append(value)
                elif op == "remove" and value in views:
                    views.remove(value)
            elif (path in ("/media/audio/status", "/media/video/status") and op == "replace"
                  and value in ("active", "inactive")):
                stream["media"][path.split("/")[2]]["status"] = value
            elif (isinstance(path, str) and re.fullmatch(r"/info/layout/[0-9]+/stream", path) and op == "replace"
                  and isinstance(value, str)):
                index = int(path.split("/")[3])
                layout = stream["info"].setdefault("layout", [])
                if index >= len(layout):
                    raise bad("layout index out of range")
                layout[index]["stream"] = value
            else:
                raise bad("invalid stream update item")
        return JSONResponse(stream)

    def _delete_stream(self, p: dict, body: Any, request: Request, auth: dict) -> Response:
        self._stream(p)
        del self.streams[p["room"]][p["id"]]
        return Response(status_code=200)

    def _start_streaming_in(self, p: dict, body: Any, request: Request, auth: dict) -> Response:
        self._room(p["room"])
        if not isinstance(body, dict) or not isinstance(body.get("connection"), dict):
            raise bad("connection required")
        connection, media = body["connection"], body.get("media", {})
        if not isinstance(connection.get("url"), str) or "://" not in connection["url"]:
            raise bad("connection.url required")
        if connection.get("transportProtocol", "tcp") not in ("udp", "tcp"):
            raise bad("transportProtocol must be udp or tcp")
        if "bufferSize" in connection and (not isinstance(connection["bufferSize"], int)
                                           or connection["bufferSize"] < 1):
            raise bad("bufferSize must be a positive integer")
        if not isinstance(media, dict) or any(media.get(k, "auto") not in ("auto", True, False)
                                              for k in ("audio", "video")):
            raise bad("media.audio/video must be 'auto', true or false")
        sid = _new_id()
        stream = {"id": sid, "type": "forward",
                  "media": {k: ({"status": "active", "source": "streaming"} if media.get(k, "auto") else False)
                            for k in ("audio", "video")},
                  "info": {"owner": None, "type": "streaming", "inViews": [], "attributes": {}}}
        self.streams[p["room"]][sid] = stream
        return JSONResponse(stream)

    def _stop_streaming_in(self, p: dict, body: Any, request: Request, auth: dict) -> Response:
        stream = self._stream(p)
        if stream["info"].get("type") != "streaming":
            raise OwtError(404, 1004, "Stream not found")
        del self.streams[p["room"]][p["id"]]
        return Response(status_code=200)

    # ------------------------------------------------------------------ streaming-outs and recordings

    def _check_sub_media(self, room_id: str, media: Any) -> None:
        if not isinstance(media, dict) or not (media.get("audio") or media.get("video")):
            raise bad("media with audio and/or video required")
        for kind in ("audio", "video"):
            spec = media.get(kind, False)
            if spec is False:
                continue
            if not isinstance(spec, dict) or spec.get("from") not in self.streams[room_id]:
                raise OwtError(404, 1004, f"media.{kind}.from: stream not found")

    def _list_outs(self, table: str) -> Callable[..., Response]:
        def handler(p: dict, body: Any, request: Request, auth: dict) -> Response:
            self._room(p["room"])
            return JSONResponse(list(getattr(self, table)[p["room"]].values()))
        return handler

    def _start_out(self, p: dict, body: Any, request: Request, auth: dict) -> Response:
        self._room(p["room"])
        if not isinstance(body, dict) or not isinstance(body.get("url"), str) or "://" not in body["url"]:
            raise bad("url required")
        self._check_sub_media(p["room"], body.get("media"))
        out_id = _new_id()
        self.outs[p["room"]][out_id] = {"id": out_id, "url": body["url"], "media": body["media"]}
        return JSONResponse(self.outs[p["room"]][out_id])

    def _start_recording(self, p: dict, body: Any, request: Request, auth: dict) -> Response:
        self._room(p["room"])
        if not isinstance(body, dict):
            raise bad("options required")
        container = body.get("container", "auto")
        if container not in CONTAINERS:
            raise bad("container must be mp4, mkv, auto or ts")
        self._check_sub_media(p["room"], body.get("media"))
        rec_id = _new_id()
        ext = "mkv" if container == "auto" else container
        self.recordings[p["room"]][rec_id] = {"id": rec_id, "media": body["media"],
                                              "storage": {"host": "127.0.0.1", "file": f"{rec_id}.{ext}"}}
        return JSONResponse(self.recordings[p["room"]][rec_id])

    def _patch_out(self, table: str) -> Callable[..., Response]:
        values = {"/media/video/parameters/framerate": {"6", "12", "15", "24", "30", "48", "60"},
                  "/media/video/parameters/bitrate": {"x0.8", "x0.6", "x0.4", "x0.2"},
                  "/media/video/parameters/keyFrameInterval": {"1", "2", "5", "30", "100"}}

        def handler(p: dict, body: Any, request: Request, auth: dict) -> Response:
            self._room(p["room"])
            item_store = getattr(self, table)[p["room"]]
            if p["id"] not in item_store:
                raise OwtError(404, 1004, "Not found")
            target = item_store[p["id"]]
            if not isinstance(body, list) or not body:
                raise bad("items must be a non-empty list")
            for item in body:
                if not isinstance(item, dict) or item.get("op") != "replace":
                    raise bad("op must be replace")
                path, value = item.get("path"), item.get("value")
                if path in ("/media/audio/from", "/media/video/from"):
                    if value not in self.streams[p["room"]]:
                        raise OwtError(404, 1004, "from: stream not found")
                    target["media"].setdefault(path.split("/")[2], {})["from"] = value
                elif path == "/media/video/parameters/resolution":
                    if not isinstance(value, dict) or not all(isinstance(value.get(k), int) and value[k] > 0
                                                              for k in ("width", "height")):
                        raise bad("resolution must be {width, height}")
                    target["media"].setdefault("video", {}).setdefault("parameters", {})["resolution"] = value
                elif path in values:
                    if value not in values[path]:
                        raise bad(f"{path} value invalid")
                    target["media"].setdefault("video", {}).setdefault("parameters", {})[path.split("/")[-1]] = value
                else:
                    raise bad("invalid path")
            return JSONResponse(target)
        return handler

    def _delete_out(self, table: str) -> Callable[..., Response]:
        def handler(p: dict, body: Any, request: Request, auth: dict) -> Response:
            self._room(p["room"])
            if getattr(self, table)[p["room"]].pop(p["id"], None) is None:
                raise OwtError(404, 1004, "Not found")
            return Response(status_code=200)
        return handler

    # ------------------------------------------------------------------ tokens

    def _create_token(self, p: dict, body: Any, request: Request, auth: dict) -> Response:
        room = self._room(p["room"])
        body = body if isinstance(body, dict) else {}
        user = auth.get("user") or body.get("user")
        role = auth.get("role") or body.get("role")
        if auth.get("user") and body.get("user") not in (None, auth["user"]):
            raise bad("user in header and body differ")
        if not isinstance(user, str) or not user or not any(r["role"] == role for r in room["roles"]):
            raise bad("Name or role not valid")
        token_id = _new_id()
        self.tokens[token_id] = {"room": p["room"], "user": user, "role": role, "used": False,
                                 "preference": body.get("preference", {"isp": "isp", "region": "region"})}
        token = {"tokenId": token_id, "host": self.host, "secure": False,
                 "signature": self._token_signature(token_id)}
        return PlainTextResponse(base64.b64encode(json.dumps(token).encode()).decode())

"""A strict in-memory Apache OpenMeetings REST API under `/openmeetings/services/...`.

Behaves like the real server where the adapter depends on it:
- `GET services/user/login?user&pass` gives a SID for the right credentials only (else
  `{"serviceResult": {"code": -11, "type": "ERROR"}}`);
- every other call needs `?sid=` of a live session; an unknown or expired SID answers HTTP 500 with
  the text `error.notallowed` (as the real one does). `expire_sessions()` expires them all;
  `deny_rights = True` makes even fresh sessions refused (a user without REST rights);
- `POST services/user/hash` needs form fields `user` and `options`, both JSON strings, checked;
- rooms are found by (externalType, externalId) and created when missing; kick removes one user;
- `GET services/room/users/{id}` lists the UserDTOs of who is in the room (`{"userDTO": [...]}`; an
  unknown room lists nobody, as the real server's client list does).
`enter(hash)` plays a browser opening `<base>/hash?secure=<hash>` so rooms have people in them;
`leave(room_id, external_id)` one closing it; `visit(room_id, firstname)` someone who came in by
other means (no external id).

Usage: `sim = OpenMeetingsSim(); with serve(sim.app) as url: base_url = url + "/openmeetings"`.
Failure injection (shared with the other sims): `sim.inject(503, times=2)`,
`sim.inject(200, body={"serviceResult": {"code": -26, "message": "...", "type": "ERROR"}})`.
"""

from __future__ import annotations

import json
import uuid
from typing import Any
from urllib.parse import parse_qs

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from tests.fakes.injection import InjectionMixin

PREFIX = "/openmeetings/services"
ROOM_TYPES = ("CONFERENCE", "PRESENTATION", "INTERVIEW")
ROOM_FIELDS = {"id", "name", "comment", "type", "capacity", "appointment", "confno", "public", "isPublic",
               "demo", "closed", "demoTime", "externalId", "externalType", "redirectUrl", "moderated",
               "waitModerator", "allowUserQuestions", "allowRecording", "waitRecording", "audioOnly",
               "hiddenElements", "files", "tag"}
USER_FIELDS = {"login", "firstname", "lastname", "email", "externalId", "externalType", "profilePictureUrl"}
OPTION_FIELDS = {"roomId", "moderator", "showAudioVideoTest", "showNickNameDialog", "allowSameURLMultipleTimes",
                 "recordingId", "allowRecording"}


def _result(message: str, kind: str = "SUCCESS", code: int = 0) -> JSONResponse:
    return JSONResponse({"serviceResult": {"code": code, "message": message, "type": kind}})


class _Refused(Exception):
    pass


class _Bad(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class OpenMeetingsSim(InjectionMixin):
    def __init__(self, user: str = "soapuser", password: str = "!HansHans1-for-tests") -> None:
        self._init_injection()
        self.user = user
        self.password = password
        self.sessions: set[str] = set()
        self.logins = 0
        self.deny_rights = False
        self.rooms: dict[int, dict[str, Any]] = {}
        self._next_room = 1
        self.hashes: dict[str, dict[str, Any]] = {}
        self.present: dict[int, set[tuple[str, str]]] = {}   # room id -> {(externalType, externalId)}
        self.kicked: list[tuple[int, str, str]] = []
        self.users: dict[tuple[str, str], dict[str, Any]] = {}    # (externalType, externalId) -> UserDTO
        self.kick_all_calls = 0
        p = PREFIX
        routes = [
            Route(f"{p}/user/login", self.login, methods=["GET"]),
            Route(f"{p}/user/hash", self.user_hash, methods=["POST"]),
            Route(f"{p}/room", self.room_add, methods=["POST"]),
            Route(f"{p}/room/close/{{rid:int}}", self.room_close, methods=["GET"]),
            Route(f"{p}/room/open/{{rid:int}}", self.room_open, methods=["GET"]),
            Route(f"{p}/room/kick/{{rid:int}}", self.room_kick_all, methods=["GET"]),
            Route(f"{p}/room/kick/{{rid:int}}/{{etype}}/{{eid}}", self.room_kick, methods=["GET"]),
            Route(f"{p}/room/users/{{rid:int}}", self.room_users, methods=["GET"]),
            Route(f"{p}/room/{{rid:int}}", self.room_get, methods=["GET"]),
            Route(f"{p}/room/{{rid:int}}", self.room_delete, methods=["DELETE"]),
            Route(f"{p}/room/{{rtype}}/{{etype}}/{{eid}}", self.room_external, methods=["GET"]),
        ]
        router = Starlette(routes=routes)

        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            await self._dispatch(scope, receive, send, router,
                                 lambda status: {"serviceResult": {"code": -1, "message": "injected failure",
                                                                   "type": "ERROR"}})

        self.app = app

    # ---- test controls -------------------------------------------------------------------------

    def expire_sessions(self) -> None:
        """Every SID handed out so far is now expired (idle timeout)."""
        with self._lock:
            self.sessions.clear()

    def enter(self, secure: str) -> dict[str, Any]:
        """A browser opens <base>/hash?secure=...: single use, puts the user in the room."""
        with self._lock:
            entry = self.hashes.get(secure)
            if entry is None or entry["used"]:
                raise PermissionError("unknown or used hash")
            entry["used"] = True
            user, options = entry["user"], entry["options"]
            self._user_dto(user["externalType"], user["externalId"], user)
            self.present.setdefault(options["roomId"], set()).add((user["externalType"], user["externalId"]))
            return entry

    def leave(self, room_id: int, external_id: str, external_type: str = "LessonBridge") -> None:
        with self._lock:
            self.present.get(room_id, set()).discard((external_type, external_id))

    def visit(self, room_id: int, firstname: str) -> None:
        """Someone who came in without a room hash (an OpenMeetings account of their own)."""
        with self._lock:
            self._user_dto("", firstname, {"firstname": firstname, "lastname": "", "login": firstname})
            self.present.setdefault(room_id, set()).add(("", firstname))

    def _user_dto(self, external_type: str, external_id: str, user: dict[str, Any]) -> dict[str, Any]:
        dto = self.users.get((external_type, external_id))
        if dto is None:
            dto = {"id": len(self.users) + 1, "login": user["login"], "firstname": user.get("firstname", ""),
                   "lastname": user.get("lastname", ""), "type": "EXTERNAL" if external_type else "USER",
                   "externalId": external_id if external_type else None, "externalType": external_type or None}
            self.users[(external_type, external_id)] = dto
        return dto

    def room_by_external(self, external_type: str, external_id: str) -> dict[str, Any] | None:
        return next((r for r in self.rooms.values()
                     if r["externalType"] == external_type and r["externalId"] == external_id), None)

    # ---- helpers -------------------------------------------------------------------------------

    def _auth(self, request: Request) -> None:
        sid = request.query_params.get("sid")
        if not sid or sid not in self.sessions or self.deny_rights:
            raise _Refused

    @staticmethod
    def _refused() -> Response:
        return PlainTextResponse("error.notallowed", status_code=500)

    @staticmethod
    def _bad(message: str) -> Response:
        return JSONResponse({"serviceResult": {"code": -1, "message": message, "type": "ERROR"}}, status_code=400)

    def _room(self, rid: int) -> dict[str, Any]:
        room = self.rooms.get(rid)
        if room is None:
            raise _Bad("Room not found")
        return room

    @staticmethod
    async def _form(request: Request) -> dict[str, str]:
        """Form fields of an application/x-www-form-urlencoded body (what the adapter sends)."""
        if "application/x-www-form-urlencoded" not in request.headers.get("content-type", ""):
            raise _Bad("form fields expected (application/x-www-form-urlencoded)")
        try:
            pairs = parse_qs((await request.body()).decode(), keep_blank_values=True, strict_parsing=False)
        except UnicodeDecodeError:
            raise _Bad("form body is not UTF-8") from None
        if any(len(v) > 1 for v in pairs.values()):
            raise _Bad("repeated form field")
        return {k: v[0] for k, v in pairs.items()}

    @staticmethod
    def _json_field(raw: str | None, name: str, allowed: set[str]) -> dict[str, Any]:
        if raw is None:
            raise _Bad(f"missing form field {name}")
        try:
            value = json.loads(raw)
        except ValueError:
            raise _Bad(f"{name} is not JSON") from None
        if not isinstance(value, dict):
            raise _Bad(f"{name} must be a JSON object")
        unknown = set(value) - allowed
        if unknown:
            raise _Bad(f"{name}: unknown fields {sorted(unknown)}")
        return value

    def _validate_room(self, room: dict[str, Any]) -> None:
        if not isinstance(room.get("name"), str) or not room["name"].strip():
            raise _Bad("room.name is required")
        if room.get("type", "CONFERENCE") not in ROOM_TYPES:
            raise _Bad("room.type is invalid")
        capacity = room.get("capacity", 50)
        if not isinstance(capacity, int) or isinstance(capacity, bool) or capacity < 1:
            raise _Bad("room.capacity must be a positive integer")
        for key in ("appointment", "moderated", "waitModerator", "allowRecording", "allowUserQuestions", "closed"):
            if key in room and not isinstance(room[key], bool):
                raise _Bad(f"room.{key} must be a boolean")

    def _store_room(self, room: dict[str, Any]) -> dict[str, Any]:
        stored = {"type": "CONFERENCE", "capacity": 50, "closed": False, "comment": "", **room}
        if "id" not in stored:
            stored["id"] = self._next_room
            self._next_room += 1
        self.rooms[stored["id"]] = stored
        return stored

    # ---- user service --------------------------------------------------------------------------

    async def login(self, request: Request) -> Response:
        user, password = request.query_params.get("user"), request.query_params.get("pass")
        if user != self.user or password != self.password:
            return JSONResponse({"serviceResult": {"code": -11, "type": "ERROR"}})
        sid = str(uuid.uuid4())
        with self._lock:
            self.sessions.add(sid)
            self.logins += 1
        return _result(sid, code=1)

    async def user_hash(self, request: Request) -> Response:
        try:
            self._auth(request)
            form = await self._form(request)
            user = self._json_field(form.get("user"), "user", USER_FIELDS)
            options = self._json_field(form.get("options"), "options", OPTION_FIELDS)
            for key in ("externalId", "externalType", "login"):
                if not isinstance(user.get(key), str) or not user[key]:
                    raise _Bad(f"user.{key} is required")
            room_id = options.get("roomId")
            if not isinstance(room_id, int) or isinstance(room_id, bool):
                raise _Bad("options.roomId must be an integer")
            self._room(room_id)
            if not isinstance(options.get("moderator", False), bool):
                raise _Bad("options.moderator must be a boolean")
            secure = str(uuid.uuid4())
            with self._lock:
                self.hashes[secure] = {"user": user, "options": options, "used": False}
            return _result(secure)
        except _Refused:
            return self._refused()
        except _Bad as exc:
            return self._bad(exc.message)

    # ---- room service --------------------------------------------------------------------------

    async def room_external(self, request: Request) -> Response:
        try:
            self._auth(request)
            rtype, etype, eid = (request.path_params[k] for k in ("rtype", "etype", "eid"))
            if rtype not in ROOM_TYPES:
                raise _Bad("unknown room type")
            with self._lock:
                existing = self.room_by_external(etype, eid)
                if existing is not None:
                    return JSONResponse({"roomDTO": existing})
                room = self._json_field(request.query_params.get("room"), "room", ROOM_FIELDS)
                room.pop("id", None)
                room.update({"type": rtype, "externalType": etype, "externalId": eid})
                self._validate_room(room)
                return JSONResponse({"roomDTO": self._store_room(room)})
        except _Refused:
            return self._refused()
        except _Bad as exc:
            return self._bad(exc.message)

    async def room_add(self, request: Request) -> Response:
        try:
            self._auth(request)
            form = await self._form(request)
            room = self._json_field(form.get("room"), "room", ROOM_FIELDS)
            self._validate_room(room)
            with self._lock:
                if "id" in room:      # an existing id: update (merge) that room
                    stored = {**self._room(room["id"]), **room}
                    self.rooms[room["id"]] = stored
                else:
                    stored = self._store_room(room)
            return JSONResponse({"roomDTO": stored})
        except _Refused:
            return self._refused()
        except _Bad as exc:
            return self._bad(exc.message)

    async def room_users(self, request: Request) -> Response:
        try:
            self._auth(request)
            with self._lock:
                here = sorted(self.present.get(request.path_params["rid"], set()))
                return JSONResponse({"userDTO": [self.users[who] for who in here]})
        except _Refused:
            return self._refused()

    async def room_get(self, request: Request) -> Response:
        try:
            self._auth(request)
            return JSONResponse({"roomDTO": self._room(request.path_params["rid"])})
        except _Refused:
            return self._refused()
        except _Bad as exc:
            return self._bad(exc.message)

    async def room_delete(self, request: Request) -> Response:
        try:
            self._auth(request)
            with self._lock:
                if self.rooms.pop(request.path_params["rid"], None) is None:
                    return _result("Not found")
                self.present.pop(request.path_params["rid"], None)
            return _result("Deleted")
        except _Refused:
            return self._refused()

    async def room_close(self, request: Request) -> Response:
        return await self._set_closed(request, True)

    async def room_open(self, request: Request) -> Response:
        return await self._set_closed(request, False)

    async def _set_closed(self, request: Request, closed: bool) -> Response:
        try:
            self._auth(request)
            room = self._room(request.path_params["rid"])
            with self._lock:
                room["closed"] = closed
                if closed:
                    self.present.pop(room["id"], None)
            return _result("Closed" if closed else "Opened")
        except _Refused:
            return self._refused()
        except _Bad as exc:
            return _result(exc.message, "ERROR", -1)

    async def room_kick(self, request: Request) -> Response:
        try:
            self._auth(request)
            rid, etype, eid = (request.path_params[k] for k in ("rid", "etype", "eid"))
            self._room(rid)
            with self._lock:
                self.present.get(rid, set()).discard((etype, eid))
                self.kicked.append((rid, etype, eid))
            return _result("Kicked")
        except _Refused:
            return self._refused()
        except _Bad as exc:
            return _result(exc.message, "ERROR", -1)

    async def room_kick_all(self, request: Request) -> Response:
        try:
            self._auth(request)
            with self._lock:
                self.kick_all_calls += 1
                self.present.pop(request.path_params["rid"], None)
            return _result("Kicked")
        except _Refused:
            return self._refused()

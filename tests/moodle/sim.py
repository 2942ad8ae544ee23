"""A strict Moodle 5.1 REST web-service simulator (`/webservice/rest/server.php`).

It answers as a real Moodle does, facts the bridge must cope with included:
- every error is HTTP 200 with `{"exception", "errorcode", "message"}`: a wrong token `invalidtoken`, a
  function outside the token's service `accessexception`, unexpected or missing parameters
  `invalidparameter`, a calendar event that does not exist `nopermissions` (on purpose, not "not found");
- without `moodlewsrestformat=json` the answer is XML;
- arrays arrive form-encoded (`values[0]=31`, `events[courseids][0]=12`, `options[0][name]=cmid`);
- core_calendar_get_calendar_event_by_id embeds the course with its image (~23 KB); an activity's entry
  has modulename, component and `instance` = the cmid, a course event has modulename "" and neither key;
- core_calendar_get_calendar_events rows carry `instance` = the activity id and `modulename` null for
  course events, and (like some Moodle answers) ids as strings;
- core_user_get_users_by_field answers a bare list, `timezone` a string.

Usage: `sim = MoodleSim("ws-token"); sim.add_course(...)`; `with serve(sim.app) as url:`; `sim.calls`
lists (function, parameters) of every call that passed the token check, `sim.refused` those that did not.
"""

from __future__ import annotations

import base64
import re
import threading
import time
from typing import Any
from urllib.parse import parse_qsl

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

FUNCTIONS = frozenset({"core_calendar_get_calendar_event_by_id", "core_user_get_users_by_field",
                       "core_course_get_course_module", "core_course_get_contents",
                       "core_calendar_get_calendar_events"})
KEY_PART = re.compile(r"\[([^\]]*)\]")
# A course image as Moodle embeds it (an SVG pattern as a data URI): most of the calendar answer's size.
COURSE_IMAGE = "data:image/svg+xml;base64," + base64.b64encode(
    b"<svg xmlns='http://www.w3.org/2000/svg'>" + b"<rect width='1' height='1'/>" * 600 + b"</svg>").decode()


def moodle_error(exception: str, errorcode: str, message: str, debuginfo: str | None = None) -> JSONResponse:
    body: dict[str, Any] = {"exception": exception, "errorcode": errorcode, "message": message}
    if debuginfo:
        body["debuginfo"] = debuginfo
    return JSONResponse(body)      # HTTP 200, as Moodle does


class SimError(Exception):
    def __init__(self, exception: str, errorcode: str, message: str, debuginfo: str | None = None) -> None:
        super().__init__(message)
        self.answer = moodle_error(exception, errorcode, message, debuginfo)


def invalid(debuginfo: str) -> SimError:
    return SimError("invalid_parameter_exception", "invalidparameter", "Invalid parameter value detected", debuginfo)


def unflatten(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """`events[courseids][0]=12` → {"events": {"courseids": [12]}} (index-keyed dicts become lists)."""
    root: dict[str, Any] = {}
    for key, value in pairs:
        head = key.split("[", 1)[0]
        parts = [head, *KEY_PART.findall(key[len(head):])]
        node = root
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise invalid(f"{key}: conflicting structure")
        node[parts[-1]] = value
    return _lists(root)


def _lists(node: Any) -> Any:
    if not isinstance(node, dict):
        return node
    items = {k: _lists(v) for k, v in node.items()}
    if items and all(k.isdecimal() for k in items):
        return [items[k] for k in sorted(items, key=int)]
    return items


def _int(params: dict[str, Any], name: str) -> int:
    value = params.get(name)
    if not isinstance(value, str) or not value.lstrip("-").isdecimal():
        raise invalid(f"{name} => Invalid parameter value detected: Missing required key in single structure: "
                      f"{name}" if value is None else f"{name} => Invalid parameter value detected")
    return int(value)


def _only(params: dict[str, Any], allowed: set[str]) -> None:
    unexpected = sorted(set(params) - allowed)
    if unexpected:
        raise invalid(f"Unexpected keys ({', '.join(unexpected)}) detected in parameter array parameters.")


class MoodleSim:
    def __init__(self, token: str, functions: frozenset[str] = FUNCTIONS, host: str = "lms.example.edu") -> None:
        self.token, self.functions, self.host = token, functions, host
        self._lock = threading.Lock()
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.refused: list[str] = []
        self.users: dict[int, dict[str, Any]] = {}
        self.modules: dict[int, dict[str, Any]] = {}           # cmid → module (with course, section)
        self.calendar: dict[int, dict[str, Any]] = {}          # event id → event
        self.app = Starlette(routes=[Route("/webservice/rest/server.php", self._rest, methods=["GET", "POST"])])

    # ------------------------------------------------------------------ test helpers

    def add_user(self, user_id: int, first: str, last: str, email: str) -> None:
        self.users[user_id] = {"id": user_id, "username": f"{first}.{last}".lower(), "firstname": first,
                               "lastname": last, "fullname": f"{first} {last}", "email": email,
                               "department": "", "firstaccess": 1763000000, "lastaccess": 1763800000,
                               "auth": "manual", "suspended": False, "confirmed": True, "lang": "en",
                               "theme": "", "timezone": "99", "mailformat": 1,
                               "profileimageurlsmall": f"https://{self.host}/theme/image.php/boost/core/1/u/f2",
                               "profileimageurl": f"https://{self.host}/theme/image.php/boost/core/1/u/f1"}

    def add_activity(self, course: int, cmid: int, instance: int, name: str, modname: str = "bigbluebuttonbn",
                     opens: int | None = None, closes: int | None = None) -> None:
        dates = []
        if opens:
            dates.append({"label": "Opens:", "timestamp": opens, "dataid": "openingtime"})
        if closes:
            dates.append({"label": "Closes:", "timestamp": closes, "dataid": "closingtime"})
        self.modules[cmid] = {"id": cmid, "course": course, "url": f"https://{self.host}/mod/{modname}/view.php?id={cmid}",
                              "name": name, "instance": instance, "contextid": 400 + cmid, "visible": 1,
                              "uservisible": True, "visibleoncoursepage": 1, "modicon": "", "modname": modname,
                              "modplural": modname, "availability": None, "indent": 0, "onclick": "",
                              "afterlink": None, "customdata": "\"\"", "noviewlink": False, "completion": 0,
                              "downloadcontent": 1, "dates": dates, "groupmode": 0}

    def remove_activity(self, cmid: int) -> None:
        with self._lock:
            self.modules.pop(cmid, None)

    def add_course_event(self, event_id: int, course: int, name: str, start: int, duration: int = 0) -> None:
        self.calendar[event_id] = self._event(event_id, course, name, start, duration, activity=None)

    def add_activity_entry(self, event_id: int, cmid: int, start: int) -> None:
        """The calendar entry Moodle makes for an activity's opening time (a BigBlueButton meeting_start)."""
        module = self.modules[cmid]
        self.calendar[event_id] = self._event(event_id, module["course"], module["name"], start, 0, activity=module)

    def functions_called(self) -> list[str]:
        with self._lock:
            return [function for function, _ in self.calls]

    # ------------------------------------------------------------------ the web service

    async def _rest(self, request: Request) -> Response:
        body = (await request.body()).decode()
        if body and not request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
            return moodle_error("moodle_exception", "invalidtoken", "Invalid token - token not found")
        pairs = [*request.query_params.multi_items(), *parse_qsl(body, keep_blank_values=True)]
        params = unflatten(pairs)
        token, function = params.pop("wstoken", None), params.pop("wsfunction", None)
        rest_format = params.pop("moodlewsrestformat", "xml")
        if rest_format != "json":
            return Response("<?xml version=\"1.0\" encoding=\"UTF-8\" ?>\n<RESPONSE></RESPONSE>",
                            media_type="application/xml")
        if token != self.token:
            with self._lock:
                self.refused.append(str(function))
            return moodle_error("moodle_exception", "invalidtoken", "Invalid token - token not found")
        if function not in self.functions:
            return moodle_error("webservice_access_exception", "accessexception", "Access control exception",
                                f"Access to the function {function}() is not allowed.")
        with self._lock:
            self.calls.append((function, params))
        try:
            answer = getattr(self, f"_{function}")(params)
        except SimError as exc:
            return exc.answer
        return JSONResponse(answer)

    def _core_calendar_get_calendar_event_by_id(self, params: dict[str, Any]) -> Any:
        _only(params, {"eventid"})
        event = self.calendar.get(_int(params, "eventid"))
        if event is None:
            raise SimError("required_capability_exception", "nopermissions",
                           "Sorry, but you do not currently have permissions to do that (Update calendar event).")
        return {"event": event, "warnings": []}

    def _core_user_get_users_by_field(self, params: dict[str, Any]) -> Any:
        _only(params, {"field", "values"})
        if params.get("field") not in ("id", "idnumber", "username", "email"):
            raise invalid("field => Invalid parameter value detected")
        values = params.get("values")
        if not isinstance(values, list):
            raise invalid("values => Invalid parameter value detected: Only arrays accepted.")
        wanted = {int(v) for v in values if v.isdecimal()}
        return [user for user_id, user in self.users.items() if user_id in wanted]   # a bare list

    def _core_course_get_course_module(self, params: dict[str, Any]) -> Any:
        _only(params, {"cmid"})
        module = self.modules.get(_int(params, "cmid"))
        if module is None:
            raise SimError("dml_missing_record_exception", "invalidrecord",
                           "Can't find data record in database table course_modules.")
        cm = {key: module[key] for key in ("id", "course", "name", "modname", "instance", "visible", "groupmode")}
        return {"cm": {**cm, "module": 23, "section": 101, "idnumber": "", "added": 1763805600, "score": 0,
                       "indent": 0, "completion": 0, "visibleold": 1, "visibleoncoursepage": 1,
                       "groupingid": 0, "completionview": 0, "completionexpected": 0, "showdescription": 0,
                       "downloadcontent": 1, "availability": None}, "warnings": []}

    def _core_course_get_contents(self, params: dict[str, Any]) -> Any:
        _only(params, {"courseid", "options"})
        course = _int(params, "courseid")
        options = {}
        for option in params.get("options") or []:
            if not isinstance(option, dict) or set(option) != {"name", "value"}:
                raise invalid("options => Invalid parameter value detected")
            options[option["name"]] = option["value"]
        unknown = set(options) - {"excludemodules", "excludecontents", "includestealthmodules", "sectionid",
                                  "sectionnumber", "cmid", "modname", "modid"}
        if unknown:
            raise SimError("moodle_exception", "errorinvalidparam", "Invalid parameter value detected")
        with self._lock:
            modules = [m for m in self.modules.values() if m["course"] == course]
        if "cmid" in options:
            modules = [m for m in modules if str(m["id"]) == options["cmid"]]
        listed = [{key: value for key, value in m.items() if key != "course"} for m in modules]
        return [{"id": 101, "name": "General", "visible": 1, "summary": "", "summaryformat": 1, "section": 0,
                 "hiddenbynumsections": 0, "uservisible": True, "modules": listed}]

    def _core_calendar_get_calendar_events(self, params: dict[str, Any]) -> Any:
        _only(params, {"events", "options"})
        events, options = params.get("events") or {}, params.get("options") or {}
        if not isinstance(events, dict) or set(events) - {"eventids", "courseids", "groupids", "categoryids"}:
            raise invalid("events => Invalid parameter value detected")
        if not isinstance(options, dict) or set(options) - {"userevents", "siteevents", "timestart", "timeend",
                                                            "ignorehidden"}:
            raise invalid("options => Invalid parameter value detected")
        courses = {int(c) for c in events.get("courseids") or []}
        start, end = int(options.get("timestart", 0)), int(options.get("timeend", 0)) or 2**31
        rows = []
        for event in self.calendar.values():
            if event["course"]["id"] in courses and start <= event["timestart"] <= end:
                module = self.modules.get(event.get("instance", 0))
                rows.append({"id": str(event["id"]), "name": event["name"], "description": "", "format": 1,
                             "courseid": str(event["course"]["id"]), "categoryid": None, "groupid": "0",
                             "userid": "2", "repeatid": "0", "modulename": event["modulename"] or None,
                             "instance": str(module["instance"]) if module else "0", "eventtype": event["eventtype"],
                             "timestart": event["timestart"], "timeduration": event["timeduration"],
                             "timesort": event["timestart"], "timeusermidnight": event["timestart"],
                             "visible": 1, "uuid": "", "sequence": 1, "timemodified": 1763805600,
                             "subscriptionid": None})
        return {"events": rows, "warnings": []}

    def _event(self, event_id: int, course: int, name: str, start: int, duration: int,
               activity: dict[str, Any] | None) -> dict[str, Any]:
        event: dict[str, Any] = {
            "id": event_id, "name": name, "description": "", "descriptionformat": 1, "location": "",
            "categoryid": None, "groupid": None, "userid": 2, "repeatid": None, "eventcount": None,
            "modulename": activity["modname"] if activity else "",
            "eventtype": "meeting_start" if activity else "course",
            "timestart": start, "timeduration": duration, "timesort": start, "timeusermidnight": start,
            "visible": 1, "timemodified": 1763805600, "overdue": False, "icon": {"key": "i/courseevent",
                                                                                   "component": "core", "alttext": ""},
            "normalisedeventtype": "course", "normalisedeventtypetext": "Course event",
            "course": {"id": course, "fullname": "Algebra I", "shortname": "ALG1", "idnumber": "", "summary": "",
                       "summaryformat": 1, "startdate": 1756684800, "enddate": 1788220800, "visible": True,
                       "showactivitydates": True, "showcompletionconditions": None, "fullnamedisplay": "Algebra I",
                       "viewurl": f"https://{self.host}/course/view.php?id={course}", "courseimage": COURSE_IMAGE,
                       "progress": 0, "hasprogress": False, "isfavourite": False, "hidden": False,
                       "showshortname": False, "coursecategory": "Mathematics"},
            "subscription": {"displayeventsource": False}, "canedit": True, "candelete": True,
            "deleteurl": f"https://{self.host}/calendar/delete.php?id={event_id}", "editurl": "",
            "viewurl": f"https://{self.host}/calendar/view.php?view=day&time={start}#event_{event_id}",
            "formattedtime": time.strftime("%A, %d %B %Y, %I:%M %p", time.gmtime(start)),
            "formattedlocation": "", "isactionevent": bool(activity), "iscourseevent": not activity,
            "iscategoryevent": False, "groupname": None, "mindaytimestamp": None, "maxdaytimestamp": None,
            "draggable": True, "url": f"https://{self.host}/course/view.php?id={course}"}
        if activity:
            event["component"] = f"mod_{activity['modname']}"
            event["instance"] = activity["id"]        # the cmid here (Moodle 5.1), not the activity id
            event["url"] = activity["url"]
        return event

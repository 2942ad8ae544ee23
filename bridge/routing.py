"""Canonical event → the jobs that carry it out.

Job ids derive from the event reference, so the same event can never be enqueued twice.
"""

from __future__ import annotations

from typing import Any

from bridge.store import RECORDER_QUEUE, WORKER_QUEUE, JobSpec

# canonical type → (queue, job function). The function names are those workers/ registers.
JOBS_BY_TYPE: dict[str, list[tuple[str, str]]] = {
    "lesson.scheduled": [(WORKER_QUEUE, "lesson_scheduled")],
    "lesson.updated": [(WORKER_QUEUE, "lesson_updated")],
    "lesson.cancelled": [(WORKER_QUEUE, "lesson_cancelled")],
    "lesson.started": [(WORKER_QUEUE, "lesson_started")],
    "lesson.ended": [(WORKER_QUEUE, "lesson_ended")],
    "user.joined": [(WORKER_QUEUE, "user_joined")],
    "user.left": [(WORKER_QUEUE, "user_left")],
    "user.removed": [(WORKER_QUEUE, "user_removed")],
    "user.banned": [(WORKER_QUEUE, "user_banned")],
    "recording.start": [(RECORDER_QUEUE, "recording_start")],
    "recording.stop": [(WORKER_QUEUE, "recording_stop")],
    "recording.delete": [(WORKER_QUEUE, "recording_delete")],
    "call.dial_out": [(WORKER_QUEUE, "call_dial_out")],
    "call.hang_up": [(WORKER_QUEUE, "call_hang_up")],
    "role.assigned": [(WORKER_QUEUE, "role_changed")],
    "role.unassigned": [(WORKER_QUEUE, "role_changed")],
    "provider.event": [(WORKER_QUEUE, "provider_event")],     # a provider's webhook (bridge/provider_intake.py)
}
PROVIDER_SOURCE_PREFIX = "provider:"      # the event-log source of provider `<name>`'s webhooks


def provider_source(provider: str) -> str:
    return f"{PROVIDER_SOURCE_PREFIX}{provider}"


def job_source(envelope: dict[str, Any]) -> str:
    """The source whose endpoint gets a job's webhooks: the event's own, or, for a provider's event, the
    source of the lesson its room was made for."""
    if envelope["source"].startswith(PROVIDER_SOURCE_PREFIX):
        return str(envelope["event"]["data"]["source"])
    return str(envelope["source"])


def event_ref(source: str, event_id: str, replay: str | None = None) -> str:
    ref = f"{source}:{event_id}"
    return f"{ref}:replay:{replay}" if replay else ref


def plan(source: str, event: dict[str, Any], *, replay: str | None = None,
         replay_of: str | None = None) -> list[JobSpec]:
    steps = list(JOBS_BY_TYPE[event["type"]])
    if event["type"] == "lesson.started" and event["lesson"].get("record"):
        steps.append((RECORDER_QUEUE, "recording_start"))
    ref = event_ref(source, event["id"], replay)
    envelope = {"ref": ref, "source": source, "event": event, "replay_of": replay_of}
    return [JobSpec(queue=queue, function=function, job_id=f"{ref}:{function}", envelope=envelope)
            for queue, function in steps]

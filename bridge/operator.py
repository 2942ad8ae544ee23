"""Operator tools shared by the CLI and the admin API: event details, redelivery, endpoints.

Also the CLI side of them (`bridge replay|export|events|deliveries|endpoints|trim`): argument
parsing and printing only; the work is done by the functions above them and by bridge.replay.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TextIO

from arq.constants import job_key_prefix
from redis.asyncio import Redis
from redis.exceptions import RedisError, WatchError

from bridge import replay as rp
from bridge.config import Settings
from bridge.routing import event_ref
from bridge.sources.canonical import iso
from bridge.store import (
    DEAD_LETTERS,
    EVENT_LOG,
    FAILED_DELIVERIES,
    JOB_EXPIRES_MS,
    WORKER_QUEUE,
    arq_payload,
    attempts_key,
    delivery_key,
    endpoint_disabled_key,
    job_runs_key,
    produced_key,
    redis_client,
    replays_key,
)

DELIVERY_LISTS = {"failed": FAILED_DELIVERIES, "dead": DEAD_LETTERS, "disabled": FAILED_DELIVERIES}


def _text(value: bytes | str | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


# ---------------------------------------------------------------------------------------------- deliveries

async def delivery(redis: Redis, msg_id: str, *, with_attempts: bool = True) -> dict[str, Any] | None:
    record = {k.decode(): v.decode() for k, v in (await redis.hgetall(delivery_key(msg_id))).items()}
    if not record:
        return None
    try:
        payload = json.loads(record.get("payload") or "null")
    except ValueError:
        payload = None
    data = (payload or {}).get("data") or {}
    next_at = record.get("next_at")
    info: dict[str, Any] = {
        "webhook_id": msg_id, "source": record.get("source"), "type": record.get("type"),
        "status": record.get("status"), "attempts": int(record.get("attempts") or 0),
        "last_status": record.get("last_status"), "ref": record.get("ref"), "created_at": record.get("created_at"),
        "next_at": iso(datetime.fromtimestamp(float(next_at), UTC)) if next_at and record.get("status") == "failed"
        else None,
        "event_id": data.get("event_id"), "replay_of": data.get("replay_of"), "payload": payload,
    }
    if with_attempts:
        info["attempt_log"] = [json.loads(a) for a in await redis.lrange(attempts_key(msg_id), 0, -1)]
    return info


async def list_deliveries(redis: Redis, status: str, *, endpoint: str | None = None, limit: int | None = 100,
                          cursor: int = 0) -> tuple[list[dict[str, Any]], int | None]:
    """Failed (still retrying or held), dead or disabled deliveries, most recent first; next cursor or None."""
    if status not in DELIVERY_LISTS:
        raise ValueError(f"status must be one of {', '.join(DELIVERY_LISTS)}")
    key = DELIVERY_LISTS[status]
    out: list[dict[str, Any]] = []
    offset = cursor
    chunk = 200
    while True:
        rows = await redis.zrevrange(key, offset, offset + chunk - 1, withscores=True)
        for index, (member, score) in enumerate(rows):
            info = await delivery(redis, member.decode(), with_attempts=False)
            if info is None or info["status"] == "delivered":
                continue         # expired record, or delivered since (a manual retry)
            if status == "disabled" and info["status"] != "disabled":
                continue
            if endpoint and info["source"] != endpoint:
                continue
            info["listed_at"] = iso(datetime.fromtimestamp(score, UTC))
            out.append(info)
            if limit is not None and len(out) >= limit:
                more = offset + index + 1 < await redis.zcard(key)
                return out, (offset + index + 1) if more else None
        if len(rows) < chunk:
            return out, None
        offset += chunk


@dataclass
class RetryResult:
    webhook_id: str
    ok: bool
    code: str | None = None
    message: str | None = None
    job_id: str | None = None
    attempt: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


async def retry_delivery(redis: Redis, settings: Settings, msg_id: str) -> RetryResult:
    """Enqueue one more attempt, under a fresh job id; the webhook keeps its id (and its payload).

    Checked and written under WATCH, so a delivery that succeeds meanwhile is never sent again.
    """
    for _ in range(5):
        async with redis.pipeline(transaction=True) as pipe:
            try:
                await pipe.watch(delivery_key(msg_id))
                record = {k.decode(): v.decode() for k, v in (await pipe.hgetall(delivery_key(msg_id))).items()}
                if not record:
                    return RetryResult(msg_id, False, "not_found", "no such delivery (or its record expired)")
                if record.get("status") == "delivered":
                    return RetryResult(msg_id, False, "already_delivered", "this webhook was delivered already")
                source = settings.sources.get(record.get("source", ""))
                if source is None or not source.webhook_url:
                    return RetryResult(msg_id, False, "no_endpoint",
                                       f"source {record.get('source')!r} has no webhook_url configured")
                await pipe.watch(endpoint_disabled_key(source.name))
                if await pipe.exists(endpoint_disabled_key(source.name)):
                    return RetryResult(msg_id, False, "endpoint_disabled",
                                       f"endpoint {source.name!r} is disabled (it answered 410); "
                                       f"enable it first: bridge endpoints enable {source.name}")
                number = int(record.get("attempts") or 0)
                job_id = f"{msg_id}:retry:{rp.new_replay_id()}"
                now_ms = int(time.time() * 1000)
                pipe.multi()
                pipe.hset(delivery_key(msg_id), "status", "pending")
                pipe.hdel(delivery_key(msg_id), "next_at")
                pipe.zrem(DEAD_LETTERS, msg_id)
                pipe.psetex(job_key_prefix + job_id, JOB_EXPIRES_MS,
                            arq_payload("deliver_webhook", (msg_id, number), now_ms))
                pipe.zadd(WORKER_QUEUE, {job_id: now_ms})
                await pipe.execute()
                return RetryResult(msg_id, True, job_id=job_id, attempt=number)
            except WatchError:
                continue
    return RetryResult(msg_id, False, "busy", "the delivery kept changing; try again")


async def select_for_retry(redis: Redis, *, ids: Iterable[str] = (), endpoint: str | None = None,
                           all_dead: bool = False) -> list[str]:
    chosen = list(ids)
    if endpoint:
        for status in ("dead", "failed"):
            chosen += [d["webhook_id"] for d in (await list_deliveries(redis, status, endpoint=endpoint,
                                                                        limit=None))[0]]
    if all_dead:
        chosen += [d["webhook_id"] for d in (await list_deliveries(redis, "dead", limit=None))[0]]
    return list(dict.fromkeys(chosen))


async def enable_endpoint(redis: Redis, settings: Settings, name: str, *, retry: bool = False) -> dict[str, Any]:
    """Clear the 410 switch. Deliveries held as `disabled` become retryable (and are retried with `retry`)."""
    if name not in settings.sources:
        raise LookupError(f"no source (endpoint) named {name!r} is configured")
    since = _text(await redis.get(endpoint_disabled_key(name)))
    await redis.delete(endpoint_disabled_key(name))
    held = [d["webhook_id"] for d in (await list_deliveries(redis, "disabled", endpoint=name, limit=None))[0]]
    retried = [(await retry_delivery(redis, settings, msg_id)).as_dict() for msg_id in held] if retry else []
    return {"endpoint": name, "was_disabled": since is not None, "disabled_since": since, "held": held,
            "retried": retried}


# ---------------------------------------------------------------------------------------------- events show

async def event_details(redis: Redis, event: rp.LogEvent) -> dict[str, Any]:
    """The event, its canonical form, and each execution (original, then replays): jobs and deliveries."""
    executions: list[dict[str, Any]] = [{"ref": event.ref, "replay": event.replay, "entry_id": event.entry_id,
                                         "replayed_at": None, "functions": event.functions}]
    if not event.replay:
        for raw in await redis.lrange(replays_key(event.source, event.id), 0, -1):
            item = json.loads(raw)
            executions.append({"ref": event_ref(event.source, event.id, item["replay"]), "replay": item["replay"],
                               "entry_id": item.get("entry"), "replayed_at": item.get("at"),
                               "functions": list(item.get("functions") or [])})
    for execution in executions:
        ref, functions = execution["ref"], execution.pop("functions")
        runs = rp._runs(await redis.hgetall(job_runs_key(ref)))
        functions = functions or sorted(runs)
        async with redis.pipeline(transaction=False) as pipe:
            for function in functions:
                pipe.exists(job_key_prefix + f"{ref}:{function}")
            queued = await pipe.execute()
        jobs = []
        for function, is_queued in zip(functions, queued, strict=True):
            run = runs.get(function) or {}
            jobs.append({"function": function, "job_id": f"{ref}:{function}",
                         "status": run.get("status") or ("queued" if is_queued else "unknown"),
                         "try": run.get("try"), "at": run.get("at"), "ms": run.get("ms"), "error": run.get("error")})
        deliveries = []
        for msg_id in await redis.lrange(produced_key(ref), 0, -1):
            info = await delivery(redis, msg_id.decode())
            if info is not None:
                deliveries.append(info)
        execution.update(status=rp.summarize(functions, runs), jobs=jobs, deliveries=deliveries)
    return {"event": {**event.summary(), "canonical": event.canonical, "raw": event.raw},
            "status": executions[-1]["status"], "executions": executions}


# ---------------------------------------------------------------------------------------------- CLI

Operation = Callable[[argparse.Namespace, Settings, Redis], Awaitable[int]]


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Run one operator command against settings.redis_url; the exit code."""
    async def main() -> int:
        redis = redis_client(settings.redis_url or "redis://127.0.0.1:6379")
        try:
            return await args.operation(args, settings, redis)
        except RedisError as exc:
            print(f"error: Redis is unreachable or refused the command ({type(exc).__name__}: {exc})",
                  file=sys.stderr)
            return 3
        finally:
            await redis.aclose()
    return asyncio.run(main())


def _filters(args: argparse.Namespace) -> rp.Filters:
    return rp.Filters.build(since=args.since, until=args.until, sources=args.source or (), types=args.type or (),
                            lessons=args.lesson or (), ids=args.id or (), failed_only=args.failed_only,
                            include_replays=args.include_replays)


def _positive(value: str) -> float:
    number = float(value)
    if number <= 0:
        raise argparse.ArgumentTypeError("must be greater than 0")
    return number


def _add_filters(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("filters (repeat --source/--type/--lesson/--id for several values)")
    group.add_argument("--since", help="ISO 8601 time (2026-11-22T10:00:00Z) or relative (90s, 30m, 2h, 7d)")
    group.add_argument("--until", help="ISO 8601 time or relative, like --since")
    group.add_argument("--source", action="append", metavar="NAME")
    group.add_argument("--type", action="append", metavar="TYPE", help="canonical type, e.g. user.joined")
    group.add_argument("--lesson", action="append", metavar="LESSON_ID")
    group.add_argument("--id", action="append", metavar="EVENT_ID")
    group.add_argument("--failed-only", action="store_true",
                       help="only events whose latest run (original or replay) has a job that ended failed")
    group.add_argument("--include-replays", action="store_true", help="also select the log entries replays wrote")


class _Progress:
    """A bar on a terminal; otherwise one plain line per event. Problems always go to stderr."""

    def __init__(self, total: int, out: TextIO, dry_run: bool) -> None:
        self.total, self.out, self.dry_run = total, out, dry_run
        self.tty = out.isatty()
        self.done = self.failed = 0

    def __call__(self, item: rp.PlannedReplay) -> None:
        self.done += 1
        name = f"{item.event.source}:{item.event.id}"
        if item.error:
            self.failed += 1
            self._clear()
            print(f"{'cannot replay' if self.dry_run else 'failed'} {name}: {item.error}", file=sys.stderr,
                  flush=True)
        elif self.dry_run:
            self._clear()
            print(f"would replay {name} ({item.canonical.get('type') if item.canonical else '?'}, "
                  f"lesson {item.event.lesson_id}, received {item.event.received_at}) -> jobs: "
                  f"{', '.join(item.functions)}", file=self.out, flush=True)
        elif not self.tty:
            print(f"replayed {name} as {item.ref} (entry {item.entry_id}; jobs: {', '.join(item.functions)})",
                  file=self.out, flush=True)
        if self.tty and not self.dry_run:
            width = 30
            filled = int(width * self.done / max(self.total, 1))
            self.out.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total}"
                           f"{f' ({self.failed} failed)' if self.failed else ''}")
            self.out.flush()

    def _clear(self) -> None:
        if self.tty and not self.dry_run and self.done > 1:
            self.out.write("\r\033[K")

    def close(self) -> None:
        if self.tty and not self.dry_run and self.done:
            self.out.write("\n")
            self.out.flush()


async def cmd_replay(args: argparse.Namespace, settings: Settings, redis: Redis) -> int:
    try:
        filters = _filters(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    problems: list[str] = []
    if args.from_file:
        try:
            events, problems = await rp.select_from_file(redis, args.from_file, filters)
        except OSError as exc:
            print(f"error: cannot read {args.from_file}: {exc.strerror}", file=sys.stderr)
            return 2
    else:
        events = await rp.select_from_log(redis, filters, settings.sources)
    for problem in problems:
        print(f"failed {problem}", file=sys.stderr)
    planned = [rp.plan_replay(settings, event, args.reparse) for event in events]
    progress = _Progress(len(planned), sys.stdout, args.dry_run)
    if args.dry_run:
        for item in planned:
            progress(item)
    else:
        await rp.enqueue(redis, settings, planned, rate=args.rate, progress=progress)
        progress.close()
        if args.wait:
            await rp.wait_for_jobs(redis, planned, args.wait)
            for item in planned:
                if item.outcome in ("failed", "unfinished"):
                    print(f"{item.outcome} {item.ref}", file=sys.stderr)
    summary = rp.summarize_replays(planned, problems, dry_run=args.dry_run, waited=bool(args.wait))
    print(summary.text(), flush=True)
    return summary.exit_code


def _open_for_writing(path: str) -> TextIO:
    return open(path, "w", encoding="utf-8")   # a local file: blocking writes are fine in a CLI


async def cmd_export(args: argparse.Namespace, settings: Settings, redis: Redis) -> int:
    try:
        filters = _filters(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.out and args.out != "-":
        with _open_for_writing(args.out) as handle:
            count = await rp.export(redis, filters, handle.write, settings.sources)
    else:
        count = await rp.export(redis, filters, sys.stdout.write, settings.sources)
        sys.stdout.flush()
    print(f"exported {count} event{'s' if count != 1 else ''}", file=sys.stderr)
    return 0


def _print_details(details: dict[str, Any], out: TextIO) -> None:
    event = details["event"]
    print(f"event {event['id']}  source {event['source']}  entry {event['entry_id']}", file=out)
    print(f"  type {event['type']}  lesson {event['lesson_id']}  received {event['received_at']}"
          f"{'  replay of ' + event['replay_of'] if event['replay_of'] else ''}", file=out)
    print(f"  status {details['status']}", file=out)
    print("canonical:", file=out)
    print("  " + json.dumps(event["canonical"], indent=2, ensure_ascii=False).replace("\n", "\n  "), file=out)
    print("raw:", file=out)
    print("  " + json.dumps(event["raw"], ensure_ascii=False), file=out)
    for execution in details["executions"]:
        label = f"replay {execution['replay']} at {execution['replayed_at']}" if execution["replay"] else "original"
        print(f"{label}: {execution['status']}  (ref {execution['ref']}, entry {execution['entry_id']})", file=out)
        for job in execution["jobs"]:
            error = job["error"] or {}
            print(f"  job {job['function']}: {job['status']}"
                  + (f"  try {job['try']}  at {job['at']}  {job['ms']} ms" if job["at"] else "")
                  + (f"  error {error.get('code')}: {error.get('message')}" if error else ""), file=out)
        for hook in execution["deliveries"]:
            print(f"  webhook {hook['webhook_id']} {hook['type']}: {hook['status']}  attempts {hook['attempts']}"
                  + (f"  next at {hook['next_at']}" if hook["next_at"] else ""), file=out)
            for attempt in hook.get("attempt_log", []):
                print(f"    attempt {attempt.get('attempt')} at {attempt.get('at')}: "
                      f"{attempt.get('status') or attempt.get('error')}  {attempt.get('ms')} ms", file=out)


async def cmd_events_show(args: argparse.Namespace, settings: Settings, redis: Redis) -> int:
    found = await rp.find_events(redis, args.event_id, args.source, settings.sources)
    if not found:
        where = f" from source {args.source!r}" if args.source else ""
        print(f"no event {args.event_id!r}{where} in the event log", file=sys.stderr)
        return 1
    if len(found) > 1:
        print(f"event {args.event_id!r} exists in several sources ({', '.join(e.source for e in found)}); "
              "choose one with --source", file=sys.stderr)
        return 1
    details = await event_details(redis, found[0])
    if args.json:
        print(json.dumps(details, indent=2, ensure_ascii=False))
    else:
        _print_details(details, sys.stdout)
    return 0


async def cmd_deliveries_list(args: argparse.Namespace, settings: Settings, redis: Redis) -> int:
    items, _ = await list_deliveries(redis, args.status, endpoint=args.endpoint, limit=args.limit)
    if args.json:
        print(json.dumps(items, indent=2, ensure_ascii=False))
        return 0
    for d in items:
        print(f"{d['webhook_id']}  {d['status']:<9} {d['source']:<12} {d['type']:<20} attempts {d['attempts']:<3} "
              f"last {d['last_status'] or '-':<10} {d['listed_at']}  event {d['event_id']}")
    print(f"{len(items)} {args.status} deliver{'y' if len(items) == 1 else 'ies'}", file=sys.stderr)
    return 0


async def cmd_deliveries_retry(args: argparse.Namespace, settings: Settings, redis: Redis) -> int:
    if not (args.ids or args.endpoint or args.all_dead):
        print("error: name webhook ids, or use --endpoint SOURCE or --all-dead", file=sys.stderr)
        return 2
    ids = await select_for_retry(redis, ids=args.ids, endpoint=args.endpoint, all_dead=args.all_dead)
    failed = 0
    for msg_id in ids:
        result = await retry_delivery(redis, settings, msg_id)
        if result.ok:
            print(f"retrying {msg_id} (attempt {result.attempt}, job {result.job_id})")
        else:
            failed += 1
            print(f"cannot retry {msg_id}: {result.code}: {result.message}", file=sys.stderr)
    print(f"deliveries retry: {len(ids)} selected, {len(ids) - failed} enqueued, {failed} failed")
    return 1 if failed else 0


async def cmd_endpoints_enable(args: argparse.Namespace, settings: Settings, redis: Redis) -> int:
    try:
        result = await enable_endpoint(redis, settings, args.name, retry=args.retry)
    except LookupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    state = f"was disabled since {result['disabled_since']}" if result["was_disabled"] else "was not disabled"
    print(f"endpoint {args.name} enabled ({state}); {len(result['held'])} deliveries held as disabled")
    failed = [r for r in result["retried"] if not r["ok"]]
    if args.retry:
        print(f"retrying {len(result['retried']) - len(failed)} of them")
        for r in failed:
            print(f"cannot retry {r['webhook_id']}: {r['code']}: {r['message']}", file=sys.stderr)
    elif result["held"]:
        print(f"retry them with: bridge deliveries retry --endpoint {args.name}")
    return 1 if failed else 0


async def cmd_trim(args: argparse.Namespace, settings: Settings, redis: Redis) -> int:
    removed = await rp.trim_event_log(redis, settings, exact=args.exact)
    print(f"trimmed {removed} entries (retention {settings.event_retention_s} s, at most "
          f"{settings.event_retention_max} entries); the log holds {await redis.xlen(EVENT_LOG)}")
    return 0


def add_commands(commands: Any, run_command: Callable[[argparse.Namespace], None]) -> None:
    """Register the operator subcommands; each runs `run_command(args)`, which calls args.operation."""
    def command(parser: argparse.ArgumentParser, operation: Operation) -> argparse.ArgumentParser:
        parser.set_defaults(run=run_command, operation=operation)
        return parser

    replay = command(commands.add_parser(
        "replay", help="replay events from the log (or a JSONL export) with new job ids",
        description="Replay events: each gets a new replay id, so new job and webhook ids, and its webhooks "
                    "carry data.replay_of. Exit code 1 when any event could not be enqueued (or, with --wait, "
                    "its jobs ended failed or did not finish)."), cmd_replay)
    _add_filters(replay)
    replay.add_argument("--from-file", metavar="FILE", help="replay the lines of a `bridge export` file")
    replay.add_argument("--dry-run", action="store_true", help="print the plan; change nothing")
    replay.add_argument("--rate", type=_positive, metavar="PER_S", help="at most this many events per second")
    replay.add_argument("--reparse", action="store_true",
                        help="re-derive the canonical event from the raw body with the current mapping")
    replay.add_argument("--wait", type=_positive, metavar="SECONDS",
                        help="wait this long for the replayed jobs to end; failed or unfinished jobs fail the run")

    export = command(commands.add_parser("export", help="event log -> JSONL (stdout, or --out FILE)"), cmd_export)
    _add_filters(export)
    export.add_argument("--out", metavar="FILE")

    events = commands.add_parser("events", help="inspect events").add_subparsers(dest="events_command",
                                                                                  required=True)
    show = command(events.add_parser("show", help="an event, its canonical form, jobs, webhook deliveries"),
                   cmd_events_show)
    show.add_argument("event_id", metavar="ID")
    show.add_argument("--source", help="the source, when the id exists in several")
    show.add_argument("--json", action="store_true")

    deliveries = commands.add_parser("deliveries", help="webhook deliveries").add_subparsers(
        dest="deliveries_command", required=True)
    listing = command(deliveries.add_parser("list", help="failed (retrying or held), dead or disabled deliveries"),
                      cmd_deliveries_list)
    listing.add_argument("--status", choices=sorted(DELIVERY_LISTS), default="failed")
    listing.add_argument("--endpoint", metavar="SOURCE")
    listing.add_argument("--limit", type=int, default=1000)
    listing.add_argument("--json", action="store_true")
    retry = command(deliveries.add_parser("retry", help="one more attempt (same webhook-id, new job id)"),
                    cmd_deliveries_retry)
    retry.add_argument("ids", nargs="*", metavar="WEBHOOK_ID")
    retry.add_argument("--endpoint", metavar="SOURCE", help="every failed, held or dead delivery of this source")
    retry.add_argument("--all-dead", action="store_true", help="every dead-lettered delivery")

    endpoints = commands.add_parser("endpoints", help="webhook endpoints").add_subparsers(
        dest="endpoints_command", required=True)
    enable = command(endpoints.add_parser("enable", help="re-enable an endpoint disabled by a 410 answer"),
                     cmd_endpoints_enable)
    enable.add_argument("name", metavar="NAME", help="the source whose webhook_url it is")
    enable.add_argument("--retry", action="store_true", help="also retry the deliveries held while disabled")

    trim = command(commands.add_parser("trim", help="trim the event log by age and size now"), cmd_trim)
    trim.add_argument("--exact", action="store_true", help="trim to the entry (slower than the default ~)")

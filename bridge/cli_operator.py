"""The operator's subcommands of the `bridge` command: replay, export, events, deliveries, endpoints, trim.

Argument parsing and printing only; the work is done by bridge.eventlog and bridge.deliveries.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TextIO

from redis.asyncio import Redis
from redis.exceptions import RedisError

from bridge.config import Settings
from bridge.deliveries import DELIVERY_LISTS, enable_endpoint, list_deliveries, retry_delivery, select_for_retry
from bridge.eventlog.export import select_from_file, write_jsonl
from bridge.eventlog.query import Filters, event_details, find_events, select_from_log
from bridge.eventlog.replay import PlannedReplay, enqueue_replays, plan_replay, summarize_replays, wait_for_jobs
from bridge.eventlog.retention import prune_delivery_sets, trim_event_log
from bridge.store import EVENT_LOG, redis_client

Operation = Callable[[argparse.Namespace, Settings, Redis], Awaitable[int]]


class UsageError(Exception):
    """A bad option or argument: `error: <message>` on stderr and exit code 2."""


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Run one operator command against settings.redis_url; the exit code."""
    async def main() -> int:
        redis = redis_client(settings.redis_url or "redis://127.0.0.1:6379")
        try:
            return await args.operation(args, settings, redis)
        except UsageError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except RedisError as exc:
            print(f"error: Redis is unreachable or refused the command ({type(exc).__name__}: {exc})",
                  file=sys.stderr)
            return 3
        finally:
            await redis.aclose()
    return asyncio.run(main())


def _filters(args: argparse.Namespace) -> Filters:
    try:
        return Filters.build(since=args.since, until=args.until, sources=args.source or (), types=args.type or (),
                             lessons=args.lesson or (), ids=args.id or (), failed_only=args.failed_only,
                             include_replays=args.include_replays)
    except ValueError as exc:
        raise UsageError(exc) from None


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

    def __call__(self, item: PlannedReplay) -> None:
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
    filters = _filters(args)
    problems: list[str] = []
    if args.from_file:
        try:
            events, problems = await select_from_file(redis, args.from_file, filters)
        except OSError as exc:
            raise UsageError(f"cannot read {args.from_file}: {exc.strerror}") from None
    else:
        events = await select_from_log(redis, filters, settings.sources)
    for problem in problems:
        print(f"failed {problem}", file=sys.stderr)
    planned = [plan_replay(settings, event, args.reparse) for event in events]
    progress = _Progress(len(planned), sys.stdout, args.dry_run)
    if args.dry_run:
        for item in planned:
            progress(item)
    else:
        await enqueue_replays(redis, settings, planned, rate=args.rate, progress=progress)
        progress.close()
        if args.wait:
            await wait_for_jobs(redis, planned, args.wait)
            for item in planned:
                if item.outcome in ("failed", "unfinished"):
                    print(f"{item.outcome} {item.ref}", file=sys.stderr)
    summary = summarize_replays(planned, problems, dry_run=args.dry_run, waited=bool(args.wait))
    print(summary.text(), flush=True)
    return summary.exit_code


def _open_for_writing(path: str) -> TextIO:
    return open(path, "w", encoding="utf-8")   # a local file: blocking writes are fine in a CLI


async def cmd_export(args: argparse.Namespace, settings: Settings, redis: Redis) -> int:
    filters = _filters(args)
    if args.out and args.out != "-":
        with _open_for_writing(args.out) as handle:
            count = await write_jsonl(redis, filters, handle.write, settings.sources)
    else:
        count = await write_jsonl(redis, filters, sys.stdout.write, settings.sources)
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
    found = await find_events(redis, args.event_id, args.source, settings.sources)
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
        raise UsageError("name webhook ids, or use --endpoint SOURCE or --all-dead")
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
    removed = await trim_event_log(redis, settings, exact=args.exact)
    pruned = await prune_delivery_sets(redis, settings)
    print(f"trimmed {removed} entries (retention {settings.event_retention_s} s, at most "
          f"{settings.event_retention_max} entries); the log holds {await redis.xlen(EVENT_LOG)}; "
          f"{pruned} expired webhooks left the dead and failing lists")
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

    trim = command(commands.add_parser("trim", help="trim the event log by age and size now (and the dead and "
                                                  "failing lists of expired webhooks)"), cmd_trim)
    trim.add_argument("--exact", action="store_true", help="trim to the entry (slower than the default ~)")

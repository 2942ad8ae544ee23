"""The `bridge` command: dev, serve, worker, recorder; the operator's tools are in bridge/cli_operator.py."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import structlog

from bridge import logs
from bridge.config import ConfigError, Settings, load_settings
from bridge.embedded import EmbeddedRedis
from bridge.processes import Supervised, available_cores, tune_gc_for_service, wait_for_port
from bridge.redis_link import LINK, OUTAGE_WAIT_S
from bridge.store import RECORDER_QUEUE, WORKER_QUEUE

EMBEDDED_REDIS_PORT = 6390
STOP_TIMEOUT_S = 25
log = structlog.get_logger("bridge.cli")


def _settings() -> Settings:
    try:
        return load_settings()
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def _ensure_redis(settings: Settings) -> tuple[Settings, EmbeddedRedis | None]:
    """With no REDIS_URL, share one embedded server per data dir: start it unless one already listens."""
    if settings.redis_url:
        return settings, None
    port = int(os.environ.get("BRIDGE_EMBEDDED_REDIS_PORT", EMBEDDED_REDIS_PORT))
    embedded = None
    if not wait_for_port(port, 0.2):
        embedded = EmbeddedRedis(settings.data_dir / "redis", port=port).start()
    url = f"redis://127.0.0.1:{port}/0"
    os.environ["REDIS_URL"] = url
    return _settings(), embedded


def web_app() -> object:
    """uvicorn factory (import string, so WEB_CONCURRENCY processes each build their own app)."""
    from bridge.app import create_app
    logs.configure()
    app = create_app(_settings())
    tune_gc_for_service()         # here, not in create_app: the in-process apps of the tests leave GC alone
    return app


def _exit_cleanly(signum: int, _frame: object) -> None:
    raise SystemExit(0)


def cmd_serve(args: argparse.Namespace) -> None:
    import uvicorn
    # uvicorn stops gracefully on SIGTERM/SIGINT, then raises the signal again for the handler it found:
    # with the default one the process died by SIGTERM (exit 143) before `finally` could stop an embedded
    # Redis cleanly. This one exits 0 through `finally`, and also covers a signal before uvicorn starts.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _exit_cleanly)
    settings, embedded = _ensure_redis(_settings())
    port = settings.port or args.port
    try:
        uvicorn.run("bridge.cli:web_app", factory=True, host=args.host, port=port,
                    workers=int(os.environ.get("WEB_CONCURRENCY", 1)), log_level="warning",
                    timeout_graceful_shutdown=STOP_TIMEOUT_S - 5, access_log=False)
    finally:
        if embedded:
            embedded.stop()


def _run_worker(queue: str, every_line: dict[str, Any] | None = None) -> None:
    import uvloop

    from workers.settings import worker_settings
    from workers.worker import LeanWorker, ResilientWorker
    logs.configure(every_line=every_line)
    # uvloop's C transports make each socket write (a Redis command, a webhook POST) far cheaper.
    asyncio.set_event_loop(uvloop.new_event_loop())
    if queue == RECORDER_QUEUE:
        from bridge.recorder import check_ffmpeg_at_startup
        check_ffmpeg_at_startup(_settings())    # exits 2: binary path, its version, the supported range
    settings, embedded = _ensure_redis(_settings())
    try:
        worker = (LeanWorker if queue == WORKER_QUEUE else ResilientWorker)(**worker_settings(settings, queue))
        # Started before Redis (a fresh deploy) or during an outage: wait for it as for any outage.
        # arq's SIGTERM/SIGINT handler stops the worker by cancelling `main_task`, which run() creates:
        # until then this wait stands in for it, and a signal handled before run() ends the process
        # (nothing has started yet), where it used to be lost and leave a worker that never took a
        # job nor exited.
        worker.main_task = worker.loop.create_task(LINK.wait_until_back(worker.pool, OUTAGE_WAIT_S))
        try:
            worker.loop.run_until_complete(worker.main_task)
        except asyncio.CancelledError:
            return
        if not worker.allow_pick_jobs:
            return
        if queue == RECORDER_QUEUE:
            _stop_recordings_on_signal(worker)
        worker.run()
    finally:
        if embedded:
            embedded.stop()


def _stop_recordings_on_signal(worker: Any) -> None:
    """SIGTERM/SIGINT: stop every FFmpeg at once (each job finalizes and hands back), then arq drains."""
    from bridge.recorder import shutdown_recordings

    def handle(signum: int) -> None:
        worker.loop.create_task(shutdown_recordings())
        worker.handle_sig_wait_for_completion(signum)

    for signum in (signal.SIGTERM, signal.SIGINT):
        worker.loop.add_signal_handler(signum, handle, signum)


def cmd_worker(args: argparse.Namespace) -> None:
    """WORKER_CONCURRENCY worker processes (default: one per core); one runs in this process itself."""
    if args.pool_child:
        _run_worker(WORKER_QUEUE, every_line={"pid": os.getpid()})     # tells the pool's lines apart
        return
    settings = _settings()
    count = settings.worker_concurrency or available_cores()
    if count == 1:
        _run_worker(WORKER_QUEUE)
        return
    from bridge.worker_pool import run_pool
    logs.configure()
    settings, embedded = _ensure_redis(settings)       # the children join it rather than each starting one
    try:
        code = run_pool(count, [sys.executable, "-m", "bridge.cli", "worker", "--pool-child"], dict(os.environ),
                        STOP_TIMEOUT_S)
    finally:
        if embedded:
            embedded.stop()
    raise SystemExit(code)


def cmd_recorder(args: argparse.Namespace) -> None:
    _run_worker(RECORDER_QUEUE)


class DevChild(Supervised):
    """One child of `bridge dev`: each death and restart is one console line."""

    def died(self, code: int, restart_in_s: float) -> None:
        print(f"bridge dev: {self.name} exited with code {code}; restarting in {restart_in_s:.0f} s",
              file=sys.stderr, flush=True)

    def restarted(self) -> None:
        print(f"bridge dev: starting {self.name} again", file=sys.stderr, flush=True)


def cmd_dev(args: argparse.Namespace) -> None:
    """Embedded Redis + web + worker + recorder, each its own child process, restarted if one dies,
    stopped together on Ctrl-C."""
    settings, embedded = _ensure_redis(_settings())
    port = settings.port or args.port
    env = {**os.environ, "REDIS_URL": os.environ["REDIS_URL"], "PORT": str(port)}
    if not env.get("WORKER_CONCURRENCY"):   # one worker process unless asked: a laptop's cores aren't dev's to take
        env["WORKER_CONCURRENCY"] = "1"
    exe = [sys.executable, "-m", "bridge.cli"]
    children = [DevChild("web", [*exe, "serve", "--host", args.host], env),
                DevChild("worker", [*exe, "worker"], env),
                DevChild("recorder", [*exe, "recorder"], env)]
    for child in children:
        child.start()
    stopping = False

    def stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    if wait_for_port(port, 20):
        source = next(iter(settings.sources))
        print(_banner(settings, port, source), file=sys.stderr, flush=True)
    while not stopping:
        if embedded is not None and embedded.process is not None and embedded.process.poll() is not None:
            print(f"bridge dev: Redis exited with code {embedded.process.returncode}; starting it again",
                  file=sys.stderr, flush=True)
            embedded.start()
        for child in children:
            child.check()
        time.sleep(0.2)
    for child in children:
        child.terminate()
    deadline = time.monotonic() + STOP_TIMEOUT_S
    for child in children:
        child.wait(deadline)
    if embedded:
        embedded.stop()


def cmd_operator(args: argparse.Namespace) -> None:
    """replay, export, events show, deliveries, endpoints, trim: see bridge/cli_operator.py."""
    from bridge import cli_operator
    settings, embedded = _ensure_redis(_settings())
    try:
        code = cli_operator.run(args, settings)
    finally:
        if embedded:
            embedded.stop()
    raise SystemExit(code)


def _banner(settings: Settings, port: int, source: str) -> str:
    example = ('{"id": "evt_demo_1", "type": "user.joined", '
               '"lesson": {"id": "demo-lesson", "title": "Demo"}, '
               '"user": {"id": "42", "name": "Ada", "role": "teacher"}}')
    return (
        f"\nLesson Bridge is running on http://127.0.0.1:{port}  (Redis: {settings.redis_url or 'embedded'},"
        f" data in {Path(settings.data_dir).absolute()})\n"
        f"Sources: {', '.join(settings.sources)}; providers: {', '.join(settings.providers)}\n\n"
        f"Try it:\n  curl -s -X POST 'http://127.0.0.1:{port}/v1/events/{source}?wait=5' \\\n"
        f"       -H 'content-type: application/json' \\\n       -d '{example}'\n\n"
        f"Stop with Ctrl-C.\n"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bridge", description="Lesson Bridge")
    commands = parser.add_subparsers(dest="command", required=True)
    dev = commands.add_parser("dev", help="run everything in one process group on embedded defaults")
    dev.add_argument("--host", default="127.0.0.1")
    dev.add_argument("--port", type=int, default=8000)
    dev.set_defaults(run=cmd_dev)
    serve = commands.add_parser("serve", help="the web process (honours PORT and WEB_CONCURRENCY)")
    serve.add_argument("--host", default="0.0.0.0")
    serve.add_argument("--port", type=int, default=8000)
    serve.set_defaults(run=cmd_serve)
    worker = commands.add_parser("worker", help="the worker processes (short jobs; honours WORKER_CONCURRENCY)")
    worker.add_argument("--pool-child", action="store_true", help=argparse.SUPPRESS)
    worker.set_defaults(run=cmd_worker)
    commands.add_parser("recorder", help="the recorder process (FFmpeg)").set_defaults(run=cmd_recorder)
    from bridge.cli_operator import add_commands
    add_commands(commands, cmd_operator)      # replay, export, events, deliveries, endpoints, trim
    args = parser.parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    main()

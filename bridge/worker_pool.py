"""`bridge worker` as WORKER_CONCURRENCY processes: a parent that keeps that many full workers running.

Each child is the single-process worker (`bridge worker --pool-child`): its own arq Worker, event loop
and Redis pool of `[bridge] worker_redis_connections`. The parent runs no job and holds no Redis
connection. It restarts a child that dies (back-off 1, 2, 4 … 30 s), gives up when one keeps dying
while it starts (a configuration the parent read fine but the child cannot use), forwards SIGTERM and
SIGINT, and exits 0 once every child has drained and exited cleanly. Children get SIGKILL from the
kernel if the parent dies (bridge.processes.die_with_parent), so none outlives a SIGKILLed parent.
"""

from __future__ import annotations

import signal
import time

import structlog

from bridge.processes import Supervised

GIVE_UP_AFTER = 3            # failed starts in a row of one child, each within Supervised.STARTUP_S
CHECK_EVERY_S = 0.2
# A child signalled before arq took over SIGTERM (still importing, or waiting for Redis) dies by it: it
# had no job yet, so that is a clean stop too.
STOPPED_CLEANLY = (0, -signal.SIGTERM, -signal.SIGINT)
log = structlog.get_logger("bridge.worker_pool")


class WorkerProcess(Supervised):
    def died(self, code: int, restart_in_s: float) -> None:
        assert self.process is not None
        log.warning("worker.process_exited", process=self.name, pid=self.process.pid, code=code,
                    restart_in_s=restart_in_s, failed_starts=self.failed_starts)

    def restarted(self) -> None:
        assert self.process is not None
        log.info("worker.process_started", process=self.name, pid=self.process.pid)


def run_pool(count: int, argv: list[str], env: dict[str, str], stop_timeout_s: float) -> int:
    """Run `count` children until SIGTERM/SIGINT: 0 if they all stop cleanly within `stop_timeout_s`,
    1 if one did not, or if a child kept failing to start."""
    received: list[int] = []

    def stop(signum: int, _frame: object) -> None:
        received.append(signum)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, stop)
    children = [WorkerProcess(str(number), argv, env) for number in range(1, count + 1)]
    for child in children:
        child.start()
    log.info("worker.pool_started", processes=count,
             pids=[child.process.pid for child in children if child.process is not None])
    failing = None
    while not received and failing is None:
        for child in children:
            child.check()
            if child.failed_starts >= GIVE_UP_AFTER:
                failing = child
                break
        else:
            time.sleep(CHECK_EVERY_S)
    if failing is None:
        return _stop(children, received[0], stop_timeout_s)
    assert failing.process is not None
    code = failing.process.returncode
    log.error("worker.pool_giving_up", process=failing.name, code=code,
              reason=f"worker process {failing.name} exited within {failing.STARTUP_S} s of starting "
                     f"{GIVE_UP_AFTER} times in a row (last exit code {code}; its own lines above say why): "
                     "stopping the others and exiting 1")
    _stop(children, signal.SIGTERM, stop_timeout_s)
    return 1


def _stop(children: list[WorkerProcess], signum: int, timeout_s: float) -> int:
    """Forward `signum` to every running child and wait for each to drain (SIGKILL at the deadline)."""
    running = [child for child in children if child.running]
    for child in children:
        child.terminate(signum)
    deadline = time.monotonic() + timeout_s
    codes = {child.name: child.wait(deadline) for child in running}
    clean = all(code in STOPPED_CLEANLY for code in codes.values())
    log.info("worker.pool_stopped", signal=signal.Signals(signum).name, codes=codes, clean=clean)
    return 0 if clean else 1

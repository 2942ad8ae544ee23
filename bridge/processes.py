"""Child processes that never outlive their parent, restarted when they die, and bounded waits for them."""

from __future__ import annotations

import ctypes
import gc
import math
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """preexec_fn: the kernel sends SIGKILL to the child when its parent dies, even by SIGKILL."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except OSError:  # not Linux: the supervisor's own cleanup is all there is
        pass


class Supervised:
    """One child process, restarted with back-off when it dies, as a platform restarts a dyno.

    `died` and `restarted` say so (a console line, a log line): subclasses choose how.
    """

    STEADY_S = 60           # a child that ran this long before dying starts again at the first back-off step
    # One that died sooner failed while starting (bad configuration, say). Generous: on a loaded 2-core
    # machine Python took 17 s to start and refuse a bad file, where it usually takes about one.
    STARTUP_S = 30

    def __init__(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        self.name, self.argv, self.env = name, argv, env
        self.process: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self.restart_at: float | None = None
        self.deaths = 0             # in a row, each before STEADY_S: sets the back-off
        self.failed_starts = 0      # in a row, each before STARTUP_S: a supervisor may give up on these

    def start(self) -> None:
        self.process = subprocess.Popen(self.argv, env=self.env, preexec_fn=die_with_parent)
        self.started_at, self.restart_at = time.monotonic(), None

    def check(self) -> None:
        """Notice a death and restart when its back-off has passed."""
        now = time.monotonic()
        if self.restart_at is not None:
            if now >= self.restart_at:
                self.start()
                self.restarted()
            return
        assert self.process is not None
        code = self.process.poll()
        if code is None:
            return
        ran_s = now - self.started_at
        self.deaths = 1 if ran_s > self.STEADY_S else self.deaths + 1
        self.failed_starts = self.failed_starts + 1 if ran_s < self.STARTUP_S else 0
        delay = min(30.0, 2.0 ** (self.deaths - 1))
        self.restart_at = now + delay
        self.died(code, delay)

    def died(self, code: int, restart_in_s: float) -> None:
        raise NotImplementedError

    def restarted(self) -> None:
        raise NotImplementedError

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def terminate(self, signum: int = signal.SIGTERM) -> None:
        self.restart_at = None          # stopping: a child waiting out its back-off stays stopped
        if self.running:
            assert self.process is not None
            self.process.send_signal(signum)

    def wait(self, deadline: float) -> int | None:
        """The exit code, after SIGKILL if it is still running at `deadline`; None if never started."""
        if self.process is None:
            return None
        try:
            return self.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.process.kill()
        try:
            return self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:     # stuck in the kernel: it dies when that returns
            return -signal.SIGKILL


def cpu_quota(cgroup: Path = Path("/sys/fs/cgroup")) -> int | None:
    """CPUs a container's CPU quota allows (rounded up), or None without a quota: cgroup v2, then v1."""
    try:
        quota, period = (cgroup / "cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        try:
            quota = (cgroup / "cpu" / "cpu.cfs_quota_us").read_text().strip()
            period = (cgroup / "cpu" / "cpu.cfs_period_us").read_text().strip()
        except OSError:
            return None
    if quota in ("max", "-1") or not quota.isdecimal() or not period.isdecimal() or int(period) == 0:
        return None
    return max(1, math.ceil(int(quota) / int(period)))


def available_cores() -> int:
    """The CPUs this process may run on: its affinity (what `nproc` says), capped by a container's quota."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:      # not Linux
        cores = os.cpu_count() or 1
    quota = cpu_quota()
    return min(cores, quota) if quota else cores


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return True
        except OSError:
            time.sleep(0.02)
    return False


def tune_gc_for_service() -> None:
    """Call once start-up is done, in web and worker processes.

    Freezing moves everything loaded so far (modules, config, clients) out of the collector's view, so
    a full collection no longer walks a few hundred thousand long-lived objects (a 10-30 ms pause that
    set the accept path's p99); the higher first threshold collects request garbage, which reference
    counting frees anyway unless it forms cycles, a few times less often.
    """
    gc.freeze()
    gc.set_threshold(20_000, 50, 100)

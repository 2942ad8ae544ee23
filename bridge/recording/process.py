"""Starting FFmpeg so that it cannot outlive its supervisor, and stopping it in bounded steps.

Orphan prevention (an FFmpeg child outlives a killed worker unless arranged otherwise):

1. Linux: the child asks the kernel for ``PR_SET_PDEATHSIG = SIGKILL`` before exec (``preexec_fn``),
   so when the supervising process dies — even by SIGKILL, which runs no Python clean-up — the kernel
   kills FFmpeg at once. The race where the parent dies between fork and prctl is closed by comparing
   ``getppid()`` with the pid captured before the fork. Caveat: the signal fires when the *thread* that
   forked exits; asyncio forks from the event-loop thread, so run the loop in a thread that lives as
   long as the recorder (the main thread, as arq does).
2. Everywhere: FFmpeg runs in its own session/process group, so a Ctrl-C on the terminal or a signal to
   the worker's group does not reach it behind the supervisor's back; the supervisor decides how to stop.
3. Everywhere: the FFmpeg pid is written to ``.ffmpeg.pid`` in the recording's directory; the next
   supervisor of that recording kills a survivor that /proc shows is still writing there (covers
   platforms without PDEATHSIG). A part written by a killed FFmpeg stays readable (MPEG-TS/MKV).

Stopping: ``q`` on stdin (FFmpeg finishes the file), then SIGINT, then a second SIGINT (a read blocked
on a stalled input ignores the first), then SIGKILL — each step waited for a bounded time.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bridge.schema.config import StopGraces

PR_SET_PDEATHSIG = 1


def _load_prctl() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    return prctl


_PRCTL = _load_prctl()          # resolved once, before any fork
PDEATHSIG_AVAILABLE = _PRCTL is not None


def _pdeathsig_preexec() -> Callable[[], None] | None:
    """A ``preexec_fn`` for the next child of this process (it captures the parent's pid now)."""
    prctl = _PRCTL
    if prctl is None:
        return None
    parent_pid = os.getpid()

    def setup() -> None:                 # runs in the child between fork and exec
        prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() != parent_pid:   # the parent died before prctl: nobody would signal us
            os._exit(1)

    return setup


def child_kwargs() -> dict[str, Any]:
    """Popen/create_subprocess_exec keyword arguments for every FFmpeg this package starts
    (recorders and helpers alike): own session, and death with the parent on Linux."""
    kwargs: dict[str, Any] = {"start_new_session": True}
    preexec = _pdeathsig_preexec()
    if preexec is not None:
        kwargs["preexec_fn"] = preexec
    return kwargs


async def spawn_ffmpeg(cmd: Sequence[str]) -> asyncio.subprocess.Process:
    """Start FFmpeg with stdin (for ``q``), stdout (progress) and stderr piped."""
    return await asyncio.create_subprocess_exec(
        *cmd, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, **child_kwargs())


async def stop_process(proc: asyncio.subprocess.Process, graces: StopGraces, *,
                       input_stalled: bool = False) -> str | None:
    """Stop FFmpeg: q → SIGINT → SIGINT → SIGKILL, each bounded. Returns the step that ended it
    (``None`` if it had already exited, ``"unkillable"`` if even SIGKILL was not reaped in time)."""
    if proc.returncode is not None:
        return None
    steps = [("q", graces.q_stalled if input_stalled else graces.q),
             ("SIGINT", graces.sigint_stalled if input_stalled else graces.sigint),
             ("SIGINT2", graces.sigint2), ("SIGKILL", graces.sigkill)]
    for step, grace in steps:
        if proc.returncode is not None:
            return step
        try:
            if step == "q":
                if proc.stdin is not None and not proc.stdin.is_closing():
                    proc.stdin.write(b"q")
                    await asyncio.wait_for(proc.stdin.drain(), 0.5)
            elif step == "SIGKILL":
                proc.kill()
            else:
                proc.send_signal(signal.SIGINT)
        except (ProcessLookupError, BrokenPipeError, ConnectionResetError, TimeoutError):
            pass
        try:
            await asyncio.wait_for(proc.wait(), grace)
            return step
        except TimeoutError:
            continue
    return "unkillable"


def kill_now(proc: asyncio.subprocess.Process) -> None:
    """Last resort from synchronous clean-up paths (cancellation): SIGKILL without waiting."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()


def is_listening(port: int, *, udp: bool = False) -> bool | None:
    """Whether some socket listens on ``port`` (from /proc/net; ``None`` when /proc is unavailable).
    Used instead of a test connection, which a single-client FFmpeg listener would take as its client."""
    names = ("udp", "udp6") if udp else ("tcp", "tcp6")
    want_state = "07" if udp else "0A"
    seen_any = False
    for name in names:
        try:
            lines = Path(f"/proc/net/{name}").read_text().splitlines()[1:]
        except OSError:
            continue
        seen_any = True
        for line in lines:
            cols = line.split()
            if len(cols) > 3 and cols[3] == want_state and int(cols[1].rsplit(":", 1)[1], 16) == port:
                return True
    return False if seen_any else None

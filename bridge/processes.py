"""Child processes that never outlive their parent, and bounded waits for them."""

from __future__ import annotations

import ctypes
import gc
import signal
import socket
import time

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """preexec_fn: the kernel sends SIGKILL to the child when its parent dies, even by SIGKILL."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except OSError:  # not Linux: the supervisor's own cleanup is all there is
        pass


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

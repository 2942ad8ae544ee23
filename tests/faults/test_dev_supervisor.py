"""`bridge dev` restarts a child that dies, says so on the console, and still stops on Ctrl-C in time."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from bridge.cli import STOP_TIMEOUT_S
from bridge.processes import free_port, wait_for_port
from tests.conftest import ROOT, children

pytestmark = pytest.mark.faults


def child_running(pid: int, role: str) -> int | None:
    for child, cmdline in children(pid).items():
        if cmdline.rstrip().endswith(f"bridge.cli {role}") or f"bridge.cli {role} " in cmdline:
            return child
    return None


def wait_for(condition, timeout_s: float):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout_s} s")


def test_dev_restarts_a_dead_child_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    port, redis_port = free_port(), free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PORT": str(port), "BRIDGE_EMBEDDED_REDIS_PORT": str(redis_port)}
    env.pop("REDIS_URL", None)
    env.pop("BRIDGE_CONFIG", None)
    console = tmp_path / "console.log"
    with open(console, "wb") as out:
        dev = subprocess.Popen([sys.executable, "-m", "bridge.cli", "dev"], env=env, cwd=tmp_path,
                               stdout=out, stderr=subprocess.STDOUT)
    try:
        assert wait_for_port(port, 30)
        worker = wait_for(lambda: child_running(dev.pid, "worker"), 20)
        web = wait_for(lambda: child_running(dev.pid, "serve"), 20)
        os.kill(worker, signal.SIGKILL)
        restarted = wait_for(lambda: (child_running(dev.pid, "worker") or 0) not in (0, worker)
                             and child_running(dev.pid, "worker"), 20)
        assert restarted != worker
        os.kill(web, signal.SIGKILL)
        wait_for(lambda: (child_running(dev.pid, "serve") or 0) not in (0, web), 20)
        assert wait_for_port(port, 30)
        answer = httpx.post(f"http://127.0.0.1:{port}/v1/events/default?wait=5", timeout=15, json={
            "id": "after-restarts", "type": "user.joined", "lesson": {"id": "demo"},
            "user": {"id": "42", "name": "Ada", "role": "teacher"}})
        assert answer.status_code == 200, answer.text                   # the restarted worker answered
        assert answer.json()["webhooks"][0]["type"] == "join.ready"
        assert dev.poll() is None

        started = time.monotonic()
        dev.send_signal(signal.SIGINT)
        assert dev.wait(timeout=STOP_TIMEOUT_S + 5) == 0
        assert time.monotonic() - started < STOP_TIMEOUT_S
        assert not children(dev.pid)
    finally:
        if dev.poll() is None:
            dev.kill()
            dev.wait(timeout=10)
    text = console.read_text(errors="replace")
    assert "bridge dev: worker exited with code -9; restarting in 1 s" in text
    assert "bridge dev: web exited with code -9; restarting in 1 s" in text
    assert text.count("bridge dev: starting worker again") == 1

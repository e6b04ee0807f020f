"""A real Redis server for a test, started from the system's ``redis-server``.

Why: the Celery executor's broker and results backend are tested against a real Redis
(its queues, acknowledgements and pub/sub control messages), not a mock. The server
listens on a free port of 127.0.0.1 only, keeps nothing on disk, and runs in a temporary
folder; it is stopped when the ``with`` block ends. Where the binary is missing, the
tests that need it are skipped with a reason (``find_redis_server``); CI installs Debian's
``redis-server`` package (``.ci/run``).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

HOST = "127.0.0.1"
_START_TIMEOUT_S = 30
_STOP_TIMEOUT_S = 10


def find_redis_server() -> str | None:
    return shutil.which("redis-server") or next((p for p in ("/usr/bin/redis-server",) if Path(p).is_file()), None)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=1.0) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """``with RedisServer(folder) as server:`` a running server at ``server.url``."""

    def __init__(self, folder: Path) -> None:
        binary = find_redis_server()
        if binary is None:
            raise FileNotFoundError("redis-server not found: install the redis-server package")
        self.binary, self.folder = binary, Path(folder)
        self.port = 0
        self._process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def __enter__(self) -> "RedisServer":
        self.port = _free_port()
        log = self.folder / "redis.log"
        command = [self.binary, "--port", str(self.port), "--bind", HOST, "--dir", str(self.folder), "--save", "",
                   "--appendonly", "no", "--daemonize", "no", "--logfile", str(log)]  # fmt: skip
        self._process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + _START_TIMEOUT_S
        while not _answers_ping(self.port):
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.__exit__()
                said = log.read_text()[-2000:] if log.exists() else "(no log)"
                raise RuntimeError(f"redis-server did not start on {HOST}:{self.port}: {said}")
            time.sleep(0.1)
        return self

    def __exit__(self, *exc) -> None:
        if self._process is None:
            return
        self._process.terminate()
        try:
            self._process.wait(_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._process = None

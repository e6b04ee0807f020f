"""A real S3-compatible server for tests: ``moto_server`` (PyPI ``moto[server]``) on a free
port on 127.0.0.1, started in a temporary folder and stopped at the end.

Why: outputs on an object store have to be tested against a server that speaks S3 over
HTTP (uploads, listings, ETags, a missing bucket), not a mock of fsspec. Where the
binary is missing, the tests that need it are skipped with a reason (``find_moto_server``).

The AWS variables that botocore (and so s3fs) reads point every client of this process,
and of the processes it starts, at the server: ``environ``.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

HOST = "127.0.0.1"
_START_TIMEOUT = 30
_STOP_TIMEOUT = 10


def find_moto_server() -> Path | None:
    """``moto_server`` beside this Python (the project's virtual environment), else on PATH."""
    beside = Path(sys.executable).parent / "moto_server"
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    found = shutil.which("moto_server")
    return Path(found) if found else None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


class S3Server:
    """``moto_server`` on a free port of 127.0.0.1, its log in ``root``.

    >>> with S3Server(tmp_path) as server:
    ...     server.create_bucket("outputs")       # then write to s3://outputs/...
    """

    def __init__(self, root: Path, binary: Path | None = None):
        self.root = Path(root)
        self.binary = binary or find_moto_server()
        self.port: int | None = None
        self.process: subprocess.Popen | None = None
        self.log_file = self.root / "moto_server.log"

    @property
    def endpoint(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def environ(self) -> dict[str, str]:
        """What points botocore at this server (moto accepts any credentials)."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def start(self) -> S3Server:
        if self.binary is None:
            raise RuntimeError("moto_server not found: install moto[server]")
        self.root.mkdir(parents=True, exist_ok=True)
        atexit.register(self.stop)
        for attempt in range(3):
            self.port = _free_port()
            with open(self.log_file, "ab") as log:
                self.process = subprocess.Popen(
                    [str(self.binary), "-H", HOST, "-p", str(self.port)], cwd=self.root, stdout=log,
                    stderr=subprocess.STDOUT, start_new_session=True,
                )  # fmt: skip
            if self._wait_ready():
                return self
            self._end()  # another process took the port between choosing and binding it: try another
        raise RuntimeError(f"moto_server did not start; log {self.log_file}:\n{self._log_tail()}")

    def stop(self) -> None:
        atexit.unregister(self.stop)
        self._end()

    def create_bucket(self, name: str) -> str:
        """Create a bucket; its URL."""
        request = urllib.request.Request(f"{self.endpoint}/{name}", method="PUT")
        with urllib.request.urlopen(request, timeout=10):
            pass
        return f"s3://{name}"

    def __enter__(self) -> S3Server:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            try:
                with urllib.request.urlopen(f"{self.endpoint}/", timeout=2):
                    return True
            except urllib.error.HTTPError:
                return True  # it answers
            except OSError:
                time.sleep(0.1)
        return False

    def _end(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def _log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_file.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    def __repr__(self) -> str:
        return f"S3Server({self.endpoint if self.process else 'stopped'})"

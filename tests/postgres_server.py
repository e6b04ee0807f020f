"""A real PostgreSQL server for the test session, started from the system's packages.

Why: the catalog's PostgreSQL backend has to be tested against a real server (its SQL,
types, transactions and concurrent writers behave differently from a DuckDB file's),
not a mock. This helper starts a throw-away cluster in a temporary folder: `initdb` with a
superuser role ``catalog`` and trust authentication, then `postgres` listening on a free
port on 127.0.0.1 only (and a unix socket in a private folder), with fsync off.

The binaries (`initdb`, `pg_ctl`, `postgres`, `psql`, `createdb`) come from the
system's packages; where they are missing, the tests that need a server are skipped
with a reason (see `find_postgres_bin`). CI installs them (Debian's ``postgresql``
package, see ``.ci/run``), so there the tests run.

`initdb` and `postgres` refuse to run as root. When this process is root, the server
runs as the ``postgres`` system user if there is one, else as ``nobody`` (via
``runuser`` or ``setpriv``); its folders are chowned to that user, and placed under
/tmp when that user cannot reach the folder given.

Only the standard library is used, so the helper works before anything else is
installed.
"""

from __future__ import annotations

import atexit
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

SUPERUSER = "catalog"
HOST = "127.0.0.1"
REQUIRED_BINARIES = ("initdb", "pg_ctl", "postgres", "psql", "createdb")

# A unix socket path (folder + "/.s.PGSQL.NNNNN") must fit in sockaddr_un.sun_path (108 bytes).
_SOCKET_PATH_LIMIT = 107
_SOCKET_FILE_LEN = len("/.s.PGSQL.65535")

_STOP_TIMEOUT = 20  # seconds for each stop attempt
_START_TIMEOUT = 60


def _complete(folder: Path) -> bool:
    return all((folder / name).is_file() and os.access(folder / name, os.X_OK) for name in REQUIRED_BINARIES)


def _version_key(folder: Path) -> tuple:
    # /usr/lib/postgresql/<version>/bin: newest version first ("9.6" < "15").
    return tuple(int(part) if part.isdigit() else -1 for part in folder.parent.name.split("."))


def find_postgres_bin() -> Path | None:
    """The folder holding `initdb`, `pg_ctl`, `postgres`, `psql` and `createdb`, or None.

    First the folder of `pg_ctl` on PATH (symlinks resolved: Debian's wrappers and
    links such as /usr/local/bin/pg_ctl -> /usr/lib/postgresql/15/bin/pg_ctl point into
    the real folder), then the newest /usr/lib/postgresql/*/bin (where Debian puts
    them, off PATH)."""
    candidates: list[Path] = []
    on_path = shutil.which("pg_ctl")
    if on_path:
        candidates += [Path(on_path).resolve().parent, Path(on_path).parent]
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=_version_key, reverse=True)
    for folder in candidates:
        if _complete(folder):
            return folder
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def _clean_env() -> dict[str, str]:
    """The environment without PG* variables, which would redirect the client tools."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PG")}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (killed, not yet reaped) counts as gone.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


class PostgresServer:
    """A throw-away PostgreSQL cluster under `root`, on a free port on 127.0.0.1.

    >>> with PostgresServer(tmp_path) as server:
    ...     url = server.create_database("catalog_test")   # postgresql://catalog@127.0.0.1:PORT/catalog_test
    """

    def __init__(self, root: Path, bin_dir: Path | None = None):
        self.root = Path(root)
        self.bin_dir = Path(bin_dir) if bin_dir is not None else find_postgres_bin()
        self.port: int | None = None
        self.user = SUPERUSER
        self.data_dir: Path | None = None
        self.socket_dir: Path | None = None
        self.log_file: Path | None = None
        self.pid: int | None = None
        self._temp_dirs: list[Path] = []
        self._run_as: pwd.struct_passwd | None = None
        self._runner: list[str] = []
        self._started = False
        self._cwd = self.root

    # -- public -------------------------------------------------------------------------

    def url(self, dbname: str) -> str:
        if self.port is None:
            raise RuntimeError("the PostgreSQL server is not started")
        return f"postgresql://{self.user}@{HOST}:{self.port}/{dbname}"

    def start(self) -> PostgresServer:
        if self._started:
            return self
        if self.bin_dir is None or not _complete(self.bin_dir):
            raise RuntimeError(
                f"PostgreSQL server binaries ({', '.join(REQUIRED_BINARIES)}) not found "
                "(install Debian's 'postgresql' package)"
            )
        self._prepare_user()
        atexit.register(self.stop)
        self._started = True
        try:
            self._prepare_dirs()
            self._initdb()
            for attempt in range(3):
                self.port = _free_port()
                if self._pg_ctl_start():
                    break
                # Another process took the port between choosing and binding it: try another.
                if attempt == 2 or not re.search(r"could not (bind|create listen)|already in use", self._log_tail()):
                    raise RuntimeError(
                        f"PostgreSQL server did not start (port {self.port}); log {self.log_file}:\n{self._log_tail()}"
                    )
            self.pid = self._read_pid()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop the server (fast, then immediate, then SIGKILL) and remove its temporary folders.

        Idempotent; data under `root` is left for the caller's temporary folder to clean."""
        if not self._started:
            return
        self._started = False
        atexit.unregister(self.stop)
        pid = self.pid or self._read_pid()
        if pid is not None and _pid_alive(pid):
            for mode, wait in (("fast", _STOP_TIMEOUT), ("immediate", _STOP_TIMEOUT // 2)):
                result = self._run_server_cmd(
                    [str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-m", mode, "-w", "-t", str(wait), "stop"],
                    timeout=wait + 10,
                )
                if result is not None and result.returncode == 0 and self._wait_gone(pid, 5):
                    break
            else:
                if _pid_alive(pid):
                    self._kill(pid)
        self.pid = None
        for folder in self._temp_dirs:
            shutil.rmtree(folder, ignore_errors=True)
        self._temp_dirs.clear()

    def create_database(self, name: str) -> str:
        """Create database `name` (owned by the superuser) and return its URL."""
        self._client(["createdb", *self._conn_args(), name])
        return self.url(name)

    def drop_database(self, name: str) -> None:
        """Drop database `name` if it exists, closing any connections left to it."""
        args = ["dropdb", *self._conn_args(), "--if-exists"]
        if self._major_version() >= 13:
            args.append("--force")
        self._client([*args, name])

    def __enter__(self):  # -> PostgresServer (typing.Self needs Python 3.11)
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- setup --------------------------------------------------------------------------

    def _prepare_user(self) -> None:
        if os.geteuid() != 0:
            self._run_as, self._runner = None, []
            return
        for name in ("postgres", "nobody"):
            try:
                self._run_as = pwd.getpwnam(name)
                break
            except KeyError:
                continue
        else:
            raise RuntimeError("running as root, and there is no 'postgres' or 'nobody' user to run PostgreSQL as")
        user = self._run_as
        if shutil.which("runuser"):
            self._runner = [shutil.which("runuser"), "-u", user.pw_name, "--"]
        elif shutil.which("setpriv"):
            self._runner = [
                shutil.which("setpriv"),
                f"--reuid={user.pw_uid}",
                f"--regid={user.pw_gid}",
                "--init-groups",
                "--",
            ]
        else:
            raise RuntimeError("running as root, and neither 'runuser' nor 'setpriv' is there to switch user")

    def _reachable_by_server_user(self, folder: Path) -> bool:
        if self._run_as is None:
            return True
        result = subprocess.run(
            [*self._runner, "test", "-x", str(folder), "-a", "-r", str(folder)],
            check=False,
            cwd="/",
            env=_clean_env(),
            capture_output=True,
        )
        return result.returncode == 0

    def _chown(self, folder: Path) -> None:
        if self._run_as is not None:
            os.chown(folder, self._run_as.pw_uid, self._run_as.pw_gid)

    def _prepare_dirs(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        # The server user must be able to reach its folders: under root if it can, else
        # (e.g. root's pytest folders are mode 700) in a fresh folder under /tmp.
        base = self.root
        if not self._reachable_by_server_user(self.root):
            base = Path(tempfile.mkdtemp(prefix="pgtest-", dir="/tmp" if os.path.isdir("/tmp") else None))
            self._temp_dirs.append(base)
            self._chown(base)
        base = base / "pg"
        base.mkdir(parents=True, exist_ok=True)
        self._chown(base)
        self.data_dir = base / "data"
        self.log_file = base / "server.log"
        socket_dir = base / "s"
        if len(str(socket_dir)) + _SOCKET_FILE_LEN > _SOCKET_PATH_LIMIT:
            socket_dir = Path(tempfile.mkdtemp(prefix="pgs-", dir="/tmp" if os.path.isdir("/tmp") else None))
            self._temp_dirs.append(socket_dir)
        else:
            socket_dir.mkdir(exist_ok=True)
        socket_dir.chmod(0o700)
        self._chown(socket_dir)
        self.socket_dir = socket_dir
        self._cwd = base

    def _initdb(self) -> None:
        if (self.data_dir / "PG_VERSION").exists():
            return
        result = self._run_server_cmd(
            [
                str(self.bin_dir / "initdb"),
                "-D",
                str(self.data_dir),
                "-U",
                SUPERUSER,
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ],
            timeout=120,
        )
        if result is None or result.returncode != 0:
            output = "" if result is None else (result.stdout + result.stderr)
            raise RuntimeError(f"initdb failed:\n{output[-4000:]}")

    def _pg_ctl_start(self) -> bool:
        options = " ".join(
            [
                "-p",
                str(self.port),
                "-k",
                shlex.quote(str(self.socket_dir)),
                "-h",
                HOST,
                "-c",
                "fsync=off",
                "-c",
                "max_connections=200",
            ]
        )
        result = self._run_server_cmd(
            [
                str(self.bin_dir / "pg_ctl"),
                "-D",
                str(self.data_dir),
                "-o",
                options,
                "-l",
                str(self.log_file),
                "-w",
                "-t",
                str(_START_TIMEOUT),
                "start",
            ],
            timeout=_START_TIMEOUT + 15,
        )
        if result is not None and result.returncode == 0:
            return True
        # pg_ctl gave up, but a postmaster may still be coming up: make sure it is gone.
        pid = self._read_pid()
        if pid is not None and _pid_alive(pid):
            self._kill(pid)
        return False

    # -- helpers ------------------------------------------------------------------------

    def _run_server_cmd(self, args: list[str], timeout: float) -> subprocess.CompletedProcess | None:
        """Run a server command (initdb, pg_ctl) as the server user; None if it timed out."""
        try:
            return subprocess.run(
                [*self._runner, *args],
                check=False,
                cwd=str(self._cwd),
                env=_clean_env(),
                capture_output=True,
                text=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            return None

    def _conn_args(self) -> list[str]:
        if self.port is None or not self._started:
            raise RuntimeError("the PostgreSQL server is not started")
        return ["-h", HOST, "-p", str(self.port), "-U", self.user]

    def _client(self, args: list[str]) -> None:
        binary = self.bin_dir / args[0]
        result = subprocess.run(
            [str(binary), *args[1:]], check=False, env=_clean_env(), capture_output=True, text=True, timeout=60
        )
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed: {(result.stderr or result.stdout).strip()}")

    def _major_version(self) -> int:
        try:
            return int((self.data_dir / "PG_VERSION").read_text().strip().split(".")[0])
        except (OSError, ValueError, AttributeError):
            return 0

    def _read_pid(self) -> int | None:
        if self.data_dir is None:
            return None
        try:
            return int((self.data_dir / "postmaster.pid").read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            return None

    def _log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_file.read_text(errors="replace")[-chars:]
        except (OSError, AttributeError):
            return "(no server log)"

    @staticmethod
    def _wait_gone(pid: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not _pid_alive(pid):
                return True
            time.sleep(0.05)
        return not _pid_alive(pid)

    def _kill(self, pid: int) -> None:
        """SIGKILL the postmaster and its backends (they would exit on their own, but not at once)."""
        children = _children(pid)
        for target in [pid, *children]:
            try:
                os.kill(target, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self._wait_gone(pid, 5)
        for child in children:
            self._wait_gone(child, 5)

    def __repr__(self) -> str:
        state = f"port {self.port}" if self._started else "stopped"
        return f"PostgresServer({str(self.root)!r}, {state})"

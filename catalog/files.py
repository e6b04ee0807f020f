"""The files the catalog hands out paths for: who is writing each, and cleaning up the
ones nothing uses without racing their writers.

A path is recorded in ``written_files`` before anything is written to it, as an intent:
state 'writing', the writer's host, pid (and the process's start, so a reused pid is not
taken for the writer) and optional Dagster run id, and a heartbeat. Registering the file
marks the row 'registered', in the transaction that writes the rows pointing at it;
replacing or deleting that output marks it 'orphaned'. The row is the lock between a
writer and ``cleanup``: cleanup deletes a row only with a WHERE that re-checks its state
(and that nothing references it), and unlinks files only once that DELETE committed; a
registration whose row is gone fails. On PostgreSQL the DELETE re-evaluates its WHERE
on a row another transaction just updated; on a DuckDB file writers take turns
(``Database.write``), so each sees the other's committed state.

Outputs may be in an object store (``output_dir`` a URL, see storage.py): the intent is
the object's URL, recorded before its local copy is written, so an upload killed midway
leaves nothing registered and cleanup deletes the object (if any) and the local copy and
temporaries in the scratch folder.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import socket
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence
from urllib.parse import urlsplit

from . import storage
from .connection import Database
from .errors import CatalogError

WRITING, REGISTERED, ORPHANED = "writing", "registered", "orphaned"
# a file is written under a temporary name beside it (decoding_assets/files.py
# atomic_write: ".<stem>.", 8 random characters, then ".tmp", or ".tmp.nc" where a
# library wants to see the format's extension), which is the longest name in a folder
_TEMPORARY = re.compile(r"\.(?P<stem>.+)\.[a-z0-9_]{8}\.tmp(\.[a-z0-9]{1,4})?")
_TEMPORARY_EXTRA = len(".") + len(".") + 8 + len(".tmp") + len(".nwb")
# a row nothing references: every table that points at files, checked in the statement
# that deletes it
_UNREFERENCED = (
    "NOT EXISTS (SELECT 1 FROM decoding_outputs o WHERE o.path = w.path OR o.model_path = w.path) "
    "AND NOT EXISTS (SELECT 1 FROM position_outputs p WHERE p.path = w.path) "
    "AND NOT EXISTS (SELECT 1 FROM waveform_features_files x WHERE x.path = w.path)"
)


@dataclass(frozen=True)
class CleanupReport:
    """What ``cleanup`` did (or, with ``dry_run``, would do): files ``deleted``, rows it
    ``spared`` and why, and ``errors`` (a file it could not delete, and why)."""

    dry_run: bool
    deleted: tuple[Path | str, ...] = ()
    spared: tuple[tuple[Path | str, str], ...] = ()
    errors: tuple[tuple[Path | str, str], ...] = ()


@dataclass(frozen=True)
class _Candidate:
    path: str
    state: str
    host: str | None
    pid: int | None
    process_start: str | None
    young: bool
    heartbeat_age_s: float | None


class FileStore:
    """Output files under ``output_dir`` (a folder, or a URL: storage.py): the paths
    handed out, their writers' intents, and cleanup. Only paths recorded in
    ``written_files`` are ever deleted, so other tools' files in the same folders are
    never touched."""

    def __init__(self, db: Database, user: str, output_dir: Path | str | None):
        self.db, self.user, self.output_dir = db, user, output_dir

    # ------------------------------------------------------------------ handing out paths

    def new_paths(
        self, kind: str, nwb_file_name: str, stem: str, suffixes: Sequence[str], names: dict[str, str],
        run_id: str | None = None,
    ) -> list[Path | str]:  # fmt: skip
        """``<output_dir>/<kind>/<nwb_file_name>/<stem>.<run><suffix>`` for each suffix (one
        run: one new name, so a registered file is never overwritten), recorded as being
        written by this process: Paths, or URLs (text) where ``output_dir`` is one.
        ``names``: the names ``stem`` is made of, by kind (``{"interval_list_name":
        ...}``), to name the one at fault when a file name would be too long; that is
        refused before anything is recorded or written."""
        if self.output_dir is None:
            raise CatalogError(
                f"This catalog ({self.db.location}) has no output folder: open it with output_dir= a folder every "
                "worker can reach (the --outputs option, or DECODING_ASSETS_OUTPUTS)."
            )
        folder = storage.join(self.output_dir, kind, nwb_file_name)
        run = uuid.uuid4().hex[:12]
        paths = [storage.join(folder, f"{stem}.{run}{suffix}") for suffix in suffixes]
        names = {"nwb_file_name": nwb_file_name, **names}
        # a URL's file is written locally first: its copy's name must fit there too
        _check_lengths([storage.local_form(p) for p in paths], names)
        if storage.is_url(folder):
            _check_keys(paths, names)
        else:
            folder.mkdir(parents=True, exist_ok=True)
        self._record(paths, kind, run_id)
        return paths

    def _record(self, paths: Sequence[Path | str], kind: str, run_id: str | None) -> None:
        host, pid, started = _this_process()
        self.db.write(lambda con: con.execute(
            "INSERT INTO written_files (path, kind, written_at, created_by, state, host, pid, process_start, run_id, "
            "heartbeat_at) VALUES "
            + ", ".join(["(?, ?, current_timestamp, ?, ?, ?, ?, ?, ?, current_timestamp)"] * len(paths)),
            [v for p in paths for v in (storage.key(p), kind, self.user, WRITING, host, pid, started, run_id)],
        ))  # fmt: skip

    # ------------------------------------------------------------------ writers

    @contextlib.contextmanager
    def writing(
        self, paths: Sequence[Path | str], run_id: str | None = None, every_s: float = 60.0
    ) -> Iterator[list[Path | str]]:
        """While the body writes ``paths`` (handed out by this catalog), their intents say
        this process writes them and a daemon thread renews their heartbeat every
        ``every_s`` seconds, so ``cleanup`` on another host never takes the writer for
        dead. A body that fails gives the paths up (orphaned: cleanup removes what it
        left). Register the files inside the body."""
        paths = [storage.resolve(p) for p in paths]
        self._claim(paths, run_id)
        stop = threading.Event()
        beat = threading.Thread(target=self._beat, args=(paths, stop, every_s), name="catalog-heartbeat", daemon=True)
        beat.start()
        try:
            yield paths
        except BaseException:
            self._give_up(paths)
            raise
        finally:
            stop.set()
            beat.join()

    def heartbeat(self, paths: Sequence[Path | str]) -> None:
        """Say that the writer of ``paths`` is alive; a CatalogError if an intent is gone."""
        paths = [storage.key(p) for p in paths]
        found = self.db.write(lambda con: con.execute(
            f"UPDATE written_files SET heartbeat_at = current_timestamp WHERE path IN ({_marks(paths)}) RETURNING path",
            paths,
        ).fetchall())  # fmt: skip
        _require(paths, found, "renew the heartbeat of")

    def _beat(self, paths: list[Path | str], stop: threading.Event, every_s: float) -> None:
        try:
            while not stop.wait(every_s):
                try:
                    self.heartbeat(paths)
                except CatalogError:
                    return  # the intents are gone: registering will say so
                except self.db.errors:
                    continue  # the database out of reach for a moment: the next beat may get through
        finally:
            self.db.close_thread()

    def _claim(self, paths: list[Path | str], run_id: str | None) -> None:
        host, pid, started = _this_process()
        keys = [str(p) for p in paths]
        found = self.db.write(lambda con: con.execute(
            "UPDATE written_files SET host = ?, pid = ?, process_start = ?, run_id = coalesce(?, run_id), "
            f"heartbeat_at = current_timestamp WHERE path IN ({_marks(keys)}) AND state = ? RETURNING path",
            [host, pid, started, run_id, *keys, WRITING],
        ).fetchall())  # fmt: skip
        _require(keys, found, "write")

    def _give_up(self, paths: list[Path | str]) -> None:
        host, pid, _ = _this_process()
        keys = [str(p) for p in paths]
        # the body's own error is what the caller must see; should this fail too, the
        # intents are reclaimed once this process has ended
        with contextlib.suppress(*self.db.errors):
            self.db.write(lambda con: con.execute(
                f"UPDATE written_files SET state = ? WHERE path IN ({_marks(keys)}) AND state = ? AND host = ? "
                "AND pid = ?",
                [ORPHANED, *keys, WRITING, host, pid],
            ))  # fmt: skip

    # ------------------------------------------------------------------ in registrations' transactions

    @staticmethod
    def mark_registered(con, paths: Sequence[Path | str], what: str) -> None:
        """Inside the transaction that writes the rows pointing at ``paths``: they are
        registered. Their intents must still be there (CatalogError otherwise)."""
        keys = [str(p) for p in paths]
        if not keys:
            return
        found = con.execute(
            f"UPDATE written_files SET state = ? WHERE path IN ({_marks(keys)}) RETURNING path", [REGISTERED, *keys]
        ).fetchall()
        _require(keys, found, f"register {what} from")

    @staticmethod
    def mark_orphaned(con, paths: Sequence[Path | str]) -> None:
        """Inside the transaction that stops pointing at ``paths``: cleanup may take them."""
        keys = [str(p) for p in paths]
        if keys:
            con.execute(f"UPDATE written_files SET state = ? WHERE path IN ({_marks(keys)})", [ORPHANED, *keys])

    # ------------------------------------------------------------------ cleanup

    def cleanup(self, dry_run: bool = True, min_age_s: float = 3600.0, stale_after_s: float = 600.0) -> CleanupReport:
        """Delete the files this catalog handed out that nothing uses: orphans (replaced
        or deleted outputs) and files whose writer is dead (on this host: its process is
        gone; on another: no heartbeat for ``stale_after_s``), with the temporaries their
        writes left. A file an output references, a live writer's file and anything
        younger than ``min_age_s`` are spared. One file that cannot be deleted is
        reported in ``errors`` and the others go on."""
        reclaim, spared = [], []
        for c in self._candidates(min_age_s):
            reason = _spare_reason(c, stale_after_s)
            if reason is None:
                reclaim.append(c)
            else:
                spared.append((storage.as_location(c.path), reason))
        temporaries = _Temporaries()
        if dry_run:
            located = [storage.as_location(c.path) for c in reclaim]
            files = [f for path in located for f in (path, *temporaries.of(path))]
            deleted, errors = _existing(files)
            return CleanupReport(True, deleted, tuple(spared), errors)
        deleted, errors, failed = _delete(self._forget(reclaim, min_age_s, stale_after_s), temporaries)
        self._requeue(failed)
        return CleanupReport(False, deleted, tuple(spared), errors)

    def _candidates(self, min_age_s: float) -> list[_Candidate]:
        """Rows nothing references and that are not registered, with what decides whether
        they may go."""
        rows = self.db.rows(
            "SELECT w.path, coalesce(w.state, ?), w.host, w.pid, w.process_start, "
            "w.written_at > current_timestamp - to_seconds(?), epoch(current_timestamp - w.heartbeat_at) "
            f"FROM written_files w WHERE coalesce(w.state, ?) <> ? AND {_UNREFERENCED} ORDER BY w.path",
            [ORPHANED, float(min_age_s), ORPHANED, REGISTERED],
        )
        return [_Candidate(*row) for row in rows]

    def _forget(
        self, reclaim: list[_Candidate], min_age_s: float, stale_after_s: float
    ) -> list[tuple[Path | str, str]]:
        """Delete the rows of ``reclaim`` whose state is still what made them
        reclaimable, in one transaction; the paths (and kinds) whose rows went."""
        here = socket.gethostname()

        def write(con):
            gone = []
            for c in reclaim:
                if c.state != WRITING:
                    check, params = "(w.state = ? OR w.state IS NULL)", [ORPHANED]
                elif c.host == here:
                    check = "w.state = ? AND w.host = ? AND w.pid = ? AND w.process_start IS NOT DISTINCT FROM ?"
                    params = [WRITING, c.host, c.pid, c.process_start]
                else:
                    check = (
                        "w.state = ? AND w.host = ? AND w.heartbeat_at <= current_timestamp - ? * INTERVAL '1 second'"
                    )
                    params = [WRITING, c.host, float(stale_after_s)]
                gone += con.execute(
                    f"DELETE FROM written_files w WHERE w.path = ? AND {check} "
                    f"AND w.written_at <= current_timestamp - ? * INTERVAL '1 second' AND {_UNREFERENCED} "
                    "RETURNING w.path, w.kind",
                    [c.path, *params, float(min_age_s)],
                ).fetchall()
            return [(storage.as_location(p), kind) for p, kind in gone]

        return self.db.write(write) if reclaim else []

    def _requeue(self, files: list[tuple[Path | str, str]]) -> None:
        """Files that could not be deleted stay recorded as orphans, for the next cleanup."""
        if files:
            self.db.write(lambda con: con.execute(
                "INSERT INTO written_files (path, kind, written_at, created_by, state) VALUES "
                + ", ".join(["(?, ?, current_timestamp, ?, ?)"] * len(files)) + " ON CONFLICT DO NOTHING",
                [v for path, kind in files for v in (str(path), kind, self.user, ORPHANED)],
            ))  # fmt: skip


def _spare_reason(c: _Candidate, stale_after_s: float) -> str | None:
    """Why a candidate must stay (None: it may go)."""
    if c.young:
        return "younger than min_age_s"
    if c.state != WRITING:
        return None
    if c.host == socket.gethostname() and c.pid is not None:
        return f"a live writer ({c.host}:{c.pid})" if _alive(int(c.pid), c.process_start) else None
    if c.heartbeat_age_s is not None and c.heartbeat_age_s < stale_after_s:
        return f"a live writer ({c.host}:{c.pid}, heartbeat {c.heartbeat_age_s:.0f} s ago)"
    return None


class _Temporaries:
    """The temporaries atomic_write left in each folder, by the stem of the file they
    were to become (each folder listed once). For an object, those left in the scratch
    folder on this machine, and the local copy a killed upload left."""

    def __init__(self):
        self.folders: dict[Path, dict[str, list[Path]]] = {}

    def of(self, path: Path | str) -> list[Path]:
        local = storage.local_form(path)
        if local.parent not in self.folders:
            found: dict[str, list[Path]] = {}
            with contextlib.suppress(OSError):  # no folder: no temporaries
                for entry in os.scandir(local.parent):
                    match = _TEMPORARY.fullmatch(entry.name)
                    if match:
                        found.setdefault(match["stem"], []).append(Path(entry.path))
            self.folders[local.parent] = found
        temporaries = sorted(self.folders[local.parent].get(local.stem, []))
        return temporaries + [local] if storage.is_url(path) else temporaries


def _existing(files: list[Path | str]) -> tuple[tuple[Path | str, ...], tuple[tuple[Path | str, str], ...]]:
    """The files that exist, and those that cannot be looked at (and why)."""
    found, errors = [], []
    for file in files:
        try:
            storage.stat(file)
            found.append(file)
        except FileNotFoundError:
            pass
        except OSError as error:
            errors.append((file, _describe(error)))
    return tuple(found), tuple(errors)


def _delete(
    reclaimed: list[tuple[Path | str, str]], temporaries: _Temporaries
) -> tuple[tuple[Path | str, ...], tuple[tuple[Path | str, str], ...], list[tuple[Path | str, str]]]:
    """Unlink each reclaimed file and its temporaries: the files deleted, the errors, and
    the reclaimed (path, kind) whose file is still there to try again."""
    deleted, errors, failed = [], [], []
    for path, kind in reclaimed:
        for file in (path, *temporaries.of(path)):
            try:
                storage.delete(file)
                deleted.append(file)
            except FileNotFoundError:
                pass
            except OSError as error:
                errors.append((file, _describe(error)))
                if file == path and error.errno != errno.ENAMETOOLONG:
                    failed.append((path, kind))
    return tuple(deleted), tuple(errors), failed


def _describe(error: OSError) -> str:
    if error.errno == errno.ENAMETOOLONG:
        return "name too long for this file system: no such file can exist; its record is forgotten"
    return f"{error.strerror or error} (fix it, then run cleanup again)"


def _check_lengths(paths: Sequence[Path], names: dict[str, str]) -> None:
    """Refuse a name in a path (or in its temporary's) over the file system's limit per
    name, or a path over its limit per path, naming the names it is made of."""
    existing = next(p for p in paths[0].parents if p.exists())
    name_max = _limit(existing, "PC_NAME_MAX", 255)
    path_max = _limit(existing, "PC_PATH_MAX", 4096)
    for path in paths:
        lengths = {part: len(os.fsencode(part)) for part in path.parent.relative_to(existing).parts}
        temporary = len(os.fsencode(path.name)) - len(os.fsencode(path.suffix)) + _TEMPORARY_EXTRA
        lengths[path.name] = max(len(os.fsencode(path.name)), temporary)
        for part, length in lengths.items():
            if length > name_max:
                raise CatalogError(
                    f"{_naming(names)} make the name {part!r} {length} bytes long (with the temporary name a file is "
                    f"written under): over the limit of {name_max} bytes per name on this file system. Use shorter "
                    "names."
                )
        length = len(os.fsencode(str(path.parent))) + 1 + lengths[path.name]
        if length >= path_max:
            raise CatalogError(
                f"{_naming(names)} make the path {str(path)!r} {length} bytes long (with the temporary name a file is "
                f"written under): over the limit of {path_max} bytes per path on this file system. Use shorter names, "
                "or an output folder nearer the root."
            )


def _check_keys(urls: Sequence[str], names: dict[str, str]) -> None:
    """Refuse a URL whose key is over an object store's limit, naming the names it is made of."""
    for url in urls:
        length = len(os.fsencode(urlsplit(url).path.lstrip("/")))
        if length > storage.KEY_MAX:
            raise CatalogError(
                f"{_naming(names)} make the object key {url!r} {length} bytes long: over the limit of "
                f"{storage.KEY_MAX} bytes per key in an object store. Use shorter names, or a shorter outputs URL."
            )


def _naming(names: dict[str, str]) -> str:
    return " and ".join(f"{kind} {name!r} ({len(os.fsencode(name))} bytes)" for kind, name in names.items())


def _limit(folder: Path, name: str, default: int) -> int:
    try:
        return os.pathconf(folder, name)
    except (OSError, ValueError):  # the system does not say: the common limits
        return default


def _marks(values: Sequence) -> str:
    return ", ".join("?" * len(values))


def _require(paths: Sequence[str], found: list[tuple], doing: str) -> None:
    missing = sorted(set(paths) - {p for (p,) in found})
    if missing:
        raise CatalogError(
            f"Cannot {doing} {', '.join(missing)}: this catalog holds no write intent for it. Either `cleanup` "
            "reclaimed it because its writer looked dead (no heartbeat, or its process gone), or the path was not "
            "handed out by this catalog (output_paths, position_output_path, features_output_path) for writing. "
            "Run it again: a new run gets new paths."
        )


def _this_process() -> tuple[str, int, str | None]:
    pid = os.getpid()
    stat = _proc_stat(pid)
    return socket.gethostname(), pid, None if stat is None else stat[1]


def _alive(pid: int, started: str | None) -> bool:
    """Whether the process that recorded an intent on this host still runs: its pid
    exists, is not a zombie, and (where /proc says) started when the writer did, so a
    pid reused by another process is not taken for the writer."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        pass
    stat = _proc_stat(pid)
    if stat is None:
        return True  # no /proc: the pid is all there is to go by
    state, start = stat
    return state != "Z" and (started is None or start == started)


def _proc_stat(pid: int) -> tuple[str, str] | None:
    """(state, start time in clock ticks since boot) of a process, from /proc (Linux)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # the command name, in parentheses, may hold spaces
    return fields[0], fields[19]

"""Where the catalog's tables live, and the one way to reach them.

DuckDB is the query engine in both cases; only the storage differs:

- a DuckDB file (a laptop): DuckDB lets one process hold the file at a time, so each
  call opens it and closes it again, waiting while another process holds it;
- PostgreSQL (a lab): the tables live on the server. Reads go through DuckDB's
  postgres extension; writes go to the server directly (psycopg2), where a statement
  costs a tenth of what it costs through the extension and ON CONFLICT is the
  server's own, atomic. Each process keeps its connections for its whole life;
  PostgreSQL runs writers side by side and readers never block them.

Writes are functions of a connection run in one transaction (``Database.write``), in
SQL both engines accept (``?`` parameters), so a transaction that loses a race with
another process can simply be run again. On a DuckDB file, the threads of one process
take turns to write: DuckDB lets a transaction delete a row that another one updated
and committed after it began (a lost update), so its own conflict detection cannot be
relied on for rows used as locks (``written_files``); processes take turns already,
through the file's lock.
"""

from __future__ import annotations

import contextlib
import os
import random
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence, TypeVar

import duckdb
import pandas as pd

from .errors import CatalogError

T = TypeVar("T")

POSTGRES_SCHEMES = ("postgresql://", "postgres://")
# another transaction changed the rows this one read or wrote (PostgreSQL), or
# touched the same rows first (DuckDB): running it again sees their result. A
# duplicate key is one of these: two processes that read a key as missing both insert
# it (our read-then-insert steps), the server's unique index stops the second, and run
# again it finds the row and keeps it.
_CONFLICTS = (
    "duplicate key value violates unique constraint",
    "could not serialize access",
    "deadlock detected",
    "write-write conflict",
    "conflict on tuple deletion",
    "conflict on update",
    "tuple already updated",
)


def is_postgres(location: str | Path) -> bool:
    return str(location).startswith(POSTGRES_SCHEMES)


class Database:
    """One catalog database. ``location``: a DuckDB file path or a
    ``postgresql://user@host[:port]/dbname`` URL."""

    def __init__(self, location: str | Path, lock_timeout_s: float = 300.0, retries: int = 20):
        self.postgres = is_postgres(location)
        self.location = str(location) if self.postgres else str(Path(location).expanduser().resolve())
        self.lock_timeout_s = lock_timeout_s
        self.retries = retries
        self.opening_seconds: float | None = None
        self._local = threading.local()
        if not self.postgres:
            Path(self.location).parent.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"Database({self.location!r})"

    # ------------------------------------------------------------------ connections

    @contextlib.contextmanager
    def connect(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A connection; calls nested inside one another (in one thread) share it."""
        held = getattr(self._local, "con", None)
        if held is not None:
            yield held
            return
        con = _postgres_cursor(self.location) if self.postgres else self._open_file()
        self._local.con = con
        try:
            yield con
        finally:
            self._local.con = None
            if not self.postgres:  # the file is let go at once; the server's cursor stays for the next call
                with _file_opener(self.location):
                    con.close()

    def _open_file(self) -> duckdb.DuckDBPyConnection:
        """The file, waiting (with jittered backoff) while another process holds it.
        ``opening_seconds`` records how long the last opening itself took."""
        deadline = time.monotonic() + self.lock_timeout_s
        delay = 0.01
        while True:
            try:
                # threads of one process open and close the file in turns: DuckDB's cache
                # of open files races otherwise ("Unique file handle conflict")
                with _file_opener(self.location):
                    started = time.perf_counter()
                    con = duckdb.connect(self.location)
                    self.opening_seconds = time.perf_counter() - started
                    return con
            except duckdb.IOException as error:
                message = str(error)
                if "version number" in message and "newer version" in message:
                    raise CatalogError(
                        f"{self.location} was written by DuckDB 2.0, whose file format this version (DuckDB "
                        f"{duckdb.__version__}) cannot read. Convert it once with DuckDB 2.0 (see the README, "
                        "'Catalogs written by DuckDB 2.0')."
                    ) from None
                if "could not set lock" not in message.lower() or time.monotonic() > deadline:
                    raise
                time.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 0.5)

    @property
    def errors(self) -> tuple[type[BaseException], ...]:
        """What a statement on this backend raises when the database refuses it."""
        return (duckdb.Error, *_server_errors()) if self.postgres else (duckdb.Error,)

    def write(self, body: Callable[[duckdb.DuckDBPyConnection], T]) -> T:
        """Run ``body(con)`` in one transaction: all its statements commit together or
        none does. A transaction that conflicts with another process's is rolled back
        and run again (up to ``retries`` times). Inside another ``write``, ``body``
        joins that transaction."""
        held = getattr(self._local, "transaction", None)
        if held is not None:
            return body(held)
        errors = self.errors
        turn = contextlib.nullcontext() if self.postgres else _file_writer(self.location)
        for attempt in range(self.retries + 1):
            with turn, self._transaction() as con:
                self._local.transaction = con
                try:
                    result = body(con)
                    con.commit()
                    return result
                except errors as error:
                    con.rollback()
                    if attempt == self.retries or not any(c in str(error).lower() for c in _CONFLICTS):
                        raise
                except BaseException:
                    con.rollback()
                    raise
                finally:
                    self._local.transaction = None
            time.sleep(min(0.5, 0.005 * 2**attempt) * (0.5 + random.random()))
        raise AssertionError("unreachable")

    @contextlib.contextmanager
    def _transaction(self) -> Iterator["_Transaction"]:
        if self.postgres:
            yield _ServerTransaction(_server_connection(self.location))
            return
        with self.connect() as con:
            con.execute("BEGIN TRANSACTION")
            yield _DuckDBTransaction(con)

    def rebuild(self, tables: Sequence[str], ddl: Sequence[str]) -> None:
        """Drop ``tables`` and create them again from ``ddl``, with the same rows, in one
        transaction on a DuckDB file: every index built afresh from the rows there are.
        The file stays held (other processes wait) and a failure leaves it as it was."""
        with _file_writer(self.location), self.connect() as con:
            # the rows aside first, outside the transaction: one transaction writes one
            # database only, and temporary tables are another
            for table in tables:
                con.execute(f"CREATE OR REPLACE TEMP TABLE kept_{table} AS SELECT * FROM main.{table}")
            try:
                con.execute("BEGIN TRANSACTION")
                try:
                    for table in reversed(tables):  # referring tables first
                        con.execute(f"DROP TABLE main.{table}")
                    for statement in ddl:
                        con.execute(statement)
                    for table in tables:
                        names = [row[0] for row in con.execute(
                            "SELECT column_name FROM duckdb_columns() WHERE database_name = 'temp' AND table_name = ? "
                            "ORDER BY column_index", [f"kept_{table}"]).fetchall()]  # fmt: skip
                        columns = ", ".join(f'"{name}"' for name in names)
                        con.execute(f"INSERT INTO main.{table} ({columns}) SELECT {columns} FROM kept_{table}")
                    con.execute("COMMIT")
                except BaseException:
                    con.execute("ROLLBACK")
                    raise
                con.execute("CHECKPOINT")
            finally:
                for table in tables:
                    con.execute(f"DROP TABLE IF EXISTS temp.kept_{table}")

    def close_thread(self) -> None:
        """Close this thread's connections to the server (a thread that ends, such as a
        heartbeat, would otherwise keep them for the process's life)."""
        if not self.postgres:
            return
        key = (self.location, os.getpid(), threading.get_ident())
        cursor, server = _cursors.pop(key, None), _server_connections.pop(key, None)
        if cursor is not None:
            cursor.close()
        if server is not None and not server.closed:
            server.close()

    def write_schema(self, body: Callable[[duckdb.DuckDBPyConnection], None]) -> None:
        """Create or upgrade the tables. On PostgreSQL this runs on a connection of its
        own, and the process's connection then reads the tables back from the server,
        as every other process does (DuckDB treats tables it created differently from
        tables it found)."""
        if not self.postgres:
            self.write(body)
            return
        con = _attach_postgres(self.location)
        try:
            con.execute("BEGIN TRANSACTION")
            body(con)
            con.execute("COMMIT")
        finally:
            con.close()
        shared = _servers.get((self.location, os.getpid()))
        if shared is not None:
            shared.execute("CALL pg_clear_cache()")

    # ------------------------------------------------------------------ reads

    def query(self, sql: str, params: Sequence[Any] = ()) -> pd.DataFrame:
        """A read-only query with ? parameters, as a DataFrame."""
        with self.connect() as con:
            return con.execute(sql, list(params)).df()

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        with self.connect() as con:
            return con.execute(sql, list(params)).fetchall()

    def scalar(self, sql: str, params: Sequence[Any] = ()):
        rows = self.rows(sql, params)
        return rows[0][0] if rows else None

    def one(self, sql: str, params: Sequence[Any], missing: str) -> dict:
        """The single row a query finds, as a dict; CatalogError(missing) if none."""
        df = self.query(sql, params)
        if df.empty:
            raise CatalogError(missing)
        return df.iloc[0].to_dict()


class _Transaction:
    """What a write's body gets: ``execute(sql, params)`` returning something with
    ``fetchone`` and ``fetchall``, on either engine."""

    def execute(self, sql: str, params: Sequence[Any] = ()): ...
    def commit(self) -> None: ...
    def rollback(self) -> None: ...


class _DuckDBTransaction(_Transaction):
    def __init__(self, con: duckdb.DuckDBPyConnection):
        self.con = con

    def execute(self, sql: str, params: Sequence[Any] = ()):
        return self.con.execute(sql, list(params))

    def commit(self) -> None:
        self.con.execute("COMMIT")

    def rollback(self) -> None:
        with contextlib.suppress(duckdb.Error):
            self.con.execute("ROLLBACK")


class _ServerTransaction(_Transaction):
    """A transaction on the server itself; ``?`` parameters become psycopg2's."""

    def __init__(self, con):
        self.con = con
        self.cursor = con.cursor()

    def execute(self, sql: str, params: Sequence[Any] = ()):
        self.cursor.execute(sql.replace("%", "%%").replace("?", "%s"), [_plain(v) for v in params])
        return self.cursor

    def commit(self) -> None:
        self.con.commit()

    def rollback(self) -> None:
        if not self.con.closed:
            self.con.rollback()


def _plain(value):
    """numpy scalars as Python's (psycopg2 knows only those)."""
    return value.item() if hasattr(value, "item") and not isinstance(value, (list, tuple, str, bytes)) else value


_lock = threading.Lock()
_file_writers: dict[tuple[str, int], threading.Lock] = {}
_file_openers: dict[tuple[str, int], threading.Lock] = {}


def _file_opener(location: str) -> threading.Lock:
    """The lock this process's threads take turns on to open or close a DuckDB file."""
    with _lock:
        return _file_openers.setdefault((location, os.getpid()), threading.Lock())


def _file_writer(location: str) -> threading.Lock:
    """The lock this process's threads take turns on to write a DuckDB file (a forked
    process gets its own)."""
    with _lock:
        return _file_writers.setdefault((location, os.getpid()), threading.Lock())


# ---------------------------------------------------------------------- PostgreSQL

_servers: dict[tuple[str, int], duckdb.DuckDBPyConnection] = {}
_server_connections: dict[tuple[str, int, int], Any] = {}
_cursors: dict[tuple[str, int, int], duckdb.DuckDBPyConnection] = {}
_extension_dir: tempfile.TemporaryDirectory | None = None


def _postgres_cursor(url: str) -> duckdb.DuckDBPyConnection:
    """This thread's cursor on this process's one DuckDB connection to the server at
    ``url`` (a forked worker opens its own)."""
    key = (url, os.getpid(), threading.get_ident())
    cursor = _cursors.get(key)
    if cursor is None:
        with _lock:
            con = _servers.get(key[:2])
            if con is None:
                con = _servers[key[:2]] = _attach_postgres(url)
        cursor = _cursors[key] = con.cursor()
        cursor.execute("USE lab")  # each cursor starts in DuckDB's own in-memory database
    return cursor


def _server_connection(url: str):
    """This thread's psycopg2 connection to the server, for writes (reopened if lost)."""
    import psycopg2

    key = (url, os.getpid(), threading.get_ident())
    con = _server_connections.get(key)
    if con is None or con.closed:
        try:
            con = _server_connections[key] = psycopg2.connect(url)
        except psycopg2.Error as error:
            raise CatalogError(
                f"Cannot reach the catalog's PostgreSQL server at {url}: {' '.join(str(error).split())}. "
                "Check the URL, that the server runs and that the database exists."
            ) from None
    return con


def _server_errors() -> tuple[type[BaseException], ...]:
    import psycopg2

    return (psycopg2.Error,)


def _attach_postgres(url: str) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.execute("SET autoinstall_known_extensions = false")
    con.execute("SET autoload_known_extensions = false")
    con.execute(f"LOAD {_literal(str(_postgres_extension()))}")
    try:
        # ATTACH takes no parameters: the URL goes in as a quoted literal
        con.execute(f"ATTACH {_literal(url)} AS lab (TYPE postgres)")
    except duckdb.Error as error:
        raise CatalogError(
            f"Cannot reach the catalog's PostgreSQL server at {url}: {' '.join(str(error).split())}. "
            "Check the URL, that the server runs and that the database exists."
        ) from None
    con.execute("USE lab")
    return con


def _literal(text: str) -> str:
    """An SQL string literal, for the two statements that take no parameters."""
    return "'" + text.replace("'", "''") + "'"


def _postgres_extension() -> Path:
    """DuckDB's postgres extension from its Python package (no download), under the
    file name DuckDB derives its entry point from (``postgres_scanner``)."""
    global _extension_dir
    try:
        import duckdb_extension_postgres
    except ImportError:
        raise CatalogError(
            "A PostgreSQL catalog needs the package duckdb-extension-postgres "
            f"(pip install duckdb-extension-postgres=={duckdb.__version__})."
        ) from None
    shipped = Path(duckdb_extension_postgres.__file__).parent / "extensions" / f"v{duckdb.__version__}"
    shipped = shipped / "postgres.duckdb_extension"
    if not shipped.is_file():
        raise CatalogError(
            f"duckdb-extension-postgres has no build for DuckDB {duckdb.__version__}; install the matching "
            f"version (pip install duckdb-extension-postgres=={duckdb.__version__})."
        )
    if _extension_dir is None:
        _extension_dir = tempfile.TemporaryDirectory(prefix="decoding-assets-duckdb-")
    link = Path(_extension_dir.name) / "postgres_scanner.duckdb_extension"
    if not link.exists():
        link.symlink_to(shipped)
    return link

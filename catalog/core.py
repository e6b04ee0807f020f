"""``Catalog``: one object for a notebook or a pipeline, over the stores by domain."""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Callable

import duckdb

from . import storage
from .connection import Database, is_postgres
from .decodes import DecodeStore
from .errors import CatalogError, current_user
from .features import FeatureStore
from .files import FileStore
from .integrity import IntegrityStore
from .parameters import ParameterStore
from .position import PositionStore
from .schema import SCHEMA_VERSION, TABLE_NAMES, TABLES, UPGRADES
from .sessions import SessionStore


def _forward(store: str, method: Callable) -> Callable:
    """``Catalog.<name>`` calls the store's method of that name (same signature and docs)."""

    @functools.wraps(method)
    def call(self, *args, **kwargs):
        return method(getattr(self, store), *args, **kwargs)

    return call


class Catalog:
    """The lineage catalog: sessions, intervals, groups, parameter sets, selections,
    outputs and who made them.

    Parameters
    ----------
    location : a DuckDB file (created with its folder if missing), for one person's
        machine; or ``postgresql://user@host[:port]/dbname``, a lab's shared server
        (the database must exist; the tables are created on first use).
    output_dir : where decoding, position and features outputs are written: a folder,
        or a URL fsspec reaches (``s3://bucket/prefix``; files are written locally in
        ``$DECODING_ASSETS_SCRATCH``, then uploaded); default ``<folder of the
        file>/outputs`` for a file. A PostgreSQL catalog has no default: give a folder
        or URL every worker reaches (only needed to write outputs).
    user : recorded with every write (default ``user@host`` of this process).
    lock_timeout_s : (DuckDB file) how long a call waits for another process's lock.
    """

    def __init__(
        self,
        location: str | Path,
        output_dir: str | Path | None = None,
        *,
        user: str | None = None,
        lock_timeout_s: float = 300.0,
    ):
        self.db = Database(location, lock_timeout_s=lock_timeout_s)
        self.location = self.db.location
        if output_dir is not None:
            self.output_dir = storage.resolve(output_dir)
        else:
            self.output_dir = None if is_postgres(location) else Path(self.location).parent / "outputs"
        self.user = user or current_user()
        self._create_or_upgrade()
        self.files = FileStore(self.db, self.user, self.output_dir)
        self.parameter_store = ParameterStore(self.db, self.user)
        self.session_store = SessionStore(self.db, self.user)
        self.feature_store = FeatureStore(self.db, self.user, self.files, self.parameter_store)
        self.position_store = PositionStore(self.db, self.user, self.files)
        self.integrity = IntegrityStore(self.db)
        self.decode_store = DecodeStore(self.db, self.user, self.files, self.integrity)

    @property
    def path(self) -> Path:
        """The DuckDB file (a file catalog only)."""
        if self.db.postgres:
            raise CatalogError(f"The catalog at {self.location} is on a PostgreSQL server, not in a file.")
        return Path(self.location)

    def __repr__(self) -> str:
        return f"Catalog({self.location!r})"

    def _create_or_upgrade(self) -> None:
        def write(con):
            exists = con.execute(
                "SELECT count(*) FROM information_schema.tables WHERE table_name = 'catalog_info'"
            ).fetchone()[0]
            version = None
            if exists:
                row = con.execute("SELECT value FROM catalog_info WHERE key = 'schema_version'").fetchone()
                version = None if row is None else int(row[0])
            if version is not None and version > SCHEMA_VERSION:
                raise CatalogError(
                    f"The catalog at {self.location} has schema {version}; this version of decoding-assets knows "
                    f"up to {SCHEMA_VERSION}. Upgrade decoding-assets to use it."
                )
            for ddl in TABLES:
                con.execute(ddl)
            pending = [s for step in range((version or SCHEMA_VERSION) + 1, SCHEMA_VERSION + 1) for s in UPGRADES[step]]
            # every step's new columns first: DuckDB cannot alter a table this transaction
            # has already written rows of (an earlier step's UPDATE)
            for statement in sorted(pending, key=lambda statement: not statement.startswith("ALTER")):
                con.execute(statement)
            con.execute(
                "INSERT INTO catalog_info VALUES ('schema_version', ?) ON CONFLICT DO UPDATE SET value = excluded.value",
                [str(SCHEMA_VERSION)],
            )

        if self._schema_is_current():
            return  # every worker opens the catalog: no DDL when nothing changes
        for attempt in range(3):
            try:
                self.db.write_schema(write)
                return
            except duckdb.Error:
                # workers starting at once on an empty server race to create the tables
                time.sleep(0.2 * (attempt + 1))
                if attempt == 2 or not self.db.postgres:
                    raise
                if self._schema_is_current():
                    return

    def _schema_is_current(self) -> bool:
        try:
            return self.db.scalar("SELECT value FROM catalog_info WHERE key = 'schema_version'") == str(SCHEMA_VERSION)
        except duckdb.CatalogException:  # a new catalog: no catalog_info yet
            return False

    def compact(self, if_opening_slower_than_s: float | None = None) -> bool:
        """Rebuild a DuckDB catalog's tables from their rows (0.5 s for 220 sessions
        here). Many small writes leave a DuckDB file's indexes in many pieces, and every
        opening of the file reads them all: at 220 sessions an opening took 120 ms, 11-18
        ms once rebuilt, and every catalog call opens the file. The ``catalog_sync``
        sensor calls it when the last opening was slower than ``if_opening_slower_than_s``;
        ``decoding-assets catalog compact`` always. Returns whether it rebuilt anything
        (never on PostgreSQL, which keeps its own indexes)."""
        if self.db.postgres:
            return False
        if if_opening_slower_than_s is not None:
            if self.db.opening_seconds is None:
                with self.db.connect():
                    pass
            if self.db.opening_seconds < if_opening_slower_than_s:
                return False
        # the tables' own names, from the schema: identifiers cannot be parameters
        self.db.rebuild(TABLE_NAMES, TABLES)
        return True

    def held(self):
        """A context in which this thread's catalog calls share one connection: a batch
        of calls costs one opening of the catalog instead of one each (on a DuckDB
        file, 10-20 ms apiece, more until ``compact``). Other processes wait for a DuckDB file meanwhile: hold it
        around catalog work, never around a decode or a long file read."""
        return self.db.connect()

    def query(self, sql: str, params=()):
        """Run a read-only SQL query (with ? parameters) through DuckDB; a DataFrame."""
        return self.db.query(sql, params)

    # sessions and intervals
    register_session = _forward("session_store", SessionStore.register_session)
    sessions = _forward("session_store", SessionStore.sessions)
    fetch_session = _forward("session_store", SessionStore.fetch_session)
    interval_lists = _forward("session_store", SessionStore.interval_lists)
    epochs = _forward("session_store", SessionStore.epochs)
    fetch_interval_list = _forward("session_store", SessionStore.fetch_interval_list)
    # parameter sets
    insert_features_params = _forward("parameter_store", ParameterStore.insert_features_params)
    fetch_features_params = _forward("parameter_store", ParameterStore.fetch_features_params)
    insert_position_params = _forward("parameter_store", ParameterStore.insert_position_params)
    fetch_position_params = _forward("parameter_store", ParameterStore.fetch_position_params)
    insert_decoding_params = _forward("parameter_store", ParameterStore.insert_decoding_params)
    fetch_decoding_params = _forward("parameter_store", ParameterStore.fetch_decoding_params)
    decoding_params = _forward("parameter_store", ParameterStore.decoding_params)
    parameter_set_names = _forward("parameter_store", ParameterStore.parameter_set_names)
    # waveform features
    waveform_features = _forward("feature_store", FeatureStore.waveform_features)
    create_features_group = _forward("feature_store", FeatureStore.create_features_group)
    fetch_features_group = _forward("feature_store", FeatureStore.fetch_features_group)
    features_output_path = _forward("feature_store", FeatureStore.features_output_path)
    register_extracted_features = _forward("feature_store", FeatureStore.register_extracted_features)
    extracted_features = _forward("feature_store", FeatureStore.extracted_features)
    # position
    position_output_path = _forward("position_store", PositionStore.position_output_path)
    register_position_output = _forward("position_store", PositionStore.register_position_output)
    position_outputs = _forward("position_store", PositionStore.position_outputs)
    create_position_group = _forward("position_store", PositionStore.create_position_group)
    fetch_position_group = _forward("position_store", PositionStore.fetch_position_group)
    # selections, outputs and lineage
    insert_selection = _forward("decode_store", DecodeStore.insert_selection)
    fetch_selection = _forward("decode_store", DecodeStore.fetch_selection)
    fetch_decode_sources = _forward("decode_store", DecodeStore.fetch_decode_sources)
    output_paths = _forward("decode_store", DecodeStore.output_paths)
    register_output = _forward("decode_store", DecodeStore.register_output)
    outputs = _forward("decode_store", DecodeStore.outputs)
    fetch_output = _forward("decode_store", DecodeStore.fetch_output)
    state_fractions = _forward("decode_store", DecodeStore.state_fractions)
    lineage = _forward("decode_store", DecodeStore.lineage)
    delete_output = _forward("decode_store", DecodeStore.delete_output)
    forget_bad_output = _forward("decode_store", DecodeStore.forget_bad_output)
    deleted_selections = _forward("decode_store", DecodeStore.deleted_selections)
    missing_outputs = _forward("decode_store", DecodeStore.missing_outputs)
    # verifying registered files
    verify_decode_inputs = _forward("integrity", IntegrityStore.verify_decode_inputs)
    verify_output = _forward("integrity", IntegrityStore.verify_output)
    check_output = _forward("integrity", IntegrityStore.check_output)
    verify_outputs = _forward("integrity", IntegrityStore.verify_outputs)
    bad_outputs = _forward("integrity", IntegrityStore.bad_outputs)
    # files: writers and cleanup
    writing = _forward("files", FileStore.writing)
    heartbeat = _forward("files", FileStore.heartbeat)
    cleanup = _forward("files", FileStore.cleanup)

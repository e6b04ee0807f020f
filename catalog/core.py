"""The DuckDB catalog: sessions, intervals, groups, parameter sets, selections, outputs
and lineage. A plain library: usable from a notebook, no Dagster.

Every call opens a short connection and closes it, so several processes can share the
file: DuckDB lets one process hold it at a time, and a call that finds it locked waits
and retries (``lock_timeout_s``). Writes run in one transaction each; a failed write
leaves the catalog as it was.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
import time
import uuid
from pathlib import Path
from typing import Any, Iterator, Sequence

import duckdb
import numpy as np
import pandas as pd

from .schema import SCHEMA_VERSION, TABLES

_MERGE_NAMESPACE = uuid.UUID("6f1d2c1e-3b7a-4d53-9a55-0c2b8f1e7d41")
_FORBIDDEN = set("/\\'\"|,\0\n\r\t")
# the parameters recorded for a features set first seen in an NWB file
NWB_FEATURES_PARAMS = {"source": "nwb"}


class CatalogError(ValueError):
    """A request the catalog cannot satisfy; the message says what to do."""


def check_name(kind: str, value: str) -> str:
    """Names become file names and partition keys: no path separators or quotes."""
    if not isinstance(value, str) or not value.strip():
        raise CatalogError(f"{kind} must be a non-empty string, got {value!r}.")
    bad = sorted(set(value) & _FORBIDDEN)
    if bad or value != value.strip() or value in (".", ".."):
        raise CatalogError(
            f"{kind} {value!r} is not allowed: names may not contain path separators, quotes, '|', ',' "
            "or control characters, nor start or end with spaces. Rename it."
        )
    return value


def file_checksum(path: str | Path) -> str:
    """blake2b of the file's bytes, streamed."""
    digest = hashlib.blake2b(digest_size=20)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(8 * 2**20), b""):
            digest.update(block)
    return digest.hexdigest()


def merge_id_for(selection: dict) -> str:
    """A stable id for a decoding selection: the same seven fields, the same merge_id."""
    key = json.dumps({k: selection[k] for k in sorted(SELECTION_FIELDS)}, sort_keys=True)
    return str(uuid.uuid5(_MERGE_NAMESPACE, key))


SELECTION_FIELDS = (
    "nwb_file_name",
    "waveform_features_group_name",
    "position_group_name",
    "decoding_param_name",
    "encoding_interval",
    "decoding_interval",
    "estimate_decoding_params",
)


class Catalog:
    """The lineage catalog in one DuckDB file.

    Parameters
    ----------
    path : the DuckDB file (created with its folder if missing).
    output_dir : where decoding and position outputs are written; default
        ``<folder of path>/outputs``.
    lock_timeout_s : how long a call waits for another process's lock.
    """

    def __init__(self, path: str | Path, output_dir: str | Path | None = None, lock_timeout_s: float = 300.0):
        self.path = Path(path).resolve()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.output_dir = Path(output_dir).resolve() if output_dir else self.path.parent / "outputs"
        self.lock_timeout_s = lock_timeout_s
        with self.transaction() as con:
            for ddl in TABLES:
                con.execute(ddl)
            con.execute(
                "INSERT INTO catalog_info VALUES ('schema_version', ?) ON CONFLICT DO NOTHING", [str(SCHEMA_VERSION)]
            )
        version = int(self._scalar("SELECT value FROM catalog_info WHERE key = 'schema_version'"))
        if version > SCHEMA_VERSION:
            raise CatalogError(f"{self.path} has catalog schema {version}; upgrade decoding_assets to use it.")

    # ------------------------------------------------------------------ connections

    @contextlib.contextmanager
    def connect(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A connection, waiting while another process holds the file's lock."""
        deadline = time.monotonic() + self.lock_timeout_s
        delay = 0.01
        while True:
            try:
                con = duckdb.connect(str(self.path))
                break
            except duckdb.IOException as error:
                if "lock" not in str(error).lower() or time.monotonic() > deadline:
                    raise
                time.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 0.5)
        try:
            yield con
        finally:
            con.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """All statements inside commit together, or not at all."""
        with self.connect() as con:
            con.execute("BEGIN TRANSACTION")
            try:
                yield con
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")

    def query(self, sql: str, params: Sequence[Any] = ()) -> pd.DataFrame:
        """Run a read-only SQL query (with ? parameters) and return a DataFrame."""
        with self.connect() as con:
            return con.execute(sql, list(params)).df()

    def _one(self, sql: str, params: Sequence[Any], missing: str) -> dict:
        """The single row a query finds, as a dict; CatalogError(missing) if none."""
        df = self.query(sql, params)
        if df.empty:
            raise CatalogError(missing)
        return df.iloc[0].to_dict()

    def _scalar(self, sql: str, params: Sequence[Any] = ()):
        with self.connect() as con:
            row = con.execute(sql, list(params)).fetchone()
        return None if row is None else row[0]

    # ------------------------------------------------------------------ sessions

    def register_session(
        self,
        nwb_path: str | Path,
        *,
        content_hash: str | None = None,
        subject_id: str | None = None,
        session_description: str | None = None,
        session_start_time: str | None = None,
        interval_lists: dict[str, tuple[np.ndarray, str]] | None = None,
        epochs: Sequence[dict] = (),
        electrode_groups: Sequence[tuple[str, int, str | None]] = (),
        waveform_features: Sequence[dict] = (),
    ) -> str:
        """Record an NWB file with its interval lists, electrode groups and waveform
        features, all in one transaction; returns its ``nwb_file_name``.

        Idempotent for the same content, except that what a newer version reads from
        the file (interval lists, epochs) and the catalog lacks is added, never changed;
        a changed file under a registered name is an error. ``interval_lists``: {name: (valid_times (n, 2), source)}; ``epochs``:
        dicts with interval_list_name (an interval list of source "epoch"), epoch,
        task_name, task_environment, camera_id, epoch_kind ("run", "sleep" or None);
        ``electrode_groups``: [(name, n_channels, location)]; ``waveform_features``:
        dicts with electrode_group_name, features_param_name, n_spikes, n_features,
        source, content_hash.
        """
        nwb_path = Path(nwb_path).resolve()
        if not nwb_path.is_file():
            raise CatalogError(f"No NWB file at {nwb_path}.")
        nwb_file_name = check_name("nwb_file_name", nwb_path.name)
        content_hash = content_hash or file_checksum(nwb_path)
        intervals = []
        for name, (valid_times, source) in (interval_lists or {}).items():
            check_name("interval_list_name", name)
            valid_times = np.asarray(valid_times, dtype=float).reshape(-1, 2)
            if np.any(valid_times[:, 1] < valid_times[:, 0]):
                raise CatalogError(f"Interval list {name!r} of {nwb_file_name}: a stop time precedes its start.")
            intervals.append([nwb_file_name, name, valid_times.tolist(), source])
        for name, _, _ in electrode_groups:
            check_name("electrode_group_name", name)
        epoch_names = {name for name, (_, source) in (interval_lists or {}).items() if source == "epoch"}
        for row in epochs:
            if row["interval_list_name"] not in epoch_names:
                raise CatalogError(f"Session {nwb_file_name}: task epoch {row['interval_list_name']!r} is not an epoch.")
        for row in waveform_features:
            check_name("features_param_name", row["features_param_name"])
        with self.transaction() as con:
            row = con.execute(
                "SELECT content_hash, nwb_path FROM sessions WHERE nwb_file_name = ?", [nwb_file_name]
            ).fetchone()
            if row is not None:
                if row[0] != content_hash:
                    raise CatalogError(
                        f"Session {nwb_file_name} is already registered (from {row[1]}) with different content. "
                        "A changed recording needs a new file name."
                    )
                self._add_session_rows(con, nwb_file_name, intervals, epochs)
                return nwb_file_name
            con.execute(
                "INSERT INTO sessions (nwb_file_name, nwb_path, content_hash, subject_id, session_description, "
                "session_start_time) VALUES (?, ?, ?, ?, ?, ?)",
                [nwb_file_name, str(nwb_path), content_hash, subject_id, session_description, session_start_time],
            )
            self._add_session_rows(con, nwb_file_name, intervals, epochs)
            for name, n_channels, location in electrode_groups:
                con.execute(
                    "INSERT INTO electrode_groups VALUES (?, ?, ?, ?)", [nwb_file_name, name, int(n_channels), location]
                )
            for row in waveform_features:
                con.execute(
                    "INSERT INTO waveform_features_params (features_param_name, params) VALUES (?, ?) "
                    "ON CONFLICT DO NOTHING",
                    [row["features_param_name"], json.dumps(NWB_FEATURES_PARAMS)],
                )
                con.execute(
                    "INSERT INTO waveform_features VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [nwb_file_name, row["electrode_group_name"], row["features_param_name"], int(row["n_spikes"]),
                     int(row["n_features"]), row["source"], row["content_hash"]],
                )  # fmt: skip
        return nwb_file_name

    @staticmethod
    def _add_session_rows(con, nwb_file_name: str, intervals: list, epochs: Sequence[dict]) -> None:
        """A session's interval lists and task epochs; rows the catalog has are kept as
        they are (a session registered by an older version gets only what it lacks)."""
        for interval in intervals:
            con.execute(
                "INSERT INTO interval_lists (nwb_file_name, interval_list_name, valid_times, source) VALUES (?, ?, ?, ?) "
                "ON CONFLICT DO NOTHING",
                interval,
            )
        for row in epochs:
            con.execute(
                "INSERT INTO task_epochs VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                [nwb_file_name, row["interval_list_name"], row["epoch"], row["task_name"], row["task_environment"],
                 row["camera_id"], row["epoch_kind"]],
            )  # fmt: skip

    def sessions(self) -> pd.DataFrame:
        return self.query("SELECT * FROM sessions ORDER BY nwb_file_name")

    def fetch_session(self, nwb_file_name: str) -> dict:
        return self._one(
            "SELECT * FROM sessions WHERE nwb_file_name = ?",
            [nwb_file_name],
            f"Unknown session {nwb_file_name!r}: register its NWB file first.",
        )

    # ------------------------------------------------------------------ intervals

    def interval_lists(self, nwb_file_name: str) -> pd.DataFrame:
        """The session's interval lists: name, source, count, first start, last stop."""
        return self.query(
            "SELECT interval_list_name, source, len(valid_times) AS n_intervals, "
            "valid_times[1][1] AS start_time, valid_times[-1][2] AS stop_time "
            "FROM interval_lists WHERE nwb_file_name = ? ORDER BY start_time, interval_list_name",
            [nwb_file_name],
        )

    def epochs(self, nwb_file_name: str) -> pd.DataFrame:
        """The session's epochs in time order: interval_list_name, epoch, task_name,
        task_environment, camera_id, epoch_kind ("run", "sleep" or None), start, stop."""
        return self.query(
            "SELECT e.*, i.valid_times[1][1] AS start_time, i.valid_times[-1][2] AS stop_time FROM task_epochs e "
            "JOIN interval_lists i USING (nwb_file_name, interval_list_name) WHERE nwb_file_name = ? "
            "ORDER BY start_time, interval_list_name",
            [nwb_file_name],
        )

    def fetch_interval_list(self, nwb_file_name: str, interval_list_name: str) -> np.ndarray:
        """valid_times as an (n, 2) array of [start, stop] seconds."""
        value = self._scalar(
            "SELECT valid_times FROM interval_lists WHERE nwb_file_name = ? AND interval_list_name = ?",
            [nwb_file_name, interval_list_name],
        )
        if value is None:
            known = ", ".join(self.interval_lists(nwb_file_name)["interval_list_name"]) or "none"
            raise CatalogError(
                f"Session {nwb_file_name} has no interval list {interval_list_name!r} (known: {known})."
            )
        return np.asarray(value, dtype=float).reshape(-1, 2)

    # ------------------------------------------------------------------ waveform features

    def insert_features_params(self, features_param_name: str, params: dict) -> None:
        """Store how a named set of features is extracted from raw recordings. A name
        first seen on features found in an NWB file gets these parameters; the file's
        own features stay in use for its groups."""
        self._insert_named_params(
            "waveform_features_params", "features_param_name", features_param_name, params, replaceable=NWB_FEATURES_PARAMS
        )

    def fetch_features_params(self, features_param_name: str) -> dict:
        return self._fetch_named_params("waveform_features_params", "features_param_name", features_param_name)

    def waveform_features(self, nwb_file_name: str) -> pd.DataFrame:
        return self.query(
            "SELECT * FROM waveform_features WHERE nwb_file_name = ? ORDER BY electrode_group_name", [nwb_file_name]
        )

    def create_features_group(
        self,
        nwb_file_name: str,
        waveform_features_group_name: str,
        electrode_group_names: Sequence[str] | None = None,
        features_param_name: str = "amplitude",
    ) -> None:
        """Name a set of electrode groups' waveform features to decode from (default:
        every group with features of ``features_param_name``). Re-creating a group with
        the same members is a no-op; different members are an error."""
        check_name("waveform_features_group_name", waveform_features_group_name)
        available = self.query(
            "SELECT electrode_group_name FROM waveform_features WHERE nwb_file_name = ? AND features_param_name = ?",
            [nwb_file_name, features_param_name],
        )["electrode_group_name"].tolist()
        members = list(electrode_group_names) if electrode_group_names is not None else available
        missing = sorted(set(members) - set(available))
        if missing or not members:
            raise CatalogError(
                f"Session {nwb_file_name} has no {features_param_name!r} waveform features for electrode group(s) "
                f"{missing or '(none given)'}; available: {available or 'none'}."
            )
        with self.transaction() as con:
            existing = con.execute(
                "SELECT electrode_group_name, features_param_name FROM waveform_features_group_members "
                "WHERE nwb_file_name = ? AND waveform_features_group_name = ? ORDER BY 1",
                [nwb_file_name, waveform_features_group_name],
            ).fetchall()
            wanted = sorted((m, features_param_name) for m in members)
            if existing:
                if [tuple(r) for r in existing] != wanted:
                    raise CatalogError(
                        f"Waveform features group {waveform_features_group_name!r} of {nwb_file_name} already exists "
                        "with other members; choose a new name."
                    )
                return
            con.execute("INSERT INTO waveform_features_groups (nwb_file_name, waveform_features_group_name) VALUES (?, ?)",
                        [nwb_file_name, waveform_features_group_name])  # fmt: skip
            for member, param in wanted:
                con.execute(
                    "INSERT INTO waveform_features_group_members VALUES (?, ?, ?, ?)",
                    [nwb_file_name, waveform_features_group_name, member, param],
                )

    def fetch_features_group(self, nwb_file_name: str, waveform_features_group_name: str) -> pd.DataFrame:
        df = self.query(
            "SELECT m.electrode_group_name, m.features_param_name, f.content_hash, f.n_spikes, f.n_features, f.source, "
            "x.path FROM waveform_features_group_members m JOIN waveform_features f USING "
            "(nwb_file_name, electrode_group_name, features_param_name) LEFT JOIN waveform_features_files x USING "
            "(nwb_file_name, electrode_group_name, features_param_name) "
            "WHERE m.nwb_file_name = ? AND m.waveform_features_group_name = ? ORDER BY m.electrode_group_name",
            [nwb_file_name, waveform_features_group_name],
        )
        if df.empty:
            raise CatalogError(
                f"Unknown waveform features group {waveform_features_group_name!r} for session {nwb_file_name}: "
                "create it with create_features_group."
            )
        return df

    def features_output_path(self, nwb_file_name: str, electrode_group_name: str, features_param_name: str) -> Path:
        """A new path for one group's extracted features, recorded as written by this
        catalog before anything is written (a re-extraction never overwrites a file)."""
        folder = self.output_dir / "waveform_features" / nwb_file_name
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{electrode_group_name}__{features_param_name}.{uuid.uuid4().hex[:12]}.nc"
        self.record_written_files([path], kind="waveform_features")
        return path

    def register_extracted_features(self, nwb_file_name: str, features_param_name: str, rows: Sequence[dict]) -> None:
        """Record features extracted from a raw recording, every group in one transaction,
        replacing an earlier extraction with the same parameter set.

        Each row: electrode_group_name, path, raw_series_name, n_spikes, electrode_ids,
        bad_electrode_ids, code_version, run_seconds, content_hash (the features'
        version, which decodes record). The parameters are those stored under
        ``features_param_name``.
        """
        params = self.fetch_features_params(features_param_name)
        known = set(self.query(
            "SELECT electrode_group_name FROM electrode_groups WHERE nwb_file_name = ?", [nwb_file_name]
        )["electrode_group_name"])  # fmt: skip
        prepared = []
        for row in rows:
            group = row["electrode_group_name"]
            if group not in known:
                raise CatalogError(f"Session {nwb_file_name} has no electrode group {group!r}.")
            path = Path(row["path"]).resolve()
            if not path.is_file():
                raise CatalogError(f"Session {nwb_file_name}, electrode group {group}: no features file at {path}.")
            prepared.append((row, group, path))
        with self.transaction() as con:
            for row, group, path in prepared:
                source = con.execute(
                    "SELECT source FROM waveform_features WHERE nwb_file_name = ? AND electrode_group_name = ? "
                    "AND features_param_name = ?",
                    [nwb_file_name, group, features_param_name],
                ).fetchone()
                if source is not None and source[0] == "nwb":
                    raise CatalogError(
                        f"Session {nwb_file_name}, electrode group {group}: the NWB file already holds "
                        f"{features_param_name!r} features; extract under another features_param_name."
                    )
                con.execute(
                    "INSERT INTO waveform_features VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO UPDATE SET "
                    "n_spikes = excluded.n_spikes, n_features = excluded.n_features, source = excluded.source, "
                    "content_hash = excluded.content_hash",
                    [nwb_file_name, group, features_param_name, int(row["n_spikes"]), len(row["electrode_ids"]),
                     f"raw:{row['raw_series_name']}", row["content_hash"]],
                )  # fmt: skip
                con.execute(
                    "INSERT INTO waveform_features_files (nwb_file_name, electrode_group_name, features_param_name, "
                    "path, raw_series_name, electrode_ids, bad_electrode_ids, params, code_version, run_seconds) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO UPDATE SET path = excluded.path, "
                    "raw_series_name = excluded.raw_series_name, electrode_ids = excluded.electrode_ids, "
                    "bad_electrode_ids = excluded.bad_electrode_ids, params = excluded.params, "
                    "code_version = excluded.code_version, run_seconds = excluded.run_seconds, "
                    "created_at = now()",
                    [nwb_file_name, group, features_param_name, str(path), row["raw_series_name"],
                     [int(i) for i in row["electrode_ids"]], [int(i) for i in row["bad_electrode_ids"]],
                     json.dumps(params, sort_keys=True), row["code_version"], float(row["run_seconds"])],
                )  # fmt: skip

    def extracted_features(self, nwb_file_name: str) -> pd.DataFrame:
        """Features extracted from raw recordings, with their files and lineage."""
        return self.query(
            "SELECT f.*, x.* EXCLUDE (nwb_file_name, electrode_group_name, features_param_name) "
            "FROM waveform_features f JOIN waveform_features_files x USING "
            "(nwb_file_name, electrode_group_name, features_param_name) WHERE f.nwb_file_name = ? "
            "ORDER BY f.features_param_name, f.electrode_group_name",
            [nwb_file_name],
        )

    # ------------------------------------------------------------------ position

    def insert_position_params(self, trodes_pos_params_name: str, params: dict) -> None:
        self._insert_named_params("position_params", "trodes_pos_params_name", trodes_pos_params_name, params)

    def fetch_position_params(self, trodes_pos_params_name: str) -> dict:
        return self._fetch_named_params("position_params", "trodes_pos_params_name", trodes_pos_params_name)

    def register_position_output(
        self, nwb_file_name: str, interval_list_name: str, trodes_pos_params_name: str, path: Path, n_samples: int
    ) -> None:
        path = Path(path).resolve()
        with self.transaction() as con:
            con.execute(
                "INSERT OR REPLACE INTO position_outputs (nwb_file_name, interval_list_name, trodes_pos_params_name, "
                "path, n_samples, checksum) VALUES (?, ?, ?, ?, ?, ?)",
                [nwb_file_name, interval_list_name, trodes_pos_params_name, str(path), int(n_samples), file_checksum(path)],
            )

    def position_outputs(self, nwb_file_name: str) -> pd.DataFrame:
        return self.query("SELECT * FROM position_outputs WHERE nwb_file_name = ? ORDER BY 2", [nwb_file_name])

    def create_position_group(
        self,
        nwb_file_name: str,
        position_group_name: str,
        interval_list_names: Sequence[str],
        trodes_pos_params_name: str = "default_decoding",
        upsample_rate: float = 500.0,
        position_variables: Sequence[str] = ("position_x", "position_y"),
    ) -> None:
        """Name one or more processed position sources, the rate to upsample them to and
        the columns to decode."""
        check_name("position_group_name", position_group_name)
        if upsample_rate <= 0:
            raise CatalogError(f"upsample_rate must be positive, got {upsample_rate}.")
        allowed = {"position_x", "position_y"}
        if not position_variables or set(position_variables) - allowed:
            raise CatalogError(f"position_variables must be drawn from {sorted(allowed)}, got {list(position_variables)}.")
        outputs = set(
            self.query(
                "SELECT interval_list_name FROM position_outputs WHERE nwb_file_name = ? AND trodes_pos_params_name = ?",
                [nwb_file_name, trodes_pos_params_name],
            )["interval_list_name"]
        )
        missing = sorted(set(interval_list_names) - outputs)
        if missing or not interval_list_names:
            raise CatalogError(
                f"Session {nwb_file_name} has no position processed with {trodes_pos_params_name!r} for interval(s) "
                f"{missing or '(none given)'}; processed: {sorted(outputs) or 'none'}."
            )
        with self.transaction() as con:
            existing = con.execute(
                "SELECT upsample_rate, position_variables FROM position_groups WHERE nwb_file_name = ? AND position_group_name = ?",
                [nwb_file_name, position_group_name],
            ).fetchone()
            members = sorted(interval_list_names)
            if existing:
                old = con.execute(
                    "SELECT interval_list_name FROM position_group_members WHERE nwb_file_name = ? "
                    "AND position_group_name = ? ORDER BY 1",
                    [nwb_file_name, position_group_name],
                ).fetchall()
                if (existing[0], list(existing[1]), [r[0] for r in old]) != (float(upsample_rate), list(position_variables), members):
                    raise CatalogError(
                        f"Position group {position_group_name!r} of {nwb_file_name} already exists with other "
                        "settings; choose a new name."
                    )
                return
            con.execute(
                "INSERT INTO position_groups (nwb_file_name, position_group_name, upsample_rate, position_variables) "
                "VALUES (?, ?, ?, ?)",
                [nwb_file_name, position_group_name, float(upsample_rate), list(position_variables)],
            )
            for name in members:
                con.execute(
                    "INSERT INTO position_group_members VALUES (?, ?, ?, ?)",
                    [nwb_file_name, position_group_name, name, trodes_pos_params_name],
                )

    def fetch_position_group(self, nwb_file_name: str, position_group_name: str) -> dict:
        """upsample_rate, position_variables and the members' processed position files."""
        group = self.query(
            "SELECT * FROM position_groups WHERE nwb_file_name = ? AND position_group_name = ?",
            [nwb_file_name, position_group_name],
        )
        if group.empty:
            raise CatalogError(
                f"Unknown position group {position_group_name!r} for session {nwb_file_name}: "
                "create it with create_position_group."
            )
        members = self.query(
            "SELECT m.interval_list_name, m.trodes_pos_params_name, o.path, o.checksum FROM position_group_members m "
            "JOIN position_outputs o USING (nwb_file_name, interval_list_name, trodes_pos_params_name) "
            "WHERE m.nwb_file_name = ? AND m.position_group_name = ? ORDER BY 1",
            [nwb_file_name, position_group_name],
        )
        return {
            "upsample_rate": float(group["upsample_rate"].iloc[0]),
            "position_variables": list(group["position_variables"].iloc[0]),
            "members": members,
        }

    # ------------------------------------------------------------------ decoding parameters

    def insert_decoding_params(self, decoding_param_name: str, params: dict | None = None) -> dict:
        """Store a named model configuration. ``params`` is either a full
        ``ContFragClusterlessClassifier.to_dict()`` or overrides of the defaults, e.g.
        ``{"block_size": 10000, "position_std": 12.0, "waveform_std": 24.0}``. The
        stored (complete) parameters are returned; storing different parameters under
        an existing name is an error."""
        from decoding_assets.decoder import ContFragClusterlessClassifier

        check_name("decoding_param_name", decoding_param_name)
        model = decoding_model_from_params(params or {})
        complete = model.to_dict()
        assert ContFragClusterlessClassifier.from_dict(complete).to_dict() == complete
        self._insert_named_params("decoding_params", "decoding_param_name", decoding_param_name, complete)
        return complete

    def fetch_decoding_params(self, decoding_param_name: str) -> dict:
        return self._fetch_named_params("decoding_params", "decoding_param_name", decoding_param_name)

    def fetch_decoding_model(self, decoding_param_name: str, device=None):
        """An unfitted ``ContFragClusterlessClassifier`` rebuilt from a stored parameter set."""
        from decoding_assets.decoder import ContFragClusterlessClassifier

        return ContFragClusterlessClassifier.from_dict(self.fetch_decoding_params(decoding_param_name), device=device)

    def decoding_params(self) -> pd.DataFrame:
        return self.query("SELECT * FROM decoding_params ORDER BY decoding_param_name")

    def _insert_named_params(self, table: str, key: str, name: str, params: dict, replaceable: dict | None = None) -> None:
        """Store named parameters; the same again is a no-op, others under the name an
        error, unless what is stored equals ``replaceable`` (a placeholder)."""
        check_name(key, name)
        text = json.dumps(params, sort_keys=True)
        with self.transaction() as con:
            # table and key come from this module, never from users
            existing = con.execute(f"SELECT params FROM {table} WHERE {key} = ?", [name]).fetchone()
            if existing is not None and replaceable is not None and json.loads(existing[0]) == replaceable:
                con.execute(f"UPDATE {table} SET params = ? WHERE {key} = ?", [text, name])
                return
            if existing is not None:
                stored = json.loads(existing[0])
                if stored != json.loads(text):
                    given = json.loads(text)
                    differ = {k: (stored.get(k), given.get(k)) for k in sorted(set(stored) | set(given))
                              if stored.get(k) != given.get(k)}  # fmt: skip
                    raise CatalogError(
                        f"{key} {name!r} already exists with other parameters (stored vs given: "
                        + ", ".join(f"{k}: {a!r} vs {b!r}" for k, (a, b) in differ.items())
                        + "); choose a new name, or give the stored values to keep using it."
                    )
                return
            con.execute(f"INSERT INTO {table} ({key}, params) VALUES (?, ?)", [name, text])

    def _fetch_named_params(self, table: str, key: str, name: str) -> dict:
        value = self._scalar(f"SELECT params FROM {table} WHERE {key} = ?", [name])
        if value is None:
            known = self.query(f"SELECT {key} FROM {table} ORDER BY 1")[key].tolist()
            raise CatalogError(f"Unknown {key} {name!r}; known: {known or 'none'}.")
        return json.loads(value)

    # ------------------------------------------------------------------ selections and outputs

    def insert_selection(
        self,
        nwb_file_name: str,
        waveform_features_group_name: str,
        position_group_name: str,
        decoding_param_name: str,
        encoding_interval: str,
        decoding_interval: str,
        estimate_decoding_params: bool = False,
    ) -> str:
        """Record what to decode; returns its stable ``merge_id``. Every name must exist."""
        selection = dict(
            nwb_file_name=nwb_file_name,
            waveform_features_group_name=waveform_features_group_name,
            position_group_name=position_group_name,
            decoding_param_name=decoding_param_name,
            encoding_interval=encoding_interval,
            decoding_interval=decoding_interval,
            estimate_decoding_params=bool(estimate_decoding_params),
        )
        self.fetch_session(nwb_file_name)
        self.fetch_features_group(nwb_file_name, waveform_features_group_name)
        self.fetch_position_group(nwb_file_name, position_group_name)
        self.fetch_decoding_params(decoding_param_name)
        self.fetch_interval_list(nwb_file_name, encoding_interval)
        self.fetch_interval_list(nwb_file_name, decoding_interval)
        merge_id = merge_id_for(selection)
        with self.transaction() as con:
            con.execute(
                f"INSERT INTO decoding_selections ({', '.join(SELECTION_FIELDS)}, merge_id) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                [selection[k] for k in SELECTION_FIELDS] + [merge_id],
            )
        return merge_id

    def fetch_selection(self, merge_id: str) -> dict:
        row = self._one("SELECT * FROM decoding_selections WHERE merge_id = ?", [merge_id], f"Unknown merge_id {merge_id!r}.")
        row["estimate_decoding_params"] = bool(row["estimate_decoding_params"])
        return row

    def output_paths(self, merge_id: str) -> tuple[Path, Path]:
        """New paths for a run of a selection's decode: results and fitted model.

        Each run gets its own names, so a registered output is never overwritten; the
        previous run's files become orphans when the new one is registered. The paths
        are recorded as written by this catalog before anything is written, so
        ``cleanup`` can always reclaim them."""
        selection = self.fetch_selection(merge_id)
        folder = self.output_dir / "decoding" / selection["nwb_file_name"]
        folder.mkdir(parents=True, exist_ok=True)
        run = uuid.uuid4().hex[:12]
        results, model = folder / f"{merge_id}.{run}.nc", folder / f"{merge_id}.{run}.model.nc"
        self.record_written_files([results, model], kind="decoding")
        return results, model

    def position_output_path(self, nwb_file_name: str, interval_list_name: str, trodes_pos_params_name: str) -> Path:
        folder = self.output_dir / "position" / nwb_file_name
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{interval_list_name}__{trodes_pos_params_name}.nc"
        self.record_written_files([path], kind="position")
        return path

    def record_written_files(self, paths: Sequence[Path], kind: str) -> None:
        with self.transaction() as con:
            for path in paths:
                con.execute(
                    "INSERT INTO written_files (path, kind) VALUES (?, ?) ON CONFLICT DO NOTHING",
                    [str(Path(path).resolve()), kind],
                )

    def register_output(
        self,
        merge_id: str,
        *,
        path: Path,
        model_path: Path,
        code_version: str,
        input_versions: dict[str, dict[str, str]],
        n_time_bins: int,
        run_seconds: float,
        device: str,
        median_decoding_error_cm: float | None,
    ) -> dict:
        """Record a finished decode (replacing an earlier one of the same selection) and
        its lineage, in one transaction. ``input_versions``: {kind: {key: version}}."""
        self.fetch_selection(merge_id)
        path = Path(path).resolve()
        row = {
            "merge_id": merge_id,
            "path": str(path),
            "model_path": str(Path(model_path).resolve()),
            "size_bytes": path.stat().st_size,
            "checksum": file_checksum(path),
            "code_version": code_version,
            "input_versions": json.dumps(input_versions, sort_keys=True),
            "n_time_bins": int(n_time_bins),
            "run_seconds": float(run_seconds),
            "device": device,
            "median_decoding_error_cm": None if median_decoding_error_cm is None else float(median_decoding_error_cm),
        }
        with self.transaction() as con:
            con.execute("DELETE FROM lineage WHERE merge_id = ?", [merge_id])
            con.execute("DELETE FROM decoding_outputs WHERE merge_id = ?", [merge_id])
            con.execute(
                f"INSERT INTO decoding_outputs ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                list(row.values()),
            )
            for kind, versions in input_versions.items():
                for key, version in versions.items():
                    con.execute("INSERT INTO lineage VALUES (?, ?, ?, ?)", [merge_id, kind, key, str(version)])
        return row

    def outputs(self, nwb_file_name: str | None = None) -> pd.DataFrame:
        """Decoding outputs with their selections."""
        sql = (
            "SELECT s.*, o.* EXCLUDE (merge_id) FROM decoding_outputs o JOIN decoding_selections s USING (merge_id)"
        )
        if nwb_file_name is None:
            return self.query(sql + " ORDER BY o.created_at")
        return self.query(sql + " WHERE s.nwb_file_name = ? ORDER BY o.created_at", [nwb_file_name])

    def fetch_output(self, merge_id: str) -> dict:
        return self._one(
            "SELECT * FROM decoding_outputs WHERE merge_id = ?",
            [merge_id],
            f"No decoding output for merge_id {merge_id!r}: materialize it first.",
        )

    def lineage(self, merge_id: str) -> pd.DataFrame:
        return self.query("SELECT * FROM lineage WHERE merge_id = ? ORDER BY input_kind, input_key", [merge_id])

    # ------------------------------------------------------------------ fetching a decode's pieces

    def fetch_results(self, merge_id: str):
        """The decode as an ``xarray.Dataset`` (``state_bins`` MultiIndex rebuilt;
        ``interval_labels`` says which piece of the decoding interval each bin is in)."""
        from decoding_assets.decoder import load_results

        return load_results(self.fetch_output(merge_id)["path"])

    def fetch_model(self, merge_id: str, device=None):
        """The fitted ``ContFragClusterlessClassifier`` the decode used."""
        from decoding_assets.decoder import ContFragClusterlessClassifier

        return ContFragClusterlessClassifier.load_model(self.fetch_output(merge_id)["model_path"], device=device)

    def fetch_environments(self, merge_id: str):
        """The fitted spatial grid (``Environment``) of the decode."""
        return self.fetch_model(merge_id).environments

    def fetch_position_info(self, merge_id: str) -> pd.DataFrame:
        """The position group the decode used, upsampled: index time; position_x,
        position_y, orientation, velocity_x, velocity_y, speed."""
        from decoding_assets.pipeline import load_decoding_inputs

        return load_decoding_inputs(self, merge_id).position

    def fetch_spike_data(self, merge_id: str) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Spike times and waveform features per electrode group of the decode's
        waveform features group (in the group's order)."""
        from decoding_assets.pipeline import read_features_group

        selection = self.fetch_selection(merge_id)
        features = read_features_group(self, selection["nwb_file_name"], selection["waveform_features_group_name"])
        return [f.times for f in features], [f.features for f in features]

    def delete_output(self, merge_id: str) -> None:
        """Forget a decoding output; its files are removed by the next ``cleanup``."""
        with self.transaction() as con:
            con.execute("DELETE FROM lineage WHERE merge_id = ?", [merge_id])
            con.execute("DELETE FROM decoding_outputs WHERE merge_id = ?", [merge_id])

    def cleanup(self, dry_run: bool = True, min_age_s: float = 3600.0) -> list[Path]:
        """Delete files this catalog wrote that no output references any more.

        Only paths recorded in ``written_files`` are candidates, so other tools' files
        in the same folders are never touched; files younger than ``min_age_s`` are
        spared (a decode may be writing them now). Returns the paths deleted (or, with
        ``dry_run``, that would be).
        """
        orphans = self.query(
            "SELECT w.path FROM written_files w "
            "WHERE w.path NOT IN (SELECT path FROM decoding_outputs) "
            "AND w.path NOT IN (SELECT model_path FROM decoding_outputs) "
            "AND w.path NOT IN (SELECT path FROM position_outputs) "
            "AND w.path NOT IN (SELECT path FROM waveform_features_files) "
            "AND w.written_at <= current_timestamp - to_seconds(?) ORDER BY w.path",
            [float(min_age_s)],
        )["path"].tolist()
        paths = [Path(p) for p in orphans]
        if dry_run:
            return [p for p in paths if p.exists()]
        removed = []
        for path in paths:
            if path.exists():
                path.unlink()
                removed.append(path)
        with self.transaction() as con:
            for path in paths:
                con.execute("DELETE FROM written_files WHERE path = ?", [str(path)])
        return removed


def decoding_model_from_params(params: dict):
    """A classifier from a full ``to_dict()`` or from overrides of the defaults."""
    from decoding_assets.decoder import ContFragClusterlessClassifier
    from decoding_assets.decoder.classifier import DEFAULT_CLUSTERLESS_ALGORITHM_PARAMS

    if "clusterless_algorithm_params" in params or "environments" in params:
        return ContFragClusterlessClassifier.from_dict(params)
    algorithm = {k: v for k, v in params.items() if k in DEFAULT_CLUSTERLESS_ALGORITHM_PARAMS}
    rest = {k: v for k, v in params.items() if k not in DEFAULT_CLUSTERLESS_ALGORITHM_PARAMS}
    environment = rest.pop("place_bin_size", None)
    data = ContFragClusterlessClassifier(clusterless_algorithm_params=algorithm).to_dict()
    unknown = set(rest) - set(data)
    if unknown:
        raise CatalogError(f"Unknown decoding parameter(s) {sorted(unknown)}.")
    data.update(rest)
    if environment is not None:
        data["environments"]["place_bin_size"] = float(environment)
    return ContFragClusterlessClassifier.from_dict(data)

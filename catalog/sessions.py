"""Sessions (NWB files), their interval lists, task epochs and electrode groups."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from .connection import Database
from .errors import CatalogError, check_name, file_checksum

# the parameters recorded for a features set first seen in an NWB file
NWB_FEATURES_PARAMS = {"source": "nwb"}


class SessionStore:
    def __init__(self, db: Database, user: str):
        self.db, self.user = db, user

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
        the file (interval lists, epochs) and the catalog lacks is added, never changed,
        and where the file is, its size and mtime are brought up to date (a file moved
        or copied); a changed file under a registered name is an error.
        ``content_hash``: ``file_checksum`` of the file (computed if not given), against
        which the file is verified before a decode reads it. ``interval_lists``: {name:
        (valid_times (n, 2), source)}; ``epochs``: dicts with interval_list_name (an
        interval list of source "epoch"), epoch, task_name, task_environment,
        camera_id, epoch_kind ("run", "sleep" or None); ``electrode_groups``: [(name,
        n_channels, location)]; ``waveform_features``: dicts with electrode_group_name,
        features_param_name, n_spikes, n_features, source, content_hash.
        """
        nwb_path = Path(nwb_path).resolve()
        if not nwb_path.is_file():
            raise CatalogError(f"No NWB file at {nwb_path}.")
        nwb_file_name = check_name("nwb_file_name", nwb_path.name)
        content_hash = content_hash or file_checksum(nwb_path)
        stat = os.stat(nwb_path)
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
                raise CatalogError(
                    f"Session {nwb_file_name}: task epoch {row['interval_list_name']!r} is not an epoch."
                )
        for row in waveform_features:
            check_name("features_param_name", row["features_param_name"])

        def write(con):
            row = con.execute(
                "SELECT content_hash, nwb_path FROM sessions WHERE nwb_file_name = ?", [nwb_file_name]
            ).fetchone()
            if row is not None:
                if row[0] != content_hash:
                    raise CatalogError(
                        f"Session {nwb_file_name} is already registered (from {row[1]}) with different content. "
                        "A changed recording needs a new file name."
                    )
                con.execute(
                    "UPDATE sessions SET nwb_path = ?, size_bytes = ?, modified_ns = ? WHERE nwb_file_name = ?",
                    [str(nwb_path), stat.st_size, stat.st_mtime_ns, nwb_file_name],
                )
                _add_session_rows(con, nwb_file_name, intervals, epochs)
                return
            con.execute(
                "INSERT INTO sessions (nwb_file_name, nwb_path, content_hash, subject_id, session_description, "
                "session_start_time, created_by, size_bytes, modified_ns) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [nwb_file_name, str(nwb_path), content_hash, subject_id, session_description, session_start_time,
                 self.user, stat.st_size, stat.st_mtime_ns],
            )  # fmt: skip
            _add_session_rows(con, nwb_file_name, intervals, epochs)
            for name, n_channels, location in electrode_groups:
                con.execute(
                    "INSERT INTO electrode_groups VALUES (?, ?, ?, ?)", [nwb_file_name, name, int(n_channels), location]
                )
            for row in waveform_features:
                con.execute(
                    "INSERT INTO waveform_features_params (features_param_name, params, created_at, created_by) "
                    "VALUES (?, ?, current_timestamp, ?) ON CONFLICT DO NOTHING",
                    [row["features_param_name"], json.dumps(NWB_FEATURES_PARAMS), self.user],
                )
                con.execute(
                    "INSERT INTO waveform_features VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [nwb_file_name, row["electrode_group_name"], row["features_param_name"], int(row["n_spikes"]),
                     int(row["n_features"]), row["source"], row["content_hash"]],
                )  # fmt: skip

        self.db.write(write)
        return nwb_file_name

    def sessions(self) -> pd.DataFrame:
        return self.db.query("SELECT * FROM sessions ORDER BY nwb_file_name")

    def fetch_session(self, nwb_file_name: str) -> dict:
        return self.db.one(
            "SELECT * FROM sessions WHERE nwb_file_name = ?",
            [nwb_file_name],
            f"Unknown session {nwb_file_name!r}: register its NWB file first.",
        )

    def interval_lists(self, nwb_file_name: str) -> pd.DataFrame:
        """The session's interval lists: name, source, count, first start, last stop."""
        return self.db.query(
            "SELECT interval_list_name, source, len(valid_times) AS n_intervals, "
            "valid_times[1][1] AS start_time, valid_times[-1][2] AS stop_time "
            "FROM interval_lists WHERE nwb_file_name = ? ORDER BY start_time, interval_list_name",
            [nwb_file_name],
        )

    def epochs(self, nwb_file_name: str) -> pd.DataFrame:
        """The session's epochs in time order: interval_list_name, epoch, task_name,
        task_environment, camera_id, epoch_kind ("run", "sleep" or None), start, stop."""
        return self.db.query(
            "SELECT e.*, i.valid_times[1][1] AS start_time, i.valid_times[-1][2] AS stop_time FROM task_epochs e "
            "JOIN interval_lists i USING (nwb_file_name, interval_list_name) WHERE nwb_file_name = ? "
            "ORDER BY start_time, interval_list_name",
            [nwb_file_name],
        )

    def fetch_interval_list(self, nwb_file_name: str, interval_list_name: str) -> np.ndarray:
        """valid_times as an (n, 2) array of [start, stop] seconds."""
        value = self.db.scalar(
            "SELECT valid_times FROM interval_lists WHERE nwb_file_name = ? AND interval_list_name = ?",
            [nwb_file_name, interval_list_name],
        )
        if value is None:
            known = ", ".join(self.interval_lists(nwb_file_name)["interval_list_name"]) or "none"
            raise CatalogError(f"Session {nwb_file_name} has no interval list {interval_list_name!r} (known: {known}).")
        return np.asarray(value, dtype=float).reshape(-1, 2)


def _add_session_rows(con, nwb_file_name: str, intervals: list, epochs: Sequence[dict]) -> None:
    """A session's interval lists and task epochs; rows the catalog has are kept as they
    are (a session registered by an older version gets only what it lacks)."""
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

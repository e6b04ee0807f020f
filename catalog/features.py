"""Waveform features: what each session holds per electrode group, what was extracted
from raw recordings, and the groups of electrode groups decodes read."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import pandas as pd

from . import storage
from .connection import Database
from .errors import CatalogError, check_name
from .files import FileStore
from .integrity import file_identity
from .parameters import ParameterStore


class FeatureStore:
    def __init__(self, db: Database, user: str, files: FileStore, parameters: ParameterStore):
        self.db, self.user, self.files, self.parameters = db, user, files, parameters

    def waveform_features(self, nwb_file_name: str) -> pd.DataFrame:
        return self.db.query(
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
        available = [r[0] for r in self.db.rows(
            "SELECT electrode_group_name FROM waveform_features WHERE nwb_file_name = ? AND features_param_name = ? "
            "ORDER BY 1",
            [nwb_file_name, features_param_name],
        )]  # fmt: skip
        members = list(electrode_group_names) if electrode_group_names is not None else available
        missing = sorted(set(members) - set(available))
        if missing or not members:
            raise CatalogError(
                f"Session {nwb_file_name} has no {features_param_name!r} waveform features for electrode group(s) "
                f"{missing or '(none given)'}; available: {available or 'none'}."
            )
        wanted = sorted((m, features_param_name) for m in members)

        select = (
            "SELECT electrode_group_name, features_param_name FROM waveform_features_group_members "
            "WHERE nwb_file_name = ? AND waveform_features_group_name = ? ORDER BY 1"
        )
        conflict = CatalogError(
            f"Waveform features group {waveform_features_group_name!r} of {nwb_file_name} already exists with other "
            "members; choose a new name."
        )

        def write(con):
            stored = con.execute(select, [nwb_file_name, waveform_features_group_name]).fetchall()
            if stored:
                if [tuple(r) for r in stored] != wanted:
                    raise conflict
                return
            con.execute(
                "INSERT INTO waveform_features_groups (nwb_file_name, waveform_features_group_name, created_at, "
                "created_by) VALUES (?, ?, current_timestamp, ?) ON CONFLICT DO NOTHING",
                [nwb_file_name, waveform_features_group_name, self.user],
            )
            for member, param in wanted:
                con.execute(
                    "INSERT INTO waveform_features_group_members VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                    [nwb_file_name, waveform_features_group_name, member, param],
                )
            # another process creating the same name at once: the first one's members hold
            stored = con.execute(select, [nwb_file_name, waveform_features_group_name]).fetchall()
            if [tuple(r) for r in stored] != wanted:
                raise conflict

        self.db.write(write)

    def fetch_features_group(self, nwb_file_name: str, waveform_features_group_name: str) -> pd.DataFrame:
        """The group's electrode groups: features_param_name, content_hash, n_spikes,
        n_features, source and ``path`` (the extracted file; None: in the NWB file)."""
        df = self.db.query(
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

    def features_output_path(
        self, nwb_file_name: str, electrode_group_name: str, features_param_name: str, run_id: str | None = None
    ) -> Path:
        """A new path for one group's extracted features, recorded as being written by
        this process (and Dagster run ``run_id``) before anything is written (a
        re-extraction never overwrites a file)."""
        (path,) = self.files.new_paths(
            "waveform_features", nwb_file_name, f"{electrode_group_name}__{features_param_name}", (".nc",),
            {"electrode_group_name": electrode_group_name, "features_param_name": features_param_name}, run_id,
        )  # fmt: skip
        return path

    def register_extracted_features(self, nwb_file_name: str, features_param_name: str, rows: Sequence[dict]) -> None:
        """Record features extracted from a raw recording, every group in one transaction,
        replacing an earlier extraction with the same parameter set (its files are
        orphaned), and register their files.

        Each row: electrode_group_name, path, raw_series_name, n_spikes, electrode_ids,
        bad_electrode_ids, code_version, run_seconds, content_hash (the features'
        version, which decodes record). The parameters are those stored under
        ``features_param_name``.
        """
        params = self.parameters.fetch_features_params(features_param_name)
        known = {r[0] for r in self.db.rows(
            "SELECT electrode_group_name FROM electrode_groups WHERE nwb_file_name = ?", [nwb_file_name]
        )}  # fmt: skip
        prepared = []
        for row in rows:
            group = row["electrode_group_name"]
            if group not in known:
                raise CatalogError(f"Session {nwb_file_name} has no electrode group {group!r}.")
            path = storage.resolve(row["path"])
            owner = f"the waveform features of session {nwb_file_name}, electrode group {group} ({features_param_name})"
            prepared.append((row, group, path, file_identity(path, owner)))

        def write(con):
            for row, group, path, identity in prepared:
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
                    "INSERT INTO waveform_features VALUES (?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (nwb_file_name, electrode_group_name, features_param_name) DO UPDATE SET "
                    "n_spikes = excluded.n_spikes, n_features = excluded.n_features, source = excluded.source, "
                    "content_hash = excluded.content_hash",
                    [nwb_file_name, group, features_param_name, int(row["n_spikes"]), len(row["electrode_ids"]),
                     f"raw:{row['raw_series_name']}", row["content_hash"]],
                )  # fmt: skip
                previous = con.execute(
                    "SELECT path FROM waveform_features_files WHERE nwb_file_name = ? AND electrode_group_name = ? "
                    "AND features_param_name = ?",
                    [nwb_file_name, group, features_param_name],
                ).fetchone()
                if previous is not None and previous[0] != str(path):
                    self.files.mark_orphaned(con, [previous[0]])
                con.execute(
                    "INSERT INTO waveform_features_files (nwb_file_name, electrode_group_name, features_param_name, "
                    "path, raw_series_name, electrode_ids, bad_electrode_ids, params, code_version, run_seconds, "
                    "created_at, created_by, size_bytes, modified_ns, checksum) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, current_timestamp, ?, ?, ?, ?) "
                    "ON CONFLICT (nwb_file_name, electrode_group_name, features_param_name) DO UPDATE SET "
                    "path = excluded.path, "
                    "raw_series_name = excluded.raw_series_name, electrode_ids = excluded.electrode_ids, "
                    "bad_electrode_ids = excluded.bad_electrode_ids, params = excluded.params, "
                    "code_version = excluded.code_version, run_seconds = excluded.run_seconds, "
                    "created_at = excluded.created_at, created_by = excluded.created_by, "
                    "size_bytes = excluded.size_bytes, modified_ns = excluded.modified_ns, "
                    "checksum = excluded.checksum",
                    [nwb_file_name, group, features_param_name, str(path), row["raw_series_name"],
                     [int(i) for i in row["electrode_ids"]], [int(i) for i in row["bad_electrode_ids"]],
                     json.dumps(params, sort_keys=True), row["code_version"], float(row["run_seconds"]), self.user,
                     identity.size_bytes, identity.modified_ns, identity.checksum],
                )  # fmt: skip
            self.files.mark_registered(
                con, [path for _, _, path, _ in prepared], f"the waveform features of session {nwb_file_name}"
            )

        self.db.write(write)

    def extracted_features(self, nwb_file_name: str) -> pd.DataFrame:
        """Features extracted from raw recordings, with their files and lineage."""
        return self.db.query(
            "SELECT f.*, x.* EXCLUDE (nwb_file_name, electrode_group_name, features_param_name) "
            "FROM waveform_features f JOIN waveform_features_files x USING "
            "(nwb_file_name, electrode_group_name, features_param_name) WHERE f.nwb_file_name = ? "
            "ORDER BY f.features_param_name, f.electrode_group_name",
            [nwb_file_name],
        )

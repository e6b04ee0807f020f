"""Decoding selections, their outputs and lineage, the one read a decode needs, and
which selections want an output."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from . import storage
from .connection import Database
from .errors import CatalogError
from .files import FileStore
from .integrity import OK, IntegrityStore, file_identity
from .selection import SELECTION_FIELDS, DecodingSelection


@dataclass(frozen=True)
class DecodeAnalyses:
    """What was measured on a decode, as the catalog keeps it: medians over its time
    bins (None where nothing was measured) and the fraction of time in each state."""

    median_decoding_error_cm: float | None = None
    median_ahead_behind_cm: float | None = None
    median_abs_ahead_behind_cm: float | None = None
    median_hpd_area: float | None = None  # cm^2 (cm on a track), of the region holding hpd_mass
    hpd_mass: float | None = None
    state_fractions: tuple[tuple[str, float], ...] = ()

    def columns(self) -> dict:
        """The decoding_summaries columns."""
        return {
            name: _number(getattr(self, name))
            for name in ("median_decoding_error_cm", "median_ahead_behind_cm", "median_abs_ahead_behind_cm",
                         "median_hpd_area", "hpd_mass")
        }  # fmt: skip


def _delete_output_rows(con, merge_id: str) -> None:
    """A decoding output's row and its summary (its lineage is the caller's)."""
    con.execute("DELETE FROM decoding_state_fractions WHERE merge_id = ?", [merge_id])
    con.execute("DELETE FROM decoding_summaries WHERE merge_id = ?", [merge_id])
    con.execute("DELETE FROM decoding_outputs WHERE merge_id = ?", [merge_id])


def _number(value) -> float | None:
    """A float, or None for None and NaN (SQL's NULL: nothing measured)."""
    return None if value is None or value != value else float(value)


@dataclass(frozen=True)
class FeaturesSource:
    """One electrode group's waveform features: in the NWB file (``path`` None) or in a
    file extracted from its raw recording."""

    electrode_group_name: str
    features_param_name: str
    content_hash: str
    path: str | None
    size_bytes: int | None = None  # the file's identity as registered, to verify it
    modified_ns: int | None = None
    checksum: str | None = None


@dataclass(frozen=True)
class PositionSource:
    """One processed position file of a position group."""

    interval_list_name: str
    trodes_pos_params_name: str
    path: str
    checksum: str
    size_bytes: int | None = None  # the file's identity as registered, to verify it
    modified_ns: int | None = None


@dataclass(frozen=True, eq=False)
class DecodeSources:
    """Everything the catalog knows that one decode reads, read at once."""

    merge_id: str
    selection: DecodingSelection
    nwb_path: str
    session_content_hash: str
    features: tuple[FeaturesSource, ...]
    position: tuple[PositionSource, ...]
    upsample_rate: float
    position_variables: tuple[str, ...]
    decoding_params: dict
    encoding_times: np.ndarray  # (n, 2)
    decoding_times: np.ndarray  # (n, 2)
    nwb_size_bytes: int | None = None  # the NWB file's identity as registered, to verify it
    nwb_modified_ns: int | None = None


class DecodeStore:
    def __init__(self, db: Database, user: str, files: FileStore, integrity: IntegrityStore):
        self.db, self.user, self.files, self.integrity = db, user, files, integrity

    def insert_selection(self, selection: DecodingSelection) -> str:
        """Record what to decode; returns its ``merge_id``. Every name it holds must
        exist (the catalog's foreign keys say which is missing otherwise)."""
        if not isinstance(selection, DecodingSelection):
            raise TypeError(f"insert_selection takes a DecodingSelection, got {type(selection).__name__}.")
        with self.db.connect():
            self._check_names(selection)
            self.db.write(lambda con: con.execute(
                f"INSERT INTO decoding_selections ({', '.join(SELECTION_FIELDS)}, merge_id, created_by) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                [getattr(selection, k) for k in SELECTION_FIELDS] + [selection.merge_id, self.user],
            ))  # fmt: skip
        return selection.merge_id

    def _check_names(self, s: DecodingSelection) -> None:
        """One query saying which of a selection's names the catalog lacks."""
        found = self.db.rows(
            "SELECT "
            "(SELECT count(*) FROM sessions WHERE nwb_file_name = $1), "
            "(SELECT count(*) FROM waveform_features_groups WHERE nwb_file_name = $1 AND waveform_features_group_name = $2), "
            "(SELECT count(*) FROM position_groups WHERE nwb_file_name = $1 AND position_group_name = $3), "
            "(SELECT count(*) FROM decoding_params WHERE decoding_param_name = $4), "
            "(SELECT count(*) FROM interval_lists WHERE nwb_file_name = $1 AND interval_list_name = $5), "
            "(SELECT count(*) FROM interval_lists WHERE nwb_file_name = $1 AND interval_list_name = $6)",
            [s.nwb_file_name, s.waveform_features_group_name, s.position_group_name, s.decoding_param_name,
             s.encoding_interval, s.decoding_interval],
        )[0]  # fmt: skip
        what = [
            f"session {s.nwb_file_name!r} (register its NWB file first)",
            f"waveform features group {s.waveform_features_group_name!r} of {s.nwb_file_name}",
            f"position group {s.position_group_name!r} of {s.nwb_file_name}",
            f"decoding_param_name {s.decoding_param_name!r}",
            f"encoding interval {s.encoding_interval!r} of {s.nwb_file_name}",
            f"decoding interval {s.decoding_interval!r} of {s.nwb_file_name}",
        ]
        missing = [w for w, n in zip(what, found) if not n]
        if missing:
            raise CatalogError("Cannot select this decode: unknown " + "; unknown ".join(missing) + ".")

    def fetch_selection(self, merge_id: str) -> DecodingSelection:
        row = self.db.one(
            "SELECT * FROM decoding_selections WHERE merge_id = ?", [merge_id], f"Unknown merge_id {merge_id!r}."
        )
        return DecodingSelection.from_row(row)

    def fetch_decode_sources(self, merge_id: str) -> DecodeSources:
        """The selection, session, features, position group, parameters and intervals
        of a decode, read on one connection."""
        with self.db.connect():
            s = self.fetch_selection(merge_id)
            where = f"Decode {merge_id} (session {s.nwb_file_name})"
            session = self.db.rows(
                "SELECT nwb_path, content_hash, size_bytes, modified_ns FROM sessions WHERE nwb_file_name = ?",
                [s.nwb_file_name],
            )
            features = self.db.rows(
                "SELECT m.electrode_group_name, m.features_param_name, f.content_hash, x.path, x.size_bytes, "
                "x.modified_ns, x.checksum "
                "FROM waveform_features_group_members m JOIN waveform_features f USING "
                "(nwb_file_name, electrode_group_name, features_param_name) LEFT JOIN waveform_features_files x USING "
                "(nwb_file_name, electrode_group_name, features_param_name) "
                "WHERE m.nwb_file_name = ? AND m.waveform_features_group_name = ? ORDER BY m.electrode_group_name",
                [s.nwb_file_name, s.waveform_features_group_name],
            )
            group = self.db.rows(
                "SELECT upsample_rate, position_variables FROM position_groups WHERE nwb_file_name = ? "
                "AND position_group_name = ?",
                [s.nwb_file_name, s.position_group_name],
            )
            position = self.db.rows(
                "SELECT m.interval_list_name, m.trodes_pos_params_name, o.path, o.checksum, o.size_bytes, "
                "o.modified_ns FROM position_group_members m "
                "JOIN position_outputs o USING (nwb_file_name, interval_list_name, trodes_pos_params_name) "
                "WHERE m.nwb_file_name = ? AND m.position_group_name = ? ORDER BY 1",
                [s.nwb_file_name, s.position_group_name],
            )
            params = self.db.scalar(
                "SELECT params FROM decoding_params WHERE decoding_param_name = ?", [s.decoding_param_name]
            )
            times = dict(self.db.rows(
                "SELECT interval_list_name, valid_times FROM interval_lists WHERE nwb_file_name = ? "
                "AND interval_list_name IN (?, ?)",
                [s.nwb_file_name, s.encoding_interval, s.decoding_interval],
            ))  # fmt: skip
        if not (session and features and group and position and params) or len(times) < len(
            {s.encoding_interval, s.decoding_interval}
        ):
            raise CatalogError(f"{where}: the catalog lost part of what it selected; select it again.")
        return DecodeSources(
            merge_id=merge_id,
            selection=s,
            nwb_path=session[0][0],
            session_content_hash=session[0][1],
            features=tuple(FeaturesSource(*row) for row in features),
            position=tuple(PositionSource(*row) for row in position),
            upsample_rate=float(group[0][0]),
            position_variables=tuple(group[0][1]),
            decoding_params=json.loads(params),
            encoding_times=np.asarray(times[s.encoding_interval], dtype=float).reshape(-1, 2),
            decoding_times=np.asarray(times[s.decoding_interval], dtype=float).reshape(-1, 2),
            nwb_size_bytes=session[0][2],
            nwb_modified_ns=session[0][3],
        )

    def output_paths(self, selection: DecodingSelection, run_id: str | None = None) -> tuple[Path, Path]:
        """New paths for a run of a selection's decode: results and fitted model,
        recorded as being written by this process (and Dagster run ``run_id``).

        Each run gets its own names, so a registered output is never overwritten; the
        previous run's files become orphans when the new one is registered."""
        results, model = self.files.new_paths(
            "decoding", selection.nwb_file_name, selection.merge_id, (".nc", ".model.nc"),
            {"merge_id": selection.merge_id}, run_id,
        )  # fmt: skip
        return results, model

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
        analyses: DecodeAnalyses | None = None,
    ) -> dict:
        """Record a finished decode (replacing an earlier one of the same selection) and
        its lineage, in one transaction, with its files' identities; the files are
        registered and a replaced output's files orphaned in the same transaction, and a
        deletion of the selection is undone. ``input_versions``: {kind: {key: version}}.
        A CatalogError if a file's write intent is gone (``cleanup`` took its writer for
        dead): run the decode again. ``analyses``: what was measured on it (NULL if None)."""
        path, model_path = storage.resolve(path), storage.resolve(model_path)
        owner = f"decoding output {merge_id}"
        results, model = file_identity(path, owner), file_identity(model_path, owner)
        row = {
            "merge_id": merge_id,
            "path": str(path),
            "model_path": str(model_path),
            "size_bytes": results.size_bytes,
            "modified_ns": results.modified_ns,
            "checksum": results.checksum,
            "model_size_bytes": model.size_bytes,
            "model_modified_ns": model.modified_ns,
            "model_checksum": model.checksum,
            "file_status": OK,
            "code_version": code_version,
            "input_versions": json.dumps(input_versions, sort_keys=True),
            "n_time_bins": int(n_time_bins),
            "run_seconds": float(run_seconds),
            "device": device,
            "median_decoding_error_cm": (analyses or DecodeAnalyses()).columns()["median_decoding_error_cm"],
            "created_by": self.user,
        }
        lineage = [
            (kind, key, str(version)) for kind, versions in input_versions.items() for key, version in versions.items()
        ]

        def write(con):
            selected = con.execute("SELECT count(*) FROM decoding_selections WHERE merge_id = ?", [merge_id]).fetchone()
            if not selected[0]:
                raise CatalogError(f"Unknown merge_id {merge_id!r}: insert its selection first.")
            self.files.mark_registered(con, [path, model_path], owner)
            previous = con.execute(
                "SELECT path, model_path FROM decoding_outputs WHERE merge_id = ?", [merge_id]
            ).fetchone()
            if previous is not None:
                con.execute("DELETE FROM lineage WHERE merge_id = ?", [merge_id])
                _delete_output_rows(con, merge_id)
                self.files.mark_orphaned(con, sorted(set(previous) - {str(path), str(model_path)}))
            con.execute("DELETE FROM deleted_selections WHERE merge_id = ?", [merge_id])
            # two workers registering the same decode at once collide on the key, and
            # the retry replaces the first one's record
            con.execute(
                f"INSERT INTO decoding_outputs ({', '.join(row)}, created_at, checked_at) VALUES "
                f"({', '.join('?' * len(row))}, current_timestamp, current_timestamp)",
                list(row.values()),
            )
            if lineage:
                con.execute(
                    "INSERT INTO lineage VALUES " + ", ".join(["(?, ?, ?, ?)"] * len(lineage)),
                    [value for entry in lineage for value in (merge_id, *entry)],
                )
            if analyses is not None:
                summary = {"merge_id": merge_id, **analyses.columns()}
                con.execute(
                    f"INSERT INTO decoding_summaries ({', '.join(summary)}) VALUES ({', '.join('?' * len(summary))})",
                    list(summary.values()),
                )
            if analyses is not None and analyses.state_fractions:
                con.execute(
                    "INSERT INTO decoding_state_fractions VALUES " + ", ".join(["(?, ?, ?)"] * len(analyses.state_fractions)),
                    [value for state, fraction in analyses.state_fractions for value in (merge_id, state, _number(fraction))],
                )

        self.db.write(write)
        return row

    def outputs(self, nwb_file_name: str | None = None) -> pd.DataFrame:
        """Decoding outputs with their selections (and who made them: ``created_by``) and
        summaries (``median_hpd_area``, ...; NULL for an output decoded before summaries)."""
        sql = (
            "SELECT s.* EXCLUDE (created_by), o.* EXCLUDE (merge_id), m.* EXCLUDE (merge_id, median_decoding_error_cm) "
            "FROM decoding_outputs o JOIN decoding_selections s USING (merge_id) "
            "LEFT JOIN decoding_summaries m USING (merge_id)"
        )
        if nwb_file_name is None:
            return self.db.query(sql + " ORDER BY o.created_at")
        return self.db.query(sql + " WHERE s.nwb_file_name = ? ORDER BY o.created_at", [nwb_file_name])

    def state_fractions(self, merge_id: str | None = None) -> pd.DataFrame:
        """The fraction of time each decode spends in each state: merge_id, state, fraction."""
        sql = "SELECT merge_id, state, fraction FROM decoding_state_fractions"
        if merge_id is None:
            return self.db.query(sql + " ORDER BY merge_id, state")
        return self.db.query(sql + " WHERE merge_id = ? ORDER BY state", [merge_id])

    def fetch_output(self, merge_id: str) -> dict:
        return self.db.one(
            "SELECT o.*, m.* EXCLUDE (merge_id, median_decoding_error_cm) FROM decoding_outputs o "
            "LEFT JOIN decoding_summaries m USING (merge_id) WHERE merge_id = ?",
            [merge_id],
            f"No decoding output for merge_id {merge_id!r}: materialize it first.",
        )

    def lineage(self, merge_id: str) -> pd.DataFrame:
        """What a decode read, one row per input (kind, key, version), with who made the
        decode and when (``created_by``, ``created_at``) and who made each input
        (``input_created_by``, where the catalog knows)."""
        return self.db.query(
            "SELECT l.merge_id, l.input_kind, l.input_key, l.input_version, o.created_by, o.created_at, "
            "CASE l.input_kind "
            "  WHEN 'session' THEN (SELECT created_by FROM sessions WHERE nwb_file_name = l.input_key) "
            "  WHEN 'decoding_params' THEN (SELECT created_by FROM decoding_params WHERE decoding_param_name = l.input_key) "
            "  WHEN 'position' THEN (SELECT created_by FROM position_outputs p WHERE p.nwb_file_name = s.nwb_file_name "
            "    AND p.interval_list_name || '/' || p.trodes_pos_params_name = l.input_key) "
            "  WHEN 'waveform_features' THEN coalesce((SELECT max(x.created_by) FROM waveform_features_files x "
            "    JOIN waveform_features_group_members m USING (nwb_file_name, electrode_group_name, features_param_name) "
            "    WHERE m.nwb_file_name = s.nwb_file_name AND m.waveform_features_group_name = s.waveform_features_group_name "
            "    AND x.electrode_group_name = l.input_key), "
            "    (SELECT created_by FROM sessions WHERE nwb_file_name = s.nwb_file_name)) "
            "END AS input_created_by "
            "FROM lineage l JOIN decoding_outputs o USING (merge_id) JOIN decoding_selections s USING (merge_id) "
            "WHERE l.merge_id = ? ORDER BY l.input_kind, l.input_key",
            [merge_id],
        )

    def delete_output(self, merge_id: str, force: bool = False) -> None:
        """Forget a decoding output; its files are removed by the next ``cleanup``, and
        its selection is recorded as deleted (who, when: ``deleted_selections``) so that
        automation does not decode it again by itself. Only whoever made it may, unless
        ``force``."""

        def write(con):
            row = con.execute(
                "SELECT created_by, path, model_path FROM decoding_outputs WHERE merge_id = ?", [merge_id]
            ).fetchone()
            if row is None:
                raise CatalogError(f"No decoding output for merge_id {merge_id!r}.")
            if row[0] is not None and row[0] != self.user and not force:
                raise CatalogError(
                    f"The decoding output {merge_id} was made by {row[0]}, not by you ({self.user}); ask them, or "
                    "delete it with force=True (decoding-assets catalog delete --force)."
                )
            self._forget(con, merge_id, row[1:])
            con.execute(
                "INSERT INTO deleted_selections (merge_id, deleted_by, deleted_at) VALUES (?, ?, current_timestamp) "
                "ON CONFLICT (merge_id) DO UPDATE SET deleted_by = excluded.deleted_by, "
                "deleted_at = excluded.deleted_at",
                [merge_id, self.user],
            )

        self.db.write(write)

    def forget_bad_output(self, merge_id: str) -> None:
        """Repair: forget a decoding output whose results or model file is missing or
        altered (checked again now), with its lineage, in one transaction. Its selection
        stays, so it is wanted again (``missing_outputs``) and decoded anew; its files go
        at the next ``cleanup``. An output whose files are fine is refused (delete it
        with ``delete_output``)."""
        checks = self.integrity.check_output(merge_id)
        if all(c.status == OK for c in checks):
            raise CatalogError(
                f"The decoding output {merge_id} has its results and model files as registered: nothing to repair. "
                "Delete it with delete_output if you no longer want it."
            )
        files = [c.record.path for c in checks]

        def write(con):
            # a new decode registered since the check is not the bad output
            if con.execute(
                "SELECT count(*) FROM decoding_outputs WHERE merge_id = ? AND path = ?", [merge_id, files[0]]
            ).fetchone()[0]:
                self._forget(con, merge_id, files)

        self.db.write(write)

    def _forget(self, con, merge_id: str, files) -> None:
        con.execute("DELETE FROM lineage WHERE merge_id = ?", [merge_id])
        _delete_output_rows(con, merge_id)
        self.files.mark_orphaned(con, list(files))

    def deleted_selections(self, nwb_file_name: str | None = None) -> pd.DataFrame:
        """Selections whose output a user deleted (``deleted_by``, ``deleted_at``):
        automation leaves them alone until someone decodes them explicitly."""
        sql = (
            "SELECT s.*, d.deleted_by, d.deleted_at FROM deleted_selections d "
            "JOIN decoding_selections s USING (merge_id)"
        )
        if nwb_file_name is None:
            return self.db.query(sql + " ORDER BY d.deleted_at")
        return self.db.query(sql + " WHERE s.nwb_file_name = ? ORDER BY d.deleted_at", [nwb_file_name])

    def missing_outputs(self, nwb_file_name: str | None = None) -> pd.DataFrame:
        """Selections wanted but without an output: no output registered, and not deleted
        by a user."""
        sql = (
            "SELECT s.* FROM decoding_selections s WHERE NOT EXISTS (SELECT 1 FROM decoding_outputs o WHERE "
            "o.merge_id = s.merge_id) AND NOT EXISTS (SELECT 1 FROM deleted_selections d WHERE d.merge_id = s.merge_id)"
        )
        if nwb_file_name is None:
            return self.db.query(sql + " ORDER BY s.merge_id")
        return self.db.query(sql + " AND s.nwb_file_name = ? ORDER BY s.merge_id", [nwb_file_name])

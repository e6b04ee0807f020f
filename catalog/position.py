"""Processed position (one file per epoch and parameter set) and position groups."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import pandas as pd

from . import storage
from .connection import Database
from .errors import CatalogError, check_name
from .files import FileStore
from .integrity import file_identity

POSITION_VARIABLES = ("position_x", "position_y")


class PositionStore:
    def __init__(self, db: Database, user: str, files: FileStore):
        self.db, self.user, self.files = db, user, files

    def position_output_path(
        self, nwb_file_name: str, interval_list_name: str, trodes_pos_params_name: str, run_id: str | None = None
    ) -> Path:
        """A new path for an interval's processed position, recorded as being written by
        this process (and Dagster run ``run_id``); each run gets its own, so a
        registered file is never overwritten."""
        (path,) = self.files.new_paths(
            "position", nwb_file_name, f"{interval_list_name}__{trodes_pos_params_name}", (".nc",),
            {"interval_list_name": interval_list_name, "trodes_pos_params_name": trodes_pos_params_name}, run_id,
        )  # fmt: skip
        return path

    def register_position_output(
        self, nwb_file_name: str, interval_list_name: str, trodes_pos_params_name: str, path: Path, n_samples: int
    ) -> None:
        """Record processed position (replacing the interval's earlier file, which is
        orphaned) and register its file, in one transaction."""
        path = storage.resolve(path)
        owner = f"the position of session {nwb_file_name}, interval {interval_list_name} ({trodes_pos_params_name})"
        identity = file_identity(path, owner)
        key = [nwb_file_name, interval_list_name, trodes_pos_params_name]
        row = [*key, str(path), int(n_samples), identity.checksum, self.user, identity.size_bytes, identity.modified_ns]

        def write(con):
            self.files.mark_registered(con, [path], owner)
            previous = con.execute(
                "SELECT path FROM position_outputs WHERE nwb_file_name = ? AND interval_list_name = ? "
                "AND trodes_pos_params_name = ?",
                key,
            ).fetchone()
            if previous is not None and previous[0] != str(path):
                self.files.mark_orphaned(con, [previous[0]])
            con.execute(
                "INSERT INTO position_outputs (nwb_file_name, interval_list_name, trodes_pos_params_name, path, "
                "n_samples, checksum, created_at, created_by, size_bytes, modified_ns) "
                "VALUES (?, ?, ?, ?, ?, ?, current_timestamp, ?, ?, ?) "
                "ON CONFLICT (nwb_file_name, interval_list_name, trodes_pos_params_name) DO UPDATE "
                "SET path = excluded.path, n_samples = excluded.n_samples, checksum = excluded.checksum, "
                "created_at = excluded.created_at, created_by = excluded.created_by, "
                "size_bytes = excluded.size_bytes, modified_ns = excluded.modified_ns",
                row,
            )

        self.db.write(write)

    def position_outputs(self, nwb_file_name: str) -> pd.DataFrame:
        return self.db.query("SELECT * FROM position_outputs WHERE nwb_file_name = ? ORDER BY 2", [nwb_file_name])

    def create_position_group(
        self,
        nwb_file_name: str,
        position_group_name: str,
        interval_list_names: Sequence[str],
        trodes_pos_params_name: str = "default_decoding",
        upsample_rate: float = 500.0,
        position_variables: Sequence[str] = POSITION_VARIABLES,
    ) -> None:
        """Name one or more processed position sources, the rate to upsample them to and
        the columns to decode."""
        check_name("position_group_name", position_group_name)
        if upsample_rate <= 0:
            raise CatalogError(f"upsample_rate must be positive, got {upsample_rate}.")
        if not position_variables or set(position_variables) - set(POSITION_VARIABLES):
            raise CatalogError(
                f"position_variables must be drawn from {list(POSITION_VARIABLES)}, got {list(position_variables)}."
            )
        outputs = {r[0] for r in self.db.rows(
            "SELECT interval_list_name FROM position_outputs WHERE nwb_file_name = ? AND trodes_pos_params_name = ?",
            [nwb_file_name, trodes_pos_params_name],
        )}  # fmt: skip
        missing = sorted(set(interval_list_names) - outputs)
        if missing or not interval_list_names:
            raise CatalogError(
                f"Session {nwb_file_name} has no position processed with {trodes_pos_params_name!r} for interval(s) "
                f"{missing or '(none given)'}; processed: {sorted(outputs) or 'none'}."
            )
        wanted = (float(upsample_rate), list(position_variables), sorted(interval_list_names))
        key = [nwb_file_name, position_group_name]

        def stored(con):
            group = con.execute(
                "SELECT upsample_rate, position_variables FROM position_groups WHERE nwb_file_name = ? "
                "AND position_group_name = ?",
                key,
            ).fetchone()
            members = con.execute(
                "SELECT interval_list_name FROM position_group_members WHERE nwb_file_name = ? "
                "AND position_group_name = ? ORDER BY 1",
                key,
            ).fetchall()
            return None if group is None else (group[0], list(group[1]), [r[0] for r in members])

        def write(con):
            existing = stored(con)
            if existing is None:
                con.execute(
                    "INSERT INTO position_groups (nwb_file_name, position_group_name, upsample_rate, position_variables, "
                    "created_at, created_by) VALUES (?, ?, ?, ?, current_timestamp, ?) ON CONFLICT DO NOTHING",
                    [*key, wanted[0], wanted[1], self.user],
                )
                for name in wanted[2]:
                    con.execute(
                        "INSERT INTO position_group_members VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                        [*key, name, trodes_pos_params_name],
                    )
                existing = stored(con)  # another process creating the same name at once: the first one holds
            if existing != wanted:
                raise CatalogError(
                    f"Position group {position_group_name!r} of {nwb_file_name} already exists with other "
                    "settings; choose a new name."
                )

        self.db.write(write)

    def fetch_position_group(self, nwb_file_name: str, position_group_name: str) -> dict:
        """upsample_rate, position_variables and the members' processed position files."""
        with self.db.connect():
            group = self.db.rows(
                "SELECT upsample_rate, position_variables FROM position_groups WHERE nwb_file_name = ? "
                "AND position_group_name = ?",
                [nwb_file_name, position_group_name],
            )
            if not group:
                raise CatalogError(
                    f"Unknown position group {position_group_name!r} for session {nwb_file_name}: "
                    "create it with create_position_group."
                )
            members = self.db.query(
                "SELECT m.interval_list_name, m.trodes_pos_params_name, o.path, o.checksum FROM position_group_members m "
                "JOIN position_outputs o USING (nwb_file_name, interval_list_name, trodes_pos_params_name) "
                "WHERE m.nwb_file_name = ? AND m.position_group_name = ? ORDER BY 1",
                [nwb_file_name, position_group_name],
            )
        return {"upsample_rate": float(group[0][0]), "position_variables": list(group[0][1]), "members": members}

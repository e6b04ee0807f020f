"""The files the catalog hands out paths for, and cleaning up the ones nothing uses."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Sequence

from .connection import Database
from .errors import CatalogError


class FileStore:
    """Output files under ``output_dir``. A path is recorded in ``written_files``
    before anything is written to it, so ``cleanup`` can always reclaim it and never
    touches another tool's files."""

    def __init__(self, db: Database, user: str, output_dir: Path | None):
        self.db, self.user, self.output_dir = db, user, output_dir

    def new_path(self, kind: str, nwb_file_name: str, stem: str, suffix: str = ".nc", unique: bool = True) -> Path:
        """``<output_dir>/<kind>/<nwb_file_name>/<stem>[.<run>]<suffix>``, recorded as
        written. ``unique``: a new name each time, so a registered file is never
        overwritten by a rerun."""
        if self.output_dir is None:
            raise CatalogError(
                f"This catalog ({self.db.location}) has no output folder: open it with output_dir= a folder every "
                "worker can reach (the --outputs option, or DECODING_ASSETS_OUTPUTS)."
            )
        folder = self.output_dir / kind / nwb_file_name
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / (f"{stem}.{uuid.uuid4().hex[:12]}{suffix}" if unique else f"{stem}{suffix}")
        self.record([path], kind)
        return path

    def record(self, paths: Sequence[Path], kind: str) -> None:
        def write(con):
            for path in paths:
                con.execute(
                    "INSERT INTO written_files (path, kind, written_at, created_by) VALUES (?, ?, current_timestamp, ?) "
                    "ON CONFLICT DO NOTHING",
                    [str(Path(path).resolve()), kind, self.user],
                )

        self.db.write(write)

    def cleanup(self, dry_run: bool = True, min_age_s: float = 3600.0) -> list[Path]:
        """Delete files this catalog wrote that no output references any more.

        Only paths recorded in ``written_files`` are candidates, so other tools' files
        in the same folders are never touched; files younger than ``min_age_s`` are
        spared (a decode may be writing them now). Returns the paths deleted (or, with
        ``dry_run``, that would be).
        """
        orphans = self.db.rows(
            "SELECT w.path FROM written_files w "
            "WHERE w.path NOT IN (SELECT path FROM decoding_outputs) "
            "AND w.path NOT IN (SELECT model_path FROM decoding_outputs) "
            "AND w.path NOT IN (SELECT path FROM position_outputs) "
            "AND w.path NOT IN (SELECT path FROM waveform_features_files) "
            "AND w.written_at <= current_timestamp - to_seconds(?) ORDER BY w.path",
            [float(min_age_s)],
        )
        paths = [Path(p) for (p,) in orphans]
        if dry_run:
            return [p for p in paths if p.exists()]
        removed = []
        for path in paths:
            if path.exists():
                path.unlink()
                removed.append(path)

        def forget(con):
            for path in paths:
                con.execute("DELETE FROM written_files WHERE path = ?", [str(path)])

        self.db.write(forget)
        return removed

"""What the catalog hands out is what it registered: every registered file (a session's
NWB file, position, extracted waveform features, decoding results and fitted models)
keeps its size, st_mtime_ns and checksum, and is verified against them before it is
read.

The size and mtime are the fast path: both equal, the file is trusted; either differs,
the file is hashed. Only the content counts: a file whose mtime alone changed (a
``touch``, a copy) gets its new mtime recorded and is trusted again. ``full=True``
always hashes. An object in a store (an output URL) is checked the same way, its
version token (storage.py) standing for the mtime, and hashed as it streams.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Collection, Sequence

import pandas as pd

from . import storage
from .connection import Database
from .errors import CatalogError

if TYPE_CHECKING:  # decodes.py builds on this module
    from .decodes import DecodeSources

OK, MISSING, TRUNCATED, CHANGED, CORRUPTED = "ok", "missing", "truncated", "changed", "corrupted"
BAD = (MISSING, TRUNCATED, CHANGED, CORRUPTED)
INPUT_KINDS = ("nwb", "waveform_features", "position")

# per kind of file: what users call it, and where its identity is stored (table, path,
# size, mtime and checksum columns: constants, never user input)
_KINDS = {
    "nwb": ("NWB file", ("sessions", "nwb_path", "size_bytes", "modified_ns", "content_hash")),
    "position": ("position file", ("position_outputs", "path", "size_bytes", "modified_ns", "checksum")),
    "waveform_features": (
        "waveform features file",
        ("waveform_features_files", "path", "size_bytes", "modified_ns", "checksum"),
    ),
    "results": ("decoding results file", ("decoding_outputs", "path", "size_bytes", "modified_ns", "checksum")),
    "model": (
        "fitted model file",
        ("decoding_outputs", "model_path", "model_size_bytes", "model_modified_ns", "model_checksum"),
    ),
}


@dataclass(frozen=True)
class FileIdentity:
    size_bytes: int
    modified_ns: int
    checksum: str


def file_identity(path: str | Path, owner: str) -> FileIdentity:
    """A file's (or object's) identity, to register it; ``owner`` names what it belongs to."""
    try:
        stat = storage.stat(path)
        return FileIdentity(stat.size, stat.version, storage.checksum(path))
    except FileNotFoundError:
        raise CatalogError(
            f"Cannot register {owner}: there is no file at {path} (was it written? `cleanup` removes files whose "
            "writer looked dead): run it again."
        ) from None


@dataclass(frozen=True)
class FileRecord:
    """A registered file as the catalog knows it, and whose it is."""

    kind: str  # a key of _KINDS
    path: str
    size_bytes: int | None
    modified_ns: int | None
    checksum: str | None  # None: registered before checksums were kept (recorded at the first check)
    nwb_file_name: str
    merge_id: str | None = None
    interval_list_name: str | None = None
    electrode_group_name: str | None = None
    param_name: str | None = None

    @property
    def owner(self) -> str:
        if self.kind in ("results", "model"):
            return f"decoding output {self.merge_id} (session {self.nwb_file_name}, interval {self.interval_list_name})"
        if self.kind == "position":
            return (
                f"the position of session {self.nwb_file_name}, interval {self.interval_list_name} ({self.param_name})"
            )
        if self.kind == "waveform_features":
            return (
                f"the waveform features of session {self.nwb_file_name}, electrode group "
                f"{self.electrode_group_name} ({self.param_name})"
            )
        return f"session {self.nwb_file_name}"

    @property
    def remedy(self) -> str:
        if self.kind in ("results", "model"):
            return (
                "Re-run the decode: `decoding-assets verify --repair` (or catalog.forget_bad_output("
                f"{self.merge_id!r})) forgets this output so that it is decoded again."
            )
        if self.kind == "position":
            return (
                f"Process the position of session {self.nwb_file_name} again (the `position` asset), then re-run the "
                "decodes that use it."
            )
        if self.kind == "waveform_features":
            return (
                f"Extract the waveform features of session {self.nwb_file_name} again (the `waveform_features` "
                "asset), then re-run the decodes that use them."
            )
        return (
            "Restore the file as it was registered (a file moved elsewhere: register the session again from there); "
            "a changed recording needs a new file name."
        )


@dataclass(frozen=True)
class FileCheck:
    record: FileRecord
    status: str
    message: str | None  # what is wrong and what to do; None when ok
    identity: FileIdentity | None = None  # to store: the stored one was stale (a touch) or unknown


def check_file(record: FileRecord, full: bool = False) -> FileCheck:
    """Compare a file with its record: size and mtime equal -> trusted (unless ``full``);
    otherwise the content decides."""
    try:
        stat = storage.stat(record.path)
    except FileNotFoundError:
        return _bad(record, MISSING, "missing")
    if record.size_bytes is not None and stat.size != record.size_bytes:
        status = TRUNCATED if stat.size < record.size_bytes else CHANGED
        return _bad(record, status, f"{status}: {stat.size} bytes, registered with {record.size_bytes}")
    same = (record.size_bytes, record.modified_ns) == (stat.size, stat.version)
    if same and record.checksum is not None and not full:
        return FileCheck(record, OK, None)
    checksum = storage.checksum(record.path)
    if record.checksum is not None and checksum != record.checksum:
        if record.size_bytes is None:
            return _bad(record, CHANGED, "changed: its content is not the registered one")
        return _bad(record, CORRUPTED, "corrupted: the registered size, but other content")
    identity = FileIdentity(stat.size, stat.version, checksum)
    return FileCheck(record, OK, None, None if same and record.checksum is not None else identity)


def _bad(record: FileRecord, status: str, what: str) -> FileCheck:
    name = _KINDS[record.kind][0]
    return FileCheck(record, status, f"The {name} {record.path} of {record.owner} is {what}. {record.remedy}")


class IntegrityStore:
    def __init__(self, db: Database):
        self.db = db

    def verify_decode_inputs(
        self, sources: DecodeSources, full: bool = False, kinds: Collection[str] = INPUT_KINDS
    ) -> DecodeSources:
        """Check every file a decode reads (``DecodeSources``: its NWB file, extracted
        waveform features and position files; ``kinds`` to check only some) before
        anything is read; returns the sources. Every bad file is named in one
        CatalogError, with what changed and what to do."""
        unknown = set(kinds) - set(INPUT_KINDS)
        if unknown:
            raise CatalogError(f"Unknown kinds of decode inputs {sorted(unknown)}; known: {list(INPUT_KINDS)}.")
        checks = [check_file(r, full) for r in _source_records(sources) if r.kind in kinds]
        self._store(checks)
        bad = [c.message for c in checks if c.status != OK]
        if bad:
            raise CatalogError(f"Decode {sources.merge_id} cannot read its inputs:\n- " + "\n- ".join(bad))
        return sources

    def verify_output(self, merge_id: str, full: bool = False) -> dict:
        """Check a decoding output's results and model files; their status is recorded
        (``outputs()``: ``file_status``, ``checked_at``). Returns the output's row; a bad
        file raises a CatalogError naming it, what changed and what to do."""
        bad = [c.message for c in self.check_output(merge_id, full) if c.status != OK]
        if bad:
            raise CatalogError("\n".join(bad))
        return self.db.one("SELECT * FROM decoding_outputs WHERE merge_id = ?", [merge_id], _no_output(merge_id))

    def verify_outputs(self, full: bool = False, nwb_file_name: str | None = None) -> pd.DataFrame:
        """Check every registered file (of one session, or all): one row per file with its
        kind ('nwb', 'position', 'waveform_features', 'results', 'model'), path, owner
        keys, status ('ok', 'missing', 'truncated', 'changed', 'corrupted') and a message
        saying what is wrong and what to do. Decoding outputs' statuses are recorded."""
        records = self._records(nwb_file_name)
        checks = [check_file(r, full) for r in records]
        self._store(checks)
        columns = ["kind", "path", "nwb_file_name", "merge_id", "interval_list_name", "electrode_group_name",
                   "param_name", "status", "message"]  # fmt: skip
        return pd.DataFrame(
            [
                {**{k: getattr(c.record, k) for k in columns[:7]}, "status": c.status, "message": c.message}
                for c in checks
            ],
            columns=columns,
        )

    def bad_outputs(self, nwb_file_name: str | None = None) -> pd.DataFrame:
        """Decoding outputs whose last check found a file missing, truncated, changed or
        corrupted: they need a new decode (``forget_bad_output``, then decode again)."""
        sql = (
            "SELECT s.* EXCLUDE (created_by), o.* EXCLUDE (merge_id) FROM decoding_outputs o "
            "JOIN decoding_selections s USING (merge_id) WHERE o.file_status IN (?, ?, ?, ?)"
        )
        if nwb_file_name is None:
            return self.db.query(sql + " ORDER BY o.created_at", BAD)
        return self.db.query(sql + " AND s.nwb_file_name = ? ORDER BY o.created_at", [*BAD, nwb_file_name])

    def check_output(self, merge_id: str, full: bool = False) -> list[FileCheck]:
        """The checks of a decoding output's results and model files, recorded."""
        records = self._output_records("WHERE o.merge_id = ?", [merge_id])
        if not records:
            raise CatalogError(_no_output(merge_id))
        checks = [check_file(r, full) for r in records]
        self._store(checks)
        return checks

    def _records(self, nwb_file_name: str | None) -> list[FileRecord]:
        where, params = ("", []) if nwb_file_name is None else ("WHERE nwb_file_name = ?", [nwb_file_name])
        with self.db.connect():
            sessions = [
                FileRecord("nwb", *row)
                for row in self.db.rows(
                    f"SELECT nwb_path, size_bytes, modified_ns, content_hash, nwb_file_name FROM sessions {where} "
                    "ORDER BY nwb_file_name",
                    params,
                )
            ]
            position = [
                FileRecord("position", *row[:5], interval_list_name=row[5], param_name=row[6])
                for row in self.db.rows(
                    "SELECT path, size_bytes, modified_ns, checksum, nwb_file_name, interval_list_name, "
                    f"trodes_pos_params_name FROM position_outputs {where} ORDER BY ALL",
                    params,
                )
            ]
            features = [
                FileRecord("waveform_features", *row[:5], electrode_group_name=row[5], param_name=row[6])
                for row in self.db.rows(
                    "SELECT path, size_bytes, modified_ns, checksum, nwb_file_name, electrode_group_name, "
                    f"features_param_name FROM waveform_features_files {where} ORDER BY ALL",
                    params,
                )
            ]
            outputs = self._output_records(where.replace("nwb_file_name", "s.nwb_file_name"), params)
        return sessions + position + features + outputs

    def _output_records(self, where: str, params: Sequence) -> list[FileRecord]:
        rows = self.db.rows(
            "SELECT o.merge_id, s.nwb_file_name, s.decoding_interval, o.path, o.size_bytes, o.modified_ns, o.checksum, "
            "o.model_path, o.model_size_bytes, o.model_modified_ns, o.model_checksum FROM decoding_outputs o "
            f"JOIN decoding_selections s USING (merge_id) {where} ORDER BY o.created_at, o.merge_id",
            params,
        )
        return [
            FileRecord(kind, *files, nwb_file_name=name, merge_id=merge_id, interval_list_name=interval)
            for merge_id, name, interval, *identities in rows
            for kind, files in (("results", identities[:4]), ("model", identities[4:]))
        ]

    def _store(self, checks: Sequence[FileCheck]) -> None:
        """Record what the checks learnt, in one transaction: identities of files that
        are what was registered (a new mtime; a first checksum), and decoding outputs'
        statuses. A row that changed meanwhile (a new decode registered) is left alone."""
        refreshed = [c for c in checks if c.identity is not None]
        outputs = _output_statuses(checks)
        if not refreshed and not outputs:
            return

        def write(con):
            for c in refreshed:
                table, path, size, modified, checksum = _KINDS[c.record.kind][1]
                con.execute(
                    f"UPDATE {table} SET {size} = ?, {modified} = ?, {checksum} = ? WHERE {path} = ? "
                    f"AND {checksum} IS NOT DISTINCT FROM ?",
                    [c.identity.size_bytes, c.identity.modified_ns, c.identity.checksum, c.record.path,
                     c.record.checksum],
                )  # fmt: skip
            for status, merge_id, path in outputs:
                con.execute(
                    "UPDATE decoding_outputs SET file_status = ?, checked_at = current_timestamp WHERE merge_id = ? "
                    "AND path = ?",
                    [status, merge_id, path],
                )

        self.db.write(write)


def _output_statuses(checks: Sequence[FileCheck]) -> list[tuple[str, str, str]]:
    """(status, merge_id, results path) of each decoding output checked: the status of
    its first bad file, else ok."""
    by_output: dict[str, list[FileCheck]] = {}
    for c in checks:
        if c.record.kind in ("results", "model"):
            by_output.setdefault(c.record.merge_id, []).append(c)
    return [
        (next((c.status for c in group if c.status != OK), OK), merge_id, group[0].record.path)
        for merge_id, group in by_output.items()
    ]


def _no_output(merge_id: str) -> str:
    return f"No decoding output for merge_id {merge_id!r}: materialize it first."


def _source_records(sources: DecodeSources) -> list[FileRecord]:
    """The files a decode reads, from its ``DecodeSources``."""
    s = sources.selection
    records = [
        FileRecord("nwb", sources.nwb_path, sources.nwb_size_bytes, sources.nwb_modified_ns,
                   sources.session_content_hash, s.nwb_file_name)
    ]  # fmt: skip
    records += [
        FileRecord("waveform_features", f.path, f.size_bytes, f.modified_ns, f.checksum, s.nwb_file_name,
                   electrode_group_name=f.electrode_group_name, param_name=f.features_param_name)
        for f in sources.features if f.path is not None
    ]  # fmt: skip
    records += [
        FileRecord("position", p.path, p.size_bytes, p.modified_ns, p.checksum, s.nwb_file_name,
                   interval_list_name=p.interval_list_name, param_name=p.trodes_pos_params_name)
        for p in sources.position
    ]  # fmt: skip
    return records

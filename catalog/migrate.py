"""Copying one catalog into another: a laptop's DuckDB file into the lab's PostgreSQL
catalog, keeping every key, path, checksum, lineage row and who made it."""

from __future__ import annotations

import json

from .connection import Database
from .errors import CatalogError
from .schema import TABLE_NAMES

# when a row was written and by whom, when its file was last seen (a touch records a new
# mtime) and who is writing or deleting it may differ between two catalogs that hold the
# same thing (each registered the session itself): only the rest must agree
_BOOKKEEPING = {
    "registered_at", "created_at", "written_at", "created_by", "modified_ns", "model_modified_ns", "file_status",
    "checked_at", "state", "host", "pid", "process_start", "run_id", "heartbeat_at", "deleted_by", "deleted_at",
}  # fmt: skip
# a file identity one catalog has not learnt yet (upgraded from schema 2, not verified
# since) agrees with the other's
_LEARNT = {"size_bytes", "model_size_bytes", "model_checksum", "checksum"}


def copy_catalog(source, target) -> dict[str, int]:
    """Copy every row of ``source`` that ``target`` lacks, in one transaction on
    ``target``; returns {table: rows copied}. A row the target already holds with the
    same content is skipped, so copying again copies nothing. A row under the same key
    with other content (the same merge_id decoded from another file, say) stops the
    copy before anything is written, naming the table and the key."""
    plan, conflicts = [], []
    for table in TABLE_NAMES:
        if table == "catalog_info":
            continue
        columns, rows = _records(source.db, table)
        key = _primary_key(target.db, table)
        have = {tuple(r[columns.index(k)] for k in key): r for r in _records(target.db, table)[1]}
        compared = [i for i, c in enumerate(columns) if c not in _BOOKKEEPING]
        missing = []
        for row in rows:
            k = tuple(row[columns.index(c)] for c in key)
            if k not in have:
                missing.append(row)
            else:
                differ = [columns[i] for i in compared if not _same(columns[i], row[i], have[k][i])]
                if differ:
                    conflicts.append(f"{table} {dict(zip(key, k))}: {', '.join(differ)} differ")
        plan.append((table, columns, missing))
    if conflicts:
        raise CatalogError(
            f"Nothing was copied from {source.location} to {target.location}: {len(conflicts)} row(s) exist in both "
            "with different content: "
            + "; ".join(conflicts[:5])
            + ("; ..." if len(conflicts) > 5 else "")
            + ". Resolve these (rename or delete one side) and copy again."
        )

    def write(con):
        for table, columns, missing in plan:
            for row in missing:
                con.execute(
                    f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})", list(row)
                )

    target.db.write(write)
    return {table: len(missing) for table, _, missing in plan}


def _records(db: Database, table: str) -> tuple[list[str], list[tuple]]:
    with db.connect() as con:
        cursor = con.execute(f"SELECT * FROM {table}")  # a table of our schema, never user input
        return [d[0] for d in cursor.description], cursor.fetchall()


def _primary_key(db: Database, table: str) -> list[str]:
    rows = db.rows(
        "SELECT constraint_column_names FROM duckdb_constraints() WHERE table_name = ? "
        "AND constraint_type = 'PRIMARY KEY' AND database_name = current_database()",
        [table],
    )
    return list(rows[0][0])


def _same(column: str, a, b) -> bool:
    if column in _LEARNT and (a is None or b is None):
        return True
    return _value(a) == _value(b)


def _value(value):
    """JSON text compared as what it means, so formatting never counts as a change."""
    if isinstance(value, str) and value[:1] in "{[":
        try:
            return json.loads(value)
        except ValueError:
            pass
    return value

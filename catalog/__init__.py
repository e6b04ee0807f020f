"""The lineage catalog: a DuckDB file and typed functions around it (no Dagster).

    from catalog import Catalog
    cat = Catalog("decoding.duckdb")
    cat.sessions(); cat.outputs(); cat.query("SELECT ... WHERE nwb_file_name = ?", [name])
"""

from .core import SELECTION_FIELDS, Catalog, CatalogError, check_name, file_checksum, merge_id_for

__all__ = ["SELECTION_FIELDS", "Catalog", "CatalogError", "check_name", "file_checksum", "merge_id_for"]

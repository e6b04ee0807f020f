"""The lineage catalog: typed functions around a DuckDB file or a PostgreSQL server
(through DuckDB). No Dagster, nothing of the decoder.

    from catalog import Catalog
    cat = Catalog("decoding.duckdb")                   # or Catalog("postgresql://me@labserver/decoding")
    cat.sessions(); cat.outputs(); cat.query("SELECT ... WHERE nwb_file_name = ?", [name])
"""

from .core import Catalog
from .decodes import DecodeAnalyses, DecodeSources, FeaturesSource, PositionSource
from .errors import CatalogError, check_name, current_user, file_checksum
from .files import CleanupReport
from .migrate import copy_catalog
from .selection import SELECTION_FIELDS, DecodingSelection

__all__ = [
    "SELECTION_FIELDS", "Catalog", "CatalogError", "CleanupReport", "DecodeAnalyses", "DecodeSources", "DecodingSelection",
    "FeaturesSource", "PositionSource", "check_name", "copy_catalog", "current_user", "file_checksum",
]  # fmt: skip

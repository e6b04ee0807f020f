"""Resources the assets get injected, and where things live on disk.

``DECODING_ASSETS_HOME`` (default ``./.decoding_assets``) holds the catalog
(``catalog.duckdb``), the outputs (``outputs/``) and the folder the sensor watches for
new NWB files (``incoming/``, or ``DECODING_ASSETS_WATCH_DIR``).
"""


import os
from pathlib import Path
from typing import Optional

import dagster as dg

from catalog import Catalog


def home() -> Path:
    return Path(os.environ.get("DECODING_ASSETS_HOME", ".decoding_assets")).resolve()


def watch_folder() -> Path:
    return Path(os.environ.get("DECODING_ASSETS_WATCH_DIR", home() / "incoming")).resolve()


class CatalogResource(dg.ConfigurableResource):
    """The DuckDB lineage catalog, and the device decodes run on."""

    catalog_path: str
    output_dir: Optional[str] = None
    device: Optional[str] = None

    def get(self) -> Catalog:
        return Catalog(self.catalog_path, self.output_dir)


def default_catalog_resource() -> CatalogResource:
    return CatalogResource(
        catalog_path=str(home() / "catalog.duckdb"),
        output_dir=str(home() / "outputs"),
        device=os.environ.get("DECODING_ASSETS_DEVICE") or None,
    )

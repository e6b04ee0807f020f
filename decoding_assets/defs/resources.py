"""Resources the assets get injected, and where things live on disk.

``DECODING_ASSETS_HOME`` (default ``./.decoding_assets``) holds the catalog
(``catalog.duckdb``), the outputs (``outputs/``), JAX's compilation cache
(``jax_cache/``) and the folder the sensor watches for new NWB files (``incoming/``, or
``DECODING_ASSETS_WATCH_DIR``).
"""


import os
from pathlib import Path
from typing import Optional

import dagster as dg

from catalog import Catalog
from decoding_assets.pipeline import enable_compilation_cache


def home() -> Path:
    return Path(os.environ.get("DECODING_ASSETS_HOME", ".decoding_assets")).resolve()


def watch_folder() -> Path:
    return Path(os.environ.get("DECODING_ASSETS_WATCH_DIR", home() / "incoming")).resolve()


class CatalogResource(dg.ConfigurableResource):
    """The DuckDB lineage catalog, the device decodes run on, and where JAX keeps
    compiled code between runs."""

    catalog_path: str
    output_dir: Optional[str] = None
    device: Optional[str] = None
    jax_cache_dir: Optional[str] = None

    def setup_for_execution(self, context) -> None:
        if self.jax_cache_dir:
            enable_compilation_cache(self.jax_cache_dir)

    def get(self) -> Catalog:
        return Catalog(self.catalog_path, self.output_dir)


def default_catalog_resource() -> CatalogResource:
    return CatalogResource(
        catalog_path=str(home() / "catalog.duckdb"),
        output_dir=str(home() / "outputs"),
        device=os.environ.get("DECODING_ASSETS_DEVICE") or None,
        jax_cache_dir=str(home() / "jax_cache"),
    )

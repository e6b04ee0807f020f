"""Resources the assets get injected, and where things live.

``DECODING_ASSETS_HOME`` (default ``./.decoding_assets``) holds the catalog
(``catalog.duckdb``), the outputs (``outputs/``), JAX's compilation cache
(``jax_cache/``) and the folder the sensor watches for new NWB files (``incoming/``, or
``DECODING_ASSETS_WATCH_DIR``). A lab's shared catalog is named by
``DECODING_ASSETS_CATALOG`` (``postgresql://user@host/dbname``), its outputs by
``DECODING_ASSETS_OUTPUTS`` (a folder every worker reaches).
"""


import functools
import os
from pathlib import Path
from typing import Optional

import dagster as dg

from catalog import Catalog
from decoding_assets.pipeline import enable_compilation_cache


def home() -> Path:
    return Path(os.environ.get("DECODING_ASSETS_HOME", ".decoding_assets")).resolve()


def catalog_location() -> str:
    """The catalog: ``DECODING_ASSETS_CATALOG`` (a file or a PostgreSQL URL), else the
    file in the home folder."""
    return os.environ.get("DECODING_ASSETS_CATALOG") or str(home() / "catalog.duckdb")


def outputs_folder() -> Path:
    return Path(os.environ.get("DECODING_ASSETS_OUTPUTS") or home() / "outputs").resolve()


def watch_folder() -> Path:
    return Path(os.environ.get("DECODING_ASSETS_WATCH_DIR", home() / "incoming")).resolve()


class CatalogResource(dg.ConfigurableResource):
    """The lineage catalog (a DuckDB file or a PostgreSQL URL), where outputs go, the
    device decodes run on, and where JAX keeps compiled code between runs."""

    location: str
    output_dir: Optional[str] = None
    device: Optional[str] = None
    jax_cache_dir: Optional[str] = None

    def setup_for_execution(self, context) -> None:
        if self.jax_cache_dir:
            enable_compilation_cache(self.jax_cache_dir)

    def get(self) -> Catalog:
        return _open_catalog(self.location, self.output_dir)


@functools.lru_cache(maxsize=8)
def _open_catalog(location: str, output_dir: Optional[str]) -> Catalog:
    """One ``Catalog`` per location in a process: the schema is checked once, and a
    PostgreSQL catalog keeps its one connection."""
    return Catalog(location, output_dir)


def default_catalog_resource() -> CatalogResource:
    return CatalogResource(
        location=catalog_location(),
        output_dir=str(outputs_folder()),
        device=os.environ.get("DECODING_ASSETS_DEVICE") or None,
        jax_cache_dir=str(home() / "jax_cache"),
    )

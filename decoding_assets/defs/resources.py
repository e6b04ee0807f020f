"""Resources the assets get injected, and where things live.

``DECODING_ASSETS_HOME`` (default: ``decoding-assets`` in the user's data folder,
``$XDG_DATA_HOME`` or ``~/.local/share``) holds the catalog (``catalog.duckdb``), the
outputs (``outputs/``), JAX's compilation cache (``jax_cache/``) and the folder the
sensor watches for new NWB files (``incoming/``, or ``DECODING_ASSETS_WATCH_DIR``). A
lab's shared catalog is named by ``DECODING_ASSETS_CATALOG``
(``postgresql://user@host/dbname``), its outputs by ``DECODING_ASSETS_OUTPUTS`` (a
folder every worker reaches, or an object store's URL such as ``s3://bucket/prefix``,
written through ``DECODING_ASSETS_SCRATCH``, default the system's temporary folder). ``DECODING_ASSETS_DECODE_SLOTS`` is how many decodes may
run at once (default: one per GPU, else what the cores and memory hold).
"""


import functools
import os
from pathlib import Path
from typing import Optional

import dagster as dg

from catalog import Catalog, storage
from decoding_assets.decoder import enable_compilation_cache

from .runs import record_run_process


def home() -> Path:
    """``DECODING_ASSETS_HOME``, else the user's data folder: the same wherever a
    notebook or command is started (a relative default gave each folder its own, empty
    catalog)."""
    if chosen := os.environ.get("DECODING_ASSETS_HOME"):
        return Path(chosen).resolve()
    data = Path(os.environ.get("XDG_DATA_HOME", ""))
    if not data.is_absolute():  # unset, or relative: which the XDG spec says to ignore
        data = Path.home() / ".local" / "share"
    return data / "decoding-assets"


def decode_slots() -> Optional[int]:
    """``DECODING_ASSETS_DECODE_SLOTS``: how many decodes may run at once, or None
    when not set."""
    value = os.environ.get("DECODING_ASSETS_DECODE_SLOTS", "").strip()
    if not value:
        return None
    if not value.isdigit() or int(value) < 1:
        raise ValueError(
            f"DECODING_ASSETS_DECODE_SLOTS (--decode-slots) is {value!r}: it must be how many decodes may run at "
            "once, a whole number from 1 (the number of GPUs, usually); unset it for the default."
        )
    return int(value)


def catalog_location() -> str:
    """The catalog: ``DECODING_ASSETS_CATALOG`` (a file or a PostgreSQL URL), else the
    file in the home folder."""
    return os.environ.get("DECODING_ASSETS_CATALOG") or str(home() / "catalog.duckdb")


def outputs_folder() -> Path | str:
    """``DECODING_ASSETS_OUTPUTS`` (a folder, or a URL), else ``outputs`` in the home."""
    return storage.resolve(os.environ.get("DECODING_ASSETS_OUTPUTS") or home() / "outputs")


def watch_folder() -> Path:
    return Path(os.environ.get("DECODING_ASSETS_WATCH_DIR", home() / "incoming")).resolve()


class CatalogResource(dg.ConfigurableResource):
    """The lineage catalog (a DuckDB file or a PostgreSQL URL), where outputs go, the
    device decodes run on, and where JAX keeps compiled code between runs."""

    location: str
    output_dir: Optional[str] = None
    device: Optional[str] = None
    jax_cache_dir: Optional[str] = None

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        if self.jax_cache_dir:
            enable_compilation_cache(self.jax_cache_dir)
        # in a run (not a sensor's or schedule's evaluation): record its process, so a killed run is noticed
        if context.dagster_run is not None and context.instance is not None:
            record_run_process(context.instance, context.dagster_run)

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

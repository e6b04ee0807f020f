"""Reading a decode back in a notebook: the results, the fitted model and what it was
fitted on, found through the catalog. Every file is verified against what the catalog
registered before it is read (``verify="fast"``: size and mtime, hashing only a file
whose mtime changed; ``verify="full"``: always hashed): a missing or altered file
raises a CatalogError naming it, never returns other values. Outputs in an object store
(an outputs URL) are checked there and read lazily from it.

    from catalog import Catalog
    from decoding_assets.fetch import fetch_results
    results = fetch_results(Catalog("catalog.duckdb"), merge_id)
"""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path
from typing import Collection, Iterator

import numpy as np
import pandas as pd
import xarray as xr

from catalog import Catalog, DecodeSources, storage

from .decoder import Environment, load_model, load_results
from .pipeline import read_features
from .position import load_position, upsample_position_group

VERIFY_MODES = ("fast", "full")


def fetch_results(catalog: Catalog, merge_id: str, verify: str = "fast") -> xr.Dataset:
    """The decode as an ``xarray.Dataset`` (``state_bins`` MultiIndex rebuilt;
    ``interval_labels`` says which piece of the decoding interval each bin is in), read
    lazily, from an object store too."""
    return load_results(catalog.verify_output(merge_id, full=_full(verify))["path"])


def fetch_model(catalog: Catalog, merge_id: str, device=None, verify: str = "fast"):
    """The fitted model the decode used (a ``ContFragClusterlessClassifier`` or a
    ``NonLocalClusterlessDetector``)."""
    output = catalog.verify_output(merge_id, full=_full(verify))
    with _local_copy(output["model_path"]) as path:
        return load_model(path, device=device)


def fetch_environments(catalog: Catalog, merge_id: str, verify: str = "fast") -> Environment:
    """The fitted spatial grid of the decode."""
    return fetch_model(catalog, merge_id, verify=verify).environments


def fetch_position_info(catalog: Catalog, merge_id: str, verify: str = "fast") -> pd.DataFrame:
    """The position group the decode used, upsampled: index time; position_x,
    position_y, orientation, velocity_x, velocity_y, speed."""
    sources = _verified_sources(catalog, merge_id, verify, ("position",))
    return upsample_position_group([load_position(p.path) for p in sources.position], sources.upsample_rate)


def fetch_spike_data(
    catalog: Catalog, merge_id: str, verify: str = "fast"
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Spike times and waveform features per electrode group of the decode's waveform
    features group (in the group's order)."""
    sources = _verified_sources(catalog, merge_id, verify, ("nwb", "waveform_features"))
    features = read_features(sources.nwb_path, sources.features)
    return [f.times for f in features], [f.features for f in features]


def fetch_viewer_source(catalog: Catalog, merge_id: str, verify: str = "fast"):
    """What ``decoding_assets.viewer`` shows of a decode: its results, grid, position and
    spike times by electrode group, titled by session, interval and parameter set."""
    from .viewer import ViewerSource

    selection = catalog.fetch_selection(merge_id)
    sources = _verified_sources(catalog, merge_id, verify, ("nwb", "waveform_features"))
    features = read_features(sources.nwb_path, sources.features)
    return ViewerSource(
        title=f"{selection.nwb_file_name} · {selection.decoding_interval} · {selection.decoding_param_name} ({merge_id})",
        results=fetch_results(catalog, merge_id, verify=verify),
        environment=fetch_environments(catalog, merge_id, verify=verify),
        position=fetch_position_info(catalog, merge_id, verify=verify),
        spike_times={source.electrode_group_name: f.times for source, f in zip(sources.features, features)},
    )


def _verified_sources(catalog: Catalog, merge_id: str, verify: str, kinds: Collection[str]) -> DecodeSources:
    return catalog.verify_decode_inputs(catalog.fetch_decode_sources(merge_id), full=_full(verify), kinds=kinds)


@contextlib.contextmanager
def _local_copy(location: str) -> Iterator[Path]:
    """A local file with ``location``'s bytes: itself, or an object downloaded into the
    scratch folder for as long as it is read (a model is read whole)."""
    if not storage.is_url(location):
        yield Path(location)
        return
    folder = storage.scratch_folder()
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder, prefix="fetch-") as scratch:
        local = Path(scratch) / location.rsplit("/", 1)[-1]
        storage.get(location, local)
        yield local


def _full(verify: str) -> bool:
    if verify not in VERIFY_MODES:
        raise ValueError(
            f"verify must be one of {VERIFY_MODES} (fast: size and mtime; full: checksum), got {verify!r}."
        )
    return verify == "full"

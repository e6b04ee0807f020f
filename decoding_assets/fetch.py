"""Reading a decode back in a notebook: the results, the fitted model and what it was
fitted on, found through the catalog.

    from catalog import Catalog
    from decoding_assets.fetch import fetch_results
    results = fetch_results(Catalog("catalog.duckdb"), merge_id)
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr

from catalog import Catalog

from .decoder import ContFragClusterlessClassifier, Environment, load_results
from .pipeline import load_decoding_inputs, read_features


def fetch_results(catalog: Catalog, merge_id: str) -> xr.Dataset:
    """The decode as an ``xarray.Dataset`` (``state_bins`` MultiIndex rebuilt;
    ``interval_labels`` says which piece of the decoding interval each bin is in)."""
    return load_results(catalog.fetch_output(merge_id)["path"])


def fetch_model(catalog: Catalog, merge_id: str, device=None) -> ContFragClusterlessClassifier:
    """The fitted classifier the decode used."""
    return ContFragClusterlessClassifier.load_model(catalog.fetch_output(merge_id)["model_path"], device=device)


def fetch_environments(catalog: Catalog, merge_id: str) -> Environment:
    """The fitted spatial grid of the decode."""
    return fetch_model(catalog, merge_id).environments


def fetch_position_info(catalog: Catalog, merge_id: str) -> pd.DataFrame:
    """The position group the decode used, upsampled: index time; position_x,
    position_y, orientation, velocity_x, velocity_y, speed."""
    return load_decoding_inputs(catalog, merge_id).position


def fetch_spike_data(catalog: Catalog, merge_id: str) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Spike times and waveform features per electrode group of the decode's waveform
    features group (in the group's order)."""
    sources = catalog.fetch_decode_sources(merge_id)
    features = read_features(sources.nwb_path, sources.features)
    return [f.times for f in features], [f.features for f in features]

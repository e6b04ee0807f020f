"""Decoding parameter sets: completed against the model's defaults before they are
stored, so a stored name keeps its meaning when a default changes."""

from __future__ import annotations

from catalog import Catalog, CatalogError

from .decoder import ContFragClusterlessClassifier
from .decoder.classifier import DEFAULT_CLUSTERLESS_ALGORITHM_PARAMS


def decoding_model(params: dict, device=None) -> ContFragClusterlessClassifier:
    """An unfitted classifier from a full ``to_dict()`` or from overrides of the
    defaults, e.g. ``{"block_size": 10000, "position_std": 12.0, "waveform_std": 24.0}``
    (``place_bin_size`` sets the grid's)."""
    if "clusterless_algorithm_params" in params or "environments" in params:
        return ContFragClusterlessClassifier.from_dict(params, device=device)
    algorithm = {k: v for k, v in params.items() if k in DEFAULT_CLUSTERLESS_ALGORITHM_PARAMS}
    rest = {k: v for k, v in params.items() if k not in DEFAULT_CLUSTERLESS_ALGORITHM_PARAMS}
    place_bin_size = rest.pop("place_bin_size", None)
    data = ContFragClusterlessClassifier(clusterless_algorithm_params=algorithm).to_dict()
    unknown = set(rest) - set(data)
    if unknown:
        raise CatalogError(f"Unknown decoding parameter(s) {sorted(unknown)}.")
    data.update(rest)
    if place_bin_size is not None:
        data["environments"]["place_bin_size"] = float(place_bin_size)
    return ContFragClusterlessClassifier.from_dict(data, device=device)


def store_decoding_params(catalog: Catalog, decoding_param_name: str, params: dict | None = None) -> dict:
    """Store a named model configuration, complete (overrides filled in from the
    defaults); returns what was stored. Other parameters under an existing name are
    an error."""
    complete = decoding_model(params or {}).to_dict()
    catalog.insert_decoding_params(decoding_param_name, complete)
    return complete


def fetch_decoding_model(catalog: Catalog, decoding_param_name: str, device=None) -> ContFragClusterlessClassifier:
    """An unfitted classifier rebuilt from a stored parameter set."""
    return ContFragClusterlessClassifier.from_dict(catalog.fetch_decoding_params(decoding_param_name), device=device)

"""Decoding parameter sets: completed against the model's defaults before they are
stored, so a stored name keeps its meaning when a default changes."""

from __future__ import annotations

import numpy as np

from catalog import Catalog

from .decoder import ContFragClusterlessClassifier, Environment
from .waveforms import check_values, is_number, is_positive_integer


def _is_positive(value) -> bool:
    return is_number(value) and value > 0


def _is_positive_or_list(value) -> bool:
    """One positive number, or a non-empty list of them (one per dimension or feature)."""
    return _is_positive(value) or (isinstance(value, (list, tuple)) and bool(value) and all(map(_is_positive, value)))


def _is_initial_conditions(value) -> bool:
    return (
        isinstance(value, (list, tuple)) and len(value) == 2 and all(is_number(p) and p >= 0 for p in value)
        and bool(np.isclose(sum(value), 1.0))
    )  # fmt: skip


_TRUE_OR_FALSE = (lambda v: isinstance(v, bool), "true or false")
_ALGORITHM_CHECKS = {
    "position_std": (_is_positive_or_list, "a positive number (cm), or a list of them, one per position dimension"),
    "waveform_std": (_is_positive_or_list, "a positive number (feature units), or a list of them, one per feature"),
    "block_size": (is_positive_integer, "a positive integer (decoding spikes per block)"),
    "disable_progress_bar": _TRUE_OR_FALSE,
}
_MODEL_CHECKS = {
    "infer_track_interior": _TRUE_OR_FALSE,
    "movement_var": (_is_positive, "a positive number (cm² per time bin)"),
    "discrete_transition_diag": (lambda v: is_number(v) and 0 <= v <= 1, "a probability, a number in [0, 1]"),
    "discrete_initial_conditions": (_is_initial_conditions, "two probabilities summing to 1 (Continuous, Fragmented)"),
    "discrete_transition_concentration": (lambda v: is_number(v) and v >= 1, "a number >= 1"),
    "sampling_frequency": (_is_positive, "a positive number (decoding time bins per second)"),
    "dtype": (lambda v: v in ("float32", "float64"), "'float32' or 'float64'"),
}
# the overrides a parameter set may give (beside a complete set, ``to_dict()``'s form)
_OVERRIDE_CHECKS = {
    **_ALGORITHM_CHECKS,
    **_MODEL_CHECKS,
    "place_bin_size": (_is_positive, "a positive number (cm, the spatial grid's bin)"),
}


def check_decoding_params(params: dict | None) -> dict:
    """The complete model configuration (``to_dict()``'s form) that ``params`` means:
    overrides of the defaults, e.g. ``{"block_size": 10000, "position_std": 12.0,
    "waveform_std": 24.0}`` (``place_bin_size`` sets the grid's), or a complete set. An
    unknown key or a value of the wrong kind is an error naming the key, what is
    expected and the value."""
    params = dict(params or {})
    if "clusterless_algorithm_params" in params or "environments" in params:
        return _checked_complete(params)
    _check_known(params, _OVERRIDE_CHECKS)
    check_values(params, _OVERRIDE_CHECKS)
    algorithm = {k: v for k, v in params.items() if k in _ALGORITHM_CHECKS}
    model = {k: v for k, v in params.items() if k in _MODEL_CHECKS}
    environment = Environment(place_bin_size=float(params["place_bin_size"])) if "place_bin_size" in params else None
    return ContFragClusterlessClassifier(environment, algorithm, **model).to_dict()


def _checked_complete(params: dict) -> dict:
    _check_known(params, {"environments", "clusterless_algorithm_params", *_MODEL_CHECKS})
    algorithm = params.get("clusterless_algorithm_params") or {}
    if not isinstance(algorithm, dict):
        raise ValueError(
            f"clusterless_algorithm_params must be a mapping of {sorted(_ALGORITHM_CHECKS)}; got {algorithm!r}."
        )
    _check_known(algorithm, _ALGORITHM_CHECKS)
    check_values(algorithm, _ALGORITHM_CHECKS)
    check_values({k: v for k, v in params.items() if k in _MODEL_CHECKS}, _MODEL_CHECKS)
    try:
        return ContFragClusterlessClassifier.from_dict(params).to_dict()
    except (TypeError, ValueError) as error:  # the environment's own checks
        raise ValueError(f"environments: {error}") from None


def _check_known(params: dict, known) -> None:
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise ValueError(f"Unknown decoding parameter(s) {unknown}; known: {sorted(known)}.")


def decoding_model(params: dict, device=None) -> ContFragClusterlessClassifier:
    """An unfitted classifier from a complete parameter set or from overrides of the
    defaults (``check_decoding_params``)."""
    return ContFragClusterlessClassifier.from_dict(check_decoding_params(params), device=device)


def store_decoding_params(catalog: Catalog, decoding_param_name: str, params: dict | None = None) -> dict:
    """Store a named model configuration, complete (overrides filled in from the
    defaults); returns what was stored. Other parameters under an existing name are
    an error."""
    complete = check_decoding_params(params)
    catalog.insert_decoding_params(decoding_param_name, complete)
    return complete


def fetch_decoding_model(catalog: Catalog, decoding_param_name: str, device=None) -> ContFragClusterlessClassifier:
    """An unfitted classifier rebuilt from a stored parameter set."""
    return ContFragClusterlessClassifier.from_dict(catalog.fetch_decoding_params(decoding_param_name), device=device)

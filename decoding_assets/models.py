"""Decoding parameter sets: completed against the model's defaults before they are
stored, so a stored name keeps its meaning when a default changes."""

from __future__ import annotations

import numpy as np

from catalog import Catalog

from .decoder import ContFragClusterlessClassifier, Environment, NonLocalClusterlessDetector
from .waveforms import check_values, is_number, is_positive_integer


def _is_positive(value) -> bool:
    return is_number(value) and value > 0


def _is_positive_or_list(value) -> bool:
    """One positive number, or a non-empty list of them (one per dimension or feature)."""
    return _is_positive(value) or (isinstance(value, (list, tuple)) and bool(value) and all(map(_is_positive, value)))


def _is_probabilities(n: int):
    def check(value) -> bool:
        return (
            isinstance(value, (list, tuple)) and len(value) == n and all(is_number(p) and p >= 0 for p in value)
            and bool(np.isclose(sum(value), 1.0))
        )  # fmt: skip

    return check


def _is_transition_matrix(value) -> bool:
    return isinstance(value, (list, tuple)) and len(value) == 4 and all(_is_probabilities(4)(row) for row in value)


def _is_stickiness(value) -> bool:
    if isinstance(value, (list, tuple)):
        return len(value) == 4 and all(is_number(v) and v >= 0 for v in value)
    return is_number(value) and value >= 0


_TRUE_OR_FALSE = (lambda v: isinstance(v, bool), "true or false")
_ALGORITHM_CHECKS = {
    "position_std": (_is_positive_or_list, "a positive number (cm), or a list of them, one per position dimension"),
    "waveform_std": (_is_positive_or_list, "a positive number (feature units), or a list of them, one per feature"),
    "block_size": (is_positive_integer, "a positive integer (decoding spikes per block)"),
    "disable_progress_bar": _TRUE_OR_FALSE,
}
_SHARED_CHECKS = {
    "infer_track_interior": _TRUE_OR_FALSE,
    "movement_var": (_is_positive, "a positive number (cm² per time bin)"),
    "discrete_transition_concentration": (lambda v: is_number(v) and v >= 1, "a number >= 1"),
    "sampling_frequency": (_is_positive, "a positive number (decoding time bins per second)"),
    "dtype": (lambda v: v in ("float32", "float64"), "'float32' or 'float64'"),
}
CONTFRAG = "contfrag"
NON_LOCAL_DETECTOR = "non_local_detector"
# ``model`` in a parameter set: which model it configures (default: contfrag), with that
# model's own parameters
MODELS = {CONTFRAG: ContFragClusterlessClassifier, NON_LOCAL_DETECTOR: NonLocalClusterlessDetector}
_MODEL_CHECKS = {
    CONTFRAG: {
        **_SHARED_CHECKS,
        "discrete_transition_diag": (lambda v: is_number(v) and 0 <= v <= 1, "a probability, a number in [0, 1]"),
        "discrete_initial_conditions": (
            _is_probabilities(2), "two probabilities summing to 1 (Continuous, Fragmented)"
        ),
    },
    NON_LOCAL_DETECTOR: {
        **_SHARED_CHECKS,
        "discrete_initial_conditions": (
            _is_probabilities(4),
            "four probabilities summing to 1 (Local, No-Spike, Non-Local Continuous, Non-Local Fragmented)",
        ),
        "discrete_transition_matrix": (
            _is_transition_matrix, "4 rows of 4 probabilities, each row summing to 1 (rows from, columns to)"
        ),
        "discrete_transition_stickiness": (_is_stickiness, "a number >= 0, or four (one per state)"),
        "discrete_transition_regularization": (lambda v: is_number(v) and v >= 0, "a number >= 0"),
        "no_spike_rate": (_is_positive, "a positive number (spikes/s of each electrode group in No-Spike)"),
    },
}
_PLACE_BIN_SIZE = (_is_positive, "a positive number (cm, the spatial grid's bin)")


def model_name(params: dict | None) -> str:
    """Which model a parameter set configures: its ``model``, else contfrag (every set
    stored before there were two)."""
    name = (params or {}).get("model", CONTFRAG)
    if name not in MODELS:
        raise ValueError(f"model: expected one of {sorted(MODELS)}; got {name!r}.")
    return name


def check_decoding_params(params: dict | None) -> dict:
    """The complete model configuration (``to_dict()``'s form, with ``model`` for the
    non-local detector) that ``params`` means: overrides of the model's defaults, e.g.
    ``{"block_size": 10000, "position_std": 12.0, "waveform_std": 24.0}`` or
    ``{"model": "non_local_detector", "no_spike_rate": 1e-10}`` (``place_bin_size`` sets
    the grid's), or a complete set. An unknown key or a value of the wrong kind is an
    error naming the key, what is expected and the value."""
    params = dict(params or {})
    name = model_name(params)
    params.pop("model", None)
    checks = _MODEL_CHECKS[name]
    if "clusterless_algorithm_params" in params or "environments" in params:
        complete = _checked_complete(params, name)
    else:
        overrides = {**_ALGORITHM_CHECKS, **checks, "place_bin_size": _PLACE_BIN_SIZE}
        _check_known(params, {"model", *overrides}, name)
        check_values(params, overrides)
        algorithm = {k: v for k, v in params.items() if k in _ALGORITHM_CHECKS}
        model = {k: v for k, v in params.items() if k in checks}
        environment = None
        if "place_bin_size" in params:
            environment = Environment(place_bin_size=float(params["place_bin_size"]))
        complete = MODELS[name](environments=environment, clusterless_algorithm_params=algorithm, **model).to_dict()
    return complete if name == CONTFRAG else {"model": name, **complete}


def _checked_complete(params: dict, name: str) -> dict:
    checks = _MODEL_CHECKS[name]
    _check_known(params, {"environments", "clusterless_algorithm_params", *checks}, name)
    algorithm = params.get("clusterless_algorithm_params") or {}
    if not isinstance(algorithm, dict):
        raise ValueError(
            f"clusterless_algorithm_params must be a mapping of {sorted(_ALGORITHM_CHECKS)}; got {algorithm!r}."
        )
    _check_known(algorithm, _ALGORITHM_CHECKS, name)
    check_values(algorithm, _ALGORITHM_CHECKS)
    check_values({k: v for k, v in params.items() if k in checks}, checks)
    try:
        return MODELS[name].from_dict(params).to_dict()
    except (TypeError, ValueError) as error:  # the environment's own checks
        raise ValueError(f"environments: {error}") from None


def _check_known(params: dict, known, name: str) -> None:
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise ValueError(f"Unknown decoding parameter(s) {unknown} for model {name!r}; known: {sorted(known)}.")


def decoding_model(params: dict, device=None):
    """An unfitted model (the classifier or the detector, as ``model`` says) from a
    complete parameter set or from overrides of the defaults (``check_decoding_params``)."""
    complete = check_decoding_params(params)
    name = model_name(complete)
    complete.pop("model", None)
    return MODELS[name].from_dict(complete, device=device)


def store_decoding_params(catalog: Catalog, decoding_param_name: str, params: dict | None = None) -> dict:
    """Store a named model configuration, complete (overrides filled in from the
    defaults); returns what was stored. Other parameters under an existing name are
    an error."""
    complete = check_decoding_params(params)
    catalog.insert_decoding_params(decoding_param_name, complete)
    return complete


def fetch_decoding_model(catalog: Catalog, decoding_param_name: str, device=None):
    """An unfitted model rebuilt from a stored parameter set."""
    return decoding_model(catalog.fetch_decoding_params(decoding_param_name), device=device)

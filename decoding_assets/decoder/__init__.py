"""The clusterless continuous / fragmented decoder: a plain library (no Dagster, no DuckDB).

    from decoding_assets.decoder import ContFragClusterlessClassifier, Environment
"""

from .classifier import ContFragClusterlessClassifier, resolve_device
from .environment import Environment
from .results import KEEP_EVERYTHING, RESULTS_FORMAT_VERSION, Keep, load_results, position_posterior, save_results

__all__ = [
    "ContFragClusterlessClassifier",
    "Environment",
    "KEEP_EVERYTHING",
    "Keep",
    "RESULTS_FORMAT_VERSION",
    "load_results",
    "position_posterior",
    "resolve_device",
    "save_results",
]

"""The clusterless continuous / fragmented decoder: a plain library (no Dagster, no DuckDB).

    from decoding_assets.decoder import ContFragClusterlessClassifier, Environment
"""

from .classifier import ContFragClusterlessClassifier, resolve_device
from .environment import Environment
from .results import RESULTS_FORMAT_VERSION, load_results, save_results

__all__ = [
    "ContFragClusterlessClassifier",
    "Environment",
    "RESULTS_FORMAT_VERSION",
    "load_results",
    "resolve_device",
    "save_results",
]

"""The clusterless decoders (continuous / fragmented, and the non-local detector): a plain
library (no Dagster, no DuckDB).

    from decoding_assets.decoder import ContFragClusterlessClassifier, NonLocalClusterlessDetector, Environment
"""

from .classifier import ContFragClusterlessClassifier
from .clusterless import enable_compilation_cache, load_model, resolve_device
from .detector import NonLocalClusterlessDetector
from .environment import Environment
from .results import KEEP_EVERYTHING, RESULTS_FORMAT_VERSION, Keep, load_results, position_posterior, save_results

__all__ = [
    "ContFragClusterlessClassifier",
    "Environment",
    "KEEP_EVERYTHING",
    "Keep",
    "NonLocalClusterlessDetector",
    "enable_compilation_cache",
    "RESULTS_FORMAT_VERSION",
    "load_model",
    "load_results",
    "position_posterior",
    "resolve_device",
    "save_results",
]

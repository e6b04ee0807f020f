"""Named parameter sets from the configuration file, stored in the catalog."""

import hashlib
import json

import dagster as dg

from decoding_assets import pipeline

from .resources import CatalogResource

PARAMETER_SECTIONS = ("waveform_features_params", "position_params", "decoding_params")


def _parameters_version() -> str:
    """Changes when the configuration's parameter sets do, so that automation stores
    them again once the edited file is loaded."""
    config = pipeline.load_config()
    text = json.dumps({k: config.get(k) for k in PARAMETER_SECTIONS}, sort_keys=True, default=str)
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


@dg.asset(
    group_name="parameters",
    kinds={"duckdb"},
    code_version=_parameters_version(),
    # stored whenever missing (not only when newly missing: sessions wait for it), unless
    # its last try failed; and again when the configuration's parameter sets change
    automation_condition=(
        dg.AutomationCondition.missing()
        & ~dg.AutomationCondition.in_progress()
        & ~dg.AutomationCondition.execution_failed()
    )
    | dg.AutomationCondition.code_version_changed(),
)
def parameter_sets(catalog: CatalogResource) -> dg.MaterializeResult:
    """Waveform features, position and decoding parameter sets of the configuration file, by name."""
    stored = pipeline.ensure_parameter_sets(catalog.get(), pipeline.load_config())
    return dg.MaterializeResult(metadata={k: ", ".join(v) or "none" for k, v in stored.items()})

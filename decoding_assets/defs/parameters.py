"""Named parameter sets from the configuration file, stored in the catalog."""

import hashlib
import json

import dagster as dg

from catalog import Catalog
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
    """Stores the waveform features, position and decoding parameter sets of the
    configuration file; lists every set the catalog holds, by kind (those stored from
    Python too: ``catalog_sync`` records new ones)."""
    cat = catalog.get()
    pipeline.ensure_parameter_sets(cat, pipeline.load_config())
    return dg.MaterializeResult(metadata=parameter_sets_metadata(cat))


def parameter_sets_metadata(catalog: Catalog) -> dict[str, str]:
    return {kind: ", ".join(names) or "none" for kind, names in catalog.parameter_set_names().items()}

"""Named parameter sets from the configuration file, stored in the catalog."""

import dagster as dg

from decoding_assets import pipeline

from .resources import CatalogResource


@dg.asset(group_name="parameters", kinds={"duckdb"})
def parameter_sets(catalog: CatalogResource) -> dg.MaterializeResult:
    """Waveform features, position and decoding parameter sets of the configuration file, by name."""
    stored = pipeline.ensure_parameter_sets(catalog.get(), pipeline.load_config())
    return dg.MaterializeResult(metadata={k: ", ".join(v) or "none" for k, v in stored.items()})

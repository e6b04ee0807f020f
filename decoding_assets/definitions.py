"""The one place the Dagster ``Definitions`` are assembled (``dagster dev -m
decoding_assets.definitions`` or ``workspace.yaml``). Where the steps of every job run is
``DECODING_ASSETS_EXECUTOR`` (``decoding_assets.defs.executors``)."""

import dagster as dg

from decoding_assets import pipeline
from decoding_assets.defs.automation import (
    build_decoding_jobs,
    catalog_sync,
    new_nwb_files,
    parameters_job,
    sessions_job,
    verify_outputs,
)
from decoding_assets.defs.decoding import build_decoding_assets
from decoding_assets.defs.executors import build_executor
from decoding_assets.defs.parameters import parameter_sets
from decoding_assets.defs.resources import default_catalog_resource
from decoding_assets.defs.sessions import session_assets


def build_definitions(config: dict | None = None) -> dg.Definitions:
    config = config or pipeline.load_config()
    decoding_assets = build_decoding_assets(config)
    return dg.Definitions(
        assets=[parameter_sets, *session_assets, *decoding_assets],
        jobs=[parameters_job, sessions_job, *build_decoding_jobs(decoding_assets, config["decodings"])],
        sensors=[new_nwb_files, catalog_sync, verify_outputs],
        resources={"catalog": default_catalog_resource()},
        executor=build_executor(),
    )


defs = build_definitions()

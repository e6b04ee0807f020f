"""Per-session assets: the NWB file, its interval lists, waveform features, position,
and the groups decodes draw on. Partitioned by session (``nwb_file_name``)."""


import dagster as dg
import pandas as pd

from decoding_assets import pipeline

from .parameters import parameter_sets
from .partitions import sessions_partitions
from .resources import CatalogResource

# a session added to the partitions (by the catalog_sync sensor) is processed once
PROCESS_NEW = dg.AutomationCondition.on_missing()


def _table(df) -> dg.MetadataValue:
    return dg.MetadataValue.md(df.to_markdown(index=False) if len(df) else "(none)")


@dg.asset(partitions_def=sessions_partitions, automation_condition=PROCESS_NEW, group_name="sessions", kinds={"nwb", "duckdb"})
def nwb_sessions(context: dg.AssetExecutionContext, catalog: CatalogResource) -> dg.MaterializeResult:
    """The session's NWB file, registered in the catalog with its content hash."""
    cat = catalog.get()
    session = cat.fetch_session(context.partition_key)
    pipeline.register_session(cat, session["nwb_path"], pipeline.load_config())  # checks the file is unchanged
    return dg.MaterializeResult(
        metadata={
            "path": dg.MetadataValue.path(session["nwb_path"]),
            "content_hash": session["content_hash"],
            "subject_id": session["subject_id"] or "",
        }
    )


@dg.asset(partitions_def=sessions_partitions, automation_condition=PROCESS_NEW, group_name="sessions", deps=[nwb_sessions], kinds={"duckdb"})
def interval_lists(context: dg.AssetExecutionContext, catalog: CatalogResource) -> dg.MaterializeResult:
    """Epochs (with their task, and whether each is a run or a sleep epoch), trials,
    position and raw data valid times; the intervals that decoding configurations
    decode become decoding-interval partitions."""
    cat = catalog.get()
    nwb_file_name = context.partition_key
    table = cat.interval_lists(nwb_file_name)
    epochs = cat.epochs(nwb_file_name)
    unknown = epochs.loc[epochs["epoch_kind"].isna(), "interval_list_name"].tolist()
    if unknown:
        context.log.warning(
            f"{nwb_file_name}: neither a task nor the tag says whether epoch(s) {', '.join(unknown)} are run or sleep "
            "epochs; {run_epochs} and {sleep_epochs} leave them out. Name them in a rule of decoding_configs.yaml."
        )
    decodable = pipeline.decodable_intervals(cat, nwb_file_name, pipeline.load_config())
    columns = ["interval_list_name", "epoch", "task_name", "task_environment", "camera_id", "epoch_kind"]
    metadata = {
        "intervals": _table(table),
        "epochs": _table(epochs[columns]),
        "n_intervals": len(table),
        "decoding_intervals": ", ".join(decodable) or "none",
    }
    return dg.MaterializeResult(metadata=metadata)


@dg.asset(
    partitions_def=sessions_partitions, automation_condition=PROCESS_NEW, group_name="sessions", deps=[nwb_sessions, parameter_sets], kinds={"nwb", "netcdf"}
)
def waveform_features(context: dg.AssetExecutionContext, catalog: CatalogResource) -> dg.MaterializeResult:
    """Per electrode group: spike times and their amplitude on each channel.

    Features stored in the NWB file are checked against the catalog (counts, finite
    values, time order). For every waveform features parameter set of the configuration,
    electrode groups recorded raw are band-passed, thresholded and measured from the raw
    ElectricalSeries, one netCDF file per group, registered with their lineage. Groups
    with no spikes, one channel or bad channels are reported, not dropped."""
    cat = catalog.get()
    nwb_file_name = context.partition_key
    rows = []
    for item in pipeline.check_nwb_features(cat, nwb_file_name):
        if item["message"]:
            context.log.warning(item["message"])
        rows.append(
            {"electrode_group_name": item["electrode_group_name"], "features_param_name": item["features_param_name"],
             "source": "nwb", "n_spikes": item["n_spikes"], "n_channels": item["n_channels"],
             "median_peak_uV": item["median_peak_uv"]}
        )  # fmt: skip
    for name in sorted(pipeline.load_config().get("waveform_features_params") or {}):
        for item in pipeline.extract_session_features(cat, nwb_file_name, name, run_id=context.run_id):
            if item.get("message"):
                context.log.warning(f"{nwb_file_name}, {name}: {item['message']}")
            if item["status"] == "extracted":
                rows.append(
                    {"electrode_group_name": item["electrode_group_name"], "features_param_name": name, "source": "raw",
                     "n_spikes": item["n_spikes"], "n_channels": item["n_channels"],
                     "median_peak_uV": item["median_peak_uv"]}
                )  # fmt: skip
    return dg.MaterializeResult(metadata={"electrode_groups": _table(pd.DataFrame(rows)), "n_electrode_groups": len(rows)})


@dg.asset(
    partitions_def=sessions_partitions, automation_condition=PROCESS_NEW, group_name="sessions", deps=[interval_lists, parameter_sets], kinds={"netcdf"}
)
def position(context: dg.AssetExecutionContext, catalog: CatalogResource) -> dg.MaterializeResult:
    """Head position, orientation, velocity and speed per epoch, from that epoch's
    camera LEDs (lost LEDs are missing data), for every position parameter set of the
    configuration. The table says which series each epoch used and whether it has an
    orientation (a one-LED rig has none)."""
    cat = catalog.get()
    config = pipeline.load_config()
    rows = []
    for name in sorted(config.get("position_params") or {}):
        for row in pipeline.process_session_position(cat, context.partition_key, name, config, run_id=context.run_id):
            if row["message"]:
                context.log.warning(row["message"])
            rows.append({"trodes_pos_params_name": name, **{k: v for k, v in row.items() if k != "message"}})
    return dg.MaterializeResult(metadata={"position_outputs": _table(pd.DataFrame(rows))})


@dg.asset(partitions_def=sessions_partitions, automation_condition=PROCESS_NEW, group_name="groups", deps=[waveform_features], kinds={"duckdb"})
def waveform_features_groups(context: dg.AssetExecutionContext, catalog: CatalogResource) -> dg.MaterializeResult:
    """The waveform features groups of the configuration for this session."""
    done = pipeline.ensure_features_groups(catalog.get(), context.partition_key, pipeline.load_config())
    for name, status in done.items():
        if status != "created":
            context.log.info(f"{context.partition_key}: waveform features group {name} {status}.")
    return dg.MaterializeResult(
        metadata={"waveform_features_groups": _table(pd.DataFrame({"name": list(done), "status": list(done.values())}))}
    )


@dg.asset(partitions_def=sessions_partitions, automation_condition=PROCESS_NEW, group_name="groups", deps=[position], kinds={"duckdb"})
def position_groups(context: dg.AssetExecutionContext, catalog: CatalogResource) -> dg.MaterializeResult:
    """The position groups of the configuration for this session."""
    names = pipeline.ensure_position_groups(catalog.get(), context.partition_key, pipeline.load_config())
    return dg.MaterializeResult(metadata={"position_group_names": ", ".join(names)})


session_assets = [nwb_sessions, interval_lists, waveform_features, position, waveform_features_groups, position_groups]

"""Jobs, the sensor that picks up new NWB files, and the schedule that decodes what is
missing."""


import json
from pathlib import Path

import dagster as dg

from catalog import CatalogError
from decoding_assets import pipeline

from .parameters import parameter_sets
from .partitions import decoding_intervals_partitions, decoding_partitions, sessions_partitions
from .resources import CatalogResource, watch_folder
from .sessions import session_assets

parameters_job = dg.define_asset_job("store_parameter_sets", selection=[parameter_sets])
sessions_job = dg.define_asset_job(
    "process_sessions", selection=dg.AssetSelection.assets(*session_assets), partitions_def=sessions_partitions
)


def decoding_job_name(config: pipeline.DecodingConfig) -> str:
    return f"decode_{config.name}"


def build_decoding_jobs(decoding_assets: list[dg.AssetsDefinition], configs) -> list:
    return [
        dg.define_asset_job(decoding_job_name(c), selection=[a], partitions_def=decoding_partitions)
        for a, c in zip(decoding_assets, configs)
    ]


def register_file(catalog, instance: dg.DagsterInstance, path: Path, config: dict) -> tuple[str, list[str]]:
    """Register an NWB file in the catalog and add its partitions to the instance."""
    cat = catalog.get()
    nwb_file_name = pipeline.register_session(cat, path, config)
    intervals = pipeline.decodable_intervals(cat, nwb_file_name, config)
    instance.add_dynamic_partitions(sessions_partitions.name, [nwb_file_name])
    instance.add_dynamic_partitions(decoding_intervals_partitions.name, intervals)
    return nwb_file_name, intervals


def _file_stamp(path: Path) -> str:
    stat = path.stat()
    return f"{stat.st_size}:{stat.st_mtime_ns}"


@dg.sensor(job=sessions_job, minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.RUNNING)
def new_nwb_files(context: dg.SensorEvaluationContext, catalog: CatalogResource):
    """Registers NWB files that appear in the watched folder and processes them.

    A file that cannot be registered, whatever the cause, is reported once (one line:
    the file and why) and skipped; the others go on. It is tried again when it changes
    (e.g. once a copy into the folder has finished). The cursor remembers the failures."""
    folder = watch_folder()
    if not folder.is_dir():
        return dg.SkipReason(f"Watched folder {folder} does not exist; create it or set DECODING_ASSETS_WATCH_DIR.")
    config = pipeline.load_config()
    cat = catalog.get()
    known = set(cat.sessions()["nwb_file_name"])
    failed = json.loads(context.cursor) if context.cursor else {}
    requests, problems = [], []
    for path in sorted(folder.glob("*.nwb")):
        if path.name in known:
            continue
        stamp = _file_stamp(path)
        if failed.get(path.name) == stamp:
            continue  # reported already, and unchanged since
        try:
            nwb_file_name, _ = register_file(catalog, context.instance, path, config)
        except Exception as error:  # any unreadable file is reported, never a failed tick
            failed[path.name] = stamp
            problems.append(pipeline.describe_failure(path, error))
            continue
        failed.pop(path.name, None)
        requests.append(dg.RunRequest(run_key=nwb_file_name, partition_key=nwb_file_name))
    for problem in problems:
        context.log.error(problem)
    context.update_cursor(json.dumps(failed, sort_keys=True))
    if not requests:
        return dg.SkipReason("No new NWB files." + (f" Not registered: {'; '.join(problems)}" if problems else ""))
    return requests


def build_missing_decodes_schedule(config: pipeline.DecodingConfig, job) -> dg.ScheduleDefinition:
    @dg.schedule(
        name=f"{decoding_job_name(config)}_missing",
        job=job,
        cron_schedule="0 * * * *",
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description=f"Every hour, decode ({config.name}) every interval of every processed session that has no output yet.",
    )
    def _missing(context: dg.ScheduleEvaluationContext, catalog: CatalogResource):
        cat = catalog.get()
        decoded = set(cat.outputs()["merge_id"])
        requests = []
        for nwb_file_name in cat.sessions()["nwb_file_name"]:
            try:
                cat.fetch_features_group(nwb_file_name, config.waveform_features_group_name)
                cat.fetch_position_group(nwb_file_name, config.position_group_name)
            except CatalogError:
                continue  # not processed yet: the sessions job will get there first
            intervals = pipeline.decoding_intervals(cat, nwb_file_name, config)
            context.instance.add_dynamic_partitions(sessions_partitions.name, [nwb_file_name])
            context.instance.add_dynamic_partitions(decoding_intervals_partitions.name, intervals)
            for interval in intervals:
                if pipeline.selection_for(cat, nwb_file_name, interval, config).merge_id in decoded:
                    continue
                key = dg.MultiPartitionKey({"session": nwb_file_name, "interval": interval})
                requests.append(dg.RunRequest(partition_key=key))
        return requests or dg.SkipReason("Every interval of every processed session is decoded.")

    return _missing

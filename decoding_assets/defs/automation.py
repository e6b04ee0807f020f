"""How the graph keeps up with the catalog: the catalog is the record of what exists,
and Dagster's view follows it.

- ``new_nwb_files`` registers NWB files that appear in the watched folder (in the
  catalog only: from there on they are like sessions registered from the CLI or Python);
- ``catalog_sync`` adds the partitions of sessions the catalog has (and of the decodings
  each session can feed), records decodes made outside Dagster as runless
  materializations with the same metadata, and fails the ``results_intact`` check of a
  decoding partition whose outputs were lost (materializing it decodes them again);
- the assets' automation conditions (``on_missing``) then process new sessions and decode
  new partitions: no schedule per configuration.

Partitions are only ever added through what the sensor returns."""

import json
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg
from dagster._core.storage.dagster_run import IN_PROGRESS_RUN_STATUSES
from dagster._core.storage.tags import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
    PARTITION_NAME_TAG,
)

from catalog import Catalog
from decoding_assets import pipeline, plan

from .decoding import RESULTS_INTACT, decoding_asset_key, partition_metadata, results_intact
from .parameters import parameter_sets, parameter_sets_metadata
from .partitions import decoding_partitions, sessions_partitions
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
        dg.define_asset_job(decoding_job_name(c), selection=[a], partitions_def=decoding_partitions(c.name))
        for a, c in zip(decoding_assets, configs)
    ]


def _file_stamp(path: Path) -> str:
    stat = path.stat()
    return f"{stat.st_size}:{stat.st_mtime_ns}"


@dg.sensor(minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.RUNNING)
def new_nwb_files(context: dg.SensorEvaluationContext, catalog: CatalogResource):
    """Registers NWB files that appear in the watched folder.

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
    registered, problems = [], []
    for path in sorted(folder.glob("*.nwb")):
        if path.name in known:
            continue
        stamp = _file_stamp(path)
        if failed.get(path.name) == stamp:
            continue  # reported already, and unchanged since
        try:
            registered.append(pipeline.register_session(cat, path, config))
        except Exception as error:  # any unreadable file is reported, never a failed tick
            failed[path.name] = stamp
            problems.append(pipeline.describe_failure(path, error))
            continue
        failed.pop(path.name, None)
    for problem in problems:
        context.log.error(problem)
    context.update_cursor(json.dumps(failed, sort_keys=True))
    said = [f"Registered {', '.join(registered)} (catalog_sync adds the partitions)."] if registered else []
    said += [f"Not registered: {'; '.join(problems)}"] if problems else []
    return dg.SkipReason(" ".join(said) or "No new NWB files.")


@dataclass(frozen=True)
class LostOutputs:
    """A decoding partition whose materialization lists outputs the catalog no longer
    has intact (a file found missing or altered, an output forgotten)."""

    key: dg.AssetKey
    session: str
    intervals: tuple[str, ...]

    @property
    def signature(self) -> str:
        return f"{self.key.to_user_string()}|{self.session}|{','.join(self.intervals)}"

    def check_failure(self) -> dg.AssetCheckEvaluation:
        return dg.AssetCheckEvaluation(
            asset_key=self.key, check_name=RESULTS_INTACT, passed=False, partition=self.session,
            metadata={"lost_intervals": ", ".join(self.intervals),
                      "what_to_do": "decoding-assets verify --repair, or materialize the partition: it decodes these "
                                    "intervals again"},
        )  # fmt: skip


@dataclass(frozen=True)
class CatalogSync:
    """What Dagster's view lacks of the catalog: partitions to add or remove (by
    partitions definition name), decodes to record, and decoding partitions whose
    outputs were lost (reported as a failed ``results_intact`` check)."""

    add: dict[str, list[str]] = field(default_factory=dict)
    remove: dict[str, list[str]] = field(default_factory=dict)
    events: list = field(default_factory=list)
    lost: list[LostOutputs] = field(default_factory=list)

    def describe(self, reported: frozenset[str] = frozenset()) -> str:
        parts = [f"added {', '.join(keys)} to {name}" for name, keys in self.add.items() if keys]
        parts += [f"removed {', '.join(keys)} from {name}" for name, keys in self.remove.items() if keys]
        parts += [f"recorded {len(self.events)} decode(s) made outside Dagster"] if self.events else []
        parts += [
            f"{lost.key.to_user_string()} {lost.session}: lost {', '.join(lost.intervals)}"
            for lost in self.lost
            if lost.signature not in reported
        ]
        return "; ".join(parts)

    def requests(self) -> list:
        return [dg.AddDynamicPartitionsRequest(name, keys) for name, keys in self.add.items() if keys] + [
            dg.DeleteDynamicPartitionsRequest(name, keys) for name, keys in self.remove.items() if keys
        ]

    def asset_events(self, reported: frozenset[str] = frozenset()) -> list:
        """The events to record: decodes made elsewhere, and a failed check for each
        partition that lost outputs (once: ``reported`` holds what was said already)."""
        return self.events + [lost.check_failure() for lost in self.lost if lost.signature not in reported]

    def apply(self, instance: dg.DagsterInstance) -> None:
        """Carry it out directly (the CLI; the sensor returns it instead)."""
        for event in self.asset_events():
            instance.report_runless_asset_event(event)
        for name, keys in self.add.items():
            if keys:
                instance.add_dynamic_partitions(name, keys)
        for name, keys in self.remove.items():
            for key in keys:
                instance.delete_dynamic_partition(name, key)


_SESSIONS_PER_OPENING = 20


def plan_sync(
    instance: dg.DagsterInstance, catalog: Catalog, config: dict, sessions: list[str] | None = None
) -> CatalogSync:
    """Compare the instance with the catalog (every session, or those named)."""
    all_sessions = list(catalog.sessions()["nwb_file_name"])
    sessions = all_sessions if sessions is None else [s for s in sessions if s in all_sessions]
    known = set(instance.get_dynamic_partitions(sessions_partitions.name))
    sync = CatalogSync(
        add={sessions_partitions.name: [s for s in sessions if s not in known]},
        # e.g. a typo in "Add a partition": one key, removed at the next tick
        remove={sessions_partitions.name: sorted(known - set(all_sessions))},
    )
    _follow_parameter_sets(instance, catalog, sync)
    for decoding in config["decodings"]:
        name, key = decoding_partitions(decoding.name).name, decoding_asset_key(decoding)
        present = set(instance.get_dynamic_partitions(name))
        busy = _partitions_in_progress(instance, decoding)
        sync.add[name], sync.remove[name] = [], sorted(present - set(all_sessions) - busy)
        plans = {}
        # one opening of the catalog per batch of sessions, not one per call (each costs
        # tens of ms on a DuckDB file): with hundreds of sessions a tick outlasted the
        # sensor's 60 s. A batch holds a DuckDB file about a second; decodes wait that long.
        for first in range(0, len(sessions), _SESSIONS_PER_OPENING):
            with catalog.held():
                for session in sessions[first : first + _SESSIONS_PER_OPENING]:
                    plans[session] = plan.plan_session(catalog, session, decoding, check_inputs=False)
        for session in sessions:
            planned = plans[session]
            wanted = [p for p in planned if p.status not in plan.NOT_WANTED]
            if not wanted:
                if session in present:
                    sync.remove[name].append(session)
                continue
            if session not in present:
                sync.add[name].append(session)
            if session in busy:
                continue  # its run records it
            _follow_outputs(instance, catalog, decoding, key, session, wanted, sync)
    return sync


def _follow_parameter_sets(instance: dg.DagsterInstance, catalog: Catalog, sync: "CatalogSync") -> None:
    """Parameter sets stored from Python show in the UI. Only once the asset was
    materialized: before that, its automation condition stores the configuration's."""
    records = instance.fetch_materializations(parameter_sets.key, limit=1).records
    if not records:
        return
    metadata = parameter_sets_metadata(catalog)
    shown = {k: v.value for k, v in records[0].asset_materialization.metadata.items() if k in metadata}
    if shown != metadata:
        recorded = {**metadata, "recorded_by": "catalog_sync: parameter sets stored outside Dagster"}
        sync.events.append(dg.AssetMaterialization(asset_key=parameter_sets.key, metadata=recorded))


def _follow_outputs(instance, catalog, decoding, key, session, wanted, sync: CatalogSync) -> None:
    decoded = {p.selection.merge_id for p in wanted if p.status == "decoded"}
    where = dg.AssetRecordsFilter(asset_key=key, asset_partitions=[session])
    records = instance.fetch_materializations(where, limit=1).records
    shown = _listed(records[0].asset_materialization if records else None)
    if decoded == shown:
        return
    if len(decoded) == len(wanted):
        metadata = partition_metadata(catalog, session, decoding)
        metadata["recorded_by"] = "catalog_sync: decoded outside Dagster, or changed in the catalog"
        sync.events.append(dg.AssetMaterialization(asset_key=key, partition=session, metadata=metadata))
    elif records and shown - decoded:
        intervals = tuple(p.interval for p in wanted if p.selection.merge_id in shown - decoded)
        sync.lost.append(LostOutputs(key, session, intervals))
    elif decoded - shown and decoded != _listed(_latest_observation(instance, where)):
        metadata = partition_metadata(catalog, session, decoding)
        sync.events.append(dg.AssetObservation(asset_key=key, partition=session, metadata=metadata))


def _listed(event) -> set[str]:
    """The merge_ids a materialization or observation of a decoding partition lists."""
    listed = event.metadata.get("outputs") if event is not None else None
    return set(listed.value) if listed is not None else set()


def _latest_observation(instance: dg.DagsterInstance, where: dg.AssetRecordsFilter):
    records = instance.fetch_observations(where, limit=1).records
    return records[0].event_log_entry.asset_observation if records else None


def _partitions_in_progress(instance: dg.DagsterInstance, decoding) -> set[str]:
    """Partitions of a decoding with a run in progress: the CLI's ``decode_<name>`` runs,
    and the UI's and backfills' runs that select the asset, one partition or a range of
    them (a backfill decodes several sessions per run)."""
    key = decoding_asset_key(decoding)
    runs = instance.get_runs(filters=dg.RunsFilter(statuses=list(IN_PROGRESS_RUN_STATUSES)))
    ours = [r for r in runs if r.job_name == decoding_job_name(decoding) or key in (r.asset_selection or ())]
    order = instance.get_dynamic_partitions(decoding_partitions(decoding.name).name)
    busy = set()
    for run in ours:
        if (one := run.tags.get(PARTITION_NAME_TAG)) is not None:
            busy.add(one)
        elif (first := run.tags.get(ASSET_PARTITION_RANGE_START_TAG)) in order:
            last = run.tags.get(ASSET_PARTITION_RANGE_END_TAG)
            start = order.index(first)
            busy.update(order[start : order.index(last) + 1] if last in order else order[start:])
    return busy


COMPACT_WHEN_OPENING_S = 0.05  # a rebuilt catalog opens in 10-20 ms here; 220 sessions of small writes took it to 120


@dg.sensor(minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.RUNNING)
def catalog_sync(context: dg.SensorEvaluationContext, catalog: CatalogResource):
    """Dagster's view follows the catalog: partitions for the sessions it has (from the
    watched folder, the CLI or Python), decodes made elsewhere recorded, a partition that
    lost outputs shown by its failed ``results_intact`` check (once; the cursor remembers
    what was said). The assets' automation conditions take it from there."""
    cat = catalog.get()
    sync = plan_sync(context.instance, cat, pipeline.load_config())
    # a DuckDB file slow to open (its indexes in pieces after many small writes) slows
    # every catalog call of every run: rebuilt here, between ticks
    if cat.compact(if_opening_slower_than_s=COMPACT_WHEN_OPENING_S):
        context.log.info(f"Compacted the catalog {cat.location}: its openings had become slow.")
    reported = frozenset(json.loads(context.cursor)) if context.cursor else frozenset()
    context.update_cursor(json.dumps(sorted(lost.signature for lost in sync.lost)))
    said = sync.describe(reported)
    if not said:
        return dg.SkipReason("Dagster's view matches the catalog.")
    context.log.info(said)
    return dg.SensorResult(dynamic_partitions_requests=sync.requests(), asset_events=sync.asset_events(reported))


@dg.sensor(minimum_interval_seconds=6 * 3600, default_status=dg.DefaultSensorStatus.RUNNING)
def verify_outputs(context: dg.SensorEvaluationContext, catalog: CatalogResource):
    """Every six hours, checks every decoding partition's files against the catalog (size
    and time; a file whose size or time changed is hashed) and reports the
    ``results_intact`` check for each. A bad file's status is recorded in the catalog, so
    ``catalog_sync`` then shows its partition as missing and automation decodes it again.
    ``decoding-assets verify --full`` hashes every file."""
    cat = catalog.get()
    events = [
        results_intact(cat, session, decoding)
        for decoding in pipeline.load_config()["decodings"]
        for session in context.instance.get_dynamic_partitions(decoding_partitions(decoding.name).name)
    ]
    failed = sum(not e.passed for e in events)
    context.log.info(f"Checked {len(events)} decoding partition(s): {failed} with a bad file.")
    return dg.SensorResult(asset_events=events) if events else dg.SkipReason("No decoding partitions yet.")

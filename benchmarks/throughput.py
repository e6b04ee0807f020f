"""Throughput on one machine: the overhead per partition of a backfill, beyond the decodes
themselves, with one session per run and with several; and the UI while a backfill of
10,000 partitions is planned. Through the real webserver and daemon.

    python benchmarks/throughput.py                       # 200 sessions, 20 of them one per run, 10,000 planned
    python benchmarks/throughput.py --sessions 40 --single 5 --planned 2000   # a quick check
    python benchmarks/throughput.py --keep DIR            # keep the home (catalog, instance, logs) in DIR

1. Tiny sessions: one small NWB file (2 tetrodes, epochs of 10, 2 and 5 s, 5 s trials,
   no raw recording) written with pynwb, copied under ``--sessions + --single`` names,
   registered and processed in this process with the pipeline's functions (what the
   session assets call), their partitions added as ``catalog_sync`` adds them. The
   configuration decodes one 5 s trial per session: a decode of about a second, so
   the overhead shows.
2. ``decoding-assets --home H ui`` under ``setsid``, with
   ``DECODING_ASSETS_PARTITIONS_PER_RUN=--per-run``.
3. One session per run: ``--single`` runs launched at once through GraphQL, each of one
   partition, as the UI launches "Materialize" of a partition (a backfill cannot do it:
   a job backfill of ``decode_contfrag_run`` follows the asset's backfill policy too, and
   put 2 sessions in one run). Several per run: "backfill" of the decoding asset over the
   other ``--sessions`` sessions (its backfill policy puts ``--per-run`` in each run).
   Each is timed from launch until its last run ends.
   Overhead per partition = (the backfill's seconds - the sum of its decodes' seconds, as
   the catalog records them) / partitions; per run, (run seconds - its decodes) / its
   partitions, whose median is given too.
4. ``--planned`` more keys are added to ``sessions`` and ``decoding_contfrag_run`` (the
   ``catalog_sync`` sensor is stopped first, and automation paused, or they would remove
   the keys and process the sessions), and "backfill all" of the decoding asset is
   launched through GraphQL. While the daemon plans it, the pages the UI loads are timed:
   the asset's page (``assetNodes`` with its partition statuses) and the backfill's page
   (``partitionBackfillOrError``); the same queries before the launch are the baseline.
   The backfill is then cancelled.
5. Everything started is stopped by process id (``partition_backfill.stop``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

import dagster as dg  # noqa: E402
import yaml  # noqa: E402
from partition_backfill import (  # noqa: E402
    Backfill,
    GraphQL,
    clean_environment,
    follow_backfill,
    free_port,
    launch_run,
    markdown,
    stop,
    tail,
    wait_until_ready,
)

import decoding_assets  # noqa: E402

DECODING = "contfrag_run"
TINY = {"n_tetrodes": 2, "epoch_durations": (10.0, 2.0, 5.0), "trial_duration": 5.0, "raw_tetrodes": 0}
INTERVAL = "epoch0_block1_trial1"

ASSET_PAGE = """
query Asset($keys: [AssetKeyInput!]) {
  assetNodes(assetKeys: $keys) {
    assetKey { path }
    partitionStats { numPartitions numMaterialized numFailed numMaterializing }
    assetPartitionStatuses { __typename ... on DefaultPartitionStatuses {
      materializedPartitions failedPartitions unmaterializedPartitions materializingPartitions } }
  }
}"""
BACKFILL_PAGE = """
query Backfill($id: String!) {
  partitionBackfillOrError(backfillId: $id) {
    __typename
    ... on PartitionBackfill {
      status numPartitions numCancelable
      assetBackfillData { assetBackfillStatuses { __typename ... on AssetPartitionsStatusCounts {
        numPartitionsTargeted numPartitionsInProgress numPartitionsMaterialized numPartitionsFailed } } }
      runs(limit: 20) { runId status }
    }
  }
}"""
SENSOR = """
query Sensor($selector: SensorSelector!) {
  sensorOrError(sensorSelector: $selector) {
    __typename ... on Sensor { jobOriginId sensorState { selectorId status } }
  }
}"""
STOP_SENSOR = """
mutation Stop($origin: String!, $selector: String!) {
  stopSensor(jobOriginId: $origin, jobSelectorId: $selector) { __typename }
}"""
PAUSE_AUTOMATION = "mutation { setAutoMaterializePaused(paused: true) }"
CANCEL = """mutation Cancel($id: String!) { cancelPartitionBackfill(backfillId: $id) { __typename } }"""
LAUNCH = """
mutation Launch($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename ... on LaunchBackfillSuccess { backfillId } ... on Error { message }
  }
}"""


def write_config(path: Path) -> Path:
    """The shipped configuration with one decoding, of one trial per session."""
    config = yaml.safe_load((Path(decoding_assets.__file__).parent / "decoding_configs.yaml").read_text())
    config["decodings"] = {DECODING: {**config["decodings"][DECODING], "decoding_intervals": INTERVAL}}
    path.write_text(yaml.safe_dump(config))
    return path


def environment(home: Path, config: Path, per_run: int) -> dict[str, str]:
    return {
        **clean_environment(), "DECODING_ASSETS_HOME": str(home), "DAGSTER_HOME": str(home / "dagster"),
        "DECODING_ASSETS_CONFIG": str(config), "DECODING_ASSETS_PARTITIONS_PER_RUN": str(per_run),
    }  # fmt: skip


def prepare_sessions(home: Path, names: list[str], env: dict[str, str]) -> float:
    """Write one tiny session, copy it under every name, register and process each, and
    add their partitions; in a child process pointed at the home. Returns its seconds."""
    started = time.monotonic()
    code = "import sys; sys.path.insert(0, sys.argv[1]); import throughput; throughput.process_here(sys.argv[2:])"
    subprocess.run([sys.executable, "-c", code, str(HERE), *names], env=env, cwd=ROOT, check=True)
    return time.monotonic() - started


def process_here(names: list[str]) -> None:
    """What the session assets do for each session, with the pipeline's functions."""
    from catalog import Catalog
    from decoding_assets import pipeline
    from decoding_assets.cli import _setup_home
    from decoding_assets.defs.automation import plan_sync
    from decoding_assets.defs.resources import catalog_location, home, outputs_folder
    from decoding_assets.nwb import write_demo_session

    _setup_home(home())
    config = pipeline.load_config()
    catalog = Catalog(catalog_location(), str(outputs_folder()))
    pipeline.ensure_parameter_sets(catalog, config)
    folder = home() / "sessions"
    folder.mkdir(exist_ok=True)
    first = write_demo_session(folder / names[0], **TINY)
    for i, name in enumerate(names):
        if i:
            shutil.copyfile(first, folder / name)
        pipeline.register_session(catalog, folder / name, config)
        pipeline.check_nwb_features(catalog, name)
        for params in sorted(config.get("position_params") or {}):
            pipeline.process_session_position(catalog, name, params, config)
        pipeline.ensure_features_groups(catalog, name, config)
        pipeline.ensure_position_groups(catalog, name, config)
    with dg.DagsterInstance.get() as instance:
        plan_sync(instance, catalog, config).apply(instance)


def start_ui(home: Path, port: int, env: dict[str, str], log: Path) -> subprocess.Popen:
    command = ["setsid", sys.executable, "-m", "decoding_assets.cli", "--home", str(home), "ui", "--port", str(port)]
    with log.open("w") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)


def decode_seconds(home: Path, sessions: list[str]) -> dict[str, float]:
    """Per session, the seconds its decodes took, as the catalog records them."""
    from catalog import Catalog

    catalog = Catalog(str(home / "catalog.duckdb"), str(home / "outputs"))
    table = catalog.outputs()
    table = table[table["nwb_file_name"].isin(sessions)]
    return table.groupby("nwb_file_name")["run_seconds"].sum().to_dict()


def run_overheads(instance: dg.DagsterInstance, run_ids: list[str], decoded: dict[str, float]) -> list[float]:
    """Per run: (its seconds from start to end - its decodes' seconds) / its sessions."""
    overheads = []
    for record in instance.get_run_records(filters=dg.RunsFilter(run_ids=run_ids)):
        if record.start_time is None or record.end_time is None:
            continue
        sessions = {
            r.event_log_entry.asset_materialization.partition
            for r in instance.get_records_for_run(
                record.dagster_run.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION
            ).records
        }  # fmt: skip
        if sessions:
            spent = record.end_time - record.start_time - sum(decoded.get(s, 0.0) for s in sessions)
            overheads.append(spent / len(sessions))
    return overheads


def until_last_run_ended(instance: dg.DagsterInstance, run_ids: list[str]) -> float:
    """Seconds from the backfill's launch (for runs launched one by one: the first run's
    creation) to the end of its last run: the backfill daemon records the backfill as
    complete only on a later tick."""
    records = instance.get_run_records(filters=dg.RunsFilter(run_ids=run_ids))
    backfill_id = records[0].dagster_run.tags.get("dagster/backfill")
    if backfill_id:
        start = instance.get_backfill(backfill_id).backfill_timestamp
    else:
        start = min(r.create_timestamp.timestamp() for r in records)
    return max(r.end_time for r in records if r.end_time) - start


def backfill_row(label: str, backfill, home: Path, instance, sessions: list[str]) -> list:
    decoded = decode_seconds(home, sessions)
    per_run = run_overheads(instance, list(backfill.runs), decoded)
    overhead = (backfill.seconds - sum(decoded.values())) / len(sessions)
    until_runs_end = until_last_run_ended(instance, list(backfill.runs))
    runs_overhead = (until_runs_end - sum(decoded.values())) / len(sessions)
    return [
        label, backfill.status, len(sessions), len(backfill.runs), f"{backfill.seconds:.0f}", f"{until_runs_end:.0f}",
        f"{sum(decoded.values()):.0f}", f"{statistics.median(decoded.values()):.2f}" if decoded else "-",
        f"{overhead:.2f}", f"**{runs_overhead:.2f}**", f"{statistics.median(per_run):.2f}" if per_run else "-",
    ]  # fmt: skip


def one_per_run(gql: GraphQL, instance: dg.DagsterInstance, repository: dict, sessions: list[str]) -> Backfill:
    """A run per session, launched at once (they queue for the gpu pool); timed until the last ends."""
    started = time.monotonic()
    launched = [launch_run(gql, repository, {"path": ["decoding", DECODING]}, session) for session in sessions]
    refused = [said for run_id, said in launched if run_id is None]
    if refused:
        raise RuntimeError(f"Runs refused at launch: {refused}")
    run_ids = [run_id for run_id, _ in launched]
    while not all(instance.get_run_by_id(run_id).is_finished for run_id in run_ids):
        time.sleep(1)
    runs = {run_id: instance.get_run_by_id(run_id).status.value for run_id in run_ids}
    status = "all SUCCESS" if set(runs.values()) == {"SUCCESS"} else ", ".join(sorted(set(runs.values())))
    return Backfill("one per run", status, sessions, [], runs, time.monotonic() - started)


def timed(gql: GraphQL, query: str, **variables) -> float:
    started = time.monotonic()
    gql(query, **variables)
    return time.monotonic() - started


def stop_sync_and_automation(gql: GraphQL, repository: dict) -> None:
    selector = {**repository, "sensorName": "catalog_sync"}
    sensor = gql(SENSOR, selector=selector)["sensorOrError"]
    gql(STOP_SENSOR, origin=sensor["jobOriginId"], selector=sensor["sensorState"]["selectorId"])
    gql(PAUSE_AUTOMATION)


def plan_many(gql: GraphQL, home: Path, repository: dict, planned: int, window_s: float) -> list[list]:
    """Add ``planned`` keys, launch "backfill all" and time the UI's pages while it plans."""
    stop_sync_and_automation(gql, repository)
    keys = [f"planned_{i:05d}.nwb" for i in range(planned)]
    with dg.DagsterInstance.from_config(str(home / "dagster")) as instance:
        instance.add_dynamic_partitions("sessions", keys)
        instance.add_dynamic_partitions(f"decoding_{DECODING}", keys)
    asset = {"keys": [{"path": ["decoding", DECODING]}]}
    baseline = [timed(gql, ASSET_PAGE, **asset) for _ in range(5)]
    started = time.monotonic()
    launched = gql(LAUNCH, params={"assetSelection": asset["keys"], "allPartitions": True})["launchPartitionBackfill"]
    launch_s = time.monotonic() - started
    if launched["__typename"] != "LaunchBackfillSuccess":
        raise RuntimeError(f"The backfill of {planned} partitions was refused: {launched}")
    backfill_id = launched["backfillId"]
    asset_s, backfill_s, runs_seen = [], [], 0
    while time.monotonic() - started < window_s:
        asset_s.append(timed(gql, ASSET_PAGE, **asset))
        started_page = time.monotonic()
        state = gql(BACKFILL_PAGE, id=backfill_id)["partitionBackfillOrError"]
        backfill_s.append(time.monotonic() - started_page)
        runs_seen = max(runs_seen, len(state.get("runs") or []))
        time.sleep(1)
    gql(CANCEL, id=backfill_id)

    def summary(seconds: list[float]) -> str:
        return f"{statistics.median(seconds):.2f} / {max(seconds):.2f} ({len(seconds)})"

    return [
        ["asset page, before the backfill", summary(baseline)],
        ["`launchPartitionBackfill` (all partitions)", f"{launch_s:.2f}"],
        [f"asset page, while it plans ({window_s:.0f} s)", summary(asset_s)],
        [f"backfill page, while it plans ({window_s:.0f} s)", summary(backfill_s)],
        ["runs the backfill had launched when cancelled (up to 20 listed)", runs_seen],
    ]


def measure(work: Path, port: int, n_sessions: int, n_single: int, per_run: int, planned: int, window_s: float) -> str:
    home, logs = work / "home", work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = environment(home, write_config(work / "config.yaml"), per_run)
    single = [f"one_{i:03d}.nwb" for i in range(n_single)]
    several = [f"many_{i:03d}.nwb" for i in range(n_sessions)]
    print(f"Preparing {len(single) + len(several)} sessions in {home} ...", flush=True)
    prepare_s = prepare_sessions(home, single + several, env)
    ui = start_ui(home, port, env, logs / "ui.log")
    rows, planning = [], []
    try:
        gql = GraphQL(port)
        repository = wait_until_ready(gql, ui, logs / "ui.log", deadline_s=300)
        with dg.DagsterInstance.from_config(str(home / "dagster")) as instance:
            print(f"One per run: {len(single)} runs ...", flush=True)
            one = one_per_run(gql, instance, repository, single)
            rows.append(backfill_row("1 per run (a run per session)", one, home, instance, single))
            print(f"{per_run} per run: an asset backfill of {len(several)} sessions ...", flush=True)
            params = {"assetSelection": [{"path": ["decoding", DECODING]}], "partitionNames": several}
            many = follow_backfill(gql, instance, f"{per_run} per run", params, 3600)
            rows.append(backfill_row(f"{per_run} per run (asset backfill)", many, home, instance, several))
        if planned:
            print(f"Planning a backfill of {planned} more partitions ...", flush=True)
            planning = plan_many(gql, home, repository, planned, window_s)
    finally:
        stopped = stop(ui, home)
    header = ["mode", "status", "sessions", "runs", "backfill s", "until its last run ended s", "decodes s",
              "median decode s", "overhead s per session (backfill)", "overhead s per session (runs)",
              "median per run"]  # fmt: skip
    parts = [
        f"Sessions prepared (written, registered, processed) in {prepare_s:.0f} s.",
        markdown(header, rows),
        "Overhead per session = (seconds - decodes' seconds) / sessions, counting the seconds until the backfill is "
        "marked complete (the daemon does so on a later tick), or until its last run ended (runs); 'median per run' = "
        "the median over runs of (run seconds - its decodes) / its sessions (the daemon's queueing between runs "
        "excluded).",
    ]
    if planning:
        parts += [f"The UI while {planned} partitions are planned (seconds: median / max (queries)):"]
        parts += [markdown(["GraphQL", "seconds"], planning)]
    parts.append(f"Stopped: SIGTERM to {stopped['sigterm']}, SIGKILL to {stopped['sigkill']}; left: {stopped['left']}")
    if rows and any(row[1] not in ("COMPLETED_SUCCESS", "all SUCCESS") for row in rows):
        parts.append(f"ui.log:\n{tail(logs / 'ui.log')}")
    return "\n\n".join(parts)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=200, help="sessions of the several-per-run backfill")
    parser.add_argument("--single", type=int, default=20, help="sessions of the one-per-run backfill")
    parser.add_argument("--per-run", type=int, default=20, help="DECODING_ASSETS_PARTITIONS_PER_RUN")
    parser.add_argument("--planned", type=int, default=10_000, help="partitions of the planned backfill (0: skip)")
    parser.add_argument("--window-s", type=float, default=90.0, help="how long the UI is timed while it plans")
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it (default: a temporary folder)")
    parser.add_argument("--port", type=int, default=3400, help="the first port tried for the UI")
    args = parser.parse_args()
    if args.keep is not None and args.keep.exists() and any(args.keep.iterdir()):
        parser.error(f"--keep {args.keep} is not empty: the benchmark needs a new home; name a new folder")
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
    folder = contextlib.nullcontext(str(args.keep)) if args.keep else tempfile.TemporaryDirectory(prefix="throughput_")
    with folder as work:
        print(measure(Path(work).resolve(), free_port(args.port), args.sessions, args.single, args.per_run,
                      args.planned, args.window_s))  # fmt: skip
    return 0


if __name__ == "__main__":
    os.environ.pop("DECODING_ASSETS_HOME", None)
    sys.exit(main())

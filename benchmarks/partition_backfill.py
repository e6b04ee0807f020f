""""Backfill all" on our partition design, through the real webserver and daemon.

    python benchmarks/partition_backfill.py               # everything in a temporary folder
    python benchmarks/partition_backfill.py --keep DIR    # keep the home (catalog, instance, logs) in DIR

The decoding assets are partitioned by the sessions each decoding configuration decodes
(one dynamic partitions definition per configuration, ``decoding_<name>``, filled by the
``catalog_sync`` sensor). This script checks, as a user would meet it, that "backfill
all" succeeds and that the partition grid shows only real partitions:

1. Two sessions are written: ``demo.nwb`` (``write_demo_session``: 4 tetrodes in the file
   and 4 recorded raw, epochs 60/10/40 s, 20 s trials) and ``second.nwb`` (the same
   layout, another seed, no raw recording). ``decoding-assets --home H run`` registers,
   processes and decodes both; the keys of every dynamic partitions definition are
   noted (``second.nwb`` belongs in ``decoding_contfrag_run``, not in
   ``decoding_contfrag_raw_tetrodes``: it has no raw recording).
2. ``decoding-assets --home H ui --port P`` starts under ``setsid``; the script waits for
   the GraphQL endpoint, the code location and the backfill daemon.
3. "Backfill all" (GraphQL ``launchPartitionBackfill`` with ``allPartitions: true``) of
   the session assets, then of each decoding asset, one after another; each is polled
   until it ends: its status, the partitions it requested, per asset the partitions
   targeted, materialized and failed, its runs, and the seconds from launch to the end.
4. The partition grid of every asset (GraphQL ``assetNodes``: what the UI draws).
5. "Add a partition" with a typo (``addDynamicPartition`` of ``dmeo.nwb`` to
   ``decoding_contfrag_run``): the keys it added over every partitions definition; a
   backfill of that key alone, and "backfill all" of the asset while the key is listed
   (each: its status, or the refusal at launch); materializing that one partition (one
   run of the asset job, as the UI launches for a single partition) and its error; any
   run automation launched for it; and how long until ``catalog_sync`` removes it.
6. Everything started is stopped by process id (SIGTERM, then SIGKILL): the ``setsid``
   leader, and every process whose command line or environment names the home (the
   webserver, daemon, code server and run workers of ``dagster dev``).
7. Markdown tables of the results; the error messages of every failed run.

Linux only (processes are found through ``/proc``).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))  # the project's packages, however the script is started

import dagster as dg  # noqa: E402

from decoding_assets import pipeline  # noqa: E402
from decoding_assets.defs.sessions import session_assets  # noqa: E402
from decoding_assets.nwb import write_demo_session  # noqa: E402

SMALL = {"n_tetrodes": 4, "epoch_durations": (60.0, 10.0, 40.0), "trial_duration": 20.0}
SESSIONS = {"demo.nwb": {"raw_tetrodes": 4, "seed": 0}, "second.nwb": {"raw_tetrodes": 0, "seed": 1}}
RAW_ONLY_DECODING, ALL_DECODING = "contfrag_raw_tetrodes", "contfrag_run"
TYPO = "dmeo.nwb"
ORIGINS = ("automation", "auto_materialize", "backfill", "sensor")  # run tags that say what launched a run
GRID_COLUMNS = ["asset", "partitions", "materialized", "failed", "missing", "materializing"]
ENDED = {"COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "CANCELED"}

READY = """
query Ready {
  workspaceOrError { __typename ... on Workspace { locationEntries { name locationOrLoadError { __typename
    ... on RepositoryLocation { name repositories { name } } ... on PythonError { message } } } } }
  instance { autoMaterializePaused daemonHealth { allDaemonStatuses { daemonType healthy required } } }
}"""
LAUNCH = """
mutation Launch($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename ... on LaunchBackfillSuccess { backfillId } ... on Error { message }
  }
}"""
BACKFILL = """
query Backfill($id: String!) {
  partitionBackfillOrError(backfillId: $id) {
    __typename
    ... on PartitionBackfill {
      status numPartitions error { message }
      assetBackfillData {
        rootTargetedPartitions { partitionKeys }
        assetBackfillStatuses { __typename ... on AssetPartitionsStatusCounts {
          assetKey { path } numPartitionsTargeted numPartitionsInProgress numPartitionsMaterialized
          numPartitionsFailed } }
      }
      runs(limit: 100) { runId status tags { key value } }
    }
    ... on Error { message }
  }
}"""
GRID = """
query Grid($keys: [AssetKeyInput!]) {
  assetNodes(assetKeys: $keys) {
    assetKey { path }
    partitionStats { numPartitions numMaterialized numFailed numMaterializing }
    assetPartitionStatuses { __typename ... on DefaultPartitionStatuses {
      unmaterializedPartitions } }
  }
}"""
LAUNCH_RUN = """
mutation Run($params: ExecutionParams!) {
  launchRun(executionParams: $params) { __typename ... on LaunchRunSuccess { run { runId } } ... on Error { message } }
}"""
RUN_STATUS = """
query Status($id: ID!) { runOrError(runId: $id) { __typename ... on Run { status } ... on Error { message } } }"""
ADD_PARTITION = """
mutation Add($repository: RepositorySelector!, $name: String!, $key: String!) {
  addDynamicPartition(repositorySelector: $repository, partitionsDefName: $name, partitionKey: $key) {
    __typename ... on AddDynamicPartitionSuccess { partitionsDefName partitionKey } ... on Error { message }
  }
}"""


class GraphQL:
    """The webserver's GraphQL endpoint, as the UI calls it."""

    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}/graphql"

    def __call__(self, query: str, **variables) -> dict:
        body = json.dumps({"query": query, "variables": variables}).encode()
        request = urllib.request.Request(self.url, body, {"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                text = response.read().decode()
        except urllib.error.HTTPError as error:  # an answer holding a PythonError comes with status 500
            text = error.read().decode(errors="replace")
        try:
            answer = json.loads(text)
        except ValueError:
            answer = {}
        if answer.get("errors") or "data" not in answer:
            raise RuntimeError(f"{self.url} answered: {text[:3000]}")
        return answer["data"]


@dataclass
class Backfill:
    """One backfill as it ended (or as it stood at the deadline)."""

    label: str
    status: str
    partitions: list[str]
    per_asset: list[str]
    runs: dict[str, str]
    seconds: float
    error: str = ""
    failures: dict[str, list[str]] = field(default_factory=dict)  # run id -> its error messages
    decoded_now: dict[str, str] = field(default_factory=dict)  # decoding partition -> the intervals its run decoded


@dataclass
class TypoRun:
    """The run of the typo's partition and the key's removal, watched together (seconds since the key was added)."""

    status: str  # the run's last status
    ended_s: float | None = None
    removed_s: float | None = None
    status_when_removed: str = ""


@dataclass
class Typo:
    """What "Add a partition" with a typo leads to."""

    answer: str  # what addDynamicPartition said
    added_keys: dict[str, list[str]]  # per partitions definition, the keys it added
    backfills: list[Backfill]  # of the key alone, and "backfill all" while it is listed
    run_id: str | None  # materializing that one partition: one run, as the UI launches for a single partition
    run: TypoRun
    run_messages: list[str]


def clean_environment() -> dict[str, str]:
    """This shell's environment without settings that would point the children elsewhere."""
    return {k: v for k, v in os.environ.items() if not k.startswith("DECODING_ASSETS_") and k != "DAGSTER_HOME"}


def free_port(start: int) -> int:
    for port in range(start, start + 200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            with contextlib.suppress(OSError):
                probe.bind(("127.0.0.1", port))
                return port
    raise RuntimeError(f"No free port on 127.0.0.1 between {start} and {start + 199}; pass another --port.")


def tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else "(no log)"


def write_sessions(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    return [write_demo_session(folder / name, **SMALL, **options) for name, options in SESSIONS.items()]


def run_cli(home: Path, files: list[Path], log: Path) -> float:
    """``decoding-assets run`` on the files; returns its seconds. Stops the benchmark if it fails."""
    started = time.monotonic()
    with log.open("w") as out:
        result = subprocess.run(
            [sys.executable, "-m", "decoding_assets.cli", "--home", str(home), "run", *map(str, files)],
            stdout=out, stderr=subprocess.STDOUT, env=clean_environment(), cwd=ROOT,
        )  # fmt: skip
    if result.returncode != 0:
        raise RuntimeError(f"decoding-assets run exited with {result.returncode}; its output ({log}):\n{tail(log)}")
    return time.monotonic() - started


def dynamic_partitions(instance: dg.DagsterInstance, names: list[str]) -> dict[str, list[str]]:
    return {name: sorted(instance.get_dynamic_partitions(name)) for name in names}


def start_ui(home: Path, port: int, log: Path) -> subprocess.Popen:
    """The UI exactly as users start it, as the leader of its own session (``setsid``)."""
    command = ["setsid", sys.executable, "-m", "decoding_assets.cli", "--home", str(home), "ui", "--port", str(port)]
    with log.open("w") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=clean_environment(), cwd=ROOT)


def wait_until_ready(gql: GraphQL, ui: subprocess.Popen, log: Path, deadline_s: float) -> dict:
    """Wait for the endpoint, the code location and a healthy backfill daemon; returns
    the repository selector of the code location."""
    until = time.monotonic() + deadline_s
    while time.monotonic() < until:
        if ui.poll() is not None:
            raise RuntimeError(f"decoding-assets ui exited with {ui.returncode} before it was ready:\n{tail(log)}")
        with contextlib.suppress(urllib.error.URLError, ConnectionError, TimeoutError):
            data = gql(READY)
            selector = _loaded_repository(data["workspaceOrError"])
            daemons = {d["daemonType"]: d["healthy"] for d in data["instance"]["daemonHealth"]["allDaemonStatuses"]}
            if selector is not None and daemons.get("BACKFILL"):
                return selector
        time.sleep(2)
    raise RuntimeError(
        f"The UI on {gql.url} was not ready after {deadline_s:.0f} s (code location and backfill daemon):\n{tail(log)}"
    )


def _loaded_repository(workspace: dict) -> dict | None:
    for entry in workspace.get("locationEntries", []):
        location = entry["locationOrLoadError"]
        if location is None:
            continue  # still loading
        if location["__typename"] == "PythonError":
            raise RuntimeError(f"The code location {entry['name']} failed to load: {location['message']}")
        return {"repositoryLocationName": location["name"], "repositoryName": location["repositories"][0]["name"]}
    return None


def follow_backfill(
    gql: GraphQL, instance: dg.DagsterInstance, label: str, params: dict, deadline_s: float
) -> Backfill:
    """Launch a backfill and poll it until it ends or the deadline passes. A backfill
    refused at launch is a result too: its status says so, its error is the refusal."""
    started = time.monotonic()
    launched = gql(LAUNCH, params=params)["launchPartitionBackfill"]
    if launched["__typename"] != "LaunchBackfillSuccess":
        refusal = f"{launched['__typename']}: {' '.join(str(launched.get('message')).split())}"
        return Backfill(label, "REFUSED at launch", [], [], {}, time.monotonic() - started, error=refusal)
    backfill_id = launched["backfillId"]
    while True:
        state = gql(BACKFILL, id=backfill_id)["partitionBackfillOrError"]
        if state["__typename"] != "PartitionBackfill":
            raise RuntimeError(f"Backfill {backfill_id} ({label}): {state['__typename']}: {state.get('message')}")
        over = time.monotonic() - started > deadline_s
        if state["status"] in ENDED or over:
            break
        time.sleep(2)
    result = describe_backfill(label, state, time.monotonic() - started)
    if over and state["status"] not in ENDED:
        result.status += f" (still running at the {deadline_s:.0f} s deadline)"
    failed = [run for run, status in result.runs.items() if status == "FAILURE"]
    result.failures = {run: failure_messages(instance, run) for run in failed}
    result.decoded_now = decoded_now(instance, list(result.runs))
    return result


def decoded_now(instance: dg.DagsterInstance, run_ids: list[str]) -> dict[str, str]:
    """Per decoding partition the runs materialized, what they decoded (their ``decoded_now`` metadata)."""
    found = {}
    for run_id in run_ids:
        for record in instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION).records:
            materialization = record.event_log_entry.asset_materialization
            if "decoded_now" in materialization.metadata:
                found[materialization.partition] = materialization.metadata["decoded_now"].value
    return dict(sorted(found.items()))


def describe_backfill(label: str, state: dict, seconds: float) -> Backfill:
    data = state["assetBackfillData"] or {}
    per_asset = [
        f"{'/'.join(s['assetKey']['path'])}: {s['numPartitionsTargeted']} targeted, {s['numPartitionsMaterialized']} "
        f"materialized, {s['numPartitionsFailed']} failed, {s['numPartitionsInProgress']} in progress"
        for s in data.get("assetBackfillStatuses", [])
        if s["__typename"] == "AssetPartitionsStatusCounts"
    ]
    return Backfill(
        label=label, status=state["status"], seconds=seconds, per_asset=per_asset,
        partitions=sorted((data.get("rootTargetedPartitions") or {}).get("partitionKeys") or []),
        runs={run["runId"]: run["status"] for run in state["runs"]},
        error=(state["error"] or {}).get("message", ""),
    )  # fmt: skip


def failure_messages(instance: dg.DagsterInstance, run_id: str) -> list[str]:
    """What a failed run says: each step failure's message (a ``Failure``'s description,
    else the innermost cause), and the run failure's."""
    kinds = {dg.DagsterEventType.STEP_FAILURE, dg.DagsterEventType.RUN_FAILURE}
    messages = []
    for record in instance.get_records_for_run(run_id, of_type=kinds).records:
        event = record.event_log_entry.dagster_event
        if event.event_type == dg.DagsterEventType.STEP_FAILURE:
            data = event.step_failure_data
            described = data.user_failure_data.description if data.user_failure_data else None
            messages.append(f"step {event.step_key}: {described or _innermost(data.error)}")
        else:
            messages.append(f"run: {event.message or record.event_log_entry.user_message}")
    return messages


def _innermost(error) -> str:
    if error is None:
        return "(no error recorded)"
    while error.cause is not None:
        error = error.cause
    return " ".join(error.message.split())


def grid(gql: GraphQL, keys: list[dg.AssetKey]) -> list[dict]:
    """Per asset, the partition counts the UI's partition grid shows."""
    nodes = gql(GRID, keys=[{"path": key.path} for key in keys])["assetNodes"]
    rows = []
    for node in nodes:
        stats, statuses = node["partitionStats"], node["assetPartitionStatuses"]
        rows.append({
            "asset": "/".join(node["assetKey"]["path"]), "partitions": stats["numPartitions"],
            "materialized": stats["numMaterialized"], "failed": stats["numFailed"],
            "materializing": stats["numMaterializing"],
            "missing": len(statuses.get("unmaterializedPartitions", [])),
        })  # fmt: skip
    return sorted(rows, key=lambda row: row["asset"])


def add_typo(gql: GraphQL, instance: dg.DagsterInstance, repository: dict, names: list[str], deadline_s: float) -> Typo:
    """"Add a partition" with a typo; a backfill of that key, "backfill all" while it is
    listed, and materializing it alone; then how long until catalog_sync removes it."""
    before = dynamic_partitions(instance, names)
    partitions_def, asset = f"decoding_{ALL_DECODING}", {"path": ["decoding", ALL_DECODING]}
    answer = gql(ADD_PARTITION, repository=repository, name=partitions_def, key=TYPO)["addDynamicPartition"]
    added_at = time.monotonic()
    after = dynamic_partitions(instance, names)
    attempts = {f"{TYPO} alone": {"partitionNames": [TYPO]}, f"all, {TYPO} among them": {"allPartitions": True}}
    backfills = [
        follow_backfill(gql, instance, label, {"assetSelection": [asset], **which}, deadline_s)
        for label, which in attempts.items()
    ]
    run_id, said = launch_run(gql, repository, asset, TYPO)
    return Typo(
        answer=answer["__typename"] + (f": {answer['message']}" if "message" in answer else ""),
        added_keys={name: sorted(set(after[name]) - set(before[name])) for name in names},
        backfills=backfills, run_id=run_id,
        run=watch_typo(gql, instance, partitions_def, run_id, added_at, deadline_s) if run_id else TypoRun(said),
        run_messages=failure_messages(instance, run_id) if run_id else [],
    )  # fmt: skip


def launch_run(gql: GraphQL, repository: dict, asset: dict, partition: str) -> tuple[str | None, str]:
    """Materialize one partition of an asset as the UI does for a single partition: one
    run of the implicit asset job. Returns its id (None if refused) and what was said."""
    params = {
        "selector": {**repository, "jobName": "__ASSET_JOB", "assetSelection": [asset]},
        "executionMetadata": {"tags": [{"key": "dagster/partition", "value": partition}]},
    }
    launched = gql(LAUNCH_RUN, params=params)["launchRun"]
    if launched["__typename"] != "LaunchRunSuccess":
        return None, f"REFUSED at launch: {launched['__typename']}: {launched.get('message')}"
    return launched["run"]["runId"], "launched"


def watch_typo(
    gql: GraphQL, instance: dg.DagsterInstance, partitions_def: str, run_id: str, added_at: float, deadline_s: float
) -> TypoRun:
    """Poll the typo's run and its partitions definition together until the run has ended
    and the key is gone, or the deadline passes."""
    watched = TypoRun(status="not started")
    while time.monotonic() - added_at < deadline_s and (watched.ended_s is None or watched.removed_s is None):
        watched.status = gql(RUN_STATUS, id=run_id)["runOrError"].get("status", "unknown")
        now = time.monotonic() - added_at
        if watched.ended_s is None and watched.status in ("SUCCESS", "FAILURE", "CANCELED"):
            watched.ended_s = now
        if watched.removed_s is None and TYPO not in instance.get_dynamic_partitions(partitions_def):
            watched.removed_s, watched.status_when_removed = now, watched.status
        time.sleep(1)
    return watched


def other_runs(instance: dg.DagsterInstance, since: float, launched_here: set[str]) -> list[dg.DagsterRun]:
    """Runs created after ``since`` (Unix time) that neither a backfill nor this script
    launched: automation's, or a sensor's."""
    records = instance.get_run_records(filters=dg.RunsFilter(created_after=_utc(since)))
    runs = [record.dagster_run for record in records]
    return [run for run in runs if "dagster/backfill" not in run.tags and run.run_id not in launched_here]


def describe_run(run: dg.DagsterRun) -> str:
    origin = next((tag for tag in sorted(run.tags) if any(word in tag for word in ORIGINS)), "origin not tagged")
    return f"{run.job_name} [{run.tags.get('dagster/partition', '-')}] {run.status.value} ({origin})"


def _utc(timestamp: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(timestamp, dt.timezone.utc)


def processes_of(home: Path, leader: int) -> list[int]:
    """Processes this benchmark started: the UI's session leader and its session, and any
    process whose command line or environment names the home (a run worker of the
    daemon may have left the session)."""
    mine, needle = [], str(home).encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        pid = int(entry.name)
        with contextlib.suppress(OSError):
            in_session = os.getsid(pid) == leader
            named = needle in (entry / "cmdline").read_bytes() or needle in (entry / "environ").read_bytes()
            if pid == leader or in_session or named:
                mine.append(pid)
    return sorted(mine)


def stop(ui: subprocess.Popen, home: Path, grace_s: float = 5.0) -> dict[str, list[int]]:
    """SIGTERM to everything started, then SIGKILL to what is left; returns the pids of each."""
    termed = processes_of(home, ui.pid)
    _signal(termed, signal.SIGTERM)
    _wait_until_gone(ui, home, grace_s)
    killed = _alive(processes_of(home, ui.pid))
    _signal(killed, signal.SIGKILL)
    _wait_until_gone(ui, home, grace_s)
    return {"sigterm": termed, "sigkill": killed, "left": _alive(processes_of(home, ui.pid))}


def _signal(pids: list[int], signum: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)


def _wait_until_gone(ui: subprocess.Popen, home: Path, timeout_s: float) -> None:
    until = time.monotonic() + timeout_s
    while time.monotonic() < until:
        ui.poll()  # reaps the leader, our child
        if not _alive(processes_of(home, ui.pid)):
            return
        time.sleep(0.2)


def _alive(pids: list[int]) -> list[int]:
    return [pid for pid in pids if not _is_zombie(pid)]


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z"
    except OSError:
        return True  # gone


def markdown(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows])


def report(
    partitions: dict[str, list[str]], run_s: float, backfills: list[Backfill], cells: list[dict], typo: Typo | None,
    unexplained: list[dg.DagsterRun], stopped: dict[str, list[int]],
) -> str:  # fmt: skip
    second_ok = "second.nwb" in partitions[f"decoding_{ALL_DECODING}"] and (
        "second.nwb" not in partitions[f"decoding_{RAW_ONLY_DECODING}"]
    )
    parts = [
        f"`decoding-assets run demo.nwb second.nwb`: {run_s:.0f} s. Partitions afterwards "
        f"(second.nwb in decoding_{ALL_DECODING} and not in decoding_{RAW_ONLY_DECODING}: "
        f"{'yes' if second_ok else 'NO'}):",
        markdown(["partitions definition", "keys"], [[name, ", ".join(keys)] for name, keys in partitions.items()]),
        '"Backfill all" through GraphQL (`launchPartitionBackfill`, `allPartitions: true`), one after another:',
        markdown(
            ["backfill all of", "status", "partitions requested", "per asset", "runs", "decoded by its runs", "s"],
            [[b.label, b.status, ", ".join(b.partitions), "; ".join(b.per_asset), _run_counts(b.runs),
              "; ".join(f"{key}: {what}" for key, what in b.decoded_now.items()) or "-", round(b.seconds)]
             for b in backfills],
        ),  # fmt: skip
        "The partition grid afterwards (GraphQL `assetNodes`: `partitionStats`, `assetPartitionStatuses`):",
        markdown(GRID_COLUMNS, [[cell[column] for column in GRID_COLUMNS] for cell in cells]),
    ]
    if typo is not None:
        parts.append(f'"Add a partition" with a typo (`{TYPO}` on decoding_{ALL_DECODING}):')
        parts.append(typo_table(typo, unexplained))
    said = "; ".join(describe_run(run) for run in unexplained) or "none"
    parts.append(f"Runs launched by neither a backfill nor this script while the UI ran (automation, sensors): {said}.")
    for b in backfills + (typo.backfills if typo else []):
        for run_id, messages in b.failures.items():
            parts.append(f"Failed run {run_id} ({b.label}):\n" + "\n".join(f"  - {m}" for m in messages))
        if b.error:
            parts.append(f"Backfill ({b.label}) error: {b.error}")
    parts.append(
        f"Stopped: SIGTERM to {stopped['sigterm']}, SIGKILL to {stopped['sigkill']}; "
        f"still there: {stopped['left'] or 'none'}."
    )
    return "\n\n".join(parts)


def typo_table(typo: Typo, unexplained: list[dg.DagsterRun]) -> str:
    added = "; ".join(f"{name}: {', '.join(keys)}" for name, keys in typo.added_keys.items() if keys) or "none"
    n_added = sum(len(keys) for keys in typo.added_keys.values())
    run = typo.run
    removed = "NOT removed" if run.removed_s is None else f"{run.removed_s:.0f} s after it was added"
    ended = "not ended" if run.ended_s is None else f"ended at {run.ended_s:.0f} s"
    rows = [["`addDynamicPartition`", f"{typo.answer}; {n_added} key(s) added over every definition ({added})"]]
    rows += [
        [f"backfill ({b.label})", f"{b.status}, runs: {_run_counts(b.runs)}; {_one_error(b)}"] for b in typo.backfills
    ]
    rows += [
        [f"materialize {TYPO} alone (one run)", f"{run.status}: {' / '.join(typo.run_messages) or '-'}"],
        ["other runs of it (automation)", "; ".join(describe_run(r) for r in unexplained if _of_typo(r)) or "none"],
        ["removed by catalog_sync", f"{removed}; its run was {run.status_when_removed or '-'} then ({ended})"],
    ]  # fmt: skip
    return markdown(["step", "result"], rows)


def _of_typo(run: dg.DagsterRun) -> bool:
    return run.tags.get("dagster/partition") == TYPO


def _one_error(backfill: Backfill) -> str:
    messages = [message for run in backfill.failures.values() for message in run]
    return " / ".join(messages) or backfill.error or "no error"


def _run_counts(runs: dict[str, str]) -> str:
    counts: dict[str, int] = {}
    for status in runs.values():
        counts[status] = counts.get(status, 0) + 1
    return ", ".join(f"{n} {status}" for status, n in sorted(counts.items())) or "none"


def backfill_all(gql: GraphQL, instance: dg.DagsterInstance, decodings: list[str], deadline_s: float) -> list[Backfill]:
    """"Backfill all" of the session assets, then of each decoding asset, one after another."""
    until = time.monotonic() + deadline_s
    targets = [("session assets", [{"path": asset.key.path} for asset in session_assets])]
    targets += [(f"decoding/{name}", [{"path": ["decoding", name]}]) for name in decodings]
    backfills = []
    for label, selection in targets:
        print(f"Backfill all: {label} ...", flush=True)
        params = {"assetSelection": selection, "allPartitions": True}
        backfills.append(follow_backfill(gql, instance, label, params, max(until - time.monotonic(), 60)))
        print(f"  {backfills[-1].status} in {backfills[-1].seconds:.0f} s", flush=True)
    return backfills


def measure(work: Path, port: int, deadline_s: float) -> str:
    home, logs = work / "home", work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    config = pipeline.load_config()
    decodings = [d.name for d in config["decodings"]]
    names = ["sessions"] + [f"decoding_{name}" for name in decodings]
    print(f"Writing the sessions and running `decoding-assets run` (home {home}) ...", flush=True)
    run_s = run_cli(home, write_sessions(work / "sessions"), logs / "run.log")
    with dg.DagsterInstance.from_config(str(home / "dagster")) as instance:
        partitions = dynamic_partitions(instance, names)
    print(f"Partitions: {partitions}", flush=True)
    ui = start_ui(home, port, logs / "ui.log")
    ui_started = time.time()
    backfills, cells, typo, unexplained = [], [], None, []
    try:
        gql = GraphQL(port)
        repository = wait_until_ready(gql, ui, logs / "ui.log", deadline_s=300)
        print(f"UI ready on {gql.url}; pids {processes_of(home, ui.pid)} ({repository})", flush=True)
        with dg.DagsterInstance.from_config(str(home / "dagster")) as instance:
            backfills = backfill_all(gql, instance, decodings, deadline_s)
            keys = [asset.key for asset in session_assets] + [dg.AssetKey(["decoding", n]) for n in decodings]
            cells = grid(gql, keys)
            print(f'"Add a partition" {TYPO} ...', flush=True)
            typo = add_typo(gql, instance, repository, names, deadline_s=240)
            unexplained = other_runs(instance, ui_started, launched_here={typo.run_id})
    finally:
        stopped = stop(ui, home)
    return report(partitions, run_s, backfills, cells, typo, unexplained, stopped)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it (default: a temporary folder)")
    parser.add_argument("--port", type=int, default=3300, help="the first port tried for the UI (default 3300)")
    parser.add_argument("--deadline-s", type=float, default=900.0, help="for all the backfills together (default 900)")
    args = parser.parse_args()
    if args.keep is not None and args.keep.exists() and any(args.keep.iterdir()):
        parser.error(f"--keep {args.keep} is not empty: the benchmark needs a new home; name a new folder")
    port = free_port(args.port)
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
    folder = contextlib.nullcontext(str(args.keep)) if args.keep else tempfile.TemporaryDirectory(prefix="backfill_")
    with folder as work:
        print(measure(Path(work).resolve(), port, args.deadline_s))
    return 0


if __name__ == "__main__":
    sys.exit(main())

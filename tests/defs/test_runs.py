"""A decode killed with SIGKILL is noticed, marked failed and its gpu slot freed, so the
next decode starts on its own: real `decoding-assets run` processes on a real instance."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest
import yaml
from dagster._core.launcher import WorkerStatus

import decoding_assets
from catalog import Catalog
from decoding_assets.defs.decoding import GPU_POOL
from decoding_assets.defs.runs import (
    RUN_PROCESS_TAG,
    DecodingRunLauncher,
    default_decode_slots,
    release_dead_runs,
    set_decode_slots,
)
from decoding_assets.nwb import write_demo_session

DECODE_STARTS_WITHIN_S = 600  # generous: imports, registering and processing on a busy 2-core machine
RERUN_WITHIN_S = 600
INTERVAL = "epoch0_block1_trial1"


@pytest.fixture(scope="module")
def tiny_session(tmp_path_factory) -> Path:
    """Two tetrodes, no raw recording: what a decode needs, quickly processed."""
    return write_demo_session(
        tmp_path_factory.mktemp("nwb") / "tiny.nwb",
        n_tetrodes=2, epoch_durations=(40.0, 5.0, 20.0), trial_duration=20.0, raw_tetrodes=0,
    )  # fmt: skip


@pytest.fixture(scope="module")
def one_decode_config(tmp_path_factory) -> Path:
    """The shipped configuration, decoding one trial with one configuration."""
    config = yaml.safe_load((Path(decoding_assets.__file__).parent / "decoding_configs.yaml").read_text())
    config["decodings"] = {"contfrag_run": {**config["decodings"]["contfrag_run"], "decoding_intervals": INTERVAL}}
    path = tmp_path_factory.mktemp("config") / "one_decode.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
def home(tmp_path, monkeypatch, one_decode_config) -> Path:
    """A fresh home that `decoding-assets` in a child process and this test's instance share."""
    for key in ("DECODING_ASSETS_CATALOG", "DECODING_ASSETS_OUTPUTS", "DECODING_ASSETS_DECODE_SLOTS"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("DECODING_ASSETS_CONFIG", str(one_decode_config))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home" / "dagster"))
    return tmp_path / "home"


def _run_command(home: Path, nwb: Path) -> list[str]:
    return [sys.executable, "-m", "decoding_assets.cli", "--home", str(home), "run", str(nwb)]


def _claimed(instance: dg.DagsterInstance) -> list[str]:
    return [slot.run_id for slot in instance.event_log_storage.get_concurrency_info(GPU_POOL).claimed_slots]


def _start_decode(home: Path, nwb: Path, log: Path) -> tuple[subprocess.Popen, dg.DagsterInstance, str]:
    """`decoding-assets run` in a child process, returned once its decode step holds the
    gpu slot; with the instance and the decode's run id."""
    with log.open("w") as out:
        process = subprocess.Popen(_run_command(home, nwb), stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + DECODE_STARTS_WITHIN_S
    instance = None
    while time.monotonic() < deadline:
        assert process.poll() is None, f"`decoding-assets run` ended before decoding:\n{log.read_text()}"
        # the line saying where it works comes once its instance is set up: two processes creating one race
        if instance is None and "decoding-assets: home" in log.read_text():
            instance = dg.DagsterInstance.get()
        if instance is not None and (holders := _claimed(instance)):
            return process, instance, holders[0]
        time.sleep(0.2)
    process.kill()
    pytest.fail(f"No decode step started within {DECODE_STARTS_WITHIN_S} s:\n{log.read_text()}")


def _kill(process: subprocess.Popen) -> None:
    os.kill(process.pid, signal.SIGKILL)
    assert process.wait(timeout=60) == -signal.SIGKILL


def test_a_killed_decode_is_seen_dead_marked_failed_and_its_slot_freed(home, tiny_session, tmp_path):
    process, instance, run_id = _start_decode(home, tiny_session, tmp_path / "run.log")
    launcher = instance.run_launcher
    # the instance `decoding-assets` writes: run monitoring on, with the launcher that can tell
    assert isinstance(launcher, DecodingRunLauncher) and instance.run_monitoring_enabled
    assert instance.run_monitoring_settings["free_slots_after_run_end_seconds"] > 0
    assert launcher.check_run_worker_health(instance.get_run_by_id(run_id)).status == WorkerStatus.RUNNING

    _kill(process)
    run = instance.get_run_by_id(run_id)
    # what a killed process leaves: a run still started, holding the slot every later decode waits for
    assert run.status == dg.DagsterRunStatus.STARTED
    assert _claimed(instance) == [run_id]
    health = launcher.check_run_worker_health(run)
    assert health.status == WorkerStatus.FAILED and f"pid {process.pid}" in health.msg

    # a run on another host is never judged from here
    recorded = run.tags[RUN_PROCESS_TAG]
    instance.add_run_tags(run_id, {RUN_PROCESS_TAG: json.dumps({"host": "another-host", "pid": process.pid})})
    elsewhere = instance.get_run_by_id(run_id)
    assert launcher.check_run_worker_health(elsewhere).status == WorkerStatus.RUNNING
    assert release_dead_runs(instance) == []
    assert instance.get_run_by_id(run_id).status == dg.DagsterRunStatus.STARTED
    instance.add_run_tags(run_id, {RUN_PROCESS_TAG: recorded})

    assert release_dead_runs(instance) == [run_id]
    assert instance.get_run_by_id(run_id).status == dg.DagsterRunStatus.FAILURE
    failure = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.RUN_FAILURE).records
    assert f"pid {process.pid}" in failure[0].event_log_entry.dagster_event.message
    assert _claimed(instance) == []
    assert release_dead_runs(instance) == []


def test_the_next_decode_releases_a_killed_one_and_runs(home, tiny_session, tmp_path):
    process, instance, run_id = _start_decode(home, tiny_session, tmp_path / "run.log")
    _kill(process)

    # with the killed run's slot still claimed and a limit of one, this would wait forever
    rerun = subprocess.run(_run_command(home, tiny_session), capture_output=True, text=True, timeout=RERUN_WITHIN_S)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert f"Run {run_id} had lost its process: marked failed" in rerun.stdout
    assert instance.get_run_by_id(run_id).status == dg.DagsterRunStatus.FAILURE
    decodes = instance.get_run_records(dg.RunsFilter(job_name=instance.get_run_by_id(run_id).job_name))
    assert sorted(r.dagster_run.status.value for r in decodes) == ["FAILURE", "SUCCESS"]
    outputs = Catalog(str(home / "catalog.duckdb")).outputs(tiny_session.name)
    assert list(outputs["decoding_interval"]) == [INTERVAL]
    assert _claimed(instance) == []


def test_the_decode_slots_setting_and_its_default(tmp_path):
    with dg.DagsterInstance.local_temp(str(tmp_path)) as instance:

        def limit() -> int:
            return instance.event_log_storage.get_concurrency_info(GPU_POOL).limit

        assert set_decode_slots(instance, None) == default_decode_slots() == limit()
        assert set_decode_slots(instance, 3) == 3 == limit()
        # a limit set on purpose (here, or by `dagster instance concurrency set`) outlives the default
        assert set_decode_slots(instance, None) == 3 == limit()
        instance.event_log_storage.set_concurrency_slots(GPU_POOL, 5)
        assert set_decode_slots(instance, None) == 5 == limit()
        assert set_decode_slots(instance, 1) == 1 == limit()

"""Throughput on one machine: several sessions decoded in one run (a backfill's range),
each materialized on its own, and each concurrent decode on a device of its own."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
import yaml
from dagster._core.storage.partition_status_cache import get_and_update_asset_status_cache_value
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

import decoding_assets
from catalog import Catalog
from decoding_assets import pipeline
from decoding_assets.defs.automation import decoding_job_name
from decoding_assets.defs.decoding import partitions_per_run
from decoding_assets.defs.partitions import decoding_partitions, sessions_partitions
from decoding_assets.defs.runs import try_claim_device
from decoding_assets.nwb import write_demo_session

INTERVAL = "epoch0_block1_trial1"
TYPO = "dmeo.nwb"  # a partition no session stands behind: its decode fails, naming it


@pytest.fixture(scope="module")
def one_trial_config(tmp_path_factory) -> Path:
    """The shipped configuration, decoding one trial with one configuration."""
    config = yaml.safe_load((Path(decoding_assets.__file__).parent / "decoding_configs.yaml").read_text())
    config["decodings"] = {"contfrag_run": {**config["decodings"]["contfrag_run"], "decoding_intervals": INTERVAL}}
    path = tmp_path_factory.mktemp("config") / "one_trial.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
def home(tmp_path, monkeypatch, catalog_env, one_trial_config) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("DECODING_ASSETS_HOME", str(home))
    monkeypatch.setenv("DECODING_ASSETS_CONFIG", str(one_trial_config))
    monkeypatch.delenv("DECODING_ASSETS_DEVICE", raising=False)
    return home


def _tiny_sessions(folder: Path) -> list[Path]:
    """Two sessions of two tetrodes, no raw recording, different seeds."""
    folder.mkdir()
    return [
        write_demo_session(
            folder / name, n_tetrodes=2, epoch_durations=(40.0, 5.0, 20.0), trial_duration=20.0, raw_tetrodes=0,
            seed=seed,
        )  # fmt: skip
        for seed, name in enumerate(["a.nwb", "b.nwb"])
    ]


def test_a_run_decodes_several_sessions_each_materialized_and_a_failing_one_named(home, tmp_path):
    from decoding_assets.definitions import build_definitions

    config = pipeline.load_config()
    defs = build_definitions(config)
    decoding = config["decodings"][0]
    key = dg.AssetKey(["decoding", decoding.name])
    assert defs.get_assets_def(key).backfill_policy == dg.BackfillPolicy.multi_run(partitions_per_run())
    catalog = Catalog(os.environ["DECODING_ASSETS_CATALOG"], os.environ["DECODING_ASSETS_OUTPUTS"])
    (tmp_path / "dagster").mkdir()
    with dg.DagsterInstance.from_config(str(tmp_path / "dagster")) as instance:
        assert defs.resolve_job_def("store_parameter_sets").execute_in_process(instance=instance).success
        for path in _tiny_sessions(tmp_path / "nwb"):
            name = pipeline.register_session(catalog, path, config)
            instance.add_dynamic_partitions(sessions_partitions.name, [name])
            processed = defs.resolve_job_def("process_sessions").execute_in_process(instance=instance, partition_key=name)
            assert processed.success
        # a typo'd partition between the two sessions: the run's range goes through it
        instance.add_dynamic_partitions(sessions_partitions.name, [TYPO])
        instance.add_dynamic_partitions(decoding_partitions(decoding.name).name, ["a.nwb", TYPO, "b.nwb"])
        assert instance.get_dynamic_partitions(decoding_partitions(decoding.name).name) == ["a.nwb", TYPO, "b.nwb"]

        range_tags = {ASSET_PARTITION_RANGE_START_TAG: "a.nwb", ASSET_PARTITION_RANGE_END_TAG: "b.nwb"}
        result = defs.resolve_job_def(decoding_job_name(decoding)).execute_in_process(
            instance=instance, tags=range_tags, raise_on_error=False
        )
        assert not result.success
        failures = [e.step_failure_data.user_failure_data.description for e in result.all_events if e.is_step_failure]
        assert len(failures) == 1
        assert failures[0].startswith(f"Decoding {decoding.name!r}: 1 of 3 session(s) failed: {TYPO}: ")
        assert "no such session in the catalog" in failures[0] and "The other 2 are decoded" in failures[0]

        # one run, two materializations, each with its own session's decode
        runs = instance.get_runs(filters=dg.RunsFilter(job_name=decoding_job_name(decoding)))
        assert [r.run_id for r in runs] == [result.run_id]
        records = instance.fetch_materializations(key, limit=10).records
        assert sorted(r.asset_materialization.partition for r in records) == ["a.nwb", "b.nwb"]
        assert {r.run_id for r in records} == {result.run_id}
        for record in records:
            session, metadata = record.asset_materialization.partition, record.asset_materialization.metadata
            (merge_id,) = catalog.outputs(session)["merge_id"]
            assert metadata["outputs"].value == {merge_id: catalog.outputs(session)["path"].iloc[0]}
            assert metadata["decoded_now"].value == INTERVAL and metadata["n_decoded"].value == 1
        status = get_and_update_asset_status_cache_value(instance, key, decoding_partitions(decoding.name))
        failed = status.deserialize_failed_partition_subsets(decoding_partitions(decoding.name))
        assert set(failed.get_partition_keys()) == {TYPO}
        assert instance.get_materialized_partitions(key) == {"a.nwb", "b.nwb"}
        # every check reported per session
        for check in ("results_intact", "posterior_sums_to_one", "no_nan_inside_track"):
            history = instance.event_log_storage.get_asset_check_execution_history(dg.AssetCheckKey(key, check), 10)
            evaluations = [r.event.dagster_event.event_specific_data for r in history if r.partition is not None]
            passed = {evaluation.partition: evaluation.passed for evaluation in evaluations}
            assert passed == {"a.nwb": True, "b.nwb": True}, check


HOLDER = """
import sys, time
from pathlib import Path
from decoding_assets.defs.runs import claim_device
with claim_device(Path(sys.argv[1]), sys.argv[2:]) as device:
    print(device, flush=True)
    time.sleep(600)
"""


def _holder(folder: Path, devices: list[str]) -> tuple[subprocess.Popen, str]:
    """A process that claims one of ``devices`` and holds it; with the device it got."""
    process = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(folder), *devices], stdout=subprocess.PIPE, text=True
    )  # fmt: skip
    return process, process.stdout.readline().strip()


def test_concurrent_decodes_claim_different_devices_and_a_killed_one_frees_its_own(tmp_path):
    folder, devices = tmp_path / "device_locks", ["0", "1"]
    first, first_device = _holder(folder, devices)
    second, second_device = _holder(folder, devices)
    try:
        assert {first_device, second_device} == {"0", "1"}
        assert try_claim_device(folder, devices) is None  # both held
        os.kill(first.pid, signal.SIGKILL)
        assert first.wait(timeout=60) == -signal.SIGKILL
        claimed = try_claim_device(folder, devices)
        assert claimed is not None and claimed[0] == first_device
        os.close(claimed[1])
    finally:
        for process in (first, second):
            process.kill()
            process.wait(timeout=60)

"""Lab sessions, as the labs' converter lays them out, go from a folder of NWB files to
decodes with the default configuration: register -> waveform features -> position ->
groups -> decode, through a real Dagster instance and catalog."""

import os
import subprocess
import sys

import numpy as np
import pytest

from catalog import Catalog
from decoding_assets import pipeline
from decoding_assets.nwb import NWBReadError, open_raw_recording, read_raw_position, read_session_info
from decoding_assets.position import load_position
from decoding_assets.waveforms import (
    bandpass_sos,
    check_features_params,
    extract_waveform_features,
    load_features,
    settling_samples,
)
from tests.lab_files import LabEpoch, LabSessionSpec, write_lab_session

# one worker builds this module's sessions (pytest -n 2 --dist loadgroup)
pytestmark = pytest.mark.xdist_group("lab")

SLEEP_RUN = LabSessionSpec()  # 01_s1 sleep box (camera 0), 02_r1 open field (camera 1, another scale)
ONE_LED = LabSessionSpec(
    epochs=(
        LabEpoch("01_a1", 50.0, "openfield", "open field", 0, True),  # a run epoch the tag does not call one
        LabEpoch("02_s1", 15.0, "sleep", "sleep box", 1, False),
    ),
    n_leds=1,
    bad_channel_as_strings=True,
    bad_channels=(2,),
    ref_elect_id=15,
    seed=1,
)
NO_TASKS_WITH_TRIALS = LabSessionSpec(with_tasks=False, with_trials=True, seed=2)
SESSIONS = {"lab_sleep_run.nwb": SLEEP_RUN, "lab_one_led.nwb": ONE_LED, "lab_trials.nwb": NO_TASKS_WITH_TRIALS}


@pytest.fixture(scope="module")
def lab_run(tmp_path_factory, new_catalog):
    """A folder with three lab files and one unreadable file, run as a user would:
    ``decoding-assets run FOLDER`` in its own process, with the default configuration."""
    folder = tmp_path_factory.mktemp("lab_files")
    truths = {name: write_lab_session(folder / name, spec) for name, spec in SESSIONS.items()}
    (folder / "a_broken_copy.nwb").write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(100))  # a copy cut short
    home = tmp_path_factory.mktemp("home")
    place = new_catalog()
    done = subprocess.run(
        [sys.executable, "-m", "decoding_assets.cli", "--home", str(home), "run", str(folder)],
        capture_output=True, text=True, timeout=1200, env={**os.environ, **place.environ},
    )  # fmt: skip
    return {"home": home, "folder": folder, "truths": truths, "status": done.returncode, "out": done.stdout,
            "err": done.stderr, "catalog": Catalog(place.location, place.output_dir)}  # fmt: skip


def test_a_folder_of_lab_files_is_registered_and_decoded(lab_run):
    catalog, err = lab_run["catalog"], lab_run["err"]
    # the unreadable file is reported once, in one line, with its cause; the others go on
    assert lab_run["status"] == 1
    assert "Traceback" not in err + lab_run["out"]
    reports = [line for line in err.splitlines() if "a_broken_copy.nwb" in line]
    assert len(reports) == 1 and "Cannot read NWB file a_broken_copy.nwb" in reports[0]
    assert "3 of 4 file(s) registered" in lab_run["out"]
    assert sorted(catalog.sessions()["nwb_file_name"]) == sorted(SESSIONS)
    decoded = {name: sorted(catalog.outputs(name).query("waveform_features_group_name == 'all_tetrodes'")["decoding_interval"])
               for name in SESSIONS}  # fmt: skip
    trials = catalog.interval_lists("lab_trials.nwb").query("source == 'trial'")["interval_list_name"].tolist()
    # every run epoch (from the tasks table, or the tags), or the trials where a file has them
    assert decoded == {"lab_sleep_run.nwb": ["02_r1"], "lab_one_led.nwb": ["01_a1"], "lab_trials.nwb": sorted(trials)}
    assert len(trials) >= 2
    for name in SESSIONS:
        outputs = catalog.outputs(name)
        # simulated open field, 4 tetrodes extracted from the raw signal: measured 5-9 cm
        assert (outputs["median_decoding_error_cm"] < 15.0).all(), (name, outputs["median_decoding_error_cm"].tolist())
        for merge_id in outputs["merge_id"]:
            selection = catalog.fetch_selection(merge_id)
            epoch = "02_r1" if name != "lab_one_led.nwb" else "01_a1"
            assert selection.encoding_interval == epoch


def test_epochs_are_told_apart_by_task_then_tag(lab_run):
    catalog = lab_run["catalog"]
    kinds = {name: dict(zip(catalog.epochs(name)["interval_list_name"], catalog.epochs(name)["epoch_kind"])) for name in SESSIONS}
    assert kinds == {
        "lab_sleep_run.nwb": {"01_s1": "sleep", "02_r1": "run"},
        "lab_one_led.nwb": {"01_a1": "run", "02_s1": "sleep"},
        "lab_trials.nwb": {"01_s1": "sleep", "02_r1": "run"},  # no tasks table: the tags
    }
    epochs = catalog.epochs("lab_sleep_run.nwb").set_index("interval_list_name")
    assert epochs.loc["02_r1", "task_name"] == "openfield" and epochs.loc["02_r1", "camera_id"] == 1
    assert epochs.loc["01_s1", "epoch"] == 1
    assert catalog.epochs("lab_trials.nwb")["task_name"].isna().all()
    # the lab's interval names: one per position series (from 0, in time order), the raw data's stretches
    names = set(catalog.interval_lists("lab_sleep_run.nwb")["interval_list_name"])
    assert {"01_s1", "02_r1", "pos 0 valid times", "pos 1 valid times", "raw data valid times"} <= names
    truth = lab_run["truths"]["lab_sleep_run.nwb"]
    raw_valid = catalog.fetch_interval_list("lab_sleep_run.nwb", "raw data valid times")
    np.testing.assert_allclose(raw_valid, [truth.epoch_times["01_s1"], truth.epoch_times["02_r1"]])
    pos_1 = catalog.fetch_interval_list("lab_sleep_run.nwb", "pos 1 valid times")
    assert truth.epoch_times["02_r1"][0] <= pos_1[0, 0] and pos_1[-1, 1] <= truth.epoch_times["02_r1"][1]


@pytest.mark.parametrize("name", ["lab_sleep_run.nwb", "lab_one_led.nwb"])
def test_position_follows_each_cameras_scale_and_never_holds_a_lost_led(lab_run, name):
    catalog, truth = lab_run["catalog"], lab_run["truths"][name]
    outputs = catalog.position_outputs(name).set_index("interval_list_name")
    for epoch, spec in zip(truth.epoch_times, SESSIONS[name].epochs):
        position = load_position(outputs.loc[epoch, "path"])
        time = position.index.to_numpy()
        true = np.column_stack([np.interp(time, truth.head_time, truth.head_cm[:, d]) for d in range(2)])
        xy = position[["position_x", "position_y"]].to_numpy()
        ok = ~np.isnan(xy).any(axis=1)
        assert ok.mean() > 0.9
        error = np.linalg.norm(xy[ok] - true[ok], axis=1)
        # each epoch in its own camera's metres per pixel; smoothing over 0.125 s costs < 2 cm
        assert np.percentile(error, 99) < 3.0, (epoch, np.percentile(error, 99))
        # Trodes' (0, 0) for a lost LED is never a position (the arena is far from the corner)
        assert np.nanmin(xy) > 0.5 * np.nanmin(truth.head_cm)
        if spec.moving:  # the 1.5 s tracking gap stays empty
            start = truth.epoch_times[epoch][0]
            gap = (time > start + 20.1) & (time < start + 21.4)
            assert np.isnan(xy[gap]).all()
        orientation = position["orientation"].to_numpy()
        if SESSIONS[name].n_leds == 1:
            assert np.isnan(orientation).all()  # one LED: no head direction
        else:
            assert np.isfinite(orientation[ok]).mean() > 0.95


def test_spikes_are_found_within_each_stretch_and_never_across_a_gap(lab_run):
    catalog, truth = lab_run["catalog"], lab_run["truths"]["lab_sleep_run.nwb"]
    extracted = catalog.extracted_features("lab_sleep_run.nwb")
    assert extracted["electrode_group_name"].tolist() == ["0", "1", "2", "3"]
    settling = settling_samples(bandpass_sos(check_features_params({}), truth.sampling_rate, "e-series")) / truth.sampling_rate
    edges = np.array(list(truth.epoch_times.values())).ravel()
    for row in extracted.itertuples():
        times, _ = load_features(row.path)
        found = truth.spike_times[int(row.electrode_group_name)]
        # no spike within the filter's settling time of an epoch's edge (none was put there)
        assert np.min(np.abs(times[:, None] - edges[None, :])) > settling
        # the spikes put in the signal are found, at their samples
        matched = np.min(np.abs(found[:, None] - times[None, :]), axis=1) < 0.2e-3
        assert matched.mean() > 0.95
        assert times.size < 1.05 * found.size
    assert extracted.set_index("electrode_group_name").loc["1", "bad_electrode_ids"].tolist() == [6]


def test_reference_and_string_bad_channels_from_the_file(lab_run):
    path = lab_run["folder"] / "lab_one_led.nwb"
    truth = lab_run["truths"]["lab_one_led.nwb"]
    with open_raw_recording(path) as recording:
        assert recording.sampling_rate == 30_000.0  # from the timestamps, not 1 / a float-noise step
        assert len(recording.segments) == 2
        assert recording.bad.tolist().count(True) == 1 and recording.bad[2]  # "True" as a string
        assert set(recording.reference_electrode_ids) == {15}
        by_reference = {
            reference: {g.electrode_group_name: g for g in extract_waveform_features(recording, {"reference": reference})}
            for reference in ("file", "none")
        }
    assert by_reference["file"]["0"].electrode_ids == [0, 1, 3] and by_reference["file"]["0"].bad_electrode_ids == [2]

    def false_positives(groups):
        return sum(
            int(np.sum(np.min(np.abs(g.times[:, None] - truth.spike_times[int(n)][None, :]), axis=1) > 0.2e-3))
            for n, g in groups.items() if n != "3"
        )  # fmt: skip

    # the reference carries a common noise: following ref_elect_id removes its crossings
    assert false_positives(by_reference["file"]) < 0.2 * false_positives(by_reference["none"])


def test_sleep_epochs_decode_replay_when_a_configuration_asks(lab_run, tmp_path):
    catalog = lab_run["catalog"]
    config = pipeline.load_config()
    replay = pipeline.DecodingConfig(
        name="contfrag_replay", waveform_features_group_name="all_tetrodes", position_group_name="run_epochs",
        decoding_param_name="contfrag_clusterless", encoding_interval="{nearest_run_epoch}",
        decoding_intervals=("{sleep_epochs}",),
    )  # fmt: skip
    assert pipeline.decoding_intervals(catalog, "lab_sleep_run.nwb", replay) == ["01_s1"]
    assert pipeline.encoding_interval_for(catalog, "lab_sleep_run.nwb", replay, "01_s1") == "02_r1"
    merge_id = pipeline.select(catalog, "lab_sleep_run.nwb", "01_s1", replay)
    out = pipeline.decode(catalog, merge_id)
    # no position in the decoding interval's group: the decode is made, its error not measured
    assert out["median_decoding_error_cm"] is None
    assert out["max_posterior_sum_error"] < 1e-3 and out["n_nan_inside_track"] == 0
    assert out["n_time_bins"] == pytest.approx(20.0 * 500, abs=2)
    out["results"].close()
    assert config["decodings"][0].name == "contfrag_run"


def test_an_ambiguous_position_layout_names_the_series_and_the_key(tmp_path, new_catalog):
    import datetime as dt

    from pynwb import NWBHDF5IO, NWBFile
    from pynwb.behavior import Position, SpatialSeries

    path = tmp_path / "three_leds.nwb"
    nwb = NWBFile("three LEDs", "id", dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc))
    nwb.add_epoch(0.0, 10.0, tags=["01_r1"])
    position = Position(name="Position")
    time = np.arange(0, 10, 1 / 30)
    for k, name in enumerate(("red", "green", "blue")):
        data = np.column_stack([0.5 + 0.01 * k + 0.01 * time, 0.5 + 0.0 * time])
        position.add_spatial_series(SpatialSeries(name=name, data=data, timestamps=time, reference_frame="corner"))
    nwb.create_processing_module("behavior", "tracking").add(position)
    with NWBHDF5IO(str(path), "w") as f:
        f.write(nwb)
    with pytest.raises(NWBReadError, match=r"holds position series \['blue', 'green', 'red'\].*position_series"):
        read_session_info(path)
    sources = read_raw_position(path, {"front": "red", "back": "green"})
    assert len(sources) == 1 and sources[0].name == "red, green"
    np.testing.assert_allclose(sources[0].front[:, 0] - sources[0].back[:, 0], -1.0)  # cm
    # the configuration's mapping settles it for registration too
    catalog = Catalog(new_catalog().location)
    config = {"position_series": {"three_*.nwb": {"front": "red", "back": "green"}}}
    assert pipeline.register_session(catalog, path, config) == "three_leds.nwb"
    assert "pos 0 valid times" in set(catalog.interval_lists("three_leds.nwb")["interval_list_name"])


def test_a_single_processed_series_is_the_head(tmp_path):
    import datetime as dt

    from pynwb import NWBHDF5IO, NWBFile
    from pynwb.behavior import Position, SpatialSeries

    path = tmp_path / "processed.nwb"
    nwb = NWBFile("processed position", "id", dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc))
    time = np.arange(0, 10, 1 / 30)
    data = np.column_stack([20 + time, 30 + 0 * time])
    position = Position(name="Position")
    position.add_spatial_series(
        SpatialSeries(name="head", data=data, timestamps=time, unit="cm", conversion=0.01, reference_frame="corner")
    )
    nwb.create_processing_module("behavior", "tracking").add(position)
    with NWBHDF5IO(str(path), "w") as f:
        f.write(nwb)
    (source,) = read_raw_position(path)
    assert source.back is None and source.n_leds == 1
    np.testing.assert_allclose(source.front, data)


def test_the_sensor_reports_a_bad_file_once_and_goes_on(lab_run, tmp_path, monkeypatch, new_catalog):
    import shutil

    import dagster as dg

    from decoding_assets.defs.automation import catalog_sync, new_nwb_files
    from decoding_assets.defs.resources import CatalogResource

    incoming = tmp_path / "incoming"
    incoming.mkdir()
    monkeypatch.setenv("DECODING_ASSETS_WATCH_DIR", str(incoming))
    shutil.copy(lab_run["folder"] / "a_broken_copy.nwb", incoming / "a_broken_copy.nwb")
    for name in ("lab_one_led.nwb", "lab_sleep_run.nwb"):
        shutil.copy(lab_run["folder"] / name, incoming / name)
    place = new_catalog()
    resource = CatalogResource(location=place.location, output_dir=str(place.output_dir))
    with dg.DagsterInstance.ephemeral() as instance:
        context = dg.build_sensor_context(instance=instance, resources={"catalog": resource})
        first = new_nwb_files(context)
        # the bad file sorts first; the good files after it are registered all the same
        assert first.skip_message.startswith("Registered lab_one_led.nwb, lab_sleep_run.nwb ")
        assert "Not registered: a_broken_copy.nwb" in first.skip_message
        assert "a_broken_copy.nwb" in context.cursor
        second = new_nwb_files(dg.build_sensor_context(instance=instance, resources={"catalog": resource}, cursor=context.cursor))
        assert second.skip_message == "No new NWB files."  # reported once, not every tick
        # the copy finishes: the file changes, so it is tried again
        shutil.copy(lab_run["folder"] / "lab_trials.nwb", incoming / "a_broken_copy.nwb")
        third = new_nwb_files(dg.build_sensor_context(instance=instance, resources={"catalog": resource}, cursor=context.cursor))
        assert third.skip_message.startswith("Registered a_broken_copy.nwb ")
        # registered but not processed yet: sessions get partitions, no decoding does yet
        synced = catalog_sync(dg.build_sensor_context(instance=instance, resources={"catalog": resource}))
        added = {r.partitions_def_name: sorted(r.partition_keys) for r in synced.dynamic_partitions_requests}
        assert added == {"sessions": ["a_broken_copy.nwb", "lab_one_led.nwb", "lab_sleep_run.nwb"]}


def test_an_unexpected_failure_is_one_line(tmp_path):
    line = pipeline.describe_failure(tmp_path / "x.nwb", OSError("Unable to open object\n  (bad symbol table)"))
    assert line == "x.nwb: not registered: OSError: Unable to open object (bad symbol table)"
    ours = pipeline.describe_failure(tmp_path / "x.nwb", NWBReadError("NWB file x.nwb has no epochs."))
    assert ours == "x.nwb: not registered: NWB file x.nwb has no epochs."

"""Bad input never stops a whole session, and every error names its cause: electrode
groups without spikes, camera timestamps out of order, intervals of zero length, and
configuration files with wrong types, values or keys."""

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from catalog import Catalog, CatalogError, DecodingSelection
from decoding_assets import pipeline
from decoding_assets.models import check_decoding_params, decoding_model, store_decoding_params
from decoding_assets.nwb import NWBReadError, RawPosition, read_raw_position, read_waveform_features
from decoding_assets.position import check_position_params, process_position
from decoding_assets.waveforms import check_features_params

EPOCH_S = 30.0
FRAME_RATE = 30.0


def write_session(
    path: Path, spikes: dict[str, int], frame_times: np.ndarray | None = None, trials: tuple = (), seed: int = 0
) -> Path:
    """A small session written with pynwb: run epoch ``00_r1`` [0, 30] s, an epoch
    ``01_s1`` of zero length at 30 s, two LEDs circling the arena at ``frame_times``
    (default 30 Hz), and per electrode group (4 channels) ``spikes[name]`` clusterless
    spikes in ``processing/ecephys``; ``trials``: (name, start, stop)."""
    from pynwb import NWBHDF5IO, NWBFile
    from pynwb.behavior import Position, SpatialSeries
    from pynwb.ecephys import FeatureExtraction

    rng = np.random.default_rng(seed)
    session_start = dt.datetime(2026, 1, 5, tzinfo=dt.timezone.utc)
    nwb = NWBFile(session_description="bad input", identifier=path.stem, session_start_time=session_start)
    nwb.add_epoch(start_time=0.0, stop_time=EPOCH_S, tags=["00_r1"])
    nwb.add_epoch(start_time=EPOCH_S, stop_time=EPOCH_S, tags=["01_s1"])
    if trials:
        nwb.add_trial_column(name="trial_name", description="interval list name of the trial")
        for name, start, stop in trials:
            nwb.add_trial(start_time=start, stop_time=stop, trial_name=name)
    device = nwb.create_device(name="drive")
    ecephys = nwb.create_processing_module(name="ecephys", description="thresholded spikes and their amplitudes")
    for g, (group_name, n_spikes) in enumerate(spikes.items()):
        group = nwb.create_electrode_group(name=group_name, description="tetrode", location="CA1", device=device)
        for _ in range(4):
            nwb.add_electrode(group=group, location="CA1")
        channels = nwb.create_electrode_table_region(list(range(4 * g, 4 * g + 4)), f"channels of {group_name}")
        ecephys.add(
            FeatureExtraction(
                name=group_name,
                electrodes=channels,
                description=["amplitude"],
                times=np.sort(rng.uniform(0.0, EPOCH_S, n_spikes)),
                features=rng.uniform(60.0, 300.0, (n_spikes, 4, 1)).astype(np.float32),
            )
        )
    time = np.arange(0.0, EPOCH_S, 1 / FRAME_RATE) if frame_times is None else frame_times
    # by row, so a frame sent twice repeats its position too
    head = np.column_stack([50 + 30 * np.cos(np.sort(time) / 4), 50 + 30 * np.sin(np.sort(time) / 4)])
    position = Position(name="Position")
    for name, offset in (("led_front", 2.0), ("led_back", -2.0)):
        metres = (head + offset) / 100.0
        position.add_spatial_series(
            SpatialSeries(name=name, description=name, data=metres, timestamps=time, reference_frame="corner")
        )
    nwb.create_processing_module(name="behavior", description="camera tracking").add(position)
    with NWBHDF5IO(str(path), mode="w") as io:
        io.write(nwb)
    return path


def registered(new_catalog, path: Path) -> tuple[Catalog, dict[str, dict]]:
    """A fresh catalog holding the session, its position processed per epoch, the
    position group ``run`` (epoch 00_r1) and the decoding parameters ``small``; and
    what position processing reported for each epoch."""
    place = new_catalog()
    catalog = Catalog(place.location, place.output_dir)
    pipeline.register_session(catalog, path)
    catalog.insert_position_params("default_decoding", check_position_params({}))
    report = pipeline.process_session_position(catalog, path.name, "default_decoding")
    catalog.create_position_group(path.name, "run", ["00_r1"])
    store_decoding_params(catalog, "small", {"place_bin_size": 5.0})
    return catalog, {row["interval_list_name"]: row for row in report}


def select(catalog: Catalog, nwb_file_name: str, features_group: str, encoding: str, decoding: str) -> str:
    return catalog.insert_selection(
        DecodingSelection(nwb_file_name, features_group, "run", "small", encoding, decoding, False)
    )


# ---------------------------------------------------------------------- 1. electrode groups without spikes


def test_an_electrode_group_without_spikes_is_kept_and_a_decode_of_only_it_fails(tmp_path, new_catalog):
    path = write_session(tmp_path / "silent.nwb", {"tetrode_00": 150, "tetrode_01": 0})
    silent = read_waveform_features(path, ["tetrode_01"])[0]
    assert silent.times.shape == (0,) and silent.features.shape == (0, 4)

    catalog, _ = registered(new_catalog, path)
    counts = catalog.waveform_features("silent.nwb").set_index("electrode_group_name")["n_spikes"]
    assert counts.to_dict() == {"tetrode_00": 150, "tetrode_01": 0}
    report = {row["electrode_group_name"]: row for row in pipeline.check_nwb_features(catalog, "silent.nwb")}
    assert report["tetrode_00"]["n_spikes"] == 150 and report["tetrode_00"]["message"] is None
    assert report["tetrode_01"]["n_spikes"] == 0 and report["tetrode_01"]["n_channels"] == 4
    assert report["tetrode_01"]["status"] == "no spikes"
    assert "Session silent.nwb" in report["tetrode_01"]["message"] and "tetrode_01" in report["tetrode_01"]["message"]

    catalog.create_features_group("silent.nwb", "only_silent", ["tetrode_01"])
    merge_id = select(catalog, "silent.nwb", "only_silent", "00_r1", "00_r1")
    with pytest.raises(CatalogError, match=r"^Session silent.nwb: waveform features group 'only_silent' has no spikes "
                                           r"at all \(electrode groups: tetrode_01\)"):  # fmt: skip
        pipeline.decode(catalog, merge_id)
    assert catalog.outputs("silent.nwb").empty


# ---------------------------------------------------------------------- 2. camera timestamps out of order


def test_position_timestamps_out_of_order_are_an_error_naming_file_series_and_frame(tmp_path, new_catalog):
    time = np.arange(0.0, EPOCH_S, 1 / FRAME_RATE)
    time[[200, 201]] = time[[201, 200]]  # frame 201 is stamped before frame 200
    path = write_session(tmp_path / "shuffled.nwb", {"tetrode_00": 10}, frame_times=time)
    expected = r"shuffled.nwb: position series led_front: timestamps go backwards at frame 201: t = 6.666667 s after"
    with pytest.raises(NWBReadError, match=expected):
        read_raw_position(path)
    place = new_catalog()
    catalog = Catalog(place.location, place.output_dir)
    with pytest.raises(NWBReadError, match=expected):  # nothing is registered: the intervals read would be wrong
        pipeline.register_session(catalog, path)
    assert catalog.sessions().empty
    head = np.column_stack([time, time])
    with pytest.raises(ValueError, match=r"^position series cam: timestamps go backwards at frame 201: t = 6.666667 s"):
        process_position(RawPosition(time, head, name="cam"), np.array([[0.0, EPOCH_S]]), {})


def test_repeated_camera_frames_are_dropped_with_a_warning_and_conflicting_ones_are_an_error(tmp_path):
    time = np.arange(0.0, EPOCH_S, 1 / FRAME_RATE)
    repeated = np.insert(time, 101, time[100])  # the camera sent frame 100 twice
    path = write_session(tmp_path / "repeated.nwb", {"tetrode_00": 10}, frame_times=repeated)
    dropped = r"repeated.nwb: position series led_front: dropped 1 repeated frame.*frame 101, t = 3.333333 s"
    with pytest.warns(UserWarning, match=dropped):
        (raw,) = read_raw_position(path)
    np.testing.assert_array_equal(raw.time, time)
    assert np.isfinite(raw.front).all()
    # the same timestamp with two different positions: which one is right cannot be told
    head = np.column_stack([np.arange(repeated.size), np.zeros(repeated.size)]).astype(float)
    with pytest.raises(ValueError, match=r"^position series cam: frames 100 and 101 share t = 3.333333 s but differ"):
        process_position(RawPosition(repeated, head, name="cam"), np.array([[0.0, EPOCH_S]]), {})


# ---------------------------------------------------------------------- 3. intervals of zero length


def test_a_zero_length_interval_is_named_before_anything_else_is_tried(tmp_path, new_catalog):
    trials = (("trial_1", 2.0, 12.0), ("trial_2", 12.0, 12.0))
    path = write_session(tmp_path / "zero.nwb", {"tetrode_00": 150}, trials=trials)
    catalog, position = registered(new_catalog, path)
    assert position["00_r1"]["status"] == "processed"
    assert position["01_s1"]["status"] == "skipped"
    assert position["01_s1"]["message"] == "Interval '01_s1' of session zero.nwb has zero length (start = stop = 30 s)."

    trial_config = pipeline.DecodingConfig("trials", "all", "run", "small", "{epoch}", ("trial_*",))
    assert pipeline.selection_for(catalog, "zero.nwb", "trial_1", trial_config).encoding_interval == "00_r1"
    zero_trial = r"^Interval 'trial_2' of session zero.nwb has zero length \(start = stop = 12 s\)\. .*choose another"
    with pytest.raises(CatalogError, match=zero_trial):
        pipeline.selection_for(catalog, "zero.nwb", "trial_2", trial_config)

    # an interval list whose valid_times are empty, as the catalog may hold one
    catalog.register_session(path, interval_lists={"nothing": (np.zeros((0, 2)), "trial")})
    catalog.create_features_group("zero.nwb", "all")
    merge_id = select(catalog, "zero.nwb", "all", "nothing", "trial_1")
    with pytest.raises(CatalogError, match=r"^Interval 'nothing' of session zero.nwb has zero length \(its valid_t"):
        pipeline.decode(catalog, merge_id)
    merge_id = select(catalog, "zero.nwb", "all", "00_r1", "trial_2")
    with pytest.raises(CatalogError, match=zero_trial):
        pipeline.decode(catalog, merge_id)
    assert catalog.outputs("zero.nwb").empty


# ---------------------------------------------------------------------- 4-6. the configuration file


def write_config(tmp_path: Path, change) -> Path:
    """The packaged configuration with ``change(config)`` applied, as a YAML file."""
    config = yaml.safe_load(pipeline.DEFAULT_CONFIG.read_text())
    change(config)
    path = tmp_path / "decoding_configs.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def test_booleans_in_the_configuration_are_yaml_booleans(tmp_path):
    def quoted_no(config):
        config["decodings"]["contfrag_run"]["estimate_decoding_params"] = "no"

    with pytest.raises(
        ValueError, match=r"decodings 'contfrag_run': estimate_decoding_params must be true or false; got 'no'\."
    ):
        pipeline.load_config(write_config(tmp_path, quoted_no))

    def boolean_no(config):
        config["decodings"]["contfrag_run"]["estimate_decoding_params"] = False

    (run, *_) = pipeline.load_config(write_config(tmp_path, boolean_no))["decodings"]
    assert run.estimate_decoding_params is False
    path = tmp_path / "yaml_no.yaml"
    text = pipeline.DEFAULT_CONFIG.read_text()
    path.write_text(text.replace("estimate_decoding_params: false", "estimate_decoding_params: no"))
    assert {d.estimate_decoding_params for d in pipeline.load_config(path)["decodings"]} == {False}  # YAML's own no

    with pytest.raises(ValueError, match=r"^infer_track_interior must be true or false; got 'yes'\."):
        check_decoding_params({"infer_track_interior": "yes"})


# (section, entry name, entry, what the error says)
BAD_ENTRIES = [
    ("decoding_params", "wide", {"position_std": "six"},
     r"decoding_params 'wide': position_std must be a positive number \(cm\), or a list of them.*; got 'six'\."),
    ("decoding_params", "wide", {"block_size": 2.5},
     r"decoding_params 'wide': block_size must be a positive integer.*; got 2.5\."),
    ("decoding_params", "wide", {"discrete_transition_diag": 1.5},
     r"decoding_params 'wide': discrete_transition_diag must be a probability, a number in \[0, 1\]; got 1.5\."),
    ("decoding_params", "wide", {"position_sd": 6.0},
     r"decoding_params 'wide': Unknown decoding parameter\(s\) \['position_sd'\] for model 'contfrag'; known: "
     r"\['block_size', "),
    ("decoding_params", "replay", {"model": "non_local_detector", "discrete_transition_diag": 0.9},
     r"decoding_params 'replay': Unknown decoding parameter\(s\) \['discrete_transition_diag'\] for model "
     r"'non_local_detector'; known: .*'discrete_transition_matrix'"),
    ("decoding_params", "replay", {"model": "non_local_detector", "discrete_initial_conditions": [0.5, 0.5]},
     r"decoding_params 'replay': discrete_initial_conditions must be four probabilities summing to 1 \(Local, "
     r"No-Spike, Non-Local Continuous, Non-Local Fragmented\); got \[0.5, 0.5\]\."),
    ("decoding_params", "replay", {"model": "nonlocal"},
     r"decoding_params 'replay': model: expected one of \['contfrag', 'non_local_detector'\]; got 'nonlocal'\."),
    ("position_params", "slow", {"max_plausible_speed": "fast"},
     r"position_params 'slow': max_plausible_speed must be a positive number \(cm/s\); got 'fast'\."),
    ("position_params", "slow", {"arena_bounds_cm": [0, 100]},
     r"position_params 'slow': arena_bounds_cm must be null or \[\[x_min, x_max\], \[y_min, y_max\]\].*; "
     r"got \[0, 100\]\."),
    ("waveform_features_params", "low", {"threshold_uv": "80 uV"},
     r"waveform_features_params 'low': threshold_uv must be a number >= 0 \(µV\); got '80 uV'\."),
    ("waveform_features_params", "low", {"filter_order": "5"},
     r"waveform_features_params 'low': filter_order must be a positive integer; got '5'\."),
    ("position_groups", "fast", {"upsample_rate": "500 Hz"},
     r"position_groups 'fast': upsample_rate must be a positive number \(Hz\); got '500 Hz'\."),
    ("position_groups", "fast", {"position_variables": ["position_z"]},
     r"position_groups 'fast': position_variables must be a list drawn from \['position_x', 'position_y'\]; "
     r"got \['position_z'\]\."),
    ("position_groups", "fast", {"upsample_hz": 500},
     r"position_groups 'fast': unknown key\(s\) \['upsample_hz'\]; known: \['intervals', 'position_variables', "),
    ("waveform_features_groups", "disk", {"features_param_name": "amplitude", "source": "disk"},
     r"waveform_features_groups 'disk': source must be 'raw', 'nwb' or null \(either\); got 'disk'\."),
    ("waveform_features_groups", "some", {"electrode_group_names": "tetrode_00"},
     r"waveform_features_groups 'some': electrode_group_names must be a list of electrode group names"),
    ("decodings", "replay", {"waveform_features_group_name": "all_tetrodes"},
     r"decodings 'replay': missing key\(s\) \['position_group_name', 'decoding_param_name', "),
]  # fmt: skip


@pytest.mark.parametrize(
    ("section", "name", "entry", "message"), BAD_ENTRIES, ids=[f"{c[0]}.{list(c[2])[-1]}" for c in BAD_ENTRIES]
)
def test_a_bad_parameter_value_names_section_set_key_and_value(tmp_path, section, name, entry, message):
    def add(config):
        config[section][name] = entry

    with pytest.raises(ValueError, match=message):
        pipeline.load_config(write_config(tmp_path, add))


def test_the_checkers_name_the_key_and_value():
    with pytest.raises(ValueError, match=r"^position_std must be a positive number \(cm\).*; got 'six'\.$"):
        check_decoding_params({"position_std": "six"})
    with pytest.raises(ValueError, match=r"^max_LED_separation must be a positive number \(cm\); got -1\.$"):
        check_position_params({"max_LED_separation": -1})
    with pytest.raises(ValueError, match=r"^artifact_channel_fraction must be a number in \(0, 1\]; got 0\.$"):
        check_features_params({"artifact_channel_fraction": 0})
    with pytest.raises(ValueError, match=r"^environments: Unknown environment parameter"):
        check_decoding_params({"environments": {"bin_size": 2.0}})
    # the complete set stored for overrides, and for the complete set itself
    complete = check_decoding_params({"position_std": 12.0, "place_bin_size": 4})
    assert complete["clusterless_algorithm_params"]["position_std"] == 12.0
    assert complete["environments"]["place_bin_size"] == 4.0
    assert check_decoding_params(complete) == complete
    # the non-local detector's: marked with its model, complete too
    detector = check_decoding_params({"model": "non_local_detector", "no_spike_rate": 1e-9})
    assert detector["model"] == "non_local_detector" and detector["no_spike_rate"] == 1e-9
    assert detector["discrete_transition_stickiness"] == [30.0, 100_000.0, 30.0, 200.0]
    assert check_decoding_params(detector) == detector
    assert type(decoding_model(detector)).__name__ == "NonLocalClusterlessDetector"


def test_definitions_with_a_bad_configuration_fail_to_load_naming_the_key(tmp_path):
    def unknown_key(config):
        config["position_params"]["quick"] = {"max_speed": 300}

    env = {**os.environ, "DECODING_ASSETS_CONFIG": str(write_config(tmp_path, unknown_key)),
           "DECODING_ASSETS_HOME": str(tmp_path / "home"), "JAX_PLATFORMS": "cpu"}  # fmt: skip
    load = [sys.executable, "-c", "import decoding_assets.definitions"]
    done = subprocess.run(load, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode != 0
    last_line = done.stderr.strip().splitlines()[-1]
    assert last_line.startswith(f"ValueError: {tmp_path / 'decoding_configs.yaml'}: position_params 'quick': Unknown ")
    assert "position parameter(s) ['max_speed']; known: ['arena_bounds_cm', " in last_line

    def unknown_decoding_key(config):
        config["decodings"]["contfrag_run"]["estimate"] = True

    with pytest.raises(ValueError, match=r"decodings 'contfrag_run': unknown key\(s\) \['estimate'\]; known: \["):
        pipeline.load_config(write_config(tmp_path, unknown_decoding_key))
    config = pipeline.load_config()  # the packaged file is valid
    assert [d.name for d in config["decodings"]] == ["contfrag_run", "contfrag_raw_tetrodes"]


# what a decode keeps: (keep mapping, what the error says)
BAD_KEEPS = [
    ({"causal": True}, r"decodings 'contfrag_run': keep: unknown key\(s\) \['causal'\]; known: \['causal_posterior', "
                       r"'max_error', 'per_state'\]\."),
    ({"per_state": "yes"}, r"decodings 'contfrag_run': keep: per_state must be true or false; got 'yes'\."),
    ({"max_error": "1e-5"}, r"decodings 'contfrag_run': keep: max_error must be null \(exact\) or a number from "
                            r"7.75e-06 .* in YAML write 1.0e-5, not 1e-5 \(which YAML reads as text\); got '1e-5'\."),
    ({"max_error": 1.0e-6}, r"decodings 'contfrag_run': keep: max_error must be null \(exact\) .*; got 1e-06\."),
    ("acausal", r"decodings 'contfrag_run': keep must be a mapping of causal_posterior, per_state and max_error; "
                r"got 'acausal'\."),
]  # fmt: skip


@pytest.mark.parametrize(("keep", "message"), BAD_KEEPS, ids=[str(k) for k, _ in BAD_KEEPS])
def test_a_bad_keep_names_the_decoding_key_and_value(tmp_path, keep, message):
    def change(config):
        config["decodings"]["contfrag_run"]["keep"] = keep

    with pytest.raises(ValueError, match=message):
        pipeline.load_config(write_config(tmp_path, change))


def test_keep_defaults_to_what_a_lab_can_afford(tmp_path):
    from decoding_assets.decoder.results import Keep

    def partial(config):
        config["decodings"]["contfrag_run"]["keep"] = {"causal_posterior": True, "max_error": None}
        assert "keep" not in config["decodings"]["contfrag_raw_tetrodes"]

    run, raw = pipeline.load_config(write_config(tmp_path, partial))["decodings"]
    assert run.keep == Keep(causal_posterior=True, per_state=True, max_error=None)
    assert raw.keep == Keep() == Keep(causal_posterior=False, per_state=True, max_error=1.0e-5)
    assert pipeline.DecodingConfig("trials", "all", "run", "small", "{epoch}", ("trial_*",)).keep == Keep()

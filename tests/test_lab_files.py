"""tests/lab_files.py writes files laid out as trodes-to-nwb writes them, readable by plain
pynwb, with a ground truth that matches what is in the file."""

import numpy as np
import pytest
from scipy import signal

from tests.lab_files import LabEpoch, LabSessionSpec, write_lab_session

ELECTRODE_COLUMNS = (
    "location", "group", "group_name", "x", "y", "z", "imp", "filtering", "rel_x", "rel_y", "rel_z",
    "hwChan", "ntrode_id", "channel_id", "bad_channel", "probe_shank", "probe_electrode", "ref_elect_id",
)  # fmt: skip

VARIANT = LabSessionSpec(
    epochs=(
        LabEpoch("01_a1", 8.0, "sleep", "sleep box", 0, False),
        LabEpoch("02_r1", 25.0, "openfield", "open field", 1, True),
    ),
    gap_s=5.0,
    n_leds=1,
    bad_channel_as_strings=True,
    bad_channels=(2,),
    ref_elect_id=15,
    with_trials=True,
    seed=7,
)


def _read(path):
    from pynwb import NWBHDF5IO

    return NWBHDF5IO(str(path), "r", load_namespaces=True)


@pytest.fixture(scope="module")
def default_session(tmp_path_factory):
    path = tmp_path_factory.mktemp("lab") / "default.nwb"
    return path, write_lab_session(path), LabSessionSpec()


@pytest.fixture(scope="module")
def variant_session(tmp_path_factory):
    path = tmp_path_factory.mktemp("lab") / "variant.nwb"
    return path, write_lab_session(path, VARIANT), VARIANT


def _bandpass(x):
    sos = signal.butter(5, [300.0, 6000.0], btype="bandpass", fs=30_000.0, output="sos")
    return signal.sosfiltfilt(sos, x, axis=0)


def test_default_layout(default_session):
    path, truth, spec = default_session
    assert path.stat().st_size < 60e6
    with _read(path) as io:
        nwb = io.read()
        assert nwb.timestamps_reference_time.timestamp() == 0.0
        assert nwb.session_start_time.timestamp() == pytest.approx(spec.start_unix_s)
        # electrode groups and electrodes
        assert sorted(nwb.electrode_groups) == ["0", "1", "2", "3"]
        for name, group in nwb.electrode_groups.items():
            assert type(group).__name__ == "NwbElectrodeGroup"
            assert group.device.name == f"probe {name}" and type(group.device).__name__ == "Probe"
        electrodes = nwb.electrodes.to_dataframe()
        assert tuple(nwb.electrodes.colnames) == ELECTRODE_COLUMNS
        assert list(electrodes.index) == list(range(16))
        assert list(electrodes["ntrode_id"]) == [t + 1 for t in range(4) for _ in range(4)]
        assert list(electrodes["channel_id"]) == [0, 1, 2, 3] * 4
        assert list(electrodes["group_name"]) == [str(t) for t in range(4) for _ in range(4)]
        assert nwb.electrodes["bad_channel"].data.dtype == np.bool_
        assert list(np.flatnonzero(electrodes["bad_channel"].to_numpy(bool))) == list(spec.bad_channels)
        assert set(electrodes["ref_elect_id"]) == {-1}
        hw = [h.decode() if isinstance(h, bytes) else h for h in electrodes["hwChan"]]
        assert sorted(int(h) for h in hw) == list(range(16))
        # devices
        assert {f"camera_device {k}" for k in (0, 1)} | {"header_device", "dataacq_device0"} <= set(nwb.devices)
        assert {f"probe {t}" for t in range(4)} <= set(nwb.devices)
        assert nwb.devices["camera_device 0"].meters_per_pixel == 0.0025
        assert nwb.devices["camera_device 1"].meters_per_pixel == 0.002
        # raw signal: µV int16, explicit Unix timestamps, the gap between epochs left out
        series = nwb.acquisition["e-series"]
        assert series.data.dtype == np.int16 and series.data.shape == (30_000 * 80, 16)
        assert series.conversion == 1e-6 and series.offset == 0.0 and series.rate is None
        timestamps = series.timestamps[:]
        assert timestamps.dtype == np.float64 and timestamps[0] == spec.start_unix_s
        steps = np.diff(timestamps)
        (gap,) = np.flatnonzero(steps > 1.0)
        assert gap == 30_000 * 20 - 1
        assert steps[gap] == pytest.approx(spec.gap_s, abs=1e-6)
        assert np.allclose(np.delete(steps, gap), 1 / 30_000, atol=1e-6)
        # epochs
        epochs = nwb.epochs.to_dataframe()
        assert [list(t) for t in epochs["tags"]] == [["01_s1"], ["02_r1"]]
        assert epochs["start_time"].iloc[1] == timestamps[gap + 1] and epochs["stop_time"].iloc[0] == timestamps[gap]
        assert truth.epoch_times == {
            "01_s1": (timestamps[0], timestamps[gap]),
            "02_r1": (timestamps[gap + 1], timestamps[-1]),
        }
        # tasks
        tasks = {name: table.to_dataframe().iloc[0] for name, table in nwb.processing["tasks"].data_interfaces.items()}
        assert sorted(tasks) == ["task_0", "task_1"]
        assert (tasks["task_0"]["task_name"], tasks["task_0"]["task_environment"]) == ("sleep", "sleep box")
        assert list(tasks["task_0"]["camera_id"]) == [0] and list(tasks["task_0"]["task_epochs"]) == [1]
        assert (tasks["task_1"]["task_name"], tasks["task_1"]["task_environment"]) == ("openfield", "open field")
        assert list(tasks["task_1"]["camera_id"]) == [1] and list(tasks["task_1"]["task_epochs"]) == [2]
        assert nwb.processing["tasks"]["task_1"]["task_epochs"].data.shape == (1, 1)
        # position: one series per LED per epoch, pixels, metres per pixel of the epoch's camera
        assert "behavior" in nwb.processing and "position" in nwb.processing["behavior"].data_interfaces
        position = nwb.processing["behavior"]["position"]
        assert type(position).__name__ == "Position"
        names = ["led_0_series_1", "led_0_series_2", "led_1_series_1", "led_1_series_2"]
        assert sorted(position.spatial_series) == names
        assert nwb.trials is None
        for name, s in position.spatial_series.items():
            tag = "01_s1" if name.endswith("_1") else "02_r1"
            start, stop = truth.epoch_times[tag]
            data, frame_t = s.data[:], s.timestamps[:]
            assert data.dtype == np.uint16 and data.shape == (frame_t.size, 2)
            assert s.unit == "meters" and s.conversion == (0.0025 if tag == "01_s1" else 0.002)
            assert s.description == "xloc, yloc" and s.reference_frame == "Upper left corner of video frame"
            assert frame_t.dtype == np.float64 and start <= frame_t[0] and frame_t[-1] <= stop
            assert 29 < 1 / np.median(np.diff(frame_t)) < 31 and np.all(np.diff(frame_t) > 0)
            lost = truth.lost_frames[name]
            assert np.all(data[lost] == 0) and np.all(data[~lost] > 0)
            assert 0.01 < lost.mean() < 0.1
            if tag == "02_r1":  # the tracking gap 20-21.5 s into the run
                since = frame_t - start
                assert lost[(since >= 20.0) & (since < 21.5)].all()
        # both LEDs of an epoch share their timestamps; their midpoint is the head
        for k in (1, 2):
            front, back = position[f"led_0_series_{k}"], position[f"led_1_series_{k}"]
            frame_t = front.timestamps[:]
            assert np.array_equal(frame_t, back.timestamps[:])
            seen = ~(truth.lost_frames[f"led_0_series_{k}"] | truth.lost_frames[f"led_1_series_{k}"])
            head = (front.data[:][seen].astype(float) + back.data[:][seen]) / 2 * front.conversion * 100
            expected = np.column_stack([np.interp(frame_t[seen], truth.head_time, truth.head_cm[:, j]) for j in (0, 1)])
            assert np.median(np.linalg.norm(head - expected, axis=1)) < 1.0
            separation = np.linalg.norm(front.data[:][seen].astype(float) - back.data[:][seen], axis=1)
            assert np.median(separation * front.conversion * 100) == pytest.approx(5.0, abs=0.5)


def test_default_truth(default_session):
    path, truth, _spec = default_session
    with _read(path) as io:
        nwb = io.read()
        timestamps = nwb.acquisition["e-series"].timestamps[:]
        (run_start, run_stop) = truth.epoch_times["02_r1"]
        run = slice(int(np.searchsorted(timestamps, run_start)), None)
        data = nwb.acquisition["e-series"].data[run.start : run.start + 300_000, :4].astype(np.float32)
        edges = nwb.acquisition["e-series"].data[[0, run.start - 1, run.start, -1], :].astype(float)
    assert truth.sampling_rate == 30_000.0
    # head: NaN only between epochs, inside the open field in the run, still in the sleep box
    inside = np.zeros(truth.head_time.size, dtype=bool)
    for start, stop in truth.epoch_times.values():
        inside |= (truth.head_time >= start) & (truth.head_time <= stop)
    assert np.array_equal(np.isnan(truth.head_cm[:, 0]), ~inside)
    running = (truth.head_time >= run_start) & (truth.head_time <= run_stop)
    extent = np.ptp(truth.head_cm[running], axis=0)
    assert np.all(extent > 50) and np.all(extent < 100)
    sleeping = inside & ~running
    assert np.all(np.ptp(truth.head_cm[sleeping], axis=0) < 5)
    # spikes: at e-series samples, away from epoch edges, rarer asleep
    for times in truth.spike_times:
        assert np.all(np.diff(times) > 0) and np.all(np.isin(times, timestamps))
        for start, stop in truth.epoch_times.values():
            assert not np.any((times > start - 0.05) & (times < start + 0.05))
            assert not np.any((times > stop - 0.05) & (times < stop + 0.05))
        asleep = np.mean((times >= truth.epoch_times["01_s1"][0]) & (times <= truth.epoch_times["01_s1"][1]))
        assert asleep * 80 / 20 < 0.5  # per second, far fewer spikes asleep than running
    # a band-pass and a 100 µV threshold find exactly the true spikes of a good tetrode
    envelope = (-_bandpass(data)).max(axis=1)
    peaks, _ = signal.find_peaks(envelope, height=100.0, distance=10)
    found = timestamps[run.start + peaks]
    times = truth.spike_times[0]
    expected = times[(times >= timestamps[run.start + 1000]) & (times <= timestamps[run.start + 299_000])]
    assert expected.size > 30
    found = found[(found >= expected[0] - 1e-3) & (found <= expected[-1] + 1e-3)]
    assert found.size == expected.size and np.all(np.abs(found - expected) < 2.5 / 30_000)  # noise moves a trough
    # the signal sits at a nonzero DC offset at the epochs' edges, of opposite signs
    assert np.all(np.abs(edges.mean(axis=1)) > 150)
    assert np.sign(edges[1].mean()) != np.sign(edges[2].mean())


def test_one_led_string_flags_reference_and_trials(variant_session):
    path, truth, _ = variant_session
    with _read(path) as io:
        nwb = io.read()
        assert [list(t) for t in nwb.epochs.to_dataframe()["tags"]] == [["01_a1"], ["02_r1"]]
        position = nwb.processing["behavior"]["position"]
        assert sorted(position.spatial_series) == ["led_0_series_1", "led_0_series_2"]
        for name, s in position.spatial_series.items():
            data = s.data[:]
            assert np.all(data[truth.lost_frames[name]] == 0) and np.all(data[~truth.lost_frames[name]] > 0)
        electrodes = nwb.electrodes.to_dataframe()
        flags = [f.decode() if isinstance(f, bytes) else f for f in electrodes["bad_channel"]]
        assert flags == ["True" if i == 2 else "False" for i in range(16)]
        assert set(electrodes["ref_elect_id"]) == {15}
        trials = nwb.trials.to_dataframe()
        assert list(trials["trial_name"]) == ["epoch2_block1_trial1"]
        assert trials["start_time"].iloc[0] == truth.epoch_times["02_r1"][0]
        timestamps = nwb.acquisition["e-series"].timestamps[:]
        steps = np.diff(timestamps)
        assert steps[steps > 1.0] == pytest.approx([5.0], abs=1e-6)
        start = int(np.searchsorted(timestamps, truth.epoch_times["02_r1"][0]))
        raw = nwb.acquisition["e-series"].data[start : start + 150_000, :].astype(np.float32)
    # the reference carries a common noise: subtracting it lowers the noise of every channel
    # and removes spurious threshold crossings
    filtered = _bandpass(raw)
    referenced = filtered - filtered[:, [15]]
    noise = np.median(np.abs(filtered), axis=0)
    assert np.all(np.median(np.abs(referenced[:, 4:15]), axis=0) < 0.7 * noise[4:15])
    window = (truth.spike_times[2] >= timestamps[start + 100]) & (truth.spike_times[2] <= timestamps[start + 149_900])
    for x, more in ((referenced, False), (filtered, True)):
        peaks, _ = signal.find_peaks((-x[:, 8:12]).max(axis=1), height=100.0, distance=10)
        assert (peaks.size > window.sum()) == more
    # ...and carries no spikes itself
    assert np.all(truth.spike_amplitudes_uv[3][:, 3] == 0)
    assert np.all(truth.spike_amplitudes_uv[3][:, :3].min(axis=1) < -100)

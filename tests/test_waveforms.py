"""Waveform features from raw recordings: detection against known spikes, chunking,
bad channels, referencing, artifacts, and the NWB reader's units."""

import numpy as np
import pytest

from decoding_assets.decoder.simulate import RAW_UV_PER_BIT, simulate_open_field, simulate_raw_recording
from decoding_assets.waveforms import FeatureExtractionError, RawRecording, extract_waveform_features

FS = 30_000.0
TOLERANCE = 9  # samples (0.3 ms) between a detection and the spike it found


@pytest.fixture(scope="module")
def simulated():
    session = simulate_open_field(duration=40.0, n_tetrodes=4, seed=5)
    return simulate_raw_recording(session.spike_times, session.spike_waveform_features, 0.0, 40.0, seed=6)


def recording(raw, data=None, bad=None, groups=None) -> RawRecording:
    data = raw.data if data is None else data
    n = data.shape[1]
    return RawRecording(
        name="sim",
        data=data,
        uv_per_unit=np.full(n, RAW_UV_PER_BIT),
        sampling_rate=FS,
        electrode_ids=np.arange(100, 100 + n),
        group_names=np.repeat([f"tetrode_{t}" for t in range(n // 4)], 4) if groups is None else np.asarray(groups),
        bad=np.zeros(n, bool) if bad is None else bad,
    )


def nearest(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each of a: the index of the nearest of b (sorted) and the distance to it."""
    j = np.clip(np.searchsorted(b, a), 1, max(b.size - 1, 1))
    left, right = b[j - 1], b[np.minimum(j, b.size - 1)]
    pick = np.where(np.abs(a - left) <= np.abs(a - right), j - 1, np.minimum(j, b.size - 1))
    return pick, np.abs(a - b[pick])


def test_detection_finds_the_known_spikes_with_their_amplitudes(simulated):
    groups = extract_waveform_features(recording(simulated), {})
    recalls, precisions, errors = [], [], []
    for found, samples, amplitudes in zip(groups, simulated.spike_samples, simulated.spike_amplitudes):
        detected = np.round(found.times * FS).astype(np.int64)
        # spikes clearly above threshold (130 µV after filtering, noise is ~7 µV rms)
        clear = (-amplitudes).max(axis=1) >= 130.0
        _, distance = nearest(samples[clear], detected)
        recalls.append(np.mean(distance <= TOLERANCE))
        match, distance = nearest(detected, samples)
        precisions.append(np.mean(distance <= TOLERANCE))
        ok = distance <= TOLERANCE
        errors.append(np.abs(found.features[ok] - amplitudes[match[ok]]).ravel())
        assert found.features.shape[1] == 4 and found.electrode_ids == list(range(100 + 4 * len(recalls) - 4, 100 + 4 * len(recalls)))
    errors = np.concatenate(errors)
    # measured: recall 1.0, precision 1.0, amplitude error median 5 µV, 95th percentile 15 µV
    assert min(recalls) >= 0.98
    assert min(precisions) >= 0.98
    assert np.median(errors) <= 8.0
    assert np.percentile(errors, 95) <= 25.0
    # spikes well below threshold are not detected
    assert sum(g.times.size for g in groups) < sum(s.size for s in simulated.spike_samples)


def test_chunk_boundaries_neither_lose_nor_duplicate_spikes(simulated):
    whole = extract_waveform_features(recording(simulated), {}, chunk_duration_s=60.0)
    # chunks of 401 samples: boundaries fall inside many spikes' waveforms
    chunked = extract_waveform_features(recording(simulated), {}, chunk_duration_s=401.5 / FS)
    near_boundary = 0
    for a, b in zip(whole, chunked):
        np.testing.assert_array_equal(a.times, b.times)
        np.testing.assert_allclose(a.features, b.features, atol=1e-3)
        samples = np.round(a.times * FS).astype(np.int64)
        near_boundary += int(np.sum(np.minimum(samples % 401, 401 - samples % 401) <= 3))
    assert near_boundary >= 10  # the test exercises boundaries (measured: 19 spikes within 3 samples of one)


def test_a_bad_channel_is_skipped(simulated):
    data = simulated.data.copy()
    rng = np.random.default_rng(0)
    data[:, 1] = (rng.normal(0, 200.0, data.shape[0]) / RAW_UV_PER_BIT).astype(np.int16)  # a broken channel
    noisy = extract_waveform_features(recording(simulated, data), {}, ["tetrode_0"])[0]
    bad = np.zeros(data.shape[1], bool)
    bad[1] = True
    skipped = extract_waveform_features(recording(simulated, data, bad=bad), {}, ["tetrode_0"])[0]
    clean = extract_waveform_features(recording(simulated), {}, ["tetrode_0"])[0]
    assert noisy.times.size > 5 * clean.times.size  # the broken channel floods detection
    assert skipped.electrode_ids == [100, 102, 103] and skipped.bad_electrode_ids == [101]
    assert skipped.features.shape == (skipped.times.size, 3)
    # without the bad channel, detection is that of the good channels
    _, distance = nearest(np.round(skipped.times * FS), np.round(clean.times * FS))
    assert np.mean(distance <= 1) >= 0.97
    assert skipped.times.size <= clean.times.size


def test_one_channel_all_bad_and_silent_groups(simulated):
    data = simulated.data[:, :6]
    groups = ["one"] + ["dead"] * 2 + ["quiet"] * 3
    bad = np.array([False, True, True, False, False, False])
    data = data.copy()
    data[:, 3:] = 0  # a disconnected group: flat
    out = {g.electrode_group_name: g for g in extract_waveform_features(recording(simulated, data, bad, groups), {})}
    assert out["one"].features.shape[1] == 1 and out["one"].times.size > 50 and out["one"].message is None
    assert out["dead"].times.size == 0 and "Every channel of electrode group dead" in out["dead"].message
    assert out["quiet"].times.size == 0 and "No spikes crossed 100 µV on electrode group quiet" in out["quiet"].message
    assert out["quiet"].features.shape == (0, 3)


def test_referencing_removes_shared_noise(simulated):
    data = simulated.data[:, :4].astype(float)
    t = np.arange(data.shape[0]) / FS
    # bursts of 1.5 kHz noise shared by every channel (e.g. chewing, a cable): 300 µV
    bursts = 300.0 * np.sin(2 * np.pi * 1500 * t) * (np.sin(2 * np.pi * 0.5 * t) > 0.9)
    data = np.round(data + bursts[:, None] / RAW_UV_PER_BIT).astype(np.int16)
    plain = extract_waveform_features(recording(simulated, data), {"reference": "none"})[0]
    median = extract_waveform_features(recording(simulated, data), {"reference": "median"})[0]

    def in_bursts(g):
        return np.sum(np.abs(bursts[np.round(g.times * FS).astype(int)]) > 0)

    assert in_bursts(plain) > 100
    assert in_bursts(median) < 0.1 * in_bursts(plain)
    # one electrode as the reference: it reads zero, the others lose the shared noise
    one = extract_waveform_features(recording(simulated, data), {"reference": 100})[0]
    assert in_bursts(one) < 0.1 * in_bursts(plain)
    np.testing.assert_allclose(one.features[:, 0], 0.0, atol=1e-3)
    with pytest.raises(FeatureExtractionError, match="Reference electrode 7 is not a channel of raw series 'sim'"):
        extract_waveform_features(recording(simulated, data), {"reference": 7})


def test_artifacts_are_excluded_with_a_window(simulated):
    data = simulated.data[:, :4].copy()
    artifact_samples = np.arange(30_000, data.shape[0] - 30_000, 90_000)
    for s in artifact_samples:  # 2000 µV steps on every channel
        data[s : s + 15] -= np.int16(2000 / RAW_UV_PER_BIT)
    params = {"artifact_threshold_uv": 1000.0, "artifact_window_ms": 2.0}
    kept = extract_waveform_features(recording(simulated, data), {})[0]
    excluded = extract_waveform_features(recording(simulated, data), params)[0]

    def distance(g):
        return nearest(np.round(g.times * FS), artifact_samples.astype(float))[1]

    assert np.sum(distance(kept) <= 60) >= artifact_samples.size  # each artifact is detected without exclusion
    # none within the window (ringing of the zero-phase filter reaches a little further)
    assert np.all(distance(excluded) > 45)
    assert excluded.n_artifact_samples >= artifact_samples.size * 60
    # nothing changes away from artifacts
    np.testing.assert_array_equal(kept.times[distance(kept) > 100], excluded.times[distance(excluded) > 100])


def test_bad_parameters_are_clear_errors(simulated):
    with pytest.raises(FeatureExtractionError, match="Unknown waveform features parameter.*'treshold_uv'"):
        extract_waveform_features(recording(simulated), {"treshold_uv": 80})
    slow = recording(simulated)
    slow.sampling_rate = 10_000.0
    with pytest.raises(FeatureExtractionError, match="raw series 'sim' is sampled at 10000 Hz.*below 5000 Hz"):
        extract_waveform_features(slow, {})
    with pytest.raises(FeatureExtractionError, match="no channels of electrode group.*'tetrode_9'"):
        extract_waveform_features(recording(simulated), {}, ["tetrode_9"])
    with pytest.raises(FeatureExtractionError, match="reference must be"):
        extract_waveform_features(recording(simulated), {"reference": "average"})


def test_nwb_raw_series_in_microvolts(tmp_path):
    """conversion, channel_conversion (per-channel gain) and timestamps are honoured."""
    import datetime as dt

    from pynwb import NWBHDF5IO, NWBFile
    from pynwb.ecephys import ElectricalSeries

    from decoding_assets.nwb import NWBReadError, open_raw_recording

    nwb = NWBFile(session_description="gains", identifier="gains", session_start_time=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc))
    device = nwb.create_device(name="probe")
    group = nwb.create_electrode_group(name="tetrode_a", description="a", location="CA1", device=device)
    nwb.add_electrode_column(name="bad_channel", description="bad")
    for c in range(2):
        nwb.add_electrode(group=group, location="CA1", bad_channel=c == 1)
    data = np.array([[100, -200], [300, 400], [-5, 6]], dtype=np.int16)
    nwb.add_acquisition(
        ElectricalSeries(
            name="e-raw", data=data, electrodes=nwb.create_electrode_table_region([0, 1], "both"),
            timestamps=[10.0, 10.5, 11.0], conversion=2e-6, channel_conversion=[1.0, 0.5],
        )
    )  # fmt: skip
    path = tmp_path / "gains.nwb"
    with NWBHDF5IO(str(path), "w") as io:
        io.write(nwb)
    with open_raw_recording(path) as raw:
        np.testing.assert_allclose(raw.read_uv(0, 3, np.array([0, 1])), (data * [2.0, 1.0]).T)
        np.testing.assert_allclose(raw.times(1, 3), [10.5, 11.0])
        assert raw.sampling_rate == pytest.approx(2.0)
        assert list(raw.bad) == [False, True] and list(raw.group_names) == ["tetrode_a", "tetrode_a"]
    with pytest.raises(NWBReadError, match="no raw ElectricalSeries 'lfp'"), open_raw_recording(path, "lfp"):
        pass

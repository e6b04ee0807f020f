"""The demo NWB session: written with pynwb, valid, and read back as laid out."""

import numpy as np
import pytest

from decoding_assets.nwb import (
    NWBReadError,
    open_raw_recording,
    read_raw_position,
    read_session_info,
    read_waveform_features,
)


def test_demo_session_passes_nwbinspector(small_nwb):
    from nwbinspector import Importance, inspect_nwbfile

    messages = list(inspect_nwbfile(nwbfile_path=str(small_nwb)))
    critical = [m for m in messages if m.importance in (Importance.CRITICAL, Importance.PYNWB_VALIDATION, Importance.ERROR)]
    assert critical == []


def test_layout_is_read_back(small_nwb):
    info = read_session_info(small_nwb)
    assert info["subject_id"] == "demo_rat"
    intervals = info["intervals"]
    assert {k: v[1] for k, v in intervals.items() if v[1] != "position"} == {
        "00_r1": "epoch", "01_s1": "epoch", "02_r2": "epoch",
        "epoch0_block1_trial1": "trial", "epoch0_block1_trial2": "trial", "epoch0_block1_trial3": "trial",
        "epoch2_block1_trial1": "trial", "epoch2_block1_trial2": "trial",
    }  # fmt: skip
    np.testing.assert_allclose(intervals["02_r2"][0], [[70.0, 110.0]])
    valid = intervals["pos 0 valid times"][0]
    assert valid.shape == (1, 2) and valid[0, 0] < 0.1 and valid[0, 1] > 109.9  # frames never pause; LEDs may be lost
    # 4 tetrodes with spikes in the file, 4 recorded raw during the last epoch
    assert [g[:2] for g in info["electrode_groups"]] == [(f"tetrode_{i:02d}", 4) for i in range(8)]
    assert [f[0] for f in info["waveform_features"]] == [f"tetrode_{i:02d}" for i in range(4)]
    assert info["raw_series"] == ["e-raw"]
    with open_raw_recording(small_nwb) as recording:
        assert recording.sampling_rate == 30_000.0 and recording.n_samples == 40 * 30_000
        assert recording.times(0, 2)[0] == 70.0 and list(recording.bad).count(True) == 1
        signal = recording.read_uv(0, 30_000, np.arange(16))
        assert 100 < np.std(signal) < 300  # µV: noise, LFP and spikes, not stored units
    (raw,) = read_raw_position(small_nwb)
    assert raw.name == "led_front, led_back"
    assert 25 < 1 / np.median(np.diff(raw.time)) < 35  # a camera's rate
    tracked = ~np.isnan(raw.front[:, 0])
    assert 0.9 < tracked.mean() < 1.0
    assert np.nanmax(raw.front) < 200  # cm
    features = read_waveform_features(small_nwb, ["tetrode_01"])[0]
    assert features.features_param_name == "amplitude"
    assert features.features.shape == (features.times.size, 4)
    assert 40 < np.median(features.features.max(axis=1)) < 400  # µV


def test_missing_and_broken_files(tmp_path):
    with pytest.raises(NWBReadError, match="No NWB file at"):
        read_session_info(tmp_path / "absent.nwb")
    broken = tmp_path / "broken.nwb"
    broken.write_text("hello")
    with pytest.raises(NWBReadError, match="Cannot read NWB file broken.nwb"):
        read_session_info(broken)

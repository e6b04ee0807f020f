"""The simulator makes realistic, reproducible sessions."""

import numpy as np

from decoding_assets.decoder.simulate import simulate_open_field, simulate_w_track


def test_open_field_is_realistic_and_seeded():
    a = simulate_open_field(duration=60.0, n_tetrodes=4, seed=7)
    b = simulate_open_field(duration=60.0, n_tetrodes=4, seed=7)
    np.testing.assert_array_equal(a.spike_times[2], b.spike_times[2])
    assert a.position.min() > -2 and a.position.max() < 102
    moving = a.speed[a.speed > 2]
    assert 8 < np.median(moving) < 45  # cm/s, a rat foraging
    assert np.percentile(a.speed, 99) < 80
    for times, marks in zip(a.spike_times, a.spike_waveform_features):
        assert np.all(np.diff(times) >= 0)
        assert marks.shape == (times.size, 4)
        peak = marks.max(axis=1)
        assert 30 < np.median(peak) < 400  # µV
        assert 3 < times.size / 60 < 80  # spikes per second per tetrode


def test_w_track_stays_on_the_track():
    s = simulate_w_track(duration=60.0, n_tetrodes=3, seed=2)
    assert np.isfinite(s.linear_position).all()
    env = s.environment()
    env.fit_place_grid(None)
    assert s.linear_position.max() <= env.edges_[0][-1] + 1e-6
    assert np.median(s.speed[s.speed > 2]) > 8

"""Decoding inputs as the reference reads them: which bin a spike falls in, which bins
are missing, and position given at its own rate."""

import numpy as np
import pytest

from decoding_assets.decoder.inputs import interval_bounds, missing_bins, spike_time_bins

TIME = np.arange(10) * 0.002  # 10 bins of 2 ms


def test_spikes_fall_in_the_bins_the_reference_puts_them_in():
    spikes = np.array([-0.001, 0.0, 0.0019, 0.002, 0.0159, 0.016, 0.0175, 0.018, 0.0185])
    kept, bins = spike_time_bins(spikes, TIME, [0, 10])
    # before time[0] and after time[-1] dropped; at exactly time[-1] (0.018) in bin n-2;
    # so the last bin never holds a spike
    np.testing.assert_array_equal(kept, [False, True, True, True, True, True, True, True, False])
    np.testing.assert_array_equal(bins, [0, 0, 1, 7, 8, 8, 8])


def test_spikes_are_binned_within_each_interval():
    time = np.concatenate([TIME, 1.0 + TIME])  # two intervals, a gap of ~1 s between them
    spikes = np.array([0.005, 0.018, 0.5, 0.9999, 1.0, 1.0185])
    kept, bins = spike_time_bins(spikes, time, interval_bounds(np.repeat([0, 1], 10)))
    # a spike in the gap belongs to neither interval (not to the first one's last bin)
    np.testing.assert_array_equal(kept, [True, True, False, False, True, False])
    np.testing.assert_array_equal(bins, [2, 8, 10])


def test_one_bin_intervals_hold_only_their_own_instant():
    kept, bins = spike_time_bins(np.array([0.0, 0.001]), TIME[:1], [0, 1])
    np.testing.assert_array_equal(kept, [True, False])
    np.testing.assert_array_equal(bins, [0])


def test_position_at_its_own_rate_marks_the_bins_it_does_not_track():
    position_time = np.arange(5) * 0.004  # every other bin
    position = np.array([[1.0, 1.0], [np.nan, 2.0], [3.0, 3.0], [4.0, 4.0], [np.nan, np.nan]])
    missing = missing_bins(TIME, None, position, position_time)
    # bins 2-3 start while sample 1 (NaN) is the latest; bins 8-9 after sample 4 (NaN)
    np.testing.assert_array_equal(np.flatnonzero(missing), [2, 3, 8, 9])


def test_position_at_the_bins_and_is_missing_combine():
    position = np.ones((10, 1))
    position[4] = np.nan
    is_missing = np.zeros(10, dtype=bool)
    is_missing[7] = True
    np.testing.assert_array_equal(np.flatnonzero(missing_bins(TIME, is_missing, position)), [4, 7])


def test_position_of_another_length_without_its_times_is_a_clear_error():
    with pytest.raises(ValueError, match="position has 4 rows but time has 10 bins.*position_time"):
        missing_bins(TIME, None, np.ones((4, 2)))

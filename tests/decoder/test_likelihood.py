"""The blocked, log-stabilized likelihood equals a naive per-spike loop (MODEL.md)."""

import numpy as np
import pytest

from decoding_assets.decoder import ContFragClusterlessClassifier, Environment

FS = 500.0
POSITION_STD = 6.0
WAVEFORM_STD = 24.0


def normal_pdf(x, std):
    return np.exp(-0.5 * (x / std) ** 2) / (std * np.sqrt(2 * np.pi))


def small_session(rng):
    position_time = np.arange(0, 20.0, 1 / FS)
    angle = 2 * np.pi * position_time / 7.0
    position = np.column_stack([15 + 10 * np.cos(angle), 15 + 10 * np.sin(1.3 * angle)])
    spike_times, marks = [], []
    for n_spikes, n_features in [(120, 4), (60, 1), (80, 4)]:
        times = np.sort(rng.uniform(-1.0, 21.0, n_spikes))  # some before and after the data
        spike_times.append(times)
        marks.append(rng.uniform(40, 300, (n_spikes, n_features)))
    # an electrode that never fires during encoding, and one that never fires at all
    spike_times.append(np.array([21.5, 22.0]))
    marks.append(rng.uniform(40, 300, (2, 4)))
    spike_times.append(np.array([]))
    marks.append(np.zeros((0, 4)))
    return position_time, position, spike_times, marks


def naive_log_likelihood(env, position_time, position, spike_times, marks, time, is_training_end):
    """LL_i(x) by loops over spikes, float64, straight from MODEL.md."""
    train = position_time < is_training_end
    tt, tp = position_time[train], position[train]
    interior = env.is_track_interior_.ravel()
    centers = env.place_bin_centers_[interior]
    kx = lambda a, b: normal_pdf(a[:, None, 0] - b[None, :, 0], POSITION_STD) * normal_pdf(
        a[:, None, 1] - b[None, :, 1], POSITION_STD
    )
    occupancy = kx(tp, centers).mean(axis=0)
    n_bins_encoding = int((tt[-1] - tt[0]) * FS)
    ll = np.zeros((time.size, centers.shape[0]))
    ground = np.zeros(centers.shape[0])
    for times, m in zip(spike_times, marks):
        enc = (times >= tt[0]) & (times <= tt[-1])
        enc_times, enc_marks = times[enc], m[enc]
        rate = enc.sum() / n_bins_encoding
        enc_pos = np.column_stack([np.interp(enc_times, tt, tp[:, d]) for d in range(2)])
        if enc.sum():
            gpi = rate * kx(enc_pos, centers).mean(axis=0) / occupancy
        else:
            gpi = np.zeros(centers.shape[0])
        ground += np.maximum(gpi, 1e-15)
        for s, mark in zip(times, m):
            # the reference's binning: [time[i], time[i+1]), the last-but-one bin closed
            # at time[-1], the last bin empty
            if not (time[0] <= s <= time[-1]):
                continue
            i = min(np.searchsorted(time, s, side="right") - 1, time.size - 2)
            if enc.sum() == 0:
                ll[i] += np.log(1e-15)
                continue
            mark_kernel = np.prod(normal_pdf(mark[None, :] - enc_marks, WAVEFORM_STD), axis=1)
            joint = rate * (mark_kernel @ kx(enc_pos, centers)) / enc.sum() / occupancy
            with np.errstate(divide="ignore"):
                ll[i] += np.maximum(np.log(joint), np.log(1e-15))
    return ll - ground


@pytest.mark.parametrize("dtype, tolerance", [("float64", 1e-9), ("float32", 2e-3)])
def test_likelihood_equals_naive_loop(rng, dtype, tolerance):
    position_time, position, spike_times, marks = small_session(rng)
    is_training = position_time < 15.0
    clf = ContFragClusterlessClassifier(
        Environment(place_bin_size=2.0),
        {"position_std": POSITION_STD, "waveform_std": WAVEFORM_STD, "block_size": 7, "disable_progress_bar": True},
        dtype=dtype,
    )
    clf.fit(position_time, position, spike_times, marks, is_training=is_training)
    time = np.arange(15.0, 20.0, 1 / FS)
    ours = clf.compute_log_likelihood(time, spike_times, marks)
    interior = clf.environments.is_track_interior_.ravel()
    assert np.isnan(ours[:, ~interior]).all()
    expected = naive_log_likelihood(clf.environments, position_time, position, spike_times, marks, time, 15.0)
    ours = ours[:, interior]
    # relative to the typical magnitude of a spike's term (tens)
    assert np.max(np.abs(ours - expected)) <= tolerance * max(1.0, np.abs(expected).max())
    assert np.isfinite(ours).all()


def test_missing_bins_have_the_references_log_likelihood_of_one(rng):
    position_time, position, spike_times, marks = small_session(rng)
    clf = ContFragClusterlessClassifier(Environment(), {"disable_progress_bar": True})
    clf.fit(position_time, position, spike_times, marks)
    time = np.arange(5.0, 10.0, 1 / FS)
    missing = np.zeros(time.size, dtype=bool)
    missing[100:300] = True
    ll = clf.compute_log_likelihood(time, spike_times, marks, is_missing=missing)
    interior = clf.environments.is_track_interior_.ravel()
    assert np.all(ll[missing][:, interior] == 1.0)
    assert np.all(ll[~missing][:, interior] < 0.0)


def test_far_outlier_mark_does_not_give_log_zero(rng):
    """A mark hundreds of µV from every encoding mark underflows a float32 kernel;
    the log-space shift keeps the term finite (floored at log 1e-15 at worst)."""
    position_time, position, spike_times, marks = small_session(rng)
    clf = ContFragClusterlessClassifier(Environment(), {"disable_progress_bar": True})
    clf.fit(position_time, position, spike_times, marks)
    time = np.arange(5.0, 6.0, 1 / FS)
    far = [np.array([5.5]), np.array([[5000.0, 5000.0, 5000.0, 5000.0]])]
    ll = clf.compute_log_likelihood(time, [far[0], *spike_times[1:]], [far[1], *marks[1:]])
    assert np.isfinite(ll[:, clf.environments.is_track_interior_.ravel()]).all()


def test_a_spike_at_the_last_bin_start_counts_in_the_bin_before_as_in_the_reference(rng):
    position_time, position, spike_times, marks = small_session(rng)
    clf = ContFragClusterlessClassifier(Environment(), {"disable_progress_bar": True})
    clf.fit(position_time, position, spike_times[:1], marks[:1])
    time = np.arange(5.0, 5.1, 1 / FS)
    interior = clf.environments.is_track_interior_.ravel()
    no_spikes = clf.compute_log_likelihood(time, [np.array([])], [np.zeros((0, 4))])[:, interior]
    at_end = clf.compute_log_likelihood(time, [time[-1:]], [marks[0][:1]])[:, interior]
    after_end = clf.compute_log_likelihood(time, [time[-1:] + 0.5 / FS], [marks[0][:1]])[:, interior]
    changed = np.flatnonzero(np.any(at_end != no_spikes, axis=1))
    np.testing.assert_array_equal(changed, [time.size - 2])
    np.testing.assert_array_equal(after_end, no_spikes)  # beyond time[-1]: dropped

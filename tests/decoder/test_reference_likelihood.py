"""The clusterless KDE likelihood on the edge cases and properties that the reference
package (non_local_detector) checks for its own: values computed here from MODEL.md
("Encoding", "Likelihood"), in float64 and in log space, spike by spike.

The sessions are tiny on purpose: a 39 cm linear track, three electrodes (4, 3 and 1
features), position sampled by a 30 Hz camera, 2 s decoded.
"""

from dataclasses import dataclass, replace

import numpy as np
import pytest
from scipy.special import logsumexp
from track_linearization import make_track_graph

from decoding_assets.decoder import ContFragClusterlessClassifier, Environment

FS = 500.0
CAMERA_RATE = 30.0
POSITION_STD = 4.0
WAVEFORM_STD = 24.0
LOG_FLOOR = float(np.log(1e-15))
TRACK_LENGTH = 39.0  # 9.75 bins of 4 cm: the bin count is not at a ceil() boundary
ENCODING_END = 15.0
# 2 s right after the encoding period, in 2 ms bins: the animal runs from the far end
# (39 cm) back to 10 cm, past every electrode's place fields
DECODE_TIME = ENCODING_END + np.arange(1000) / FS


def params(**overrides) -> dict:
    # small spike blocks, so that one time window's spikes span several of them
    p = {"position_std": POSITION_STD, "waveform_std": WAVEFORM_STD, "block_size": 64, "disable_progress_bar": True}
    p.update(overrides)
    return p


def decoding_bins(spike_times, time) -> tuple[np.ndarray, np.ndarray]:
    """The reference's binning: spikes in [time[0], time[-1]] count, bin i holds
    time[i] <= s < time[i+1], a spike at exactly time[-1] goes to the bin before it and
    the last bin holds none. Returns (kept mask, bin of each kept spike)."""
    kept = (spike_times >= time[0]) & (spike_times <= time[-1])
    bins = np.minimum(np.searchsorted(time, spike_times[kept], side="right") - 1, max(time.size - 2, 0))
    return kept, bins


def spike_counts(spike_times, time) -> np.ndarray:
    return np.bincount(decoding_bins(spike_times, time)[1], minlength=time.size)


def normal_logpdf(x, std):
    return -0.5 * (x / std) ** 2 - np.log(std * np.sqrt(2.0 * np.pi))


def back_and_forth(t, length=TRACK_LENGTH, period=6.0):
    return 0.5 * length * (1.0 - np.cos(2.0 * np.pi * t / period))


@dataclass
class Session:
    position_time: np.ndarray
    position: np.ndarray  # (n,) along the track, cm
    spike_times: list
    marks: list

    @property
    def is_training(self) -> np.ndarray:
        return self.position_time < ENCODING_END


def place_cell_spikes(rng, path, centers, n_features, duration, peak_rate=25.0, width=4.0):
    """One electrode: Poisson spikes of Gaussian place fields along ``path(t)`` (simulated
    at 500 Hz, finer than the camera), each unit with its own amplitude template."""
    fine = np.arange(int(duration * FS)) / FS
    where = path(fine)
    times, marks = [], []
    for center in centers:
        fired = rng.random(fine.size) < peak_rate * np.exp(-0.5 * ((where - center) / width) ** 2) / FS
        times.append(fine[fired] + rng.uniform(0.0, 1.0 / FS, fired.sum()))
        template = rng.uniform(60.0, 250.0, n_features)
        marks.append(template + rng.normal(0.0, 10.0, (fired.sum(), n_features)))
    times, marks = np.concatenate(times), np.concatenate(marks)
    order = np.argsort(times)
    return times[order], marks[order]


def make_session(seed=0, duration=20.0, path=back_and_forth, units=((6.0, 30.0), (15.0,), (24.0, 33.0)),
                 n_features=(4, 3, 1)) -> Session:  # fmt: skip
    rng = np.random.default_rng(seed)
    position_time = np.arange(int(duration * CAMERA_RATE)) / CAMERA_RATE
    spikes = [place_cell_spikes(rng, path, c, f, duration) for c, f in zip(units, n_features)]
    return Session(position_time, path(position_time), [s[0] for s in spikes], [s[1] for s in spikes])


def naive_log_likelihood(session, time, centers, to_grid=lambda x: x, position=None,
                         position_std=POSITION_STD, waveform_std=WAVEFORM_STD):  # fmt: skip
    """LL_i(x) at the given (interior) bin centres, straight from MODEL.md.

    ``position`` (default the session's) is interpolated at each spike time first and
    only then mapped by ``to_grid`` (e.g. linearized), as a camera position would be.
    """
    position = session.position if position is None else position
    train = session.is_training
    train_time, train_position = session.position_time[train], position[train]
    grid_position = to_grid(train_position)

    def log_kx(at):
        return normal_logpdf(at[:, None] - centers[None, :], position_std)

    log_occupancy = logsumexp(log_kx(grid_position), axis=0) - np.log(grid_position.size)
    n_encoding_bins = int((train_time[-1] - train_time[0]) * FS)
    ll = np.zeros((time.size, centers.size))
    for times, marks in zip(session.spike_times, session.marks):
        enc = (times >= train_time[0]) & (times <= train_time[-1])
        n_enc = int(enc.sum())
        if n_enc:
            rate = n_enc / n_encoding_bins
            log_kx_enc = log_kx(to_grid(np.interp(times[enc], train_time, train_position)))
            ll -= np.maximum(np.exp(np.log(rate / n_enc) + logsumexp(log_kx_enc, axis=0) - log_occupancy), 1e-15)
        else:
            ll -= 1e-15
        kept, bins = decoding_bins(times, time)
        for i, mark in zip(bins, marks[kept]):
            if not n_enc:
                ll[i] += LOG_FLOOR
                continue
            log_km = normal_logpdf(mark[None, :] - marks[enc], waveform_std).sum(axis=1)
            term = np.log(rate / n_enc) + logsumexp(log_km[:, None] + log_kx_enc, axis=0) - log_occupancy
            ll[i] += np.maximum(term, LOG_FLOOR)
    return ll


def fit(session, environment=None, dtype="float64", **param_overrides):
    clf = ContFragClusterlessClassifier(environment or Environment(place_bin_size=4.0), params(**param_overrides),
                                        dtype=dtype)  # fmt: skip
    clf.fit(
        session.position_time, session.position, session.spike_times, session.marks, is_training=session.is_training
    )
    return clf


def interior_centers(clf) -> tuple[np.ndarray, np.ndarray]:
    interior = clf.environments.is_track_interior_.ravel()
    return interior, clf.environments.place_bin_centers_[interior, 0]


def probe(time: float, n_features: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """One spike whose mark is 100 waveform stds from everything: its term is exactly
    log 1e-15 in its own bin, which makes it a marker for where a spike lands."""
    return np.array([time]), np.full((1, n_features), 100.0 * WAVEFORM_STD + 300.0)


def with_electrode(session, e, times, marks) -> Session:
    spike_times, all_marks = list(session.spike_times), list(session.marks)
    spike_times[e], all_marks[e] = times, marks
    return replace(session, spike_times=spike_times, marks=all_marks)


@pytest.fixture(scope="module")
def session():
    return make_session()


@pytest.fixture(scope="module")
def fitted(session):
    return fit(session)


# ---------------------------------------------------------------------- agreement with the naive loop


def test_equals_naive_loop_on_a_track_graph(session):
    """Two edges in a line with a 6 cm gap: positions are (x, 0) in cm and linearize to
    x before the node at 22 cm and x + 6 after it. Electrodes with 4, 3 and 1 features
    share one scalar waveform_std."""
    graph = make_track_graph([(0.0, 0.0), (22.0, 0.0), (TRACK_LENGTH, 0.0)], [(0, 1), (1, 2)])
    environment = Environment(place_bin_size=4.0, track_graph=graph, edge_order=[(0, 1), (1, 2)], edge_spacing=6.0)
    xy = np.column_stack([session.position, np.zeros_like(session.position)])
    clf = ContFragClusterlessClassifier(environment, params(), dtype="float64")
    clf.fit(session.position_time, xy, session.spike_times, session.marks, is_training=session.is_training)
    ours = clf.compute_log_likelihood(DECODE_TIME, session.spike_times, session.marks)
    interior, centers = interior_centers(clf)
    assert (~interior).sum() == 1  # the gap
    assert np.isnan(ours[:, ~interior]).all()
    expected = naive_log_likelihood(session, DECODE_TIME, centers, to_grid=lambda x: np.where(x < 22.0, x, x + 6.0))
    scale = max(1.0, np.abs(expected).max())
    assert np.abs(ours[:, interior] - expected).max() <= 1e-9 * scale


@pytest.mark.parametrize("dtype, tolerance", [("float64", 1e-9), ("float32", 2e-3)])
def test_equals_naive_loop_on_a_regular_grid(session, dtype, tolerance):
    clf = fit(session, dtype=dtype)
    ours = clf.compute_log_likelihood(DECODE_TIME, session.spike_times, session.marks)
    interior, centers = interior_centers(clf)
    assert interior.all()  # the animal visits the whole track
    expected = naive_log_likelihood(session, DECODE_TIME, centers)
    assert np.isfinite(ours).all()
    # relative to the size of one spike's term (tens)
    assert np.abs(ours - expected).max() <= tolerance * max(1.0, np.abs(expected).max())


# ---------------------------------------------------------------------- degenerate electrodes


def test_no_spikes_at_all(session):
    """Every electrode silent: only the 1e-15 floor of each ground intensity remains,
    and by the symmetry of the discrete transitions both states stay at 1/2. (The
    reference 0.6.9 returns a NaN log likelihood and posterior here.)"""
    empty = replace(session, spike_times=[np.array([])] * 3, marks=[np.zeros((0, f)) for f in (4, 3, 1)])
    clf = fit(empty)
    ll = clf.compute_log_likelihood(DECODE_TIME, empty.spike_times, empty.marks)
    np.testing.assert_allclose(ll, -3e-15, rtol=1e-12)
    results = clf.predict(empty.spike_times, empty.marks, DECODE_TIME[:50])
    np.testing.assert_allclose(results["acausal_state_probabilities"].values, 0.5, atol=1e-12)
    np.testing.assert_allclose(results["acausal_posterior"].sum("state_bins").values, 1.0, atol=1e-12)


def test_electrode_without_encoding_spikes(session):
    """Electrode 1 fires only after the encoding period. Each of its decoding spikes
    adds log 1e-15 to every bin of its time bin, so the posterior is exactly that of
    decoding without them. (The reference 0.6.9 returns a NaN posterior here; MODEL.md
    asks ours to stay finite.)"""
    late = session.spike_times[1] >= ENCODING_END
    silent_then = with_electrode(session, 1, session.spike_times[1][late], session.marks[1][late])
    clf = fit(silent_then)
    without = with_electrode(silent_then, 1, np.array([]), np.zeros((0, 3)))
    ll = clf.compute_log_likelihood(DECODE_TIME, silent_then.spike_times, silent_then.marks)
    ll_without = clf.compute_log_likelihood(DECODE_TIME, without.spike_times, without.marks)
    counts = spike_counts(silent_then.spike_times[1], DECODE_TIME)
    assert counts.sum() > 0
    np.testing.assert_allclose(ll - ll_without, counts[:, None] * LOG_FLOOR * np.ones_like(ll), atol=1e-9)

    window = DECODE_TIME[:300]
    decoded = clf.predict(silent_then.spike_times, silent_then.marks, window)
    reference = clf.predict(without.spike_times, without.marks, window)
    assert np.isfinite(decoded["acausal_state_probabilities"].values).all()
    np.testing.assert_allclose(decoded["acausal_posterior"].values, reference["acausal_posterior"].values, atol=1e-10)


def test_single_encoding_spike(session):
    """One encoding spike at x1 with mark m1: Lambda(x) = lambda K_x(x - x1) / occ(x) and
    a spike with mark m adds log(lambda K_m(m - m1) K_x(x - x1) / occ(x)), floored."""
    t1 = 7.3
    m1 = np.array([[120.0, 80.0, 60.0, 150.0]])
    decoding_times = np.array([15.0101, 15.0102, 15.5003, 16.2])
    decoding_marks = np.array([[118.0, 85.0, 61.0, 149.0], [120.0, 80.0, 60.0, 150.0],
                               [200.0, 20.0, 90.0, 100.0], [125.0, 70.0, 60.0, 140.0]])  # fmt: skip
    one = Session(session.position_time, session.position,
                  [np.concatenate([[t1], decoding_times])], [np.concatenate([m1, decoding_marks])])  # fmt: skip
    clf = fit(one)
    ll = clf.compute_log_likelihood(DECODE_TIME, one.spike_times, one.marks)
    _, centers = interior_centers(clf)

    train_time, train_x = session.position_time[session.is_training], session.position[session.is_training]
    occupancy = np.exp(normal_logpdf(train_x[:, None] - centers[None, :], POSITION_STD)).mean(axis=0)
    x1 = np.interp(t1, train_time, train_x)
    rate = 1.0 / int((train_time[-1] - train_time[0]) * FS)
    kx = np.exp(normal_logpdf(x1 - centers, POSITION_STD))
    expected = np.full_like(ll, -np.maximum(rate * kx / occupancy, 1e-15))
    for i, mark in zip(decoding_bins(decoding_times, DECODE_TIME)[1], decoding_marks):
        log_km = normal_logpdf(mark - m1[0], WAVEFORM_STD).sum()
        expected[i] += np.maximum(np.log(rate) + log_km + np.log(kx) - np.log(occupancy), LOG_FLOOR)
    np.testing.assert_allclose(ll, expected, rtol=1e-10, atol=1e-10)


def test_identical_marks(session):
    """Every mark the same: the mark kernel is its peak K_m(0) for every pair, so a
    spike's term is log K_m(0) + log Lambda(x) (one electrode, so Lambda is read off a
    bin without spikes)."""
    times = session.spike_times[0]
    same = Session(
        session.position_time, session.position, [times], [np.tile([[90.0, 140.0, 60.0, 75.0]], (times.size, 1))]
    )
    clf = fit(same)
    ll = clf.compute_log_likelihood(DECODE_TIME, same.spike_times, same.marks)
    counts = spike_counts(times, DECODE_TIME)
    assert counts.max() >= 1
    ground = -ll[counts == 0][0]
    log_peak = 4 * normal_logpdf(0.0, WAVEFORM_STD)
    expected = -ground + counts[:, None] * np.maximum(log_peak + np.log(ground), LOG_FLOOR)
    np.testing.assert_allclose(ll, expected, rtol=1e-10)


def test_constant_extra_features_add_the_kernel_peak(session):
    """One feature against the same feature plus three that are equal on every spike:
    each spike's term grows by exactly 3 log K(0), nothing else changes. (A wide
    position kernel keeps every term above the 1e-15 floor, where this is exact.)"""
    times, marks = session.spike_times[0], session.marks[0][:, :1]
    padded = np.column_stack([marks, np.tile([[50.0, 70.0, 90.0]], (marks.shape[0], 1))])
    one = Session(session.position_time, session.position, [times], [marks])
    four = Session(session.position_time, session.position, [times], [padded])
    ll_one = fit(one, position_std=20.0).compute_log_likelihood(DECODE_TIME, one.spike_times, one.marks)
    ll_four = fit(four, position_std=20.0).compute_log_likelihood(DECODE_TIME, four.spike_times, four.marks)
    counts = spike_counts(times, DECODE_TIME)
    assert counts.sum() > 0
    expected = counts[:, None] * 3 * normal_logpdf(0.0, WAVEFORM_STD) * np.ones_like(ll_one)
    np.testing.assert_allclose(ll_four - ll_one, expected, atol=1e-9)


# ---------------------------------------------------------------------- outliers and extreme widths


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_far_outlier_mark_is_floored_not_log_zero(session, dtype):
    """A mark 100 stds from every encoding mark: its term is log 1e-15 (the floor), in
    its own bin only, and finite in float32 too."""
    clf = fit(session, dtype=dtype)
    ll = clf.compute_log_likelihood(DECODE_TIME, session.spike_times, session.marks)
    t, m = probe(DECODE_TIME[400] + 0.0005)
    probed = with_electrode(
        session, 0, np.concatenate([session.spike_times[0], t]), np.concatenate([session.marks[0], m])
    )
    ll_probed = clf.compute_log_likelihood(DECODE_TIME, probed.spike_times, probed.marks)
    assert np.isfinite(ll_probed).all()
    difference = ll_probed - ll
    tolerance = 1e-9 if dtype == "float64" else 1e-3
    np.testing.assert_allclose(difference[400], LOG_FLOOR, atol=tolerance)
    assert np.abs(np.delete(difference, 400, axis=0)).max() <= tolerance


def test_tiny_waveform_std_equals_log_space_sum(session):
    """waveform_std 0.05 µV: every mark kernel underflows in linear space, yet the terms
    equal the exact log-space sum (floored below 1e-15). Each decoding mark sits 0.1 µV
    from one encoding mark, so its term is well above the floor near that spike."""
    before = session.spike_times[0] < ENCODING_END
    near = session.marks[0][before][::7][:20] + 0.1
    near_times = DECODE_TIME[::50][: near.shape[0]] + 0.0005
    tiny = Session(session.position_time, session.position,
                   [np.concatenate([session.spike_times[0][before], near_times])],
                   [np.concatenate([session.marks[0][before], near])])  # fmt: skip
    clf = fit(tiny, waveform_std=0.05)
    ours = clf.compute_log_likelihood(DECODE_TIME, tiny.spike_times, tiny.marks)
    _, centers = interior_centers(clf)
    expected = naive_log_likelihood(tiny, DECODE_TIME, centers, waveform_std=0.05)
    spike_term = expected[0] - expected[1]  # bin 0 holds a spike, bin 1 none
    assert spike_term.max() > LOG_FLOOR + 20
    assert np.isfinite(ours).all()
    np.testing.assert_allclose(ours, expected, rtol=1e-9, atol=1e-9)


def test_huge_waveform_std_ignores_marks(session):
    """waveform_std 1e5 µV: the mark kernel is flat at its peak K(0), so a spike's term
    is its electrode's log Lambda_e(x) + log K(0) (one electrode, one feature)."""
    one = Session(session.position_time, session.position, session.spike_times[:1], [session.marks[0][:, :1]])
    clf = fit(one, waveform_std=1e5)
    ll = clf.compute_log_likelihood(DECODE_TIME, one.spike_times, one.marks)
    times = one.spike_times[0]
    counts = spike_counts(times, DECODE_TIME)
    assert counts.sum() > 0
    ground = -ll[counts == 0][0]
    expected = -ground + counts[:, None] * np.maximum(normal_logpdf(0.0, 1e5) + np.log(ground), LOG_FLOOR)
    np.testing.assert_allclose(ll, expected, atol=1e-5)


def test_unvisited_bins_far_from_the_data_stay_finite(session):
    """A grid ten times longer than the track, every bin kept: where the occupancy
    underflows to 0 the terms are floored instead of becoming NaN or +inf."""
    environment = Environment(place_bin_size=4.0, position_range=[(0.0, 400.0)])
    for dtype in ("float64", "float32"):
        clf = ContFragClusterlessClassifier(environment, params(), infer_track_interior=False, dtype=dtype)
        clf.fit(
            session.position_time, session.position, session.spike_times, session.marks, is_training=session.is_training
        )
        ll = clf.compute_log_likelihood(DECODE_TIME[:200], session.spike_times, session.marks)
        assert ll.shape == (200, 100)
        assert np.isfinite(ll).all()


# ---------------------------------------------------------------------- which spikes count, and where


def test_spikes_outside_the_decoding_window_are_ignored(session, fitted):
    ll = fitted.compute_log_likelihood(DECODE_TIME, session.spike_times, session.marks)
    extra_times = np.array([-50.0, DECODE_TIME[0] - 1e-9, DECODE_TIME[-1] + 1e-9, DECODE_TIME[-1] + 1.0 / FS, 1e4])
    extra_marks = np.tile(session.marks[0][:1], (extra_times.size, 1))
    padded = with_electrode(session, 0, np.concatenate([session.spike_times[0], extra_times]),
                            np.concatenate([session.marks[0], extra_marks]))  # fmt: skip
    np.testing.assert_array_equal(fitted.compute_log_likelihood(DECODE_TIME, padded.spike_times, padded.marks), ll)


@pytest.mark.parametrize(
    "when, expected_bin",
    [
        (DECODE_TIME[7], 7),  # a bin's start belongs to it
        (DECODE_TIME[8] - 1e-7, 7),  # just before the next bin's start
        (DECODE_TIME[0], 0),
        # as the reference bins: exactly time[-1] goes to the bin before, later is dropped
        (DECODE_TIME[-1], DECODE_TIME.size - 2),
        (DECODE_TIME[-1] + 0.9 / FS, None),
    ],
)
def test_spike_time_bin(session, fitted, when, expected_bin):
    empty = [np.array([])] * 3
    marks = [np.zeros((0, f)) for f in (4, 3, 1)]
    t, m = probe(when)
    ll = fitted.compute_log_likelihood(DECODE_TIME, [t, *empty[1:]], [m, *marks[1:]])
    ll_empty = fitted.compute_log_likelihood(DECODE_TIME, empty, marks)
    hit = np.flatnonzero(np.abs(ll - ll_empty).max(axis=1) > 1.0)
    if expected_bin is None:
        assert hit.size == 0
        np.testing.assert_array_equal(ll, ll_empty)
        return
    assert hit.tolist() == [expected_bin]
    np.testing.assert_allclose(ll[expected_bin] - ll_empty[expected_bin], LOG_FLOOR, atol=1e-9)


# ---------------------------------------------------------------------- invariances


def test_translating_every_mark_changes_nothing(session, fitted):
    """The mark kernel depends on mark differences only."""
    ll = fitted.compute_log_likelihood(DECODE_TIME, session.spike_times, session.marks)
    offsets = [np.array([35.0, -20.0, 12.0, 400.0]), np.array([-60.0, 5.0, 80.0]), np.array([1000.0])]
    moved = replace(session, marks=[m + o for m, o in zip(session.marks, offsets)])
    ll_moved = fit(moved).compute_log_likelihood(DECODE_TIME, moved.spike_times, moved.marks)
    np.testing.assert_allclose(ll_moved, ll, rtol=1e-9, atol=1e-9)


def test_translating_every_time_changes_nothing(session, fitted):
    """Only time differences matter (the encoding period lasts 7483.3 bins, so its
    whole number of bins does not flip with rounding)."""
    ll = fitted.compute_log_likelihood(DECODE_TIME, session.spike_times, session.marks)
    shift = 1000.0
    moved = replace(
        session, position_time=session.position_time + shift, spike_times=[t + shift for t in session.spike_times]
    )
    clf = ContFragClusterlessClassifier(Environment(place_bin_size=4.0), params(), dtype="float64")
    clf.fit(moved.position_time, moved.position, moved.spike_times, moved.marks, is_training=session.is_training)
    ll_moved = clf.compute_log_likelihood(DECODE_TIME + shift, moved.spike_times, moved.marks)
    np.testing.assert_allclose(ll_moved, ll, rtol=1e-8, atol=1e-8)


def test_translating_every_position_moves_the_grid_with_it(session, fitted):
    ll = fitted.compute_log_likelihood(DECODE_TIME, session.spike_times, session.marks)
    moved = replace(session, position=session.position + 100.0)
    clf = fit(moved)
    np.testing.assert_allclose(clf.environments.place_bin_centers_, fitted.environments.place_bin_centers_ + 100.0)
    ll_moved = clf.compute_log_likelihood(DECODE_TIME, moved.spike_times, moved.marks)
    np.testing.assert_allclose(ll_moved, ll, rtol=1e-9, atol=1e-9)


# ---------------------------------------------------------------------- one time bin


def test_a_single_decoding_bin(session, fitted):
    time = DECODE_TIME[:1]
    ll = fitted.compute_log_likelihood(time, session.spike_times, session.marks)
    assert ll.shape == (1, fitted.environments.place_bin_centers_.shape[0])
    assert np.isfinite(ll).all()
    results = fitted.predict(session.spike_times, session.marks, time)
    np.testing.assert_array_equal(results["acausal_posterior"].values, results["causal_posterior"].values)
    np.testing.assert_allclose(results["acausal_posterior"].sum("state_bins").values, 1.0, atol=1e-12)

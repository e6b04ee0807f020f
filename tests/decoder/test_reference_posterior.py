"""The posterior against exact answers computed here, and the properties the reference
package (non_local_detector) checks on its own posteriors.

Exact answers: on a 4-bin L-shaped track every (state, bin) path of 5 time bins is
enumerated (8^5 paths, no recursion at all); on a 3 x 3 open field a dense (18 x 18)
transition matrix built here runs the classic alpha-beta forward-backward. Both take
our log likelihood (tested on its own in test_reference_likelihood.py) as given.
"""

import numpy as np
import pytest
from scipy.special import logsumexp
from track_linearization import make_track_graph

from decoding_assets.decoder import ContFragClusterlessClassifier, Environment

from .test_reference_likelihood import (
    CAMERA_RATE,
    DECODE_TIME,
    ENCODING_END,
    FS,
    fit,
    make_session,
    params,
    place_cell_spikes,
)

# Discrete transitions as EM leaves them (asymmetric, so that swapped blocks show); set
# on the fitted models below in place of the symmetric matrix they start from.
DISCRETE = np.array([[0.9, 0.1], [0.25, 0.75]])


def dense_transition(squared_distance, movement_var, discrete=DISCRETE):
    """A[(s, i) -> (s', j)] over interior bins, states Continuous then Fragmented: a
    row-normalized Gaussian random walk for Continuous -> Continuous, uniform otherwise."""
    n = squared_distance.shape[0]
    walk = np.exp(-0.5 * squared_distance / movement_var)
    walk /= walk.sum(axis=1, keepdims=True)
    uniform = np.full((n, n), 1.0 / n)
    return np.block(
        [[discrete[0, 0] * walk, discrete[0, 1] * uniform], [discrete[1, 0] * uniform, discrete[1, 1] * uniform]]
    )


def enumerate_paths(initial, transition, log_likelihood):
    """Causal and acausal marginals and log p(data) by summing over every path."""
    n_states, n_time = initial.size, log_likelihood.shape[0]
    paths = np.stack(np.unravel_index(np.arange(n_states**n_time), (n_states,) * n_time), axis=1)
    with np.errstate(divide="ignore"):
        log_prior = np.log(initial)[paths[:, 0]] + np.log(transition)[paths[:, :-1], paths[:, 1:]].sum(axis=1)
    # the transitions after t sum to one over the future paths, so the causal marginal
    # at t is the path sum with the likelihoods after t left out
    emitted = np.cumsum(log_likelihood[np.arange(n_time), paths], axis=1)

    def marginal(log_weight, t):
        w = np.exp(log_weight - log_weight.max())
        return np.bincount(paths[:, t], weights=w, minlength=n_states) / w.sum()

    full = log_prior + emitted[:, -1]
    causal = np.stack([marginal(log_prior + emitted[:, t], t) for t in range(n_time)])
    acausal = np.stack([marginal(full, t) for t in range(n_time)])
    return causal, acausal, logsumexp(full)


def alpha_beta(initial, transition, log_likelihood):
    """Scaled forward (alpha) and backward (beta) messages; acausal = alpha * beta."""
    n_time = log_likelihood.shape[0]
    shift = log_likelihood.max(axis=1, keepdims=True)
    likelihood = np.exp(log_likelihood - shift)
    alpha = np.empty_like(likelihood)
    scale = np.empty(n_time)
    prior = initial
    for t in range(n_time):
        a = prior * likelihood[t]
        scale[t] = a.sum()
        alpha[t] = a / scale[t]
        prior = alpha[t] @ transition
    beta = np.ones_like(likelihood)
    for t in range(n_time - 2, -1, -1):
        beta[t] = transition @ (likelihood[t + 1] * beta[t + 1]) / scale[t + 1]
    acausal = alpha * beta
    return alpha, acausal / acausal.sum(axis=1, keepdims=True), np.log(scale).sum() + shift.sum()


def interior_columns(results, clf):
    """Our (time, state_bins) posterior at the interior bins, Continuous then Fragmented."""
    interior = np.tile(clf.environments.is_track_interior_.ravel(), 2)
    return results.values[:, interior]


# ---------------------------------------------------------------------- L-shaped track, brute force


def l_track_point(s):
    """Arc length s in [0, 8] cm along an L: 4 cm along x, then 4 cm up along y."""
    return np.column_stack([np.minimum(s, 4.0), np.maximum(s - 4.0, 0.0)])


def l_track_path(t):
    return 4.0 - 4.0 * np.cos(2.0 * np.pi * t / 5.0)


@pytest.fixture(scope="module")
def l_track():
    rng = np.random.default_rng(7)
    duration = 20.0
    position_time = np.arange(int(duration * CAMERA_RATE)) / CAMERA_RATE
    spikes = [place_cell_spikes(rng, l_track_path, c, 2, duration, width=1.5) for c in ((1.0, 6.5), (3.0, 7.5))]
    graph = make_track_graph([(0.0, 0.0), (4.0, 0.0), (4.0, 4.0)], [(0, 1), (1, 2)])
    environment = Environment(place_bin_size=2.0, track_graph=graph, edge_order=[(0, 1), (1, 2)], edge_spacing=2.0)
    clf = ContFragClusterlessClassifier(
        environment, params(position_std=1.5), movement_var=3.0, discrete_initial_conditions=(0.7, 0.3), dtype="float64"
    )
    position = l_track_point(l_track_path(position_time))
    clf.fit(
        position_time,
        position,
        [s[0] for s in spikes],
        [s[1] for s in spikes],
        is_training=position_time < ENCODING_END,
    )
    clf.discrete_state_transitions_ = DISCRETE.copy()
    # five 100 ms bins (the last lasts 2 ms), so that most hold spikes
    time = ENCODING_END + np.array([0.0, 0.1, 0.2, 0.3, 0.4])
    spike_times, marks = [s[0] for s in spikes], [s[1] for s in spikes]
    return clf, clf.predict(spike_times, marks, time), clf.compute_log_likelihood(time, spike_times, marks)


def test_l_track_layout(l_track):
    """Two 2 cm bins per 4 cm edge and one 2 cm gap bin between the edges."""
    clf, _, _ = l_track
    env = clf.environments
    np.testing.assert_allclose(env.edges_[0], [0.0, 2.0, 4.0, 6.0, 8.0, 10.0])
    np.testing.assert_array_equal(env.is_track_interior_, [True, True, False, True, True])


def test_l_track_posterior_equals_brute_force(l_track):
    clf, results, log_likelihood = l_track
    interior = clf.environments.is_track_interior_
    # graph distances between bin centres: along an edge, or through the corner node
    # (linear positions 1, 3 | 7, 9 are 1 and 3 cm from the corner on either side)
    to_corner = np.array([3.0, 1.0, 1.0, 3.0])
    same_edge = np.array([0, 0, 1, 1])[:, None] == np.array([0, 0, 1, 1])[None, :]
    centers = clf.environments.place_bin_centers_[interior, 0]
    distance = np.where(same_edge, np.abs(centers[:, None] - centers[None, :]), to_corner[:, None] + to_corner[None, :])
    np.testing.assert_allclose(clf.environments.track_bin_distances()[np.ix_(interior, interior)], distance)

    transition = dense_transition(distance**2, movement_var=3.0)
    initial = np.concatenate([np.full(4, 0.7 / 4), np.full(4, 0.3 / 4)])
    causal, acausal, log_evidence = enumerate_paths(initial, transition, np.tile(log_likelihood[:, interior], 2))

    np.testing.assert_allclose(interior_columns(results["causal_posterior"], clf), causal, atol=1e-10)
    np.testing.assert_allclose(interior_columns(results["acausal_posterior"], clf), acausal, atol=1e-10)
    assert results.attrs["marginal_log_likelihood"] == pytest.approx(log_evidence, rel=1e-10)
    # the gap bin carries no probability and is reported as NaN, in both states
    assert np.isnan(results["acausal_posterior"].values[:, [2, 7]]).all()
    assert np.isnan(results["causal_posterior"].values[:, [2, 7]]).all()


# ---------------------------------------------------------------------- 3 x 3 open field, alpha-beta


@pytest.fixture(scope="module")
def open_field():
    rng = np.random.default_rng(11)
    duration = 20.0
    position_time = np.arange(int(duration * CAMERA_RATE)) / CAMERA_RATE

    def lissajous(t):
        return np.column_stack([3 - 3 * np.cos(2 * np.pi * t / 3.1), 3 - 3 * np.cos(2 * np.pi * t / 4.3)])

    # four electrodes of one place cell each; spikes drawn at 500 Hz, already sorted
    fine = np.arange(int(duration * FS)) / FS
    where = lissajous(fine)
    spike_times, marks = [], []
    for center in ((1.0, 1.0), (5.0, 2.0), (3.0, 5.0), (2.0, 4.0)):
        rate = 40.0 * np.exp(-0.5 * ((where - center) ** 2).sum(axis=1) / 1.5**2)
        fired = rng.random(fine.size) < rate / FS
        spike_times.append(fine[fired] + rng.uniform(0, 1 / FS, fired.sum()))
        marks.append(rng.uniform(60, 250, 4) + rng.normal(0, 10, (fired.sum(), 4)))
    clf = ContFragClusterlessClassifier(
        Environment(place_bin_size=2.0), params(position_std=2.0), movement_var=2.0,
        discrete_initial_conditions=(0.6, 0.4), dtype="float64",
    )  # fmt: skip
    clf.fit(position_time, lissajous(position_time), spike_times, marks, is_training=position_time < ENCODING_END)
    clf.discrete_state_transitions_ = DISCRETE.copy()
    time = DECODE_TIME[:300]
    return clf, clf.predict(spike_times, marks, time), clf.compute_log_likelihood(time, spike_times, marks)


def test_open_field_posterior_equals_dense_forward_backward(open_field):
    clf, results, log_likelihood = open_field
    env = clf.environments
    interior = env.is_track_interior_.ravel()
    assert env.centers_shape_ == (5, 5) and interior.sum() == 9  # 3 x 3 visited, one border bin each side
    centers = env.place_bin_centers_[interior]
    squared = ((centers[:, None, :] - centers[None, :, :]) ** 2).sum(axis=-1)
    transition = dense_transition(squared, movement_var=2.0)
    initial = np.concatenate([np.full(9, 0.6 / 9), np.full(9, 0.4 / 9)])
    causal, acausal, log_evidence = alpha_beta(initial, transition, np.tile(log_likelihood[:, interior], 2))
    np.testing.assert_allclose(interior_columns(results["causal_posterior"], clf), causal, atol=1e-10)
    np.testing.assert_allclose(interior_columns(results["acausal_posterior"], clf), acausal, atol=1e-10)
    assert results.attrs["marginal_log_likelihood"] == pytest.approx(log_evidence, rel=1e-10)


# ---------------------------------------------------------------------- properties of any posterior


@pytest.fixture(scope="module")
def decoded_track():
    """A default (float32) decode of 5 s on the 39 cm track."""
    session = make_session(seed=3)
    clf = fit(session, dtype="float32")
    time = ENCODING_END + np.arange(2500) / FS
    return clf, clf.predict(session.spike_times, session.marks, time), session


@pytest.mark.parametrize("which", ["open_field", "decoded_track"])
def test_posterior_properties(request, which):
    clf, results, _ = request.getfixturevalue(which)
    interior = np.tile(clf.environments.is_track_interior_.ravel(), 2)
    atol = 1e-10 if clf.dtype == "float64" else 1e-5
    for kind in ("causal", "acausal"):
        posterior = results[f"{kind}_posterior"]
        values = posterior.values
        # zero probability off the track is reported as NaN; finite in [0, 1] on it
        assert np.isnan(values[:, ~interior]).all()
        on_track = values[:, interior]
        assert np.isfinite(on_track).all()
        assert on_track.min() >= 0.0 and on_track.max() <= 1.0 + atol
        np.testing.assert_allclose(np.nansum(values, axis=1), 1.0, atol=atol)
        unstacked = posterior.unstack("state_bins")
        per_state = unstacked.sum([d for d in unstacked.dims if d not in ("time", "state")])
        np.testing.assert_allclose(
            results[f"{kind}_state_probabilities"].values,
            per_state.transpose("time", "state").sel(state=["Continuous", "Fragmented"]).values,
            atol=atol,
        )
    # nothing comes after the last bin: smoothing leaves it as filtered
    np.testing.assert_array_equal(results["acausal_posterior"].values[-1], results["causal_posterior"].values[-1])
    np.testing.assert_allclose(
        results["acausal_state_probabilities"].values[-1], results["causal_state_probabilities"].values[-1]
    )


def entropy(values):
    p = np.nan_to_num(values.astype(np.float64), nan=0.0)
    return -(p * np.log(np.where(p > 0, p, 1.0))).sum(axis=1)


def test_smoothing_sharpens_the_posterior_on_average(decoded_track):
    """Using the future too, the acausal posterior is on average more concentrated than
    the causal one, and neither is uniform."""
    clf, results, _ = decoded_track
    causal, acausal = entropy(results["causal_posterior"].values), entropy(results["acausal_posterior"].values)
    n_states_bins = 2 * clf.environments.is_track_interior_.sum()
    assert acausal.mean() < causal.mean()
    assert 0.0 <= acausal.min() and causal.max() <= np.log(n_states_bins) + 1e-6
    assert acausal.mean() < 0.95 * np.log(n_states_bins)


# ---------------------------------------------------------------------- position given to predict


def test_predict_accepts_position_sampled_at_position_time(decoded_track):
    """The reference accepts ``position`` sampled at ``position_time`` (any rate, here
    the 30 Hz camera), not only at ``time``; without NaN it changes nothing for this
    model. Ours currently raises "position has N rows but time has M bins"."""
    clf, results, session = decoded_track
    time = results["time"].values
    camera = (session.position_time >= time[0]) & (session.position_time <= time[-1])
    assert camera.sum() != time.size
    again = clf.predict(session.spike_times, session.marks, time,
                        position=session.position[camera], position_time=session.position_time[camera])  # fmt: skip
    np.testing.assert_array_equal(again["acausal_posterior"].values, results["acausal_posterior"].values)


def test_predict_treats_bins_without_position_as_missing(decoded_track):
    """``position`` at ``time`` with NaN rows: those bins are missing (their spikes are
    ignored), as if flagged in is_missing."""
    clf, results, session = decoded_track
    time = results["time"].values[:600]
    position = np.interp(time, session.position_time, session.position)
    lost = np.zeros(time.size, dtype=bool)
    lost[200:260] = True
    position[lost] = np.nan
    with_position = clf.predict(session.spike_times, session.marks, time, position=position)
    flagged = clf.predict(session.spike_times, session.marks, time, is_missing=lost)
    plain = clf.predict(session.spike_times, session.marks, time)
    np.testing.assert_array_equal(with_position["acausal_posterior"].values, flagged["acausal_posterior"].values)
    assert not np.allclose(flagged["acausal_posterior"].values, plain["acausal_posterior"].values)

"""EM (estimate_parameters) as the reference package (non_local_detector 0.6.9) runs it:
each iteration is an E step (filter and smoother) followed by an M step (discrete
transitions from the expected transition counts, initial conditions from the first
smoothed bin), the last iteration included.

The M step is recomputed here from the returned state probabilities:

    predicted_{t+1}(s') = sum_s causal_t(s) D[s, s']
    counts[s, s']       = sum_t D[s, s'] causal_t(s) acausal_{t+1}(s') / predicted_{t+1}(s')
    D_new[s, :]         ∝ counts[s, :] + concentration - 1
"""

import numpy as np
import pytest

from decoding_assets.decoder import ContFragClusterlessClassifier, Environment

from .test_reference_likelihood import ENCODING_END, FS, Session, make_session, params

DIAG = 0.8  # far from what the data say, so that EM has something to do
TIME = ENCODING_END + np.arange(2500) / FS


def em(session: Session, max_iter: int, tolerance: float = 0.0, **options):
    clf = ContFragClusterlessClassifier(Environment(place_bin_size=4.0), params(), discrete_transition_diag=DIAG,
                                        dtype="float64")  # fmt: skip
    results = clf.estimate_parameters(
        session.position_time, session.position, session.spike_times, session.marks, time=TIME,
        is_training=session.is_training, max_iter=max_iter, tolerance=tolerance, **options,
    )  # fmt: skip
    return clf, results


def m_step(discrete, causal, acausal, concentration=1.1):
    predicted = causal[:-1] @ discrete
    ratio = np.where(np.isclose(predicted, 0.0), 0.0, acausal[1:] / predicted)
    counts = (discrete[None] * causal[:-1, :, None] * ratio[:, None, :]).sum(axis=0) + concentration - 1.0
    return counts / counts.sum(axis=1, keepdims=True)


@pytest.fixture(scope="module")
def session():
    return make_session(seed=5)


@pytest.fixture(scope="module")
def five_iterations(session):
    return em(session, max_iter=5)


def test_marginal_likelihood_never_decreases(five_iterations):
    _, results = five_iterations
    history = np.asarray(results.attrs["marginal_log_likelihoods"])
    assert history.size == 5  # a tolerance of 0 never stops early
    steps = np.diff(history)
    # a MAP M step (concentration 1.1) may lose a hair of likelihood to the prior
    assert steps.min() >= -1e-6 * np.abs(history).max()
    assert history[-1] - history[0] > 1.0
    assert results.attrs["marginal_log_likelihood"] == history[-1]


def test_estimated_parameters_are_distributions(five_iterations):
    clf, _ = five_iterations
    transition = clf.discrete_state_transitions_
    assert transition.shape == (2, 2)
    np.testing.assert_allclose(transition.sum(axis=1), 1.0, rtol=1e-12)
    assert ((transition > 0) & (transition < 1)).all()
    # the animal runs the whole time: Continuous becomes stickier than it started
    assert transition[0, 0] > DIAG
    initial = clf.initial_conditions_
    assert initial.min() >= 0.0
    np.testing.assert_allclose(initial.sum(), 1.0, rtol=1e-9)


def test_stops_once_the_relative_change_is_below_tolerance(session):
    """Convergence is checked from the second iteration on."""
    _, results = em(session, max_iter=10, tolerance=1.0)
    assert len(results.attrs["marginal_log_likelihoods"]) == 2


def test_nothing_to_estimate_repeats_the_same_e_step(session):
    clf, results = em(session, max_iter=3, estimate_initial_conditions=False, estimate_discrete_transition=False)
    history = results.attrs["marginal_log_likelihoods"]
    assert len(history) == 3 and history[0] == history[1] == history[2]
    np.testing.assert_array_equal(clf.discrete_state_transitions_, [[DIAG, 1 - DIAG], [1 - DIAG, DIAG]])


# The M step also follows the last E step, as in the reference: the model keeps the
# estimate made from the results it returns.


def test_transitions_are_updated_after_the_last_e_step(session):
    """max_iter=1: one E step with the initial D, then one M step."""
    clf, results = em(session, max_iter=1)
    initial = np.array([[DIAG, 1 - DIAG], [1 - DIAG, DIAG]])
    expected = m_step(
        initial, results["causal_state_probabilities"].values, results["acausal_state_probabilities"].values
    )
    assert not np.allclose(expected, initial, atol=1e-3)
    np.testing.assert_allclose(clf.discrete_state_transitions_, expected, atol=1e-9)


def test_initial_conditions_are_updated_after_the_last_e_step(session):
    """max_iter=1: the model's initial conditions are the first smoothed bin of the
    returned results (not the uniform ones it started from)."""
    clf, results = em(session, max_iter=1)
    first = np.nan_to_num(results["acausal_posterior"].values[0], nan=0.0)  # over the state bins
    np.testing.assert_allclose(clf.initial_conditions_, first, atol=1e-12)


def test_the_returned_model_is_the_one_the_next_e_step_uses(session):
    """After k iterations the model holds k updates: decoding with it gives the
    marginal likelihood of iteration k + 1 of a longer run."""
    two, two_results = em(session, max_iter=2)
    _, three_results = em(session, max_iter=3)
    two_history = two_results.attrs["marginal_log_likelihoods"]
    three_history = three_results.attrs["marginal_log_likelihoods"]
    np.testing.assert_allclose(three_history[:2], two_history, rtol=1e-12)
    decoded = two.predict(session.spike_times, session.marks, TIME)
    assert decoded.attrs["marginal_log_likelihood"] == pytest.approx(three_history[2], rel=1e-10)


def test_the_references_spelling_of_estimate_initial_conditions_is_accepted(session):
    """The reference's keyword is ``estimate_inital_conditions``: its code runs unchanged."""
    clf, _ = em(session, max_iter=1, estimate_inital_conditions=False)
    interior = clf.environments.is_track_interior_.ravel()
    uniform = 0.5 * interior / interior.sum()  # what fit starts from, kept
    np.testing.assert_array_equal(clf.initial_conditions_, np.concatenate([uniform, uniform]))

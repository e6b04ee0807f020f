"""The chunked lax.scan filter and smoother equal a dense NumPy forward-backward."""

import jax
import jax.numpy as jnp
import numpy as np

from decoding_assets.decoder import inference
from decoding_assets.decoder import transitions as tr

from .test_transitions import DISCRETE, MOVEMENT_VAR, dense_transition, euclidean_gaussian, grid_with_holes


def dense_forward_backward(initial, transition, likelihood):
    """initial (S,), transition (S, S), likelihood (T, S) -> causal, acausal, log Z."""
    n_time = likelihood.shape[0]
    causal = np.zeros_like(likelihood)
    log_z = 0.0
    prior = initial
    for t in range(n_time):
        u = prior * likelihood[t]
        causal[t] = u / u.sum()
        log_z += np.log(u.sum())
        prior = causal[t] @ transition
    acausal = np.zeros_like(causal)
    acausal[-1] = causal[-1]
    for t in range(n_time - 2, -1, -1):
        predicted = causal[t] @ transition
        ratio = np.divide(acausal[t + 1], predicted, out=np.zeros_like(predicted), where=predicted > 0)
        a = causal[t] * (transition @ ratio)
        acausal[t] = a / a.sum()
    return causal, acausal, log_z


def test_chunked_filter_and_smoother_equal_dense(rng):
    env = grid_with_holes()
    grid = env.centers_shape_
    interior = env.is_track_interior_.ravel()
    n = interior.size
    n_time, chunk = 50, 20  # three chunks, the last one padded
    log_likelihood = rng.normal(-3.0, 2.0, (n_time, n)) * interior
    initial = np.concatenate([0.3 * interior, 0.7 * interior]) / interior.sum()

    with jax.enable_x64(True):
        ops = tr.make_transitions(env, MOVEMENT_VAR, DISCRETE, dtype=jnp.float64)
        prior = tr.States(jnp.zeros(0), jnp.asarray(initial.reshape(2, *grid)))
        causal, marginal = [], 0.0
        starts = range(0, n_time, chunk)
        padded = np.zeros((len(starts) * chunk, n))
        padded[:n_time] = log_likelihood
        for start in starts:
            valid = jnp.arange(start, start + chunk) < n_time
            ll = tr.States(jnp.zeros((chunk, 0)), jnp.asarray(padded[start : start + chunk].reshape(chunk, *grid)))
            (prior, m), (c, _) = inference.filter_chunk(ops, prior, ll, valid)
            marginal += float(m)
            causal.append(np.asarray(c.grid))
        causal = np.concatenate(causal)
        acausal = [None] * len(starts)
        carry = tr.States(jnp.zeros(0), jnp.zeros((2, *grid)))
        for k in reversed(range(len(starts))):
            index = np.arange(starts[k], starts[k] + chunk)
            carry, a = inference.smoother_chunk(
                ops, carry, tr.States(jnp.zeros((chunk, 0)), jnp.asarray(causal[index])),
                jnp.asarray(index == n_time - 1), jnp.asarray(index < n_time),
            )
            acausal[k] = np.asarray(a.grid)
        acausal = np.concatenate(acausal)[:n_time].reshape(n_time, 2 * n)
        causal = causal[:n_time].reshape(n_time, 2 * n)

    dense = dense_transition(euclidean_gaussian(env.place_bin_centers_), interior)
    likelihood = np.exp(np.tile(log_likelihood, 2))
    expected_causal, expected_acausal, expected_log_z = dense_forward_backward(initial, dense, likelihood)
    np.testing.assert_allclose(causal, expected_causal, atol=1e-12)
    np.testing.assert_allclose(acausal, expected_acausal, atol=1e-12)
    assert marginal == np.float64(expected_log_z) or abs(marginal - expected_log_z) < 1e-9

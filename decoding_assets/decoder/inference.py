"""Forward filter and backward smoother over (state, bin), one chunk of time at a time.

Filter (per time bin t, prior pi_t, log likelihood l_t over bins, the same for both
states; pi_0 the initial conditions):

    u_t(s, x)   = pi_t(s, x) exp(l_t(x) - max l_t)     floored at 1e-15 inside the track
    c_t         = sum u_t,          causal_t = u_t / c_t
    log Z      += log c_t + max l_t                     (marginal log likelihood)
    pi_{t+1}    = causal_t A                            (transitions.predict)

Smoother (Rauch-Tung-Striebel form), from acausal_{T-1} = causal_{T-1} backwards:

    r_{t+1}     = acausal_{t+1} / (causal_t A)          (0 where the prediction is 0)
    acausal_t   ∝ causal_t * (A r_{t+1})                (transitions.backward)

Both are ``lax.scan`` over one chunk, carrying what the next chunk needs, so a session
of any length is processed in bounded device memory. Steps whose ``is_valid`` is False
(padding at the end of the last chunk) leave the carry unchanged.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from . import transitions as tr

_FLOOR = 1e-15


def condition_on(
    prior: jnp.ndarray, log_likelihood: jnp.ndarray, interior: jnp.ndarray
) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Bayes update of one time bin.

    prior : (2, *grid); log_likelihood : (*grid); interior : (*grid) mask.
    returns posterior (2, *grid) and the log normalizer ().
    """
    inside = interior > 0
    ll = jnp.where(inside, log_likelihood, -jnp.inf)
    ll_max = jnp.max(ll)
    ll_max = jnp.where(jnp.isfinite(ll_max), ll_max, 0.0)
    unnormalized = prior * jnp.exp(ll - ll_max)
    unnormalized = jnp.where(inside, jnp.maximum(unnormalized, _FLOOR), 0.0)
    total = unnormalized.sum()
    return unnormalized / total, jnp.log(total) + ll_max


@jax.jit
def filter_chunk(
    transitions: tr.Transitions,
    prior: jnp.ndarray,
    log_likelihoods: jnp.ndarray,
    is_valid: jnp.ndarray,
):
    """Causal posterior for one chunk.

    prior : (2, *grid) predicted distribution for the chunk's first bin.
    log_likelihoods : (T, *grid); is_valid : (T,) bool.
    returns (next_prior (2, *grid), log_marginal ()),
            (causal (T, 2, *grid), predicted_state_probabilities (T, 2)).
    """

    def step(carry, inputs):
        prior, log_marginal = carry
        ll, valid = inputs
        posterior, log_norm = condition_on(prior, ll, transitions.interior)
        next_prior = tr.predict(posterior, transitions)
        carry = (
            jnp.where(valid, next_prior, prior),
            log_marginal + jnp.where(valid, log_norm, 0.0),
        )
        state_axes = tuple(range(1, prior.ndim))
        return carry, (posterior, prior.sum(axis=state_axes))

    initial = (prior, jnp.zeros((), prior.dtype))
    return jax.lax.scan(step, initial, (log_likelihoods, is_valid))


@jax.jit
def smoother_chunk(
    transitions: tr.Transitions,
    acausal_next: jnp.ndarray,
    causal: jnp.ndarray,
    is_last: jnp.ndarray,
    is_valid: jnp.ndarray,
):
    """Acausal posterior for one chunk, scanning backwards.

    acausal_next : (2, *grid) acausal posterior of the bin after the chunk (any value
        if the chunk holds the last bin). causal : (T, 2, *grid).
    is_last : (T,) True at the session's last bin; is_valid : (T,).
    returns acausal of the chunk's first bin (2, *grid) and acausal (T, 2, *grid).
    """

    def step(acausal_next, inputs):
        causal_t, last, valid = inputs
        predicted = tr.predict(causal_t, transitions)
        ratio = jnp.where(predicted > 0, acausal_next / jnp.where(predicted > 0, predicted, 1.0), 0.0)
        smoothed = causal_t * tr.backward(ratio, transitions)
        smoothed = smoothed / smoothed.sum()
        smoothed = jnp.where(last, causal_t, smoothed)
        carry = jnp.where(valid, smoothed, acausal_next)
        return carry, smoothed

    return jax.lax.scan(step, acausal_next, (causal, is_last, is_valid), reverse=True)

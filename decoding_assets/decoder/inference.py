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
(padding at the end of the last chunk) leave the carry unchanged. ``filter_and_smooth``
runs them chunk after chunk over a whole decode, with the causal posterior written to a
sink (memory or a file) and read back by the smoother.
"""

from __future__ import annotations

from functools import partial
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import transitions as tr

_FLOOR = 1e-15
# Bytes of log likelihood per span of time, and of posterior per filter/smoother call.
_SPAN_BYTES = 128 * 2**20
_STEP_BYTES = 16 * 2**20


class Posteriors(NamedTuple):
    """A decode's outputs.

    causal_posterior, acausal_posterior : sinks of shape (n_time, S * n_bins), NaN
        outside the track (NumPy arrays or HDF5 variables).
    causal_state_probabilities, acausal_state_probabilities : (n_time, S).
    predicted_state_probabilities : (n_time, S), the one-step predictions (EM needs them).
    marginal_log_likelihood : log p(all spikes).
    """

    causal_posterior: object
    acausal_posterior: object
    causal_state_probabilities: np.ndarray
    acausal_state_probabilities: np.ndarray
    predicted_state_probabilities: np.ndarray
    marginal_log_likelihood: float


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


def chunk_lengths(n_time: int, n_bins: int, n_interior: int) -> tuple[int, int]:
    """(step, span): time bins per filter/smoother call and per log likelihood span.

    A step's buffers stay under 16 MB, which the C allocator recycles instead of
    mapping fresh pages for every chunk; a span of log likelihood is up to 128 MB, so
    the position kernels are rebuilt rarely. span is a multiple of step.
    """
    step = int(np.clip(_STEP_BYTES // (8 * n_bins), 64, 4096))
    step = min(step, n_time)
    span = int(np.clip(_SPAN_BYTES // (4 * max(n_interior, 1)), step, 65536))
    span = min(span // step * step, -(-n_time // step) * step)
    return step, span


def filter_and_smooth(
    transitions: tr.Transitions,
    initial: jnp.ndarray,
    n_time: int,
    log_likelihood: Callable[[int, int, int], jnp.ndarray],
    causal_out,
    acausal_out,
) -> Posteriors:
    """Causal and acausal posteriors of a whole decode, one chunk of time at a time.

    initial : (S, *grid) initial conditions. log_likelihood(start, stop, rows) gives the
        LL of time bins [start, stop) at the interior bins, padded to ``rows``:
        (rows, N). causal_out, acausal_out : sinks of shape (n_time, S * n_bins). The
        smoother reads the causal posterior back from ``causal_out``, so device memory
        holds one chunk whatever the length.
    """
    interior = transitions.interior
    grid = tuple(interior.shape)
    n_bins = int(np.prod(grid))
    n_states = initial.shape[0]
    interior_index = jnp.asarray(np.flatnonzero(np.asarray(interior).ravel() > 0))
    step, span = chunk_lengths(n_time, n_bins, int(interior_index.shape[0]))
    causal_states, acausal_states, predicted_states = (np.empty((n_time, n_states)) for _ in range(3))

    prior, log_marginal = initial, jnp.zeros((), initial.dtype)
    for span_start in range(0, n_time, span):
        span_stop = min(span_start + span, n_time)
        ll = log_likelihood(span_start, span_stop, span)
        for start in range(span_start, span_stop, step):
            stop = min(start + step, n_time)
            offset = start - span_start
            (prior, chunk_marginal), (causal, predicted) = filter_chunk(
                transitions, prior, _on_grid(ll[offset : offset + step], interior_index, grid),
                jnp.arange(start, start + step) < n_time,
            )  # fmt: skip
            log_marginal = log_marginal + chunk_marginal
            flat, state_probabilities = _to_output(causal, interior)
            causal_out[start:stop] = np.asarray(flat)[: stop - start]
            causal_states[start:stop] = np.asarray(state_probabilities)[: stop - start]
            predicted_states[start:stop] = np.asarray(predicted)[: stop - start]

    acausal_next = jnp.zeros_like(initial)
    padded = None  # the last, short chunk
    for start in reversed(range(0, n_time, step)):
        stop = min(start + step, n_time)
        causal = causal_out[start:stop]
        if stop - start < step:
            padded = np.zeros((step, n_states * n_bins), dtype=causal.dtype)
            padded[: stop - start] = causal
            causal = padded
        index = np.arange(start, start + step)
        acausal_next, acausal = smoother_chunk(
            transitions, acausal_next, _from_output(jnp.asarray(causal), grid),
            jnp.asarray(index == n_time - 1), jnp.asarray(index < n_time),
        )  # fmt: skip
        flat, state_probabilities = _to_output(acausal, interior)
        acausal_out[start:stop] = np.asarray(flat)[: stop - start]
        acausal_states[start:stop] = np.asarray(state_probabilities)[: stop - start]
    return Posteriors(
        causal_out, acausal_out, causal_states, acausal_states, predicted_states, float(log_marginal)
    )


@partial(jax.jit, static_argnums=2)
def _on_grid(log_likelihood: jnp.ndarray, interior_index: jnp.ndarray, grid: tuple) -> jnp.ndarray:
    """(T, N) -> (T, *grid), zero outside the track."""
    n_time = log_likelihood.shape[0]
    full = jnp.zeros((n_time, int(np.prod(grid))), log_likelihood.dtype)
    return full.at[:, interior_index].set(log_likelihood).reshape(n_time, *grid)


@jax.jit
def _to_output(posterior: jnp.ndarray, interior: jnp.ndarray):
    """(T, S, *grid) -> the stored layout (T, S * n_bins) with NaN outside the track,
    and the per-state probabilities (T, S)."""
    n_time = posterior.shape[0]
    state_axes = tuple(range(2, posterior.ndim))
    flat = jnp.where(interior > 0, posterior, jnp.nan).reshape(n_time, -1)
    return flat, posterior.sum(axis=state_axes)


@partial(jax.jit, static_argnums=1)
def _from_output(flat: jnp.ndarray, grid: tuple) -> jnp.ndarray:
    """The stored layout back to (T, S, *grid), zeros outside the track."""
    return jnp.nan_to_num(flat, nan=0.0).reshape(flat.shape[0], -1, *grid)

"""Forward filter and backward smoother over (state, bin), one chunk of time at a time.

The distribution is a ``transitions.States`` pair: states of one bin each (``point``)
and states on the spatial grid (``grid``). Filter (per time bin t, prior pi_t, log
likelihood l_t: one value per point state, and one per grid bin shared by every grid
state; pi_0 the initial conditions):

    u_t(s, x)   = pi_t(s, x) exp(l_t(s, x) - max l_t)  grid states floored at 1e-15 inside the track
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

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import transitions as tr
from .transitions import States

_FLOOR = 1e-15
# Bytes of log likelihood per span of time, and of posterior per filter/smoother call.
_SPAN_BYTES = 128 * 2**20
_STEP_BYTES = 16 * 2**20


class LogLikelihoods(NamedTuple):
    """Log likelihoods of a run of time bins.

    point : (T, K) one per point state.
    grid : (T, N) at the interior bins, shared by every grid state.
    """

    point: jnp.ndarray
    grid: jnp.ndarray


class Posteriors(NamedTuple):
    """A decode's outputs.

    causal_posterior, acausal_posterior : sinks of shape (n_time, K + G * n_bins), the
        point states first, NaN outside the track (NumPy arrays or HDF5 variables).
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


def condition_on(prior: States, log_likelihood: States, interior: jnp.ndarray) -> tuple[States, jnp.ndarray]:
    """Bayes update of one time bin.

    prior : States (K,), (G, *grid); log_likelihood : States (K,), (*grid);
    interior : (*grid) mask. returns the posterior (States) and the log normalizer ().
    """
    inside = interior > 0
    grid_ll = jnp.where(inside, log_likelihood.grid, -jnp.inf)
    ll_max = jnp.maximum(jnp.max(grid_ll), jnp.max(log_likelihood.point, initial=-jnp.inf))
    ll_max = jnp.where(jnp.isfinite(ll_max), ll_max, 0.0)
    grid = prior.grid * jnp.exp(grid_ll - ll_max)
    grid = jnp.where(inside, jnp.maximum(grid, _FLOOR), 0.0)
    point = prior.point * jnp.exp(log_likelihood.point - ll_max)
    total = grid.sum() + point.sum()
    return States(point / total, grid / total), jnp.log(total) + ll_max


@jax.jit
def filter_chunk(transitions: tr.Transitions, prior: States, log_likelihoods: States, is_valid: jnp.ndarray):
    """Causal posterior for one chunk.

    prior : States, the predicted distribution for the chunk's first bin.
    log_likelihoods : States (T, K), (T, *grid); is_valid : (T,) bool.
    returns (next_prior (States), log_marginal ()),
            (causal (States with a leading T), predicted_state_probabilities (T, S)).
    """

    def step(carry, inputs):
        prior, log_marginal = carry
        ll, valid = inputs
        posterior, log_norm = condition_on(prior, ll, transitions.interior)
        next_prior = tr.predict(posterior, transitions)
        carry = (
            jax.tree.map(lambda new, old: jnp.where(valid, new, old), next_prior, prior),
            log_marginal + jnp.where(valid, log_norm, 0.0),
        )
        return carry, (posterior, tr.state_masses(prior))

    initial = (prior, jnp.zeros((), prior.grid.dtype))
    return jax.lax.scan(step, initial, (log_likelihoods, is_valid))


@jax.jit
def smoother_chunk(
    transitions: tr.Transitions, acausal_next: States, causal: States, is_last: jnp.ndarray, is_valid: jnp.ndarray
):
    """Acausal posterior for one chunk, scanning backwards.

    acausal_next : States, the acausal posterior of the bin after the chunk (any value
        if the chunk holds the last bin). causal : States with a leading T.
    is_last : (T,) True at the session's last bin; is_valid : (T,).
    returns the acausal posterior of the chunk's first bin and the chunk's (leading T).
    """

    def ratio(acausal, predicted):
        return jnp.where(predicted > 0, acausal / jnp.where(predicted > 0, predicted, 1.0), 0.0)

    def step(acausal_next, inputs):
        causal_t, last, valid = inputs
        predicted = tr.predict(causal_t, transitions)
        back = tr.backward(jax.tree.map(ratio, acausal_next, predicted), transitions)
        smoothed = jax.tree.map(jnp.multiply, causal_t, back)
        total = smoothed.point.sum() + smoothed.grid.sum()
        smoothed = jax.tree.map(lambda x, c: jnp.where(last, c, x / total), smoothed, causal_t)
        carry = jax.tree.map(lambda new, old: jnp.where(valid, new, old), smoothed, acausal_next)
        return carry, smoothed

    return jax.lax.scan(step, acausal_next, (causal, is_last, is_valid), reverse=True)


def chunk_lengths(n_time: int, width: int, n_interior: int) -> tuple[int, int]:
    """(step, span): time bins per filter/smoother call and per log likelihood span.

    width : K + G * n_bins, the stored values per time bin. A step's buffers stay
    under 16 MB, which the C allocator recycles instead of mapping fresh pages for
    every chunk; a span of log likelihood is up to 128 MB, so the position kernels are
    rebuilt rarely. span is a multiple of step.
    """
    step = int(np.clip(_STEP_BYTES // (4 * width), 64, 4096))
    step = min(step, n_time)
    span = int(np.clip(_SPAN_BYTES // (4 * max(n_interior, 1)), step, 65536))
    span = min(span // step * step, -(-n_time // step) * step)
    return step, span


def filter_and_smooth(
    transitions: tr.Transitions,
    initial: States,
    n_time: int,
    log_likelihood: Callable[[int, int, int], LogLikelihoods],
    causal_out,
    acausal_out,
    progress: Callable[[str, int, int], None] = lambda stage, done, total: None,
) -> Posteriors:
    """Causal and acausal posteriors of a whole decode, one chunk of time at a time.

    initial : States, the initial conditions. log_likelihood(start, stop, rows) gives
        the log likelihoods of time bins [start, stop), padded to ``rows``.
    causal_out, acausal_out : sinks of shape (n_time, K + G * n_bins). The smoother
        reads the causal posterior back from ``causal_out``, so device memory holds one
        chunk whatever the length.
    progress : called (stage, done, n_time) after each span's likelihood and each
        chunk filtered or smoothed (``progress.STAGES``).

    On the CPU, a track (a grid of one axis) in float32 runs the scans compiled by numba
    (``track_inference``); everything else runs the XLA scans below.
    """
    interior = transitions.interior
    n_point, n_grid = initial.point.shape[0], initial.grid.shape[0]
    width = n_point + n_grid * int(np.prod(interior.shape))
    interior_index = np.flatnonzero(np.asarray(interior).ravel() > 0)
    step, span = chunk_lengths(n_time, width, int(interior_index.shape[0]))
    on_cpu = all(device.platform == "cpu" for device in interior.devices())
    compiled_for_track = interior.ndim == 1 and initial.grid.dtype == jnp.float32 and on_cpu
    scans = (_track_scans if compiled_for_track else _xla_scans)(transitions, interior_index, step, width)
    causal_states, acausal_states, predicted_states = (np.empty((n_time, n_point + n_grid)) for _ in range(3))

    prior, log_marginal = scans.carry(initial), 0.0
    for span_start in range(0, n_time, span):
        span_stop = min(span_start + span, n_time)
        ll = scans.span(log_likelihood(span_start, span_stop, span))
        progress("likelihood", span_stop, n_time)
        for start in range(span_start, span_stop, step):
            stop = min(start + step, n_time)
            prior, chunk_marginal, flat, state_probabilities, predicted = scans.filter(
                prior, ll, start - span_start, stop - start
            )
            log_marginal += chunk_marginal
            causal_out[start:stop] = flat
            causal_states[start:stop] = state_probabilities
            predicted_states[start:stop] = predicted
            progress("filter", stop, n_time)

    acausal_next = scans.carry(States(*(np.zeros(x.shape, x.dtype) for x in initial)))
    for start in reversed(range(0, n_time, step)):
        stop = min(start + step, n_time)
        acausal_next, flat, state_probabilities = scans.smoother(acausal_next, causal_out[start:stop], stop == n_time)
        acausal_out[start:stop] = flat
        acausal_states[start:stop] = state_probabilities
        progress("smoother", n_time - start, n_time)
    return Posteriors(
        causal_out, acausal_out, causal_states, acausal_states, predicted_states, float(log_marginal)
    )


class _Scans(NamedTuple):
    """One way of running the filter and the smoother chunk by chunk, NumPy out.

    carry(States) -> the carry between chunks, as these functions take it.
    span(LogLikelihoods) -> arrays with a leading time axis: the likelihood as
    ``filter`` takes it.
    filter(prior, the span's arrays, first, n) -> (prior, log_marginal, causal (n,
    width), state probabilities (n, S), predicted (n, S)) for the n rows of the span
    from row ``first`` (the span is padded to whole chunks of ``step`` rows).
    smoother(acausal_next, causal (n, width), holds_last) -> (acausal_next, acausal
    (n, width), state probabilities (n, S)); holds_last: the chunk ends the decode.
    """

    carry: Callable
    span: Callable
    filter: Callable
    smoother: Callable


def _xla_scans(transitions: tr.Transitions, interior_index: np.ndarray, step: int, width: int) -> _Scans:
    """``filter_chunk`` and ``smoother_chunk`` on the device, in chunks of ``step`` rows
    (the last one padded, so every chunk has the same compiled shapes)."""
    index = tr.on_device(interior_index)

    def run_filter(prior, ll, first, n):
        (prior, log_marginal), flat, state_probabilities, predicted = _filter_stored(
            transitions, prior, *ll, np.int32(first), index, np.arange(step) < n
        )
        return prior, float(log_marginal), *(np.asarray(x)[:n] for x in (flat, state_probabilities, predicted))

    def run_smoother(acausal_next, causal, holds_last):
        n = causal.shape[0]
        if n < step:  # the last, short chunk
            padded = np.zeros((step, width), dtype=causal.dtype)
            padded[:n] = causal
            causal = padded
        rows = np.arange(step)
        acausal_next, flat, state_probabilities = _smooth_stored(
            transitions, acausal_next, causal, holds_last & (rows == n - 1), rows < n
        )
        return acausal_next, np.asarray(flat)[:n], np.asarray(state_probabilities)[:n]

    return _Scans(lambda states: states, lambda ll: ll, run_filter, run_smoother)


def _track_scans(transitions: tr.Transitions, interior_index: np.ndarray, step: int, width: int) -> _Scans:
    """``track_inference``'s compiled loops on NumPy float32 arrays."""
    from . import track_inference  # numba compiles (or loads) the loops on first use

    walk = track_inference.kernel(np.asarray(transitions.axis_kernels[0]))
    pieces = (
        *walk,
        np.asarray(transitions.interior, np.float32),
        np.asarray(transitions.inverse_normalizer, np.float32),
        np.asarray(transitions.discrete, np.float32),
        np.float32(transitions.n_interior),
    )
    n = walk.values.shape[1]

    def carry(states: States) -> States:
        return States(*(np.array(x, np.float32) for x in states))

    def span(ll: LogLikelihoods):
        return track_inference.factors(np.asarray(ll.point), np.asarray(ll.grid), interior_index, n)

    def run_filter(prior, factors, first, n_rows):
        n_states = prior.point.shape[0] + prior.grid.shape[0]
        causal = np.empty((n_rows, width), np.float32)
        state_probabilities, predicted = (np.empty((n_rows, n_states), np.float32) for _ in range(2))
        log_marginal = track_inference.filter_chunk(
            *pieces, prior.point, prior.grid, *(x[first : first + n_rows] for x in factors),
            causal, state_probabilities, predicted,
        )  # fmt: skip
        return prior, log_marginal, causal, state_probabilities, predicted

    def run_smoother(acausal_next, causal, holds_last):
        causal = np.ascontiguousarray(causal, np.float32)
        n_rows = causal.shape[0]
        is_last = np.zeros(n_rows, bool)
        is_last[-1] = holds_last
        acausal = np.empty((n_rows, width), np.float32)
        state_probabilities = np.empty((n_rows, acausal_next.point.shape[0] + acausal_next.grid.shape[0]), np.float32)
        track_inference.smoother_chunk(
            *pieces, acausal_next.point, acausal_next.grid, causal, is_last, acausal, state_probabilities
        )
        return acausal_next, acausal, state_probabilities

    return _Scans(carry, span, run_filter, run_smoother)


# The filter and smoother as ``filter_and_smooth`` calls them: one compiled call per
# chunk, from the log likelihood at interior bins to the stored layout and back, so no
# intermediate layout is ever materialized between calls.


@jax.jit
def _filter_stored(transitions: tr.Transitions, prior: States, ll_point, ll_grid, first, interior_index, is_valid):
    """``filter_chunk`` from a span's (R, K) and (R, N) log likelihoods, its T rows from
    row ``first`` (T = is_valid's length), to the stored layout: returns (next_prior,
    log_marginal), causal (T, width), its state probabilities (T, S) and the predicted
    ones (T, S). The chunk is cut here: cutting it before the call would compile a
    slicing program of its own."""
    n_time = is_valid.shape[0]
    ll_point, ll_grid = (jax.lax.dynamic_slice_in_dim(x, first, n_time) for x in (ll_point, ll_grid))
    chunk = States(ll_point, _on_grid(ll_grid, interior_index, transitions.interior.shape))
    carry, (causal, predicted) = filter_chunk(transitions, prior, chunk, is_valid)
    flat, state_probabilities = _to_output(causal, transitions.interior)
    return carry, flat, state_probabilities, predicted


@jax.jit
def _smooth_stored(transitions: tr.Transitions, acausal_next: States, causal_flat, is_last, is_valid):
    """``smoother_chunk`` from and to the stored layout: returns the carry, acausal
    (T, width) and its state probabilities (T, S)."""
    causal = _from_output(causal_flat, acausal_next.point.shape[0], transitions.interior.shape)
    carry, acausal = smoother_chunk(transitions, acausal_next, causal, is_last, is_valid)
    flat, state_probabilities = _to_output(acausal, transitions.interior)
    return carry, flat, state_probabilities


def _on_grid(log_likelihood: jnp.ndarray, interior_index: jnp.ndarray, grid: tuple) -> jnp.ndarray:
    """(T, N) -> (T, *grid), zero outside the track."""
    n_time = log_likelihood.shape[0]
    full = jnp.zeros((n_time, int(np.prod(grid))), log_likelihood.dtype)
    return full.at[:, interior_index].set(log_likelihood).reshape(n_time, *grid)


def _to_output(posterior: States, interior: jnp.ndarray):
    """States with a leading T -> the stored layout (T, K + G * n_bins) with NaN
    outside the track, and the per-state probabilities (T, S)."""
    n_time = posterior.grid.shape[0]
    grid_axes = tuple(range(2, posterior.grid.ndim))
    on_grid = jnp.where(interior > 0, posterior.grid, jnp.nan).reshape(n_time, -1)
    flat = jnp.concatenate([posterior.point, on_grid], axis=1)
    return flat, jnp.concatenate([posterior.point, posterior.grid.sum(axis=grid_axes)], axis=1)


def _from_output(flat: jnp.ndarray, n_point: int, grid: tuple) -> States:
    """The stored layout back to States with a leading T, zeros outside the track."""
    values = jnp.nan_to_num(flat, nan=0.0)
    return States(values[:, :n_point], values[:, n_point:].reshape(flat.shape[0], -1, *grid))

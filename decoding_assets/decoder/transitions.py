"""State transitions, applied as operators; the (2N x 2N) matrix is never built.

The state is p with shape (2, *grid_shape): discrete state (Continuous=0,
Fragmented=1) by spatial bin, zero outside the track interior. The full transition is

    A[(s, i) -> (s', j)] = D[s, s'] * T_{s s'}[i, j]

with T_00 a Gaussian random walk restricted to interior bins and row-normalized, and
every other block uniform over the N interior bins.

Random walk. With G[i, j] = prod_d g_d(c_i,d - c_j,d) (a Gaussian of variance
``movement_var`` per axis) and m the interior mask,

    T_00[i, j] = m_i m_j G[i, j] / Z_i,        Z = G (m)        (row normalizers)

so the forward (prediction) and backward (smoothing) products are

    (p T_00)_j = m_j  (G (p / Z))_j,           (T_00 r)_i = (G (m r))_i / Z_i.

G is separable, so G x is one small (n_d x n_d) matrix product per axis. On a 1D
track the single axis kernel holds the Gaussian of the graph distance instead.

Uniform blocks are rank one: (p U)_j = m_j sum(p) / N and (U r)_i = sum(m r) / N.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from .environment import Environment


class Transitions(NamedTuple):
    """Everything the filter and smoother need to apply A.

    axis_kernels : tuple of (n_d, n_d) arrays, one per grid axis (symmetric).
    interior : (*grid_shape,) float mask, 1 inside the track.
    inverse_normalizer : (*grid_shape,) 1 / Z at interior bins, 0 elsewhere.
    discrete : (2, 2) discrete transition matrix D (rows sum to 1).
    n_interior : () number of interior bins N.
    """

    axis_kernels: tuple
    interior: jnp.ndarray
    inverse_normalizer: jnp.ndarray
    discrete: jnp.ndarray
    n_interior: jnp.ndarray


def random_walk_axis_kernels(environment: Environment, movement_var: float) -> list[np.ndarray]:
    """Per-axis Gaussian kernels g_d[a, b] = N(c_a - c_b; 0, movement_var), float64.

    On a track: one kernel, the Gaussian of the shortest-path distance along the graph
    (zero to and from gap bins).
    """
    scale = 1.0 / np.sqrt(2.0 * np.pi * movement_var)
    if environment.is_track:
        distance = environment.track_bin_distances()
        return [scale * np.exp(-0.5 * distance**2 / movement_var)]
    kernels = []
    for edges in environment.edges_:
        centers = 0.5 * (edges[1:] + edges[:-1])
        delta = centers[:, np.newaxis] - centers[np.newaxis, :]
        kernels.append(scale * np.exp(-0.5 * delta**2 / movement_var))
    return kernels


def apply_axis_kernels(axis_kernels, x: jnp.ndarray) -> jnp.ndarray:
    """G x for x of shape (*grid_shape,): contract each axis with its kernel."""
    for axis, kernel in enumerate(axis_kernels):
        x = jnp.moveaxis(jnp.tensordot(kernel, x, axes=([1], [axis])), 0, axis)
    return x


def make_transitions(
    environment: Environment,
    movement_var: float,
    discrete_transition: np.ndarray,
    dtype=jnp.float32,
) -> Transitions:
    """Build the operator pieces for a fitted environment."""
    kernels = random_walk_axis_kernels(environment, movement_var)
    interior = environment.is_track_interior_.astype(np.float64)
    normalizer = np.asarray(apply_axis_kernels(kernels, interior)) if kernels else interior
    with np.errstate(divide="ignore"):
        inverse = np.where((interior > 0) & (normalizer > 0), 1.0 / normalizer, 0.0)
    return Transitions(
        axis_kernels=tuple(jnp.asarray(k, dtype=dtype) for k in kernels),
        interior=jnp.asarray(interior, dtype=dtype),
        inverse_normalizer=jnp.asarray(inverse, dtype=dtype),
        discrete=jnp.asarray(discrete_transition, dtype=dtype),
        n_interior=jnp.asarray(interior.sum(), dtype=dtype),
    )


def predict(p: jnp.ndarray, transitions: Transitions) -> jnp.ndarray:
    """One-step prediction q = p A.

    p : (2, *grid_shape) distribution over (state, bin).
    returns q : (2, *grid_shape).
    """
    D, m = transitions.discrete, transitions.interior
    walk = m * apply_axis_kernels(transitions.axis_kernels, p[0] * transitions.inverse_normalizer)
    uniform = m / transitions.n_interior
    mass_continuous, mass_fragmented = p[0].sum(), p[1].sum()
    to_continuous = D[0, 0] * walk + D[1, 0] * mass_fragmented * uniform
    to_fragmented = (D[0, 1] * mass_continuous + D[1, 1] * mass_fragmented) * uniform
    return jnp.stack([to_continuous, to_fragmented])


def backward(r: jnp.ndarray, transitions: Transitions) -> jnp.ndarray:
    """The transposed product b = A r used by the smoother.

    r : (2, *grid_shape) ratio of smoothed to predicted probabilities.
    returns b : (2, *grid_shape), b[s, i] = sum_{s', j} A[(s, i) -> (s', j)] r[s', j].
    """
    D, m = transitions.discrete, transitions.interior
    walk = transitions.inverse_normalizer * apply_axis_kernels(transitions.axis_kernels, m * r[0])
    mean_continuous = (m * r[0]).sum() / transitions.n_interior
    mean_fragmented = (m * r[1]).sum() / transitions.n_interior
    from_continuous = D[0, 0] * walk + D[0, 1] * mean_fragmented * m
    from_fragmented = (D[1, 0] * mean_continuous + D[1, 1] * mean_fragmented) * m
    return jnp.stack([from_continuous, from_fragmented])


def estimate_discrete_transition(
    discrete: np.ndarray,
    causal_state: np.ndarray,
    predicted_state: np.ndarray,
    acausal_state: np.ndarray,
    concentration: float,
) -> np.ndarray:
    """The EM M step for the discrete transitions: a Dirichlet MAP estimate of D.

    From the per-state probabilities (n_time, S) of the E step, the expected counts of
    transitions s -> s' are

        xi[s, s'] = sum_t D[s, s'] causal_t(s) acausal_{t+1}(s') / predicted_{t+1}(s')

    (0 where predicted is 0), and D[s, :] ∝ xi[s, :] + concentration - 1.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(np.isclose(predicted_state[1:], 0.0), 0.0, acausal_state[1:] / predicted_state[1:])
    counts = (discrete[np.newaxis] * causal_state[:-1, :, np.newaxis] * ratio[:, np.newaxis, :]).sum(axis=0)
    counts = counts + concentration - 1.0
    return counts / counts.sum(axis=1, keepdims=True)

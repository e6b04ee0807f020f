"""State transitions, applied as operators; the full transition matrix is never built.

The state is a ``States`` pair: ``point`` (K,), the probability of the states that have
one bin each (the non-local detector's Local and No-Spike; none for ContFrag), and
``grid`` (G, *grid_shape), the states that live on the spatial grid (zero outside the
track interior). With S = K + G discrete states and D the (S, S) discrete transition
matrix (rows from, columns to),

    A[(s, i) -> (s', j)] = D[s, s'] * T_{s s'}[i, j]

where T into a point state is 1 (all of s's mass goes to its one bin); T from the first
grid state to itself is a Gaussian random walk restricted to interior bins and
row-normalized; and T into a grid state otherwise is uniform over its N interior bins.
ContFrag: K = 0, grid states (Continuous, Fragmented). The non-local detector: K = 2
(Local, No-Spike), grid states (Non-Local Continuous, Non-Local Fragmented).

Random walk. With G[i, j] = prod_d g_d(c_i,d - c_j,d) (a Gaussian of variance
``movement_var`` per axis) and m the interior mask,

    T_walk[i, j] = m_i m_j G[i, j] / Z_i,        Z = G (m)        (row normalizers)

so the forward (prediction) and backward (smoothing) products are

    (p T_walk)_j = m_j  (G (p / Z))_j,           (T_walk r)_i = (G (m r))_i / Z_i.

G is separable, so G x is one small (n_d x n_d) matrix product per axis. On a 1D
track the single axis kernel holds the Gaussian of the graph distance instead.

Uniform blocks are rank one: (p U)_j = m_j sum(p) / N and (U r)_i = sum(m r) / N.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .environment import Environment


class States(NamedTuple):
    """A distribution (or any function) over the discrete states and their bins.

    point : (K,) the states of one bin each.
    grid : (G, *grid_shape) the states on the spatial grid.
    """

    point: jnp.ndarray
    grid: jnp.ndarray


class Transitions(NamedTuple):
    """Everything the filter and smoother need to apply A.

    axis_kernels : tuple of (n_d, n_d) arrays, one per grid axis (symmetric).
    interior : (*grid_shape,) float mask, 1 inside the track.
    inverse_normalizer : (*grid_shape,) 1 / Z at interior bins, 0 elsewhere.
    discrete : (S, S) discrete transition matrix D (rows sum to 1), point states first.
    n_interior : () number of interior bins N.
    """

    axis_kernels: tuple
    interior: jnp.ndarray
    inverse_normalizer: jnp.ndarray
    discrete: jnp.ndarray
    n_interior: jnp.ndarray


def on_device(x, dtype=None) -> jax.Array:
    """x (NumPy data) on JAX's default device as ``dtype``: converted by NumPy on the
    host, then copied. ``jnp.asarray`` compiles a small program (a conversion, or a
    staging copy) for every new shape, which each fresh process pays for in tracing and
    cache reads on its first decode: tens of them per decode."""
    return jax.device_put(np.asarray(x, dtype))


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
    normalizer = interior
    for axis, kernel in enumerate(kernels):  # apply_axis_kernels, in NumPy float64
        normalizer = np.moveaxis(np.tensordot(kernel, normalizer, axes=([1], [axis])), 0, axis)
    with np.errstate(divide="ignore"):
        inverse = np.where((interior > 0) & (normalizer > 0), 1.0 / normalizer, 0.0)
    return Transitions(
        axis_kernels=tuple(on_device(k, dtype) for k in kernels),
        interior=on_device(interior, dtype),
        inverse_normalizer=on_device(inverse, dtype),
        discrete=on_device(discrete_transition, dtype),
        n_interior=on_device(interior.sum(), dtype),
    )


def state_masses(p: States) -> jnp.ndarray:
    """(S,) the probability of each discrete state."""
    grid_axes = tuple(range(1, p.grid.ndim))
    return jnp.concatenate([p.point, p.grid.sum(axis=grid_axes)])


def predict(p: States, transitions: Transitions) -> States:
    """One-step prediction q = p A.

    Into point state k: q_k = sum_s D[s, k] mass_s. Into grid state g: uniform with
    mass sum_s D[s, g] mass_s, except that the first grid state's own mass moves by the
    random walk.
    """
    D, m = transitions.discrete, transitions.interior
    n_point = p.point.shape[0]
    mass = state_masses(p)
    walk = m * apply_axis_kernels(transitions.axis_kernels, p.grid[0] * transitions.inverse_normalizer)
    into_grid = mass @ D[:, n_point:]  # (G,) as if every transition into a grid state were uniform
    stays = D[n_point, n_point] * mass[n_point]
    into_grid = into_grid.at[0].add(-stays)
    uniform = m / transitions.n_interior
    grid = into_grid.reshape(-1, *(1,) * m.ndim) * uniform
    grid = grid.at[0].add(D[n_point, n_point] * walk)
    return States(mass @ D[:, :n_point], grid)


def backward(r: States, transitions: Transitions) -> States:
    """The transposed product b = A r used by the smoother:
    b[s, i] = sum_{s', j} A[(s, i) -> (s', j)] r[s', j].

    Every target but the walk gives each source bin one number: r of a point state, the
    interior mean of r for a uniform grid state. The first grid state's own term is the
    walk, per bin.
    """
    D, m = transitions.discrete, transitions.interior
    n_point = r.point.shape[0]
    grid_axes = tuple(range(1, r.grid.ndim))
    means = (m * r.grid).sum(axis=grid_axes) / transitions.n_interior
    value = jnp.concatenate([r.point, means])  # (S,) what reaching each state is worth
    from_state = D @ value
    stays = D[n_point, n_point]
    walk = transitions.inverse_normalizer * apply_axis_kernels(transitions.axis_kernels, m * r.grid[0])
    grid = from_state[n_point:].reshape(-1, *(1,) * m.ndim) * m
    grid = grid.at[0].add(stays * (walk - means[0] * m))
    return States(from_state[:n_point], grid)


def estimate_discrete_transition(
    discrete: np.ndarray,
    causal_state: np.ndarray,
    predicted_state: np.ndarray,
    acausal_state: np.ndarray,
    concentration: float,
    stickiness=0.0,
) -> np.ndarray:
    """The EM M step for the discrete transitions: a Dirichlet MAP estimate of D.

    From the per-state probabilities (n_time, S) of the E step, the expected counts of
    transitions s -> s' are

        xi[s, s'] = sum_t D[s, s'] causal_t(s) acausal_{t+1}(s') / predicted_{t+1}(s')

    (0 where predicted is 0). With the Dirichlet prior alpha[s, s'] = concentration +
    stickiness[s] [s = s'] (stickiness: a number or one per state),
    D[s, :] ∝ xi[s, :] + alpha[s, :] - 1.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(np.isclose(predicted_state[1:], 0.0), 0.0, acausal_state[1:] / predicted_state[1:])
    counts = (discrete[np.newaxis] * causal_state[:-1, :, np.newaxis] * ratio[:, np.newaxis, :]).sum(axis=0)
    n_states = discrete.shape[0]
    alpha = concentration + np.diag(np.broadcast_to(np.asarray(stickiness, dtype=float), (n_states,)))
    counts = counts + alpha - 1.0
    return counts / counts.sum(axis=1, keepdims=True)

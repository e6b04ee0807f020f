"""The chunked filters and smoothers (the lax.scan ones, and numba's on a track) equal a dense
forward-backward."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from decoding_assets.decoder import inference, track_inference
from decoding_assets.decoder import transitions as tr
from decoding_assets.decoder.environment import Environment

from .test_transitions import (
    DISCRETE,
    MOVEMENT_VAR,
    dense_transition,
    detector_dense_transition,
    euclidean_gaussian,
    grid_with_holes,
    w_track_graph,
)


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


def _w_track():
    graph, edge_order, edge_spacing = w_track_graph(width=40.0, height=30.0)
    env = Environment(place_bin_size=2.0, track_graph=graph, edge_order=edge_order, edge_spacing=edge_spacing)
    return env.fit_place_grid(None)


@pytest.mark.parametrize("model", ["contfrag", "detector"])
def test_compiled_track_scans_equal_dense(rng, model):
    """On the CPU a track decodes through numba's loops (``track_inference``): over
    several chunks, with the detector's one-bin states and gap bins, they give the
    dense forward-backward's posteriors and marginal likelihood to float32 rounding."""
    from decoding_assets.decoder.detector import DEFAULT_DISCRETE_TRANSITION

    env = _w_track()
    interior = env.is_track_interior_
    assert (~interior).sum() == 2
    n, n_point = interior.size, 2 if model == "detector" else 0
    D = DEFAULT_DISCRETE_TRANSITION if model == "detector" else DISCRETE
    width = n_point + 2 * n
    n_time = 9000  # more than a chunk: chunk_lengths gives 4096 rows at this width
    assert inference.chunk_lengths(n_time, width, int(interior.sum()))[0] < n_time
    ll_grid = rng.normal(-3.0, 2.0, (n_time, int(interior.sum())))
    ll_point = rng.normal(-3.0, 2.0, (n_time, n_point))
    initial = np.concatenate([np.full(n_point, 0.1), np.tile(interior, 2) * 0.8 / (2 * interior.sum())])
    if model == "contfrag":
        initial = initial / initial.sum()

    ops = tr.make_transitions(env, MOVEMENT_VAR, D, dtype=jnp.float32)
    assert jax.default_backend() == "cpu" and ops.interior.ndim == 1  # the compiled path
    causal_out, acausal_out = np.empty((n_time, width), np.float32), np.empty((n_time, width), np.float32)
    with_grid = np.zeros((n_time, n))
    with_grid[:, interior] = ll_grid

    def log_likelihood(start, stop, rows):
        point, grid = np.zeros((rows, n_point), np.float32), np.zeros((rows, ll_grid.shape[1]), np.float32)
        point[: stop - start], grid[: stop - start] = ll_point[start:stop], ll_grid[start:stop]
        return inference.LogLikelihoods(jnp.asarray(point), jnp.asarray(grid))

    initial_states = tr.States(
        jnp.asarray(initial[:n_point], jnp.float32), jnp.asarray(initial[n_point:].reshape(2, n), jnp.float32)
    )
    posteriors = inference.filter_and_smooth(ops, initial_states, n_time, log_likelihood, causal_out, acausal_out)

    gaussian = tr.random_walk_axis_kernels(env, MOVEMENT_VAR)[0]
    if model == "detector":
        dense = detector_dense_transition(gaussian, interior, D)
        likelihood = np.exp(np.concatenate([ll_point, with_grid, with_grid], axis=1))
    else:
        dense = dense_transition(gaussian, interior)
        likelihood = np.exp(np.tile(with_grid, 2))
    expected_causal, expected_acausal, expected_log_z = dense_forward_backward(initial, dense, likelihood)
    outside = np.concatenate([np.zeros(n_point, bool), ~interior, ~interior])
    for got, expected in ((causal_out, expected_causal), (acausal_out, expected_acausal)):
        assert np.isnan(got[:, outside]).all()
        np.testing.assert_allclose(got[:, ~outside], expected[:, ~outside], atol=2e-5, rtol=0)
    grid_masses = expected_acausal[:, n_point:].reshape(n_time, 2, n).sum(axis=2)
    masses = np.concatenate([expected_acausal[:, :n_point], grid_masses], axis=1)
    np.testing.assert_allclose(posteriors.acausal_state_probabilities, masses, atol=2e-5)
    assert posteriors.marginal_log_likelihood == pytest.approx(expected_log_z, rel=1e-5)


def test_compiled_track_scans_equal_the_xla_scans(rng):
    """Chunk for chunk, the numba loops and the XLA scans give the same float32 numbers,
    and the same carry into the next chunk."""
    from decoding_assets.decoder.detector import DEFAULT_DISCRETE_TRANSITION as D

    env = _w_track()
    interior = env.is_track_interior_
    n, n_interior, step = interior.size, int(interior.sum()), 64
    width = 2 + 2 * n
    index = np.flatnonzero(interior)
    ops = tr.make_transitions(env, MOVEMENT_VAR, D, dtype=jnp.float32)
    scans = [inference._xla_scans(ops, index, step, width), inference._track_scans(ops, index, step, width)]
    grid = np.tile(interior, (2, 1)) * 0.25 / n_interior
    prior = tr.States(jnp.asarray([0.3, 0.2], jnp.float32), jnp.asarray(grid, jnp.float32))
    ll = inference.LogLikelihoods(  # a span of two chunks: the second one is filtered
        jnp.asarray(rng.normal(-2.0, 1.0, (2 * step, 2)), jnp.float32),
        jnp.asarray(rng.normal(-3.0, 2.0, (2 * step, n_interior)), jnp.float32),
    )
    xla, compiled = (s.filter(s.carry(prior), s.span(ll), step, 50) for s in scans)
    (xla_prior, xla_marginal, *xla_rows), (compiled_prior, marginal, *rows) = xla, compiled
    for got, expected in zip([*compiled_prior, *rows], [*xla_prior, *xla_rows]):
        np.testing.assert_allclose(got, np.asarray(expected), rtol=2e-5, atol=1e-9)
    assert marginal == pytest.approx(float(xla_marginal), rel=1e-6)

    causal = xla_rows[0]
    (xla_carry, *xla_rows), (carry, *rows) = (s.smoother(s.carry(prior), causal, True) for s in scans)
    for got, expected in zip([*carry, *rows], [*xla_carry, *xla_rows]):
        np.testing.assert_allclose(got, np.asarray(expected), rtol=2e-5, atol=1e-9)


def test_a_read_only_install_keeps_the_track_loops_in_the_compilation_cache(tmp_path):
    """enable_compilation_cache also gives numba its folder: in a fresh process (whose
    package folder and home could be read-only) the compiled track loops are written
    under the cache folder, and a second process decodes with that folder in place."""
    import os
    import subprocess
    import sys

    script = """
import sys
import jax.numpy as jnp, numpy as np
from decoding_assets.decoder import enable_compilation_cache, inference, transitions as tr
from decoding_assets.decoder.environment import Environment
from decoding_assets.decoder.simulate import w_track_graph
enable_compilation_cache(sys.argv[1])
graph, order, spacing = w_track_graph(width=40.0, height=30.0)
env = Environment(place_bin_size=2.0, track_graph=graph, edge_order=order, edge_spacing=spacing).fit_place_grid(None)
ops = tr.make_transitions(env, 6.0, np.array([[0.98, 0.02], [0.02, 0.98]]))
n, index = env.is_track_interior_.size, np.flatnonzero(env.is_track_interior_)
initial = tr.States(jnp.zeros(0), jnp.asarray(np.tile(env.is_track_interior_, (2, 1)) / (2 * index.size), jnp.float32))
rng = np.random.default_rng(0)
ll = lambda a, b, rows: inference.LogLikelihoods(jnp.zeros((rows, 0)), jnp.asarray(rng.normal(size=(rows, index.size)), jnp.float32))
out = [np.empty((100, 2 * n), np.float32) for _ in range(2)]
posteriors = inference.filter_and_smooth(ops, initial, 100, ll, *out)
print(abs(posteriors.acausal_state_probabilities.sum(axis=1) - 1).max())
"""
    cache = tmp_path / "cache"
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    for _ in range(2):
        done = subprocess.run([sys.executable, "-c", script, str(cache)], capture_output=True, text=True, env=env)
        assert done.returncode == 0, done.stderr
        assert float(done.stdout.strip()) < 1e-5
    cached = sorted(p.name for p in (cache / "numba").rglob("*.nbi"))
    assert any("_filter_loop" in name for name in cached) and any("_smoother_loop" in name for name in cached), cached


@pytest.mark.skipif(not track_inference.X86_64, reason="FTZ and DAZ are x86 control bits")
def test_the_track_loops_treat_denormals_as_xla_does_and_give_the_thread_back():
    """Inside ``denormals_flushed`` numba's float32 arithmetic makes denormal results
    and operands 0, as jit-compiled XLA does and IEEE arithmetic does not (Intel cores
    computed those products 10-15x slower); the thread's control word is put back
    afterwards, also when the loop fails."""
    import numba

    product = numba.njit(lambda a, b: a * b)
    tiny, denormal = np.float32(1e-38), np.float32(1e-40)
    xla = jax.jit(lambda a, b: a * b)
    assert float(xla(tiny, np.float32(0.01))) == 0.0 and float(xla(denormal, np.float32(1.0))) == 0.0
    control = lambda: track_inference._mxcsr() & ~0x3F  # bits 0-5 are sticky exception flags
    before = control()
    with track_inference.denormals_flushed():
        assert product(tiny, np.float32(0.01)) == 0.0
        assert product(denormal, np.float32(1.0)) == 0.0
    assert control() == before
    assert product(tiny, np.float32(0.01)) > 0.0 and np.float32(1e-38) * np.float32(0.01) > 0.0
    with pytest.raises(TypeError):
        track_inference.filter_chunk(np.zeros(3))  # too few arguments: the loop raises
    assert control() == before

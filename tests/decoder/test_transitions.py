"""The operator transitions equal the dense (2N x 2N) matrix of MODEL.md."""

import jax
import networkx as nx
import numpy as np
import pytest
from scipy.stats import multivariate_normal

from decoding_assets.decoder import Environment
from decoding_assets.decoder import transitions as tr
from decoding_assets.decoder.simulate import w_track_graph

MOVEMENT_VAR = 6.0
DISCRETE = np.array([[0.97, 0.03], [0.05, 0.95]])


def dense_transition(gaussian: np.ndarray, interior: np.ndarray) -> np.ndarray:
    """A[(s, i) -> (s', j)] built entry by entry from the model's definition."""
    m = interior.astype(float)
    walk = gaussian * m[:, None] * m[None, :]
    rows = walk.sum(axis=1, keepdims=True)
    walk = np.divide(walk, rows, out=np.zeros_like(walk), where=rows > 0)
    uniform = m[:, None] * m[None, :] / m.sum()
    return np.block(
        [
            [DISCRETE[0, 0] * walk, DISCRETE[0, 1] * uniform],
            [DISCRETE[1, 0] * uniform, DISCRETE[1, 1] * uniform],
        ]
    )


def detector_dense_transition(gaussian: np.ndarray, interior: np.ndarray, D: np.ndarray) -> np.ndarray:
    """The detector's A built block by block: Local and No-Spike (one bin each), then
    Non-Local Continuous (a random walk from itself) and Non-Local Fragmented."""
    m, n = interior.astype(float), interior.size
    walk = gaussian * m[:, None] * m[None, :]
    rows = walk.sum(axis=1, keepdims=True)
    walk = np.divide(walk, rows, out=np.zeros_like(walk), where=rows > 0)
    # a block per (from, to): into a one-bin state, every bin's mass; into a grid state,
    # uniform over the interior, but the random walk from Non-Local Continuous to itself
    size = [1, 1, n, n]
    blocks = [[None] * 4 for _ in range(4)]
    for s in range(4):
        for t in range(4):
            if t < 2:
                block = np.ones((size[s], 1))
            elif s == t == 2:
                block = walk
            else:
                block = np.ones((size[s], 1)) * (m / m.sum())[None, :]
            if s >= 2:  # no mass leaves a bin outside the track
                block = block * m[:, None]
            blocks[s][t] = D[s, t] * block
    return np.block(blocks)


def euclidean_gaussian(centers: np.ndarray) -> np.ndarray:
    cov = MOVEMENT_VAR * np.eye(centers.shape[1])
    return np.stack([multivariate_normal(mean=c, cov=cov).pdf(centers) for c in centers]).reshape(len(centers), -1)


def compare(environment: Environment, gaussian: np.ndarray, rng, dtype=np.float64, tolerance=1e-6):
    interior = environment.is_track_interior_.ravel()
    dense = dense_transition(gaussian, interior)
    n = interior.size
    grid = environment.centers_shape_
    p = rng.random((2, n)) * interior
    p /= p.sum()
    r = rng.random((2, n)) * 3 * interior
    with jax.enable_x64(dtype == np.float64):
        ops = tr.make_transitions(environment, MOVEMENT_VAR, DISCRETE, dtype=dtype)
        none = np.zeros(0, dtype=dtype)  # ContFrag has no state of one bin
        forward = np.asarray(tr.predict(tr.States(none, p.reshape(2, *grid).astype(dtype)), ops).grid).reshape(2 * n)
        backward = np.asarray(tr.backward(tr.States(none, r.reshape(2, *grid).astype(dtype)), ops).grid).reshape(2 * n)
    expected_forward = p.reshape(2 * n) @ dense
    expected_backward = dense @ r.reshape(2 * n)
    assert np.abs(forward - expected_forward).max() <= tolerance * np.abs(expected_forward).max()
    assert np.abs(backward - expected_backward).max() <= tolerance * np.abs(expected_backward).max()
    # mass is conserved by the forward product
    assert forward.sum() == pytest.approx(1.0, rel=tolerance)


def grid_with_holes() -> Environment:
    env = Environment(place_bin_size=2.0, position_range=[(0.0, 14.0), (0.0, 10.0)])
    env.fit_place_grid(np.array([[1.0, 1.0], [13.0, 9.0]]), infer_track_interior=False)
    interior = np.ones(env.centers_shape_, dtype=bool)
    interior[0, :] = interior[:, 0] = interior[-1, :] = interior[:, -1] = False  # border
    interior[3, 2] = interior[4, 4] = interior[5, 4] = False  # holes
    interior[6, 1:4] = False  # a wall
    env.is_track_interior_ = interior
    return env


def test_2d_grid_with_holes_matches_dense(rng):
    env = grid_with_holes()
    assert env.centers_shape_ == (9, 7)
    compare(env, euclidean_gaussian(env.place_bin_centers_), rng)


def test_2d_grid_float32_matches_dense(rng):
    env = grid_with_holes()
    compare(env, euclidean_gaussian(env.place_bin_centers_), rng, dtype=np.float32, tolerance=1e-5)


def test_1d_grid_with_gaps_matches_dense(rng):
    position = np.concatenate([np.linspace(0, 20, 200), np.linspace(30, 50, 200)])[:, None]
    env = Environment(place_bin_size=2.0).fit_place_grid(position)
    assert not env.is_track_interior_.all()  # the unvisited stretch is not interior
    compare(env, euclidean_gaussian(env.place_bin_centers_), rng)


def test_track_graph_matches_dense(rng):
    graph, edge_order, edge_spacing = w_track_graph(width=20.0, height=16.0)
    env = Environment(place_bin_size=2.0, track_graph=graph, edge_order=edge_order, edge_spacing=edge_spacing)
    env.fit_place_grid(None)
    # shortest paths on a graph with every bin centre inserted as a node on its edge
    detailed = nx.Graph()
    detailed.add_nodes_from(graph.nodes)
    for k, (u, v) in enumerate(edge_order):
        on_edge = np.flatnonzero(env.bin_edge_index_ == k)
        offsets = env.bin_edge_offset_[on_edge]
        chain = [u, *[("bin", b) for b in on_edge], v]
        positions = [0.0, *offsets, graph.edges[u, v]["distance"]]
        for a, b, pa, pb in zip(chain[:-1], chain[1:], positions[:-1], positions[1:]):
            detailed.add_edge(a, b, distance=pb - pa)
    n = env.place_bin_centers_.shape[0]
    distance = np.full((n, n), np.inf)
    for a, lengths in nx.all_pairs_dijkstra_path_length(detailed, weight="distance"):
        if isinstance(a, tuple):
            for b, d in lengths.items():
                if isinstance(b, tuple):
                    distance[a[1], b[1]] = d
    gaussian = np.exp(-0.5 * distance**2 / MOVEMENT_VAR) / np.sqrt(2 * np.pi * MOVEMENT_VAR)
    assert (~env.is_track_interior_).sum() == 2  # the two gaps between arms
    compare(env, gaussian, rng)


def test_the_detectors_four_states_match_dense(rng):
    """Local and No-Spike (one bin each) then Non-Local Continuous (random walk from
    itself) and Non-Local Fragmented: A built entry by entry, states of one bin first."""
    from decoding_assets.decoder.detector import DEFAULT_DISCRETE_TRANSITION as D

    env = grid_with_holes()
    interior = env.is_track_interior_.ravel()
    m, n = interior.astype(float), interior.size
    dense = detector_dense_transition(euclidean_gaussian(env.place_bin_centers_), interior, D)
    p = np.concatenate([rng.random(2), rng.random(2 * n) * np.tile(m, 2)])
    p /= p.sum()
    r = np.concatenate([rng.random(2), rng.random(2 * n) * 3 * np.tile(m, 2)])
    grid = env.centers_shape_
    with jax.enable_x64(True):
        ops = tr.make_transitions(env, MOVEMENT_VAR, D, dtype=np.float64)
        forward = tr.predict(tr.States(p[:2], p[2:].reshape(2, *grid)), ops)
        backward = tr.backward(tr.States(r[:2], r[2:].reshape(2, *grid)), ops)
    forward = np.concatenate([np.asarray(forward.point), np.asarray(forward.grid).ravel()])
    backward = np.concatenate([np.asarray(backward.point), np.asarray(backward.grid).ravel()])
    np.testing.assert_allclose(forward, p @ dense, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(backward, dense @ r, rtol=1e-10, atol=1e-14)
    assert forward.sum() == pytest.approx(1.0, rel=1e-12)

"""Track graphs (linearization, bin layout with gap bins, graph distances) and the state
transitions, in the areas the reference package (non_local_detector) tests, against
values and dense matrices worked out here.

The transition operators are read back as a matrix (row k of A is the prediction of
the k-th unit vector, column k the smoother's product with it) and compared with
A[(s, i) -> (s', j)] = D[s, s'] T_ss'[i, j] built entry by entry (MODEL.md).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from track_linearization import make_track_graph

from decoding_assets.decoder import Environment
from decoding_assets.decoder import transitions as tr

from .test_reference_posterior import dense_transition

DISCRETE = np.array([[0.93, 0.07], [0.04, 0.96]])  # asymmetric, so the blocks cannot be swapped unseen


def straight_track(lengths=(5.0, 5.5), spacing=0.25, bin_size=1.0) -> Environment:
    """Edges laid end to end along the x axis, in order, with ``spacing`` between them."""
    nodes = np.concatenate([[0.0], np.cumsum(lengths)])
    edges = [(k, k + 1) for k in range(len(lengths))]
    graph = make_track_graph([(x, 0.0) for x in nodes], edges)
    return Environment(place_bin_size=bin_size, track_graph=graph, edge_order=edges, edge_spacing=spacing)


def t_junction() -> Environment:
    """A 10 cm stem from its far end (node 1) down to the junction (node 0), then two
    8 cm arms leaving the junction; gaps of 5 and 3 cm between them on the line."""
    graph = make_track_graph([(0.0, 0.0), (0.0, 10.0), (-8.0, 0.0), (8.0, 0.0)], [(1, 0), (0, 2), (0, 3)])
    return Environment(place_bin_size=2.0, track_graph=graph, edge_order=[(1, 0), (0, 2), (0, 3)],
                       edge_spacing=[5.0, 3.0])  # fmt: skip


def t_junction_distances() -> np.ndarray:
    """Shortest paths between the 13 interior bin centres: along the edge within one
    edge, else through the junction, every edge's only shared node."""
    stem = np.arange(1.0, 10.0, 2.0)  # offsets from node 1
    arm = np.arange(1.0, 8.0, 2.0)  # offsets from the junction
    offset = np.concatenate([stem, arm, arm])
    edge = np.repeat([0, 1, 2], [5, 4, 4])
    to_junction = np.concatenate([10.0 - stem, arm, arm])
    return np.where(edge[:, None] == edge[None, :], np.abs(offset[:, None] - offset[None, :]),
                    to_junction[:, None] + to_junction[None, :])  # fmt: skip


def operator_matrix(environment, movement_var, discrete=DISCRETE):
    """(forward, backward): A as the prediction and as the smoother's product see it."""
    grid = environment.centers_shape_
    n = 2 * int(np.prod(grid))
    with jax.enable_x64(True):
        ops = tr.make_transitions(environment, movement_var, np.asarray(discrete, dtype=float), dtype=jnp.float64)
        unit = tr.States(jnp.zeros((n, 0)), jnp.eye(n, dtype=jnp.float64).reshape(n, 2, *grid))
        rows = jax.vmap(lambda p: tr.predict(p, ops))(unit).grid
        columns = jax.vmap(lambda r: tr.backward(r, ops))(unit).grid
    return np.asarray(rows).reshape(n, n), np.asarray(columns).reshape(n, n).T


def interior_states(environment) -> np.ndarray:
    return np.tile(environment.is_track_interior_.ravel(), 2)


# ---------------------------------------------------------------------- linearization


def test_linearization_on_a_straight_track():
    """Positions on or beside two edges in a line: the linear position is x on the
    first edge and x + 0.25 (the gap) on the second, and never decreases."""
    env = straight_track()
    x = 0.25 + 0.5 * np.arange(21)  # never the shared node at x = 5
    on = env.linearize(np.column_stack([x, np.zeros_like(x)]))[:, 0]
    beside = env.linearize(np.column_stack([x, np.full_like(x, 0.3)]))[:, 0]
    expected = np.where(x < 5.0, x, x + 0.25)
    np.testing.assert_allclose(on, expected, atol=1e-12)
    np.testing.assert_allclose(beside, expected, atol=1e-12)
    assert np.all(np.diff(on) > 0)
    np.testing.assert_allclose(np.diff(on)[x[:-1] == 4.75], 0.75)  # the step across the gap


def test_linearization_projects_onto_the_nearest_edge():
    env = t_junction()
    points = np.array([[0.0, 7.0], [0.2, 4.0], [-3.0, 0.2], [5.0, -0.1], [np.nan, 1.0]])
    # stem from node 1: 3 and 6 cm; arms start at 10 + 5 and at 10 + 5 + 8 + 3
    expected = [3.0, 6.0, 15.0 + 3.0, 26.0 + 5.0]
    linear = env.linearize(points)[:, 0]
    np.testing.assert_allclose(linear[:4], expected, atol=1e-12)
    assert np.isnan(linear[4])


# ---------------------------------------------------------------------- bins


def test_bins_split_each_edge_evenly_with_one_gap_bin_between_edges():
    env = straight_track().fit_place_grid(None)
    second = 5.25 + 5.5 / 6 * np.arange(1, 7)  # 5.5 cm in ceil(5.5) = 6 equal bins
    np.testing.assert_allclose(env.edges_[0], np.concatenate([np.arange(6.0), [5.25], second]))
    np.testing.assert_array_equal(env.is_track_interior_, [True] * 5 + [False] + [True] * 6)
    assert np.all(np.diff(env.place_bin_centers_[:, 0]) > 0)

    env = t_junction().fit_place_grid(None)
    widths = np.diff(env.edges_[0])
    np.testing.assert_allclose(widths, [2.0] * 5 + [5.0] + [2.0] * 4 + [3.0] + [2.0] * 4)
    np.testing.assert_array_equal(env.is_track_interior_, np.isclose(widths, 2.0))


# ---------------------------------------------------------------------- graph distances


def test_graph_distances_go_through_the_junction():
    env = t_junction().fit_place_grid(None)
    interior = env.is_track_interior_
    distance = env.track_bin_distances()[np.ix_(interior, interior)]
    np.testing.assert_allclose(distance, t_junction_distances())


def test_graph_distances_on_a_straight_track_are_linear_distances_less_the_gaps():
    env = straight_track().fit_place_grid(None)
    interior = env.is_track_interior_
    centers = env.place_bin_centers_[interior, 0]
    second = centers > 5.25
    linear = np.abs(centers[:, None] - centers[None, :])
    expected = linear - 0.25 * (second[:, None] != second[None, :])
    np.testing.assert_allclose(env.track_bin_distances()[np.ix_(interior, interior)], expected, atol=1e-12)


# ---------------------------------------------------------------------- transitions


def test_track_transitions_equal_the_dense_matrix():
    env = t_junction().fit_place_grid(None)
    forward, backward = operator_matrix(env, movement_var=4.0)
    inside = interior_states(env)
    expected = dense_transition(t_junction_distances() ** 2, 4.0, DISCRETE)
    np.testing.assert_allclose(forward[np.ix_(inside, inside)], expected, rtol=1e-10, atol=1e-15)
    np.testing.assert_allclose(backward[np.ix_(inside, inside)], expected, rtol=1e-10, atol=1e-15)
    # nothing moves into a gap
    assert np.all(forward[np.ix_(inside, ~inside)] == 0) and np.all(backward[np.ix_(inside, ~inside)] == 0)


@pytest.fixture(scope="module")
def field_with_a_pillar():
    """A 16 cm square with an unvisited 8 cm pillar in the middle, 2 cm bins."""
    rng = np.random.default_rng(2)
    xy = rng.uniform(0.0, 16.0, (20000, 2))
    xy = xy[~np.all((xy >= 4.0) & (xy < 12.0), axis=1)]
    return Environment(place_bin_size=2.0).fit_place_grid(xy)


def test_open_field_transitions_equal_the_dense_matrix(field_with_a_pillar):
    env = field_with_a_pillar
    interior = env.is_track_interior_
    assert env.centers_shape_ == (10, 10)
    # the closing trims the pillar's corners but its core stays outside the track
    assert not interior[4:6, 4:6].any() and interior[1:9, 1:3].all()
    forward, backward = operator_matrix(env, movement_var=6.0)
    inside = interior_states(env)
    centers = env.place_bin_centers_[interior.ravel()]
    expected = dense_transition(((centers[:, None] - centers[None, :]) ** 2).sum(axis=-1), 6.0, DISCRETE)
    np.testing.assert_allclose(forward[np.ix_(inside, inside)], expected, rtol=1e-10, atol=1e-15)
    np.testing.assert_allclose(backward[np.ix_(inside, inside)], expected, rtol=1e-10, atol=1e-15)


def test_rows_sum_to_one_and_nothing_leaves_the_track(field_with_a_pillar):
    env = field_with_a_pillar
    forward, _ = operator_matrix(env, movement_var=6.0)
    inside = interior_states(env)
    rows = forward[inside]
    np.testing.assert_allclose(rows.sum(axis=1), 1.0, rtol=1e-12)
    assert rows.min() >= 0.0
    assert np.all(rows[:, ~inside] == 0)
    # from Fragmented, and into Fragmented from anywhere, every interior bin is equally likely
    n = inside.sum() // 2
    fragmented_rows = forward[np.ix_(inside, inside)][n:]
    np.testing.assert_allclose(fragmented_rows[:, :n], DISCRETE[1, 0] / n, rtol=1e-12)
    np.testing.assert_allclose(fragmented_rows[:, n:], DISCRETE[1, 1] / n, rtol=1e-12)
    np.testing.assert_allclose(forward[np.ix_(inside, inside)][:n, n:], DISCRETE[0, 1] / n, rtol=1e-12)


@pytest.fixture(scope="module")
def line():
    """40 bins of 1 cm, all on the track."""
    env = Environment(place_bin_size=1.0, position_range=[(0.0, 40.0)])
    return env.fit_place_grid(np.linspace(0.0, 40.0, 200)[:, None], infer_track_interior=False)


def random_walk(env, movement_var):
    """T_00 alone (the discrete part set to the identity)."""
    forward, _ = operator_matrix(env, movement_var, discrete=np.eye(2))
    n = env.place_bin_centers_.shape[0]
    return forward[:n, :n]


def test_random_walk_is_symmetric(line):
    """The Gaussian kernel is symmetric, so T_00 is symmetric up to each row's
    normalizer Z_i (detailed balance), and exactly symmetric where Z is the same,
    away from the ends of the line."""
    walk = random_walk(line, movement_var=0.5)
    centers = line.place_bin_centers_[:, 0]
    normalizer = np.exp(-0.5 * (centers[:, None] - centers[None, :]) ** 2 / 0.5).sum(axis=1)
    balanced = normalizer[:, None] * walk
    np.testing.assert_allclose(balanced, balanced.T, rtol=1e-10, atol=1e-300)
    middle = slice(10, 30)
    np.testing.assert_allclose(walk[middle, middle], walk[middle, middle].T, rtol=1e-9)
    for i in range(10, 30):
        np.testing.assert_allclose(walk[i, i + 1 : i + 6], walk[i, i - 1 : i - 6 : -1], rtol=1e-9)


def test_random_walk_spreads_with_movement_var(line):
    tight, wide = random_walk(line, 0.2), random_walk(line, 10.0)
    for walk in (tight, wide):
        np.testing.assert_allclose(walk.sum(axis=1), 1.0, rtol=1e-12)
    assert (1.0 - np.diag(wide)).mean() > (1.0 - np.diag(tight)).mean() + 0.3
    # the most likely move is to stay put
    assert np.all(np.argmax(tight, axis=1) == np.arange(40)) and np.all(np.argmax(wide, axis=1) == np.arange(40))

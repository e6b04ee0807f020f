"""The analyses over a results file, each against a case worked out by hand: small
environments, posteriors put where we choose, saved and read back from netCDF in the
forms a decode keeps, and read a few time bins at a time."""

import networkx as nx
import numpy as np
import pytest

from decoding_assets.decoder import Environment, load_results, save_results
from decoding_assets.decoder.analyses import analyze, measures_frame, stream_position_posterior, summarize
from decoding_assets.decoder.results import Keep, make_results


def open_field() -> Environment:
    """4 x 3 bins of 10 cm over [0, 40] x [0, 30] (cell (i, j) centred at (10 i + 5,
    10 j + 5)) inside the grid's border of exterior bins; cells (2, 0) and (2, 1) are a wall."""
    env = Environment(place_bin_size=10.0, position_range=[(0.0, 40.0), (0.0, 30.0)])
    env.fit_place_grid(np.array([[1.0, 1.0], [39.0, 29.0]]), infer_track_interior=False)
    assert env.centers_shape_ == (6, 5)
    interior = np.zeros((6, 5), dtype=bool)
    interior[1:5, 1:4] = True
    interior[3, 1] = interior[3, 2] = False
    env.is_track_interior_ = interior
    return env


def cell(i: int, j: int) -> int:
    """The bin of the open field's cell (i, j)."""
    return (i + 1) * 5 + (j + 1)


def y_track() -> Environment:
    """A stem of 40 cm from (0, 0) east to the junction (40, 0), then two arms of 30 cm,
    north and south; bins of 10 cm: the stem [0, 40), north [40, 70), south [70, 100)."""
    graph = nx.Graph()
    for node, pos in {0: (0, 0), 1: (40, 0), 2: (40, 30), 3: (40, -30)}.items():
        graph.add_node(node, pos=pos)
    for edge_id, (u, v) in enumerate([(0, 1), (1, 2), (1, 3)]):
        length = float(np.linalg.norm(np.subtract(graph.nodes[u]["pos"], graph.nodes[v]["pos"])))
        graph.add_edge(u, v, distance=length, edge_id=edge_id)
    env = Environment(place_bin_size=10.0, track_graph=graph, edge_order=[(0, 1), (1, 2), (1, 3)], edge_spacing=0.0)
    env.fit_place_grid(np.zeros((1, 2)))
    return env


def write(env: Environment, grid_posterior: np.ndarray, tmp_path, keep: Keep, name="r.nc"):
    """Save a decode whose position posterior (n_time, n_bins) is split between the
    two states (Continuous gets 60 %), and read it back lazily."""
    n_time, n_bins = grid_posterior.shape
    interior = env.is_track_interior_.ravel()
    per_state = np.concatenate([0.6 * grid_posterior, 0.4 * grid_posterior], axis=1).astype(np.float32)
    per_state[:, ~np.tile(interior, 2)] = np.nan
    states = np.tile([0.6, 0.4], (n_time, 1))
    time = np.arange(n_time) * 0.002
    results = make_results(time, env, per_state, per_state.copy(), states, states.copy(), [0.0])
    return load_results(save_results(results, tmp_path / name, keep))


def field_case(env):
    """Three time bins: 0.7 / 0.3 split between (0, 0) and (3, 2); all at (3, 2); all
    at (3, 0), behind the wall."""
    assert all(np.allclose(env.place_bin_centers_[cell(i, j)], [10 * i + 5, 10 * j + 5]) for i in range(4) for j in range(3))
    posterior = np.zeros((3, 30))
    posterior[0, cell(0, 0)], posterior[0, cell(3, 2)] = 0.7, 0.3
    posterior[1, cell(3, 2)] = 1.0
    posterior[2, cell(3, 0)] = 1.0
    return posterior


@pytest.mark.parametrize("keep", [Keep(max_error=None), Keep(), Keep(per_state=False)], ids=["exact", "bounded", "summed"])
def test_open_field_by_hand(tmp_path, keep):
    env = open_field()
    results = write(env, field_case(env), tmp_path, keep)
    # the animal at (15, 5), in bin (1, 0), facing west (pi) each time
    position = np.tile([15.0, 5.0], (3, 1))
    measures = analyze(results, env, position, head_direction=np.full(3, np.pi), mass=0.5, rows=2)
    np.testing.assert_allclose(measures["most_probable_position"].values, [[5, 5], [35, 25], [35, 5]])
    diagonal = np.sqrt(2 * 20.0**2)
    np.testing.assert_allclose(measures["decoding_error"].values, [10.0, diagonal, 20.0], rtol=1e-6)
    # west is ahead; the others are behind, and the paths go around the wall: to (3, 2)
    # by (1,0) -> (1,1) -> (2,2) -> (3,2), to (3, 0) by (1,0) -> (1,1) -> (2,2) -> (3,1) -> (3,0)
    step = np.sqrt(200.0)
    over, around = 10.0 + step + 10.0, 10.0 + 2 * step + 10.0
    np.testing.assert_allclose(measures["ahead_behind_distance"].values, [10.0, -over, -around], rtol=1e-6)
    # half the mass: one bin of 100 cm^2 each time
    np.testing.assert_allclose(measures["hpd_area"].values, [100.0, 100.0, 100.0])
    wider = analyze(results, env, position, mass=0.95)
    np.testing.assert_allclose(wider["hpd_area"].values, [200.0, 100.0, 100.0])
    summary = summarize(measures, results)
    assert summary.median_decoding_error_cm == pytest.approx(20.0, rel=1e-6)
    assert summary.median_ahead_behind_cm == pytest.approx(-over, rel=1e-6)
    assert summary.median_abs_ahead_behind_cm == pytest.approx(over, rel=1e-6)
    assert summary.median_hpd_area == 100.0 and summary.hpd_mass == 0.5
    assert summary.state_fractions == pytest.approx({"Continuous": 0.6, "Fragmented": 0.4})


def test_without_a_head_direction_the_way_it_moves_is_ahead(tmp_path):
    env = open_field()
    results = write(env, field_case(env), tmp_path, Keep())
    # moving east along y = 5: (0, 0) is behind, (3, 2) and (3, 0) ahead
    position = np.column_stack([[13.0, 15.0, 17.0], [5.0, 5.0, 5.0]])
    ahead = analyze(results, env, position)["ahead_behind_distance"].values
    assert ahead[0] < 0 and ahead[1] > 0 and ahead[2] > 0
    # head direction known where given, movement elsewhere
    ahead = analyze(results, env, position, head_direction=np.array([0.0, np.nan, np.pi]))["ahead_behind_distance"].values
    assert ahead[0] < 0 and ahead[1] > 0 and ahead[2] < 0


def track_case():
    """Four time bins with all the posterior in one bin: the north arm's middle (linear
    55), the stem's start (5), the south arm's middle (85), the animal's own bin (35)."""
    posterior = np.zeros((4, 10))
    for t, b in enumerate([5, 0, 8, 3]):
        posterior[t, b] = 1.0
    return posterior


def test_track_distances_go_along_the_graph(tmp_path):
    env = y_track()
    results = write(env, track_case(), tmp_path, Keep())
    linear = np.full((4, 1), 37.0)  # on the stem, 3 cm before the junction
    # facing east (toward the junction): the arms are ahead, the stem's start behind
    measures = analyze(results, env, linear, head_direction=np.zeros(4))
    np.testing.assert_allclose(measures["most_probable_position"].values[:, 0], [55.0, 5.0, 85.0, 35.0])
    # to the north arm's bin centre: 3 to the junction + 15 up the arm (its linear
    # position is 18 away too); to the south arm's: 3 + 15 = 18 though 48 apart linearly
    np.testing.assert_allclose(measures["decoding_error"].values, [18.0, 32.0, 18.0, 2.0])
    np.testing.assert_allclose(measures["ahead_behind_distance"].values, [18.0, -32.0, 18.0, -2.0])
    west = analyze(results, env, linear, head_direction=np.full(4, np.pi))["ahead_behind_distance"].values
    np.testing.assert_allclose(west, [-18.0, 32.0, -18.0, 2.0])


def test_on_a_track_the_way_along_it_stands_in_for_the_head_direction(tmp_path):
    env = y_track()
    results = write(env, track_case(), tmp_path, Keep())
    # linear position only, increasing: moving toward the junction
    linear = np.array([[36.0], [36.5], [37.0], [37.5]])
    ahead = analyze(results, env, linear)["ahead_behind_distance"].values
    np.testing.assert_allclose(np.sign(ahead), [1, -1, 1, -1])
    # x, y on the south arm, about 10 cm from the junction, moving south (away from it):
    # the north arm is behind, through the junction; the south arm's middle ahead
    xy = np.column_stack([np.full(4, 40.0), [-9.0, -10.0, -11.0, -12.0]])
    measures = analyze(results, env, xy)
    assert measures["ahead_behind_distance"].values[0] == pytest.approx(-(9.0 + 15.0), abs=1e-6)
    assert measures["ahead_behind_distance"].values[2] == pytest.approx(15.0 - 11.0, abs=1e-6)


def test_hpd_length_on_a_track(tmp_path):
    env = y_track()
    posterior = np.zeros((1, 10))
    posterior[0, [1, 2, 7]] = [0.5, 0.3, 0.2]
    results = write(env, posterior, tmp_path, Keep(max_error=None))
    for mass, length in [(0.5, 10.0), (0.8, 20.0), (0.95, 30.0), (1.0, 30.0)]:
        assert analyze(results, env, mass=mass)["hpd_area"].item() == pytest.approx(length), mass


def test_skipped_bins_and_missing_tracking_measure_nothing(tmp_path):
    env = open_field()
    posterior = field_case(env)
    posterior[1] = np.nan  # a bin the decode skipped
    results = write(env, posterior, tmp_path, Keep(max_error=None))
    position = np.array([[15.0, 5.0], [15.0, 5.0], [np.nan, np.nan]])
    measures = analyze(results, env, position, head_direction=np.full(3, np.pi))
    assert np.isnan(measures["most_probable_position"].values[1]).all()
    assert np.isnan(measures["hpd_area"].values[1])
    assert np.isnan(measures["decoding_error"].values[1:]).all()
    assert measures["decoding_error"].values[0] == pytest.approx(10.0)
    frame = measures_frame(measures)
    assert list(frame.columns) == [
        "most_probable_x_position", "most_probable_y_position", "decoding_error", "ahead_behind_distance", "hpd_area",
    ]


def test_the_streamed_position_posterior_is_the_sum_over_states(tmp_path):
    env = open_field()
    posterior = field_case(env)
    results = write(env, posterior, tmp_path, Keep(max_error=None))
    blocks = list(stream_position_posterior(results, rows=2))
    assert [b.sizes["time"] for b in blocks] == [2, 1]
    assert blocks[0].dims == ("time", "x_position", "y_position")
    streamed = np.concatenate([b.values for b in blocks])
    expected = np.where(env.is_track_interior_, posterior.reshape(3, 6, 5), np.nan)
    np.testing.assert_allclose(streamed, expected, rtol=1e-6)


def test_bad_arguments_are_named(tmp_path):
    env = open_field()
    results = write(env, field_case(env), tmp_path, Keep())
    with pytest.raises(ValueError, match="position has 2 rows but the results have 3"):
        analyze(results, env, np.zeros((2, 2)))
    with pytest.raises(ValueError, match="mass"):
        analyze(results, env, mass=0.0)


def test_paths_are_the_same_when_few_are_kept(tmp_path, monkeypatch):
    """The 2D shortest paths are kept for a bounded number of the animal's bins: with
    room for one, every block still gets each of its bins' paths."""
    from decoding_assets.decoder import analyses

    env = open_field()
    results = write(env, field_case(env), tmp_path, Keep())
    position = np.array([[15.0, 5.0], [5.0, 25.0], [35.0, 25.0]])  # three bins
    heading = np.full(3, -2.0)  # south-west: no decoded position square to it
    expected = analyze(results, env, position, heading)["ahead_behind_distance"].values
    monkeypatch.setattr(analyses, "_SOURCE_CACHE", 1)
    for rows in (1, 2, 3):
        np.testing.assert_array_equal(analyze(results, env, position, heading, rows=rows)["ahead_behind_distance"].values, expected)
    assert np.isfinite(expected).all()


def test_hpd_length_with_bins_of_several_sizes(tmp_path):
    """A stem of 40 cm (bins of 10) and an arm of 25 cm (bins of 25/3): the region's
    length adds up the sizes of the bins it takes, largest values first."""
    graph = nx.Graph()
    for node, pos in {0: (0, 0), 1: (40, 0), 2: (40, 25)}.items():
        graph.add_node(node, pos=pos)
    graph.add_edge(0, 1, distance=40.0, edge_id=0)
    graph.add_edge(1, 2, distance=25.0, edge_id=1)
    env = Environment(place_bin_size=10.0, track_graph=graph, edge_order=[(0, 1), (1, 2)], edge_spacing=0.0)
    env.fit_place_grid(np.zeros((1, 2)))
    posterior = np.zeros((1, 7))
    posterior[0, [1, 5, 6]] = [0.5, 0.3, 0.2]
    results = write(env, posterior, tmp_path, Keep(max_error=None))
    for mass, length in [(0.5, 10.0), (0.8, 10.0 + 25 / 3), (1.0, 10.0 + 50 / 3)]:
        assert analyze(results, env, mass=mass)["hpd_area"].item() == pytest.approx(length), mass

"""The spatial grid follows MODEL.md's rules."""

import numpy as np
import pytest

from decoding_assets.decoder import Environment
from decoding_assets.decoder.simulate import w_track_graph


def test_2d_grid_bins_extra_border_and_interior():
    rng = np.random.default_rng(0)
    position = rng.uniform([0, 0], [21, 10], (5000, 2))
    env = Environment(place_bin_size=2.0).fit_place_grid(position)
    low, high = position.min(axis=0), position.max(axis=0)
    n = np.ceil((high - low) / 2.0).astype(int)
    assert env.centers_shape_ == (n[0] + 2, n[1] + 2)  # one extra bin on each side
    width = (high - low) / n
    np.testing.assert_allclose(env.edges_[0][1], low[0])
    np.testing.assert_allclose(np.diff(env.edges_[0]), width[0])
    # C order: x is the slow axis
    assert env.place_bin_centers_[1, 0] == env.place_bin_centers_[0, 0]
    assert env.place_bin_centers_[1, 1] > env.place_bin_centers_[0, 1]
    interior = env.is_track_interior_
    assert not interior[0].any() and not interior[-1].any()
    assert not interior[:, 0].any() and not interior[:, -1].any()
    assert interior[1:-1, 1:-1].all()  # densely visited


def test_closing_fills_a_one_bin_gap_but_not_a_wide_one():
    x = np.concatenate([np.linspace(0.5, 9.5, 400), np.linspace(12.5, 19.5, 300)])
    position = np.column_stack([np.tile(x, 5), np.repeat(np.linspace(0.5, 7.5, 5), x.size)])
    env = Environment(place_bin_size=1.0, position_range=[(0, 20), (0, 8)]).fit_place_grid(position)
    column = env.is_track_interior_[:, 4]
    gap = (env.axis_centers[0] > 9.5) & (env.axis_centers[0] < 12.5)
    assert not column[gap].all()  # three empty bins stay outside the track


def test_1d_track_grid_has_gap_bins_between_arms():
    graph, edge_order, edge_spacing = w_track_graph(width=60, height=80)
    env = Environment(place_bin_size=2.0, track_graph=graph, edge_order=edge_order, edge_spacing=edge_spacing)
    env.fit_place_grid(None)
    lengths = [80, 30, 80, 30, 80]
    assert env.centers_shape_ == (sum(int(np.ceil(length / 2)) for length in lengths) + 2,)
    assert (~env.is_track_interior_).sum() == 2
    linear = env.linearize(np.array([[30.0, 79.0], [0.0, 40.0], [np.nan, 1.0]]))
    assert linear[0, 0] == pytest.approx(1.0)
    assert np.isnan(linear[2, 0])


def test_environment_round_trips_through_json():
    graph, edge_order, edge_spacing = w_track_graph()
    env = Environment(place_bin_size=2.5, track_graph=graph, edge_order=edge_order, edge_spacing=edge_spacing)
    again = Environment.from_dict(env.to_dict())
    assert again.to_dict() == env.to_dict()
    np.testing.assert_array_equal(again.fit_place_grid(None).place_bin_centers_, env.fit_place_grid(None).place_bin_centers_)


def test_positions_without_extent_are_a_clear_error():
    with pytest.raises(ValueError, match="no extent along dimension 1"):
        Environment().fit_place_grid(np.column_stack([np.linspace(0, 10, 50), np.full(50, 3.0)]))
    with pytest.raises(ValueError, match="every position sample is NaN"):
        Environment().fit_place_grid(np.full((10, 2), np.nan))

"""Position processing works by time, wraps angles and leaves long gaps empty."""

import numpy as np
import pytest

from decoding_assets.nwb import RawPosition
from decoding_assets.position import interpolate_angle, interpolate_by_time, process_position, upsample_position_group


def test_interpolation_is_by_time_on_an_irregular_grid():
    rng = np.random.default_rng(0)
    time = np.sort(rng.uniform(0, 10, 300))
    values = 3.0 * time + 1.0
    shuffled = rng.permutation(time.size)  # row order must not matter to a by-time method
    grid = np.linspace(1, 9, 500)
    out = interpolate_by_time(time, values, grid, max_gap=1.0)
    np.testing.assert_allclose(out, 3.0 * grid + 1.0, atol=1e-9)
    order = np.argsort(time[shuffled])
    np.testing.assert_allclose(interpolate_by_time(time[shuffled][order], values[shuffled][order], grid, 1.0), out)


def test_angles_wrap_around():
    time = np.array([0.0, 1.0])
    angle = np.array([np.pi - 0.1, -np.pi + 0.1])
    middle = interpolate_angle(time, angle, np.array([0.5]), max_gap=2.0)[0]
    assert abs(abs(middle) - np.pi) < 1e-9  # through pi, not through 0


def test_long_gaps_are_not_filled():
    time = np.arange(0, 10, 1 / 30)
    values = np.sin(time)
    values[(time > 4) & (time < 5.5)] = np.nan  # a 1.5 s tracking gap
    values[(time > 7) & (time < 7.2)] = np.nan  # a 0.2 s one
    grid = np.arange(0, 10, 0.002)
    out = interpolate_by_time(time, values, grid, max_gap=0.5)
    assert np.isnan(out[(grid > 4.1) & (grid < 5.4)]).all()
    assert np.isfinite(out[(grid > 7.05) & (grid < 7.15)]).all()


def test_process_position_rejects_glitches_and_wraps_orientation():
    time = np.arange(0, 20, 1 / 30)
    head = np.column_stack([50 + 30 * np.cos(time), 50 + 30 * np.sin(time)])  # a circle at 30 cm/s
    heading = time + np.pi / 2
    offset = 2.5 * np.column_stack([np.cos(heading), np.sin(heading)])
    front, back = head + offset, head - offset
    front[100] += 80.0  # a reflection: LEDs far apart
    front[200] += 8.0
    back[200] += 8.0  # both LEDs jump 8 cm in 1/30 s: 240 cm/s, plausible
    front[300] += 20.0
    back[300] += 20.0  # 600 cm/s: rejected
    df = process_position(RawPosition(time, front, back), np.array([[0.0, 20.0]]), {})
    assert np.allclose(np.diff(df.index.to_numpy()), 1 / 250)
    assert df["speed"].iloc[250:-250].median() == pytest.approx(30.0, rel=0.05)
    assert df["position_x"].max() < 82.0  # the 20 cm jump never reaches the output
    expected = np.angle(np.exp(1j * (df.index.to_numpy() + np.pi / 2)))
    error = np.angle(np.exp(1j * (df["orientation"].to_numpy() - expected)))
    assert np.nanmedian(np.abs(error)) < 0.05
    assert df["orientation"].dropna().between(-np.pi, np.pi).all()  # NaN only past the last frame


def test_position_group_upsampling_keeps_gaps_between_epochs():
    import pandas as pd

    a = pd.DataFrame({"position_x": np.arange(0, 10, 0.004)}, index=pd.Index(np.arange(0, 10, 0.004), name="time"))
    b = pd.DataFrame({"position_x": np.arange(20, 30, 0.004)}, index=pd.Index(np.arange(20, 30, 0.004), name="time"))
    out = upsample_position_group([b, a], 500.0)
    assert out.index.is_monotonic_increasing
    assert not ((out.index > 10.01) & (out.index < 19.99)).any()  # the pause is not bridged
    np.testing.assert_allclose(out["position_x"].to_numpy(), out.index.to_numpy(), atol=1e-9)


def test_one_led_gives_position_without_orientation():
    time = np.arange(0, 10, 1 / 30)
    led = np.column_stack([50 + 20 * np.cos(time), 50 + 20 * np.sin(time)])
    led[100:110] = np.nan  # lost for 1/3 s: bridged
    df = process_position(RawPosition(time, led), np.array([[0.0, 10.0]]), {})
    assert df["orientation"].isna().all()
    inside = (df.index > 1) & (df.index < 9)
    expected = 50 + 20 * np.cos(df.index.to_numpy()[inside])
    assert np.nanmax(np.abs(df["position_x"].to_numpy()[inside] - expected)) < 1.0
    assert df["position_x"][inside].notna().all()


def test_frames_outside_the_arena_are_missing():
    time = np.arange(0, 10, 1 / 30)
    head = np.column_stack([50 + 0 * time, 50 + 10 * np.sin(time)])
    front, back = head + [2.5, 0], head - [2.5, 0]
    front[150:170] += [300.0, 0.0]  # a reflection far outside, both LEDs: within speed limits if gradual
    back[150:170] += [300.0, 0.0]
    bounds = {"arena_bounds_cm": [[0.0, 100.0], [0.0, 100.0]], "max_plausible_speed": 1e6}
    df = process_position(RawPosition(time, front, back), np.array([[0.0, 10.0]]), bounds)
    assert df["position_x"].max() < 51.0  # never outside the arena
    unbounded = process_position(RawPosition(time, front, back), np.array([[0.0, 10.0]]), {"max_plausible_speed": 1e6})
    assert unbounded["position_x"].max() > 300.0
    with pytest.raises(ValueError, match="arena_bounds_cm"):
        process_position(RawPosition(time, front, back), np.array([[0.0, 10.0]]), {"arena_bounds_cm": [[10, 0], [0, 1]]})

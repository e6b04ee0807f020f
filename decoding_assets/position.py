"""Head position from raw camera LEDs, and position groups upsampled for decoding.

Named parameter sets (``trodes_pos_params_name``); ``default_decoding``:

- ``max_LED_separation`` 9 cm: frames whose LEDs are further apart are dropped;
- ``max_plausible_speed`` 300 cm/s: frames implying a faster jump are dropped;
- ``position_smoothing_duration`` 0.125 s: moving average of the head position;
- ``speed_smoothing_std_dev`` 0.1 s: Gaussian smoothing of the velocity;
- ``upsampling_sampling_rate`` 250 Hz, ``upsampling_interpolation_method`` "linear";
- ``max_gap_to_interpolate`` 0.5 s: tracking gaps longer than this stay NaN;
- ``arena_bounds_cm`` null, or [[x_min, x_max], [y_min, y_max]]: frames whose head
  position falls outside (reflections beyond the arena's walls) are dropped.

A lost LED (NaN; Trodes stores it as pixel (0, 0), which the reader turns into NaN) is
missing data like a dropped frame.

Everything is done by time, never by row order: the camera's timestamps are
irregular, and must increase (``nwb.frames_in_time_order``). Orientation (front LED
relative to back) is unwrapped before it is interpolated or smoothed and wrapped back
to (-pi, pi] after.
"""

from __future__ import annotations

import contextlib

import numpy as np
import pandas as pd
from scipy.ndimage import gaussian_filter1d, uniform_filter1d

from .files import atomic_write
from .nwb import RawPosition, format_seconds, frames_in_time_order
from .waveforms import check_values, is_number

DEFAULT_POSITION_PARAMS = {
    "max_LED_separation": 9.0,
    "max_plausible_speed": 300.0,
    "position_smoothing_duration": 0.125,
    "speed_smoothing_std_dev": 0.100,
    "upsampling_sampling_rate": 250.0,
    "upsampling_interpolation_method": "linear",
    "max_gap_to_interpolate": 0.5,
    "arena_bounds_cm": None,
}
POSITION_COLUMNS = ["position_x", "position_y", "orientation", "velocity_x", "velocity_y", "speed"]


def _is_positive(value) -> bool:
    return is_number(value) and value > 0


def _is_arena(value) -> bool:
    """None, or [[x_min, x_max], [y_min, y_max]] with each min below its max."""
    if value is None:
        return True
    pairs = value if isinstance(value, (list, tuple)) and len(value) == 2 else ()
    return bool(pairs) and all(
        isinstance(p, (list, tuple)) and len(p) == 2 and all(map(is_number, p)) and p[0] < p[1] for p in pairs
    )


_POSITION_CHECKS = {
    "max_LED_separation": (_is_positive, "a positive number (cm)"),
    "max_plausible_speed": (_is_positive, "a positive number (cm/s)"),
    "position_smoothing_duration": (_is_positive, "a positive number (s)"),
    "speed_smoothing_std_dev": (_is_positive, "a positive number (s)"),
    "upsampling_sampling_rate": (_is_positive, "a positive number (Hz)"),
    "upsampling_interpolation_method": (lambda v: v == "linear", "'linear' (the only method)"),
    "max_gap_to_interpolate": (_is_positive, "a positive number (s)"),
    "arena_bounds_cm": (_is_arena, "null or [[x_min, x_max], [y_min, y_max]] in cm, each min below its max"),
}


def check_position_params(params: dict) -> dict:
    """The defaults overridden by ``params``; an unknown key or a value of the wrong kind
    is an error naming the key, what is expected and the value."""
    unknown = set(params) - set(DEFAULT_POSITION_PARAMS)
    if unknown:
        raise ValueError(f"Unknown position parameter(s) {sorted(unknown)}; known: {sorted(DEFAULT_POSITION_PARAMS)}.")
    merged = {**DEFAULT_POSITION_PARAMS, **params}
    check_values(merged, _POSITION_CHECKS)
    if merged["arena_bounds_cm"] is not None:
        merged["arena_bounds_cm"] = np.asarray(merged["arena_bounds_cm"], dtype=float).tolist()
    return merged


def process_position(raw: RawPosition, valid_times: np.ndarray, params: dict) -> pd.DataFrame:
    """Head position, orientation, velocity and speed at the upsampling rate, within
    ``valid_times`` ((n, 2) [start, stop] s). Index: ``time``; NaN where tracking was
    lost for longer than ``max_gap_to_interpolate``. A lost LED (NaN in ``raw``, e.g.
    Trodes' (0, 0)) is missing data, never a position. With one LED the head is the LED
    and orientation is NaN. The frames must be in time order: a repeated frame (same
    timestamp and LEDs as the one before) is dropped with a warning; a timestamp that
    goes backwards, or one shared by frames that differ, is an error."""
    p = check_position_params(params)
    raw = frames_in_time_order(raw, f"position series {raw.name}")
    time = raw.time
    if raw.back is None:  # a one-LED rig: the LED is the head, and there is no orientation
        head = raw.front.copy()
        bad = np.isnan(head).any(axis=1)
        orientation = np.full(time.size, np.nan)
    else:
        front, back = raw.front, raw.back
        separation = np.linalg.norm(front - back, axis=1)
        bad = ~(separation <= p["max_LED_separation"])  # NaN counts as bad
        head = 0.5 * (front + back)
        orientation = np.arctan2(front[:, 1] - back[:, 1], front[:, 0] - back[:, 0])
    if p["arena_bounds_cm"] is not None:
        (x_min, x_max), (y_min, y_max) = p["arena_bounds_cm"]
        with np.errstate(invalid="ignore"):
            bad |= ~((head[:, 0] >= x_min) & (head[:, 0] <= x_max) & (head[:, 1] >= y_min) & (head[:, 1] <= y_max))
    head[bad] = np.nan
    orientation[bad] = np.nan
    bad |= _implausible_jumps(time, head, p["max_plausible_speed"])
    head[bad] = np.nan
    orientation[bad] = np.nan

    frames = []
    rate = p["upsampling_sampling_rate"]
    for start, stop in np.asarray(valid_times, dtype=float).reshape(-1, 2):
        grid = np.arange(start, stop, 1.0 / rate)
        if grid.size == 0:
            continue
        x, y = (interpolate_by_time(time, head[:, d], grid, p["max_gap_to_interpolate"]) for d in range(2))
        angle = interpolate_angle(time, orientation, grid, p["max_gap_to_interpolate"])
        window = max(int(round(p["position_smoothing_duration"] * rate)), 1)
        x, y = _nan_aware_filter(x, window, "uniform"), _nan_aware_filter(y, window, "uniform")
        angle = _wrap(_nan_aware_filter(_unwrap_nan(angle), window, "uniform"))
        sigma = p["speed_smoothing_std_dev"] * rate
        vx = _nan_aware_filter(np.gradient(x) * rate, sigma, "gaussian")
        vy = _nan_aware_filter(np.gradient(y) * rate, sigma, "gaussian")
        frames.append(
            pd.DataFrame(
                {"position_x": x, "position_y": y, "orientation": angle, "velocity_x": vx, "velocity_y": vy,
                 "speed": np.hypot(vx, vy)},
                index=pd.Index(grid, name="time"),
            )  # fmt: skip
        )
    if not frames:
        pieces = np.reshape(valid_times, (-1, 2))
        spans = ", ".join(f"[{format_seconds(a)}, {format_seconds(b)}]" for a, b in pieces) or "no valid times"
        raise ValueError(f"position series {raw.name}: the interval ({spans}) has zero length; nothing to process.")
    return pd.concat(frames)


def _implausible_jumps(time: np.ndarray, head: np.ndarray, max_speed: float) -> np.ndarray:
    """Frames whose distance from the last accepted frame implies more than max_speed."""
    bad = np.zeros(time.size, dtype=bool)
    last = None
    for i in range(time.size):
        if np.isnan(head[i, 0]):
            continue
        if last is not None:
            dt = max(time[i] - time[last], 1e-9)
            if np.linalg.norm(head[i] - head[last]) / dt > max_speed:
                bad[i] = True
                continue
        last = i
    return bad


def interpolate_by_time(time: np.ndarray, values: np.ndarray, grid: np.ndarray, max_gap: float) -> np.ndarray:
    """Linear interpolation at ``grid`` using only finite samples, by their timestamps;
    grid points inside a gap between finite samples longer than ``max_gap``, or outside
    the samples' range, are NaN (a gap is never filled in)."""
    ok = np.isfinite(values)
    t, v = time[ok], values[ok]
    out = np.full(grid.shape, np.nan)
    if t.size < 2:
        return out
    inside = (grid >= t[0]) & (grid <= t[-1])
    out[inside] = np.interp(grid[inside], t, v)
    right = np.searchsorted(t, grid[inside], side="left")
    right = np.clip(right, 1, t.size - 1)
    gap = t[right] - t[right - 1]
    exact = np.isin(grid[inside], t)
    values_inside = out[inside]
    values_inside[(gap > max_gap) & ~exact] = np.nan
    out[inside] = values_inside
    return out


def interpolate_angle(time: np.ndarray, angle: np.ndarray, grid: np.ndarray, max_gap: float) -> np.ndarray:
    """Angles interpolated along the short way round, wrapped to (-pi, pi]."""
    return _wrap(interpolate_by_time(time, _unwrap_nan(angle), grid, max_gap))


def _unwrap_nan(angle: np.ndarray) -> np.ndarray:
    out = angle.copy()
    ok = np.isfinite(angle)
    out[ok] = np.unwrap(angle[ok])
    return out


def _wrap(angle: np.ndarray) -> np.ndarray:
    return np.where(np.isfinite(angle), np.angle(np.exp(1j * angle)), np.nan)


def _nan_aware_filter(values: np.ndarray, size: float, kind: str) -> np.ndarray:
    """Smooth the finite samples without spreading NaN: normalize by the smoothed mask."""
    ok = np.isfinite(values)
    filled = np.where(ok, values, 0.0)
    if kind == "uniform":
        num, den = uniform_filter1d(filled, int(size), mode="nearest"), uniform_filter1d(ok.astype(float), int(size), mode="nearest")
    else:
        num, den = gaussian_filter1d(filled, size, mode="nearest"), gaussian_filter1d(ok.astype(float), size, mode="nearest")
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(ok & (den > 0), num / den, np.nan)


# a position group never bridges a pause longer than this (between epochs, or a tracking gap)
GROUP_MAX_GAP_S = 0.5


def upsample_position_group(frames: list[pd.DataFrame], upsample_rate: float, max_gap: float = GROUP_MAX_GAP_S) -> pd.DataFrame:
    """Concatenate a position group's sources and resample every column at
    ``upsample_rate`` by time (orientation the short way round), leaving gaps NaN."""
    data = pd.concat(frames).sort_index()
    data = data[~data.index.duplicated()]
    time = data.index.to_numpy()
    pieces = []
    # resample each contiguous stretch on its own so a pause between epochs is not bridged
    breaks = np.flatnonzero(np.diff(time) > max_gap) + 1
    for segment in np.split(np.arange(time.size), breaks):
        t = time[segment]
        grid = np.arange(t[0], t[-1] + 0.5 / upsample_rate, 1.0 / upsample_rate)
        columns = {}
        for column in data.columns:
            values = data[column].to_numpy()[segment]
            if column == "orientation":
                columns[column] = interpolate_angle(t, values, grid, max_gap)
            else:
                columns[column] = interpolate_by_time(t, values, grid, max_gap)
        pieces.append(pd.DataFrame(columns, index=pd.Index(grid, name="time")))
    return pd.concat(pieces)


def save_position(df: pd.DataFrame, path) -> None:
    """Write processed position to netCDF atomically."""
    with atomic_write(path) as tmp:
        df.to_xarray().to_netcdf(tmp, engine="h5netcdf")


def load_position(path) -> pd.DataFrame:
    """A processed position file, local or in an object store (read through a file object)."""
    import xarray as xr

    from catalog import storage

    with contextlib.ExitStack() as stack:
        source = stack.enter_context(storage.open_file(path)) if storage.is_url(path) else path
        with xr.open_dataset(source, engine="h5netcdf") as ds:
            return ds.to_dataframe()

"""What a model is given, checked once: positions, spikes, decoding bins, missing bins.

Every check raises a ``ValueError`` that says which argument (and which electrode group)
is wrong and how; the model code after it can then assume clean arrays.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class DecodingInputs(NamedTuple):
    """The validated inputs of one decode.

    time : (n_time,) bin start times, strictly increasing.
    is_missing : (n_time,) bool, bins whose spikes are ignored.
    spike_times : per electrode group (n_e,) sorted spike times.
    marks : per electrode group (n_e, n_features) waveform features, in spike order.
    position_time, position : the animal's tracked position samples, (n_pos,) and
        (n_pos, n_dims) as given (models with a Local state; None otherwise).
    """

    time: np.ndarray
    is_missing: np.ndarray
    spike_times: list[np.ndarray]
    marks: list[np.ndarray]
    position_time: np.ndarray | None = None
    position: np.ndarray | None = None


def check_positive(name: str, value) -> None:
    v = np.asarray(value, dtype=float)
    if v.size == 0 or np.any(~np.isfinite(v)) or np.any(v <= 0):
        raise ValueError(f"{name} must be positive, got {value!r}.")


def check_waveform_std(waveform_std, n_features: int, electrode: int) -> None:
    size = np.asarray(waveform_std).size
    if size not in (1, n_features):
        raise ValueError(
            f"Electrode group {electrode} has {n_features} waveform features but waveform_std has {size} values."
        )


def check_position(position_time, position) -> tuple[np.ndarray, np.ndarray]:
    """(n_pos,) times and (n_pos, n_dims) positions, n_dims 1 or 2."""
    position_time = np.asarray(position_time, dtype=float).ravel()
    position = np.asarray(position, dtype=float)
    if position.ndim == 1:
        position = position[:, np.newaxis]
    if position.ndim != 2 or position.shape[1] not in (1, 2):
        raise ValueError(f"position must be (n, 1) or (n, 2); got shape {position.shape}.")
    if position.shape[0] != position_time.shape[0]:
        raise ValueError(
            f"position has {position.shape[0]} samples but position_time has {position_time.shape[0]}."
        )
    if position_time.shape[0] < 2:
        raise ValueError("Need at least two position samples to fit.")
    if not np.all(np.isfinite(position_time)) or np.any(np.diff(position_time) <= 0):
        raise ValueError("position_time must be finite and strictly increasing.")
    return position_time, position


def check_time(time) -> np.ndarray:
    time = np.asarray(time, dtype=float).ravel()
    if time.shape[0] == 0:
        raise ValueError("The decoding window is empty: time has no bins.")
    if not np.all(np.isfinite(time)) or np.any(np.diff(time) <= 0):
        raise ValueError("time must be finite and strictly increasing.")
    return time


def check_spikes(spike_times, spike_waveform_features) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per electrode group, float spike times and (n_e, n_features) marks, sorted by time."""
    if len(spike_times) != len(spike_waveform_features):
        raise ValueError(
            f"{len(spike_times)} arrays of spike times but {len(spike_waveform_features)} of waveform features: "
            "give one of each per electrode group."
        )
    times_out, marks_out = [], []
    for e, (times, marks) in enumerate(zip(spike_times, spike_waveform_features)):
        times = np.asarray(times, dtype=float).ravel()
        marks = np.asarray(marks, dtype=float)
        if marks.ndim == 1:
            marks = marks[:, np.newaxis]
        if marks.ndim != 2 or marks.shape[0] != times.shape[0]:
            raise ValueError(
                f"Electrode group {e}: {times.shape[0]} spike times but waveform features of shape {marks.shape}."
            )
        if marks.shape[1] == 0:
            raise ValueError(f"Electrode group {e}: waveform features have no columns.")
        if not np.all(np.isfinite(times)):
            raise ValueError(f"Electrode group {e}: spike times contain NaN or infinity.")
        bad = ~np.all(np.isfinite(marks), axis=1)
        if bad.any():
            raise ValueError(
                f"Electrode group {e}: {bad.sum()} spike(s) have NaN or infinite waveform features "
                f"(first at t={times[bad][0]:.6f} s). Drop or fix those spikes."
            )
        order = np.argsort(times, kind="stable")
        times_out.append(times[order])
        marks_out.append(marks[order])
    return times_out, marks_out


def check_training(is_training, n_pos: int) -> np.ndarray:
    if is_training is None:
        return np.ones(n_pos, dtype=bool)
    is_training = np.asarray(is_training).squeeze()
    if is_training.shape != (n_pos,):
        raise ValueError(f"is_training has {is_training.size} entries but there are {n_pos} position samples.")
    return is_training.astype(bool)


def missing_bins(time: np.ndarray, is_missing=None, position=None, position_time=None) -> np.ndarray:
    """(n_time,) bool: the given ``is_missing``, or'd with the bins whose tracked position
    is NaN (as the reference does).

    ``position`` may be sampled at ``time`` (n_time rows) or at ``position_time``; in the
    latter case a bin is missing when the last position sample at or before its start is
    NaN (the reference accepts such a position but cannot use its NaNs).
    """
    n_time = time.shape[0]
    missing = np.zeros(n_time, dtype=bool)
    if is_missing is not None:
        is_missing = np.asarray(is_missing).squeeze().astype(bool)
        if is_missing.shape != (n_time,):
            raise ValueError(f"is_missing has {is_missing.size} entries but time has {n_time} bins.")
        missing |= is_missing
    if position is None:
        return missing
    position = np.asarray(position, dtype=float)
    position = position[:, np.newaxis] if position.ndim == 1 else position
    untracked = np.any(np.isnan(position), axis=1)
    if position.shape[0] == n_time and (position_time is None or len(position_time) != n_time):
        return missing | untracked
    if position_time is None:
        raise ValueError(
            f"position has {position.shape[0]} rows but time has {n_time} bins: give position sampled at "
            "time, or its position_time too."
        )
    position_time = np.asarray(position_time, dtype=float).ravel()
    if position_time.shape[0] != position.shape[0]:
        raise ValueError(f"position has {position.shape[0]} rows but position_time has {position_time.shape[0]}.")
    sample = np.clip(np.searchsorted(position_time, time, side="right") - 1, 0, position.shape[0] - 1)
    return missing | untracked[sample]


def tracked_position(time: np.ndarray, position, position_time) -> tuple[np.ndarray, np.ndarray]:
    """The tracked samples of a position given at ``time`` or at ``position_time``:
    (n,) times and (n, n_dims) positions, NaN rows dropped (interpolation runs across
    them; their bins are missing anyway)."""
    position = np.asarray(position, dtype=float)
    position = position[:, np.newaxis] if position.ndim == 1 else position
    if position_time is None or len(position_time) != position.shape[0]:
        if position.shape[0] != time.shape[0]:
            raise ValueError(f"position has {position.shape[0]} rows but time has {time.shape[0]} bins.")
        position_time = time
    position_time = np.asarray(position_time, dtype=float).ravel()
    tracked = ~np.any(np.isnan(position), axis=1)
    if tracked.sum() < 2:
        raise ValueError("position has fewer than two tracked samples: the Local state needs the animal's position.")
    return position_time[tracked], position[tracked]


def interpolate_position(position_time: np.ndarray, position: np.ndarray, at: np.ndarray) -> np.ndarray:
    """Linear interpolation of each position column at times ``at``, extrapolated
    linearly beyond the first and last samples (as the reference interpolates)."""
    columns = []
    for d in range(position.shape[1]):
        values = np.interp(at, position_time, position[:, d])
        before, after = at < position_time[0], at > position_time[-1]
        if before.any():
            slope = (position[1, d] - position[0, d]) / (position_time[1] - position_time[0])
            values[before] = position[0, d] + slope * (at[before] - position_time[0])
        if after.any():
            slope = (position[-1, d] - position[-2, d]) / (position_time[-1] - position_time[-2])
            values[after] = position[-1, d] + slope * (at[after] - position_time[-1])
        columns.append(values)
    return np.column_stack(columns)


def spike_time_bins(spike_times: np.ndarray, time: np.ndarray, bounds: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Time bin of each spike, as the reference bins them, within each decoded interval.

    Within an interval of bins [a, b): bin i holds the spikes with time[i] <= s < time[i+1]
    for i < b - 2, bin b - 2 also those at exactly time[b - 1], and the last bin none;
    spikes outside [time[a], time[b - 1]] are dropped. (The reference digitizes spike
    times against time[1:-1].)

    spike_times : (n,) sorted; bounds : [0, ..., n_time], the intervals' first bins.
    returns (kept (n,) bool, bins (n_kept,) int).
    """
    kept = np.zeros(spike_times.shape[0], dtype=bool)
    bins = []
    for a, b in zip(bounds[:-1], bounds[1:]):
        lo = np.searchsorted(spike_times, time[a], side="left")
        hi = np.searchsorted(spike_times, time[b - 1], side="right")
        kept[lo:hi] = True
        bins.append(a + np.searchsorted(time[a + 1 : b - 1], spike_times[lo:hi], side="right"))
    return kept, (np.concatenate(bins) if bins else np.zeros(0, dtype=np.int64)).astype(np.int64)


def interval_bounds(labels: np.ndarray) -> list[int]:
    """[0, first bin of each later interval, n_time] for runs of equal labels."""
    return [0, *(np.flatnonzero(np.diff(labels)) + 1).tolist(), labels.shape[0]]


def encoding_windows(position_time: np.ndarray, is_training: np.ndarray):
    """Encoding spikes fall within a run of training samples, widened by one position
    sample period on each side (the reference's rule). Returns times -> bool mask."""
    edges = np.diff(np.concatenate([[0], is_training.astype(np.int8), [0]]))
    run_start, run_stop = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1) - 1
    step = position_time[1] - position_time[0]
    lows, highs = position_time[run_start] - step, position_time[run_stop] + step

    def mask(times: np.ndarray) -> np.ndarray:
        inside = np.zeros(times.shape[0], dtype=bool)
        for low, high in zip(lows, highs):
            inside[np.searchsorted(times, low, side="left") : np.searchsorted(times, high, side="right")] = True
        return inside

    return mask

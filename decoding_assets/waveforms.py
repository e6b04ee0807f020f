"""Clusterless waveform features from a raw extracellular recording. No Dagster here.

For each electrode group (e.g. a tetrode) of a raw ``ElectricalSeries``, with x_c(t)
the signal of good channel c at sample t:

1. µV: x = (data * channel_conversion * conversion + offset) * 1e6; channels marked bad
   are left out of everything below;
2. referencing (``reference``): each electrode's reference as the file records it
   (``reference: file``, the electrodes column ``ref_elect_id``; -1 or no column: none),
   none, one electrode subtracted from every channel (``reference: <electrode id>``),
   or the group's median across its channels (``reference: median``);
3. band-pass (``filter_band_hz``, ``filter_order``): a Butterworth filter run forward
   and backward, so peaks are not delayed;
4. detection: with e(t) = max_c -x_c(t), the deepest trough across the group at t,
   sample t is a spike when e(t) >= ``threshold_uv`` and e(t) is the largest value of e
   within +-w samples (w = ``exclusion_window_ms``; a tie goes to the earlier sample).
   One event seen on several channels is therefore one spike;
5. artifacts (``artifact_threshold_uv``, off when null): samples where |x_c| reaches the
   threshold on at least ``artifact_channel_fraction`` of the channels at once, and every
   sample within +-``artifact_window_ms`` of them, yield no spikes;
6. features: x_c(t) on every good channel at the detected sample, in µV (negative for a
   trough), as the labs' ``amplitude`` features are.

A recording of several epochs is one series with pauses between them: each contiguous
segment is filtered and searched on its own, so the filter never runs across a pause.
Every step looks at most a filter settling time plus the windows away from a sample,
so a segment is read in chunks that overlap by that margin: a spike belongs to the
chunk whose core holds its sample, and the result equals that of the whole segment
at once. Within a chunk, electrode groups are processed in parallel threads (SciPy's
filter releases the GIL).
"""

from __future__ import annotations

import contextlib
import json
import math
import numbers
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import repeat
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
from scipy import signal

from catalog import storage

from .files import atomic_write

FEATURES_FORMAT_VERSION = 1

DEFAULT_FEATURES_PARAMS: dict[str, Any] = {
    "raw_series_name": None,  # None: the NWB file's only raw ElectricalSeries
    "filter_band_hz": [300.0, 6000.0],
    "filter_order": 5,
    "reference": "file",  # "file" (ref_elect_id), "none", "median", or an electrode id
    "threshold_uv": 100.0,
    "exclusion_window_ms": 0.1,
    "artifact_threshold_uv": None,  # e.g. 1000.0 to exclude artifacts
    "artifact_channel_fraction": 0.75,
    "artifact_window_ms": 1.0,
}

# a chunk's filtered core differs from the whole recording's by less than this
# fraction of the largest signal in its margin
_SETTLING_TOLERANCE = 1e-9


class FeatureExtractionError(ValueError):
    """The raw recording or the parameters do not allow extracting features."""


def is_number(value) -> bool:
    """A finite real number as YAML or JSON give one: not a string, not a boolean."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)) and math.isfinite(value)


def is_positive_integer(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_)) and value >= 1


def check_values(params: dict, checks: dict[str, tuple[Callable[[Any], bool], str]], error=ValueError) -> None:
    """Each value of ``params`` against ``checks`` ({key: (is valid, what is expected)});
    the first invalid one is an error naming its key, what is expected and the value."""
    for key, value in params.items():
        valid, expected = checks[key]
        if not valid(value):
            raise error(f"{key} must be {expected}; got {value!r}.")


def _is_non_negative(value) -> bool:
    return is_number(value) and value >= 0


def _is_electrode_id(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_)) and value >= 0


def _is_band(value) -> bool:
    pair = isinstance(value, (list, tuple)) and len(value) == 2 and all(map(is_number, value))
    return pair and 0 < value[0] < value[1]


_FEATURES_CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "raw_series_name": (lambda v: v is None or (isinstance(v, str) and bool(v)),
                        "null (the file's only raw ElectricalSeries) or the name of one"),
    "filter_band_hz": (_is_band, "[low, high] in Hz with 0 < low < high"),
    "filter_order": (is_positive_integer, "a positive integer"),
    "reference": (lambda v: v in ("file", "none", "median") if isinstance(v, str) else _is_electrode_id(v),
                  "'file', 'none', 'median' or an electrode id"),
    "threshold_uv": (_is_non_negative, "a number >= 0 (µV)"),
    "exclusion_window_ms": (_is_non_negative, "a number >= 0 (ms)"),
    "artifact_threshold_uv": (lambda v: v is None or (is_number(v) and v > 0), "null (off) or a positive number (µV)"),
    "artifact_channel_fraction": (lambda v: is_number(v) and 0 < v <= 1, "a number in (0, 1]"),
    "artifact_window_ms": (_is_non_negative, "a number >= 0 (ms)"),
}  # fmt: skip


def check_features_params(params: dict | None) -> dict:
    """The defaults overridden by ``params``; an unknown key or a value of the wrong kind
    is an error naming the key, what is expected and the value."""
    params = dict(params or {})
    unknown = sorted(set(params) - set(DEFAULT_FEATURES_PARAMS))
    if unknown:
        raise FeatureExtractionError(
            f"Unknown waveform features parameter(s) {unknown}; known: {sorted(DEFAULT_FEATURES_PARAMS)}."
        )
    merged = {**DEFAULT_FEATURES_PARAMS, **params}
    check_values(merged, _FEATURES_CHECKS, FeatureExtractionError)
    merged["filter_band_hz"] = [float(f) for f in merged["filter_band_hz"]]
    return merged


# ---------------------------------------------------------------------- the recording


@dataclass
class RawRecording:
    """A raw extracellular recording, read a block of samples at a time.

    data : (n_samples, n_channels) array-like sliced by rows (an HDF5 dataset or array);
    uv_per_unit : (n_channels,) µV per stored unit; offset_uv : added after scaling;
    timestamps : (n_samples,) s, or None for starting_time + k / sampling_rate;
    electrode_ids, group_names, bad : (n_channels,) per column of data;
    reference_electrode_ids : (n_channels,) each channel's reference electrode as the
        file records it (-1: none), or None when the file records none;
    segments : the contiguous stretches [start, stop) of samples (None: one).
    """

    name: str
    data: Any
    uv_per_unit: np.ndarray
    sampling_rate: float
    electrode_ids: np.ndarray
    group_names: np.ndarray
    bad: np.ndarray
    offset_uv: float = 0.0
    starting_time: float = 0.0
    timestamps: Any = None
    reference_electrode_ids: np.ndarray | None = None
    segments: list[tuple[int, int]] | None = None

    @property
    def n_samples(self) -> int:
        return int(self.data.shape[0])

    def read_uv(self, start: int, stop: int, columns: np.ndarray) -> np.ndarray:
        """Samples [start, stop) of the given columns in µV, (n_columns, stop - start) float32."""
        block = np.asarray(self.data[start:stop])[:, columns]
        scaled = block.astype(np.float32).T * self.uv_per_unit[columns, np.newaxis].astype(np.float32)
        return scaled + np.float32(self.offset_uv) if self.offset_uv else scaled

    def times(self, start: int, stop: int) -> np.ndarray:
        """Times (s) of samples [start, stop)."""
        if self.timestamps is not None:
            return np.asarray(self.timestamps[start:stop], dtype=float)
        return self.starting_time + np.arange(start, stop) / self.sampling_rate


@dataclass
class GroupFeatures:
    """One electrode group's spikes: times (n,) s and features (n, n_channels) µV, one
    column per electrode in ``electrode_ids``; ``message`` says what was unusual."""

    electrode_group_name: str
    times: np.ndarray
    features: np.ndarray
    electrode_ids: list[int]
    bad_electrode_ids: list[int] = field(default_factory=list)
    n_artifact_samples: int = 0
    message: str | None = None


@dataclass
class _GroupPlan:
    name: str
    columns: np.ndarray  # good channels, columns of the recording
    electrode_ids: list[int]
    bad_electrode_ids: list[int]
    rows: np.ndarray | None = None  # their rows in each chunk's block
    reference_columns: np.ndarray | None = None  # per good channel, its reference's column (-1: none)
    reference_rows: np.ndarray | None = None
    times: list = field(default_factory=list)
    features: list = field(default_factory=list)
    n_artifact_samples: int = 0


# ---------------------------------------------------------------------- extraction


def bandpass_sos(params: dict, sampling_rate: float, where: str) -> np.ndarray:
    low, high = params["filter_band_hz"]
    if high >= sampling_rate / 2:
        raise FeatureExtractionError(
            f"{where} is sampled at {sampling_rate:g} Hz, so the band-pass must end below {sampling_rate / 2:g} Hz; "
            f"filter_band_hz is {params['filter_band_hz']}. Lower its upper edge."
        )
    return signal.butter(int(params["filter_order"]), [low, high], btype="bandpass", fs=sampling_rate, output="sos")


def settling_samples(sos: np.ndarray, tolerance: float = _SETTLING_TOLERANCE) -> int:
    """Samples for the filter's slowest pole to decay below ``tolerance``: the overlap a
    chunk needs for its core to be filtered as the whole recording would be."""
    radius = max(np.abs(np.roots(section[3:])).max() for section in sos)
    return math.ceil(math.log(tolerance) / math.log(radius))


def detect_spikes(
    x: np.ndarray, sos: np.ndarray, params: dict, sampling_rate: float, core: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, int]:
    """Filter one group's block and detect its spikes within ``core``.

    x : (n_channels, n_samples) µV, referenced. Returns the detected samples (n,)
    (indices into the block), the features (n, n_channels) float32 and the number of
    samples of the core excluded as artifacts.
    """
    y = signal.sosfiltfilt(sos, x, axis=1)
    trough = (-y).max(axis=0)  # e(t)
    start, stop = core
    candidates = np.flatnonzero(trough[start:stop] >= params["threshold_uv"]) + start
    depth = trough[candidates]
    for k in range(1, _samples(params["exclusion_window_ms"], sampling_rate) + 1):
        before, after = candidates - k, candidates + k
        keep = np.ones(candidates.size, dtype=bool)
        inside = before >= 0
        keep[inside] &= depth[inside] > trough[before[inside]]
        inside = after < trough.size
        keep[inside] &= depth[inside] >= trough[after[inside]]
        candidates, depth = candidates[keep], depth[keep]
    n_artifact = 0
    if params["artifact_threshold_uv"] is not None:
        n_needed = max(1, math.ceil(params["artifact_channel_fraction"] * y.shape[0] - 1e-9))
        hit = (np.abs(y) >= params["artifact_threshold_uv"]).sum(axis=0) >= n_needed
        reach = _samples(params["artifact_window_ms"], sampling_rate)
        excluded = np.convolve(hit.astype(np.int32), np.ones(2 * reach + 1, dtype=np.int32), mode="same") > 0
        candidates = candidates[~excluded[candidates]]
        n_artifact = int(excluded[start:stop].sum())
    return candidates, y[:, candidates].T.astype(np.float32), n_artifact


def median_peak_uv(features: np.ndarray) -> float:
    """The median over spikes of the largest |amplitude| across channels (NaN without spikes)."""
    return float(np.median(np.abs(features).max(axis=1))) if features.size else float("nan")


def _samples(ms: float, sampling_rate: float) -> int:
    return round(float(ms) * 1e-3 * sampling_rate)


def extract_waveform_features(
    recording: RawRecording,
    params: dict | None = None,
    electrode_group_names: list[str] | None = None,
    chunk_duration_s: float = 2.0,
    n_workers: int | None = None,
    progress: bool = False,
) -> list[GroupFeatures]:
    """Detect spikes and measure their amplitudes, per electrode group (default: every
    group of the recording, in name order), reading ``chunk_duration_s`` at a time.

    A group whose channels are all bad is returned with no spikes and a message, as is
    a group where nothing crossed the threshold.
    """
    params = check_features_params(params)
    where = f"raw series {recording.name!r}"
    fs = float(recording.sampling_rate)
    sos = bandpass_sos(params, fs, where)
    plans, results = _plan_groups(recording, electrode_group_names, where)
    active = [p for p in plans if p.columns.size]
    for plan in active:
        plan.reference_columns = _reference_columns(recording, params, plan, where)
    needed = [p.columns for p in active] + [p.reference_columns[p.reference_columns >= 0] for p in active
                                            if p.reference_columns is not None]  # fmt: skip
    columns = np.unique(np.concatenate(needed)).astype(int) if needed else np.zeros(0, int)
    for plan in active:
        plan.rows = np.searchsorted(columns, plan.columns)
        if plan.reference_columns is not None:
            plan.reference_rows = np.where(plan.reference_columns >= 0, np.searchsorted(columns, plan.reference_columns), -1)
    margin = settling_samples(sos) + _samples(params["exclusion_window_ms"], fs) + _samples(params["artifact_window_ms"], fs) + 1
    chunk = max(1, int(chunk_duration_s * fs))
    shortest = 3 * (2 * len(sos) + 1)  # what the forward-backward filter pads with
    segments = recording.segments or [(0, recording.n_samples)]
    chunks = [(start, min(stop, start + chunk), lo, stop) for lo, stop in segments if stop - lo > shortest
              for start in range(lo, stop, chunk)] if active else []  # fmt: skip
    if progress:
        from tqdm.auto import tqdm

        chunks = tqdm(chunks, desc=f"Waveform features ({recording.name})", unit="chunk")

    def process(plan: _GroupPlan, block: np.ndarray, core: tuple[int, int]):
        x = block[plan.rows]
        if plan.reference_rows is not None:
            referenced = plan.reference_rows >= 0
            x[referenced] -= block[plan.reference_rows[referenced]]
        elif params["reference"] == "median" and x.shape[0] > 1:
            x = x - np.median(x, axis=0)
        return detect_spikes(x, sos, params, fs, core)

    with ThreadPoolExecutor(max_workers=n_workers) as pool:
        for start, stop, segment_start, segment_stop in chunks:
            # the margins stop at the segment's ends: nothing is filtered across a pause
            lo, hi = max(segment_start, start - margin), min(segment_stop, stop + margin)
            block = recording.read_uv(lo, hi, columns)
            times = recording.times(start, stop)
            core = (start - lo, stop - lo)
            found = pool.map(process, active, repeat(block), repeat(core))
            for plan, (samples, features, n_artifact) in zip(active, found):
                plan.times.append(times[samples - core[0]])
                plan.features.append(features)
                plan.n_artifact_samples += n_artifact

    for plan in active:
        times = np.concatenate(plan.times) if plan.times else np.zeros(0)
        features = np.concatenate(plan.features) if plan.features else np.zeros((0, plan.columns.size), np.float32)
        message = None
        if times.size == 0:
            message = (
                f"No spikes crossed {params['threshold_uv']:g} µV on electrode group {plan.name} in {where}; "
                "it is kept with no spikes (check the channels, or lower threshold_uv)."
            )
        results[plan.name] = GroupFeatures(
            electrode_group_name=plan.name,
            times=times,
            features=features,
            electrode_ids=plan.electrode_ids,
            bad_electrode_ids=plan.bad_electrode_ids,
            n_artifact_samples=plan.n_artifact_samples,
            message=message,
        )
    return [results[p.name] for p in plans]


def _plan_groups(recording: RawRecording, names: list[str] | None, where: str) -> tuple[list[_GroupPlan], dict]:
    group_names = np.asarray(recording.group_names).astype(str)
    available = sorted({str(g) for g in group_names})
    names = available if names is None else [str(n) for n in names]
    missing = sorted(set(names) - set(available))
    if missing:
        raise FeatureExtractionError(f"{where} has no channels of electrode group(s) {missing}; it has {available}.")
    plans, done = [], {}
    for name in names:
        columns = np.flatnonzero(group_names == name)
        bad = np.asarray(recording.bad, dtype=bool)[columns]
        ids = np.asarray(recording.electrode_ids)[columns]
        plan = _GroupPlan(name, columns[~bad], [int(i) for i in ids[~bad]], [int(i) for i in ids[bad]])
        plans.append(plan)
        if not plan.columns.size:
            done[name] = GroupFeatures(
                electrode_group_name=name, times=np.zeros(0), features=np.zeros((0, 0), np.float32), electrode_ids=[],
                bad_electrode_ids=plan.bad_electrode_ids,
                message=f"Every channel of electrode group {name} in {where} is marked bad; no features extracted.",
            )  # fmt: skip
    return plans, done


def _reference_columns(recording: RawRecording, params: dict, plan: _GroupPlan, where: str) -> np.ndarray | None:
    """Per good channel of a group, the recording column of its reference electrode
    (-1: not referenced); None when no channel is referenced to an electrode."""
    reference = params["reference"]
    if reference in ("none", "median"):
        return None
    ids = np.asarray(recording.electrode_ids)
    if reference == "file":
        if recording.reference_electrode_ids is None:
            return None
        wanted = np.asarray(recording.reference_electrode_ids, dtype=int)[plan.columns]
    else:
        wanted = np.full(plan.columns.size, int(reference))
    out = np.full(plan.columns.size, -1)
    for k, electrode in enumerate(wanted):
        if electrode < 0:
            continue
        matches = np.flatnonzero(ids == electrode)
        if not matches.size and reference == "file":
            raise FeatureExtractionError(
                f"Electrode group {plan.name}, electrode {plan.electrode_ids[k]}: its ref_elect_id {electrode} is not a "
                f"channel of {where}. Set the waveform features parameter reference to 'none', 'median' or an electrode id."
            )
        if not matches.size:
            raise FeatureExtractionError(f"Reference electrode {electrode} is not a channel of {where}.")
        if reference != "file" and recording.bad[matches[0]]:
            raise FeatureExtractionError(f"Reference electrode {electrode} of {where} is marked bad; choose another.")
        out[k] = matches[0]
    return out if (out >= 0).any() else None


# ---------------------------------------------------------------------- files


def save_features(features: GroupFeatures, path: str | Path, attrs: dict) -> Path:
    """Write one group's features to netCDF (temporary name, then renamed).

    Variables ``spike_times`` (spike) s and ``features`` (spike, electrode) µV; the
    ``electrode`` coordinate holds the electrode ids; ``attrs`` (JSON-able) record where
    the features came from."""
    ds = xr.Dataset(
        {
            "spike_times": ("spike", np.asarray(features.times, dtype=float)),
            "features": (("spike", "electrode"), np.asarray(features.features, dtype=np.float32)),
        },
        coords={"electrode": np.asarray(features.electrode_ids, dtype=np.int64)},
        attrs={
            "features_format_version": FEATURES_FORMAT_VERSION,
            "electrode_group_name": features.electrode_group_name,
            "bad_electrode_ids": json.dumps(features.bad_electrode_ids),
            "n_artifact_samples": int(features.n_artifact_samples),
            **{k: v if isinstance(v, (str, int, float)) else json.dumps(v) for k, v in attrs.items()},
        },
    )
    encoding = {"features": {"zlib": True, "complevel": 4}} if len(features.times) else {}
    with atomic_write(path, suffix=".tmp.nc") as tmp:
        ds.to_netcdf(tmp, engine="h5netcdf", encoding=encoding)
    return Path(path)


def load_features(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Spike times (n,) s and features (n, n_channels) µV from a features file, local or
    in an object store (read through a file object)."""
    with contextlib.ExitStack() as stack:
        source = stack.enter_context(storage.open_file(path)) if storage.is_url(path) else path
        ds = stack.enter_context(xr.open_dataset(source, engine="h5netcdf"))
        version = int(ds.attrs.get("features_format_version", -1))
        if version != FEATURES_FORMAT_VERSION:
            raise FeatureExtractionError(
                f"{path} has features format version {version}; this decoding_assets reads {FEATURES_FORMAT_VERSION}."
            )
        return ds["spike_times"].values.astype(float), ds["features"].values.astype(float)

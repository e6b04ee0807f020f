"""NWB files shaped like those the Frank lab's converter ``trodes-to-nwb`` writes, with a
simulated animal and place cells whose spikes are embedded in the raw signal.

For tests: ``write_lab_session(path, spec)`` writes one recording day and returns its
ground truth. The layout follows the converter (``trodes_to_nwb`` convert_yaml.py,
convert_ephys.py, convert_position.py, convert_intervals.py) and uses the real classes
of its extension ``ndx-franklab-novela``; the file caches that extension's schema, so
plain ``NWBHDF5IO(path, "r", load_namespaces=True)`` reads it back.

What is written (``N`` = the epoch's number, the integer before the ``_`` of its tag,
e.g. 2 for ``02_r1``; the converter numbers epochs from the recording files' names)::

    acquisition/e-series            ElectricalSeries int16 (n_samples, 4 * n_tetrodes), µV
                                    (conversion 1e-6, offset 0), timestamps float64 Unix s,
                                    all epochs back to back with the gaps between them
    general/devices                 "camera_device <id>" (CameraDevice), "probe <t>" (Probe
                                    with Shank "0" of ShanksElectrode "0".."3"),
                                    "dataacq_device0", "header_device"
    general/extracellular_ephys/<t> NwbElectrodeGroup per tetrode, t = 0, 1, ...
    electrodes                      + hwChan, ntrode_id, channel_id, bad_channel,
                                    probe_shank, probe_electrode, ref_elect_id
    intervals/epochs                one row per epoch, tags [tag]
    processing/tasks/task_<i>       i = 0, 1, ...: one row; camera_id and task_epochs are
                                    (1, k) int arrays
    processing/behavior/position    Position: led_<j>_series_<N>, uint16 pixels (n, 2),
                                    conversion = that camera's metres per pixel; (0, 0)
                                    where the LED was lost; both LEDs of an epoch share
                                    their timestamps
    processing/position_frame_index/series_<N>, processing/non_repeat_timestamp_labels/series_<N>
    intervals/trials                only with ``with_trials`` (not written by the converter)

Not written (the converter writes them; nothing here needs them): sample_count, analog,
behavioral_events (DIO), video_files, associated_files.

The simulation: in a moving epoch the animal forages in a square open field (the
project's ``simulate_open_field`` path); each tetrode holds place cells and one
untuned unit, each with a distinct 4-channel template whose trough after a 300-6000 Hz
band-pass is 150-400 µV on its largest channel; white noise 12 µV rms; a theta/slow
LFP; a DC offset of a few hundred µV per epoch (alternating in sign, so filtering
across a gap makes a large transient). In a sleep epoch (``moving=False``) the animal
sits still and every unit fires at 0.1-0.4 Hz. No spike lies within 50 ms of an epoch
edge. Bad channels carry mains hum and extra broadband noise. With ``ref_elect_id >=
0`` every channel carries a common noise (broadband plus bursts) that the reference
channel carries too, and the reference channel carries no spikes, so subtracting it
removes the common noise and keeps the spikes. LED 0 is the front LED, LED 1 the back
one, 2.5 cm either side of the head along its heading.
"""

from __future__ import annotations

import datetime as dt
import itertools
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import signal
from scipy.ndimage import gaussian_filter1d

from decoding_assets.decoder.simulate import simulate_open_field, spike_waveform

__all__ = ["LabEpoch", "LabSessionSpec", "LabSessionTruth", "expected_trough_gain", "write_lab_session"]

SAMPLING_RATE = 30_000.0
FRAME_RATE = 30.0
CHANNELS_PER_TETRODE = 4
TRUTH_RATE = 500.0  # Hz, the ground-truth head position's sampling
EDGE_MARGIN_S = 0.05  # no spike this close to an epoch's edge
MIN_SPIKE_SEPARATION_S = 0.002  # per tetrode, so every spike is seen on its own
NOISE_UV = 12.0
LED_HALF_SEPARATION_CM = 2.5
ARENA_SIZE_CM = 90.0
ARENA_OFFSET_CM = (12.0, 10.0)  # the open field's corner in the camera frame
SLEEP_BOX_CENTER_CM = (28.0, 24.0)
TETRODE_REL = ((6.25, 0.0, 6.25), (-6.25, 0.0, 6.25), (-6.25, 0.0, -6.25), (6.25, 0.0, -6.25))  # tetrode_12.5.yml


@dataclass(frozen=True)
class LabEpoch:
    """One epoch of the day. ``tag`` is ``NN_<free text>`` (``01_s1``, ``02_r1``, ``01_a1``)."""

    tag: str
    duration_s: float
    task_name: str
    task_environment: str
    camera_id: int
    moving: bool

    @property
    def number(self) -> int:
        """The converter's epoch number: the integer before the first ``_`` of the tag."""
        return int(self.tag.split("_", 1)[0])


DEFAULT_EPOCHS = (
    LabEpoch("01_s1", 20.0, "sleep", "sleep box", 0, False),
    LabEpoch("02_r1", 60.0, "openfield", "open field", 1, True),
)


@dataclass(frozen=True)
class LabSessionSpec:
    epochs: tuple[LabEpoch, ...] = DEFAULT_EPOCHS
    gap_s: float = 10.0
    n_tetrodes: int = 4
    # per camera id; a mapping or a tuple of (camera_id, metres per pixel) pairs
    meters_per_pixel: Mapping[int, float] | tuple[tuple[int, float], ...] = ((0, 0.0025), (1, 0.002))
    n_leds: int = 2
    lost_led_fraction: float = 0.02
    tracking_gap: tuple[float, float] | None = (20.0, 21.5)
    bad_channel_as_strings: bool = False
    bad_channels: tuple[int, ...] = (6,)
    ref_elect_id: int = -1
    with_tasks: bool = True
    with_trials: bool = False
    start_unix_s: float = 1.687e9
    seed: int = 0

    def camera_meters_per_pixel(self) -> dict[int, float]:
        return {int(k): float(v) for k, v in dict(self.meters_per_pixel).items()}


@dataclass
class LabSessionTruth:
    """Ground truth of a written session.

    epoch_times: tag -> (start, stop) Unix s (first and last e-series sample of the epoch);
    head_time (n,) Unix s at 500 Hz from the first epoch's start to the last's stop, and
    head_cm (n, 2) the true head position in cm in the camera frame (pixels * conversion
    * 100), NaN between epochs; spike_times[t]: Unix s of every spike's trough sample on
    tetrode t (exactly an e-series timestamp); lost_frames: series name -> bool mask of
    frames written as (0, 0).

    Extras: spike_units[t] (unit index on the tetrode per spike), spike_amplitudes_uv[t]
    (n, 4): each spike's expected trough per channel (negative µV) after a 300-6000 Hz
    order-5 forward-backward Butterworth band-pass, noise excluded;
    place_field_centers_cm[t] (n_units, 2) in the camera-frame cm of the moving epochs
    (NaN for the untuned unit); series_epoch: series name -> epoch tag;
    electrode_tetrode (n_channels,) tetrode of each e-series column.
    """

    epoch_times: dict[str, tuple[float, float]]
    head_time: np.ndarray
    head_cm: np.ndarray
    spike_times: list[np.ndarray]
    lost_frames: dict[str, np.ndarray]
    sampling_rate: float
    spike_units: list[np.ndarray] = field(default_factory=list)
    spike_amplitudes_uv: list[np.ndarray] = field(default_factory=list)
    place_field_centers_cm: list[np.ndarray] = field(default_factory=list)
    series_epoch: dict[str, str] = field(default_factory=dict)
    electrode_tetrode: np.ndarray | None = None


# ----------------------------------------------------------------------------- checks


def _check(spec: LabSessionSpec) -> dict[int, float]:
    if not spec.epochs:
        raise ValueError("LabSessionSpec.epochs is empty.")
    numbers = []
    for epoch in spec.epochs:
        try:
            numbers.append(epoch.number)
        except ValueError:
            raise ValueError(f"Epoch tag {epoch.tag!r} must start with its number, e.g. '01_s1'.") from None
        if epoch.duration_s <= 2 * EDGE_MARGIN_S + 1.0:
            raise ValueError(f"Epoch {epoch.tag} is too short ({epoch.duration_s} s).")
    if any(b <= a for a, b in itertools.pairwise(numbers)):
        raise ValueError(f"Epoch numbers must increase in time order: {[e.tag for e in spec.epochs]}.")
    mpp = spec.camera_meters_per_pixel()
    for epoch in spec.epochs:
        if epoch.camera_id not in mpp:
            raise ValueError(f"Epoch {epoch.tag} uses camera {epoch.camera_id}, which has no meters_per_pixel.")
    n_channels = CHANNELS_PER_TETRODE * spec.n_tetrodes
    if spec.n_tetrodes < 1:
        raise ValueError("n_tetrodes must be >= 1.")
    if spec.n_leds not in (1, 2):
        raise ValueError("n_leds must be 1 or 2.")
    for channel in spec.bad_channels:
        if not 0 <= channel < n_channels:
            raise ValueError(f"Bad channel {channel} is not an electrode id (0..{n_channels - 1}).")
    if not -1 <= spec.ref_elect_id < n_channels:
        raise ValueError(f"ref_elect_id {spec.ref_elect_id} is not -1 or an electrode id.")
    if spec.gap_s <= 0:
        raise ValueError("gap_s must be > 0.")
    return mpp


# ------------------------------------------------------------------------- simulation


def expected_trough_gain(sampling_rate: float = SAMPLING_RATE) -> float:
    """The depth, after a 300-6000 Hz order-5 forward-backward band-pass, of the
    project's spike waveform with a raw trough of 1."""
    shape, _ = spike_waveform(sampling_rate)
    sos = signal.butter(5, [300.0, 6000.0], btype="bandpass", fs=sampling_rate, output="sos")
    padded = np.concatenate([np.zeros(300), shape, np.zeros(300)])
    return float(-signal.sosfiltfilt(sos, padded).min())


def _templates(n_units: int, rng) -> np.ndarray:
    """(n_units, 4) filtered trough depths in µV, distinct between units: largest
    channel 150-400 µV, cycling through the channels, falling off on the others."""
    best, best_gap = None, -1.0
    for _ in range(200):  # keep the draw whose closest pair of units is farthest apart
        peak = rng.uniform(150.0, 400.0, n_units)
        nearest = (rng.integers(0, CHANNELS_PER_TETRODE) + np.arange(n_units)) % CHANNELS_PER_TETRODE
        distance = np.abs(np.arange(CHANNELS_PER_TETRODE)[np.newaxis] - nearest[:, np.newaxis])
        falloff = rng.uniform(0.3, 0.75, (n_units, 1)) ** distance
        templates = peak[:, np.newaxis] * falloff * rng.uniform(0.85, 1.15, (n_units, CHANNELS_PER_TETRODE))
        templates[np.arange(n_units), nearest] = peak
        gaps = np.linalg.norm(templates[:, np.newaxis] - templates[np.newaxis], axis=-1)
        closest = gaps[np.triu_indices(n_units, 1)].min() if n_units > 1 else np.inf
        if closest > best_gap:
            best, best_gap = templates, closest
        if closest > 50.0:
            break
    return best


@dataclass
class _Tetrode:
    templates: np.ndarray  # (n_units, 4) filtered trough depth µV (positive)
    centers: np.ndarray  # (n_units, 2) cm camera frame, NaN for untuned units
    widths: np.ndarray
    peaks: np.ndarray  # Hz
    sleep_rates: np.ndarray  # Hz


def _make_tetrodes(n_tetrodes: int, rng) -> list[_Tetrode]:
    tetrodes = []
    lo = np.asarray(ARENA_OFFSET_CM) + 5.0
    hi = np.asarray(ARENA_OFFSET_CM) + ARENA_SIZE_CM - 5.0
    for _ in range(n_tetrodes):
        n_place = int(rng.integers(6, 10))
        n_units = n_place + 1  # plus one untuned unit
        centers = np.vstack([rng.uniform(lo, hi, (n_place, 2)), np.full((1, 2), np.nan)])
        widths = np.append(rng.uniform(9.0, 14.0, n_place), np.nan)
        peaks = np.append(rng.uniform(10.0, 30.0, n_place), rng.uniform(2.0, 4.0))
        tetrodes.append(
            _Tetrode(_templates(n_units, rng), centers, widths, peaks, rng.uniform(0.1, 0.4, n_units))
        )
    return tetrodes


def _epoch_path(epoch: LabEpoch, n_truth: int, seed: int, rng) -> np.ndarray:
    """(n_truth, 2) head position in camera-frame cm at TRUTH_RATE over the epoch."""
    if epoch.moving:
        sim = simulate_open_field(
            duration=n_truth / TRUTH_RATE + 1.0,
            n_tetrodes=0,
            arena_size=ARENA_SIZE_CM,
            sampling_frequency=TRUTH_RATE,
            seed=seed,
        )
        path = gaussian_filter1d(sim.position[:n_truth], sigma=0.02 * TRUTH_RATE, axis=0, mode="nearest")
        return path + np.asarray(ARENA_OFFSET_CM)
    drift = gaussian_filter1d(np.cumsum(rng.normal(0.0, 0.05, (n_truth, 2)), axis=0), 2.0 * TRUTH_RATE, axis=0)
    return np.asarray(SLEEP_BOX_CENTER_CM) + np.clip(drift, -1.5, 1.5)


def _heading(path: np.ndarray, rng) -> np.ndarray:
    velocity = np.gradient(gaussian_filter1d(path, 0.1 * TRUTH_RATE, axis=0, mode="nearest"), axis=0) * TRUTH_RATE
    speed = np.linalg.norm(velocity, axis=1)
    angle = np.arctan2(velocity[:, 1], velocity[:, 0])
    held = np.where(speed > 3.0, angle, np.nan)
    if np.isnan(held[0]):
        held[0] = rng.uniform(-np.pi, np.pi)
    index = np.where(~np.isnan(held), np.arange(held.size), 0)
    np.maximum.accumulate(index, out=index)  # hold the last heading while still
    return held[index]


def _rates(tetrode: _Tetrode, path: np.ndarray, moving: bool) -> np.ndarray:
    """(n_truth, n_units) Hz."""
    n = path.shape[0]
    if not moving:
        return np.broadcast_to(tetrode.sleep_rates, (n, tetrode.sleep_rates.size))
    speed = np.linalg.norm(np.gradient(path, axis=0), axis=1) * TRUTH_RATE
    running = np.clip(speed / 5.0, 0.1, 1.0)[:, np.newaxis]
    tuned = np.isfinite(tetrode.widths)
    rates = np.empty((n, tetrode.peaks.size))
    d2 = ((path[:, np.newaxis, :] - tetrode.centers[np.newaxis, tuned]) ** 2).sum(axis=-1)
    rates[:, tuned] = tetrode.peaks[tuned] * np.exp(-0.5 * d2 / tetrode.widths[tuned] ** 2) * running + 0.1
    rates[:, ~tuned] = tetrode.peaks[~tuned]
    return rates


def _spike_samples(rates: np.ndarray, n_samples: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """Poisson spikes from (n_truth, n_units) rates: trough sample indices within the
    epoch (at least EDGE_MARGIN_S from either edge, MIN_SPIKE_SEPARATION_S apart) and units."""
    per_bin = SAMPLING_RATE / TRUTH_RATE
    counts = rng.poisson(rates / TRUTH_RATE)
    bins, units = np.nonzero(counts)
    samples = np.floor((bins + rng.uniform(0.0, 1.0, bins.size)) * per_bin).astype(np.int64)
    margin = int(np.ceil(EDGE_MARGIN_S * SAMPLING_RATE)) + 1
    inside = (samples >= margin) & (samples < n_samples - margin)
    samples, units = samples[inside], units[inside]
    order = np.argsort(samples, kind="stable")
    samples, units = samples[order], units[order]
    keep = np.ones(samples.size, dtype=bool)
    min_gap = int(MIN_SPIKE_SEPARATION_S * SAMPLING_RATE)
    last = -(10**9)
    for i, s in enumerate(samples):  # a few thousand spikes: a loop is fine
        if s - last < min_gap:
            keep[i] = False
        else:
            last = s
    return samples[keep], units[keep]


def _epoch_signal(
    n: int,
    epoch_index: int,
    moving: bool,
    spikes: list[tuple[np.ndarray, np.ndarray]],  # per tetrode: samples, raw trough µV (n, 4)
    spec: LabSessionSpec,
    rng,
) -> np.ndarray:
    """(n, n_channels) int16 µV for one epoch."""
    n_channels = CHANNELS_PER_TETRODE * spec.n_tetrodes
    t = (np.arange(n) / SAMPLING_RATE).astype(np.float32)
    x = rng.standard_normal((n, n_channels), dtype=np.float32)
    x *= np.float32(NOISE_UV)
    # DC offset: a few hundred µV, of alternating sign between epochs, per channel
    base = (250.0 + 150.0 * rng.random()) * (1.0 if epoch_index % 2 == 0 else -1.0)
    x += (base + rng.normal(0.0, 40.0, n_channels)).astype(np.float32)
    shape, center = spike_waveform(SAMPLING_RATE)
    for tet in range(spec.n_tetrodes):
        cols = slice(CHANNELS_PER_TETRODE * tet, CHANNELS_PER_TETRODE * (tet + 1))
        if moving:
            lfp = 70.0 * np.sin(2 * np.pi * rng.uniform(7.0, 9.0) * t + rng.uniform(0, 2 * np.pi))
        else:
            lfp = 110.0 * np.sin(2 * np.pi * rng.uniform(1.0, 3.0) * t + rng.uniform(0, 2 * np.pi))
        lfp += 40.0 * np.sin(2 * np.pi * 0.3 * t + rng.uniform(0, 2 * np.pi))
        x[:, cols] += lfp.astype(np.float32)[:, np.newaxis] * rng.uniform(0.9, 1.1, CHANNELS_PER_TETRODE).astype(
            np.float32
        )
        samples, troughs = spikes[tet]
        if samples.size:
            rows = (samples - center)[:, np.newaxis] + np.arange(shape.size)[np.newaxis]
            for c in range(CHANNELS_PER_TETRODE):
                values = (troughs[:, c : c + 1] * shape).ravel().astype(np.float32)
                np.add.at(x[:, cols.start + c], rows.ravel(), values)
    tt = np.arange(n) / SAMPLING_RATE
    for channel in spec.bad_channels:  # mains hum and broadband noise
        hum = 450.0 * np.sin(2 * np.pi * 60.0 * tt + rng.uniform(0, 2 * np.pi))
        hum += 120.0 * np.sin(2 * np.pi * 180.0 * tt + rng.uniform(0, 2 * np.pi))
        hum += 40.0 * np.sin(2 * np.pi * 300.0 * tt + rng.uniform(0, 2 * np.pi))
        x[:, channel] += (hum + rng.normal(0.0, 45.0, n)).astype(np.float32)
    if spec.ref_elect_id >= 0:  # common noise on every channel, the reference included
        common = rng.normal(0.0, 30.0, n)
        n_bursts = max(1, int(n / SAMPLING_RATE / 2.0))
        width = int(0.03 * SAMPLING_RATE)
        window = np.hanning(width)
        for start in rng.integers(0, n - width, n_bursts):
            common[start : start + width] += rng.normal(0.0, 150.0, width) * window
        x += common.astype(np.float32)[:, np.newaxis]
    return np.clip(np.round(x), -32768, 32767).astype(np.int16)


def _lost_isolated(n: int, fraction: float, rng) -> np.ndarray:
    lost = rng.random(n) < fraction
    lost[1:] &= ~lost[:-1]  # isolated frames only
    return lost


# ------------------------------------------------------------------------------ write


def write_lab_session(path: str | Path, spec: LabSessionSpec = LabSessionSpec()) -> LabSessionTruth:
    """Write one simulated recording day as trodes-to-nwb would, and return its truth."""
    from hdmf.backends.hdf5.h5_utils import H5DataIO
    from hdmf.common.table import DynamicTable, VectorData
    from ndx_franklab_novela import (
        CameraDevice,
        DataAcqDevice,
        HeaderDevice,
        NwbElectrodeGroup,
        Probe,
        Shank,
        ShanksElectrode,
    )
    from pynwb import NWBHDF5IO, NWBFile, TimeSeries
    from pynwb.behavior import Position
    from pynwb.device import DeviceModel
    from pynwb.ecephys import ElectricalSeries
    from pynwb.file import ProcessingModule, Subject

    mpp = _check(spec)
    path = Path(path)
    rng = np.random.default_rng(spec.seed)
    n_channels = CHANNELS_PER_TETRODE * spec.n_tetrodes
    gain = expected_trough_gain()
    tetrodes = _make_tetrodes(spec.n_tetrodes, rng)
    spike_channels = np.ones(n_channels, dtype=bool)
    if spec.ref_elect_id >= 0:
        spike_channels[spec.ref_elect_id] = False  # the reference wire sits where no cell is

    # ---- time line: epochs back to back, gap_s between one's last sample and the next's first
    epoch_samples = [round(e.duration_s * SAMPLING_RATE) for e in spec.epochs]
    starts, t0 = [], float(spec.start_unix_s)
    for n in epoch_samples:
        starts.append(t0)
        t0 = t0 + (n - 1) / SAMPLING_RATE + spec.gap_s
    timestamps = np.concatenate([s + np.arange(n) / SAMPLING_RATE for s, n in zip(starts, epoch_samples)])
    offsets = np.concatenate([[0], np.cumsum(epoch_samples)])
    epoch_times = {
        e.tag: (float(timestamps[offsets[i]]), float(timestamps[offsets[i + 1] - 1])) for i, e in enumerate(spec.epochs)
    }

    data = np.empty((timestamps.size, n_channels), dtype=np.int16)
    head_time = np.arange(int(np.floor((timestamps[-1] - timestamps[0]) * TRUTH_RATE)) + 1) / TRUTH_RATE + timestamps[0]
    head_cm = np.full((head_time.size, 2), np.nan)
    spike_times = [[] for _ in range(spec.n_tetrodes)]
    spike_units = [[] for _ in range(spec.n_tetrodes)]
    spike_amps = [[] for _ in range(spec.n_tetrodes)]
    lost_frames: dict[str, np.ndarray] = {}
    series_epoch: dict[str, str] = {}
    position_series = []  # (name, pixels, conversion, frame times)
    frame_series = []  # (epoch number, frame times)

    for i, epoch in enumerate(spec.epochs):
        n = epoch_samples[i]
        start, stop = epoch_times[epoch.tag]
        n_truth = int(np.floor((stop - start) * TRUTH_RATE)) + 1
        path_cm = _epoch_path(epoch, n_truth, spec.seed * 1000 + i, rng)
        truth_t = start + np.arange(n_truth) / TRUTH_RATE
        # the truth grid: fill the global rows that fall inside this epoch
        rows = np.flatnonzero((head_time >= start) & (head_time <= stop))
        head_cm[rows, 0] = np.interp(head_time[rows], truth_t, path_cm[:, 0])
        head_cm[rows, 1] = np.interp(head_time[rows], truth_t, path_cm[:, 1])

        # spikes
        epoch_spikes = []
        for tet, tetrode in enumerate(tetrodes):
            samples, units = _spike_samples(_rates(tetrode, path_cm, epoch.moving), n, rng)
            depth = tetrode.templates[units] * rng.normal(1.0, 0.05, (units.size, 1))
            depth = depth * spike_channels[CHANNELS_PER_TETRODE * tet : CHANNELS_PER_TETRODE * (tet + 1)]
            epoch_spikes.append((samples, depth / gain))
            spike_times[tet].append(timestamps[offsets[i] + samples])
            spike_units[tet].append(units)
            spike_amps[tet].append(-depth)
        data[offsets[i] : offsets[i + 1]] = _epoch_signal(n, i, epoch.moving, epoch_spikes, spec, rng)

        # camera frames at ~30 Hz, within the epoch
        n_frames = int(np.floor((stop - start - 0.05) * FRAME_RATE))
        frame_t = start + rng.uniform(0.005, 0.03) + np.arange(n_frames) / FRAME_RATE + rng.normal(0.0, 3e-4, n_frames)
        frame_t = np.sort(frame_t[frame_t < stop])
        head = np.column_stack([np.interp(frame_t, truth_t, path_cm[:, k]) for k in range(2)])
        angle = np.interp(frame_t, truth_t, np.unwrap(_heading(path_cm, rng)))
        direction = np.column_stack([np.cos(angle), np.sin(angle)])
        if spec.n_leds == 2:
            leds = [head + LED_HALF_SEPARATION_CM * direction, head - LED_HALF_SEPARATION_CM * direction]
        else:
            leds = [head.copy()]
        both_lost = np.zeros(frame_t.size, dtype=bool)
        if epoch.moving and spec.tracking_gap is not None:
            since = frame_t - start
            both_lost = (since >= spec.tracking_gap[0]) & (since < spec.tracking_gap[1])
        centimetres_per_pixel = mpp[epoch.camera_id] * 100.0
        for j, led in enumerate(leds):
            led = led + rng.normal(0.0, 0.3, led.shape)
            pixels = np.clip(np.round(led / centimetres_per_pixel), 1, np.iinfo(np.uint16).max).astype(np.uint16)
            lost = both_lost | _lost_isolated(frame_t.size, spec.lost_led_fraction, rng)
            pixels[lost] = 0
            name = f"led_{j}_series_{epoch.number}"
            position_series.append((name, pixels, mpp[epoch.camera_id], frame_t))
            lost_frames[name] = lost
            series_epoch[name] = epoch.tag
        frame_series.append((epoch.number, frame_t))

    # ---- the NWB file, as the converter builds it
    first = float(timestamps[0])
    nwb = NWBFile(
        session_description="Simulated recording day: rest in a sleep box, foraging in an open field",
        identifier=str(uuid.uuid5(uuid.NAMESPACE_URL, f"lab_files/{spec!r}")),
        session_start_time=dt.datetime.fromtimestamp(first, tz=dt.timezone.utc),
        timestamps_reference_time=dt.datetime.fromtimestamp(0, tz=dt.timezone.utc),
        experimenter=["Doe, Jane", "Roe, Richard"],
        lab="Loren Frank Lab",
        institution="University of California, San Francisco",
        session_id=f"sim{spec.seed:02d}_{dt.datetime.fromtimestamp(first, tz=dt.timezone.utc):%Y%m%d}",
        experiment_description="Hippocampal place cells, tetrodes in CA1 (simulated)",
        keywords=["hippocampus", "place cells", "simulated"],
        source_script="trodes_to_nwb layout, simulated by tests/lab_files.py",
        source_script_file_name="convert.py",
    )
    nwb.subject = Subject(
        description="Long Evans Rat",
        genotype="Wild Type",
        sex="M",
        species="Rattus norvegicus",
        subject_id="sim01",
        date_of_birth=dt.datetime(2023, 1, 10, tzinfo=dt.timezone.utc),
        weight="450 g",
    )
    # cameras
    model = DeviceModel(name="acA1300-60gc", manufacturer="Basler")
    nwb.add_device_model(model)
    for camera_id, meters in sorted(mpp.items()):
        nwb.add_device(
            CameraDevice(
                name=f"camera_device {camera_id}",
                meters_per_pixel=float(meters),
                model=model,
                lens="Theia SL183M",
                camera_name=f"camera {camera_id}",
            )
        )
    nwb.add_device(DataAcqDevice(name="dataacq_device0", system="SpikeGadgets", amplifier="Intan", adc_circuit="Intan"))
    # tasks: one per (task name, environment, camera), epochs listed by number
    if spec.with_tasks:
        tasks: dict[tuple, list[int]] = {}
        for epoch in spec.epochs:
            tasks.setdefault((epoch.task_name, epoch.task_environment, epoch.camera_id), []).append(epoch.number)
        module = ProcessingModule(name="tasks", description="Contains all tasks information")
        nwb.add_processing_module(module)
        for i, ((name, environment, camera_id), numbers) in enumerate(tasks.items()):
            module.add(
                DynamicTable(
                    name=f"task_{i}",
                    description="",
                    columns=[
                        VectorData(name="task_name", description="the name of the task", data=[name]),
                        VectorData(
                            name="task_description",
                            description="a description of the task",
                            data=[f"{name} in the {environment}"],
                        ),
                        VectorData(
                            name="camera_id",
                            description="the ID number of the camera used for video",
                            data=[[int(camera_id)]],
                        ),
                        VectorData(
                            name="task_epochs",
                            description="the temporal epochs where the animal was exposed to this task",
                            data=[[int(k) for k in numbers]],
                        ),
                        VectorData(
                            name="task_environment",
                            description="the environment in which the animal performed the task",
                            data=[environment],
                        ),
                    ],
                )
            )
    created_ms = str(int(first * 1000))
    nwb.add_device(
        HeaderDevice(
            name="header_device",
            headstage_serial="01504 00126",
            headstage_smart_ref_on="0",
            realtime_mode="0",
            headstage_auto_settle_on="0",
            timestamp_at_creation="0",
            controller_firmware_version="3.18",
            controller_serial="65535 65535",
            save_displayed_chan_only="1",
            headstage_firmware_version="4.4",
            qt_version="6.2.2",
            compile_date="May 24 2023",
            compile_time="10:59:15",
            file_prefix="",
            headstage_gyro_sensor_on="1",
            headstage_mag_sensor_on="0",
            trodes_version="2.4.0",
            headstage_accel_sensor_on="1",
            commit_head="heads/Release_2.4.0-0-g499429f3",
            system_time_at_creation=created_ms,
            file_path="",
        )
    )
    # probes, electrode groups, electrodes
    hw_order = rng.permutation(n_channels)  # SpikeGadgets hardware channel of each row
    bad = {int(c) for c in spec.bad_channels}
    extra = {k: [] for k in ("hwChan", "ntrode_id", "channel_id", "bad_channel", "probe_shank", "probe_electrode")}
    for tet in range(spec.n_tetrodes):
        probe = Probe(
            id=tet,
            name=f"probe {tet}",
            probe_type="tetrode_12.5",
            units="um",
            probe_description="four wire electrode",
            contact_side_numbering=True,
            contact_size=12.5,
        )
        group = NwbElectrodeGroup(
            name=str(tet),
            description="tetrode",
            location="CA1",
            targeted_location="CA1",
            targeted_x=-3.6,
            targeted_y=2.2,
            targeted_z=2.0,
            units="mm",
            device=probe,
        )
        nwb.add_electrode_group(group)
        shank = Shank(name="0")
        for c, (rx, ry, rz) in enumerate(TETRODE_REL):
            shank.add_shanks_electrode(ShanksElectrode(name=str(c), rel_x=rx, rel_y=ry, rel_z=rz))
            nwb.add_electrode(
                location="CA1", group=group, rel_x=rx, rel_y=ry, rel_z=rz,
                x=0.0, y=0.0, z=0.0, imp=0.0, filtering="None",
            )  # fmt: skip
            electrode_id = CHANNELS_PER_TETRODE * tet + c
            is_bad = electrode_id in bad
            extra["hwChan"].append(str(int(hw_order[electrode_id])))
            extra["ntrode_id"].append(tet + 1)
            extra["channel_id"].append(c)
            extra["bad_channel"].append(str(is_bad) if spec.bad_channel_as_strings else is_bad)
            extra["probe_shank"].append(0)
            extra["probe_electrode"].append(c)
        probe.add_shank(shank)
        nwb.add_device(probe)
    descriptions = {
        "hwChan": "SpikeGadgets Hardware channel",
        "ntrode_id": "Experimenter defined ID for this probe",
        "channel_id": "Channel number of electrode within the probe",
        "bad_channel": "True if noisy or disconnected",
        "probe_shank": "The shank of the probe this channel is located on",
        "probe_electrode": "the number of this electrode with respect to the probe",
    }
    for name, values in extra.items():
        nwb.electrodes.add_column(name=name, description=descriptions[name], data=values)
    nwb.electrodes.add_column(
        name="ref_elect_id",
        description="Experimenter selected reference electrode id",
        data=[int(spec.ref_elect_id)] * n_channels,
    )
    region = nwb.create_electrode_table_region(
        region=list(range(n_channels)), description="electrodes used in raw e-series recording"
    )
    chunks = (min(16384, data.shape[0]), min(n_channels, 32))
    nwb.add_acquisition(
        ElectricalSeries(
            name="e-series",
            data=H5DataIO(data, chunks=chunks, compression="gzip", compression_opts=1, shuffle=True),
            timestamps=H5DataIO(timestamps, chunks=(chunks[0],), compression="gzip", compression_opts=1, shuffle=True),
            electrodes=region,
            conversion=1e-6,
            offset=0.0,
        )
    )
    # epochs
    for epoch in sorted(spec.epochs, key=lambda e: e.number):
        start, stop = epoch_times[epoch.tag]
        nwb.add_epoch(start, stop, epoch.tag)
    if spec.with_trials:
        nwb.add_trial_column(name="trial_name", description="interval list name of the trial")
        for epoch in spec.epochs:
            if not epoch.moving:
                continue
            start, stop = epoch_times[epoch.tag]
            k = 0
            while start + 20.0 * (k + 1) <= stop + 1e-9:
                nwb.add_trial(
                    start_time=start + 20.0 * k,
                    stop_time=start + 20.0 * (k + 1),
                    trial_name=f"epoch{epoch.number}_block1_trial{k + 1}",
                )
                k += 1
    # position
    behavior = nwb.create_processing_module(name="behavior", description="Contains all behavior-related data")
    position = Position(name="position")
    behavior.add(position)
    for name, pixels, meters, frame_t in position_series:
        position.create_spatial_series(
            name=name,
            description="xloc, yloc",
            data=pixels,
            conversion=float(meters),
            reference_frame="Upper left corner of video frame",
            timestamps=frame_t,
        )
    frame_index = nwb.create_processing_module(
        name="position_frame_index", description="stores video frame index for each position timestep"
    )
    labels = nwb.create_processing_module(
        name="non_repeat_timestamp_labels", description="stores non_repeat_labels for each position timestep"
    )
    for number, frame_t in frame_series:
        frame_index.add(
            TimeSeries(name=f"series_{number}", data=np.arange(frame_t.size) + 31, unit="N/A", timestamps=frame_t)
        )
        labels.add(
            TimeSeries(
                name=f"series_{number}", data=np.ones(frame_t.size, dtype=np.int32), unit="N/A", timestamps=frame_t
            )
        )

    with NWBHDF5IO(str(path), "w") as io:
        io.write(nwb)

    def _cat(parts, dtype, width=None):
        if parts:
            return np.concatenate(parts).astype(dtype)
        return np.empty((0,) if width is None else (0, width), dtype=dtype)

    return LabSessionTruth(
        epoch_times=epoch_times,
        head_time=head_time,
        head_cm=head_cm,
        spike_times=[_cat(p, np.float64) for p in spike_times],
        lost_frames=lost_frames,
        sampling_rate=SAMPLING_RATE,
        spike_units=[_cat(p, np.int64) for p in spike_units],
        spike_amplitudes_uv=[_cat(p, np.float64, CHANNELS_PER_TETRODE) for p in spike_amps],
        place_field_centers_cm=[t.centers.copy() for t in tetrodes],
        series_epoch=series_epoch,
        electrode_tetrode=np.repeat(np.arange(spec.n_tetrodes), CHANNELS_PER_TETRODE),
    )

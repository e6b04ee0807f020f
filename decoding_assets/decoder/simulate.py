"""Simulated recording sessions for tests, the demo and benchmarks.

An animal runs in a 2D open field or on a 1D W-track at realistic speeds (runs of
10-50 cm/s between pauses at goals); each tetrode holds a few place cells (Gaussian
place fields, 5-25 Hz peak, suppressed while the animal is still) and background
multi-unit activity. Every spike carries a 4-channel amplitude mark in µV: the unit's
template (60-350 µV on its nearest channel, falling off on the others) with
additive noise and a little amplitude jitter. Deterministic for a given seed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import networkx as nx
import numpy as np
from scipy.ndimage import gaussian_filter1d

from .environment import Environment

N_CHANNELS = 4


@dataclass
class SimulatedSession:
    """A simulated session.

    position_time : (n,) s at ``sampling_frequency``; position : (n, 2) cm;
    linear_position : (n,) cm on a track (None in the open field); speed : (n,) cm/s;
    spike_times[e] : (n_e,) s; spike_waveform_features[e] : (n_e, 4) µV;
    place_field_centers[e] : (n_units, n_dims) ground truth (linear on a track);
    track_graph, edge_order, edge_spacing : the track (None in the open field).
    """

    position_time: np.ndarray
    position: np.ndarray
    speed: np.ndarray
    spike_times: list[np.ndarray]
    spike_waveform_features: list[np.ndarray]
    place_field_centers: list[np.ndarray]
    sampling_frequency: float
    linear_position: np.ndarray | None = None
    track_graph: nx.Graph | None = None
    edge_order: list[tuple[int, int]] | None = None
    edge_spacing: list[float] | None = field(default=None)

    def environment(self, place_bin_size: float = 2.0) -> Environment:
        """The Environment matching this session (a track graph for the W-track)."""
        if self.track_graph is None:
            return Environment(place_bin_size=place_bin_size)
        return Environment(
            place_bin_size=place_bin_size,
            track_graph=self.track_graph,
            edge_order=self.edge_order,
            edge_spacing=self.edge_spacing,
        )

    @property
    def decoding_position(self) -> np.ndarray:
        """What the decoder should recover: (n, 2) in the field, (n, 1) on the track."""
        if self.linear_position is None:
            return self.position
        return self.linear_position[:, np.newaxis]


def simulate_open_field(
    duration: float = 300.0,
    n_tetrodes: int = 16,
    arena_size: float = 100.0,
    sampling_frequency: float = 500.0,
    units_per_tetrode: tuple[int, int] = (3, 6),
    seed: int = 0,
) -> SimulatedSession:
    """An animal foraging in a square arena of side ``arena_size`` cm for ``duration`` s."""
    rng = np.random.default_rng(seed)
    dt = 1.0 / sampling_frequency
    n = int(round(duration * sampling_frequency))
    margin = 3.0
    waypoints = [rng.uniform(margin, arena_size - margin, 2)]
    path, total = [waypoints[0]], 0
    while total < n:
        target = rng.uniform(margin, arena_size - margin, 2)
        segment = _run_to(path[-1], target, rng, dt)
        pause = np.repeat(target[np.newaxis], _pause_samples(rng, dt), axis=0)
        path.extend(segment)
        path.extend(pause)
        total = len(path)
    position = _smooth_path(np.asarray(path[:n]), sampling_frequency)
    position += rng.normal(0.0, 0.3, position.shape)  # camera / LED jitter
    time = np.arange(n) * dt
    speed = _speed(position, sampling_frequency)

    fields = []
    spike_times, marks = [], []
    for _ in range(n_tetrodes):
        n_units = int(rng.integers(units_per_tetrode[0], units_per_tetrode[1] + 1))
        centers = rng.uniform(5.0, arena_size - 5.0, (n_units, 2))
        widths = rng.uniform(7.0, 12.0, n_units)
        distance2 = ((position[:, np.newaxis, :] - centers[np.newaxis]) ** 2).sum(axis=-1)
        rates = np.exp(-0.5 * distance2 / widths**2)
        times, features = _tetrode_spikes(rates, speed, time, rng)
        fields.append(centers)
        spike_times.append(times)
        marks.append(features)
    return SimulatedSession(
        position_time=time,
        position=position,
        speed=speed,
        spike_times=spike_times,
        spike_waveform_features=marks,
        place_field_centers=fields,
        sampling_frequency=sampling_frequency,
    )


def w_track_graph(width: float = 60.0, height: float = 80.0) -> tuple[nx.Graph, list, list[float]]:
    """A W-track: three arms joined at the bottom, with the usual edge order and gaps."""
    from track_linearization import make_track_graph

    half = width / 2
    nodes = [(half, height), (half, 0.0), (0.0, 0.0), (0.0, height), (width, 0.0), (width, height)]
    edges = [(0, 1), (1, 2), (2, 3), (1, 4), (4, 5)]
    graph = make_track_graph(nodes, edges)
    edge_order = [(0, 1), (1, 2), (2, 3), (1, 4), (4, 5)]
    edge_spacing = [15.0, 0.0, 15.0, 0.0]
    return graph, edge_order, edge_spacing


def simulate_w_track(
    duration: float = 300.0,
    n_tetrodes: int = 16,
    sampling_frequency: float = 500.0,
    units_per_tetrode: tuple[int, int] = (3, 6),
    seed: int = 0,
) -> SimulatedSession:
    """An animal alternating centre -> left -> centre -> right on a W-track."""
    rng = np.random.default_rng(seed)
    dt = 1.0 / sampling_frequency
    n = int(round(duration * sampling_frequency))
    graph, edge_order, edge_spacing = w_track_graph()
    node_position = {k: np.asarray(v["pos"], dtype=float) for k, v in graph.nodes(data=True)}
    # reward wells: 0 (centre), 3 (left), 5 (right); visit 0,3,0,5,0,3,...
    wells = [0, 3, 0, 5]
    path, visit = [node_position[0]], 1
    while len(path) < n:
        route = nx.shortest_path(graph, _nearest_node(path[-1], node_position), wells[visit % 4])
        for node in route[1:]:
            path.extend(_run_to(path[-1], node_position[node], rng, dt, turn=False))
        path.extend(np.repeat(path[-1][np.newaxis], _pause_samples(rng, dt), axis=0))
        visit += 1
    position = np.asarray(path[:n])
    time = np.arange(n) * dt
    environment = Environment(track_graph=graph, edge_order=edge_order, edge_spacing=edge_spacing)
    linear = environment.linearize(position)[:, 0]
    position = position + rng.normal(0.0, 0.3, position.shape)
    speed = _speed(position, sampling_frequency)

    environment.fit_place_grid(None)
    track_bins = environment.place_bin_centers_[environment.is_track_interior_, 0]
    fields, spike_times, marks = [], [], []
    for _ in range(n_tetrodes):
        n_units = int(rng.integers(units_per_tetrode[0], units_per_tetrode[1] + 1))
        centers = rng.choice(track_bins, n_units, replace=False)
        widths = rng.uniform(6.0, 10.0, n_units)
        rates = np.exp(-0.5 * (linear[:, np.newaxis] - centers[np.newaxis]) ** 2 / widths**2)
        times, features = _tetrode_spikes(rates, speed, time, rng)
        fields.append(centers[:, np.newaxis])
        spike_times.append(times)
        marks.append(features)
    return SimulatedSession(
        position_time=time,
        position=position,
        speed=speed,
        spike_times=spike_times,
        spike_waveform_features=marks,
        place_field_centers=fields,
        sampling_frequency=sampling_frequency,
        linear_position=linear,
        track_graph=graph,
        edge_order=edge_order,
        edge_spacing=edge_spacing,
    )


def _nearest_node(point: np.ndarray, node_position: dict) -> int:
    return min(node_position, key=lambda k: np.linalg.norm(node_position[k] - point))


def _run_to(start: np.ndarray, target: np.ndarray, rng, dt: float, turn: bool = True) -> list[np.ndarray]:
    """Samples of a run from start to target: accelerate, cruise at 10-50 cm/s, slow down."""
    distance = float(np.linalg.norm(target - start))
    if distance < 1e-9:
        return []
    cruise = float(np.clip(rng.lognormal(np.log(25.0), 0.35), 10.0, 50.0))
    duration = distance / cruise * 1.3  # acceleration and deceleration
    n = max(int(duration / dt), 2)
    s = np.linspace(0.0, 1.0, n + 1)[1:]
    progress = 0.5 - 0.5 * np.cos(np.pi * s)  # smooth speed-up and slow-down
    points = start + progress[:, np.newaxis] * (target - start)
    if turn:  # a gentle curve rather than a ruler-straight line
        normal = np.array([-(target - start)[1], (target - start)[0]]) / distance
        points = points + np.sin(np.pi * progress)[:, np.newaxis] * normal * rng.normal(0.0, 0.1 * distance)
    return list(points)


def _pause_samples(rng, dt: float) -> int:
    return int(rng.uniform(0.3, 2.5) / dt)


def _smooth_path(path: np.ndarray, sampling_frequency: float) -> np.ndarray:
    return gaussian_filter1d(path, sigma=0.05 * sampling_frequency, axis=0, mode="nearest")


def _speed(position: np.ndarray, sampling_frequency: float) -> np.ndarray:
    smoothed = gaussian_filter1d(position, sigma=0.05 * sampling_frequency, axis=0, mode="nearest")
    velocity = np.gradient(smoothed, axis=0) * sampling_frequency
    return np.linalg.norm(velocity, axis=1)


def _tetrode_spikes(place_tuning: np.ndarray, speed: np.ndarray, time: np.ndarray, rng):
    """Poisson spikes of place cells (columns of place_tuning, peak 1) plus background
    multi-unit activity, with 4-channel amplitude marks in µV, sorted by time."""
    dt = time[1] - time[0]
    n_units = place_tuning.shape[1]
    peak = rng.uniform(5.0, 25.0, n_units)
    running = np.clip(speed / 4.0, 0.1, 1.0)[:, np.newaxis]  # place cells quiet at rest
    rate = place_tuning * peak * running + 0.1
    templates = _templates(n_units + 2, rng)
    times, unit = [], []
    counts = rng.poisson(rate * dt)
    index, which = np.nonzero(counts)
    times.append(time[index] + rng.uniform(0.0, dt, index.size))
    unit.append(which)
    # two background units firing at 2-6 Hz everywhere (small, distant cells)
    background = rng.uniform(2.0, 6.0, 2)
    for b in range(2):
        n_spikes = rng.poisson(background[b] * time[-1])
        times.append(np.sort(rng.uniform(time[0], time[-1] + dt, n_spikes)))
        unit.append(np.full(n_spikes, n_units + b))
    times, unit = np.concatenate(times), np.concatenate(unit)
    order = np.argsort(times, kind="stable")
    times, unit = times[order], unit[order]
    amplitude = templates[unit] * rng.normal(1.0, 0.05, (unit.size, 1))
    amplitude += rng.normal(0.0, 8.0, amplitude.shape)
    return times, amplitude


def _templates(n_units: int, rng) -> np.ndarray:
    """Per unit, a 4-channel amplitude template in µV."""
    peak = rng.uniform(60.0, 350.0, n_units)
    nearest = rng.integers(0, N_CHANNELS, n_units)
    channel_distance = np.abs(np.arange(N_CHANNELS)[np.newaxis] - nearest[:, np.newaxis])
    falloff = rng.uniform(0.35, 0.8, (n_units, 1)) ** channel_distance
    return peak[:, np.newaxis] * falloff * rng.uniform(0.85, 1.15, (n_units, N_CHANNELS))


# ---------------------------------------------------------------------- raw recordings

RAW_UV_PER_BIT = 0.195  # an Intan headstage's resolution


@dataclass
class RawSimulation:
    """A simulated raw recording of tetrodes, stored as a headstage would store it.

    data : (n_samples, 4 * n_tetrodes) int16, ``RAW_UV_PER_BIT`` µV per unit;
    spike_samples[e] : (n_e,) the sample of each spike's trough on tetrode e;
    spike_amplitudes[e] : (n_e, 4) µV, the trough depth on each channel (negative) as
        it appears after a 300-6000 Hz band-pass, noise excluded.
    """

    data: np.ndarray
    sampling_rate: float
    start_time: float
    spike_samples: list[np.ndarray]
    spike_amplitudes: list[np.ndarray]

    @property
    def uv(self) -> np.ndarray:
        return self.data.astype(np.float32) * RAW_UV_PER_BIT


def spike_waveform(sampling_rate: float) -> tuple[np.ndarray, int]:
    """An extracellular spike's shape (trough -1 at sample ``center``): a sharp trough
    followed by a slower positive repolarization, 1.6 ms long."""
    t = (np.arange(int(round(1.6e-3 * sampling_rate))) - int(round(0.4e-3 * sampling_rate))) / sampling_rate
    shape = -np.exp(-0.5 * (t / 1.2e-4) ** 2) + 0.3 * np.exp(-0.5 * ((t - 4.5e-4) / 2.5e-4) ** 2)
    center = int(np.argmin(shape))
    return shape / -shape[center], center


def simulate_raw_recording(
    spike_times: list[np.ndarray],
    spike_amplitudes: list[np.ndarray],
    start_time: float,
    duration: float,
    sampling_rate: float = 30_000.0,
    noise_uv: float = 12.0,
    seed: int = 0,
) -> RawSimulation:
    """Raw tetrode signals over [start_time, start_time + duration): each spike (its
    positive 4-channel mark in µV giving the trough depth per channel) as a realistic
    waveform, in white noise of ``noise_uv`` rms (about 0.6 of it passes a 300-6000 Hz
    band-pass) plus a theta-band LFP and a slow drift shared by a tetrode's channels."""
    from scipy import signal

    rng = np.random.default_rng(seed)
    n = int(round(duration * sampling_rate))
    shape, center = spike_waveform(sampling_rate)
    # the band-pass shrinks the trough a little; this is the factor
    sos = signal.butter(5, [300.0, 6000.0], btype="bandpass", fs=sampling_rate, output="sos")
    padded = np.concatenate([np.zeros(200), shape, np.zeros(200)])
    gain = -signal.sosfiltfilt(sos, padded).min()
    t = np.arange(n) / sampling_rate
    uv = np.empty((n, N_CHANNELS * len(spike_times)), dtype=np.float32)
    samples_out, amplitudes_out = [], []
    for e, (times, marks) in enumerate(zip(spike_times, spike_amplitudes)):
        lfp = 150.0 * np.sin(2 * np.pi * rng.uniform(7.0, 9.0) * t + rng.uniform(0, 2 * np.pi))
        lfp += 80.0 * np.sin(2 * np.pi * 0.5 * t + rng.uniform(0, 2 * np.pi))
        block = rng.normal(0.0, noise_uv, (n, N_CHANNELS)) + lfp[:, np.newaxis]
        samples = np.round((np.asarray(times) - start_time) * sampling_rate).astype(np.int64)
        inside = (samples >= center) & (samples < n - (shape.size - center))
        samples, marks = samples[inside], np.asarray(marks)[inside]
        rows = (samples - center)[:, np.newaxis] + np.arange(shape.size)[np.newaxis]
        for c in range(N_CHANNELS):
            np.add.at(block[:, c], rows.ravel(), (marks[:, c : c + 1] * shape[np.newaxis]).ravel())
        uv[:, N_CHANNELS * e : N_CHANNELS * (e + 1)] = block
        samples_out.append(samples)
        amplitudes_out.append(-gain * marks)
    data = np.clip(np.round(uv / RAW_UV_PER_BIT), -32768, 32767).astype(np.int16)
    return RawSimulation(data, sampling_rate, start_time, samples_out, amplitudes_out)

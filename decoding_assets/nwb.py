"""Reading sessions from NWB files, and writing the built-in demo session.

The layout read (README, "NWB layout"):

- ``epochs`` with one tag per epoch naming it (e.g. ``00_r1``): interval lists;
- ``trials`` with a ``trial_name`` column (e.g. ``epoch0_block1_trial1``): interval lists;
- electrode groups and the electrodes table (one row per channel);
- ``processing/behavior/Position``: one ``SpatialSeries`` per camera LED
  (``led_front``/``led_back``, or the first two in name order), (n, 2), in the
  series' unit with its conversion to metres;
- ``processing/ecephys``: one ``FeatureExtraction`` per electrode group, named after
  the group: spike ``times`` and ``features`` (n_spikes, n_channels, 1) = the amplitude
  on each channel, in µV; its ``description`` names the waveform features parameter set
  (e.g. ``amplitude``).
"""

from __future__ import annotations

import contextlib
import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .files import atomic_write
from .waveforms import RawRecording

LED_NAMES = ("led_front", "led_back")


class NWBReadError(ValueError):
    """The NWB file cannot be read or lacks what the pipeline needs."""


class NoRawRecordingError(NWBReadError):
    """The NWB file has no raw ElectricalSeries at all."""


@dataclass
class RawPosition:
    """Camera LED positions: time (n,) s; front, back (n, 2) cm (NaN when lost)."""

    time: np.ndarray
    front: np.ndarray
    back: np.ndarray


@dataclass
class WaveformFeatures:
    """One electrode group's clusterless spikes: times (n,) s, features (n, n_channels) µV."""

    electrode_group_name: str
    features_param_name: str
    times: np.ndarray
    features: np.ndarray


def _open(path: str | Path):
    from pynwb import NWBHDF5IO

    path = Path(path)
    if not path.is_file():
        raise NWBReadError(f"No NWB file at {path}.")
    try:
        io = NWBHDF5IO(str(path), mode="r", load_namespaces=True)
        return io, io.read()
    except Exception as error:  # h5py / hdmf raise many kinds for a broken file
        raise NWBReadError(
            f"Cannot read NWB file {path.name}: {type(error).__name__}: {error}. "
            "Is it a complete NWB 2.x file? Re-export or re-copy it."
        ) from None


def read_session_info(path: str | Path) -> dict:
    """Subject, description, start time, interval lists, electrode groups and the
    waveform features available, without loading spike data."""
    io, nwb = _open(path)
    with io:
        intervals: dict[str, tuple[np.ndarray, str]] = {}
        if nwb.epochs is not None and len(nwb.epochs):
            epochs = nwb.epochs.to_dataframe()
            for _, row in epochs.iterrows():
                for tag in row["tags"]:
                    times = np.array([[row["start_time"], row["stop_time"]]])
                    if tag in intervals:
                        times = np.vstack([intervals[tag][0], times])
                    intervals[tag] = (times, "epoch")
        if nwb.trials is not None and len(nwb.trials) and "trial_name" in nwb.trials.colnames:
            trials = nwb.trials.to_dataframe()
            for _, row in trials.iterrows():
                intervals[str(row["trial_name"])] = (np.array([[row["start_time"], row["stop_time"]]]), "trial")
        groups = []
        electrodes = nwb.electrodes.to_dataframe() if nwb.electrodes is not None else None
        for name, group in nwb.electrode_groups.items():
            n_channels = 0 if electrodes is None else int(sum(g.name == name for g in electrodes["group"]))
            groups.append((name, n_channels, group.location))
        features = []
        for name, container in _feature_containers(nwb).items():
            n_spikes, n_channels = int(len(container.times)), int(container.features.shape[1])
            features.append((name, _feature_set_name(container), n_spikes, n_channels))
        raw_series = sorted(_raw_series(nwb))
        has_position = _position_container(nwb) is not None
        if has_position:
            raw = _raw_position(nwb)
            tracked = ~np.any(np.isnan(raw.front) | np.isnan(raw.back), axis=1)
            if tracked.any():
                intervals["pos 0 valid times"] = (_runs(raw.time, tracked), "position")
        return {
            "subject_id": nwb.subject.subject_id if nwb.subject is not None else None,
            "session_description": nwb.session_description,
            "session_start_time": nwb.session_start_time.isoformat(),
            "intervals": intervals,
            "electrode_groups": groups,
            "waveform_features": features,
            "raw_series": raw_series,
            "has_position": has_position,
        }


def _feature_containers(nwb) -> dict:
    """The FeatureExtraction containers of processing/ecephys, by electrode group name."""
    if "ecephys" not in nwb.processing:
        return {}
    return {
        name: c for name, c in nwb.processing["ecephys"].data_interfaces.items() if type(c).__name__ == "FeatureExtraction"
    }


def _raw_series(nwb) -> dict:
    """The ElectricalSeries of acquisition (raw recordings), by name."""
    return {name: s for name, s in nwb.acquisition.items() if type(s).__name__ == "ElectricalSeries"}


@contextlib.contextmanager
def open_raw_recording(path: str | Path, series_name: str | None = None):
    """The raw ``ElectricalSeries`` ``series_name`` (default: the file's only one) as a
    ``RawRecording`` read lazily from the open file."""
    io, nwb = _open(path)
    with io:
        available = _raw_series(nwb)
        name = Path(path).name
        if not available:
            raise NoRawRecordingError(f"NWB file {name} has no raw ElectricalSeries in acquisition.")
        if series_name is None:
            if len(available) != 1:
                raise NWBReadError(
                    f"NWB file {name} has {len(available)} raw ElectricalSeries in acquisition "
                    f"({sorted(available) or 'none'}); name one with the raw_series_name parameter."
                )
            series_name = next(iter(available))
        if series_name not in available:
            raise NWBReadError(f"NWB file {name} has no raw ElectricalSeries {series_name!r}; it has {sorted(available)}.")
        series = available[series_name]
        electrodes = series.electrodes.table
        rows = np.asarray(series.electrodes.data[:], dtype=int)
        groups = np.asarray([g.name for g in electrodes["group"][:]])[rows]
        bad = np.zeros(rows.size, dtype=bool)
        if "bad_channel" in electrodes.colnames:
            bad = np.asarray([str(v).lower() in ("true", "1") for v in electrodes["bad_channel"][:]])[rows]
        gain = np.ones(rows.size) if series.channel_conversion is None else np.asarray(series.channel_conversion[:])
        offset = float(getattr(series, "offset", 0.0) or 0.0)
        yield RawRecording(
            name=series_name,
            data=series.data,
            uv_per_unit=gain * float(series.conversion) * 1e6,
            offset_uv=offset * 1e6,
            sampling_rate=float(series.rate) if series.rate is not None else _rate(series.timestamps, name),
            starting_time=float(series.starting_time or 0.0),
            timestamps=series.timestamps,
            electrode_ids=np.asarray(electrodes.id[:])[rows],
            group_names=groups,
            bad=bad,
        )


def _rate(timestamps, name: str) -> float:
    head = np.asarray(timestamps[: min(len(timestamps), 10_000)], dtype=float)
    if head.size < 2:
        raise NWBReadError(f"NWB file {name}: the raw series has too few timestamps to know its sampling rate.")
    return float(1.0 / np.median(np.diff(head)))


def _feature_set_name(container) -> str:
    """FeatureExtraction keeps one description per feature; ours names the parameter set."""
    return str(container.description[0])


def _runs(time: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """[start, stop] of each run of True samples."""
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    starts, stops = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1) - 1
    return np.column_stack([time[starts], time[stops]])


def _position_container(nwb):
    if "behavior" not in nwb.processing:
        return None
    for container in nwb.processing["behavior"].data_interfaces.values():
        if type(container).__name__ == "Position":
            return container
    return None


def _raw_position(nwb) -> RawPosition:
    container = _position_container(nwb)
    series = dict(container.spatial_series)
    names = list(LED_NAMES) if all(n in series for n in LED_NAMES) else sorted(series)[:2]
    if len(names) < 2:
        raise NWBReadError(f"The Position container has {len(series)} spatial series; two LEDs are needed.")
    front, back = series[names[0]], series[names[1]]
    time = np.asarray(front.timestamps[:], dtype=float)
    to_cm = 100.0  # SpatialSeries data times conversion is in metres
    return RawPosition(
        time=time,
        front=np.asarray(front.data[:], dtype=float) * front.conversion * to_cm,
        back=np.asarray(back.data[:], dtype=float) * back.conversion * to_cm,
    )


def read_raw_position(path: str | Path) -> RawPosition:
    io, nwb = _open(path)
    with io:
        if _position_container(nwb) is None:
            raise NWBReadError(
                f"NWB file {Path(path).name} has no raw position: expected processing/behavior/Position "
                "with one SpatialSeries per camera LED."
            )
        return _raw_position(nwb)


def read_waveform_features(path: str | Path, electrode_group_names: list[str] | None = None) -> list[WaveformFeatures]:
    """Spike times and per-channel amplitudes of the given electrode groups (default all)."""
    io, nwb = _open(path)
    with io:
        available = _feature_containers(nwb)
        if not available:
            raise NWBReadError(
                f"NWB file {Path(path).name} has no clusterless spikes: expected processing/ecephys with "
                "one FeatureExtraction per electrode group."
            )
        names = electrode_group_names if electrode_group_names is not None else sorted(available)
        out = []
        for name in names:
            if name not in available:
                raise NWBReadError(f"NWB file {Path(path).name} has no waveform features for electrode group {name!r}.")
            container = available[name]
            features = np.asarray(container.features[:], dtype=float)
            out.append(
                WaveformFeatures(
                    electrode_group_name=name,
                    features_param_name=_feature_set_name(container),
                    times=np.asarray(container.times[:], dtype=float),
                    features=features.reshape(features.shape[0], -1),
                )
            )
        return out


# ---------------------------------------------------------------------- demo session


def write_demo_session(
    path: str | Path,
    n_tetrodes: int = 8,
    epoch_durations: tuple[float, float, float] = (120.0, 30.0, 60.0),
    trial_duration: float = 30.0,
    raw_tetrodes: int = 4,
    seed: int = 0,
) -> Path:
    """Write a realistic demo session (simulated) as an NWB file, atomically.

    Epochs ``00_r1`` (run), ``01_s1`` (rest), ``02_r2`` (run); trials of
    ``trial_duration`` within the run epochs (``epoch0_block1_trial1``, ...); raw two-LED
    positions at 30 Hz with tracking dropouts and glitches; one tetrode per electrode
    group with its clusterless spikes (4-channel amplitudes).

    ``raw_tetrodes`` more tetrodes (named after the others) have no spikes in the file,
    only their raw signal at 30 kHz during the last epoch (``e-raw`` in acquisition),
    from which the pipeline extracts their features; the last channel of the last of
    them is noisy and marked bad.
    """
    from hdmf.backends.hdf5.h5_utils import H5DataIO
    from pynwb import NWBHDF5IO, NWBFile
    from pynwb.behavior import Position, SpatialSeries
    from pynwb.ecephys import FeatureExtraction
    from pynwb.file import Subject

    from .decoder.simulate import simulate_open_field

    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"Cannot write the demo session to {path}: folder {path.parent} does not exist.")
    rng = np.random.default_rng(seed + 1000)
    total = float(sum(epoch_durations))
    session = simulate_open_field(duration=total, n_tetrodes=n_tetrodes + raw_tetrodes, seed=seed)

    nwb = NWBFile(
        session_description="Demo session: a simulated rat foraging in a 1 m open field, tetrodes in CA1.",
        identifier=f"decoding-assets-demo-{seed}",
        session_start_time=dt.datetime(2026, 1, 5, 10, 0, tzinfo=dt.timezone.utc),
        experimenter=["Demo, Simulated"],
        lab="decoding-assets",
        institution="decoding-assets",
        experiment_description="Simulated recording for the decoding-assets demo and tests.",
        session_id=f"demo{seed}",
        keywords=["hippocampus", "clusterless decoding", "simulated"],
    )
    nwb.subject = Subject(
        subject_id="demo_rat", species="Rattus norvegicus", sex="M", age="P120D", description="Simulated Long-Evans rat"
    )
    device = nwb.create_device(
        name="tetrode_drive", description=f"Simulated {n_tetrodes + raw_tetrodes}-tetrode microdrive", manufacturer="none"
    )

    start = 0.0
    names = ["00_r1", "01_s1", "02_r2"]
    for name, duration in zip(names, epoch_durations):
        nwb.add_epoch(start_time=start, stop_time=start + duration, tags=[name])
        start += duration
    nwb.add_trial_column(name="trial_name", description="interval list name of the trial")
    start = 0.0
    for epoch, (name, duration) in enumerate(zip(names, epoch_durations)):
        if "_r" in name:
            for k, trial_start in enumerate(np.arange(start, start + duration - 1e-9, trial_duration)):
                stop = min(trial_start + trial_duration, start + duration)
                nwb.add_trial(start_time=trial_start, stop_time=stop, trial_name=f"epoch{epoch}_block1_trial{k + 1}")
        start += duration

    nwb.add_electrode_column(name="bad_channel", description="channel marked bad by the experimenter")
    groups = []
    bad_electrode = 4 * (n_tetrodes + raw_tetrodes) - 1 if raw_tetrodes else None
    for t in range(n_tetrodes + raw_tetrodes):
        group = nwb.create_electrode_group(
            name=f"tetrode_{t:02d}", description=f"tetrode {t}", location="CA1", device=device
        )
        groups.append(group)
        for c in range(4):
            nwb.add_electrode(
                group=group, location="CA1", x=float(t), y=float(c), z=0.0, filtering="none",
                bad_channel=4 * t + c == bad_electrode, rel_x=float(c) * 10.0, rel_y=0.0,
            )  # fmt: skip

    # raw LEDs at a camera's ~30 Hz
    camera_time = np.arange(0.0, total, 1 / 30.0) + rng.normal(0, 0.001, int(np.ceil(total * 30)))[: len(np.arange(0.0, total, 1 / 30.0))]
    camera_time = np.sort(np.clip(camera_time, 0.0, total))
    head = np.column_stack([np.interp(camera_time, session.position_time, session.position[:, d]) for d in range(2)])
    velocity = np.gradient(head, camera_time, axis=0)
    heading = np.unwrap(np.arctan2(velocity[:, 1], velocity[:, 0]))
    heading = np.convolve(heading, np.ones(9) / 9, mode="same")
    offset = 2.5 * np.column_stack([np.cos(heading), np.sin(heading)])
    front = head + offset + rng.normal(0, 0.3, head.shape)
    back = head - offset + rng.normal(0, 0.3, head.shape)
    lost = rng.random(len(camera_time)) < 0.01
    for gap_start in rng.choice(len(camera_time) - 40, 3, replace=False):  # a few longer tracking gaps
        lost[gap_start : gap_start + int(rng.integers(10, 40))] = True
    front[lost] = back[lost] = np.nan
    glitch = rng.choice(np.flatnonzero(~lost), 5, replace=False)
    front[glitch] += 60.0  # reflections the speed check must reject
    position = Position(name="Position")
    for name, data in (("led_front", front), ("led_back", back)):
        position.add_spatial_series(
            SpatialSeries(
                name=name,
                description=f"{name.replace('_', ' ')} position from the overhead camera",
                data=data / 100.0,
                timestamps=camera_time,
                reference_frame="top left corner of the arena, x right, y down",
                unit="meters",
            )
        )
    behavior = nwb.create_processing_module(name="behavior", description="raw camera tracking")
    behavior.add(position)

    clusterless = nwb.create_processing_module(name="ecephys", description="thresholded spikes and their amplitudes")
    for t, (times, marks) in enumerate(zip(session.spike_times[:n_tetrodes], session.spike_waveform_features[:n_tetrodes])):
        region = nwb.create_electrode_table_region(list(range(4 * t, 4 * t + 4)), f"channels of tetrode {t}")
        clusterless.add(
            FeatureExtraction(
                name=f"tetrode_{t:02d}",
                electrodes=region,
                description=["amplitude"],
                times=times,
                features=H5DataIO(marks[:, :, np.newaxis].astype(np.float32), compression="gzip"),
            )
        )

    if raw_tetrodes:
        _add_raw_recording(nwb, session, n_tetrodes, raw_tetrodes, sum(epoch_durations[:-1]), epoch_durations[-1], seed)

    with atomic_write(path, suffix=".tmp.nwb") as tmp, NWBHDF5IO(str(tmp), mode="w") as io:
        io.write(nwb)
    return path


def _add_raw_recording(nwb, session, first: int, count: int, start: float, duration: float, seed: int) -> None:
    """Raw signals of tetrodes ``first``..``first + count - 1`` over [start, start + duration)."""
    from hdmf.backends.hdf5.h5_utils import H5DataIO
    from pynwb.ecephys import ElectricalSeries

    from .decoder.simulate import RAW_UV_PER_BIT, simulate_raw_recording

    tetrodes = range(first, first + count)
    raw = simulate_raw_recording(
        [session.spike_times[t] for t in tetrodes], [session.spike_waveform_features[t] for t in tetrodes],
        start_time=start, duration=duration, seed=seed + 2000,
    )  # fmt: skip
    data = raw.data
    # a channel with mains hum and a loose contact: why an experimenter marks it bad
    rng = np.random.default_rng(seed + 3000)
    t = np.arange(data.shape[0]) / raw.sampling_rate
    hum = 400.0 * np.sin(2 * np.pi * 60.0 * t) + rng.normal(0.0, 150.0, t.size)
    data[:, -1] = np.clip(data[:, -1] + hum / RAW_UV_PER_BIT, -32768, 32767).astype(np.int16)
    region = nwb.create_electrode_table_region(
        list(range(4 * first, 4 * (first + count))), "channels recorded raw (tetrodes without spikes in the file)"
    )
    nwb.add_acquisition(
        ElectricalSeries(
            name="e-raw",
            description="raw broadband signal from the headstage",
            data=H5DataIO(data, chunks=(int(raw.sampling_rate), data.shape[1]), compression="gzip", compression_opts=1),
            electrodes=region,
            starting_time=start,
            rate=raw.sampling_rate,
            conversion=RAW_UV_PER_BIT * 1e-6,
            filtering="none (broadband, 0.1 Hz - 7.5 kHz headstage)",
        )
    )

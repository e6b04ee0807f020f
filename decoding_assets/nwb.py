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

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .files import atomic_write

LED_NAMES = ("led_front", "led_back")


class NWBReadError(ValueError):
    """The NWB file cannot be read or lacks what the pipeline needs."""


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
            "has_position": has_position,
        }


def _feature_containers(nwb) -> dict:
    """The FeatureExtraction containers of processing/ecephys, by electrode group name."""
    if "ecephys" not in nwb.processing:
        return {}
    return {
        name: c for name, c in nwb.processing["ecephys"].data_interfaces.items() if type(c).__name__ == "FeatureExtraction"
    }


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
    epoch_durations: tuple[float, float, float] = (120.0, 30.0, 90.0),
    trial_duration: float = 30.0,
    seed: int = 0,
) -> Path:
    """Write a realistic demo session (simulated) as an NWB file, atomically.

    Epochs ``00_r1`` (run), ``01_s1`` (rest), ``02_r2`` (run); trials of
    ``trial_duration`` within the run epochs (``epoch0_block1_trial1``, ...); raw two-LED
    positions at 30 Hz with tracking dropouts and glitches; one tetrode per electrode
    group with its clusterless spikes (4-channel amplitudes).
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
    session = simulate_open_field(duration=total, n_tetrodes=n_tetrodes, seed=seed)

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
    device = nwb.create_device(name="tetrode_drive", description="Simulated 8-tetrode microdrive", manufacturer="none")

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
    for t in range(n_tetrodes):
        group = nwb.create_electrode_group(
            name=f"tetrode_{t:02d}", description=f"tetrode {t}", location="CA1", device=device
        )
        groups.append(group)
        for c in range(4):
            nwb.add_electrode(
                group=group, location="CA1", x=float(t), y=float(c), z=0.0, filtering="none",
                bad_channel=False, rel_x=float(c) * 10.0, rel_y=0.0,
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
    for t, (times, marks) in enumerate(zip(session.spike_times, session.spike_waveform_features)):
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

    with atomic_write(path, suffix=".tmp.nwb") as tmp:
        with NWBHDF5IO(str(tmp), mode="w") as io:
            io.write(nwb)
    return path

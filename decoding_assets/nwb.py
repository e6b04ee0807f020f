"""Reading sessions from NWB files, and writing the built-in demo session.

Two families of layout are read (README, "NWB layouts read"):

- the labs' converter (``trodes-to-nwb``): ``processing/behavior/position`` with one
  ``SpatialSeries`` per LED per epoch (``led_{j}_series_{k}``, camera pixels with
  metres per pixel as ``conversion``, a lost LED stored as (0, 0)); ``intervals/epochs``
  tagged ``01_s1``, ``02_r1``, ...; ``processing/tasks`` saying which task (and so
  sleep or run) each epoch is; the raw ``acquisition/e-series`` with explicit Unix
  timestamps, every epoch concatenated with the gaps between them; the electrodes
  columns ``bad_channel`` and ``ref_elect_id``;
- our own (the demo): one ``Position`` with ``led_front``/``led_back`` (or a single
  already processed series), ``trials`` with a ``trial_name`` column, and
  ``processing/ecephys`` with one ``FeatureExtraction`` per electrode group (spike
  ``times`` and ``features`` (n_spikes, n_channels, 1), µV; its ``description`` names
  the waveform features parameter set).

Where a file's position series could be read more than one way, reading stops and
names the series found and the configuration key that settles it (``position_series``).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .files import atomic_write
from .waveforms import RawRecording

LED_NAMES = ("led_front", "led_back")
# one SpatialSeries per LED per epoch, as the labs' converter names them
_LAB_LED_SERIES = re.compile(r"^(led_\d+)_series_(\d+)$")
# words in a task's name or environment that make its epochs sleep (rest) epochs
SLEEP_WORDS = ("sleep", "rest", "home")
# sampling rates of acquisition systems; a rate measured from timestamps snaps to one
NOMINAL_RATES_HZ = (1000.0, 1500.0, 2000.0, 2500.0, 20000.0, 24414.0625, 25000.0, 30000.0, 32000.0, 40000.0, 48000.0)
_TIMESTAMP_BLOCK = 1 << 22


class NWBReadError(ValueError):
    """The NWB file cannot be read or lacks what the pipeline needs."""


class NoRawRecordingError(NWBReadError):
    """The NWB file has no raw ElectricalSeries at all."""


@dataclass(frozen=True)
class RawPosition:
    """One camera's LED positions over one stretch of the recording (an epoch, or the
    whole session): time (n,) s; front (n, 2) cm, NaN where the LED was lost; back
    (n, 2) cm, or None on a one-LED rig (no orientation then). ``name`` says which
    series it came from."""

    time: np.ndarray
    front: np.ndarray
    back: np.ndarray | None = None
    name: str = "position"

    @property
    def n_leds(self) -> int:
        return 1 if self.back is None else 2


@dataclass(frozen=True)
class EpochInfo:
    """One epoch: its interval list name (the tag), number, task and kind
    ("run", "sleep", or None when neither the tasks table nor the tag says)."""

    interval_list_name: str
    epoch: int | None
    task_name: str | None
    task_environment: str | None
    camera_id: int | None
    epoch_kind: str | None


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
        with warnings.catch_warnings():
            # the labs' extensions predate NWB 2.9's DeviceModel; hdmf warns on every open
            warnings.filterwarnings("ignore", message=".*(Schema conflict|DeviceModel).*", category=UserWarning)
            io = NWBHDF5IO(str(path), mode="r", load_namespaces=True)
            return io, io.read()
    except Exception as error:  # h5py / hdmf raise many kinds for a broken file
        raise NWBReadError(
            f"Cannot read NWB file {path.name}: {type(error).__name__}: {error}. "
            "Is it a complete NWB 2.x file? Re-export or re-copy it."
        ) from None


def read_session_info(path: str | Path, led_names: dict | None = None) -> dict:
    """Subject, description, start time, interval lists, epochs (task and kind),
    electrode groups and the waveform features available, without loading spike data.

    Interval lists, named as the labs' pipeline names them: one per epoch (its tag),
    one per trial (``trial_name``), ``pos {k} valid times`` per position series
    (stretches of camera frames without a pause), and ``raw data valid times`` (the
    raw recording's contiguous stretches) when the file has one raw series.
    ``led_names``: the ``position_series`` mapping for this session, if any. A position
    series whose timestamps go backwards is an error here already: the intervals read
    from it would be wrong, and a registered session's intervals are never changed."""
    io, nwb = _open(path)
    name = Path(path).name
    with io:
        intervals: dict[str, tuple[np.ndarray, str]] = {}
        epochs = _epochs(nwb)
        for epoch_name, times in epochs.items():
            intervals[epoch_name] = (times, "epoch")
        if nwb.trials is not None and len(nwb.trials) and "trial_name" in nwb.trials.colnames:
            trials = nwb.trials.to_dataframe()
            for _, row in trials.iterrows():
                intervals[str(row["trial_name"])] = (np.array([[row["start_time"], row["stop_time"]]]), "trial")
        groups = []
        electrodes = nwb.electrodes.to_dataframe() if nwb.electrodes is not None else None
        for group_name, group in nwb.electrode_groups.items():
            n_channels = 0 if electrodes is None else int(sum(g.name == group_name for g in electrodes["group"]))
            groups.append((group_name, n_channels, group.location))
        features = []
        for group_name, container in _feature_containers(nwb).items():
            n_spikes, n_channels = int(len(container.times)), int(container.features.shape[1])
            features.append((group_name, _feature_set_name(container), n_spikes, n_channels))
        raw_series = _raw_series(nwb)
        if len(raw_series) == 1:
            series = next(iter(raw_series.values()))
            if series.timestamps is not None:
                segments, _ = _segments_and_rate(series.timestamps, name)
                ts = series.timestamps
                intervals["raw data valid times"] = (
                    np.array([[float(ts[a]), float(ts[b - 1])] for a, b in segments]), "raw"
                )
        has_position = _position_container(nwb) is not None
        if has_position:
            for k, source in enumerate(_raw_positions(nwb, name, led_names)):
                intervals[f"pos {k} valid times"] = (_frame_runs(source.time), "position")
        return {
            "subject_id": nwb.subject.subject_id if nwb.subject is not None else None,
            "session_description": nwb.session_description,
            "session_start_time": nwb.session_start_time.isoformat(),
            "intervals": intervals,
            "epochs": _epoch_infos(nwb, list(epochs), name),
            "electrode_groups": groups,
            "waveform_features": features,
            "raw_series": sorted(raw_series),
            "has_position": has_position,
        }


# ---------------------------------------------------------------------- epochs and tasks


def _epochs(nwb) -> dict[str, np.ndarray]:
    """{tag: (n, 2) [start, stop]} from the epochs table (an epoch with several tags
    is listed under each)."""
    out: dict[str, np.ndarray] = {}
    if nwb.epochs is None or not len(nwb.epochs):
        return out
    for _, row in nwb.epochs.to_dataframe().iterrows():
        for tag in row["tags"]:
            times = np.array([[row["start_time"], row["stop_time"]]], dtype=float)
            out[str(tag)] = np.vstack([out[str(tag)], times]) if str(tag) in out else times
    return out


def _epoch_number(tag: str) -> int | None:
    match = re.match(r"^(\d+)", tag)
    return int(match.group(1)) if match else None


def _kind_from_tag(tag: str) -> str | None:
    """The labs' convention NN_sK (sleep) / NN_rK (run); other tags say nothing."""
    match = re.match(r"^\d+_([a-z])\d+$", tag, re.IGNORECASE)
    return {"s": "sleep", "r": "run"}.get(match.group(1).lower()) if match else None


def _kind_from_task(task_name: str, task_environment: str) -> str:
    text = f"{task_name} {task_environment}".lower()
    return "sleep" if any(word in text for word in SLEEP_WORDS) else "run"


def _tasks(nwb, name: str) -> dict[int, tuple[str, str, int | None]]:
    """{epoch number: (task_name, task_environment, camera_id)} from processing/tasks."""
    if "tasks" not in nwb.processing:
        return {}
    out = {}
    for table_name, table in nwb.processing["tasks"].data_interfaces.items():
        columns = set(getattr(table, "colnames", ()))
        if not {"task_name", "task_epochs"} <= columns:
            raise NWBReadError(
                f"NWB file {name}: processing/tasks/{table_name} has columns {sorted(columns)}; a task table needs "
                "task_name and task_epochs."
            )
        for row in table.to_dataframe().itertuples():
            environment = str(getattr(row, "task_environment", "") or "")
            camera = _first_int(getattr(row, "camera_id", None))
            for epoch in np.atleast_1d(row.task_epochs):
                out[int(epoch)] = (str(row.task_name), environment, camera)
    return out


def _first_int(value) -> int | None:
    values = np.atleast_1d(value) if value is not None else []
    return int(values[0]) if len(values) else None


def _epoch_infos(nwb, tags: list[str], name: str) -> list[EpochInfo]:
    tasks = _tasks(nwb, name)
    infos = []
    for tag in tags:
        number = _epoch_number(tag)
        task = tasks.get(number) if number is not None else None
        if task is not None:
            infos.append(EpochInfo(tag, number, task[0], task[1], task[2], _kind_from_task(task[0], task[1])))
        else:
            infos.append(EpochInfo(tag, number, None, None, None, _kind_from_tag(tag)))
    return infos


# ---------------------------------------------------------------------- waveform features and raw ephys


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
    ``RawRecording`` read lazily from the open file, with its contiguous segments
    (a recording of several epochs has gaps between them) and its reference electrodes
    (the electrodes column ``ref_elect_id``, -1 or absent for none)."""
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
            bad = _as_bool(electrodes["bad_channel"][:], f"NWB file {name}, electrodes column bad_channel")[rows]
        reference_ids = None
        if "ref_elect_id" in electrodes.colnames:
            reference_ids = np.asarray(electrodes["ref_elect_id"][:], dtype=int)[rows]
        gain = np.ones(rows.size) if series.channel_conversion is None else np.asarray(series.channel_conversion[:])
        offset = float(getattr(series, "offset", 0.0) or 0.0)
        if series.rate is not None:
            rate, segments = float(series.rate), None
        else:
            segments, rate = _segments_and_rate(series.timestamps, name)
        yield RawRecording(
            name=series_name,
            data=series.data,
            uv_per_unit=gain * float(series.conversion) * 1e6,
            offset_uv=offset * 1e6,
            sampling_rate=rate,
            starting_time=float(series.starting_time or 0.0),
            timestamps=series.timestamps,
            electrode_ids=np.asarray(electrodes.id[:])[rows],
            group_names=groups,
            bad=bad,
            reference_electrode_ids=reference_ids,
            segments=segments,
        )


def _as_bool(values, where: str) -> np.ndarray:
    """A boolean column that older files store as the strings "True"/"False"."""
    out = []
    for value in values:
        text = value.decode() if isinstance(value, bytes) else str(value)
        if text.strip().lower() in ("true", "1"):
            out.append(True)
        elif text.strip().lower() in ("false", "0", ""):
            out.append(False)
        else:
            raise NWBReadError(f"{where}: {value!r} is neither true nor false.")
    return np.asarray(out, dtype=bool)


def _segments_and_rate(timestamps, name: str) -> tuple[list[tuple[int, int]], float]:
    """The contiguous stretches [start, stop) of a raw series' samples (a pause longer
    than 1.5 sample periods separates two) and its sampling rate.

    The rate is measured over the longest stretch (its span over its sample count, which
    float64 Unix timestamps resolve to ~1e-8) and snapped to an acquisition system's
    nominal rate when within 0.5 % of one. The timestamps are read a block at a time."""
    n = len(timestamps)
    if n < 2:
        raise NWBReadError(f"NWB file {name}: the raw series has too few timestamps to know its sampling rate.")
    head = np.asarray(timestamps[: min(n, 10_000)], dtype=float)
    steps = np.diff(head)
    if not np.all(steps > 0):
        raise NWBReadError(f"NWB file {name}: the raw series' timestamps are not increasing; the file is damaged.")
    rough_period = float(np.median(steps))
    breaks = []
    for start in range(0, n - 1, _TIMESTAMP_BLOCK):
        block = np.asarray(timestamps[start : min(n, start + _TIMESTAMP_BLOCK + 1)], dtype=float)
        step = np.diff(block)
        if np.any(step <= 0):
            raise NWBReadError(f"NWB file {name}: the raw series' timestamps go backwards near sample {start}.")
        breaks.extend((np.flatnonzero(step > 1.5 * rough_period) + start + 1).tolist())
    edges = [0, *breaks, n]
    segments = list(itertools.pairwise(edges))
    a, b = max(segments, key=lambda s: s[1] - s[0])
    if b - a < 2:
        return segments, 1.0 / rough_period
    measured = (b - a - 1) / (float(timestamps[b - 1]) - float(timestamps[a]))
    nominal = min(NOMINAL_RATES_HZ, key=lambda r: abs(r - measured))
    rate = nominal if abs(nominal - measured) <= 0.005 * nominal else measured
    return segments, rate


def _feature_set_name(container) -> str:
    """FeatureExtraction keeps one description per feature; ours names the parameter set."""
    return str(container.description[0])


# ---------------------------------------------------------------------- position


def _frame_runs(time: np.ndarray) -> np.ndarray:
    """[start, stop] of each stretch of camera frames with no pause longer than 2.5
    frame periods (the labs' ``pos {k} valid times``)."""
    if time.size < 2:
        return np.array([[time[0], time[0]]]) if time.size else np.zeros((0, 2))
    step = np.diff(time)
    breaks = np.flatnonzero(step > 2.5 * np.median(step)) + 1
    edges = np.concatenate([[0], breaks, [time.size]])
    return np.column_stack([time[edges[:-1]], time[edges[1:] - 1]])


def _position_container(nwb):
    if "behavior" not in nwb.processing:
        return None
    for container in nwb.processing["behavior"].data_interfaces.values():
        if type(container).__name__ == "Position":
            return container
    return None


def _led_sources(names: list[str], led_names: dict | None, name: str, where: str) -> list[tuple[str, str | None]]:
    """Which series are which LED: [(front series, back series or None)], one pair per
    position source (an epoch's camera, or the whole session).

    ``led_names`` ({"front": ..., "back": ...}, back optional) names series, or LEDs of
    the per-epoch layout (``led_1`` for ``led_1_series_1``, ``led_1_series_2``, ...)."""
    if led_names:
        front, back = led_names.get("front"), led_names.get("back")
        if not front:
            raise NWBReadError(f"{where}: the position_series mapping {led_names} has no 'front' series.")
        per_epoch = sorted(
            (int(m.group(1)), n) for n in names if (m := re.match(rf"^{re.escape(front)}_series_(\d+)$", n))
        )
        if per_epoch:
            return [(series, f"{back}_series_{k}" if back else None) for k, series in per_epoch]
        return [(front, back or None)]
    parsed = [_LAB_LED_SERIES.match(n) for n in names]
    if names and all(parsed):
        by_epoch: dict[int, list[tuple[int, str]]] = {}
        for m in parsed:
            by_epoch.setdefault(int(m.group(2)), []).append((int(m.group(1)[len("led_"):]), m.group(0)))
        sources = []
        for k in sorted(by_epoch):
            leds = [s for _, s in sorted(by_epoch[k])]
            if len(leds) > 2:
                raise NWBReadError(
                    f"{where} holds {len(leds)} LEDs for position series {k} ({leds}): say which are the front "
                    f"and back LEDs under position_series in decoding_configs.yaml, e.g.\n"
                    f"position_series:\n  \"{name}\": {{front: led_0, back: led_1}}"
                )
            sources.append((leds[0], leds[1] if len(leds) == 2 else None))
        return sources
    if all(n in names for n in LED_NAMES):
        return [LED_NAMES]
    if len(names) == 1:
        return [(names[0], None)]
    example = f"{{front: {names[0]}, back: {names[1]}}}" if len(names) > 1 else "{front: NAME}"
    raise NWBReadError(
        f"{where} holds position series {names}: cannot tell which are the front and back LEDs. Name them "
        f"under position_series in decoding_configs.yaml (keys are session file names or patterns), e.g.\n"
        f"position_series:\n  \"{name}\": {example}"
    )


def _led_cm(series, where: str) -> np.ndarray:
    """LED positions in cm; a frame stored as exactly (0, 0), Trodes' mark of a lost
    LED, is NaN."""
    data = np.asarray(series.data[:])
    if data.ndim != 2 or data.shape[1] < 2:
        raise NWBReadError(f"{where}: position series {series.name} has shape {data.shape}; expected (frames, 2).")
    lost = np.all(data[:, :2] == 0, axis=1)
    cm = data[:, :2].astype(float) * float(series.conversion) * 100.0  # data x conversion is in metres
    cm[lost] = np.nan
    return cm


def format_seconds(t: float) -> str:
    """A time in s as it reads best in a message: 30, 6.666667, 1687000030.5 (never 1.687e+09)."""
    return f"{t:.6f}".rstrip("0").rstrip(".")


def _same_frames(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per row, whether two arrays of LED positions agree (a lost LED, NaN, agrees with NaN)."""
    return np.all((a == b) | (np.isnan(a) & np.isnan(b)), axis=1)


def frames_in_time_order(raw: RawPosition, where: str) -> RawPosition:
    """``raw`` without repeated frames (the same timestamp and LED positions as the frame
    before: a camera that sent a frame twice), which are dropped with a warning.

    Position is interpolated by time, so a timestamp that goes backwards is an error, as
    is a timestamp shared by frames with different positions (which is right cannot be
    told); the message names ``where`` (the file and series), the frame and its time."""
    time = raw.time
    step = np.diff(time)
    backwards = np.flatnonzero(step < 0)
    if backwards.size:
        i = int(backwards[0]) + 1
        raise NWBReadError(
            f"{where}: timestamps go backwards at frame {i}: t = {format_seconds(time[i])} s after "
            f"{format_seconds(time[i - 1])} s at frame {i - 1}. Position is interpolated by time, so a camera's frames "
            "must be in time order: convert the recording again, or write the series with its frames sorted by time."
        )
    repeated = np.flatnonzero(step == 0) + 1
    if not repeated.size:
        return raw
    leds = [raw.front] if raw.back is None else [raw.front, raw.back]
    same = np.logical_and.reduce([_same_frames(led[repeated], led[repeated - 1]) for led in leds])
    if not same.all():
        i = int(repeated[~same][0])
        raise NWBReadError(
            f"{where}: frames {i - 1} and {i} share t = {format_seconds(time[i])} s but differ, so which position is "
            "right cannot be told. Convert the recording again, or drop one of the two frames from the series."
        )
    warnings.warn(
        f"{where}: dropped {repeated.size} repeated frame(s), each with the timestamp and position of the frame before "
        f"it (the first: frame {repeated[0]}, t = {format_seconds(time[repeated[0]])} s).",
        stacklevel=2,
    )
    keep = np.ones(time.size, dtype=bool)
    keep[repeated] = False
    return RawPosition(time[keep], raw.front[keep], None if raw.back is None else raw.back[keep], raw.name)


def _raw_positions(nwb, name: str, led_names: dict | None) -> list[RawPosition]:
    container = _position_container(nwb)
    where = f"NWB file {name}: processing/behavior/{container.name}"
    series = dict(container.spatial_series)
    sources = []
    for front_name, back_name in _led_sources(sorted(series), led_names, name, where):
        for needed in (front_name, back_name):
            if needed is not None and needed not in series:
                raise NWBReadError(f"{where} has no position series {needed!r}; it holds {sorted(series)}.")
        front = series[front_name]
        time = np.asarray(front.timestamps[:], dtype=float) if front.timestamps is not None else (
            float(front.starting_time or 0.0) + np.arange(len(front.data)) / float(front.rate)
        )  # fmt: skip
        back = None
        if back_name is not None:
            back = _led_cm(series[back_name], where)
            if back.shape[0] != time.size:
                raise NWBReadError(
                    f"{where}: LED series {front_name} and {back_name} have {time.size} and {back.shape[0]} frames; "
                    "they must be the same camera's frames. Name the right pair under position_series."
                )
        raw = RawPosition(time=time, front=_led_cm(front, where), back=back,
                          name=front_name if back_name is None else f"{front_name}, {back_name}")  # fmt: skip
        sources.append(frames_in_time_order(raw, f"NWB file {name}: position series {front_name}"))
    # numbered in time order, as the labs' pipeline numbers "pos {k} valid times"
    return sorted(sources, key=lambda s: s.time[0] if s.time.size else np.inf)


def read_raw_position(path: str | Path, led_names: dict | None = None) -> list[RawPosition]:
    """Every position source of the file: one per epoch's camera series on lab files,
    one for the whole session otherwise; each in time order (``frames_in_time_order``:
    repeated frames dropped with a warning, timestamps going backwards an error)."""
    io, nwb = _open(path)
    with io:
        if _position_container(nwb) is None:
            raise NWBReadError(
                f"NWB file {Path(path).name} has no raw position: expected processing/behavior/position (or "
                "Position) with one SpatialSeries per camera LED."
            )
        return _raw_positions(nwb, Path(path).name, led_names)


def read_waveform_features(path: str | Path, electrode_group_names: list[str] | None = None) -> list[WaveformFeatures]:
    """Spike times and per-channel amplitudes of the given electrode groups (default all);
    a group without spikes has times (0,) and features (0, n_channels)."""
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
                    # (spikes, channels, features per channel); spelled out, as -1 cannot be inferred without spikes
                    features=features.reshape(features.shape[0], int(np.prod(features.shape[1:]))),
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

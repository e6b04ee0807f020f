"""Run the Frank lab's own converter (trodes_to_nwb 0.1.9) end to end on a small
simulated SpikeGadgets recording, show the NWB file it writes, then register and decode
that file with this project's CLI and default configuration.

    python benchmarks/trodes_converter.py                # everything in a temporary folder
    python benchmarks/trodes_converter.py --keep DIR     # keep the recording, NWB and home in DIR

Steps:

1. The converter runs in its own virtual environment, ``benchmarks/.venv-trodes``,
   created on first use with ``trodes-to-nwb==0.1.9`` (it pins pynwb <= 3.0.0 and brings
   ``ndx-franklab-novela`` 0.2.3), so it never touches this project's environment.
2. A session folder is simulated as Trodes writes it, one day of one animal
   (``<date>_<animal>_<epoch>_<tag>.*``): epoch ``01_s1``, 30 s in a sleep box seen by
   camera 1, and epoch ``02_r1``, 90 s in a 1 m open field seen by camera 2 (another
   meters_per_pixel), five minutes later. Per epoch: a ``.rec`` file (Trodes' XML
   header, then one binary packet per 30 kHz sample: sync byte, Controller_DIO, ECU,
   Multiplexed and SysClock bytes, the uint32 Trodes timestamp, then the int16 samples of
   4 tetrodes on 16 of a 64-channel headstage's channels, in the headstage's interleaved
   hardware order), the camera's ``.videoTimeStamps.cameraHWSync`` (PTP frame times) and
   the online tracker's ``.videoPositionTracking`` (two LEDs in pixels, 0 when lost), and a
   stand-in ``.h264`` (the converter only copies it). Plus the metadata YAML. The raw
   signal holds place-cell spikes (``decoding_assets.decoder.simulate``) whose firing
   follows the position written to the tracking file; one channel is marked bad (and is
   noisier). This runs in the project's Python.
3. ``trodes_to_nwb.convert.create_nwbs`` converts the folder, in the converter's
   environment, with the converter's own probe metadata (``tetrode_12.5``).
4. The NWB layout is printed (h5py): position series, e-series, electrodes table,
   epochs, tasks.
5. ``decoding-assets --home <home> run <file.nwb>`` registers and decodes it with the
   default configuration; the catalog's decoding outputs are printed.
6. A Markdown table of figures: simulation, conversion and decoding seconds, the NWB
   file's size, the median decoding error per decoded interval, total seconds.

Paths of the session folder must contain no '.' other than the files' own (the converter
splits full paths on '.').
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))  # the project's packages, however the script is started

TRODES_VENV = HERE / ".venv-trodes"
TRODES_REQUIREMENTS = ["trodes-to-nwb==0.1.9"]

DATE, ANIMAL = "20260105", "synth"  # the converter groups files by <date>_<animal>
SAMPLING_RATE = 30_000
FRAME_RATE = 30.0
UV_PER_BIT = 0.195  # Intan headstage; also decoding_assets.decoder.simulate.RAW_UV_PER_BIT
N_TETRODES = 4
HEADSTAGE_CHANNELS, CHANNELS_PER_CHIP = 64, 32
# hardware channel of each tetrode's 4 wires, spread over both chips as on a real drive
HW_CHANNELS = [[5, 1, 4, 0], [12, 9, 14, 10], [37, 33, 38, 35], [60, 56, 63, 57]]
BAD_CHANNEL = (3, 3)  # (tetrode, channel): listed in bad_channels and made noisy
REFERENCE = (4, 1)  # tetrodes 1-3 reference ntrode 4's channel 1 (Trodes counts from 1)
SESSION_START = dt.datetime(2026, 1, 5, 10, 0, 0, tzinfo=dt.timezone.utc)
FIRST_TIMESTAMP = 3_000_000  # the controller had been on for 100 s
GAP_S = 300.0  # between the end of the sleep epoch and the start of the run epoch


@dataclass
class Epoch:
    number: int
    tag: str
    duration_s: float
    camera_id: int
    meters_per_pixel: float
    arena_cm: float  # side of the square seen by the camera
    frame_size: tuple[int, int]  # camera resolution, pixels
    offset_px: tuple[int, int]  # where the arena's corner sits in the frame

    @property
    def stem(self) -> str:
        return f"{DATE}_{ANIMAL}_{self.number:02d}_{self.tag}"


EPOCHS = [
    Epoch(1, "s1", 30.0, 1, 0.001, 30.0, (640, 480), (170, 90)),
    Epoch(2, "r1", 90.0, 2, 0.0025, 100.0, (640, 480), (120, 40)),
]


# ---------------------------------------------------------------------------- simulation


def simulate_session(seed: int = 0) -> dict:
    """Per epoch: the head path (500 Hz, cm), the spikes (times s from the epoch's start,
    4-channel marks µV) and the raw int16 signal; the same units fire in both epochs."""
    from scipy.ndimage import gaussian_filter1d

    from decoding_assets.decoder.simulate import simulate_open_field, simulate_raw_recording

    rng = np.random.default_rng(seed + 10)
    sleep, run = EPOCHS
    field = simulate_open_field(duration=run.duration_s, n_tetrodes=N_TETRODES, arena_size=run.arena_cm, seed=seed)
    out = {run.number: {"time": field.position_time, "position": field.position,
                        "spike_times": field.spike_times, "marks": field.spike_waveform_features}}  # fmt: skip

    # Sleep: the animal curled up near the middle of the box, drifting by a centimetre or
    # two; the run's units fire at a third of their rate, whatever the position (their
    # marks are resampled from the run's, so they are the same units).
    n = int(sleep.duration_s * field.sampling_frequency)
    drift = gaussian_filter1d(rng.normal(0.0, 1.0, (n, 2)), sigma=field.sampling_frequency, axis=0)
    position = sleep.arena_cm / 2 + 2.0 * drift / np.abs(drift).max()
    times, marks = [], []
    for t_run, m_run in zip(field.spike_times, field.spike_waveform_features):
        count = rng.poisson(len(t_run) / run.duration_s / 3 * sleep.duration_s)
        times.append(np.sort(rng.uniform(0.0, sleep.duration_s, count)))
        marks.append(m_run[rng.integers(0, len(m_run), count)] + rng.normal(0.0, 5.0, (count, 4)))
    out[sleep.number] = {"time": np.arange(n) / field.sampling_frequency, "position": position,
                         "spike_times": times, "marks": marks}  # fmt: skip

    for epoch in EPOCHS:
        e = out[epoch.number]
        raw = simulate_raw_recording(
            e["spike_times"], e["marks"], 0.0, epoch.duration_s, SAMPLING_RATE, seed=seed + epoch.number
        )
        data = raw.data
        bad = 4 * BAD_CHANNEL[0] + BAD_CHANNEL[1]  # a noisy wire: 50 µV rms on top
        noisy = data[:, bad].astype(np.int32) + np.round(rng.normal(0.0, 50.0 / UV_PER_BIT, len(data))).astype(np.int32)
        data[:, bad] = np.clip(noisy, -32768, 32767)
        e["raw"] = data
        e["n_spikes"] = [len(s) for s in raw.spike_samples]
    return out


def camera_frames(epoch: Epoch, path_time: np.ndarray, position: np.ndarray, rng) -> dict:
    """What the camera and the online tracker write: per frame, the time (s from the
    epoch's start) and both LEDs in pixels (uint16, (0, 0) when the LED was lost).

    The camera starts 0.1 s into the recording, takes 10 frames, pauses 1 s (the PTP
    synchronization pause the converter looks for; it drops the frames before it) and
    then runs at 30 frames/s with 0.2 ms of jitter until 0.1 s before the end."""
    from scipy.ndimage import gaussian_filter1d

    period = 1.0 / FRAME_RATE
    first = 0.1 + period * np.arange(10)
    rest = np.arange(first[-1] + 1.0, epoch.duration_s - 0.1, period)
    t = np.concatenate([first, rest])
    t[10:] += rng.normal(0.0, 2e-4, len(t) - 10)

    head = np.column_stack([np.interp(t, path_time, position[:, d]) for d in range(2)])
    # heading from the smoothed velocity, held while the animal is still
    step = np.gradient(gaussian_filter1d(position, 25, axis=0), axis=0)
    angle = np.unwrap(np.arctan2(step[:, 1], step[:, 0]))
    moving = np.hypot(step[:, 0], step[:, 1]) * 500.0 > 2.0
    index = np.maximum.accumulate(np.where(moving, np.arange(len(angle)), 0))
    angle = np.interp(t, path_time, angle[index])
    direction = np.column_stack([np.cos(angle), np.sin(angle)])
    leds = [head + 2.5 * direction, head - 2.5 * direction]  # front, back: 5 cm apart

    cm_per_px = epoch.meters_per_pixel * 100.0
    pixels = []
    for led in leds:  # image rows grow downwards: flip y
        x = epoch.offset_px[0] + led[:, 0] / cm_per_px
        y = epoch.offset_px[1] + (epoch.arena_cm - led[:, 1]) / cm_per_px
        xy = np.column_stack([x, y]).round()
        pixels.append(np.clip(xy, 1, np.array(epoch.frame_size) - 1).astype(np.uint16))

    # lost LEDs: 2 % of frames lose the back LED, 1 % the front one, 0.5 % both, and a
    # 0.5 s stretch loses both in the run (the animal rearing under the cable)
    n = len(t)
    lost_back = rng.random(n) < 0.02
    lost_front = rng.random(n) < 0.01
    both = rng.random(n) < 0.005
    if epoch.tag.startswith("r"):
        both[n // 2 : n // 2 + 15] = True
    pixels[0][lost_front | both] = 0
    pixels[1][lost_back | both] = 0
    return {"time": t, "front": pixels[0], "back": pixels[1]}


# ---------------------------------------------------------------------------- Trodes files


def packet_channel_order() -> list[int]:
    """The hardware channels in the order a packet stores them: channel 0 of every chip,
    then channel 1 of every chip, ..., keeping only the channels recorded."""
    recorded = {h for tetrode in HW_CHANNELS for h in tetrode}
    n_chips = HEADSTAGE_CHANNELS // CHANNELS_PER_CHIP
    order = [k + chip * CHANNELS_PER_CHIP for k in range(CHANNELS_PER_CHIP) for chip in range(n_chips)]
    return [h for h in order if h in recorded]


def packet_dtype() -> np.dtype:
    """One packet, as the header below describes it (86 bytes)."""
    return np.dtype([
        ("sync", "u1"),  # always 0x55
        ("controller_dio", "u1"),  # Controller_DIO, 1 byte
        ("ecu", "u1", 32),  # ECU: Din 1-8 in byte 0, Dout 1-8 in byte 4, Ain/Aout int16 from byte 8
        ("multiplexed", "u1", 8),  # headstage sensors, interleaved
        ("sysclock", "<i8"),  # SysClock: system time, ns
        ("timestamp", "<u4"),  # Trodes sample count
        ("ephys", "<i2", len(HW_CHANNELS) * 4),
    ])  # fmt: skip


def header_xml(epoch: Epoch, system_time_ms: int, first_timestamp: int) -> str:
    """The XML header Trodes writes at the top of a .rec file (what the converter reads)."""
    global_conf = {
        "headstageSerial": "01504 00023", "headstageSmartRefOn": "0", "realtimeMode": "0",
        "headstageAutoSettleOn": "0", "timestampAtCreation": str(first_timestamp),
        "controllerFirmwareVersion": "3.18", "controllerSerial": "65535 65535",
        "saveDisplayedChanOnly": "1", "headstageFirmwareVersion": "4.4", "qtVersion": "6.2.2",
        "compileDate": "May 24 2023", "compileTime": "10:59:15", "filePrefix": "",
        "headstageGyroSensorOn": "1", "headstageMagSensorOn": "0", "trodesVersion": "2.4.2",
        "headstageAccelSensorOn": "1", "commitHead": "heads/Release_2.4.2-0-g6a2a9d9e",
        "systemTimeAtCreation": f"{system_time_ms:>14}", "filePath": "", "fileChunkSize": "-1",
    }  # fmt: skip
    attrs = lambda d: " ".join(f'{k}="{v}"' for k, v in d.items())
    lines = ['<?xml version="1.0"?>', "<Configuration>", f" <GlobalConfiguration {attrs(global_conf)}/>"]
    lines.append(f' <HardwareConfiguration samplingRate="{SAMPLING_RATE}" numChannels="{HEADSTAGE_CHANNELS}">')
    lines.append('  <Device name="Controller_DIO" numBytes="1" available="1" packetOrderPreference="10">')
    lines += [
        f'   <Channel id="Controller_Din{i + 1}" dataType="digital" startByte="0" bit="{i}" input="1"/>'
        for i in range(8)
    ]
    lines.append("  </Device>")
    lines.append('  <Device name="ECU" numBytes="32" available="1" packetOrderPreference="20">')
    lines += [
        f'   <Channel id="ECU_Din{i + 1}" dataType="digital" startByte="0" bit="{i}" input="1"/>' for i in range(8)
    ]
    lines += [
        f'   <Channel id="ECU_Dout{i + 1}" dataType="digital" startByte="4" bit="{i}" input="0"/>' for i in range(8)
    ]
    lines += [
        f'   <Channel id="ECU_Ain{i + 1}" dataType="analog" startByte="{8 + 2 * i}" bit="0" input="1"/>'
        for i in range(4)
    ]
    lines.append("  </Device>")
    lines.append('  <Device name="Multiplexed" numBytes="8" available="1" packetOrderPreference="30">')
    for axis, byte in zip("XYZ", (2, 4, 6)):
        lines.append(f'   <Channel id="Headstage_Accel{axis}" dataType="analog" startByte="{byte}" bit="0" input="1" '
                     'interleavedDataIDByte="0" interleavedDataIDBit="3"/>')  # fmt: skip
    lines.append("  </Device>")
    lines.append('  <Device name="SysClock" numBytes="8" available="1" packetOrderPreference="10000"/>')
    lines.append(" </HardwareConfiguration>")
    # the camera module runs with PTP: the converter then takes frame times from the
    # camera's own clock (.cameraHWSync HWTimestamp) rather than from DIO camera ticks
    lines.append(" <ModuleConfiguration>")
    lines.append('  <SingleModuleConfiguration moduleName="cameraModule" sendTrodesConfig="1" sendNetworkInfo="1">')
    lines.append('   <Argument flag="-20" value="-ptpEnabled"/>')
    lines.append("  </SingleModuleConfiguration>")
    lines.append(" </ModuleConfiguration>")
    lines.append(f' <SpikeConfiguration chanPerChip="{CHANNELS_PER_CHIP}" categories="">')
    for t, channels in enumerate(HW_CHANNELS):
        ref = (
            {"refNTrodeID": str(REFERENCE[0]), "refChan": str(REFERENCE[1])}
            if t + 1 != REFERENCE[0]
            else {"refNTrodeID": "0", "refChan": "1"}
        )
        ntrode = {"id": str(t + 1), **ref, "refOn": "0", "filterOn": "1", "lowFilter": "600", "highFilter": "6000",
                  "LFPChan": "1", "LFPHighFilter": "200", "rawScalingToUv": "0.19500000000000001",
                  "spikeScalingToUv": "0.19500000000000001", "lfpScalingToUv": "0.19500000000000001", "color": "#ffffff"}  # fmt: skip
        lines.append(f"  <SpikeNTrode {attrs(ntrode)}>")
        lines += [
            f'   <SpikeChannel hwChan="{h}" thresh="60" maxDisp="400" triggerOn="1" spikeSortingGroup="0"/>'
            for h in channels
        ]
        lines.append("  </SpikeNTrode>")
    lines.append(" </SpikeConfiguration>")
    lines.append("</Configuration>")
    return "\n".join(lines) + "\n"


def write_rec(
    path: Path, epoch: Epoch, raw: np.ndarray, din1: np.ndarray, system_time_ms: int, first_timestamp: int
) -> None:
    """Header, then one packet per sample; the system clock ticks with the samples."""
    n = len(raw)
    packets = np.zeros(n, dtype=packet_dtype())
    packets["sync"] = 0x55
    packets["ecu"][:, 0] = din1.astype(np.uint8)  # ECU_Din1 is bit 0 of ECU byte 0
    packets["sysclock"] = system_time_ms * 1_000_000 + np.round(np.arange(n) * (1e9 / SAMPLING_RATE)).astype(np.int64)
    packets["timestamp"] = first_timestamp + np.arange(n, dtype=np.uint32)
    column = {h: 4 * t + c for t, channels in enumerate(HW_CHANNELS) for c, h in enumerate(channels)}
    packets["ephys"] = raw[:, [column[h] for h in packet_channel_order()]]
    with open(path, "wb") as f:
        f.write(header_xml(epoch, system_time_ms, first_timestamp).encode())
        packets.tofile(f)


def write_trodes_binary(path: Path, settings: dict, fields: str, records: np.ndarray) -> None:
    """A Trodes binary file: '<Start settings>' text block with its Fields line, then the records."""
    lines = ["<Start settings>", *(f"{k}: {v}" for k, v in settings.items()), f"Fields: {fields}", "<End settings>"]
    with open(path, "wb") as f:
        f.write(("\n".join(lines) + "\n").encode())
        records.tofile(f)


def write_camera_files(folder: Path, epoch: Epoch, frames: dict, system_time_ms: int, first_timestamp: int) -> None:
    """.videoTimeStamps.cameraHWSync (PTP frame times, ns) and .videoPositionTracking."""
    t = frames["time"]
    trodes_time = (first_timestamp + np.round(t * SAMPLING_RATE)).astype(np.uint32)
    sync = np.zeros(len(t), dtype=[("PosTimestamp", "<u4"), ("frameCount", "<u2"), ("HWTimestamp", "<u8")])
    sync["PosTimestamp"] = trodes_time
    sync["frameCount"] = np.arange(len(t)) + 1
    sync["HWTimestamp"] = system_time_ms * 1_000_000 + np.round(t * 1e9).astype(np.uint64)
    write_trodes_binary(folder / f"{epoch.stem}.1.videoTimeStamps.cameraHWSync", {},
                        "<PosTimestamp uint32><frameCount uint16><HWTimestamp uint64>", sync)  # fmt: skip

    tracking = np.zeros(
        len(t), dtype=[("time", "<u4"), ("xloc", "<u2"), ("yloc", "<u2"), ("xloc2", "<u2"), ("yloc2", "<u2")]
    )
    tracking["time"] = trodes_time
    tracking["xloc"], tracking["yloc"] = frames["front"].T
    tracking["xloc2"], tracking["yloc2"] = frames["back"].T
    settings = {"threshold": 199, "dark": 0, "clockrate": SAMPLING_RATE,
                "camera resolution": "x".join(map(str, epoch.frame_size)), "pixel scale": "0 pix/cm"}  # fmt: skip
    write_trodes_binary(folder / f"{epoch.stem}.1.videoPositionTracking", settings,
                        "<time uint32><xloc uint16><yloc uint16><xloc2 uint16><yloc2 uint16>", tracking)  # fmt: skip
    (folder / f"{epoch.stem}.1.h264").write_bytes(b"\x00\x00\x00\x01")  # copied, never decoded


def metadata_yaml(folder: Path, sleep: Epoch, run: Epoch) -> str:
    """The session's metadata, as the lab's YAML generator writes it (the fields the
    converter reads, and its JSON schema's required ones)."""
    groups = "".join(
        f"""  - id: {t}
    location: CA1
    device_type: tetrode_12.5
    description: tetrode
    targeted_location: CA1
    targeted_x: {2.0 + 0.3 * t}
    targeted_y: -3.8
    targeted_z: 2.2
    units: mm
"""
        for t in range(N_TETRODES)
    )
    maps = "".join(
        f"""  - ntrode_id: {t + 1}
    electrode_group_id: {t}
    bad_channels: {[BAD_CHANNEL[1]] if t == BAD_CHANNEL[0] else []}
    map:
      "0": 0
      "1": 1
      "2": 2
      "3": 3
"""
        for t in range(N_TETRODES)
    )
    return f"""experimenter_name:
  - Doe, Jane
lab: Loren Frank Lab
institution: University of California, San Francisco
experiment_description: Simulated place cells in a sleep box and an open field
session_description: Synthetic session for the trodes_to_nwb benchmark
session_id: {ANIMAL}_{DATE}
keywords:
  - hippocampus
  - synthetic
subject:
  description: Long-Evans Rat
  genotype: Wild Type
  sex: M
  species: Rattus norvegicus
  subject_id: {ANIMAL}
  date_of_birth: 2025-06-01T00:00:00.000Z
  weight: 450
data_acq_device:
  - name: SpikeGadgets
    system: SpikeGadgets
    amplifier: Intan
    adc_circuit: Intan
cameras:
  - id: {sleep.camera_id}
    meters_per_pixel: {sleep.meters_per_pixel}
    manufacturer: Allied Vision
    model: Mako G-158C
    lens: Theia SL183M
    camera_name: sleep box camera
  - id: {run.camera_id}
    meters_per_pixel: {run.meters_per_pixel}
    manufacturer: Allied Vision
    model: Mako G-158C
    lens: Theia SL183M
    camera_name: open field camera
tasks:
  - task_name: sleep
    task_description: rest in the sleep box
    task_environment: sleep box
    camera_id:
      - {sleep.camera_id}
    task_epochs:
      - {sleep.number}
  - task_name: open field
    task_description: forage for scattered food
    task_environment: open field
    camera_id:
      - {run.camera_id}
    task_epochs:
      - {run.number}
associated_files:
  - name: reward_notes
    description: experimenter's notes on the run epoch
    path: {folder / "reward_notes.txt"}
    task_epochs: {run.number}
associated_video_files:
  - name: {sleep.stem}.1.h264
    camera_id: {sleep.camera_id}
    task_epochs: {sleep.number}
  - name: {run.stem}.1.h264
    camera_id: {run.camera_id}
    task_epochs: {run.number}
units:
  analog: "-1"
  behavioral_events: "-1"
times_period_multiplier: 1.5
raw_data_to_volts: 1.95e-07
default_header_file_path: {folder}
device:
  name:
    - Trodes
behavioral_events:
  - description: Din1
    name: food well 1 poke
electrode_groups:
{groups}ntrode_electrode_group_channel_map:
{maps}"""


def write_session(folder: Path, session: dict, seed: int = 0) -> dict:
    """Write the whole session folder; returns per-epoch timing facts for the summary."""
    rng = np.random.default_rng(seed + 20)
    folder.mkdir(parents=True, exist_ok=True)
    system_time_ms = int(SESSION_START.timestamp() * 1000)
    first_timestamp = FIRST_TIMESTAMP
    facts = {}
    for epoch in EPOCHS:
        e = session[epoch.number]
        n = len(e["raw"])
        din1 = np.zeros(n, dtype=bool)  # food-well pokes in the run: 0.2 s every ~15 s
        if epoch.tag.startswith("r"):
            for start in np.arange(5.0, epoch.duration_s - 1.0, 15.0):
                din1[int(start * SAMPLING_RATE) : int((start + 0.2) * SAMPLING_RATE)] = True
        write_rec(folder / f"{epoch.stem}.rec", epoch, e["raw"], din1, system_time_ms, first_timestamp)
        frames = camera_frames(epoch, e["time"], e["position"], rng)
        write_camera_files(folder, epoch, frames, system_time_ms, first_timestamp)
        facts[epoch.stem] = {"start_s": system_time_ms / 1000, "samples": n, "frames": len(frames["time"]),
                             "spikes_per_tetrode": e["n_spikes"]}  # fmt: skip
        # the next epoch: the controller keeps counting samples, the clock keeps ticking
        elapsed = n / SAMPLING_RATE + GAP_S
        system_time_ms += round(elapsed * 1000)
        first_timestamp += round(elapsed * SAMPLING_RATE)
    (folder / "reward_notes.txt").write_text("food scattered every 30 s\n")
    (folder / f"{DATE}_{ANIMAL}_metadata.yml").write_text(metadata_yaml(folder, *EPOCHS))
    return facts


# ---------------------------------------------------------------------------- conversion

CONVERT = """
import json, sys, time
from pathlib import Path
import trodes_to_nwb
from trodes_to_nwb.convert import create_nwbs

folder, output = Path(sys.argv[1]), Path(sys.argv[2])
probes = sorted((Path(trodes_to_nwb.__file__).parent / "device_metadata").rglob("*.yml"))
start = time.perf_counter()
create_nwbs(folder, device_metadata_paths=probes, output_dir=str(output), video_directory=str(output), n_workers=1)
print(json.dumps({"seconds": time.perf_counter() - start, "version": trodes_to_nwb.__version__}))
"""


def convert(python: Path, folder: Path, output: Path) -> dict:
    """create_nwbs in the converter's environment; its log goes to output/convert.log.
    It runs from ``output`` because it writes its own log file into the working folder."""
    output.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    result = subprocess.run(
        [str(python), "-c", CONVERT, str(folder), str(output)], cwd=output, capture_output=True, text=True, check=False
    )
    seconds = time.perf_counter() - start
    (output / "convert.log").write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        raise RuntimeError(f"create_nwbs failed (exit {result.returncode}):\n{(result.stdout + result.stderr)[-4000:]}")
    info = json.loads(result.stdout.strip().splitlines()[-1])
    info["process_seconds"] = seconds
    info["inspector"] = [line for line in (result.stdout + result.stderr).splitlines() if "NWB Inspector found" in line]
    return info


# ---------------------------------------------------------------------------- the NWB layout


def _describe(dataset) -> str:
    attrs = {k: dataset.attrs[k] for k in ("conversion", "offset", "resolution", "unit") if k in dataset.attrs}
    attrs = ", ".join(f"{k}={v.decode() if isinstance(v, bytes) else v}" for k, v in attrs.items())
    return f"{dataset.dtype} {dataset.shape}" + (f"  [{attrs}]" if attrs else "")


def _strings(values) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]


def print_layout(path: Path) -> dict:
    """The parts of the file a decoder reads, with dtypes, shapes and ranges."""
    import h5py

    facts = {}
    with h5py.File(path, "r") as f:
        print(f"\n## NWB layout of {path.name}\n")
        print(
            "top level:",
            ", ".join(
                f"{k}/{', '.join(f[k].keys())}" if k in ("processing", "acquisition", "intervals") else k for k in f
            ),
        )

        print("\nprocessing/behavior:", list(f["processing/behavior"].keys()))
        position = f["processing/behavior/position"]
        print(f"processing/behavior/position  ({position.attrs.get('neurodata_type', b'')!s})")
        for name, series in position.items():
            data, stamps = series["data"], series["timestamps"][:]
            values = data[:]
            lost = np.all(values == 0, axis=1)
            print(f"  {name}  ({series.attrs.get('neurodata_type')!s}, reference_frame={series['reference_frame'][()].decode()!r}, "
                  f"description={series.attrs.get('description')!r})")  # fmt: skip
            print(f"    data        {_describe(data)}  min {values.min(axis=0)} max {values.max(axis=0)}; "
                  f"rows (0, 0) = lost LED: {lost.sum()} of {len(values)}, NaN: {np.isnan(values.astype(float)).any(axis=1).sum()}")  # fmt: skip
            print(f"    timestamps  {_describe(series['timestamps'])}  {stamps[0]:.6f} .. {stamps[-1]:.6f} "
                  f"(median step {np.median(np.diff(stamps)) * 1e3:.3f} ms)")  # fmt: skip
        for module in ("position_frame_index", "non_repeat_timestamp_labels"):
            if module in f["processing"]:
                for name, series in f[f"processing/{module}"].items():
                    print(f"processing/{module}/{name}/data  {_describe(series['data'])}")

        eseries = f["acquisition/e-series"]
        stamps = eseries["timestamps"][:]
        steps = np.diff(stamps)
        gap = int(np.argmax(steps))
        print(f"\nacquisition/e-series  ({eseries.attrs.get('neurodata_type')!s})")
        print(
            f"  data        {_describe(eseries['data'])}  chunks {eseries['data'].chunks} compression {eseries['data'].compression}"
        )
        print(f"  timestamps  {_describe(eseries['timestamps'])}  {stamps[0]:.6f} .. {stamps[-1]:.6f}; "
              f"median step {np.median(steps) * 1e6:.4f} µs (float64 spacing there: {np.spacing(stamps[-1]) * 1e6:.3f} µs); "
              f"largest gap {steps[gap]:.6f} s after sample {gap}")  # fmt: skip
        print(f"  electrodes  {_describe(eseries['electrodes'])}")
        facts["eseries_gap_s"] = float(steps[gap])

        electrodes = f["general/extracellular_ephys/electrodes"]
        print("\ngeneral/extracellular_ephys/electrodes columns:")
        for name, column in electrodes.items():
            values = column[:]
            if column.dtype.kind == "O" and len(values) and isinstance(values[0], h5py.h5r.Reference):
                shown = [f[r].name.rsplit("/", 1)[-1] for r in values[:16]]
            else:
                shown = _strings(values[:16]) if column.dtype.kind in "OS" else values[:16].tolist()
            print(f"  {name:16s} {column.dtype!s:10s} {column.shape}  {shown}")
        print("electrode groups:", list(f["general/extracellular_ephys"].keys()))

        epochs = f["intervals/epochs"]
        tags = _strings(epochs["tags"][:])
        print("\nintervals/epochs:", {k: f"{epochs[k].dtype} {epochs[k].shape}" for k in epochs})
        for i, (a, b) in enumerate(zip(epochs["start_time"][:], epochs["stop_time"][:])):
            print(
                f"  row {i}: start {a:.6f} stop {b:.6f} ({b - a:.3f} s) tags {tags[epochs['tags_index'][i - 1] if i else 0 : epochs['tags_index'][i]]}"
            )
        facts["epoch_tags"] = tags

        print("\nprocessing/tasks:")
        for name, table in f["processing/tasks"].items():
            cols = {
                k: (
                    str(table[k].dtype),
                    table[k].shape,
                    _strings(table[k][:]) if table[k].dtype.kind in "OS" else table[k][:].tolist(),
                )
                for k in table
            }
            print(f"  {name}: {cols}")
        print("\nother processing modules:")
        for module in (
            "behavior/behavioral_events",
            "analog/analog",
            "sample_count",
            "video_files/video",
            "associated_files",
        ):
            for name, item in f[f"processing/{module}"].items():
                parts = {
                    k: _describe(v)
                    for k, v in item.items()
                    if isinstance(v, h5py.Dataset) and k in ("data", "timestamps")
                }
                print(f"  processing/{module}/{name}  ({item.attrs.get('neurodata_type')!s}) {parts}")
    return facts


# ---------------------------------------------------------------------------- decoding


def decode(nwb: Path, home: Path) -> dict:
    """Register and decode with the project's CLI and default configuration, then read
    the catalog's decoding outputs."""
    cli = Path(sys.executable).parent / "decoding-assets"
    command = [str(cli), "--home", str(home), "run", str(nwb)]
    print("\n$", " ".join(command), flush=True)
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    print(result.stdout[-6000:])
    if result.returncode != 0:
        print(f"decoding-assets run failed (exit {result.returncode}):\n{result.stderr[-6000:]}")
    outputs = None
    if (home / "catalog.duckdb").exists():
        from catalog import Catalog

        outputs = Catalog(home / "catalog.duckdb").outputs()
        columns = [
            c
            for c in (
                "nwb_file_name",
                "waveform_features_group_name",
                "decoding_interval",
                "median_decoding_error_cm",
                "run_seconds",
            )
            if c in outputs
        ]
        print("Catalog decoding outputs:")
        print(outputs[columns].to_string(index=False) if len(outputs) else "(none)")
    return {"returncode": result.returncode, "seconds": seconds, "outputs": outputs, "stderr": result.stderr}


# ---------------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--keep", type=Path, help="work in this folder and keep everything (default: a temporary folder)"
    )
    parser.add_argument("--trodes-venv", type=Path, default=TRODES_VENV)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from run_benchmarks import ensure_venv

    python = ensure_venv(args.trodes_venv, TRODES_REQUIREMENTS)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="trodes_") as tmp:
        work = (args.keep or Path(tmp)).resolve()
        folder, output, home = work / "raw" / ANIMAL, work / "nwb", work / "home"

        t = time.perf_counter()
        session = simulate_session(args.seed)
        facts = write_session(folder, session, args.seed)
        del session
        simulate_s = time.perf_counter() - t
        print(f"Simulated session in {folder} ({simulate_s:.1f} s):")
        for p in sorted(folder.iterdir()):
            print(f"  {p.name:55s} {p.stat().st_size / 2**20:8.2f} MiB")
        print(json.dumps(facts, indent=1))

        print(f"\nConverting with trodes_to_nwb in {args.trodes_venv} ...", flush=True)
        info = convert(python, folder, output)
        nwb = output / f"{ANIMAL}{DATE}.nwb"
        print(
            f"trodes_to_nwb {info['version']}: create_nwbs took {info['seconds']:.1f} s ({info['process_seconds']:.1f} s with start-up)"
        )
        print("\n".join(info["inspector"]))
        layout = print_layout(nwb)

        decoded = decode(nwb, home)
        total_s = time.perf_counter() - start

        rows = [("simulation and writing the .rec files, s", f"{simulate_s:.1f}"),
                ("conversion (create_nwbs, inspector included), s", f"{info['seconds']:.1f}"),
                ("NWB file size, MiB", f"{nwb.stat().st_size / 2**20:.1f}"),
                ("e-series gap between epochs, s", f"{layout['eseries_gap_s']:.3f}"),
                ("decoding-assets run, s", f"{decoded['seconds']:.1f}" + ("" if decoded["returncode"] == 0 else " (failed)"))]  # fmt: skip
        outputs = decoded["outputs"]
        if outputs is not None and len(outputs):
            for _, row in outputs.iterrows():
                rows.append(
                    (f"median decoding error, {row['decoding_interval']}, cm", f"{row['median_decoding_error_cm']:.1f}")
                )
        else:
            rows.append(("median decoding error, cm", "no decoding output"))
        rows.append(("total, s", f"{total_s:.1f}"))
        print("\n| figure | value |\n|---|---|")
        print("\n".join(f"| {k} | {v} |" for k, v in rows))
        if args.keep:
            print(f"\nKept: {folder}, {nwb}, {home}")
    return 0 if decoded["returncode"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

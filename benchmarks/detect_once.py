"""Extract clusterless spikes from one raw NWB recording with one implementation, in
this process, and record the time and the process's peak memory.

Runs under either virtual environment: ours (``--impl ours``: decoding_assets'
``extract_waveform_features``) or spikeinterface's (``--impl spikeinterface``: its NWB
reader, ``bandpass_filter`` and ``detect_peaks(method="locally_exclusive")``), both
set up as the labs' ``amplitude`` features: 300-6000 Hz, negative peaks at 100 µV, one
peak per event within 0.1 ms across a tetrode's channels.

    python benchmarks/detect_once.py --impl ours --nwb raw.nwb --output out.npz
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
from decode_once import peak_rss_mib

CHANNELS_PER_TETRODE = 4


def run_ours(path: str) -> dict:
    from decoding_assets.nwb import open_raw_recording
    from decoding_assets.waveforms import extract_waveform_features

    with open_raw_recording(path) as recording:
        groups = extract_waveform_features(recording, {}, n_workers=os.cpu_count())
        sampling_rate, start = recording.sampling_rate, recording.starting_time
    out = {}
    for t, g in enumerate(groups):
        out[f"samples_{t}"] = np.round((g.times - start) * sampling_rate).astype(np.int64)
        out[f"amplitude_{t}"] = g.features.min(axis=1)  # the deepest channel's trough
    return out


def run_spikeinterface(path: str) -> dict:
    import spikeinterface.extractors as se
    import spikeinterface.preprocessing as spre
    from spikeinterface.sortingcomponents.peak_detection import detect_peaks

    recording = se.read_nwb_recording(path, electrical_series_path="acquisition/e-raw")
    n = recording.get_num_channels()
    # the file places tetrodes 1 mm apart and their channels 10 µm apart (rel_x), so a
    # 100 µm radius is one tetrode
    filtered = spre.bandpass_filter(spre.scale_to_uV(recording), freq_min=300.0, freq_max=6000.0)  # stored units to µV
    peaks = detect_peaks(
        filtered,
        method="locally_exclusive",
        method_kwargs={"peak_sign": "neg", "detect_threshold": 100.0, "exclude_sweep_ms": 0.1, "radius_um": 100.0,
                       "noise_levels": np.ones(n, dtype="float32")},
        job_kwargs={"n_jobs": os.cpu_count(), "chunk_duration": "2s", "progress_bar": False},
    )  # fmt: skip
    tetrode = peaks["channel_index"] // CHANNELS_PER_TETRODE
    out = {}
    for t in range(n // CHANNELS_PER_TETRODE):
        mine = tetrode == t
        out[f"samples_{t}"] = peaks["sample_index"][mine].astype(np.int64)
        out[f"amplitude_{t}"] = peaks["amplitude"][mine].astype(np.float32)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--impl", choices=["ours", "spikeinterface"], required=True)
    parser.add_argument("--nwb", required=True)
    parser.add_argument("--output", required=True)
    args = parser.parse_args()
    started = time.perf_counter()
    out = run_ours(args.nwb) if args.impl == "ours" else run_spikeinterface(args.nwb)
    seconds = time.perf_counter() - started
    np.savez(args.output, **out)
    print(json.dumps({"seconds": seconds, "peak_rss_mib": peak_rss_mib()}))


if __name__ == "__main__":
    main()

"""Benchmark waveform feature extraction from raw recordings against spikeinterface's
band-pass and peak detection, on the same simulated NWB files, in one run.

    python benchmarks/waveform_features.py                 # both scenarios, 3 runs each
    python benchmarks/waveform_features.py --scenario tetrodes_16 --repeats 1

Each scenario is a simulated raw recording (``simulate_raw_recording``: the spikes of
simulated place cells as realistic waveforms in noise, LFP and drift) of many tetrodes
at 30 kHz, written as an NWB ``ElectricalSeries`` (int16, uncompressed). Each run is a
fresh process (``detect_once.py``) that reads the file and detects; spikeinterface
runs in its own virtual environment (``--si-venv``, created on first use). Reported:
throughput (seconds of recording per second), peak resident memory, the agreement of
the two implementations' spikes (within 0.1 ms on the same tetrode) and amplitudes, and
each one's recall and precision against the simulated spikes. Medians go to stdout as
Markdown and, with every run, to ``benchmarks/results/waveform_<scenario>.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from run_benchmarks import ensure_venv

HERE = Path(__file__).resolve().parent
SCENARIOS = {  # name: (tetrodes, seconds)
    "tetrodes_16": (16, 60.0),
    "tetrodes_32": (32, 30.0),
    "smoke": (4, 10.0),
}
SI_REQUIREMENTS = ["spikeinterface==0.105.3", "pynwb", "h5py", "scipy", "numba"]
MATCH = 3  # samples: 0.1 ms at 30 kHz


def write_recording(scenario: str, folder: Path, seed: int = 0) -> tuple[Path, Path]:
    from pynwb import NWBHDF5IO, NWBFile
    from pynwb.ecephys import ElectricalSeries

    from decoding_assets.decoder.simulate import RAW_UV_PER_BIT, simulate_open_field, simulate_raw_recording

    n_tetrodes, seconds = SCENARIOS[scenario]
    session = simulate_open_field(duration=seconds, n_tetrodes=n_tetrodes, seed=seed)
    raw = simulate_raw_recording(session.spike_times, session.spike_waveform_features, 0.0, seconds, seed=seed + 1)
    nwb = NWBFile(
        session_description=f"benchmark {scenario}", identifier=scenario,
        session_start_time=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc),
    )  # fmt: skip
    device = nwb.create_device(name="drive")
    for t in range(n_tetrodes):
        group = nwb.create_electrode_group(name=f"tetrode_{t:02d}", description="tetrode", location="CA1", device=device)
        for c in range(4):
            nwb.add_electrode(group=group, location="CA1", rel_x=1000.0 * t + 10.0 * c, rel_y=0.0)
    nwb.add_acquisition(
        ElectricalSeries(
            name="e-raw", data=raw.data, electrodes=nwb.create_electrode_table_region(list(range(4 * n_tetrodes)), "all"),
            starting_time=0.0, rate=raw.sampling_rate, conversion=RAW_UV_PER_BIT * 1e-6,
        )
    )  # fmt: skip
    path = folder / f"{scenario}.nwb"
    with NWBHDF5IO(str(path), "w") as io:
        io.write(nwb)
    truth = folder / f"{scenario}_truth.npz"
    np.savez(truth, **{f"samples_{t}": s for t, s in enumerate(raw.spike_samples)},
             **{f"amplitude_{t}": a.min(axis=1) for t, a in enumerate(raw.spike_amplitudes)})  # fmt: skip
    return path, truth


def run_once(python: str, impl: str, nwb: Path, output: Path) -> dict:
    result = subprocess.run(
        [python, str(HERE / "detect_once.py"), "--impl", impl, "--nwb", str(nwb), "--output", str(output)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    return json.loads(result.stdout.strip().splitlines()[-1])


def matched(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """For each sample of a: the index of b's nearest within MATCH samples, or -1."""
    if b.size == 0:
        return np.full(a.size, -1)
    j = np.clip(np.searchsorted(b, a), 1, max(b.size - 1, 1))
    left, right = j - 1, np.minimum(j, b.size - 1)
    pick = np.where(np.abs(a - b[left]) <= np.abs(a - b[right]), left, right)
    return np.where(np.abs(a - b[pick]) <= MATCH, pick, -1)


def agreement(ours: Path, theirs: Path, truth: Path, n_tetrodes: int) -> dict:
    a, b, t = np.load(ours), np.load(theirs), np.load(truth)
    n_ours = n_theirs = both = 0
    amplitude_diff, recall, precision = [], {"ours": [], "spikeinterface": []}, {"ours": [], "spikeinterface": []}
    for k in range(n_tetrodes):
        sa, sb = a[f"samples_{k}"], np.sort(b[f"samples_{k}"])
        order = np.argsort(b[f"samples_{k}"], kind="stable")
        amp_b = b[f"amplitude_{k}"][order]
        m = matched(sa, sb)
        n_ours, n_theirs, both = n_ours + sa.size, n_theirs + sb.size, both + int((m >= 0).sum())
        amplitude_diff.append(np.abs(a[f"amplitude_{k}"][m >= 0] - amp_b[m[m >= 0]]))
        true_samples, clear = t[f"samples_{k}"], t[f"amplitude_{k}"] <= -130.0
        for name, found in (("ours", sa), ("spikeinterface", sb)):
            recall[name].append((matched(true_samples[clear], found) >= 0).mean())
            precision[name].append((matched(found, true_samples) >= 0).mean() if found.size else 1.0)
    diff = np.concatenate(amplitude_diff)
    return {
        "spikes_ours": n_ours,
        "spikes_spikeinterface": n_theirs,
        "ours_found_by_spikeinterface": both / max(n_ours, 1),
        "spikeinterface_found_by_ours": both / max(n_theirs, 1),
        "amplitude_abs_diff_median_uv": float(np.median(diff)) if diff.size else None,
        "amplitude_abs_diff_max_uv": float(diff.max()) if diff.size else None,
        **{f"recall_{k}": float(np.mean(v)) for k, v in recall.items()},
        **{f"precision_{k}": float(np.mean(v)) for k, v in precision.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", choices=sorted(SCENARIOS), action="append")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--si-venv", type=Path, default=HERE / ".venv-spikeinterface")
    args = parser.parse_args()
    si_python = ensure_venv(args.si_venv, SI_REQUIREMENTS)
    rows = []
    for scenario in args.scenario or ["tetrodes_16", "tetrodes_32"]:
        n_tetrodes, seconds = SCENARIOS[scenario]
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            nwb, truth = write_recording(scenario, folder)
            runs = {"ours": [], "spikeinterface": []}
            for r in range(args.repeats):
                order = ["ours", "spikeinterface"] if r % 2 == 0 else ["spikeinterface", "ours"]
                for impl in order:
                    python = sys.executable if impl == "ours" else str(si_python)
                    runs[impl].append(run_once(python, impl, nwb, folder / f"{impl}.npz"))
                    print(f"{scenario} {impl} run {r + 1}: {runs[impl][-1]}", file=sys.stderr)
            agree = agreement(folder / "ours.npz", folder / "spikeinterface.npz", truth, n_tetrodes)
        summary = {
            impl: {
                "seconds": statistics.median(x["seconds"] for x in v),
                "peak_rss_mib": statistics.median(x["peak_rss_mib"] for x in v),
            }
            for impl, v in runs.items()
        }
        record = {"scenario": scenario, "tetrodes": n_tetrodes, "recording_s": seconds, "runs": runs,
                  "median": summary, "agreement": agree}  # fmt: skip
        (HERE / "results").mkdir(exist_ok=True)
        (HERE / "results" / f"waveform_{scenario}.json").write_text(json.dumps(record, indent=2))
        rows.append(record)
    print(markdown(rows))


def markdown(rows: list[dict]) -> str:
    lines = [
        "| scenario | impl | seconds | recording s per s | peak RSS MiB | recall | precision |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        for impl in ("ours", "spikeinterface"):
            m = row["median"][impl]
            lines.append(
                f"| {row['tetrodes']} tetrodes, {row['recording_s']:g} s | {impl} | {m['seconds']:.2f} | "
                f"{row['recording_s'] / m['seconds']:.1f} | {m['peak_rss_mib']:.0f} | "
                f"{row['agreement'][f'recall_{impl}']:.4f} | {row['agreement'][f'precision_{impl}']:.4f} |"
            )
    lines += ["", "| scenario | spikes ours | spikes spikeinterface | ours found by SI | SI found by ours | amplitude abs diff median / max µV |",
              "|---|---|---|---|---|---|"]  # fmt: skip
    for row in rows:
        a = row["agreement"]
        lines.append(
            f"| {row['tetrodes']} tetrodes, {row['recording_s']:g} s | {a['spikes_ours']} | {a['spikes_spikeinterface']} | "
            f"{100 * a['ours_found_by_spikeinterface']:.2f} % | {100 * a['spikeinterface_found_by_ours']:.2f} % | "
            f"{a['amplitude_abs_diff_median_uv']:.3g} / {a['amplitude_abs_diff_max_uv']:.3g} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()

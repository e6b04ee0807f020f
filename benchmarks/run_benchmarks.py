"""Benchmark our decoder against the reference (non_local_detector 0.6.9) on the same
simulated sessions, in one run, and report speed, memory and parity.

    python benchmarks/run_benchmarks.py                       # every scenario, 3 runs each
    python benchmarks/run_benchmarks.py --scenario w_track --repeats 5
    python benchmarks/run_benchmarks.py --skip-reference --device gpu

Each run of each implementation is a fresh process (``decode_once.py``), so JIT
compilation and peak memory are counted as a user would see them. Ours keeps its
compiled code in a persistent compilation cache, as the pipeline does: one untimed run
first fills it (its figures are reported apart, "compilation cache empty"), so "first"
is a fresh process on a machine that has decoded these shapes before. The reference runs
in its own virtual environment (``--reference-venv``; created on first use with
non_local_detector 0.6.9, jax/jaxlib 0.4.38 and pandas < 3, which it needs).
Medians over ``--repeats`` runs are printed as a Markdown table and written, with every
run, to ``benchmarks/results/<scenario>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SCENARIOS = {
    # name: (simulator, encoding s, decoding s, tetrodes)
    "open_field": ("open_field", 240.0, 60.0, 16),
    "w_track": ("w_track", 240.0, 60.0, 16),
    "smoke": ("open_field", 60.0, 10.0, 4),
}
# h5netcdf[h5py]: without it the reference writes NetCDF3, and h5netcdf 1.8 no longer brings h5py
REFERENCE_REQUIREMENTS = ["non_local_detector==0.6.9", "jax==0.4.38", "jaxlib==0.4.38", "pandas<3", "h5netcdf[h5py]"]


def write_inputs(scenario: str, path: Path, seed: int) -> dict:
    from decoding_assets.decoder.simulate import simulate_open_field, simulate_w_track

    kind, encoding_s, decoding_s, n_tetrodes = SCENARIOS[scenario]
    simulate = simulate_open_field if kind == "open_field" else simulate_w_track
    session = simulate(duration=encoding_s + decoding_s, n_tetrodes=n_tetrodes, seed=seed)
    fs = session.sampling_frequency
    is_training = session.position_time < encoding_s
    decode_time = session.position_time[~is_training]
    arrays = {
        "position_time": session.position_time,
        "position": session.position,
        "is_training": is_training,
        "decode_time": decode_time,
        "true_position": session.decoding_position[~is_training],
        "n_electrodes": np.array(len(session.spike_times)),
    }
    for e, (times, marks) in enumerate(zip(session.spike_times, session.spike_waveform_features)):
        arrays[f"spike_times_{e}"] = times
        arrays[f"spike_marks_{e}"] = marks
    if session.track_graph is not None:
        nodes = sorted(session.track_graph.nodes)
        arrays["track_nodes"] = np.array([session.track_graph.nodes[n]["pos"] for n in nodes])
        arrays["track_edges"] = np.array(list(session.track_graph.edges))
        arrays["edge_order"] = np.array(session.edge_order)
        arrays["edge_spacing"] = np.array(session.edge_spacing)
    np.savez(path, **arrays)
    n_spikes = sum(len(t) for t in session.spike_times)
    return {
        "scenario": scenario,
        "environment": "2D open field, 100 cm" if kind == "open_field" else "1D W-track",
        "tetrodes": n_tetrodes,
        "encoding_s": encoding_s,
        "decoding_s": decoding_s,
        "decoding_bins": int(decode_time.size),
        "sampling_frequency": fs,
        "spikes_per_tetrode_per_s": n_spikes / n_tetrodes / (encoding_s + decoding_s),
        "seed": seed,
    }


def ensure_venv(venv: Path, requirements: list[str]) -> Path:
    """The Python of a separate virtual environment, made with ``requirements`` on first use."""
    python = venv / "bin" / "python"
    if not python.exists():
        print(f"creating {venv} with {' '.join(requirements)} ...", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *requirements], check=True)
    return python


def run_once(
    python: str, impl: str, inputs: Path, output: Path, device: str | None, model: str, cache: Path | None = None
) -> dict:
    cmd = [str(python), str(HERE / "decode_once.py"), "--impl", impl, "--inputs", str(inputs), "--output", str(output),
           "--model", model]  # fmt: skip
    if cache is not None:
        cmd += ["--compilation-cache", str(cache)]
    if device:
        cmd += ["--device", device]
    env = dict(os.environ)
    if impl == "reference" or not device or device.startswith("cpu"):
        env["JAX_PLATFORMS"] = "cpu"
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode:
        raise RuntimeError(f"{impl} run failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def position_posterior(output) -> np.ndarray:
    """(time, bins): the acausal posterior summed over the states on the grid (the
    detector's Local and No-Spike, one value each, come first and are left out)."""
    posterior = np.nan_to_num(output["acausal_posterior"].astype(np.float64))
    n_point = int(output["n_point_states"]) if "n_point_states" in output else 0
    return posterior[:, n_point:].reshape(posterior.shape[0], 2, -1).sum(axis=1)


def parity(ours: Path, reference: Path) -> dict:
    a, b = np.load(ours), np.load(reference)
    if not np.allclose(a["place_bin_centers"], b["place_bin_centers"]):
        return {"same_grid": False}
    pa, pb = a["acausal_posterior"].astype(np.float64), b["acausal_posterior"].astype(np.float64)
    same_nan = bool(np.array_equal(np.isnan(pa), np.isnan(pb)))
    diff = np.abs(np.nan_to_num(pa) - np.nan_to_num(pb))
    position_a, position_b = position_posterior(a), position_posterior(b)
    state_diff = np.abs(a["acausal_state_probabilities"] - b["acausal_state_probabilities"])[:-2]
    return {
        "same_grid": True,
        "same_track_interior": same_nan,
        "posterior_max_abs_diff": float(diff.max()),
        "posterior_mean_abs_diff": float(diff.mean()),
        "map_bin_agreement": float(np.mean(position_a.argmax(axis=1) == position_b.argmax(axis=1))),
        "state_probability_max_abs_diff": float(state_diff.max()),
    }


def decoding_error(output: Path, inputs: Path) -> float:
    """Median distance (cm) between the most probable decoded position and the true one."""
    out, data = np.load(output), np.load(inputs)
    decoded = out["place_bin_centers"][position_posterior(out).argmax(axis=1)]
    return float(np.median(np.linalg.norm(decoded - data["true_position"], axis=1)))


def summarize(runs: list[dict]) -> dict:
    keys = ["fit_s", "predict_first_s", "predict_s", "peak_rss_mib"]
    return {k: statistics.median(r[k] for r in runs) for k in keys}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", choices=[*SCENARIOS, "all"], default="all")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--reference-venv", type=Path, default=HERE / ".venv-reference")
    parser.add_argument("--skip-reference", action="store_true")
    parser.add_argument("--device", default=None, help="our decoder's device, e.g. gpu (the reference always runs on CPU)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", choices=["contfrag", "nonlocal"], default="contfrag",
                        help="the continuous/fragmented classifier, or the non-local detector")  # fmt: skip
    args = parser.parse_args()

    scenarios = [s for s in SCENARIOS if s != "smoke"] if args.scenario == "all" else [args.scenario]
    reference_python = None if args.skip_reference else ensure_venv(args.reference_venv, [*REFERENCE_REQUIREMENTS, "psutil"])
    results_dir = HERE / "results"
    results_dir.mkdir(exist_ok=True)
    rows = []
    for scenario in scenarios:
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            inputs = tmp / "inputs.npz"
            info = write_inputs(scenario, inputs, args.seed)
            info["model"] = args.model
            record = {"info": info, "ours": [], "reference": []}
            # ours keeps JAX's compiled code on disk, as the pipeline does: a first run
            # with the cache empty fills it (its first call is the "no cache" figure)
            cache = tmp / "jax_cache"
            cold = run_once(sys.executable, "ours", inputs, tmp / "ours.npz", args.device, args.model, cache)
            print(f"{scenario} ours, compilation cache empty: {cold}", file=sys.stderr)
            record["ours_cold_cache"] = cold
            for repeat in range(args.repeats):
                # alternate the order so neither implementation always runs on a warmer machine
                order = ["ours", "reference"] if repeat % 2 == 0 else ["reference", "ours"]
                for impl in order:
                    if impl == "reference" and reference_python is None:
                        continue
                    python = sys.executable if impl == "ours" else reference_python
                    device, cached = (args.device, cache) if impl == "ours" else (None, None)
                    run = run_once(python, impl, inputs, tmp / f"{impl}.npz", device, args.model, cached)
                    print(f"{scenario} {impl} run {repeat + 1}: {run}", file=sys.stderr)
                    record[impl].append(run)
            record["ours_summary"] = summarize(record["ours"])
            record["ours_summary"]["median_error_cm"] = decoding_error(tmp / "ours.npz", inputs)
            if reference_python is not None:
                record["reference_summary"] = summarize(record["reference"])
                record["reference_summary"]["median_error_cm"] = decoding_error(tmp / "reference.npz", inputs)
                record["parity"] = parity(tmp / "ours.npz", tmp / "reference.npz")
            suffix = "" if args.model == "contfrag" else f"_{args.model}"
            (results_dir / f"{scenario}{suffix}.json").write_text(json.dumps(record, indent=2))
            rows.append(record)
    print(markdown_table(rows))


def _label(row: dict) -> str:
    model = row["info"].get("model", "contfrag")
    return row["info"]["scenario"] + ("" if model == "contfrag" else f" ({model})")


def markdown_table(rows: list[dict]) -> str:
    lines = [
        "| scenario | impl | fit s | predict s (first) | predict s (again) | peak RSS MiB | median error cm |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        name = _label(row)
        for impl in ("reference", "ours"):
            s = row.get(f"{impl}_summary")
            if s:
                lines.append(
                    f"| {name} | {impl} | {s['fit_s']:.2f} | {s['predict_first_s']:.2f} | {s['predict_s']:.2f} "
                    f"| {s['peak_rss_mib']:.0f} | {s['median_error_cm']:.1f} |"
                )
        if "reference_summary" in row:
            o, r = row["ours_summary"], row["reference_summary"]
            lines.append(
                f"| {name} | ratio ref/ours | {r['fit_s'] / o['fit_s']:.1f}x | {r['predict_first_s'] / o['predict_first_s']:.1f}x "
                f"| {r['predict_s'] / o['predict_s']:.1f}x | {r['peak_rss_mib'] / o['peak_rss_mib']:.1f}x | |"
            )
    lines.append("")
    lines.append("Ours with its compilation cache empty (the first decode of these shapes on a machine), one run:")
    lines.append("")
    lines.append("| scenario | fit s | predict s (first) | predict s (again) |")
    lines.append("|---|---|---|---|")
    for row in rows:
        cold = row.get("ours_cold_cache")
        if cold:
            lines.append(f"| {_label(row)} | {cold['fit_s']:.2f} | {cold['predict_first_s']:.2f} | {cold['predict_s']:.2f} |")
    lines.append("")
    lines.append("| scenario | posterior max abs diff | posterior mean abs diff | MAP bin agreement | state prob max abs diff |")
    lines.append("|---|---|---|---|---|")
    for row in rows:
        p = row.get("parity")
        if p and p.get("same_grid"):
            lines.append(
                f"| {_label(row)} | {p['posterior_max_abs_diff']:.2e} | {p['posterior_mean_abs_diff']:.2e} "
                f"| {100 * p['map_bin_agreement']:.3f} % | {p['state_probability_max_abs_diff']:.2e} |"
            )
        elif p:
            lines.append(f"| {_label(row)} | grids differ | | | |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()

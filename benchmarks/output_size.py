"""What a decode's results file costs in each form it can keep (``Keep``): one simulated
2D open field (1 m arena, 2 cm bins, 16 tetrodes, 4 min encoding), a few minutes
decoded at 500 Hz, then written in each form with ``save_results`` (the work
``predict_to_file`` does as it streams: summing, quantizing, compressing) and a
one-minute window read back with ``load_results``. Reports bytes per time bin, the
hour extrapolated from them (1 800 000 bins: the size grows with the bins, chunk by
chunk), write seconds and one-minute read seconds (medians of ``--runs``), and the
largest difference between the stored and the computed acausal posterior. Last, one
``predict_to_file`` with the default ``Keep`` checks that streaming writes the same size.

    python benchmarks/output_size.py                  # 2 minutes decoded, 3 runs
    python benchmarks/output_size.py --minutes 5 --runs 5
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from decoding_assets.decoder.results import Keep

ENCODING_S = 240.0
HOUR_BINS = 3600 * 500
MINUTE_BINS = 60 * 500

FORMS = {
    "per state, exact, causal too (as before)": Keep(causal_posterior=True, per_state=True, max_error=None),
    "per state, exact": Keep(max_error=None),
    "per state, <= 1e-5 (the default)": Keep(),
    "per state, <= 1e-5, causal too": Keep(causal_posterior=True),
    "summed over states, <= 1e-5": Keep(per_state=False),
}


def decode(minutes: float):
    from decoding_assets.decoder import ContFragClusterlessClassifier, Environment
    from decoding_assets.decoder.simulate import simulate_open_field

    session = simulate_open_field(duration=ENCODING_S + 60.0 * minutes, n_tetrodes=16, seed=0)
    train = session.position_time < ENCODING_S
    clf = ContFragClusterlessClassifier(Environment(place_bin_size=2.0), {"disable_progress_bar": True})
    clf.fit(session.position_time, session.position, session.spike_times, session.spike_waveform_features,
            is_training=train)  # fmt: skip
    decode_time = session.position_time[~train]
    start = time.perf_counter()
    results = clf.predict(session.spike_times, session.spike_waveform_features, decode_time)
    print(f"decoded {decode_time.size} bins in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return clf, session, decode_time, results


def measure(results, keep, path: Path, runs: int, exact_runs: int) -> dict:
    from decoding_assets.decoder import load_results, save_results

    writes = []
    for _ in range(runs if keep.max_error is not None else exact_runs):
        start = time.perf_counter()
        save_results(results, path, keep)
        writes.append(time.perf_counter() - start)
    n_time = results.sizes["time"]
    reads = []
    for run in range(runs):
        first = (run * MINUTE_BINS // 2) % max(1, n_time - MINUTE_BINS)
        start = time.perf_counter()
        with load_results(path) as stored:
            window = stored["acausal_posterior"][first : first + MINUTE_BINS].values
        reads.append(time.perf_counter() - start)
    with load_results(path) as stored:
        error = _max_error(stored, results, keep)
    size = path.stat().st_size
    return {
        "bytes_per_bin": size / n_time,
        "hour_gb": size / n_time * HOUR_BINS / 1e9,
        "write_s_per_minute": statistics.median(writes) / (n_time / MINUTE_BINS),
        "read_minute_s": statistics.median(reads),
        "window_mb": window.nbytes / 1e6,
        "max_error": error,
    }


def _max_error(stored, results, keep) -> float:
    from decoding_assets.decoder.results import position_posterior

    worst = 0.0
    for start in range(0, results.sizes["time"], MINUTE_BINS):
        rows = slice(start, start + MINUTE_BINS)
        if keep.per_state:
            got, want = stored["acausal_posterior"][rows].values, results["acausal_posterior"][rows].values
        else:
            got = stored["acausal_posterior"][rows].values
            want = position_posterior(results.isel(time=rows)).values
        worst = max(worst, float(np.nanmax(np.abs(got.astype(np.float64) - want.astype(np.float64)))))
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=2.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--exact-runs", type=int, default=1, help="writes timed for the exact forms (slow)")
    args = parser.parse_args()

    from decoding_assets.decoder import load_results

    clf, session, decode_time, results = decode(args.minutes)
    env = clf.environments
    print(f"grid {env.centers_shape_}, {int(env.is_track_interior_.sum())} interior bins, "
          f"{results.sizes['time']} time bins", file=sys.stderr)  # fmt: skip
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for label, keep in FORMS.items():
            measured = measure(results, keep, Path(folder) / "r.nc", args.runs, args.exact_runs)
            row = {"form": label, "keep": repr(keep), **measured}
            print(row, file=sys.stderr)
            rows.append(row)
        start = time.perf_counter()
        path = clf.predict_to_file(Path(folder) / "s.nc", session.spike_times, session.spike_waveform_features,
                                   decode_time, keep=Keep())  # fmt: skip
        streamed_s = time.perf_counter() - start
        with load_results(path) as stored:
            difference = stored["acausal_posterior"].values - results["acausal_posterior"].values
            streamed_error = float(np.nanmax(np.abs(difference)))
        streamed = path.stat().st_size / results.sizes["time"]
    print(f"\n{args.minutes:g} minutes decoded ({results.sizes['time']} bins), grid {env.centers_shape_} "
          f"({int(env.is_track_interior_.sum())} interior bins); hour = {HOUR_BINS} bins\n")  # fmt: skip
    print("| form (`Keep(...)`) | bytes / time bin | one hour, extrapolated | write s per decoded minute "
          "| read one minute s | max abs error, acausal |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['form']}: `{r['keep']}` | {r['bytes_per_bin']:.0f} | {r['hour_gb']:.2f} GB | "
              f"{r['write_s_per_minute']:.1f} | {r['read_minute_s']:.2f} | {r['max_error']:.2e} |")  # fmt: skip
    print(f"\npredict_to_file, default Keep(): {streamed:.0f} bytes / time bin, {streamed * HOUR_BINS / 1e9:.2f} GB an "
          f"hour, {streamed_s:.1f} s in all (decode + write), max abs error {streamed_error:.2e}")  # fmt: skip


if __name__ == "__main__":
    main()

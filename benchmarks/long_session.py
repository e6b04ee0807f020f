"""Bounded memory on long sessions: decode increasingly long stretches of one simulated
W-track session (16 tetrodes, 4 min encoding) straight to a netCDF file
(``predict_to_file``), each in a fresh process that loads only the decoder's inputs,
and report each run's peak resident memory.

    python benchmarks/long_session.py                  # 5, 20 and 60 minutes
    python benchmarks/long_session.py --minutes 5 60
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ENCODING_S = 240.0


def simulate(max_minutes: float, path: Path) -> None:
    """One W-track session long enough for every run; saved for the workers."""
    import numpy as np

    from decoding_assets.decoder.simulate import simulate_w_track

    session = simulate_w_track(duration=ENCODING_S + 60.0 * max_minutes, n_tetrodes=16, seed=0)
    train = session.position_time < ENCODING_S
    arrays = {
        "position_time": session.position_time[train],
        "position": session.position[train],
        "decode_time": session.position_time[~train],
    }
    for e, (t, m) in enumerate(zip(session.spike_times, session.spike_waveform_features)):
        arrays[f"times_{e}"], arrays[f"marks_{e}"] = t, m
    np.savez(path, **arrays)


def one(minutes: float, inputs: Path, folder: Path) -> dict:
    import numpy as np
    from decode_once import peak_rss_mib

    from decoding_assets.decoder import ContFragClusterlessClassifier, Environment
    from decoding_assets.decoder.simulate import w_track_graph

    data = np.load(inputs)
    spike_times = [data[f"times_{e}"] for e in range(16)]
    marks = [data[f"marks_{e}"] for e in range(16)]
    graph, order, spacing = w_track_graph()
    clf = ContFragClusterlessClassifier(
        Environment(track_graph=graph, edge_order=order, edge_spacing=spacing), {"disable_progress_bar": True}
    )
    clf.fit(data["position_time"], data["position"], spike_times, marks)
    decode_time = data["decode_time"]
    decode_time = decode_time[decode_time < ENCODING_S + 60.0 * minutes]
    start = time.perf_counter()
    path = clf.predict_to_file(folder / f"decode_{minutes:g}min.nc", spike_times, marks, decode_time)
    return {
        "minutes": minutes,
        "time_bins": int(decode_time.size),
        "predict_s": time.perf_counter() - start,
        "file_mib": path.stat().st_size / 2**20,
        "peak_rss_mib": peak_rss_mib(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, nargs="+", default=[5.0, 20.0, 60.0])
    parser.add_argument("--worker", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        print(json.dumps(one(args.worker, args.folder / "inputs.npz", args.folder)))
        return
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        simulate(max(args.minutes), Path(folder) / "inputs.npz")
        for minutes in args.minutes:
            env = {**os.environ, "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu")}
            done = subprocess.run(
                [sys.executable, __file__, "--worker", str(minutes), "--folder", folder],
                capture_output=True, text=True, env=env, check=True,
            )  # fmt: skip
            row = json.loads(done.stdout.strip().splitlines()[-1])
            print(row, file=sys.stderr)
            rows.append(row)
            for f in Path(folder).glob("decode_*.nc"):
                f.unlink()
    print("| decoded minutes | time bins | predict_to_file s | file MiB | peak RSS MiB |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['minutes']:g} | {r['time_bins']} | {r['predict_s']:.1f} | {r['file_mib']:.0f} | {r['peak_rss_mib']:.0f} |")


if __name__ == "__main__":
    main()

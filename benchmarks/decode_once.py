"""Fit and decode one simulated scenario with one implementation, in this process.

Runs under either virtual environment: ours (``--impl ours``) or the reference's
(``--impl reference``: non_local_detector 0.6.9), with either model (``--model contfrag``,
the default, or ``nonlocal``: the non-local detector, given the animal's position). Reads the inputs that
``run_benchmarks.py`` wrote, times ``fit`` and two ``predict`` calls (the first one
includes JIT compilation), records the process's peak resident memory, and writes
the acausal posterior and state probabilities for the parity comparison.

    python benchmarks/decode_once.py --impl ours --inputs in.npz --output out.npz
"""

from __future__ import annotations

import argparse
import importlib
import json
import resource
import sys
import time

import numpy as np


def peak_rss_mib() -> float:
    """This process's peak resident memory. VmHWM starts afresh at exec, unlike
    ru_maxrss, which a child inherits from the parent that spawned it."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _track(inputs):
    if "track_nodes" not in inputs:
        return None
    from track_linearization import make_track_graph

    graph = make_track_graph([tuple(p) for p in inputs["track_nodes"]], [tuple(e) for e in inputs["track_edges"]])
    return graph, [tuple(e) for e in inputs["edge_order"]], list(inputs["edge_spacing"])


def _spikes(inputs, prefix):
    n = int(inputs["n_electrodes"])
    return (
        [inputs[f"{prefix}_times_{e}"] for e in range(n)],
        [inputs[f"{prefix}_marks_{e}"] for e in range(n)],
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--impl", choices=["ours", "reference"], required=True)
    parser.add_argument("--inputs", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--device", default=None)
    parser.add_argument("--model", choices=["contfrag", "nonlocal"], default="contfrag")
    parser.add_argument("--compilation-cache", help="ours: JAX's persistent compilation cache (as the pipeline keeps one)")
    args = parser.parse_args()
    name = "ContFragClusterlessClassifier" if args.model == "contfrag" else "NonLocalClusterlessDetector"

    inputs = dict(np.load(args.inputs))
    track = _track(inputs)
    params = {"position_std": 6.0, "waveform_std": 24.0, "block_size": 10_000, "disable_progress_bar": True}
    # the same names in both packages: the reference's code ports by changing the import
    package = importlib.import_module("decoding_assets.decoder" if args.impl == "ours" else "non_local_detector")
    if args.compilation_cache:
        package.enable_compilation_cache(args.compilation_cache)
    env = package.Environment(place_bin_size=2.0)
    if track:
        env = package.Environment(place_bin_size=2.0, track_graph=track[0], edge_order=track[1], edge_spacing=track[2])
    options = {"device": args.device} if args.impl == "ours" else {}
    clf = getattr(package, name)(environments=env, clusterless_algorithm_params=params, **options)
    # the detector's Local state is the likelihood at the animal's position
    position = {"position": inputs["position"], "position_time": inputs["position_time"]} if args.model == "nonlocal" else {}

    encode_times, encode_marks = _spikes(inputs, "spike")
    start = time.perf_counter()
    clf.fit(inputs["position_time"], inputs["position"], encode_times, encode_marks, is_training=inputs["is_training"])
    fit_s = time.perf_counter() - start

    predict_s = []
    results = posterior = None
    for _ in range(2):
        del results, posterior  # hold one result at a time, as a user decoding session after session would
        start = time.perf_counter()
        results = clf.predict(encode_times, encode_marks, time=inputs["decode_time"], **position)
        posterior = np.asarray(results["acausal_posterior"].values)  # forces the work to finish
        predict_s.append(time.perf_counter() - start)

    peak_mib = peak_rss_mib()
    np.savez_compressed(
        args.output,
        acausal_posterior=posterior,
        acausal_state_probabilities=np.asarray(results["acausal_state_probabilities"].values, dtype=np.float64),
        place_bin_centers=np.asarray(clf.environments.place_bin_centers_ if args.impl == "ours" else env.place_bin_centers_),
        n_point_states=np.array(2 if args.model == "nonlocal" else 0),
    )
    json.dump(
        {
            "impl": args.impl,
            "fit_s": fit_s,
            "predict_first_s": predict_s[0],
            "predict_s": predict_s[1],
            "peak_rss_mib": peak_mib,
            "device": str(results.attrs.get("device", "cpu")),
        },
        sys.stdout,
    )


if __name__ == "__main__":
    main()

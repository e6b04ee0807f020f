"""How much of our W-track predict is the likelihood: the part no transition operator
can remove, since it is the KDE arithmetic the model defines (MODEL.md).

    python benchmarks/likelihood_share.py

The W-track scenario of run_benchmarks.py (16 tetrodes, 4 min encoding, 1 min
decoding at 500 Hz); medians of 3 warm calls of ``compute_log_likelihood`` and of
``predict``, in this process.
"""

import os
import statistics
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

from decoding_assets.decoder import ContFragClusterlessClassifier
from decoding_assets.decoder.simulate import simulate_w_track


def median_seconds(call, repeats: int = 3) -> float:
    call()  # compile
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    session = simulate_w_track(duration=300.0, n_tetrodes=16, seed=0)
    encoding = session.position_time < 240.0
    clf = ContFragClusterlessClassifier(
        environments=session.environment(2.0), clusterless_algorithm_params={"disable_progress_bar": True}
    )
    clf.fit(session.position_time, session.position, session.spike_times, session.spike_waveform_features, is_training=encoding)
    time_bins = session.position_time[~encoding]
    likelihood = median_seconds(
        lambda: clf.compute_log_likelihood(time_bins, session.spike_times, session.spike_waveform_features)
    )
    predict = median_seconds(lambda: clf.predict(session.spike_times, session.spike_waveform_features, time_bins))
    print(f"likelihood {likelihood:.3f} s, predict {predict:.3f} s ({time_bins.size} time bins)")


if __name__ == "__main__":
    main()

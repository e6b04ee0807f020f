"""How far a decode has got: what the decoders report, as tqdm bars and as log lines."""

import numpy as np
import pytest

from decoding_assets.decoder import ContFragClusterlessClassifier
from decoding_assets.decoder.progress import STAGES, LoggedProgress, ProgressBars
from decoding_assets.decoder.simulate import simulate_open_field

pytestmark = pytest.mark.xdist_group("simulated")


@pytest.fixture(scope="module")
def fitted():
    session = simulate_open_field(duration=40.0, n_tetrodes=3, seed=5)
    train = session.position_time < 30.0
    clf = ContFragClusterlessClassifier(session.environment(), {"disable_progress_bar": True, "block_size": 1000})
    clf.fit(session.position_time, session.position, session.spike_times, session.spike_waveform_features,
            is_training=train)  # fmt: skip
    return session, clf, session.position_time[~train]


def test_every_stage_is_reported_in_order_up_to_the_whole_decode(fitted, tmp_path):
    session, clf, time = fitted
    heard = []
    labels = np.repeat([0, 1], [3000, time.size - 3000])  # two intervals, decoded apart
    clf.predict_to_file(
        tmp_path / "r.nc", session.spike_times, session.spike_waveform_features, time, interval_labels=labels,
        progress=lambda stage, done, total: heard.append((stage, done, total)),
    )  # fmt: skip
    assert {stage for stage, _, _ in heard} == set(STAGES)
    for stage in STAGES[:3]:
        reports = [(done, total) for s, done, total in heard if s == stage]
        assert all(total == time.size for _, total in reports)
        done = [d for d, _ in reports]
        assert done == sorted(done) and done[-1] == time.size and len(done) >= 2, stage  # at least once per interval
    assert [(d, t) for s, d, t in heard if s == "writing"] == [(0, 1), (1, 1)]
    assert heard[-1] == ("writing", 1, 1)
    # the filter of the first interval ends before its smoother starts
    first = [s for s, d, _ in heard if d <= 3000 and s in ("filter", "smoother")]
    assert first.index("smoother") > first.index("filter")


def test_log_lines_at_each_stage_and_at_most_every_few_seconds():
    lines, now = [], [0.0]
    progress = LoggedProgress(lines.append, "Session s.nwb, interval 'run1'", every_s=10.0, clock=lambda: now[0])
    for done, at in [(100, 0.0), (200, 4.0), (300, 11.0), (400, 12.0), (1000, 13.0)]:
        now[0] = at
        progress("filter", done, 1000)
    progress("writing", 0, 1)
    progress("writing", 1, 1)
    assert lines == [
        "Session s.nwb, interval 'run1': filter 10% (100 of 1,000 time bins)",
        "Session s.nwb, interval 'run1': filter 30% (300 of 1,000 time bins)",
        "Session s.nwb, interval 'run1': filter 100% (1,000 of 1,000 time bins)",
        "Session s.nwb, interval 'run1': writing the results",
        "Session s.nwb, interval 'run1': results written",
    ]


def test_bars_start_again_for_a_new_pass(capsys):
    bars = ProgressBars()
    bars("filter", 50, 100)
    bars("filter", 100, 100)
    first = bars.bars["filter"]
    bars("filter", 10, 100)  # the next EM iteration
    assert bars.bars["filter"] is not first and bars.bars["filter"].n == 10 and first.n == 100
    assert "Filter" in capsys.readouterr().err

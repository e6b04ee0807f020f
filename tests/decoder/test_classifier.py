"""The classifier end to end on simulated sessions: accuracy, round trips, EM, bad input."""

import json

import numpy as np
import pytest

from decoding_assets.decoder import (
    RESULTS_FORMAT_VERSION,
    ContFragClusterlessClassifier,
    Environment,
    load_results,
    save_results,
)

# one worker builds this module's sessions (pytest -n 2 --dist loadgroup)
pytestmark = pytest.mark.xdist_group("simulated")

PARAMS = {"position_std": 6.0, "waveform_std": 24.0, "block_size": 10_000, "disable_progress_bar": True}


def split(session, encoding_s):
    is_training = session.position_time < encoding_s
    return is_training, session.position_time[~is_training]


def map_position(results):
    """Most probable position per time bin, (n_time, n_dims)."""
    posterior = results["acausal_posterior"].unstack("state_bins").sum("state")
    dims = [d for d in posterior.dims if d != "time"]
    flat = posterior.stack(bin=dims).fillna(-1.0)
    best = flat.argmax("bin").values
    return np.column_stack([flat["bin"][d].values[best] for d in dims])


@pytest.fixture(scope="module")
def open_field_fit(open_field_session):
    s = open_field_session
    is_training, decode_time = split(s, 200.0)
    clf = ContFragClusterlessClassifier(Environment(place_bin_size=2.0), PARAMS)
    clf.fit(s.position_time, s.position, s.spike_times, s.spike_waveform_features, is_training=is_training)
    results = clf.predict(s.spike_times, s.spike_waveform_features, decode_time)
    return clf, results, ~is_training


def test_open_field_decodes_the_running_animal(open_field_session, open_field_fit):
    s = open_field_session
    clf, results, decoding = open_field_fit
    error = np.linalg.norm(map_position(results) - s.position[decoding], axis=1)
    running = s.speed[decoding] > 10.0
    # Measured: about 4 cm median while running (12 tetrodes, 200 s encoding, 2 cm bins).
    assert np.median(error[running]) < 8.0
    fragmented = results["acausal_state_probabilities"].sel(states="Fragmented").values
    assert np.mean(fragmented[running]) < 0.2


def test_results_layout(open_field_fit):
    clf, results, decoding = open_field_fit
    n_bins = clf.environments.place_bin_centers_.shape[0]
    assert results["acausal_posterior"].shape == (decoding.sum(), 2 * n_bins)
    assert results["acausal_posterior"].dtype == np.float32
    assert list(results.indexes["state_bins"].names) == ["state", "x_position", "y_position"]
    assert list(results["states"].values) == ["Continuous", "Fragmented"]
    for name in ("acausal_posterior", "causal_posterior"):
        total = results[name].sum("state_bins").values  # NaN outside the track is skipped
        np.testing.assert_allclose(total, 1.0, atol=1e-4)
        outside = ~np.tile(clf.environments.is_track_interior_.ravel(), 2)
        assert np.isnan(results[name].values[:, outside]).all()
        assert not np.isnan(results[name].values[:, ~outside]).any()
    states = results["acausal_state_probabilities"].values
    np.testing.assert_allclose(states.sum(axis=1), 1.0, atol=1e-4)
    assert np.isfinite(results.attrs["marginal_log_likelihood"])
    position = results["acausal_posterior"].unstack("state_bins").sum("state")
    assert set(position.dims) == {"time", "x_position", "y_position"}


def test_results_round_trip_through_netcdf(open_field_fit, tmp_path):
    _, results, _ = open_field_fit
    path = save_results(results.isel(time=slice(0, 500)), tmp_path / "decode.nc")
    assert not list(tmp_path.glob(".*.tmp"))  # the temporary file was renamed
    loaded = load_results(path)
    assert loaded.attrs["results_format_version"] == RESULTS_FORMAT_VERSION
    assert list(loaded.indexes["state_bins"].names) == ["state", "x_position", "y_position"]
    np.testing.assert_array_equal(
        loaded["acausal_posterior"].values, results["acausal_posterior"].values[:500]
    )
    assert loaded.attrs["marginal_log_likelihood"] == results.attrs["marginal_log_likelihood"]
    assert loaded["acausal_posterior"].encoding["zlib"] is True
    loaded.close()


def test_save_results_to_missing_folder_is_a_clear_error(open_field_fit, tmp_path):
    _, results, _ = open_field_fit
    with pytest.raises(FileNotFoundError, match="does not exist"):
        save_results(results.isel(time=slice(0, 10)), tmp_path / "nope" / "decode.nc")


def test_parameters_round_trip_through_json(open_field_session, open_field_fit):
    clf, results, decoding = open_field_fit
    rebuilt = ContFragClusterlessClassifier.from_dict(json.loads(json.dumps(clf.to_dict())))
    assert rebuilt.to_dict() == clf.to_dict()
    s = open_field_session
    is_training, decode_time = split(s, 200.0)
    rebuilt.fit(s.position_time, s.position, s.spike_times, s.spike_waveform_features, is_training=is_training)
    again = rebuilt.predict(s.spike_times, s.spike_waveform_features, decode_time[:2000])
    np.testing.assert_allclose(
        again["causal_posterior"].values, results["causal_posterior"].values[:2000], atol=1e-6
    )


def test_fitted_model_saves_and_loads(open_field_session, open_field_fit, tmp_path):
    clf, results, _ = open_field_fit
    s = open_field_session
    _, decode_time = split(s, 200.0)
    path = clf.save_model(tmp_path / "model.nc")
    loaded = ContFragClusterlessClassifier.load_model(path)
    again = loaded.predict(s.spike_times, s.spike_waveform_features, decode_time[:2000])
    np.testing.assert_allclose(
        again["causal_posterior"].values, results["causal_posterior"].values[:2000], atol=1e-6
    )


def test_a_version_1_model_file_still_loads(open_field_fit, tmp_path):
    import xarray as xr

    clf, _, _ = open_field_fit
    path = clf.save_model(tmp_path / "model.nc")
    with xr.open_dataset(path, engine="h5netcdf") as ds:
        old = ds.load()
    # as version 1 wrote it: the initial conditions per (state, bin)
    old["initial_conditions"] = (("state", "bin"), old["initial_conditions"].values.reshape(2, -1))
    old.attrs["model_format_version"] = 1
    old.to_netcdf(tmp_path / "v1.nc", engine="h5netcdf")
    loaded = ContFragClusterlessClassifier.load_model(tmp_path / "v1.nc")
    np.testing.assert_array_equal(loaded.initial_conditions_, clf.initial_conditions_)
    assert loaded.initial_conditions_.shape == (2 * clf.n_bins_,)


def test_w_track_decodes_the_running_animal(w_track_session):
    s = w_track_session
    is_training, decode_time = split(s, 120.0)
    clf = ContFragClusterlessClassifier(s.environment(), PARAMS)
    clf.fit(s.position_time, s.position, s.spike_times, s.spike_waveform_features, is_training=is_training)
    results = clf.predict(s.spike_times, s.spike_waveform_features, decode_time)
    assert list(results.indexes["state_bins"].names) == ["state", "position"]
    error = np.abs(map_position(results)[:, 0] - s.linear_position[~is_training])
    running = s.speed[~is_training] > 10.0
    # Measured: about 2 cm median while running (8 tetrodes, 120 s encoding).
    assert np.median(error[running]) < 6.0
    fragmented = results["acausal_state_probabilities"].sel(states="Fragmented").values
    assert np.mean(fragmented[running]) < 0.2


def test_em_raises_the_marginal_likelihood(w_track_session):
    s = w_track_session
    is_training, _ = split(s, 120.0)
    decode = s.position_time >= 120.0
    clf = ContFragClusterlessClassifier(s.environment(), PARAMS, discrete_transition_diag=0.9)
    results = clf.estimate_parameters(
        s.position_time, s.position, s.spike_times, s.spike_waveform_features,
        time=s.position_time[decode], is_training=is_training, max_iter=4,
    )  # fmt: skip
    history = results.attrs["marginal_log_likelihoods"]
    assert 2 <= len(history) <= 4
    assert history[-1] > history[0]
    transition = clf.discrete_state_transitions_
    np.testing.assert_allclose(transition.sum(axis=1), 1.0)
    assert transition[0, 0] > 0.9  # the animal keeps running: Continuous is sticky
    np.testing.assert_allclose(clf.initial_conditions_.sum(), 1.0, atol=1e-5)


def test_odd_electrodes_work(rng, open_field_session):
    """An electrode with no spikes, one with a single channel, and spikes outside
    the decoding window decode without error and without NaN."""
    s = open_field_session
    times = [s.spike_times[0], np.array([]), s.spike_times[1], np.array([-5.0, 1e6])]
    marks = [
        s.spike_waveform_features[0],
        np.zeros((0, 4)),
        s.spike_waveform_features[1][:, :1],
        np.full((2, 4), 100.0),
    ]
    clf = ContFragClusterlessClassifier(Environment(), PARAMS)
    clf.fit(s.position_time, s.position, times, marks, is_training=s.position_time < 100)
    results = clf.predict(times, marks, np.arange(100.0, 110.0, 1 / 500))
    states = results["acausal_state_probabilities"].values
    assert np.isfinite(states).all()
    np.testing.assert_allclose(states.sum(axis=1), 1.0, atol=1e-4)


def test_float64_agrees_with_float32(open_field_session, open_field_fit):
    clf, results, _ = open_field_fit
    s = open_field_session
    _, decode_time = split(s, 200.0)
    clf64 = ContFragClusterlessClassifier(Environment(place_bin_size=2.0), PARAMS, dtype="float64")
    clf64.fit(s.position_time, s.position, s.spike_times, s.spike_waveform_features, is_training=s.position_time < 200)
    precise = clf64.predict(s.spike_times, s.spike_waveform_features, decode_time[:1000])
    assert precise["causal_posterior"].dtype == np.float64
    # the causal posterior of the first bins does not depend on what follows them
    diff = np.nan_to_num(precise["causal_posterior"].values - results["causal_posterior"].values[:1000])
    assert np.abs(diff).max() < 1e-3


def test_device_selection(open_field_fit):
    clf, _, _ = open_field_fit
    assert clf.device_ == "TFRT_CPU_0" or "cpu" in clf.device_.lower()
    with pytest.raises(ValueError, match="finds no 'gpu' device|no gpu device"):
        ContFragClusterlessClassifier(device="gpu:1")._device()


class TestBadInput:
    def test_unknown_parameter(self):
        with pytest.raises(ValueError, match="Unknown clusterless_algorithm_params.*'position_sd'"):
            ContFragClusterlessClassifier(clusterless_algorithm_params={"position_sd": 6.0})
        with pytest.raises(ValueError, match="Unknown decoding parameter"):
            ContFragClusterlessClassifier.from_dict({"movement_variance": 6.0})

    def test_mismatched_position_lengths(self, open_field_session):
        s = open_field_session
        with pytest.raises(ValueError, match="position has .* samples but position_time has"):
            ContFragClusterlessClassifier().fit(s.position_time[:-1], s.position, s.spike_times, s.spike_waveform_features)

    def test_mismatched_spike_lengths(self, open_field_session):
        s = open_field_session
        marks = [s.spike_waveform_features[0][:-1], *s.spike_waveform_features[1:]]
        with pytest.raises(ValueError, match="Electrode group 0: .* spike times but waveform features of shape"):
            ContFragClusterlessClassifier().fit(s.position_time, s.position, s.spike_times, marks)
        with pytest.raises(ValueError, match="give one of each per electrode group"):
            ContFragClusterlessClassifier().fit(s.position_time, s.position, s.spike_times[:-1], s.spike_waveform_features)

    def test_nan_marks(self, open_field_session):
        s = open_field_session
        marks = [m.copy() for m in s.spike_waveform_features]
        marks[2][5, 1] = np.nan
        with pytest.raises(ValueError, match="Electrode group 2: 1 spike\\(s\\) have NaN"):
            ContFragClusterlessClassifier().fit(s.position_time, s.position, s.spike_times, marks)

    def test_empty_decode_window(self, open_field_fit, open_field_session):
        clf, _, _ = open_field_fit
        s = open_field_session
        with pytest.raises(ValueError, match="decoding window is empty"):
            clf.predict(s.spike_times, s.spike_waveform_features, np.array([]))

    def test_predict_before_fit(self, open_field_session):
        s = open_field_session
        with pytest.raises(RuntimeError, match="not fitted"):
            ContFragClusterlessClassifier().predict(s.spike_times, s.spike_waveform_features, np.arange(0, 1, 0.002))

    def test_wrong_number_of_electrodes_to_decode(self, open_field_fit, open_field_session):
        clf, _, _ = open_field_fit
        s = open_field_session
        with pytest.raises(ValueError, match="fitted on 12 electrode group"):
            clf.predict(s.spike_times[:3], s.spike_waveform_features[:3], np.arange(0, 1, 0.002))

    def test_no_training_data(self, open_field_session):
        s = open_field_session
        with pytest.raises(ValueError, match="is_training selects no position sample"):
            ContFragClusterlessClassifier().fit(
                s.position_time, s.position, s.spike_times, s.spike_waveform_features,
                is_training=np.zeros(s.position_time.size, dtype=bool),
            )  # fmt: skip

    def test_is_missing_length(self, open_field_fit, open_field_session):
        clf, _, _ = open_field_fit
        s = open_field_session
        with pytest.raises(ValueError, match="is_missing has 3 entries but time has 500 bins"):
            clf.predict(s.spike_times, s.spike_waveform_features, np.arange(0, 1, 0.002), is_missing=[True] * 3)


def test_predict_to_file_streams_the_same_results(open_field_session, open_field_fit, tmp_path):
    clf, results, _ = open_field_fit
    s = open_field_session
    _, decode_time = split(s, 200.0)
    path = clf.predict_to_file(tmp_path / "long.nc", s.spike_times, s.spike_waveform_features, decode_time)
    assert not list(tmp_path.glob(".*.tmp"))
    loaded = load_results(path)
    assert list(loaded.indexes["state_bins"].names) == ["state", "x_position", "y_position"]
    np.testing.assert_array_equal(loaded["acausal_posterior"].values, results["acausal_posterior"].values)
    np.testing.assert_array_equal(loaded["causal_posterior"].values, results["causal_posterior"].values)
    np.testing.assert_allclose(
        loaded["acausal_state_probabilities"].values, results["acausal_state_probabilities"].values
    )
    assert loaded.attrs["marginal_log_likelihood"] == pytest.approx(results.attrs["marginal_log_likelihood"])
    loaded.close()


def test_predict_to_file_decodes_each_interval_on_its_own(open_field_session, open_field_fit, tmp_path):
    clf, _, _ = open_field_fit
    s = open_field_session
    _, decode_time = split(s, 200.0)
    first, second = decode_time[:800], decode_time[5000:5600]
    labels = np.concatenate([np.full(first.size, 0), np.full(second.size, 2)])
    path = clf.predict_to_file(
        tmp_path / "pieces.nc", s.spike_times, s.spike_waveform_features, np.concatenate([first, second]),
        interval_labels=labels, attrs={"decoding_interval": "two pieces"},
    )  # fmt: skip
    loaded = load_results(path)
    assert loaded.attrs["decoding_interval"] == "two pieces"
    np.testing.assert_array_equal(loaded["interval_labels"].values, labels)
    alone = clf.predict(s.spike_times, s.spike_waveform_features, second)
    np.testing.assert_array_equal(loaded["acausal_posterior"].values[first.size :], alone["acausal_posterior"].values)
    loaded.close()

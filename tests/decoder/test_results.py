"""What a results file keeps (``Keep``): real decodes of small simulated sessions
written in every form, read back within the stated bound, with NaN outside the track;
version 1 files and URLs read too; the summary and the picture work on every form."""

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from decoding_assets import pipeline
from decoding_assets.decoder import ContFragClusterlessClassifier, load_results, save_results
from decoding_assets.decoder.results import (
    KEEP_EVERYTHING,
    MIN_MAX_ERROR,
    RESULTS_FORMAT_VERSION,
    Keep,
    position_posterior,
)
from decoding_assets.decoder.simulate import simulate_open_field, simulate_w_track
from decoding_assets.plots import plot_decode

pytestmark = pytest.mark.xdist_group("simulated")

PARAMS = {"disable_progress_bar": True}
N_DECODED = 2600  # not a multiple of the 1024-bin chunks: the last chunk is short
FORMS = {
    "default": Keep(),
    "causal_too": Keep(causal_posterior=True),
    "summed": Keep(per_state=False),
    "summed_exact_causal_too": Keep(causal_posterior=True, per_state=False, max_error=None),
    "coarse": Keep(max_error=1e-3),
    "everything": KEEP_EVERYTHING,
}


class Decode:
    """A fitted model, its exact in-memory decode, and the files written from it."""

    def __init__(self, session, encoding_s: float, folder):
        self.session, self.folder = session, folder
        train = session.position_time < encoding_s
        self.clf = ContFragClusterlessClassifier(session.environment(), PARAMS)
        self.clf.fit(session.position_time, session.position, session.spike_times, session.spike_waveform_features,
                     is_training=train)  # fmt: skip
        self.time = session.position_time[~train][:N_DECODED]
        self.exact = self.clf.predict(session.spike_times, session.spike_waveform_features, self.time)
        self.files = {}

    def path(self, name: str):
        """The file of form ``name`` of FORMS, decoded with ``predict_to_file`` the first time."""
        if name not in self.files:
            self.files[name] = self.clf.predict_to_file(
                self.folder / f"{name}.nc", self.session.spike_times, self.session.spike_waveform_features, self.time,
                keep=FORMS[name],
            )  # fmt: skip
        return self.files[name]

    def streamed(self, name: str):
        return load_results(self.path(name))

    @property
    def interior(self) -> np.ndarray:
        return self.clf.environments.is_track_interior_


@pytest.fixture(scope="module")
def field(tmp_path_factory):
    session = simulate_open_field(duration=60.0, n_tetrodes=6, arena_size=50.0, seed=11)
    return Decode(session, 40.0, tmp_path_factory.mktemp("field"))


@pytest.fixture(scope="module")
def track(tmp_path_factory):
    session = simulate_w_track(duration=60.0, n_tetrodes=4, seed=12)
    return Decode(session, 40.0, tmp_path_factory.mktemp("track"))


def expected(decode: Decode, keep: Keep, name: str) -> np.ndarray:
    """The computed posterior in the layout the file keeps."""
    return (decode.exact[name] if keep.per_state else position_posterior(decode.exact, name)).values


def check_form(decode: Decode, stored: xr.Dataset, keep: Keep) -> None:
    bound = keep.max_error or 0.0
    assert Keep.of(stored) == keep
    assert stored.attrs["results_format_version"] == RESULTS_FORMAT_VERSION
    assert ("causal_posterior" in stored) == keep.causal_posterior
    names = ["acausal_posterior", "causal_posterior"] if keep.causal_posterior else ["acausal_posterior"]
    n_states = 2 if keep.per_state else 1
    outside = ~np.tile(decode.interior.ravel(), n_states)
    for name in names:
        got, want = stored[name].values, expected(decode, keep, name)
        assert got.dtype == want.dtype == np.float32
        assert stored[name].attrs["max_abs_error"] == bound
        flat = got.reshape(got.shape[0], -1)
        assert np.isnan(flat[:, outside]).all() and not np.isnan(flat[:, ~outside]).any()
        difference = np.abs(got.astype(np.float64) - want.astype(np.float64))
        assert np.nanmax(difference) <= bound
        if bound:
            assert np.nanmax(difference) > bound / 4  # really quantized, not stored exactly
        sums = np.nansum(flat, axis=1, dtype=np.float64)
        np.testing.assert_array_less(np.abs(sums - 1.0), bound * (~outside).sum() + 1e-5)
    state = stored["acausal_state_probabilities"].values
    np.testing.assert_array_equal(state, decode.exact["acausal_state_probabilities"].values)


@pytest.mark.parametrize("form", list(FORMS))
def test_each_form_keeps_the_posterior_within_its_bound(field, form):
    keep = FORMS[form]
    with field.streamed(form) as stored:
        check_form(field, stored, keep)
        if keep.per_state:
            assert list(stored.indexes["state_bins"].names) == ["state", "x_position", "y_position"]
        else:
            assert stored["acausal_posterior"].dims == ("time", "x_position", "y_position")
            assert stored["acausal_posterior"].shape[1:] == field.clf.environments.centers_shape_


@pytest.mark.parametrize("form", ["default", "summed"])
def test_save_results_writes_what_predict_to_file_streams(field, form, tmp_path):
    keep = FORMS[form]
    path = save_results(field.exact, tmp_path / "saved.nc", keep)
    with load_results(path) as saved, field.streamed(form) as streamed:
        check_form(field, saved, keep)
        np.testing.assert_array_equal(saved["acausal_posterior"].values, streamed["acausal_posterior"].values)
        assert saved["acausal_posterior"].encoding["dtype"] == np.uint16
        assert saved["acausal_posterior"].encoding["shuffle"] and saved["acausal_posterior"].encoding["zlib"]


def test_per_state_and_summed_forms_agree(field):
    with field.streamed("default") as per_state, field.streamed("summed") as summed:
        both = position_posterior(per_state).values.astype(np.float64)
        one = summed["acausal_posterior"].values.astype(np.float64)
        np.testing.assert_array_equal(np.isnan(both), np.isnan(one))
        # two values within the bound each, against one
        assert np.nanmax(np.abs(both - one)) <= 3 * FORMS["default"].max_error
    with field.streamed("summed_exact_causal_too") as exact:
        np.testing.assert_array_equal(
            exact["causal_posterior"].values, position_posterior(field.exact, "causal_posterior").values
        )


def test_the_bounded_forms_are_smaller(field):
    sizes = {form: field.path(form).stat().st_size for form in ("default", "summed", "everything")}
    assert sizes["summed"] < sizes["default"] < sizes["everything"] / 4


def test_no_temporary_is_left_beside_the_results(field):
    field.path("default")
    assert not [p.name for p in field.folder.iterdir() if ".tmp" in p.name]


def test_intervals_decoded_apart_across_chunk_boundaries(field, tmp_path):
    # pieces of 1500 and 1100 bins: the boundary falls inside a 1024-bin chunk
    labels = np.repeat([0, 1], [1500, N_DECODED - 1500])
    s = field.session
    path = field.clf.predict_to_file(tmp_path / "pieces.nc", s.spike_times, s.spike_waveform_features, field.time,
                                     interval_labels=labels)  # fmt: skip
    bounded = field.clf.predict_to_file(tmp_path / "pieces_bounded.nc", s.spike_times, s.spike_waveform_features,
                                        field.time, interval_labels=labels, keep=Keep(per_state=False))  # fmt: skip
    second = field.clf.predict(s.spike_times, s.spike_waveform_features, field.time[1500:])
    with load_results(path) as exact, load_results(bounded) as summed:
        np.testing.assert_array_equal(exact["acausal_posterior"].values[1500:], second["acausal_posterior"].values)
        want = position_posterior(exact).values
        assert np.nanmax(np.abs(summed["acausal_posterior"].values - want)) <= Keep().max_error
        np.testing.assert_array_equal(summed["interval_labels"].values, labels)


@pytest.mark.parametrize("form", ["default", "summed"])
def test_a_track_keeps_its_layout(track, form):
    keep = FORMS[form]
    with track.streamed(form) as stored:
        check_form(track, stored, keep)
        if keep.per_state:
            assert list(stored.indexes["state_bins"].names) == ["state", "position"]
        else:
            assert stored["acausal_posterior"].dims == ("time", "position")
            centers = track.clf.environments.place_bin_centers_[:, 0]
            np.testing.assert_array_equal(stored["position"].values, centers)


def test_a_version_1_file_still_loads(field, tmp_path):
    # written as version 1 wrote it: both posteriors per state, float32, the MultiIndex reset
    old = field.exact.isel(time=slice(0, 700)).reset_index("state_bins")
    old.attrs = {"results_format_version": 1, "state_bins_levels": ["state", "x_position", "y_position"],
                 "marginal_log_likelihood": 1.5}  # fmt: skip
    encoding = {name: {"zlib": True, "complevel": 4, "chunksizes": (700, old.sizes["state_bins"])}
                for name in ("acausal_posterior", "causal_posterior")}  # fmt: skip
    old.to_netcdf(tmp_path / "v1.nc", engine="h5netcdf", encoding=encoding)
    with load_results(tmp_path / "v1.nc") as loaded:
        assert list(loaded.indexes["state_bins"].names) == ["state", "x_position", "y_position"]
        assert Keep.of(loaded) == KEEP_EVERYTHING
        for name in ("acausal_posterior", "causal_posterior"):
            np.testing.assert_array_equal(loaded[name].values, field.exact[name].values[:700])
        position = position_posterior(loaded).values
        np.testing.assert_allclose(np.nansum(position, axis=(1, 2)), 1.0, atol=1e-5)


def reference_layout(results: xr.Dataset) -> xr.Dataset:
    """Results as the reference lays them out: acausal posterior and state probabilities,
    ``state_ind`` on a dimension of its own, the marginal log likelihoods as an attribute."""
    kept = results[["acausal_posterior", "acausal_state_probabilities"]]
    kept.attrs = {"marginal_log_likelihoods": np.asarray(results.attrs["marginal_log_likelihoods"])}
    return kept


def test_a_netcdf3_file_of_the_reference_loads(field, tmp_path):
    # a stock reference install has neither netCDF4 nor h5netcdf: its save_results (the
    # MultiIndex reset, then to_netcdf) falls back to scipy's NetCDF3
    reference = reference_layout(field.exact.isel(time=slice(0, 300)))
    reference.reset_index("state_bins").to_netcdf(tmp_path / "reference.nc", engine="scipy")
    assert (tmp_path / "reference.nc").read_bytes()[:3] == b"CDF"
    with load_results(tmp_path / "reference.nc") as loaded:
        assert list(loaded.indexes["state_bins"].names) == ["state", "x_position", "y_position"]
        np.testing.assert_array_equal(loaded["acausal_posterior"].values, reference["acausal_posterior"].values)
        assert position_posterior(loaded).dims == ("time", "x_position", "y_position")


def test_the_reference_reads_our_files_into_its_own_layout(field, tmp_path):
    path = save_results(field.exact.isel(time=slice(0, 300)), tmp_path / "ours.nc", Keep())
    # the reference's load_results: every coordinate on state_bins becomes a level
    with xr.open_dataset(path, engine="h5netcdf") as ds:
        theirs = ds.set_index(state_bins=list(ds["state_bins"].coords)).load()
    assert list(theirs.indexes["state_bins"].names) == ["state", "x_position", "y_position"]
    # its get_posterior-style sum gives (time, x, y) with the states summed, not a third level
    posterior = theirs["acausal_posterior"].unstack("state_bins").sum("state")
    assert posterior.dims == ("time", "x_position", "y_position")
    # each stored value within 1e-5 (Keep's default): the sum within that per interior bin
    bound = 1e-5 * 2 * field.interior.sum()
    np.testing.assert_allclose(posterior.sum(("x_position", "y_position")).values, 1.0, atol=bound)
    assert theirs["state_ind"].dims == ("state_ind",)


def test_something_else_than_netcdf_is_refused_with_what_to_do(tmp_path):
    (tmp_path / "cut.nc").write_bytes(b"\x00\x01 not netCDF")
    with pytest.raises(ValueError, match=r"cut.nc is not a netCDF file .* decode again"):
        load_results(tmp_path / "cut.nc")


def test_a_newer_format_is_refused_with_what_to_do(field, tmp_path):
    path = save_results(field.exact.isel(time=slice(0, 10)), tmp_path / "new.nc", Keep())
    with xr.open_dataset(path, engine="h5netcdf") as ds:
        newer = ds.load()
    newer.attrs["results_format_version"] = RESULTS_FORMAT_VERSION + 1
    newer.to_netcdf(tmp_path / "newer.nc", engine="h5netcdf")
    with pytest.raises(ValueError, match=rf"newer.nc has results format version {RESULTS_FORMAT_VERSION + 1}; .* "
                                         r"Upgrade decoding_assets to read it\."):  # fmt: skip
        load_results(tmp_path / "newer.nc")


def test_a_url_is_read_through_fsspec(field):
    path = field.path("summed")
    with load_results(path) as local, load_results(path.as_uri()) as remote:
        assert remote.attrs == local.attrs
        window = slice(900, 1200)
        got, want = remote["acausal_posterior"][window], local["acausal_posterior"][window]
        np.testing.assert_array_equal(got.values, want.values)
    import fsspec

    with fsspec.open("memory://results/decode.nc", "wb") as f:
        f.write(path.read_bytes())
    with load_results("memory://results/decode.nc") as remote:
        check_form(field, remote, FORMS["summed"])
    with pytest.raises(FileNotFoundError, match=r"No decoding results file at memory://results/missing.nc"):
        load_results("memory://results/missing.nc")


@pytest.mark.parametrize("form", ["default", "summed", "everything"])
def test_the_summary_and_the_picture_work_on_every_form(field, form):
    s = field.session
    position = pd.DataFrame(
        {"position_x": s.position[:, 0], "position_y": s.position[:, 1], "speed": s.speed,
         "orientation": np.zeros(s.speed.size)},
        index=pd.Index(s.position_time, name="time"),
    )  # fmt: skip
    variables = ["position_x", "position_y"]
    with field.streamed(form) as stored:
        summary = pipeline.summarize_results(stored, position, variables, field.clf, rows=1000)
        png = plot_decode(stored, position, variables)
    exact = pipeline.summarize_results(field.exact, position, variables, field.clf, rows=1000)
    assert summary["n_nan_inside_track"] == 0
    assert summary["max_posterior_sum_error"] == pytest.approx(exact["max_posterior_sum_error"], abs=1e-6)
    assert exact["max_posterior_sum_error"] < 1e-4
    assert summary["median_decoding_error_cm"] == pytest.approx(exact["median_decoding_error_cm"], abs=0.5)
    # measured 11 cm (6 tetrodes, 40 s encoding); two random points of the 50 cm arena are 26 cm apart
    assert exact["median_decoding_error_cm"] < 16.0
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_what_cannot_be_kept_is_an_error_naming_it():
    with pytest.raises(ValueError, match=r"max_error must be null \(exact\) or a number from 7.75e-06 .*; got 1e-06\."):
        Keep(max_error=1e-6)
    with pytest.raises(ValueError, match=r"per_state must be true or false; got 'no'\."):
        Keep(per_state="no")
    assert Keep(max_error=MIN_MAX_ERROR).levels == 65534
    assert Keep().levels == 50604

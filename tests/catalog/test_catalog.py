"""The catalog API on a real DuckDB file and on a real PostgreSQL server, with real NWB
files."""

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from catalog import Catalog, CatalogError, DecodingSelection, check_name
from decoding_assets import pipeline
from decoding_assets.fetch import fetch_environments, fetch_model, fetch_position_info, fetch_results, fetch_spike_data
from decoding_assets.models import fetch_decoding_model, store_decoding_params
from decoding_assets.nwb import NWBReadError
from decoding_assets.position import check_position_params
from decoding_assets.waveforms import check_features_params

pytestmark = pytest.mark.both_backends


@pytest.fixture
def catalog(new_catalog):
    place = new_catalog()
    return Catalog(place.location, place.output_dir)


@pytest.fixture(scope="module")
def decoded(small_nwb, tmp_path_factory, new_catalog):
    """A catalog with the small session processed and one trial decoded."""
    folder = tmp_path_factory.mktemp("decoded")
    nwb = shutil.copy(small_nwb, folder / "small.nwb")
    place = new_catalog()
    cat = Catalog(place.location, place.output_dir)
    config = pipeline.load_config()
    name = pipeline.register_session(cat, nwb)
    pipeline.ensure_parameter_sets(cat, config)
    pipeline.process_session_position(cat, name, "default_decoding")
    pipeline.ensure_features_groups(cat, name, config)
    pipeline.ensure_position_groups(cat, name, config)
    merge_id = pipeline.select(cat, name, "epoch2_block1_trial1", config["decodings"][0])
    pipeline.decode(cat, merge_id)
    return cat, name, merge_id


def test_register_session_records_everything(catalog, small_nwb):
    name = pipeline.register_session(catalog, small_nwb)
    assert name == "small.nwb"
    assert pipeline.register_session(catalog, small_nwb) == name  # idempotent
    intervals = catalog.interval_lists(name)
    assert {"00_r1", "01_s1", "02_r2", "epoch0_block1_trial1", "pos 0 valid times"} <= set(
        intervals["interval_list_name"]
    )
    np.testing.assert_allclose(catalog.fetch_interval_list(name, "01_s1"), [[60.0, 70.0]])
    features = catalog.waveform_features(name)
    assert list(features["electrode_group_name"]) == [f"tetrode_{i:02d}" for i in range(4)]
    assert (features["n_features"] == 4).all() and (features["n_spikes"] > 100).all()


def test_groups(catalog, small_nwb):
    name = pipeline.register_session(catalog, small_nwb)
    catalog.create_features_group(name, "two", ["tetrode_00", "tetrode_02"])
    catalog.create_features_group(name, "two", ["tetrode_02", "tetrode_00"])  # same members: fine
    assert list(catalog.fetch_features_group(name, "two")["electrode_group_name"]) == ["tetrode_00", "tetrode_02"]
    with pytest.raises(CatalogError, match="already exists with other members"):
        catalog.create_features_group(name, "two", ["tetrode_01"])
    with pytest.raises(CatalogError, match="no 'amplitude' waveform features for electrode group.*tetrode_99"):
        catalog.create_features_group(name, "bad", ["tetrode_99"])
    catalog.insert_position_params("default_decoding", {})
    pipeline.process_session_position(catalog, name, "default_decoding")
    catalog.create_position_group(name, "both_runs", ["00_r1", "02_r2"], upsample_rate=500.0)
    group = catalog.fetch_position_group(name, "both_runs")
    assert group["upsample_rate"] == 500.0 and group["position_variables"] == ["position_x", "position_y"]
    assert list(group["members"]["interval_list_name"]) == ["00_r1", "02_r2"]
    with pytest.raises(CatalogError, match="Unknown position group 'nope'"):
        catalog.fetch_position_group(name, "nope")


def test_decoding_parameters_round_trip(catalog):
    stored = store_decoding_params(catalog, "wide", {"block_size": 10000, "position_std": 12.0, "waveform_std": 24.0})
    assert catalog.fetch_decoding_params("wide") == stored
    model = fetch_decoding_model(catalog, "wide")
    assert model.clusterless_algorithm_params["position_std"] == 12.0
    assert model.to_dict() == stored
    store_decoding_params(catalog, "wide", stored)  # the same parameters again: fine
    with pytest.raises(CatalogError, match="already exists with other parameters"):
        store_decoding_params(catalog, "wide", {"position_std": 8.0})
    with pytest.raises(ValueError, match="Unknown decoding parameter"):
        store_decoding_params(catalog, "typo", {"postion_std": 8.0})
    with pytest.raises(CatalogError, match="Unknown decoding_param_name 'nope'; known: \\['wide'\\]"):
        catalog.fetch_decoding_params("nope")


def test_selection_needs_every_name(decoded):
    cat, name, _ = decoded
    good = dict(
        nwb_file_name=name, waveform_features_group_name="all_tetrodes", position_group_name="run_epochs",
        decoding_param_name="contfrag_clusterless", encoding_interval="00_r1", decoding_interval="epoch0_block1_trial1",
    )  # fmt: skip
    merge_id = cat.insert_selection(DecodingSelection(**good))
    assert cat.insert_selection(DecodingSelection(**good)) == merge_id  # stable
    assert cat.fetch_selection(merge_id) == DecodingSelection(**good)
    for field, value, message in [
        ("waveform_features_group_name", "nope", "unknown waveform features group 'nope' of small.nwb"),
        ("position_group_name", "nope", "unknown position group 'nope' of small.nwb"),
        ("decoding_param_name", "nope", "unknown decoding_param_name 'nope'"),
        ("decoding_interval", "nope", "unknown decoding interval 'nope' of small.nwb"),
        ("nwb_file_name", "nope.nwb", "unknown session 'nope.nwb'"),
    ]:
        with pytest.raises(CatalogError, match=message):
            cat.insert_selection(DecodingSelection(**{**good, field: value}))


def test_fetch_helpers(decoded):
    cat, name, merge_id = decoded
    results = fetch_results(cat, merge_id)
    assert list(results.indexes["state_bins"].names) == ["state", "x_position", "y_position"]
    assert set(np.unique(results["interval_labels"].values)) == {0}
    assert results.attrs["decoding_interval"] == "epoch2_block1_trial1"
    position = fetch_position_info(cat, merge_id)
    assert {"position_x", "position_y", "orientation", "speed"} <= set(position.columns)
    assert np.allclose(np.diff(position.index[:100]), 0.002)  # upsampled to 500 Hz
    times, features = fetch_spike_data(cat, merge_id)
    assert len(times) == 4 and features[0].shape[1] == 4
    env = fetch_environments(cat, merge_id)
    assert env.place_bin_centers_.shape[0] * 2 == results.sizes["state_bins"]
    model = fetch_model(cat, merge_id)
    # the pipeline keeps the acausal posterior only, within 1e-5 (its configuration's keep)
    again = model.predict(times, features, results["time"].values)
    np.testing.assert_allclose(again["acausal_posterior"].values, results["acausal_posterior"].values, atol=2e-5)
    results.close()


def test_a_decode_records_its_analyses_where_the_catalog_can_query_them(decoded):
    """The analyses of the results file, recomputed here from the file, the model and the
    position, are what the catalog recorded; a query by median error finds the decode."""
    from decoding_assets.decoder import analyses
    from decoding_assets.position import interpolate_angle, interpolate_by_time

    cat, name, merge_id = decoded
    output = cat.fetch_output(merge_id)
    with fetch_results(cat, merge_id) as results:
        position = fetch_position_info(cat, merge_id)
        time = results["time"].values
        xy = np.column_stack([interpolate_by_time(position.index.to_numpy(), position[v].to_numpy(), time, 1.0)
                              for v in ("position_x", "position_y")])  # fmt: skip
        heading = interpolate_angle(position.index.to_numpy(), position["orientation"].to_numpy(), time, 1.0)
        measures = analyses.analyze(results, fetch_environments(cat, merge_id), xy, heading)
        summary = analyses.summarize(measures, results)
        fractions = results["acausal_state_probabilities"].values.mean(axis=0)
    assert output["median_decoding_error_cm"] == pytest.approx(summary.median_decoding_error_cm)
    assert output["median_ahead_behind_cm"] == pytest.approx(summary.median_ahead_behind_cm)
    assert output["median_abs_ahead_behind_cm"] == pytest.approx(summary.median_abs_ahead_behind_cm)
    assert 0 < output["median_hpd_area"] == pytest.approx(summary.median_hpd_area) and output["hpd_mass"] == 0.95
    stored = cat.state_fractions(merge_id)
    assert list(stored["state"]) == ["Continuous", "Fragmented"]
    np.testing.assert_allclose(stored["fraction"], fractions, rtol=1e-6)
    assert stored["fraction"].sum() == pytest.approx(1.0)
    found = cat.db.query(
        "SELECT merge_id FROM decoding_outputs WHERE median_decoding_error_cm < ?", [output["median_decoding_error_cm"] + 1]
    )
    assert list(found["merge_id"]) == [merge_id]
    assert cat.db.query("SELECT merge_id FROM decoding_outputs WHERE median_decoding_error_cm < 0").empty


def test_a_decode_with_em_reports_its_progress_and_iterations(decoded):
    """estimate_decoding_params: EM over the interval; each iteration's filter and
    smoother and the writing go to the log given."""
    cat, name, _ = decoded
    config = pipeline.load_config()
    em = dataclasses.replace(config["decodings"][0], name="em", estimate_decoding_params=True)
    merge_id = pipeline.select(cat, name, "epoch2_block1_trial1", em)
    lines = []
    out = pipeline.decode(cat, merge_id, log=lines.append)
    out["results"].close()
    where = f"Session {name}, interval 'epoch2_block1_trial1'"
    assert all(line.startswith(where) for line in lines)
    for stage in ("filter 100%", "smoother 100%", "writing the results", "results written"):
        assert any(stage in line for line in lines), stage
    with fetch_results(cat, merge_id) as results:
        iterations = np.atleast_1d(results.attrs["marginal_log_likelihoods"])
    assert iterations.size >= 2 and (np.diff(iterations) > -1e-3 * np.abs(iterations[1:])).all()  # EM does not lose


def test_compaction_keeps_every_row_and_constraint(decoded):
    """Rebuilding a DuckDB catalog's tables keeps every row of every table and every
    constraint; the catalog works on as before. PostgreSQL keeps its own indexes."""
    from catalog.schema import TABLE_NAMES

    cat, name, merge_id = decoded
    before = {t: cat.db.rows(f"SELECT * FROM {t} ORDER BY ALL") for t in TABLE_NAMES}
    assert before["decoding_outputs"] and before["lineage"] and before["decoding_summaries"]
    assert cat.compact(if_opening_slower_than_s=1e9) is False  # not slow: left alone
    assert cat.compact() is (not cat.db.postgres)
    assert {t: cat.db.rows(f"SELECT * FROM {t} ORDER BY ALL") for t in TABLE_NAMES} == before
    with pytest.raises(Exception, match="(?i)foreign key"):
        cat.db.write(lambda con: con.execute("INSERT INTO decoding_summaries (merge_id) VALUES ('no-such-selection')"))
    with pytest.raises(Exception, match="(?i)(primary key|duplicate key)"):
        cat.db.write(lambda con: con.execute("INSERT INTO sessions SELECT * FROM sessions"))
    with fetch_results(cat, merge_id) as results:  # files still verified against the catalog
        assert results.attrs["merge_id"] == merge_id


def test_the_non_local_detector_decodes_through_the_pipeline(decoded):
    """The default configuration's non_local_clusterless parameter set: the detector
    decodes a trial with the animal's position from the position group, its file has the
    four states, and its fitted model comes back as a detector."""
    cat, name, _ = decoded
    config = pipeline.load_config()
    replay = dataclasses.replace(config["decodings"][0], name="replay", decoding_param_name="non_local_clusterless")
    merge_id = pipeline.select(cat, name, "epoch2_block1_trial1", replay)
    pipeline.decode(cat, merge_id)
    with fetch_results(cat, merge_id) as results:
        states = ["Local", "No-Spike", "Non-Local Continuous", "Non-Local Fragmented"]
        assert list(results["states"].values) == states
        probabilities = results["acausal_state_probabilities"].values
        np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
        assert probabilities[0, 0] > 0.99  # the defaults start in Local
        assert np.isfinite(results["acausal_posterior"].values[:, :2]).all()
        model = fetch_model(cat, merge_id)
        assert type(model).__name__ == "NonLocalClusterlessDetector"
        assert cat.fetch_decoding_params("non_local_clusterless")["model"] == "non_local_detector"


def test_cleanup_spares_referenced_and_foreign_files(decoded, tmp_path):
    cat, name, merge_id = decoded
    output = cat.fetch_output(merge_id)
    folder = cat.output_dir / "decoding" / name
    foreign = folder / "someone_elses_result.nc"
    foreign.write_bytes(b"not ours")
    assert cat.cleanup(dry_run=True, min_age_s=0).deleted == ()  # everything is referenced
    cat.delete_output(merge_id)
    orphans = cat.cleanup(dry_run=True, min_age_s=0).deleted
    assert sorted(str(p) for p in orphans) == sorted([output["path"], output["model_path"]])
    young = cat.cleanup(dry_run=True, min_age_s=3600)  # too young to be sure
    assert young.deleted == () and sorted(young.spared) == [(p, "younger than min_age_s") for p in sorted(orphans)]
    removed = cat.cleanup(dry_run=False, min_age_s=0).deleted
    assert sorted(removed) == sorted(orphans)
    assert not any(p.exists() for p in removed)
    assert foreign.exists()
    assert cat.position_outputs(name)["path"].map(lambda p: __import__("pathlib").Path(p).exists()).all()
    # decode again: same merge_id, new files; a third run orphans the second's
    pipeline.decode(cat, merge_id)
    second = cat.fetch_output(merge_id)
    assert second["path"] != output["path"]
    pipeline.decode(cat, merge_id)
    assert sorted(str(p) for p in cat.cleanup(dry_run=True, min_age_s=0).deleted) == sorted(
        [second["path"], second["model_path"]]
    )


class TestBadInput:
    @pytest.mark.parametrize("name", ["a/b", "a\\b", "it's", 'say "x"', " padded", "a|b", "..", ""])
    def test_names_with_path_separators_or_quotes(self, catalog, name):
        with pytest.raises(CatalogError, match="not allowed|non-empty"):
            check_name("decoding_param_name", name)
        with pytest.raises(CatalogError):
            store_decoding_params(catalog, name, {})
        assert catalog.decoding_params().empty

    def test_corrupt_nwb_leaves_no_rows(self, catalog, tmp_path):
        corrupt = tmp_path / "corrupt.nwb"
        corrupt.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\x00" * 100)
        with pytest.raises(NWBReadError, match="Cannot read NWB file corrupt.nwb"):
            pipeline.register_session(catalog, corrupt)
        assert catalog.sessions().empty

    def test_nwb_without_position(self, catalog, tmp_path):
        import datetime as dt

        from pynwb import NWBHDF5IO, NWBFile

        path = tmp_path / "no_position.nwb"
        nwb = NWBFile("no position", "id", dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc))
        nwb.add_epoch(0.0, 10.0, tags=["00_r1"])
        with NWBHDF5IO(str(path), "w") as io:
            io.write(nwb)
        name = pipeline.register_session(catalog, path)
        catalog.insert_position_params("default_decoding", {})
        with pytest.raises(NWBReadError, match="no_position.nwb has no raw position"):
            pipeline.process_session_position(catalog, name, "default_decoding")
        assert catalog.position_outputs(name).empty
        assert not (catalog.output_dir / "position").exists() or not any(
            (catalog.output_dir / "position").rglob("*.nc")
        )

    def test_interval_without_position_is_decoded_without_an_error(self, decoded):
        # decoding a rest epoch (replay) needs no position there: the error is not measured
        cat, name, _ = decoded
        before = len(cat.outputs())
        merge_id = cat.insert_selection(DecodingSelection(
            nwb_file_name=name, waveform_features_group_name="all_tetrodes", position_group_name="run_epochs",
            decoding_param_name="contfrag_clusterless", encoding_interval="00_r1", decoding_interval="01_s1",
        ))  # fmt: skip
        out = pipeline.decode(cat, merge_id)
        out["results"].close()
        assert out["median_decoding_error_cm"] is None and out["max_posterior_sum_error"] < 1e-3
        assert len(cat.outputs()) == before + 1
        assert np.isnan(cat.fetch_output(merge_id)["median_decoding_error_cm"])  # NULL in the catalog

    def test_changed_file_under_a_registered_name(self, catalog, small_nwb, tmp_path):
        copy = tmp_path / "small.nwb"
        shutil.copy(small_nwb, copy)
        pipeline.register_session(catalog, copy)
        with open(copy, "ab") as f:
            f.write(b"\0")
        with pytest.raises(CatalogError, match="already registered .* with different content"):
            catalog.register_session(copy)


def test_features_extracted_from_the_raw_recording(catalog, small_nwb, tmp_path):
    name = pipeline.register_session(catalog, small_nwb)
    config = pipeline.load_config()
    pipeline.ensure_parameter_sets(catalog, config)
    assert catalog.fetch_features_params("amplitude")["threshold_uv"] == 100.0  # the NWB placeholder got parameters
    before = catalog.waveform_features(name)
    report = {r["electrode_group_name"]: r for r in pipeline.extract_session_features(catalog, name, "amplitude")}
    # the small demo records tetrodes 04-07 raw; the last channel of tetrode_07 is marked bad
    assert sorted(report) == ["tetrode_04", "tetrode_05", "tetrode_06", "tetrode_07"]
    assert all(r["status"] == "extracted" for r in report.values())
    assert report["tetrode_07"]["n_channels"] == 3 and report["tetrode_07"]["bad_electrode_ids"] == [31]
    extracted = catalog.extracted_features(name)
    assert set(extracted["source"]) == {"raw:e-raw"} and (extracted["n_spikes"] > 100).all()
    assert list(extracted["electrode_ids"].iloc[3]) == [28, 29, 30]
    assert extracted["params"].map(lambda p: json.loads(p)["filter_band_hz"]).tolist() == [[300.0, 6000.0]] * 4
    # the NWB file's own features are untouched and stay the ones used for their groups
    pd.testing.assert_frame_equal(
        catalog.waveform_features(name).query("source == 'nwb'").reset_index(drop=True), before
    )
    with pytest.raises(CatalogError, match="tetrode_00: the NWB file already holds 'amplitude' features"):
        catalog.register_extracted_features(
            name, "amplitude", [{**extracted.iloc[0].to_dict(), "electrode_group_name": "tetrode_00"}]
        )

    groups = pipeline.ensure_features_groups(catalog, name, config)
    assert groups == {"all_tetrodes": "created", "raw_tetrodes": "created"}
    assert len(catalog.fetch_features_group(name, "all_tetrodes")) == 8
    features = pipeline.read_features(catalog.fetch_session(name)["nwb_path"], _sources(catalog, name, "raw_tetrodes"))
    assert [f.electrode_group_name for f in features] == ["tetrode_04", "tetrode_05", "tetrode_06", "tetrode_07"]
    for f in features:  # raw during the last epoch, 70-110 s; troughs are negative
        assert f.times.min() >= 70.0 and f.times.max() < 110.0 and np.all(np.diff(f.times) > 0)
        assert np.all(f.features.min(axis=1) <= -100.0)

    # extracting again writes new files with the same version (the same values); the
    # old files become orphans that cleanup removes
    old = set(extracted["path"])
    pipeline.extract_session_features(catalog, name, "amplitude")
    again = catalog.extracted_features(name)
    new = set(again["path"])
    assert not old & new and all(Path(p).exists() for p in new)
    assert again["content_hash"].tolist() == extracted["content_hash"].tolist()
    removed = catalog.cleanup(dry_run=False, min_age_s=0).deleted
    assert {str(p) for p in removed} == old

    # a parameter set naming a series the file lacks fails before anything is written
    catalog.insert_features_params(
        "lfp_amplitude", {**catalog.fetch_features_params("amplitude"), "raw_series_name": "lfp"}
    )
    with pytest.raises(NWBReadError, match="no raw ElectricalSeries 'lfp'"):
        pipeline.extract_session_features(catalog, name, "lfp_amplitude")
    assert catalog.extracted_features(name).query("features_param_name == 'lfp_amplitude'").empty


def test_a_session_without_raw_recording_has_nothing_to_extract(catalog, tmp_path):
    from decoding_assets.nwb import write_demo_session

    path = write_demo_session(tmp_path / "no_raw.nwb", n_tetrodes=2, epoch_durations=(20.0, 5.0, 20.0), raw_tetrodes=0)
    name = pipeline.register_session(catalog, path)
    config = pipeline.load_config()
    pipeline.ensure_parameter_sets(catalog, config)
    (row,) = pipeline.extract_session_features(catalog, name, "amplitude")
    assert row["status"] == "skipped" and "has no raw ElectricalSeries" in row["message"]
    assert pipeline.ensure_features_groups(catalog, name, config)["raw_tetrodes"].startswith("skipped")


def test_a_session_recorded_only_raw(catalog, tmp_path):
    from decoding_assets.nwb import write_demo_session

    path = write_demo_session(
        tmp_path / "raw_only.nwb", n_tetrodes=0, epoch_durations=(20.0, 5.0, 20.0), raw_tetrodes=2
    )
    name = pipeline.register_session(catalog, path)
    config = pipeline.load_config()
    pipeline.ensure_parameter_sets(catalog, config)
    report = pipeline.extract_session_features(catalog, name, "amplitude")
    assert [r["status"] for r in report] == ["extracted", "extracted"]
    assert pipeline.ensure_features_groups(catalog, name, config)["all_tetrodes"] == "created"
    features = pipeline.read_features(catalog.fetch_session(name)["nwb_path"], _sources(catalog, name, "all_tetrodes"))
    assert [f.times.size for f in features] == [r["n_spikes"] for r in report]
    assert all(f.times.size > 20 for f in features)


def test_an_older_catalog_keeps_its_sessions_and_parameter_sets(catalog, small_nwb):
    """A catalog written before epochs and new position parameters existed: registering
    again adds what it lacks, and a stored set that a new default leaves unchanged is
    the same set; one whose meaning changed is named with the difference."""
    name = pipeline.register_session(catalog, small_nwb)

    def as_an_older_version_left_it(con):
        con.execute("DELETE FROM task_epochs WHERE nwb_file_name = ?", [name])
        con.execute("DELETE FROM interval_lists WHERE nwb_file_name = ? AND source = 'position'", [name])

    catalog.db.write(as_an_older_version_left_it)
    old_position = {k: v for k, v in check_position_params({}).items() if k != "arena_bounds_cm"}
    catalog.insert_position_params("default_decoding", old_position)
    assert pipeline.register_session(catalog, small_nwb) == name
    assert dict(zip(catalog.epochs(name)["interval_list_name"], catalog.epochs(name)["epoch_kind"])) == {
        "00_r1": "run", "01_s1": "sleep", "02_r2": "run"}  # fmt: skip
    assert "pos 0 valid times" in set(catalog.interval_lists(name)["interval_list_name"])
    config = {"position_params": {"default_decoding": {}}, "waveform_features_params": {"amplitude": {}}}
    catalog.insert_features_params("amplitude", {**check_features_params({}), "reference": "none"})
    with pytest.raises(
        CatalogError,
        match=r"'amplitude' already exists with other parameters \(stored vs given: reference: 'none' vs 'file'\)",
    ):
        pipeline.ensure_parameter_sets(catalog, config)
    assert catalog.fetch_position_params("default_decoding") == old_position  # unchanged, and accepted


def _sources(catalog, nwb_file_name, group):
    from catalog import FeaturesSource

    rows = catalog.fetch_features_group(nwb_file_name, group)
    return [FeaturesSource(r.electrode_group_name, r.features_param_name, r.content_hash, r.path if isinstance(r.path, str) else None)
            for r in rows.itertuples()]  # fmt: skip

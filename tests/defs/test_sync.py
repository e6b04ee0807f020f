"""Dagster's view follows the catalog: sessions and decodes made outside Dagster,
deleted and lost outputs, and a partition space made only of real decodes."""

import dagster as dg
import pytest

from catalog import Catalog, copy_catalog
from decoding_assets import pipeline, plan
from decoding_assets.definitions import build_definitions
from decoding_assets.defs.automation import catalog_sync
from decoding_assets.defs.resources import CatalogResource

# the demo session is built once, by the worker that runs tests/defs/test_graph.py too
pytestmark = pytest.mark.xdist_group("demo")

RUN = dg.AssetKey(["decoding", "contfrag_run"])
RAW = dg.AssetKey(["decoding", "contfrag_raw_tetrodes"])
SESSION_ASSETS = (
    "nwb_sessions",
    "interval_lists",
    "waveform_features",
    "position",
    "waveform_features_groups",
    "position_groups",
)


def _resource(place) -> CatalogResource:
    return CatalogResource(location=place.location, output_dir=str(place.output_dir))


def _tick(instance, place):
    """One evaluation of the catalog_sync sensor, applied as the daemon applies it."""
    result = catalog_sync(dg.build_sensor_context(instance=instance, resources={"catalog": _resource(place)}))
    if isinstance(result, dg.SkipReason):
        return result
    for event in result.asset_events:  # the daemon reports events first, then partitions
        instance.report_runless_asset_event(event)
    for request in result.dynamic_partitions_requests:
        if isinstance(request, dg.AddDynamicPartitionsRequest):
            instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
        else:
            for key in request.partition_keys:
                instance.delete_dynamic_partition(request.partitions_def_name, key)
    return result


@pytest.fixture
def demo_copy(demo_home, new_catalog):
    """A catalog holding what the demo made (its rows, the same files), to change freely."""
    place = new_catalog()
    copy_catalog(demo_home.catalog(), Catalog(place.location, place.output_dir))
    return place


def test_a_session_registered_in_python_gets_partitions_and_is_processed(new_catalog, small_nwb):
    place = new_catalog()
    cat = Catalog(place.location, place.output_dir)
    name = pipeline.register_session(cat, small_nwb, pipeline.load_config())
    defs = build_definitions()
    with dg.instance_for_test() as instance:
        before = dg.evaluate_automation_conditions(defs=defs, instance=instance)  # the daemon was running already
        assert before.get_num_requested(dg.AssetKey("parameter_sets")) == 1
        instance.report_runless_asset_event(dg.AssetMaterialization("parameter_sets"))  # as that request's run does
        result = _tick(instance, place)
        added = {r.partitions_def_name: list(r.partition_keys) for r in result.dynamic_partitions_requests}
        # not decodable yet (no groups): only the session's own partition
        assert added == {"sessions": [name]}
        evaluation = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=before.cursor)
        for asset in SESSION_ASSETS:
            assert evaluation.get_requested_partitions(dg.AssetKey(asset)) == {name}, asset
        assert evaluation.get_num_requested(RUN) == 0


def test_decodes_made_in_python_appear_in_the_instance(demo_copy, demo_home):
    catalog = Catalog(demo_copy.location, demo_copy.output_dir)
    expected = set(catalog.outputs("demo.nwb").query("waveform_features_group_name == 'all_tetrodes'")["merge_id"])
    with dg.instance_for_test() as instance:
        _tick(instance, demo_copy)
        assert instance.get_dynamic_partitions("decoding_contfrag_run") == ["demo.nwb"]
        assert instance.get_materialized_partitions(RUN) == {"demo.nwb"}
        record = instance.fetch_materializations(RUN, limit=1).records[0]
        metadata = record.asset_materialization.metadata
        assert set(metadata["outputs"].value) == expected
        assert metadata["n_decoded"].value == metadata["n_intervals"].value == 5
        # nothing new: the next tick changes nothing
        assert isinstance(_tick(instance, demo_copy), dg.SkipReason)


def test_a_deleted_output_stays_deleted(demo_copy):
    catalog = Catalog(demo_copy.location, demo_copy.output_dir)
    config = next(c for c in pipeline.load_config()["decodings"] if c.name == "contfrag_run")
    victim = catalog.outputs("demo.nwb").query("waveform_features_group_name == 'all_tetrodes'").iloc[0]
    defs = build_definitions()
    with dg.instance_for_test() as instance:
        _tick(instance, demo_copy)
        catalog.delete_output(victim["merge_id"])
        _tick(instance, demo_copy)
        # the partition lists the four left, and nothing asks for the deleted one again
        metadata = instance.fetch_materializations(RUN, limit=1).records[0].asset_materialization.metadata
        assert victim["merge_id"] not in metadata["outputs"].value and len(metadata["outputs"].value) == 4
        assert instance.get_materialized_partitions(RUN) == {"demo.nwb"}
        assert dg.evaluate_automation_conditions(defs=defs, instance=instance).get_num_requested(RUN) == 0
        states = {p.interval: p.status for p in plan.plan_session(catalog, "demo.nwb", config)}
        assert states[victim["decoding_interval"]] == "deleted"
        assert sorted(states.values()) == ["decoded"] * 4 + ["deleted"]
        assert plan.choose(plan.plan_session(catalog, "demo.nwb", config)) == []


def test_a_lost_output_fails_its_check_and_is_the_one_decoded_again(demo_copy):
    from pathlib import Path

    catalog = Catalog(demo_copy.location, demo_copy.output_dir)
    victim = catalog.outputs("demo.nwb").query("waveform_features_group_name == 'all_tetrodes'").iloc[0]
    config = next(c for c in pipeline.load_config()["decodings"] if c.name == "contfrag_run")
    resources = {"catalog": _resource(demo_copy)}
    # the copy shares the demo's files: this one goes missing for the test only
    path = Path(victim["path"])
    hidden = path.with_name(path.name + ".hidden")
    with dg.instance_for_test() as instance:
        _tick(instance, demo_copy)
        path.rename(hidden)
        try:
            found = catalog.verify_outputs(nwb_file_name="demo.nwb").query("status != 'ok'")
            assert found[["kind", "merge_id", "status"]].values.tolist() == [["results", victim["merge_id"], "missing"]]
            context = dg.build_sensor_context(instance=instance, resources=resources)
            synced = catalog_sync(context)
        finally:
            hidden.rename(path)
        (check,) = synced.asset_events
        assert (check.asset_key, check.check_name, check.partition, check.passed) == (
            RUN,
            "results_intact",
            "demo.nwb",
            False,
        )
        assert check.metadata["lost_intervals"].value == victim["decoding_interval"]
        # said once: the next tick (with the cursor) is quiet
        again = catalog_sync(dg.build_sensor_context(instance=instance, resources=resources, cursor=context.cursor))
        assert isinstance(again, dg.SkipReason)
        # materializing the partition decodes that interval only
        assert [p.interval for p in plan.choose(plan.plan_session(catalog, "demo.nwb", config))] == [
            victim["decoding_interval"]
        ]


def test_partitions_are_real_decodes_and_a_typo_is_one_key_that_goes_away(demo_copy, tmp_path):
    from decoding_assets.nwb import write_demo_session

    catalog = Catalog(demo_copy.location, demo_copy.output_dir)
    config = pipeline.load_config()
    # a second session with no raw recording: contfrag_raw_tetrodes has nothing to decode in it
    path = write_demo_session(tmp_path / "no_raw.nwb", n_tetrodes=2, epoch_durations=(20.0, 5.0, 20.0),
                              trial_duration=10.0, raw_tetrodes=0)  # fmt: skip
    pipeline.register_session(catalog, path, config)
    for name in config["position_params"]:
        pipeline.process_session_position(catalog, "no_raw.nwb", name, config)
    assert pipeline.ensure_features_groups(catalog, "no_raw.nwb", config)["raw_tetrodes"].startswith("skipped")
    pipeline.ensure_position_groups(catalog, "no_raw.nwb", config)
    with dg.instance_for_test() as instance:
        _tick(instance, demo_copy)
        assert sorted(instance.get_dynamic_partitions("sessions")) == ["demo.nwb", "no_raw.nwb"]
        assert sorted(instance.get_dynamic_partitions("decoding_contfrag_run")) == ["demo.nwb", "no_raw.nwb"]
        assert instance.get_dynamic_partitions("decoding_contfrag_raw_tetrodes") == ["demo.nwb"]
        instance.add_dynamic_partitions("decoding_contfrag_run", ["dmeo.nwb"])  # "Add a partition", with a typo
        defs = build_definitions(config)
        with pytest.raises(dg.Failure, match="dmeo.nwb: .*session dmeo.nwb: no such session in the catalog"):
            defs.resolve_job_def("decode_contfrag_run").execute_in_process(
                instance=instance, partition_key="dmeo.nwb", resources={"catalog": _resource(demo_copy)}
            )
        _tick(instance, demo_copy)
        assert sorted(instance.get_dynamic_partitions("decoding_contfrag_run")) == ["demo.nwb", "no_raw.nwb"]


def test_parameter_sets_stored_in_python_appear_in_the_instance(demo_copy):
    from decoding_assets.models import store_decoding_params

    catalog = Catalog(demo_copy.location, demo_copy.output_dir)
    with dg.instance_for_test() as instance:
        # nothing to follow before the asset was ever materialized: automation stores the configuration's first
        _tick(instance, demo_copy)
        assert instance.fetch_materializations(dg.AssetKey("parameter_sets"), limit=1).records == []
        instance.report_runless_asset_event(
            dg.AssetMaterialization("parameter_sets", metadata={"decoding_params": "contfrag_clusterless"})
        )
        store_decoding_params(catalog, "wide_place_fields", {"position_std": 12.0})
        _tick(instance, demo_copy)
        metadata = instance.fetch_materializations(dg.AssetKey("parameter_sets"), limit=1).records[0]
        listed = metadata.asset_materialization.metadata["decoding_params"].value
        assert listed == "contfrag_clusterless, non_local_clusterless, wide_place_fields"

"""The whole Dagster graph, materialized for a small demo session with a real instance."""

import dagster as dg
import numpy as np
import pytest

from catalog import Catalog
from decoding_assets.definitions import build_definitions, defs
from decoding_assets.defs.automation import catalog_sync, new_nwb_files
from decoding_assets.defs.decoding import GPU_POOL
from decoding_assets.defs.resources import CatalogResource
from decoding_assets.fetch import fetch_position_info, fetch_results, fetch_spike_data
from decoding_assets.nwb import write_demo_session
from decoding_assets.pipeline import load_config
from decoding_assets.position import GROUP_MAX_GAP_S, interpolate_by_time
from decoding_assets.viewing import viewer_url

pytestmark = [pytest.mark.pipeline_on_postgres, pytest.mark.xdist_group("demo")]


def test_definitions_load():
    dg.Definitions.validate_loadable(defs)
    repository = defs.get_repository_def()
    keys = {k.to_user_string() for k in repository.asset_graph.get_all_asset_keys()}
    assert keys == {
        "parameter_sets", "nwb_sessions", "interval_lists", "waveform_features", "position",
        "waveform_features_groups", "position_groups", "decoding/contfrag_run", "decoding/contfrag_raw_tetrodes",
    }  # fmt: skip
    assert {s.name for s in repository.sensor_defs} >= {"new_nwb_files", "catalog_sync"}
    # no schedule per configuration: new partitions are decoded by their automation condition
    decoding = defs.get_assets_def(dg.AssetKey(["decoding", "contfrag_run"]))
    assert decoding.automation_conditions_by_key[decoding.key].get_label() == "on_missing"
    assert decoding.partitions_def.name == "decoding_contfrag_run"


def test_decoding_step_is_a_gpu_step():
    op = defs.get_assets_def(dg.AssetKey(["decoding", "contfrag_run"])).op
    assert op.pool == GPU_POOL == "gpu"
    assert '"nvidia.com/gpu": "1"' in op.tags["dagster-k8s/config"]
    assert {c.name for c in defs.get_assets_def(dg.AssetKey(["decoding", "contfrag_run"])).check_specs} == {
        "posterior_sums_to_one",
        "no_nan_inside_track",
        "results_intact",
    }


def test_whole_graph_for_the_demo_session(demo_home):
    home, all_outputs, catalog = demo_home.home, demo_home.outputs, demo_home.catalog()
    outputs = [o for o in all_outputs if o["waveform_features_group_name"] == "all_tetrodes"]
    # 3 trials in the first run epoch and 2 in the second
    assert sorted(o["decoding_interval"] for o in outputs) == [
        "epoch0_block1_trial1", "epoch0_block1_trial2", "epoch0_block1_trial3",
        "epoch2_block1_trial1", "epoch2_block1_trial2",
    ]  # fmt: skip
    for output in outputs:
        results = fetch_results(catalog, output["merge_id"])
        assert results.attrs["decoding_interval"] == output["decoding_interval"]
        assert results.sizes["time"] == 10_000  # 20 s at 500 Hz
        # the decode follows the tracked animal: check against the position it used
        position = fetch_position_info(catalog, output["merge_id"])
        posterior = results["acausal_posterior"].unstack("state_bins").sum("state")
        flat = posterior.stack(bin=["x_position", "y_position"]).fillna(-1)
        best = flat.argmax("bin").values
        decoded = np.column_stack([flat["bin"]["x_position"].values[best], flat["bin"]["y_position"].values[best]])
        t = results["time"].values
        tracked = np.column_stack([interpolate_by_time(position.index.to_numpy(), position[c].to_numpy(), t, GROUP_MAX_GAP_S)
                                   for c in ("position_x", "position_y")])  # fmt: skip
        ok = ~np.isnan(tracked).any(axis=1)
        error = np.median(np.linalg.norm(decoded[ok] - tracked[ok], axis=1))
        assert error == pytest.approx(output["median_decoding_error_cm"], rel=1e-6)
        assert error < 15.0  # 4 tetrodes, 20-60 s of encoding: measured 6-10 cm
        results.close()
    # the instance recorded every partition's materialization and passing checks
    import os

    instance = dg.DagsterInstance.from_config(os.environ["DAGSTER_HOME"])
    key = dg.AssetKey(["decoding", "contfrag_run"])
    assert instance.get_materialized_partitions(key) == {"demo.nwb"}  # one partition: the session
    record = instance.fetch_materializations(key, limit=1).records[0]
    metadata = record.asset_materialization.metadata
    assert {"intervals", "outputs", "n_decoded", "median_decoding_error_cm", "run_seconds"} <= set(metadata)
    assert set(metadata["outputs"].value) == {o["merge_id"] for o in outputs}
    assert metadata["n_decoded"].value == metadata["n_intervals"].value == 5
    assert all(o["decoding_interval"] in metadata["intervals"].value for o in outputs)
    assert "decode" not in metadata  # no picture in the event log: the viewer link shows the decode
    # each decoded interval links to its viewer, served beside the UI
    assert all(f"[view]({viewer_url(o['merge_id'])})" in metadata["intervals"].value for o in outputs)
    # how far each decode had got went to the run's log while it ran
    messages = [event.user_message for event in instance.all_logs(record.run_id)]
    for stage in ("likelihood 100%", "filter 100%", "smoother 100%", "results written"):
        assert any(stage in m and "Session demo.nwb, interval 'epoch0_block1_trial1'" in m for m in messages), stage
    check = instance.event_log_storage.get_latest_asset_check_execution_by_key(
        [dg.AssetCheckKey(key, "no_nan_inside_track")]
    )
    assert check[dg.AssetCheckKey(key, "no_nan_inside_track")].status.value == "SUCCEEDED"
    # the next run's process finds the compiled decoder on disk
    assert any((home / "jax_cache").iterdir())
    # lineage: from the NWB file to every decode that used it
    lineage = catalog.lineage(outputs[0]["merge_id"])
    assert set(lineage["input_kind"]) == {"session", "waveform_features", "position", "decoding_params", "code"}


def test_the_demo_decodes_from_the_raw_recording(demo_home):
    all_outputs, catalog = demo_home.outputs, demo_home.catalog()
    raw = [o for o in all_outputs if o["waveform_features_group_name"] == "raw_tetrodes"]
    assert sorted(o["decoding_interval"] for o in raw) == ["epoch2_block1_trial1", "epoch2_block1_trial2"]
    # 4 tetrodes extracted from 40 s of raw signal, encoded on those 40 s: measured 9-13 cm
    assert all(o["median_decoding_error_cm"] < 25.0 for o in raw)
    extracted = catalog.extracted_features("demo.nwb")
    spikes = fetch_spike_data(catalog, raw[0]["merge_id"])
    assert [t.size for t in spikes[0]] == extracted["n_spikes"].tolist()
    assert [f.shape[1] for f in spikes[1]] == [4, 4, 4, 3]  # one channel marked bad
    # lineage reaches the extracted files through their checksums
    lineage = catalog.lineage(raw[0]["merge_id"]).query("input_kind == 'waveform_features'")
    assert sorted(lineage["input_version"]) == sorted(extracted["content_hash"])
    # the asset's metadata lists every group, from the file and from the raw recording
    import os

    instance = dg.DagsterInstance.from_config(os.environ["DAGSTER_HOME"])
    record = instance.fetch_materializations(dg.AssetKey("waveform_features"), limit=1).records[0]
    table = record.asset_materialization.metadata["electrode_groups"].value
    assert table.count("| raw ") == 4 and table.count("| nwb ") == 4


def test_sensor_registers_a_new_file(tmp_path, monkeypatch, new_catalog):
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    monkeypatch.setenv("DECODING_ASSETS_WATCH_DIR", str(incoming))
    write_demo_session(
        incoming / "new_session.nwb",
        n_tetrodes=2,
        epoch_durations=(20.0, 5.0, 20.0),
        trial_duration=10.0,
        raw_tetrodes=1,
    )
    (incoming / "broken.nwb").write_bytes(b"not an hdf5 file")
    place = new_catalog()
    resource = CatalogResource(location=place.location, output_dir=str(place.output_dir))
    with dg.DagsterInstance.ephemeral() as instance:
        context = dg.build_sensor_context(instance=instance, resources={"catalog": resource})
        result = new_nwb_files(context)
        assert result.skip_message.startswith("Registered new_session.nwb")
        # partitions come from catalog_sync, which follows the catalog
        assert instance.get_dynamic_partitions("sessions") == []
        synced = catalog_sync(dg.build_sensor_context(instance=instance, resources={"catalog": resource}))
        assert [(r.partitions_def_name, list(r.partition_keys)) for r in synced.dynamic_partitions_requests] == [
            ("sessions", ["new_session.nwb"])
        ]
        # the broken file is reported, not registered (the cursor remembers it); a tick
        # without that memory reports it again, one with it has nothing new
        assert "broken.nwb" in context.cursor
        again = new_nwb_files(dg.build_sensor_context(instance=instance, resources={"catalog": resource}))
        assert "broken.nwb" in again.skip_message and "Cannot read NWB file" in again.skip_message
        quiet = new_nwb_files(
            dg.build_sensor_context(instance=instance, resources={"catalog": resource}, cursor=context.cursor)
        )
        assert quiet.skip_message == "No new NWB files."
    assert list(Catalog(place.location).sessions()["nwb_file_name"]) == ["new_session.nwb"]


def test_an_interval_outside_the_decoding_is_a_clear_failure(demo_home):
    config = load_config()
    local = build_definitions(config)
    import os

    instance = dg.DagsterInstance.from_config(os.environ["DAGSTER_HOME"])
    request = {"ops": {"decoding__contfrag_run": {"config": {"intervals": ["01_s1"]}}}}
    with pytest.raises(Exception, match="does not decode interval\\(s\\) '01_s1' of demo.nwb"):
        local.resolve_job_def("decode_contfrag_run").execute_in_process(
            instance=instance, partition_key="demo.nwb", run_config=request
        )


def test_dagster_keeps_its_runs_beside_the_catalog(demo_home, catalog_backend):
    """With the catalog on the lab's server, Dagster's runs and events go to a database
    of their own beside it (and nothing to local disk); with a file, to local disk."""
    import psycopg2

    from catalog.connection import is_postgres

    dagster_home = demo_home.home / "dagster"
    n_runs = 2 + 2  # the parameter sets, the session, one run per decoding configuration
    assert is_postgres(demo_home.place.location) == (catalog_backend == "postgres")
    if catalog_backend == "postgres":
        assert "postgresql+psycopg2://" in (dagster_home / "dagster.yaml").read_text()
        assert not (dagster_home / "history").exists()
        with psycopg2.connect(demo_home.place.location + "_dagster") as con, con.cursor() as cursor:
            cursor.execute("SELECT status, count(*) FROM runs GROUP BY status")
            runs = dict(cursor.fetchall())
        # (another test of this module adds a run that fails on purpose)
        assert runs["SUCCESS"] == n_runs and set(runs) <= {"SUCCESS", "FAILURE"}
        # the outputs went to the shared folder named for them, and say who made them
        outputs = demo_home.catalog().outputs()
        assert outputs["path"].str.startswith(str(demo_home.place.output_dir)).all()
        assert set(outputs["created_by"]) == {demo_home.catalog().user}
    else:
        assert "postgres" not in (dagster_home / "dagster.yaml").read_text()
        instance = dg.DagsterInstance.from_config(str(dagster_home))
        assert len(instance.get_run_records()) >= n_runs


def test_the_viewers_of_a_demo_decode(demo_home, tmp_path, capsys):
    """`decoding-assets view` writes an interval of a decode; the server `decoding-assets
    ui` starts serves the whole decode, once built, and names what it cannot show."""
    import json
    import socket
    import urllib.error
    import urllib.request

    from decoding_assets import cli
    from decoding_assets.viewing import serve_viewers

    catalog = demo_home.catalog()
    merge_id = demo_home.outputs[0]["merge_id"]
    with fetch_results(catalog, merge_id) as results:
        t0 = float(results["time"].values[0])
    out = tmp_path / "interval.html"
    argv = ["--home", str(demo_home.home), "view", merge_id, "--start", str(t0 + 1), "--stop", str(t0 + 6), "--out", str(out)]
    assert cli.main(argv) == 0
    assert f"Wrote {out}" in capsys.readouterr().out
    page = out.read_text()
    start = page.index('type="application/json">') + len('type="application/json">')
    data = json.loads(page[start : page.index("</script>", start)])
    assert data["n_frames"] == 2500 and data["t0"] == pytest.approx(t0 + 1, abs=0.002)  # 5 s at 2 ms
    assert data["groups"] == [f.electrode_group_name for f in catalog.fetch_decode_sources(merge_id).features]
    assert cli.main(["--home", str(demo_home.home), "view", "no-such-decode"]) == 1
    assert "no-such-decode" in capsys.readouterr().err

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    folder = tmp_path / "viewers"
    server = serve_viewers(lambda: catalog, folder, port)
    try:
        for _ in range(2):  # built once, then the same file
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/view/{merge_id}", timeout=120) as response:
                body = response.read().decode()
            assert response.status == 200 and '<canvas id="posterior"' in body and demo_home.outputs[0]["decoding_interval"] in body
        assert len(list(folder.iterdir())) == 1
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as response:
            index = response.read().decode()
        assert all(o["merge_id"] in index for o in demo_home.outputs)
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/view/no-such-decode", timeout=30)
        assert missing.value.code == 404 and "no-such-decode" in missing.value.read().decode()
    finally:
        server.shutdown()
        server.server_close()

"""One catalog for a lab: many processes writing at once, a reader that never blocks
them, who did what, and moving a laptop's catalog onto the lab's server."""

import gzip
import multiprocessing as mp
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from catalog import Catalog, CatalogError, DecodingSelection, copy_catalog
from catalog.schema import SCHEMA_VERSION
from decoding_assets import pipeline
from decoding_assets.cli import main
from decoding_assets.fetch import fetch_results

from .workers import decode_many, read_while_writing, select_all

pytestmark = pytest.mark.both_backends

DATA = Path(__file__).resolve().parent.parent / "data"
N_WORKERS = 8
# per worker, each output with its lineage: a DuckDB file lets one process in at a time,
# so it gets fewer (the benchmark measures both at full size)
N_DECODES = {"postgres": 12, "duckdb": 4}
N_SAME_KEYS = {"postgres": 50, "duckdb": 16}  # selected by every worker at once


def _lab_catalog(place, n_intervals: int, folder: Path) -> tuple[Catalog, list[DecodingSelection]]:
    """A catalog holding one session with ``n_intervals`` decodable intervals, its groups
    and parameters: everything a decode's selection names, written through the API."""
    cat = Catalog(place.location, place.output_dir)
    nwb = folder / "session.nwb"
    nwb.write_bytes(b"a stand-in: the catalog reads only its name and checksum")
    times = {f"trial{i:04d}": (np.array([[i, i + 0.5]]), "trial") for i in range(n_intervals)}
    times["00_r1"] = (np.array([[0.0, float(n_intervals)]]), "epoch")
    name = cat.register_session(
        nwb, interval_lists=times, electrode_groups=[("tetrode_00", 4, "CA1")],
        waveform_features=[{"electrode_group_name": "tetrode_00", "features_param_name": "amplitude", "n_spikes": 10,
                            "n_features": 4, "source": "nwb", "content_hash": "abc"}],
    )  # fmt: skip
    cat.create_features_group(name, "all_tetrodes")
    cat.insert_position_params("default_decoding", {"max_plausible_speed": 100.0})
    position = cat.position_output_path(name, "00_r1", "default_decoding")
    position.write_bytes(b"position")
    cat.register_position_output(name, "00_r1", "default_decoding", position, 10)
    cat.create_position_group(name, "run_epochs", ["00_r1"])
    cat.insert_decoding_params("contfrag", {"block_size": 1000})
    selections = [
        DecodingSelection(name, "all_tetrodes", "run_epochs", "contfrag", "00_r1", f"trial{i:04d}")
        for i in range(n_intervals)
    ]
    return cat, selections


def test_eight_workers_and_a_reader_lose_nothing_and_duplicate_nothing(new_catalog, tmp_path, catalog_backend):
    place = new_catalog()
    n_decodes = N_DECODES[catalog_backend]
    n_same = N_SAME_KEYS[catalog_backend]
    cat, selections = _lab_catalog(place, max(n_same, N_WORKERS * n_decodes), tmp_path)
    # all eight select the same decodes at once: each is recorded exactly once
    context = mp.get_context("spawn")
    racers = [context.Process(target=select_all, args=(place.location, selections[:n_same])) for _ in range(N_WORKERS)]
    for p in racers:
        p.start()
    for p in racers:
        p.join(timeout=600)
    assert [p.exitcode for p in racers] == [0] * N_WORKERS
    assert cat.query("SELECT count(*) AS n FROM decoding_selections")["n"].iloc[0] == n_same
    merge_ids = [s.merge_id for s in selections[: N_WORKERS * n_decodes]]
    for selection in selections[n_same : N_WORKERS * n_decodes]:
        cat.insert_selection(selection)

    with context.Manager() as manager:
        stop, counts = manager.Event(), manager.list()
        reader = None
        if catalog_backend == "postgres":  # a DuckDB file admits one process at a time: no reader beside writers
            reader = context.Process(target=read_while_writing, args=(place.location, stop, counts))
            reader.start()
        workers = [
            context.Process(target=decode_many, args=(place.location, str(place.output_dir),
                                                       merge_ids[w::N_WORKERS], f"worker{w}@node{w}"))
            for w in range(N_WORKERS)
        ]  # fmt: skip
        for p in workers:
            p.start()
        for p in workers:
            p.join(timeout=600)
        stop.set()
        if reader is not None:
            reader.join(timeout=60)
            assert reader.exitcode == 0
            seen = list(counts)
            assert len(seen) > 1 and seen == sorted(seen)  # the reader kept reading, and never went back
    assert [p.exitcode for p in workers] == [0] * N_WORKERS
    outputs = cat.outputs()
    assert len(outputs) == len(merge_ids) and outputs["merge_id"].is_unique  # none lost, none twice
    assert sorted(outputs["merge_id"]) == sorted(merge_ids)
    lineage = cat.query("SELECT merge_id, count(*) AS n FROM lineage GROUP BY merge_id")
    assert len(lineage) == len(merge_ids) and (lineage["n"] == 3).all()
    # who did what: each worker's outputs carry its name
    by_worker = outputs.groupby("created_by")["merge_id"].count().to_dict()
    assert by_worker == {f"worker{w}@node{w}": n_decodes for w in range(N_WORKERS)}


def test_who_did_what_and_who_may_delete_it(new_catalog, tmp_path, capsys):
    place = new_catalog()
    cat, selections = _lab_catalog(place, 2, tmp_path)
    alice = Catalog(place.location, place.output_dir, user="alice@rig1")
    for selection in selections:
        alice.insert_selection(selection)
    decode_many(place.location, str(place.output_dir), [s.merge_id for s in selections], "alice@rig1")
    lineage = cat.lineage(selections[0].merge_id)
    assert set(lineage["created_by"]) == {"alice@rig1"}
    made_by = dict(zip(lineage["input_kind"], lineage["input_created_by"]))
    assert made_by["session"] == made_by["decoding_params"] == cat.user  # this process registered those
    bob = Catalog(place.location, place.output_dir, user="bob@rig2")
    with pytest.raises(CatalogError, match="made by alice@rig1, not by you \\(bob@rig2\\).*--force"):
        bob.delete_output(selections[0].merge_id)
    assert len(cat.outputs()) == 2  # nothing deleted
    alice.delete_output(selections[0].merge_id)  # her own: fine
    assert list(cat.outputs()["merge_id"]) == [selections[1].merge_id]
    # on the command line, as someone else: refused, then forced
    args = ["--home", str(tmp_path / "home"), "--catalog", place.location, "catalog", "delete", selections[1].merge_id]
    assert main(args) == 1
    assert "made by alice@rig1" in capsys.readouterr().err
    assert main([*args, "--force"]) == 0
    assert cat.outputs().empty and cat.lineage(selections[1].merge_id).empty


def test_the_tables_live_where_the_location_says(new_catalog, tmp_path, catalog_backend):
    place = new_catalog()
    cat, _ = _lab_catalog(place, 1, tmp_path)
    if catalog_backend == "postgres":
        # read on the server itself, not through DuckDB's view of it
        rows = cat.query("SELECT * FROM postgres_query('lab', 'SELECT nwb_file_name, created_by FROM sessions')")
        assert rows.values.tolist() == [["session.nwb", cat.user]]
        with pytest.raises(CatalogError, match="is on a PostgreSQL server, not in a file"):
            cat.path
    else:
        assert cat.path == Path(place.location) and cat.path.is_file()


# ---------------------------------------------------------------------- moving to the lab's server


@pytest.fixture(scope="module")
def laptop(small_nwb, tmp_path_factory):
    """A laptop's DuckDB catalog with the small session processed and one trial decoded."""
    folder = tmp_path_factory.mktemp("laptop")
    cat = Catalog(folder / "catalog.duckdb")
    name = pipeline.register_session(cat, shutil.copy(small_nwb, folder / "small.nwb"))
    config = pipeline.load_config()
    pipeline.ensure_parameter_sets(cat, config)
    pipeline.process_session_position(cat, name, "default_decoding")
    pipeline.ensure_features_groups(cat, name, config)
    pipeline.ensure_position_groups(cat, name, config)
    merge_id = pipeline.select(cat, name, "epoch0_block1_trial1", config["decodings"][0])
    pipeline.decode(cat, merge_id)["results"].close()
    return cat, merge_id


def _table(cat: Catalog, table: str):
    return cat.query(f"SELECT * FROM {table} ORDER BY ALL")


def test_migrate_a_laptop_catalog_into_the_lab(laptop, new_catalog, tmp_path, capsys, catalog_backend):
    source, merge_id = laptop
    place = new_catalog()
    home = ["--home", str(tmp_path / "home"), "--catalog", str(source.location)]
    assert main([*home, "catalog", "migrate", "--to", place.location]) == 0
    assert "Copied" in capsys.readouterr().out
    lab = Catalog(place.location)
    for table in ("sessions", "interval_lists", "decoding_selections", "decoding_outputs", "lineage", "written_files"):
        copied, original = _table(lab, table), _table(source, table)
        assert copied.shape == original.shape, table
        for column in ("merge_id", "path", "checksum", "content_hash", "input_version", "created_by"):
            if column in original:
                assert copied[column].tolist() == original[column].tolist(), (table, column)
    # the lab's catalog finds the decode and its files
    results = fetch_results(lab, merge_id)
    assert results.attrs["merge_id"] == merge_id
    results.close()
    assert lab.lineage(merge_id).drop(columns="created_at").equals(source.lineage(merge_id).drop(columns="created_at"))
    # again: nothing to copy
    assert sum(copy_catalog(source, lab).values()) == 0

    # the same merge_id with other content stops the copy, naming it, and copies nothing
    lab.db.write(
        lambda con: con.execute("UPDATE decoding_outputs SET checksum = 'other' WHERE merge_id = ?", [merge_id])
    )
    extra = tmp_path / "extra.nwb"
    shutil.copy(source.fetch_session("small.nwb")["nwb_path"], extra)
    source.register_session(extra)
    try:
        assert main([*home, "catalog", "migrate", "--to", place.location]) == 1
        err = capsys.readouterr().err
        assert f"decoding_outputs {{'merge_id': '{merge_id}'}}: checksum differ" in err and "Nothing was copied" in err
        assert "extra.nwb" not in set(lab.sessions()["nwb_file_name"])
    finally:
        source.db.write(lambda con: con.execute("DELETE FROM sessions WHERE nwb_file_name = 'extra.nwb'"))


# ---------------------------------------------------------------------- DuckDB files


def test_threads_of_one_process_open_the_file_at_once(new_catalog, tmp_path):
    """Dagster's code server evaluates sensors in threads (a sensor that timed out still
    runs beside the next tick), and the webserver answers in threads: each opens and
    closes the catalog. Measured before the fix: DuckDB's cache of open files raced, and
    7 of 8 threads failed with "Unique file handle conflict"."""
    place = new_catalog()
    cat = Catalog(place.location, place.output_dir)
    errors, counts = [], []

    def read(n: int) -> None:
        try:
            counts.append(sum(cat.db.scalar("SELECT 1") == 1 for _ in range(n)))  # each call opens and closes
        except Exception as error:  # every thread's failure is the test's
            errors.append(error)

    threads = [threading.Thread(target=read, args=(500,)) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert counts == [500] * 8


def test_a_catalog_written_by_duckdb_2_says_how_to_convert_it(tmp_path):
    # a file DuckDB 2.0.1 wrote (a catalog_info table), kept gzipped: 780 kB of mostly zeros
    path = tmp_path / "catalog.duckdb"
    path.write_bytes(gzip.decompress((DATA / "catalog_written_by_duckdb_2.0.1.duckdb.gz").read_bytes()))
    started = time.monotonic()
    with pytest.raises(CatalogError, match=r"written by DuckDB 2.0.*Convert it once.*README"):
        Catalog(path)
    assert time.monotonic() - started < 10  # said at once, not after waiting for a lock


def test_a_catalog_of_the_first_version_is_upgraded_in_place(tmp_path):
    # written by the first version (schema 1; JSON columns, no created_by): a session,
    # a position and a decoding parameter set
    path = tmp_path / "catalog.duckdb"
    path.write_bytes(gzip.decompress((DATA / "catalog_schema_1.duckdb.gz").read_bytes()))
    cat = Catalog(path, user="me@laptop")
    assert cat.query("SELECT value FROM catalog_info WHERE key = 'schema_version'")["value"].tolist() == [str(SCHEMA_VERSION)]
    sessions = cat.sessions()
    assert sessions["nwb_file_name"].tolist() == ["old.nwb"] and sessions["created_by"].isna().all()
    assert {"00_r1", "01_s1", "02_r2"} <= set(cat.interval_lists("old.nwb")["interval_list_name"])
    assert cat.fetch_position_params("default_decoding") == {"max_plausible_speed": 100.0}
    # what is written now says who wrote it; what was there stays as it was
    cat.insert_position_params("wider", {"max_plausible_speed": 150.0})
    who = cat.query("SELECT trodes_pos_params_name, created_by FROM position_params ORDER BY 1")
    assert who.values.tolist() == [["default_decoding", None], ["wider", "me@laptop"]]
    with pytest.raises(CatalogError, match="already exists with other parameters"):
        cat.insert_position_params("default_decoding", {"max_plausible_speed": 90.0})


def test_an_unreachable_server_is_named():
    with pytest.raises(
        CatalogError, match="Cannot reach the catalog's PostgreSQL server at postgresql://nobody@127.0.0.1:9/none"
    ):
        Catalog("postgresql://nobody@127.0.0.1:9/none")


def test_the_catalog_is_a_library_that_knows_only_itself():
    """``catalog`` imports neither the pipeline, the decoder nor Dagster: a notebook, a
    worker or another tool can use it alone."""
    import subprocess
    import sys

    code = "import sys, catalog; print(sorted({m.split('.')[0] for m in sys.modules} & {'decoding_assets', 'dagster', 'jax'}))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"

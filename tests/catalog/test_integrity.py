"""The catalog verifies the files it hands out, records who is writing each, and cleans up
without racing its writers: on a DuckDB file and on a real PostgreSQL server, with a real
NWB file, real netCDF files and real writer processes killed with SIGKILL."""

import dataclasses
import datetime as dt
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from catalog import Catalog, CatalogError, CleanupReport, DecodingSelection, file_checksum
from catalog.connection import Database
from catalog.schema import SCHEMA_VERSION
from decoding_assets.decoder import save_results
from decoding_assets.fetch import fetch_position_info, fetch_results

pytestmark = pytest.mark.both_backends

DATA = Path(__file__).resolve().parent.parent / "data"
VERSIONS = {"session": {"tiny.nwb": "h"}, "decoding_params": {"contfrag": "v"}, "code": {"decoding_assets": "test"}}
HERE = socket.gethostname()


@pytest.fixture(scope="module")
def tiny_nwb(tmp_path_factory) -> Path:
    """A real NWB file, written with pynwb: one run epoch."""
    from pynwb import NWBHDF5IO, NWBFile

    path = tmp_path_factory.mktemp("nwb") / "tiny.nwb"
    nwb = NWBFile("a tiny session", "tiny", dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc))
    nwb.add_epoch(0.0, 10.0, tags=["00_r1"])
    with NWBHDF5IO(str(path), "w") as io:
        io.write(nwb)
    return path


@dataclass(frozen=True)
class Lab:
    """A catalog holding one session, its position, groups and parameters, and
    ``n_trials`` selected decodes, built through the API."""

    cat: Catalog
    nwb: Path
    position: Path
    selections: list[DecodingSelection]


def _lab(place, folder: Path, nwb: Path, n_trials: int = 2) -> Lab:
    cat = Catalog(place.location, place.output_dir)
    nwb = Path(shutil.copy(nwb, folder / "tiny.nwb"))
    intervals = {f"trial{i}": (np.array([[i, i + 0.5]]), "trial") for i in range(n_trials)}
    intervals["00_r1"] = (np.array([[0.0, 10.0]]), "epoch")
    name = cat.register_session(
        nwb, interval_lists=intervals, electrode_groups=[("tetrode_00", 4, "CA1")],
        waveform_features=[{"electrode_group_name": "tetrode_00", "features_param_name": "amplitude", "n_spikes": 10,
                            "n_features": 4, "source": "nwb", "content_hash": "abc"}],
    )  # fmt: skip
    cat.create_features_group(name, "all_tetrodes")
    cat.insert_position_params("default_decoding", {"max_plausible_speed": 100.0})
    position = cat.position_output_path(name, "00_r1", "default_decoding")
    _position_frame().to_xarray().to_netcdf(position, engine="h5netcdf")
    cat.register_position_output(name, "00_r1", "default_decoding", position, 50)
    cat.create_position_group(name, "run_epochs", ["00_r1"], upsample_rate=10.0)
    cat.insert_decoding_params("contfrag", {"block_size": 1000})
    selections = [DecodingSelection(name, "all_tetrodes", "run_epochs", "contfrag", "00_r1", f"trial{i}")
                  for i in range(n_trials)]  # fmt: skip
    for selection in selections:
        cat.insert_selection(selection)
    return Lab(cat, nwb, position, selections)


def _position_frame() -> pd.DataFrame:
    time = pd.Index(np.arange(50) / 5.0, name="time")
    return pd.DataFrame({"position_x": np.linspace(0, 100, 50), "position_y": np.linspace(0, 50, 50)}, index=time)


def _results(seed: int) -> xr.Dataset:
    """A small decode laid out as the decoder writes it."""
    rng = np.random.default_rng(seed)
    bins = pd.MultiIndex.from_product([["Continuous", "Fragmented"], [1.0, 3.0]], names=["state", "x_position"])
    posterior = rng.dirichlet(np.ones(4), size=6).astype(np.float32)
    coords = xr.Coordinates.from_pandas_multiindex(bins, "state_bins")
    return xr.Dataset(
        {"acausal_posterior": (("time", "state_bins"), posterior)}, coords={"time": np.arange(6) / 500.0, **coords}
    )


def _decode(cat: Catalog, selection: DecodingSelection, seed: int = 0) -> tuple[Path, Path]:
    """Stand in for a decode: get paths, write results and model, register them."""
    path, model = cat.output_paths(selection)
    _write_output(path, model, seed)
    _register(cat, selection.merge_id, path, model)
    return path, model


def _write_output(path: Path, model: Path, seed: int = 0) -> None:
    save_results(_results(seed), path)
    xr.Dataset({"weights": ("bin", np.arange(4.0) + seed)}).to_netcdf(model, engine="h5netcdf")


def _register(cat: Catalog, merge_id: str, path: Path, model: Path) -> dict:
    return cat.register_output(
        merge_id, path=path, model_path=model, code_version="test", input_versions=VERSIONS, n_time_bins=6,
        run_seconds=0.1, device="cpu", analyses=None,
    )  # fmt: skip


def _flip_bytes(path: Path) -> None:
    """Other content, same size: a byte in the middle, changed in place, later (a second
    after the registered mtime, whatever the file system's timestamp granularity)."""
    before = os.stat(path)
    with open(path, "r+b") as f:
        f.seek(before.st_size // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000_000))


def _touch(path: Path) -> int:
    """A later mtime, the same bytes (a `touch`); returns the new st_mtime_ns."""
    stat = os.stat(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    return os.stat(path).st_mtime_ns


def _written(cat: Catalog) -> dict[str, str]:
    return dict(cat.query("SELECT path, state FROM written_files").itertuples(index=False))


def _no_row_points_at_a_missing_file(cat: Catalog) -> None:
    referenced = cat.query(
        "SELECT path FROM decoding_outputs UNION ALL SELECT model_path FROM decoding_outputs "
        "UNION ALL SELECT path FROM position_outputs UNION ALL SELECT path FROM waveform_features_files"
    )["path"]
    assert [p for p in referenced if not Path(p).is_file()] == []


@pytest.fixture
def lab(new_catalog, tmp_path, tiny_nwb) -> Lab:
    return _lab(new_catalog(), tmp_path, tiny_nwb)


# ---------------------------------------------------------------------- verifying files


def test_a_touched_file_is_trusted_and_its_new_mtime_recorded(lab):
    cat, selection = lab.cat, lab.selections[0]
    path, model = _decode(cat, selection)
    nwb_mtime, results_mtime, position_mtime = _touch(lab.nwb), _touch(path), _touch(lab.position)
    sources = cat.fetch_decode_sources(selection.merge_id)
    assert cat.verify_decode_inputs(sources) is sources
    assert cat.fetch_session("tiny.nwb")["modified_ns"] == nwb_mtime
    assert cat.position_outputs("tiny.nwb")["modified_ns"].tolist() == [position_mtime]
    output = cat.verify_output(selection.merge_id)
    assert output["modified_ns"] == results_mtime and output["file_status"] == "ok"
    # trusted from now on by size and mtime; a full check hashes and agrees
    assert cat.verify_output(selection.merge_id, full=True)["checksum"] == file_checksum(path)
    report = cat.verify_outputs()
    assert sorted(report["kind"]) == ["model", "nwb", "position", "results"]
    assert (report["status"] == "ok").all() and report["message"].isna().all()


def test_other_content_of_the_same_size_is_corrupted(lab):
    cat, selection = lab.cat, lab.selections[0]
    path, model = _decode(cat, selection)
    _flip_bytes(model)
    report = cat.verify_outputs().set_index("kind")
    assert report.loc["model", "status"] == "corrupted" and report.loc["results", "status"] == "ok"
    assert report.loc["model", "merge_id"] == selection.merge_id
    message = report.loc["model", "message"]
    assert str(model) in message and selection.merge_id in message and "trial0" in message
    assert "the registered size, but other content" in message and "decoding-assets verify --repair" in message
    assert cat.outputs()["file_status"].tolist() == ["corrupted"]
    assert cat.bad_outputs()["merge_id"].tolist() == [selection.merge_id]
    with pytest.raises(CatalogError, match="fitted model file .* is corrupted"):
        cat.verify_output(selection.merge_id)


def test_a_truncated_and_a_deleted_file(lab):
    cat = lab.cat
    (path, _), (_, model) = _decode(cat, lab.selections[0]), _decode(cat, lab.selections[1], seed=1)
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(100)
    model.unlink()
    report = cat.verify_outputs()
    bad = report[report["status"] != "ok"].set_index("path")
    assert bad.loc[str(path), "status"] == "truncated"
    assert f"truncated: 100 bytes, registered with {size}" in bad.loc[str(path), "message"]
    assert bad.loc[str(model), "status"] == "missing" and "is missing" in bad.loc[str(model), "message"]
    statuses = dict(zip(cat.outputs()["merge_id"], cat.outputs()["file_status"]))
    assert statuses == {lab.selections[0].merge_id: "truncated", lab.selections[1].merge_id: "missing"}
    assert sorted(cat.bad_outputs()["merge_id"]) == sorted(s.merge_id for s in lab.selections)


def test_a_changed_input_stops_the_decode_naming_every_bad_file(lab):
    cat, selection = lab.cat, lab.selections[0]
    with open(lab.nwb, "ab") as f:
        f.write(b"\0")
    _flip_bytes(lab.position)
    with pytest.raises(CatalogError) as error:
        cat.verify_decode_inputs(cat.fetch_decode_sources(selection.merge_id))
    message = str(error.value)
    assert message.startswith(f"Decode {selection.merge_id} cannot read its inputs:")
    assert f"The NWB file {lab.nwb} of session tiny.nwb is changed" in message
    assert "a changed recording needs a new file name" in message
    assert f"The position file {lab.position} of the position of session tiny.nwb, interval 00_r1" in message
    assert "is corrupted" in message and "Process the position of session tiny.nwb again" in message
    # a notebook reading the decode's position is stopped the same way
    with pytest.raises(CatalogError, match="position file .* is corrupted"):
        fetch_position_info(cat, selection.merge_id)


def test_fetch_results_never_returns_altered_values(lab):
    cat, selection = lab.cat, lab.selections[0]
    path, _ = _decode(cat, selection)
    expected = _results(0)["acausal_posterior"].values
    with fetch_results(cat, selection.merge_id) as results:
        np.testing.assert_array_equal(results["acausal_posterior"].values, expected)
    save_results(_results(7), path)  # overwritten by something else
    named = re.escape(f"decoding results file {path} of decoding output {selection.merge_id}")
    with pytest.raises(CatalogError, match=named):
        fetch_results(cat, selection.merge_id)
    # an overwrite that keeps the size and the mtime passes the fast check; the full one hashes
    _decode(cat, selection)
    path = Path(cat.fetch_output(selection.merge_id)["path"])
    stat = os.stat(path)
    _flip_bytes(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    with pytest.raises(CatalogError, match="is corrupted"):
        fetch_results(cat, selection.merge_id, verify="full")
    with pytest.raises(ValueError, match="verify must be one of"):
        fetch_results(cat, selection.merge_id, verify="never")


def test_a_bad_output_is_forgotten_and_wanted_again(lab):
    cat, (bad, good) = lab.cat, lab.selections
    path, model = _decode(cat, bad)
    _decode(cat, good, seed=1)
    with pytest.raises(CatalogError, match="nothing to repair"):
        cat.forget_bad_output(good.merge_id)
    model.unlink()
    assert cat.missing_outputs().empty
    cat.forget_bad_output(bad.merge_id)
    assert cat.outputs()["merge_id"].tolist() == [good.merge_id] and cat.lineage(bad.merge_id).empty
    assert cat.missing_outputs()["merge_id"].tolist() == [bad.merge_id]  # the selection stays, wanted
    assert cat.deleted_selections().empty  # a repair, not a user's deletion
    assert _written(cat)[str(path)] == "orphaned"
    assert cat.cleanup(dry_run=False, min_age_s=0).deleted == (path,)


# ---------------------------------------------------------------------- deleted outputs stay deleted


def test_a_deleted_output_stays_deleted_until_decoded_explicitly(lab):
    cat, (deleted, kept) = lab.cat, lab.selections
    path, model = _decode(cat, deleted)
    assert cat.missing_outputs()["merge_id"].tolist() == [kept.merge_id]
    cat.delete_output(deleted.merge_id)
    tombstones = cat.deleted_selections()
    assert tombstones["merge_id"].tolist() == [deleted.merge_id] and tombstones["deleted_by"].tolist() == [cat.user]
    assert tombstones["decoding_interval"].tolist() == ["trial0"]
    assert cat.missing_outputs()["merge_id"].tolist() == [kept.merge_id]  # not wanted again by itself
    assert (_written(cat)[str(path)], _written(cat)[str(model)]) == ("orphaned", "orphaned")
    _decode(cat, deleted, seed=2)  # a user decodes it explicitly
    assert cat.deleted_selections().empty
    assert cat.missing_outputs("tiny.nwb")["merge_id"].tolist() == [kept.merge_id]
    assert cat.missing_outputs("other.nwb").empty


# ---------------------------------------------------------------------- writers and cleanup

# a writer in its own process: asks the catalog for the paths of each selection's decode,
# optionally starts writing the first (atomic_write's temporary), says so, then waits to
# be killed
WRITER = """
import json, sys, time
from catalog import Catalog, DecodingSelection
from decoding_assets.files import atomic_write
location, output_dir, selections, partial = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4] == "1"
cat = Catalog(location, output_dir)
paths = [[str(p) for p in cat.output_paths(DecodingSelection(**s))] for s in selections]
if partial:
    with atomic_write(paths[0][0]) as tmp:
        tmp.write_bytes(b"half a result")
        print(json.dumps({"paths": paths, "tmp": str(tmp)}), flush=True)
        time.sleep(600)
print(json.dumps({"paths": paths}), flush=True)
time.sleep(600)
"""


class Writer:
    """A real writer process, killed with SIGKILL when asked (and at the latest when the
    test ends)."""

    def __init__(self, cat: Catalog, selections: list[DecodingSelection], partial: bool = False):
        args = [cat.location, str(cat.output_dir), json.dumps([dataclasses.asdict(s) for s in selections]),
                "1" if partial else "0"]  # fmt: skip
        self.process = subprocess.Popen([sys.executable, "-c", WRITER, *args], stdout=subprocess.PIPE, text=True)
        self.paths: list[tuple[Path, Path]] = []
        self.tmp: Path | None = None

    def wait_ready(self) -> None:
        """Until it has its paths (and, partial, is writing)."""
        said = json.loads(self.process.stdout.readline() or "{}")
        if not said:
            self.kill()
            raise AssertionError(f"the writer process failed (exit status {self.process.returncode})")
        self.paths = [tuple(Path(p) for p in pair) for pair in said["paths"]]
        self.tmp = Path(said["tmp"]) if "tmp" in said else None

    @property
    def pid(self) -> int:
        return self.process.pid

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait()
        self.process.stdout.close()


@pytest.fixture
def writers():
    """Start writer processes (all at once), each for a list of selections; they are
    killed when the test ends."""
    started = []

    def start(cat: Catalog, batches: list[list[DecodingSelection]], partial: bool = False) -> list[Writer]:
        new = [Writer(cat, batch, partial) for batch in batches]
        started.extend(new)
        for writer in new:
            writer.wait_ready()
        return new

    yield start
    for writer in started:
        writer.kill()


def test_a_dead_writers_intent_and_temporary_are_reclaimed(lab, writers):
    cat, selection = lab.cat, lab.selections[0]
    (writer,) = writers(cat, [[selection]], partial=True)
    (path, model), tmp = writer.paths[0], writer.tmp
    assert tmp.parent == path.parent and tmp.name.startswith(f".{path.stem}.") and tmp.is_file()
    someone_elses = path.parent / ".someone_elses.abcdefgh.tmp"
    someone_elses.write_bytes(b"not ours")
    # alive: spared, and said why
    report = cat.cleanup(dry_run=False, min_age_s=0)
    assert report.deleted == () and report.errors == ()
    assert sorted(report.spared) == [(p, f"a live writer ({HERE}:{writer.pid})") for p in sorted([path, model])]
    assert tmp.is_file()
    writer.kill()
    assert cat.cleanup(dry_run=True, min_age_s=0).deleted == (tmp,)
    assert cat.cleanup(dry_run=True).spared == ((model, "younger than min_age_s"), (path, "younger than min_age_s"))
    report = cat.cleanup(dry_run=False, min_age_s=0)
    assert report.deleted == (tmp,) and report.spared == () and report.errors == ()
    assert not tmp.exists() and someone_elses.exists()
    assert str(path) not in _written(cat) and str(model) not in _written(cat)
    # the writer was taken for dead: had it been alive after all, its registration fails
    _write_output(path, model)
    with pytest.raises(CatalogError, match=f"Cannot register decoding output {selection.merge_id} from .*no write"):
        _register(cat, selection.merge_id, path, model)
    assert cat.outputs().empty


def test_a_live_writer_is_spared_and_a_failed_write_given_up(lab):
    cat, (first, second) = lab.cat, lab.selections
    path, model = cat.output_paths(first)
    report = cat.cleanup(dry_run=False, min_age_s=0)
    assert sorted(report.spared) == [(p, f"a live writer ({HERE}:{os.getpid()})") for p in sorted([path, model])]
    with cat.writing([path, model], run_id="run-1") as paths:
        assert paths == [path, model]
        _write_output(path, model)
        _register(cat, first.merge_id, path, model)
    assert (_written(cat)[str(path)], _written(cat)[str(model)]) == ("registered", "registered")
    assert cat.query("SELECT DISTINCT run_id FROM written_files WHERE path IN (?, ?)", [str(path), str(model)])[
        "run_id"
    ].tolist() == ["run-1"]
    # a write that fails gives its paths up: cleanup takes what it left at once
    path, model = cat.output_paths(second)
    with pytest.raises(RuntimeError, match="out of memory"):
        with cat.writing([path, model]):
            path.write_bytes(b"half")
            raise RuntimeError("out of memory")
    assert (_written(cat)[str(path)], _written(cat)[str(model)]) == ("orphaned", "orphaned")
    assert cat.cleanup(dry_run=False, min_age_s=0).deleted == (path,)
    with pytest.raises(CatalogError, match="Cannot write .*no write intent"):
        with cat.writing([path]):
            pass
    with pytest.raises(CatalogError, match="Cannot renew the heartbeat of .*no write intent"):
        cat.heartbeat([path])


def test_the_heartbeat_is_kept_fresh_while_writing(lab):
    cat = lab.cat
    path, model = cat.output_paths(lab.selections[0])

    def heartbeat():
        return cat.query("SELECT heartbeat_at FROM written_files WHERE path = ?", [str(path)])["heartbeat_at"][0]

    first = heartbeat()
    with cat.writing([path, model], every_s=0.05):
        changed = threading.Event()
        for _ in range(600):  # until a beat lands (never long): the test waits on an event, not a clock
            if heartbeat() > first:
                changed.set()
                break
            changed.wait(0.05)
        assert changed.is_set()


def test_cleanup_racing_registrations_never_leaves_a_row_without_its_file(new_catalog, tmp_path, tiny_nwb, writers):
    """Writers that cleanup takes for dead register while it runs: each registration
    either wins (its files stay) or loses and raises; no row ever points at a missing
    file. Each round decodes the same selections again, so cleanup also races the
    replaced outputs' files."""
    n_rounds, n_decodes = 3, 6
    lab = _lab(new_catalog(), tmp_path, tiny_nwb, n_trials=n_decodes)
    cat, outcomes = lab.cat, []
    # one writer per round, all alive (spared) until their round kills them
    for writer in writers(cat, [lab.selections] * n_rounds):
        writer.kill()
        for (path, model), seed in zip(writer.paths, range(n_decodes)):
            _write_output(path, model, seed)
        start = threading.Barrier(n_decodes + 1)
        results, reports = {}, []

        def register(k, selection, path, model):
            start.wait()
            # registrations reach their transaction after different amounts of work (k
            # reads of the catalog), so some come before cleanup's and some after
            for _ in range(k):
                cat.query("SELECT count(*) FROM written_files")
            try:
                _register(cat, selection.merge_id, path, model)
                results[selection.merge_id] = "won"
            except CatalogError as error:
                lost = "no write intent" in str(error) or "there is no file" in str(error)
                results[selection.merge_id] = "lost" if lost else error

        def clean():
            start.wait()
            reports.append(cat.cleanup(dry_run=False, min_age_s=0))

        threads = [threading.Thread(target=register, args=(k, s, *paths))
                   for k, (s, paths) in enumerate(zip(lab.selections, writer.paths))]  # fmt: skip
        threads.append(threading.Thread(target=clean))
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert set(map(str, results.values())) <= {"won", "lost"} and len(results) == n_decodes
        assert len(reports) == 1 and reports[0].errors == ()
        registered = dict(zip(cat.outputs()["merge_id"], cat.outputs()["path"]))
        for selection, (path, _) in zip(lab.selections, writer.paths):
            assert (registered.get(selection.merge_id) == str(path)) == (results[selection.merge_id] == "won")
        _no_row_points_at_a_missing_file(cat)
        outcomes += results.values()
    assert all(_written(cat)[p] == "registered" for p in cat.outputs()["path"])


def test_a_name_too_long_for_a_file_is_refused_before_anything_is_written(lab):
    cat = lab.cat
    before = _written(cat)
    with pytest.raises(CatalogError) as error:
        cat.position_output_path("tiny.nwb", "a" * 250, "default_decoding")
    message = str(error.value)
    assert f"interval_list_name '{'a' * 250}' (250 bytes)" in message and "trodes_pos_params_name" in message
    assert "over the limit of 255 bytes per name" in message
    # a name that fits while its temporary (".<stem>.XXXXXXXX.tmp") would not is refused too
    fits = "b" * (255 - len("__default_decoding.0123456789ab.nc"))
    with pytest.raises(CatalogError, match="with the temporary name a file is written under"):
        cat.position_output_path("tiny.nwb", fits, "default_decoding")
    assert _written(cat) == before
    assert sorted(p.name for p in (cat.output_dir / "position" / "tiny.nwb").iterdir()) == [lab.position.name]
    report = cat.cleanup(dry_run=False, min_age_s=0)
    assert report.errors == () and report.deleted == ()


# ---------------------------------------------------------------------- upgrading


def _schema_2_catalog(place, folder: Path, nwb: Path) -> dict[str, Path]:
    """A catalog as schema version 2 left it: its tables (tests/data/catalog_schema_2.sql)
    holding a session, a position file, a decode whose files were written, an orphan
    and a path an older version recorded although no file can have its name."""
    ddl = [s for s in (DATA / "catalog_schema_2.sql").read_text().split(";\n") if "CREATE TABLE" in s]
    db = Database(place.location)
    db.write_schema(lambda con: [con.execute(statement) for statement in ddl])
    out = place.output_dir
    files = {"nwb": Path(shutil.copy(nwb, folder / "tiny.nwb")), "position": out / "position" / "tiny.nwb" / "p.nc",
             "results": out / "decoding" / "tiny.nwb" / "d.nc", "model": out / "decoding" / "tiny.nwb" / "d.model.nc",
             "orphan": out / "decoding" / "tiny.nwb" / "old.nc",
             "too_long": out / "decoding" / "tiny.nwb" / ("x" * 300 + ".nc")}  # fmt: skip
    for key in ("position", "results", "orphan"):
        files[key].parent.mkdir(parents=True, exist_ok=True)
    _position_frame().to_xarray().to_netcdf(files["position"], engine="h5netcdf")
    _write_output(files["results"], files["model"])
    files["orphan"].write_bytes(b"an old result")
    selection = DecodingSelection("tiny.nwb", "all_tetrodes", "run_epochs", "contfrag", "00_r1", "00_r1")
    nwb_hash, position_hash, results_hash = (file_checksum(files[k]) for k in ("nwb", "position", "results"))

    def fill(con):
        for sql, values in [
            ("INSERT INTO catalog_info VALUES (?, ?)", ["schema_version", "2"]),
            ("INSERT INTO sessions (nwb_file_name, nwb_path, content_hash, created_by, registered_at) "
             "VALUES (?, ?, ?, ?, current_timestamp)",
             ["tiny.nwb", str(files["nwb"]), nwb_hash, "me@laptop"]),
            ("INSERT INTO interval_lists VALUES (?, ?, ?, ?)", ["tiny.nwb", "00_r1", [[0.0, 10.0]], "epoch"]),
            ("INSERT INTO electrode_groups VALUES (?, ?, ?, ?)", ["tiny.nwb", "tetrode_00", 4, "CA1"]),
            ("INSERT INTO waveform_features_params (features_param_name, params) VALUES (?, ?)", ["amplitude", "{}"]),
            ("INSERT INTO waveform_features VALUES (?, ?, ?, ?, ?, ?, ?)",
             ["tiny.nwb", "tetrode_00", "amplitude", 10, 4, "nwb", "abc"]),
            ("INSERT INTO waveform_features_groups (nwb_file_name, waveform_features_group_name, created_at) "
             "VALUES (?, ?, current_timestamp)",
             ["tiny.nwb", "all_tetrodes"]),
            ("INSERT INTO waveform_features_group_members VALUES (?, ?, ?, ?)",
             ["tiny.nwb", "all_tetrodes", "tetrode_00", "amplitude"]),
            ("INSERT INTO position_params (trodes_pos_params_name, params) VALUES (?, ?)", ["default_decoding", "{}"]),
            ("INSERT INTO position_outputs (nwb_file_name, interval_list_name, trodes_pos_params_name, path, "
             "n_samples, checksum, created_at) VALUES (?, ?, ?, ?, ?, ?, current_timestamp)",
             ["tiny.nwb", "00_r1", "default_decoding", str(files["position"]), 50, position_hash]),
            ("INSERT INTO position_groups (nwb_file_name, position_group_name, upsample_rate, position_variables, "
             "created_at) VALUES (?, ?, ?, ?, current_timestamp)",
             ["tiny.nwb", "run_epochs", 10.0, ["position_x", "position_y"]]),
            ("INSERT INTO position_group_members VALUES (?, ?, ?, ?)",
             ["tiny.nwb", "run_epochs", "00_r1", "default_decoding"]),
            ("INSERT INTO decoding_params (decoding_param_name, params, created_at) VALUES (?, ?, current_timestamp)",
             ["contfrag", "{}"]),
            ("INSERT INTO decoding_selections VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
             [*dataclasses.astuple(selection), selection.merge_id, "me@laptop"]),
            ("INSERT INTO decoding_outputs (merge_id, path, model_path, size_bytes, checksum, code_version, "
             "input_versions, n_time_bins, run_seconds, device, created_at) "
             "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, current_timestamp)",
             [selection.merge_id, str(files["results"]), str(files["model"]), files["results"].stat().st_size,
              results_hash, "0.1.0", "{}", 6, 0.1, "cpu"]),
            *[("INSERT INTO written_files (path, kind, written_at) VALUES (?, ?, current_timestamp)",
               [str(files[k]), kind])
              for k, kind in [("position", "position"), ("results", "decoding"), ("model", "decoding"),
                              ("orphan", "decoding"), ("too_long", "decoding")]],
        ]:  # fmt: skip
            con.execute(sql, values)

    db.write(fill)
    return {**files, "merge_id": selection.merge_id}


def test_a_schema_2_catalog_is_upgraded(new_catalog, tmp_path, tiny_nwb):
    place = new_catalog()
    files = _schema_2_catalog(place, tmp_path, tiny_nwb)
    cat = Catalog(place.location, place.output_dir)
    assert cat.query("SELECT value FROM catalog_info WHERE key = 'schema_version'")["value"].tolist() == [str(SCHEMA_VERSION)]
    written = _written(cat)
    assert {k: written[str(files[k])] for k in ("position", "results", "model", "orphan", "too_long")} == {
        "position": "registered", "results": "registered", "model": "registered", "orphan": "orphaned",
        "too_long": "orphaned"}  # fmt: skip
    assert cat.outputs()["file_status"].tolist() == ["unchecked"]
    assert cat.outputs()["model_checksum"].isna().all() and cat.sessions()["size_bytes"].isna().all()
    assert cat.outputs()[["median_hpd_area", "hpd_mass"]].isna().all().all()  # not analysed until decoded again
    assert cat.state_fractions().empty
    # the first check records what the upgrade could not know
    report = cat.verify_outputs()
    assert report.set_index("kind")["status"].to_dict() == dict.fromkeys(["nwb", "position", "results", "model"], "ok")
    output = cat.fetch_output(files["merge_id"])
    assert output["model_checksum"] == file_checksum(files["model"]) and output["file_status"] == "ok"
    assert output["modified_ns"] == os.stat(files["results"]).st_mtime_ns
    assert cat.fetch_session("tiny.nwb")["size_bytes"] == files["nwb"].stat().st_size
    # cleanup takes the orphan, spares what outputs reference, and reports the name no file can have
    report = cat.cleanup(dry_run=False, min_age_s=0)
    assert report.deleted == (files["orphan"],) and not files["orphan"].exists()
    ((path, message),) = report.errors
    assert path == files["too_long"] and message.startswith("name too long for this file system")
    assert all(files[k].exists() for k in ("position", "results", "model"))
    assert cat.cleanup(dry_run=False, min_age_s=0) == CleanupReport(dry_run=False)
    # and it is a catalog like any other: decoding the selection again replaces the output
    path, model = _decode(cat, cat.fetch_selection(files["merge_id"]), seed=3)
    assert _written(cat)[str(files["results"])] == "orphaned"
    with fetch_results(cat, files["merge_id"]) as results:
        np.testing.assert_array_equal(results["acausal_posterior"].values, _results(3)["acausal_posterior"].values)

"""Faults caused on purpose, with real processes and files: a decode killed with SIGKILL
while it writes its results and while it waits to register them, an NWB file changed
after it was registered, outputs overwritten, truncated and deleted, a full disk, and
cleanup running beside a decode. Each leaves the catalog pointing only at intact files,
and a rerun (or `decoding-assets verify --repair`) brings the outputs back."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import duckdb
import numpy as np
import pandas as pd
import pytest
import yaml

import decoding_assets
from catalog import Catalog, CatalogError, CleanupReport
from decoding_assets import pipeline
from decoding_assets.fetch import fetch_results
from decoding_assets.nwb import write_demo_session

REPO = Path(__file__).resolve().parent.parent
INTERVAL = "epoch0_block1_trial1"
INTERVALS = ("epoch0_block1_trial1", "epoch0_block1_trial2", "epoch2_block1_trial1")
WITHIN_S = 300  # generous: a worker imports JAX and decodes on a busy 2-core machine
POLL_S = 0.005  # a decode's temporary lives a second or two: look often
# a temporary atomic_write makes beside the file it becomes: .<stem>.<8 random>.tmp
TEMPORARY = re.compile(r"\.(?P<stem>.+)\.[0-9a-f]{8}\.tmp")


@dataclass(frozen=True)
class TinySession:
    """A small session registered and processed in a catalog that each test copies."""

    folder: Path
    nwb: Path
    config: Path  # one decoding configuration, on a coarse grid so a decode takes seconds
    catalog: Path
    jax_cache: Path  # shared by the worker processes: JAX compiles the decoder once

    @property
    def name(self) -> str:
        return self.nwb.name


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> TinySession:
    """Two tetrodes, three trials of 20 s, no raw recording: registered and processed once."""
    folder = tmp_path_factory.mktemp("faults")
    nwb = write_demo_session(
        folder / "tiny.nwb", n_tetrodes=2, epoch_durations=(40.0, 5.0, 20.0), trial_duration=20.0, raw_tetrodes=0
    )
    config = yaml.safe_load((Path(decoding_assets.__file__).parent / "decoding_configs.yaml").read_text())
    config["decoding_params"] = {"coarse": {"place_bin_size": 10.0, "sampling_frequency": 100.0}}
    config["decodings"] = {"contfrag_run": {**config["decodings"]["contfrag_run"], "decoding_param_name": "coarse"}}
    config_path = folder / "faults.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    config = pipeline.load_config(config_path)
    cat = Catalog(folder / "catalog.duckdb", folder / "outputs")
    pipeline.register_session(cat, nwb, config)
    pipeline.ensure_parameter_sets(cat, config)
    pipeline.process_session_position(cat, nwb.name, "default_decoding")
    pipeline.ensure_features_groups(cat, nwb.name, config)
    pipeline.ensure_position_groups(cat, nwb.name, config)
    return TinySession(folder, nwb, config_path, Path(cat.location), folder / "jax_cache")


@pytest.fixture
def cat(tiny, tmp_path) -> Catalog:
    """A copy of the tiny session's catalog, writing its decodes to an outputs folder of its
    own (the position files stay where the session's catalog wrote them, read only)."""
    shutil.copy(tiny.catalog, tmp_path / "catalog.duckdb")
    return Catalog(tmp_path / "catalog.duckdb", tmp_path / "outputs")


@pytest.fixture
def start_worker(tiny, cat) -> Callable[..., subprocess.Popen]:
    """Starts the worker on this test's catalog, its output going to a log; a worker still
    running when the test ends is killed."""
    started: list[subprocess.Popen] = []

    def start(log: Path, *intervals: str) -> subprocess.Popen:
        with log.open("w") as out:
            started.append(subprocess.Popen(_worker_command(tiny, cat, *intervals), cwd=REPO, stdout=out,
                                            stderr=subprocess.STDOUT))  # fmt: skip
        return started[-1]

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=60)


# ---------------------------------------------------------------------- helpers


def _decoding(tiny: TinySession) -> pipeline.DecodingConfig:
    return pipeline.load_config(tiny.config)["decodings"][0]


def _worker_command(tiny: TinySession, cat: Catalog, *intervals: str) -> list[str]:
    return [sys.executable, "-m", "tests.fault_workers", cat.location, str(cat.output_dir), str(tiny.config),
            tiny.name, str(tiny.jax_cache), *intervals]  # fmt: skip


def _run(tiny: TinySession, cat: Catalog, *intervals: str) -> dict:
    """A worker run to its end: what it printed (decoded intervals and their paths)."""
    done = subprocess.run(_worker_command(tiny, cat, *intervals), cwd=REPO, capture_output=True, text=True,
                          timeout=WITHIN_S)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def _wait_for(process: subprocess.Popen, log: Path, what: str, found: Callable[[], object], every_s: float = POLL_S):
    """Poll ``found()`` until it returns something; fail if the worker ends first."""
    deadline = time.monotonic() + WITHIN_S
    while time.monotonic() < deadline:
        if value := found():
            return value
        if process.poll() is not None:
            pytest.fail(f"The worker ended (status {process.returncode}) before {what}:\n{log.read_text()}")
        time.sleep(every_s)
    pytest.fail(f"No {what} within {WITHIN_S} s:\n{log.read_text()}")


def _kill(process: subprocess.Popen) -> None:
    os.kill(process.pid, signal.SIGKILL)
    assert process.wait(timeout=60) == -signal.SIGKILL


def _listing(folder: Path) -> tuple[list[Path], list[Path]]:
    """(temporaries, final files) in a folder, each sorted; none while it does not exist."""
    names = sorted(os.listdir(folder)) if folder.is_dir() else []
    temporaries = [folder / n for n in names if TEMPORARY.fullmatch(n)]
    return temporaries, [folder / n for n in names if not n.startswith(".")]


def _decoding_folder(cat: Catalog, tiny: TinySession) -> Path:
    return cat.output_dir / "decoding" / tiny.name


def _written(cat: Catalog) -> pd.DataFrame:
    return cat.query("SELECT path, kind, state, pid, process_start FROM written_files ORDER BY path")


def _intents(cat: Catalog) -> pd.DataFrame:
    return cat.query("SELECT path, state, pid FROM written_files WHERE kind = 'decoding' ORDER BY path")


def _all_ok(cat: Catalog) -> pd.DataFrame:
    checked = cat.verify_outputs()
    assert (checked["status"] == "ok").all(), checked[checked["status"] != "ok"]["message"].tolist()
    return checked


def _assert_killed_run_left_nothing_registered(cat: Catalog, tiny: TinySession, pid: int) -> list[Path]:
    """After a killed decode: no output, every registered file intact, the run's two write
    intents still there with its pid. Returns the paths they were for."""
    assert cat.outputs(tiny.name).empty
    assert not set(_all_ok(cat)["kind"]) & {"results", "model"}
    intents = _intents(cat)
    assert intents["state"].tolist() == ["writing", "writing"] and set(intents["pid"]) == {pid}
    return [Path(p) for p in intents["path"]]


def _assert_rerun_registers(cat: Catalog, tiny: TinySession, killed: list[Path]) -> list[Path]:
    """The same worker again: the interval is decoded and registered under new names, and
    every registered file is intact. Returns the registered paths."""
    printed = _run(tiny, cat, INTERVAL)
    (output,) = cat.outputs(tiny.name).itertuples()
    assert (output.decoding_interval, output.path) == (INTERVAL, printed["decoded"][INTERVAL])
    registered = [Path(output.path), Path(output.model_path)]
    assert not set(registered) & set(killed)
    _all_ok(cat)
    return registered


def _assert_cleanup_reclaims(cat: Catalog, left: list[Path], registered: list[Path]) -> None:
    """Cleanup deletes what the killed run left (``left``) and forgets its intents; the
    registered output stays, intact."""
    report = cat.cleanup(dry_run=False, min_age_s=0)
    assert sorted(report.deleted) == sorted(left) and report.errors == () and report.spared == ()
    assert not any(p.exists() for p in left)
    assert set(_intents(cat)["path"]) == {str(p) for p in registered}
    assert set(_intents(cat)["state"]) == {"registered"}
    assert all(p.is_file() for p in registered)
    _all_ok(cat)
    assert cat.cleanup(dry_run=False, min_age_s=0) == CleanupReport(dry_run=False)


# ---------------------------------------------------------------------- 1. killed while writing


def test_a_decode_killed_while_writing_its_results_registers_nothing(tiny, cat, start_worker, tmp_path):
    folder, log = _decoding_folder(cat, tiny), tmp_path / "worker.log"
    process = start_worker(log, INTERVAL)
    (temporary,) = _wait_for(process, log, "a temporary file in the outputs folder", lambda: _listing(folder)[0])
    _kill(process)

    killed = _assert_killed_run_left_nothing_registered(cat, tiny, process.pid)
    (results,) = [p for p in killed if not p.name.endswith(".model.nc")]
    # killed mid-write: a partial temporary of the results file, no final file
    assert TEMPORARY.fullmatch(temporary.name)["stem"] == results.stem and temporary.is_file()
    assert _listing(folder) == ([temporary], [])

    registered = _assert_rerun_registers(cat, tiny, killed)
    _assert_cleanup_reclaims(cat, [temporary], registered)


# ---------------------------------------------------------------------- 2. killed while registering


def _hold(location: str) -> duckdb.DuckDBPyConnection | None:
    """The catalog file, held (None while another process holds it: the worker's
    heartbeat, say)."""
    try:
        return duckdb.connect(location)
    except duckdb.IOException as error:
        if "could not set lock" in str(error).lower():
            return None
        raise


def _waits_to_register(process: subprocess.Popen, log: Path) -> bool:
    """Whether the worker's main thread is waiting for the catalog file inside
    ``register_output``: the stacks it writes on SIGUSR1 say where each thread is."""
    os.kill(process.pid, signal.SIGUSR1)
    threads = re.split(r"\n(?=(?:Current thread|Thread) 0x)", log.read_text())
    return any(" in register_output" in t and " in _open_file" in t for t in threads)


def test_a_decode_killed_while_registering_its_output_registers_nothing(tiny, cat, start_worker, tmp_path):
    folder, log = _decoding_folder(cat, tiny), tmp_path / "worker.log"
    process = start_worker(log, INTERVAL)
    _wait_for(process, log, "a temporary file in the outputs folder", lambda: _listing(folder)[0])
    # DuckDB lets one process hold the file: from here the worker writes its files, then
    # waits for the catalog (retrying) to register them
    holder = _wait_for(process, log, "the catalog file free", lambda: _hold(cat.location))
    try:
        _wait_for(process, log, "the results and model files", lambda: len(_listing(folder)[1]) == 2)
        _wait_for(
            process, log, "the worker waiting to register its output", lambda: _waits_to_register(process, log),
            every_s=0.2,
        )  # fmt: skip
        _kill(process)
    finally:
        holder.close()

    killed = _assert_killed_run_left_nothing_registered(cat, tiny, process.pid)
    # both files were complete: only the registration was lost
    assert _listing(folder) == ([], killed)

    registered = _assert_rerun_registers(cat, tiny, killed)
    _assert_cleanup_reclaims(cat, killed, registered)


# ---------------------------------------------------------------------- 3. a changed NWB file


def _refused(cat: Catalog, merge_id: str) -> str:
    with pytest.raises(CatalogError) as refused:
        pipeline.decode(cat, merge_id)
    assert cat.outputs().empty and _intents(cat).empty
    return str(refused.value)


def test_a_changed_nwb_file_stops_the_decode_and_a_touched_one_is_accepted(tiny, cat, tmp_path):
    nwb = Path(shutil.copy(tiny.nwb, tmp_path / tiny.name))
    assert pipeline.register_session(cat, nwb) == tiny.name  # moved: registered again from its new place
    merge_id = pipeline.select(cat, tiny.name, INTERVAL, _decoding(tiny))
    original = nwb.read_bytes()

    with nwb.open("ab") as appended:
        appended.write(b"\0" * 64)
    message, size = _refused(cat, merge_id), len(original)
    changed = f"The NWB file {nwb} of session {tiny.name} is changed: {size + 64} bytes, registered with {size}."
    assert changed in message and "register the session again" in message and merge_id in message
    # registering the changed file under the same name is refused too, naming it
    refused = re.escape(f"Session {tiny.name} is already registered (from {nwb}) with different content")
    with pytest.raises(CatalogError, match=refused):
        pipeline.register_session(cat, nwb)

    middle = len(original) // 2
    nwb.write_bytes(original[:middle] + bytes(255 - b for b in original[middle : middle + 8]) + original[middle + 8 :])
    message = _refused(cat, merge_id)
    assert f"The NWB file {nwb} of session {tiny.name} is corrupted: the registered size, but other content" in message
    assert "register the session again" in message

    nwb.write_bytes(original)
    touched_ns = os.stat(nwb).st_mtime_ns + 3_000_000_000
    os.utime(nwb, ns=(touched_ns, touched_ns))
    assert pipeline.register_session(cat, nwb) == tiny.name
    session = cat.fetch_session(tiny.name)
    assert (session["nwb_path"], session["modified_ns"], session["size_bytes"]) == (str(nwb), touched_ns, len(original))
    sources = cat.verify_decode_inputs(cat.fetch_decode_sources(merge_id))
    assert sources.nwb_modified_ns == touched_ns


# ---------------------------------------------------------------------- 4. bad outputs, verify and repair


def _home(folder: Path, tiny: TinySession) -> Path:
    """A home for `decoding-assets` whose JAX cache is the workers' (the decoder is compiled)."""
    folder.mkdir()
    (folder / "jax_cache").symlink_to(tiny.jax_cache)
    return folder


def _cli(home: Path, cat: Catalog, tiny: TinySession, *args: str) -> subprocess.CompletedProcess:
    """`decoding-assets --home HOME ARGS` in its own process, on this test's catalog."""
    environ = {
        **{k: v for k, v in os.environ.items() if not k.startswith("DECODING_ASSETS_") and k != "DAGSTER_HOME"},
        "DECODING_ASSETS_CATALOG": cat.location,
        "DECODING_ASSETS_OUTPUTS": str(cat.output_dir),
        "DECODING_ASSETS_CONFIG": str(tiny.config),
    }
    return subprocess.run([sys.executable, "-m", "decoding_assets.cli", "--home", str(home), *args], cwd=home,
                          env=environ, capture_output=True, text=True, timeout=WITHIN_S)  # fmt: skip


def _overwrite(path: Path) -> None:
    """The same size, other bytes."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] + bytes(255 - b for b in data[len(data) // 2 :]))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def test_bad_outputs_are_found_by_verify_and_decoded_again_by_repair(tiny, cat, tmp_path):
    _run(tiny, cat)
    before = cat.outputs(tiny.name).set_index("decoding_interval")
    assert sorted(before.index) == sorted(INTERVALS)
    faults = {INTERVALS[0]: ("corrupted", _overwrite), INTERVALS[1]: ("truncated", _truncate),
              INTERVALS[2]: ("missing", Path.unlink)}  # fmt: skip
    for interval, (_, fault) in faults.items():
        fault(Path(before.loc[interval, "path"]))
    home = _home(tmp_path / "home", tiny)

    found = _cli(home, cat, tiny, "verify")
    assert found.returncode == 1, found.stdout + found.stderr
    lines = found.stdout.splitlines()
    assert any(re.match(r"Checked \d+ file\(s\) .*: 3 bad\.", line) for line in lines), found.stdout
    for interval, (status, _) in faults.items():
        merge_id, path = before.loc[interval, "merge_id"], before.loc[interval, "path"]
        assert any(
            line.startswith(f"  {status}: The decoding results file {path} of decoding output {merge_id} ")
            for line in lines
        ), found.stdout

    repaired = _cli(home, cat, tiny, "verify", "--repair")
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert "After the repair: 0 bad file(s)." in repaired.stdout
    after = cat.outputs(tiny.name).set_index("decoding_interval")
    assert sorted(after.index) == sorted(INTERVALS) and (after["file_status"] == "ok").all()
    for interval in INTERVALS:
        merge_id = before.loc[interval, "merge_id"]
        assert after.loc[interval, "merge_id"] == merge_id
        assert after.loc[interval, "path"] != before.loc[interval, "path"]
        with fetch_results(cat, merge_id) as results:
            assert results.attrs["merge_id"] == merge_id and results.sizes["time"] == after.loc[interval, "n_time_bins"]
            states = results["acausal_state_probabilities"].values
            assert np.isfinite(states).all() and np.allclose(states.sum(axis=1), 1.0, atol=1e-3)
    _all_ok(cat)

    again = _cli(home, cat, tiny, "verify")
    assert again.returncode == 0, again.stdout + again.stderr
    assert re.search(r"Checked \d+ file\(s\) .*: 0 bad\.", again.stdout)


# ---------------------------------------------------------------------- 5. a full disk


@dataclass(frozen=True)
class FullDisk:
    """What a decode on a nearly full outputs folder did, and what the catalog held
    before it, after it and after a cleanup."""

    folder: Path
    returncode: int
    printed: dict
    outputs_before: pd.DataFrame
    outputs_after: pd.DataFrame
    written_before: pd.DataFrame  # every write intent (written_files)
    written_after: pd.DataFrame
    files_after: tuple[list[Path], list[Path]]
    cleanup: CleanupReport
    files_cleaned: tuple[list[Path], list[Path]]


FREE_BYTES = 1 << 20  # less than a results file of the tiny session takes (about 2 MB)


def _mount_tmpfs(folder: Path, size: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs as the outputs folder needs root (CI runs the tests as root)")
    folder.mkdir(parents=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                             capture_output=True, text=True)  # fmt: skip
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (a container without CAP_SYS_ADMIN?): {mounted.stderr.strip()}")


def _fill(folder: Path, leave_bytes: int) -> None:
    stat = os.statvfs(folder)
    (folder / "filler").write_bytes(b"\0" * (stat.f_bavail * stat.f_frsize - leave_bytes))


@pytest.fixture(scope="module")
def full_disk(tiny, tmp_path_factory) -> FullDisk:
    """One decode on an outputs folder with 1 MiB left, in a worker process (a failed HDF5
    write can take the process down as it exits)."""
    place = tmp_path_factory.mktemp("full_disk")
    shutil.copy(tiny.catalog, place / "catalog.duckdb")
    cat = Catalog(place / "catalog.duckdb", place / "outputs")
    _mount_tmpfs(cat.output_dir, "4m")
    try:
        _fill(cat.output_dir, FREE_BYTES)
        outputs_before, written_before = cat.outputs(), _written(cat)
        folder = _decoding_folder(cat, tiny)
        done = subprocess.run(_worker_command(tiny, cat, INTERVAL), cwd=REPO, capture_output=True, text=True,
                              timeout=WITHIN_S)  # fmt: skip
        assert done.stdout.strip(), done.stderr
        printed = json.loads(done.stdout.splitlines()[-1])
        outputs_after, written_after, files_after = cat.outputs(), _written(cat), _listing(folder)
        report = cat.cleanup(dry_run=False, min_age_s=0)
        return FullDisk(folder, done.returncode, printed, outputs_before, outputs_after, written_before,
                        written_after, files_after, report, _listing(folder))  # fmt: skip
    finally:
        subprocess.run(["umount", str(cat.output_dir)], check=True)


def test_a_full_disk_fails_the_decode_clearly_and_leaves_the_catalog_as_it_was(full_disk):
    assert full_disk.printed["decoded"] == {}
    message = full_disk.printed["failed"][INTERVAL]
    assert "No space left on device" in message and str(full_disk.folder) in message
    assert full_disk.returncode != 0
    # no output registered, no final file; the catalog as it was but for the run's two
    # intents, given up for cleanup
    assert full_disk.outputs_after.equals(full_disk.outputs_before) and full_disk.outputs_after.empty
    before, after = full_disk.written_before, full_disk.written_after
    new = after[~after["path"].isin(before["path"])]
    assert after[after["path"].isin(before["path"])].reset_index(drop=True).equals(before)
    assert new["state"].tolist() == ["orphaned", "orphaned"] and set(new["kind"]) == {"decoding"}
    assert all(Path(p).parent == full_disk.folder for p in new["path"])
    assert full_disk.files_after[1] == []
    assert set(full_disk.cleanup.deleted) == set(full_disk.files_after[0]) and full_disk.cleanup.errors == ()
    assert full_disk.files_cleaned == ([], [])


def test_a_decode_failed_by_a_full_disk_ends_its_process_cleanly(full_disk):
    # the decode refuses to write what the folder has no room for: HDF5 left with a
    # write that failed for want of space can crash the process at exit (h5py#914)
    assert full_disk.returncode == 1


# ---------------------------------------------------------------------- 6. cleanup beside a decode


def test_cleanup_running_beside_a_decode_never_takes_its_files(tiny, cat, start_worker, tmp_path):
    # an output given up earlier: what cleanup is there to delete meanwhile
    abandoned = cat.output_paths(pipeline.selection_for(cat, tiny.name, INTERVALS[1], _decoding(tiny)))
    with pytest.raises(RuntimeError, match="abandoned"), cat.writing(abandoned):
        abandoned[0].write_bytes(b"half a decode")
        raise RuntimeError("abandoned")

    log = tmp_path / "worker.log"
    process = start_worker(log, INTERVAL)
    reports = []
    while process.poll() is None:
        reports.append(cat.cleanup(dry_run=False, min_age_s=0))
        time.sleep(0.25)  # the worker reaches the catalog file between two cleanups
    assert process.returncode == 0, log.read_text()

    (output,) = cat.outputs(tiny.name).itertuples()
    assert output.decoding_interval == INTERVAL
    _all_ok(cat)
    assert [p for r in reports for p in r.deleted] == [abandoned[0]]
    assert all(r.errors == () for r in reports)
    live = {(str(path), reason) for r in reports for path, reason in r.spared}
    assert {(output.path, f"a live writer ({socket.gethostname()}:{process.pid})")} <= live, live

"""`decoding-assets` as a user runs it: in its own process, from its own folder."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import dagster as dg
import psutil
import pytest
import xarray as xr

from catalog import Catalog, DecodingSelection
from decoding_assets.defs.decoding import GPU_POOL
from decoding_assets.defs.resources import home
from decoding_assets.files import atomic_write

PLACE_VARIABLES = ("DECODING_ASSETS_HOME", "DECODING_ASSETS_CATALOG", "DECODING_ASSETS_OUTPUTS", "DAGSTER_HOME")


def _cli(args: list[str], cwd: Path, **environ: str) -> subprocess.CompletedProcess:
    """`decoding-assets ARGS` run from ``cwd``, told where things are only by ``args`` and ``environ``."""
    env = {k: v for k, v in os.environ.items() if k not in PLACE_VARIABLES + ("DECODING_ASSETS_DECODE_SLOTS",)}
    return subprocess.run(
        [sys.executable, "-m", "decoding_assets.cli", *args], cwd=cwd, env={**env, **environ},
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def _first_line(result: subprocess.CompletedProcess) -> str:
    return result.stderr.splitlines()[0]


def _gpu_limit(dagster_home: Path, monkeypatch) -> int:
    monkeypatch.setenv("DAGSTER_HOME", str(dagster_home))
    with dg.DagsterInstance.get() as instance:
        return instance.event_log_storage.get_concurrency_info(GPU_POOL).limit


@pytest.mark.parametrize("after", [False, True], ids=["before the command", "after the command"])
def test_place_options_go_before_or_after_the_command(tmp_path, monkeypatch, after):
    where, catalog, outputs = tmp_path / "home", tmp_path / "elsewhere" / "cat.duckdb", tmp_path / "results"
    catalog.parent.mkdir()
    options = ["--home", str(where), "--catalog", str(catalog), "--outputs", str(outputs), "--decode-slots", "2"]
    result = _cli(["cleanup", *options] if after else [*options, "cleanup"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert _first_line(result) == f"decoding-assets: home {where}, catalog {catalog}, outputs {outputs}"
    assert catalog.exists() and not (where / "catalog.duckdb").exists()
    assert _gpu_limit(where / "dagster", monkeypatch) == 2


def test_place_options_after_a_subcommand_of_a_command(tmp_path):
    result = _cli(["catalog", "delete", "no-such-merge-id", "--home", str(tmp_path / "home")], cwd=tmp_path)
    assert result.returncode == 1
    assert _first_line(result).startswith(f"decoding-assets: home {tmp_path / 'home'}, ")
    assert "No decoding output for merge_id 'no-such-merge-id'" in result.stderr


def test_the_default_home_is_the_users_data_folder_wherever_it_starts(tmp_path):
    started_in, data = tmp_path / "notebooks", tmp_path / "data"
    started_in.mkdir()
    result = _cli(["cleanup"], cwd=started_in, XDG_DATA_HOME=str(data))
    assert result.returncode == 0, result.stderr
    expected = data / "decoding-assets"
    assert _first_line(result) == (
        f"decoding-assets: home {expected}, catalog {expected / 'catalog.duckdb'}, outputs {expected / 'outputs'}"
    )
    assert (expected / "catalog.duckdb").exists()
    assert list(started_in.iterdir()) == []


def test_home_without_xdg_data_home(tmp_path, monkeypatch):
    monkeypatch.delenv("DECODING_ASSETS_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    assert home() == tmp_path / ".local" / "share" / "decoding-assets"
    monkeypatch.setenv("XDG_DATA_HOME", "relative/data")  # the XDG spec: ignored
    assert home() == tmp_path / ".local" / "share" / "decoding-assets"
    monkeypatch.setenv("DECODING_ASSETS_HOME", "mine")
    monkeypatch.chdir(tmp_path)
    assert home() == tmp_path / "mine"


def test_a_bad_decode_slots_setting_is_one_clear_line(tmp_path):
    result = _cli(["cleanup", "--home", str(tmp_path / "home")], cwd=tmp_path, DECODING_ASSETS_DECODE_SLOTS="two")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: DECODING_ASSETS_DECODE_SLOTS (--decode-slots) is 'two': it must be how many decodes may run at once, "
        "a whole number from 1 (the number of GPUs, usually); unset it for the default."
    ]
    assert not (tmp_path / "home" / "dagster" / "dagster.yaml").exists()


def _processes_with(variable: str, value: str) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter():
        try:
            if process.environ().get(variable) == value:
                found.append(process)
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):  # others' processes, or gone
            continue
    return found


def test_ui_on_a_busy_port_refuses_and_starts_nothing(tmp_path):
    where = tmp_path / "home"
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = _cli(["ui", "--port", str(port)], cwd=tmp_path, DECODING_ASSETS_HOME=str(where))
    assert result.returncode == 1
    assert f"error: the UI cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "choose another port with --port" in result.stderr
    assert "Dagster UI on" not in result.stdout
    assert not where.exists()
    assert _processes_with("DECODING_ASSETS_HOME", str(where)) == []


def test_cleanup_says_how_many_files_it_spared_for_their_age(tmp_path):
    location, outputs = tmp_path / "catalog.duckdb", tmp_path / "outputs"
    selection = DecodingSelection("s.nwb", "all_tetrodes", "run_epochs", "contfrag_clusterless", "00_r1", "00_r1")
    written = Catalog(str(location), outputs).output_paths(selection)  # results and model
    for path in written:
        path.write_bytes(b"a decode nobody registered")
    args = ["cleanup", "--yes", "--home", str(tmp_path / "home"), "--catalog", str(location), "--outputs", str(outputs)]
    result = _cli(args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "Deleted 0 file(s); spared 2: younger than min_age_s (2)"
    assert all(path.exists() for path in written)


@pytest.mark.parametrize("umask, mode", [(0o002, 0o664), (0o077, 0o600)])
def test_outputs_get_the_permissions_the_umask_allows(tmp_path, umask, mode):
    path = tmp_path / "decode.nc"
    previous = os.umask(umask)
    try:
        with atomic_write(path) as tmp:
            xr.Dataset({"posterior": ("time", [0.25, 0.75])}).to_netcdf(tmp, engine="h5netcdf")
    finally:
        os.umask(previous)
    assert path.stat().st_mode & 0o777 == mode
    assert [p.name for p in tmp_path.iterdir()] == ["decode.nc"]
    assert xr.load_dataset(path, engine="h5netcdf")["posterior"].values.tolist() == [0.25, 0.75]

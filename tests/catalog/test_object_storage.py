"""Outputs in an object store: a real S3-compatible server (``moto_server`` on 127.0.0.1,
tests/s3_server.py), real decodes of a small demo session, real netCDF objects, and a
writer killed with SIGKILL midway. The catalog names the objects' URLs, what it registered
is what the store holds, reads are lazy, verify and cleanup work on objects as on files,
and a failed upload registers nothing and says so."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import textwrap
import uuid
from dataclasses import dataclass
from pathlib import Path

import fsspec
import numpy as np
import pytest
import yaml

import decoding_assets
from catalog import Catalog, CatalogError, storage
from decoding_assets import pipeline
from decoding_assets.fetch import fetch_model, fetch_results
from decoding_assets.nwb import write_demo_session

from ..s3_server import S3Server, find_moto_server

REPO = Path(__file__).resolve().parents[2]
INTERVAL, OTHER = "epoch0_block1_trial1", "epoch0_block1_trial2"


@dataclass(frozen=True)
class Session:
    """A small session registered and processed (position in a local folder) once; each
    test decodes from a copy of its catalog."""

    folder: Path
    nwb_file_name: str
    catalog: Path
    decoding: pipeline.DecodingConfig


@dataclass(frozen=True)
class Decoded:
    """The same selection decoded to the store and to a local folder."""

    remote: Catalog
    local: Catalog
    merge_id: str
    record: dict


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """The server, and the variables that point botocore at it and the scratch folder at a
    temporary one, for the whole module."""
    if find_moto_server() is None:
        pytest.skip("moto_server not found: install moto[server] (the project's test extra)")
    scratch = tmp_path_factory.mktemp("scratch")
    with S3Server(tmp_path_factory.mktemp("s3")) as server, pytest.MonkeyPatch.context() as patch:
        for key, value in {**server.environ, "DECODING_ASSETS_SCRATCH": str(scratch)}.items():
            patch.setenv(key, value)
        yield server
        fsspec.get_filesystem_class("s3").clear_instance_cache()  # its clients point at this server


@pytest.fixture
def bucket(s3) -> str:
    """A fresh bucket's URL, with a prefix (outputs go under it)."""
    return s3.create_bucket(f"outputs-{uuid.uuid4().hex[:12]}") + "/lab"


@pytest.fixture(scope="module")
def session(tmp_path_factory) -> Session:
    folder = tmp_path_factory.mktemp("session")
    nwb = write_demo_session(
        folder / "tiny.nwb", n_tetrodes=2, epoch_durations=(40.0, 5.0, 20.0), trial_duration=20.0, raw_tetrodes=0
    )
    config = yaml.safe_load((Path(decoding_assets.__file__).parent / "decoding_configs.yaml").read_text())
    config["decoding_params"] = {"coarse": {"place_bin_size": 10.0, "sampling_frequency": 100.0}}
    config["decodings"] = {"contfrag_run": {**config["decodings"]["contfrag_run"], "decoding_param_name": "coarse"}}
    (folder / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    config = pipeline.load_config(folder / "config.yaml")
    cat = Catalog(folder / "catalog.duckdb", folder / "outputs")
    pipeline.register_session(cat, nwb, config)
    pipeline.ensure_parameter_sets(cat, config)
    pipeline.process_session_position(cat, nwb.name, "default_decoding")
    pipeline.ensure_features_groups(cat, nwb.name, config)
    pipeline.ensure_position_groups(cat, nwb.name, config)
    return Session(folder, nwb.name, Path(cat.location), config["decodings"][0])


def _copy(session: Session, folder: Path, outputs: Path | str) -> Catalog:
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(session.catalog, folder / "catalog.duckdb")
    return Catalog(folder / "catalog.duckdb", outputs)


@pytest.fixture(scope="module")
def decoded(s3, session, tmp_path_factory) -> Decoded:
    bucket = s3.create_bucket("decoded") + "/lab"
    folder = tmp_path_factory.mktemp("decoded")
    remote, local = _copy(session, folder / "remote", bucket), _copy(session, folder / "local", folder / "outputs")
    merge_id = pipeline.select(remote, session.nwb_file_name, INTERVAL, session.decoding)
    assert pipeline.select(local, session.nwb_file_name, INTERVAL, session.decoding) == merge_id
    record = pipeline.decode(remote, merge_id)
    record["results"].close()
    pipeline.decode(local, merge_id)["results"].close()
    return Decoded(remote, local, merge_id, record)


def _object_bytes(url: str) -> bytes:
    fs, path = fsspec.core.url_to_fs(url)
    fs.invalidate_cache()
    return fs.cat_file(path)


def _objects(url: str) -> list[str]:
    fs, path = fsspec.core.url_to_fs(url)
    fs.invalidate_cache()
    return sorted(f"s3://{p}" for p in fs.find(path))


def _scratch_files() -> list[Path]:
    return sorted(p for p in storage.scratch_folder().rglob("*") if p.is_file())


# ---------------------------------------------------------------------- a decode to the store


def test_a_decode_uploads_its_results_and_model_and_registers_their_urls(decoded):
    (output,) = decoded.remote.outputs().itertuples()
    prefix = f"s3://decoded/lab/decoding/{output.nwb_file_name}/{decoded.merge_id}."
    assert output.path.startswith(prefix) and output.path.endswith(".nc")
    assert output.model_path.startswith(prefix) and output.model_path.endswith(".model.nc")
    assert _objects("s3://decoded/lab") == sorted([output.path, output.model_path])
    for url, size, checksum in ((output.path, output.size_bytes, output.checksum),
                                (output.model_path, output.model_size_bytes, output.model_checksum)):  # fmt: skip
        content = _object_bytes(url)
        assert (len(content), hashlib.blake2b(content, digest_size=20).hexdigest()) == (size, checksum)
    written = decoded.remote.query("SELECT path, state FROM written_files WHERE kind = 'decoding' ORDER BY path")
    assert written.values.tolist() == sorted([[output.path, "registered"], [output.model_path, "registered"]])
    assert decoded.record["path"] == output.path and output.median_decoding_error_cm < 30.0
    assert _scratch_files() == []  # the local copies went once uploaded


def test_fetch_results_reads_the_object_lazily_with_the_values_of_a_local_decode(decoded):
    results = fetch_results(decoded.remote, decoded.merge_id, verify="full")
    expected = fetch_results(decoded.local, decoded.merge_id)
    try:
        assert not results["acausal_posterior"].variable._in_memory
        assert results.indexes["state_bins"].equals(expected.indexes["state_bins"])
        np.testing.assert_allclose(results["acausal_posterior"].values, expected["acausal_posterior"].values,
                                   rtol=0, atol=1e-6)  # fmt: skip
        np.testing.assert_array_equal(results["interval_labels"].values, expected["interval_labels"].values)
    finally:
        results.close()
        expected.close()
    model = fetch_model(decoded.remote, decoded.merge_id)
    np.testing.assert_array_equal(model.environments.place_bin_centers_,
                                  fetch_model(decoded.local, decoded.merge_id).environments.place_bin_centers_)  # fmt: skip


# ---------------------------------------------------------------------- verify, delete and cleanup


def _register_fake_output(cat: Catalog, session: Session, interval: str, seed: int) -> tuple[str, str, str]:
    """Stand in for a decode (seconds, not a fit): small results and model files written to
    the store through the writers' own path, then registered. (merge_id, results, model)."""
    import xarray as xr

    from decoding_assets.decoder import save_results
    from decoding_assets.files import atomic_write

    merge_id = pipeline.select(cat, session.nwb_file_name, interval, session.decoding)
    path, model = cat.output_paths(cat.fetch_selection(merge_id))
    with cat.writing([path, model]):
        rng = np.random.default_rng(seed)
        save_results(xr.Dataset({"acausal_posterior": (("time", "bin"), rng.random((6, 4)))}), path)
        with atomic_write(model, suffix=".tmp.nc") as tmp:
            xr.Dataset({"weights": ("bin", rng.random(4))}).to_netcdf(tmp, engine="h5netcdf")
        cat.register_output(
            merge_id, path=path, model_path=model, code_version="test", input_versions={"code": {"x": "1"}},
            n_time_bins=6, run_seconds=0.1, device="cpu", analyses=None,
        )  # fmt: skip
    return merge_id, path, model


def test_verify_finds_a_changed_and_a_deleted_object_and_cleanup_removes_forgotten_ones(session, bucket, tmp_path):
    cat = _copy(session, tmp_path, bucket)
    changed, changed_path, changed_model = _register_fake_output(cat, session, INTERVAL, 0)
    deleted, deleted_path, deleted_model = _register_fake_output(cat, session, OTHER, 1)
    assert (cat.verify_outputs()["status"] == "ok").all()
    # other bytes of the same size, uploaded over the first results; the other's model gone
    content = bytearray(_object_bytes(changed_path))
    content[len(content) // 2] ^= 0xFF
    fs, _ = fsspec.core.url_to_fs(bucket)
    fs.pipe_file(changed_path, bytes(content))
    fs.rm_file(deleted_model)

    report = cat.verify_outputs().set_index("path")
    assert report.loc[changed_path, "status"] == "corrupted" and report.loc[deleted_model, "status"] == "missing"
    assert f"{deleted_model} of decoding output {deleted}" in report.loc[deleted_model, "message"]
    assert report.loc[[changed_model, deleted_path], "status"].tolist() == ["ok", "ok"]
    statuses = dict(zip(cat.outputs()["merge_id"], cat.outputs()["file_status"]))
    assert statuses == {changed: "corrupted", deleted: "missing"}
    with pytest.raises(CatalogError, match="corrupted: the registered size, but other content"):
        fetch_results(cat, changed)

    # what --repair does first (then decodes again), and a user's deletion: the objects go at cleanup
    cat.forget_bad_output(changed)
    cat.delete_output(deleted)
    assert cat.outputs().empty
    report = cat.cleanup(dry_run=False, min_age_s=0)
    assert sorted(report.deleted) == sorted([changed_path, changed_model, deleted_path]) and report.errors == ()
    assert _objects(bucket) == [] and cat.query("SELECT * FROM written_files WHERE kind = 'decoding'").empty


WRITER = """
import os, signal, sys
import xarray as xr
from catalog import Catalog
from decoding_assets.files import atomic_write

cat = Catalog(sys.argv[1], sys.argv[2])
path, model = cat.output_paths(cat.fetch_selection(sys.argv[3]))
with cat.writing([path, model]):
    with atomic_write(path, suffix=".tmp.nc") as tmp:
        xr.Dataset({"weights": ("bin", [1.0, 2.0])}).to_netcdf(tmp, engine="h5netcdf")
    with atomic_write(model, suffix=".tmp.nc") as tmp:
        tmp.write_bytes(b"half a model")
        print(path, model, tmp, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
"""


def test_cleanup_reclaims_what_a_killed_upload_left_once_old_enough_and_spares_a_live_writer(
    session, bucket, tmp_path
):  # fmt: skip
    cat = _copy(session, tmp_path, bucket)
    merge_id = pipeline.select(cat, session.nwb_file_name, INTERVAL, session.decoding)
    killed = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(WRITER), cat.location, bucket, merge_id], cwd=REPO,
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert killed.returncode == -9, killed.stderr
    path, model, temporary = killed.stdout.split()
    assert _objects(bucket) == [path] and Path(temporary).is_file()  # results uploaded, the model never was
    assert Path(temporary).parent == storage.staged_copy(model).parent
    live = cat.output_paths(cat.fetch_selection(pipeline.select(cat, session.nwb_file_name, OTHER, session.decoding)))

    with cat.writing(live):
        fresh = cat.cleanup(dry_run=False, min_age_s=3600)
        assert fresh.deleted == () and sorted(fresh.spared) == sorted((p, "younger than min_age_s") for p in
                                                                      [path, model, *live])  # fmt: skip
        old = cat.cleanup(dry_run=False, min_age_s=0)
    assert sorted(map(str, old.deleted)) == sorted([path, temporary]) and old.errors == ()
    assert {reason.split(" (")[0] for _, reason in old.spared} == {"a live writer"}
    assert sorted(p for p, _ in old.spared) == sorted(live)
    assert _objects(bucket) == [] and not Path(temporary).exists()
    assert set(cat.query("SELECT path FROM written_files WHERE kind = 'decoding'")["path"]) == set(live)


# ---------------------------------------------------------------------- a failed upload


def test_a_failed_upload_registers_nothing_and_names_session_interval_and_url(session, s3, tmp_path):
    missing = f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/lab"
    cat = _copy(session, tmp_path, missing)
    merge_id = pipeline.select(cat, session.nwb_file_name, INTERVAL, session.decoding)
    with pytest.raises(CatalogError) as failed:
        pipeline.decode(cat, merge_id)
    message = str(failed.value)
    assert f"Session {session.nwb_file_name}, interval {INTERVAL!r} (decode {merge_id})" in message
    assert f"could not upload {missing}/decoding/{session.nwb_file_name}/{merge_id}." in message
    assert "bucket does not exist" in message and "names a bucket that exists" in message
    assert cat.outputs().empty
    intents = cat.query("SELECT path, state FROM written_files WHERE kind = 'decoding'")
    assert len(intents) == 2 and set(intents["state"]) == {"orphaned"}
    assert all(p.startswith(missing) for p in intents["path"])
    assert not any(storage.staged_copy(p).exists() for p in intents["path"])


def test_the_command_line_takes_an_outputs_url(s3, bucket, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("DECODING_ASSETS_CATALOG", "DECODING_ASSETS_OUTPUTS")}
    done = subprocess.run(
        [sys.executable, "-m", "decoding_assets.cli", "cleanup", "--home", str(tmp_path / "home"), "--outputs",
         bucket + "/"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines()[0].endswith(f", outputs {bucket}")
    assert done.stdout.startswith("Would delete (use --yes) 0 file(s)")

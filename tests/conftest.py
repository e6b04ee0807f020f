"""Shared fixtures: small simulated sessions, built once per test session, and fresh
catalogs on either backend.

``pytest`` runs every test on DuckDB files, and the catalog suite (tests/catalog) on a
PostgreSQL server as well; ``pytest --catalog-backend postgres`` runs the Dagster graph
end to end (tests marked ``pipeline_on_postgres``: the demo materialized, Dagster's runs
beside the catalog) on PostgreSQL, the others deselected. Everything
the pipeline asks of the catalog goes through the catalog suite on both backends. The
server is started by the tests (tests/postgres_server.py) and stopped at the end."""

import itertools
import os
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np
import pytest

from decoding_assets.decoder.simulate import simulate_open_field, simulate_w_track

from .postgres_server import PostgresServer, find_postgres_bin

BACKENDS = ("duckdb", "postgres")


def pytest_addoption(parser):
    parser.addoption(
        "--catalog-backend",
        choices=BACKENDS,
        default="duckdb",
        help="where the tests' catalogs live (postgres: a server the tests start; tests without a catalog are deselected)",
    )


def pytest_generate_tests(metafunc):
    """``catalog_backend``: the option's backend; tests marked ``both_backends`` (the
    catalog suite) run on both in a plain run."""
    if "catalog_backend" in metafunc.fixturenames:
        chosen = metafunc.config.getoption("--catalog-backend")
        both = metafunc.definition.get_closest_marker("both_backends") is not None
        metafunc.parametrize("catalog_backend", BACKENDS if both and chosen == "duckdb" else (chosen,), scope="session")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--catalog-backend") == "duckdb":
        return
    keep = [i for i in items if i.get_closest_marker("pipeline_on_postgres") is not None]
    config.hook.pytest_deselected(items=[i for i in items if i not in keep])
    items[:] = keep


def pytest_configure(config):
    config.addinivalue_line("markers", "both_backends: run on a DuckDB file and on PostgreSQL in a plain run")
    config.addinivalue_line("markers", "pipeline_on_postgres: run again by `pytest --catalog-backend postgres`")


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory):
    if find_postgres_bin() is None:
        pytest.skip(
            "PostgreSQL server binaries (initdb, pg_ctl) not found: install the postgresql package (.ci/run does)"
        )
    with PostgresServer(tmp_path_factory.mktemp("postgres")) as server:
        yield server


@dataclass(frozen=True)
class CatalogPlace:
    """A fresh, empty catalog: ``location`` for ``Catalog()`` and where its outputs go."""

    location: str
    output_dir: Path

    @property
    def environ(self) -> dict[str, str]:
        """The variables that point the CLI and Dagster at this catalog."""
        return {"DECODING_ASSETS_CATALOG": self.location, "DECODING_ASSETS_OUTPUTS": str(self.output_dir)}


_databases = itertools.count()


@pytest.fixture(scope="session")
def new_catalog(request, tmp_path_factory, catalog_backend):
    """A factory of fresh catalogs on this test's backend."""

    def make() -> CatalogPlace:
        folder = tmp_path_factory.mktemp("catalog")
        if catalog_backend == "duckdb":
            return CatalogPlace(str(folder / "catalog.duckdb"), folder / "outputs")
        server = request.getfixturevalue("postgres_server")
        return CatalogPlace(server.create_database(f"catalog_{next(_databases)}"), folder / "outputs")

    return make


@pytest.fixture
def catalog_env(new_catalog, monkeypatch):
    """A fresh catalog that the CLI, the resources and Dagster use (by environment)."""
    place = new_catalog()
    for key, value in place.environ.items():
        monkeypatch.setenv(key, value)
    return place


@pytest.fixture(scope="session")
def open_field_session():
    return simulate_open_field(duration=240.0, n_tetrodes=12, seed=3)


@pytest.fixture(scope="session")
def w_track_session():
    return simulate_w_track(duration=150.0, n_tetrodes=8, seed=4)


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


SMALL_DEMO = {"n_tetrodes": 4, "epoch_durations": (60.0, 10.0, 40.0)}


@pytest.fixture(scope="session")
def small_nwb(tmp_path_factory):
    """A small demo session written with pynwb: 4 tetrodes, epochs of 60, 10 and 40 s."""
    from decoding_assets.nwb import write_demo_session

    return write_demo_session(tmp_path_factory.mktemp("nwb") / "small.nwb", trial_duration=20.0, **SMALL_DEMO)


@dataclass(frozen=True)
class DemoHome:
    home: Path
    outputs: list[dict]
    place: CatalogPlace

    def catalog(self):
        from catalog import Catalog

        return Catalog(self.place.location, self.place.output_dir)


@pytest.fixture(scope="session")
def demo_home(tmp_path_factory, new_catalog):
    """The whole graph materialized for a small demo session, as `decoding-assets demo`
    does it: a real Dagster instance and catalog in a temporary folder."""
    from decoding_assets.cli import run_demo

    place = new_catalog()
    keys = ("DAGSTER_HOME", "DECODING_ASSETS_HOME", *place.environ)
    saved = {k: os.environ.get(k) for k in keys}
    os.environ.update(place.environ)
    home = tmp_path_factory.mktemp("home")
    outputs = run_demo(home, quiet=True, trial_duration=20.0, **SMALL_DEMO)
    yield DemoHome(home, outputs, place)
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value

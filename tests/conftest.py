"""Shared fixtures: small simulated sessions, built once per test session."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np
import pytest

from decoding_assets.decoder.simulate import simulate_open_field, simulate_w_track


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


@pytest.fixture(scope="session")
def demo_home(tmp_path_factory):
    """The whole graph materialized for a small demo session, as `decoding-assets demo`
    does it: a real Dagster instance and catalog in a temporary folder."""
    from decoding_assets.cli import run_demo

    saved = {k: os.environ.get(k) for k in ("DAGSTER_HOME", "DECODING_ASSETS_HOME")}
    home = tmp_path_factory.mktemp("home")
    outputs = run_demo(home, quiet=True, trial_duration=20.0, **SMALL_DEMO)
    yield home, outputs
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value

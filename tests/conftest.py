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

"""A fitted model in a versioned netCDF file (no pickle: readable from any language, safe
to open, stable across versions of this package).

Contents: attributes ``model`` (the class name), ``parameters`` (the model's
``to_dict()`` JSON) and ``model_format_version``; the fitted grid (``edges_<d>``,
``is_track_interior``), ``occupancy``, ``summed_ground_process_intensity``,
``initial_conditions`` (over the state bins, laid out as the results are),
``discrete_state_transitions``, and per electrode group its ``mean_rate``,
``n_encoding_spikes`` and ``n_features``, with every group's encoding spikes
concatenated in ``encoding_positions`` and ``encoding_marks`` (NaN-padded to the widest
group); for a model with a Local state, the ``training_positions`` its occupancy at the
animal's position is computed from.

Version 1 (ContFrag only) kept ``initial_conditions`` as (state, bin); it is read too.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import xarray as xr

from ..files import atomic_write
from .likelihood import ElectrodeEncoding, Encoding

MODEL_FORMAT_VERSION = 2


def save_model(model, path: str | os.PathLike) -> Path:
    """Write a fitted model (format ``MODEL_FORMAT_VERSION``); the file appears only once complete."""
    env = model.environments
    electrodes = model.encodings_
    path = Path(path)
    counts = np.array([enc.marks.shape[0] for enc in electrodes], dtype=np.int64)
    n_features = np.array([enc.marks.shape[1] for enc in electrodes], dtype=np.int64)
    width = int(n_features.max()) if n_features.size else 0
    marks = np.full((counts.sum(), width), np.nan)
    row = 0
    for enc in electrodes:
        marks[row : row + enc.marks.shape[0], : enc.marks.shape[1]] = enc.marks
        row += enc.marks.shape[0]
    positions = (
        np.concatenate([enc.positions for enc in electrodes]) if electrodes else np.zeros((0, env.n_position_dims))
    )
    grid_dims = [f"grid_{d}" for d in range(len(env.centers_shape_))]
    data = {
        "is_track_interior": (grid_dims, env.is_track_interior_.astype(np.int8)),
        "occupancy": ("bin", model.occupancy_),
        "summed_ground_process_intensity": ("bin", model.summed_ground_process_intensity_),
        "initial_conditions": ("state_bin", model.initial_conditions_),
        "discrete_state_transitions": (("state", "to_state"), model.discrete_state_transitions_),
        "mean_rate": ("electrode", np.array([enc.mean_rate for enc in electrodes], dtype=float)),
        "n_encoding_spikes": ("electrode", counts),
        "n_features": ("electrode", n_features),
        "encoding_positions": (("encoding_spike", "position_dim"), positions),
        "encoding_marks": (("encoding_spike", "feature"), marks),
    }
    for d, edges in enumerate(env.edges_):
        data[f"edges_{d}"] = (f"edge_{d}", edges)
    if model.training_positions_ is not None:
        data["training_positions"] = (("training_sample", "position_dim"), model.training_positions_)
    attrs = {
        "model_format_version": MODEL_FORMAT_VERSION,
        "model": type(model).__name__,
        "parameters": json.dumps(model.to_dict()),
    }
    with atomic_write(path) as tmp:
        xr.Dataset(data, attrs=attrs).to_netcdf(tmp, engine="h5netcdf")
    return path


def saved_model_name(path: str | os.PathLike) -> str:
    """The class name of the model a file holds."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No saved model at {path}.")
    with xr.open_dataset(path, engine="h5netcdf") as ds:
        return str(ds.attrs.get("model", "ContFragClusterlessClassifier"))


def load_model(cls, path: str | os.PathLike, device=None):
    """Read a model of class ``cls`` written by ``save_model``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No saved model at {path}.")
    with xr.open_dataset(path, engine="h5netcdf") as ds:
        ds = ds.load()
    version = int(ds.attrs.get("model_format_version", -1))
    if version < 1 or version > MODEL_FORMAT_VERSION:
        raise ValueError(f"{path} is not a saved model this version can read (format version {version}).")
    saved_as = ds.attrs.get("model", cls.__name__)
    if saved_as != cls.__name__:
        raise ValueError(f"{path} holds a {saved_as}; load it with {saved_as}.load_model.")
    model = cls.from_dict(json.loads(ds.attrs["parameters"]), device=device)
    env = model.environments
    if env.is_track:
        env.fit_place_grid(None)
    else:
        edges = [ds[f"edges_{d}"].values for d in range(ds["is_track_interior"].ndim)]
        env.edges_ = edges
        centers = [0.5 * (e[1:] + e[:-1]) for e in edges]
        env.centers_shape_ = tuple(len(c) for c in centers)
        env.place_bin_centers_ = np.stack([m.ravel() for m in np.meshgrid(*centers, indexing="ij")], axis=1)
    env.is_track_interior_ = ds["is_track_interior"].values.astype(bool)
    electrodes, row = [], 0
    positions, marks = ds["encoding_positions"].values, ds["encoding_marks"].values
    for count, n_features, rate in zip(ds["n_encoding_spikes"].values, ds["n_features"].values, ds["mean_rate"].values):
        electrodes.append(
            ElectrodeEncoding(
                positions=positions[row : row + count], marks=marks[row : row + count, :n_features], mean_rate=float(rate)
            )
        )
        row += count
    model._set_fitted(
        Encoding(ds["occupancy"].values, electrodes, ds["summed_ground_process_intensity"].values),
        ds["initial_conditions"].values.ravel(),  # version 1: (state, bin), state-major as the results
        ds["discrete_state_transitions"].values,
        ds["training_positions"].values if "training_positions" in ds else None,
    )
    return model

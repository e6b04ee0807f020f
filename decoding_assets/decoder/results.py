"""Decoding results as an ``xarray.Dataset`` laid out like ``non_local_detector``'s,
and their netCDF files.

Layout: ``acausal_posterior`` and ``causal_posterior`` (time, state_bins) float32, NaN
outside the track; ``acausal_state_probabilities`` and ``causal_state_probabilities``
(time, states); ``state_bins`` a MultiIndex of (state, x_position, y_position) in 2D or
(state, position) in 1D; attributes ``marginal_log_likelihood`` (the final one) and
``marginal_log_likelihoods`` (one per EM iteration, or one).

File format (``RESULTS_FORMAT_VERSION``): netCDF4 (HDF5) with the ``state_bins``
MultiIndex reset to plain coordinates, the level names in the attribute
``state_bins_levels``, zlib-compressed variables chunked along time, and the attribute
``results_format_version``. Files without that attribute are read as the reference
package writes them.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from ..files import atomic_write
from .environment import Environment

RESULTS_FORMAT_VERSION = 1
STATE_NAMES = ("Continuous", "Fragmented")
_POSTERIORS = ("acausal_posterior", "causal_posterior")


def state_bins_index(environment: Environment) -> pd.MultiIndex:
    """(state, *position levels) for every (state, bin), state-major, bins in C order."""
    centers = environment.place_bin_centers_
    n_bins = centers.shape[0]
    states = np.repeat(np.asarray(STATE_NAMES), n_bins)
    if centers.shape[1] == 1:
        names = ["position"]
    else:
        names = [f"{axis}_position" for axis in "xyzw"[: centers.shape[1]]]
    levels = [np.tile(centers[:, d], len(STATE_NAMES)) for d in range(centers.shape[1])]
    return pd.MultiIndex.from_arrays([states, *levels], names=["state", *names])


def results_coordinates(time: np.ndarray, environment: Environment) -> xr.Coordinates:
    """time, the state_bins MultiIndex, states, and the reference's extra coordinates."""
    index = state_bins_index(environment)
    n_bins = environment.place_bin_centers_.shape[0]
    coords = xr.Coordinates.from_pandas_multiindex(index, "state_bins")
    return coords.assign(
        time=np.asarray(time, dtype=float),
        states=list(STATE_NAMES),
        state_ind=("state_bins", np.repeat(np.arange(len(STATE_NAMES)), n_bins)),
        environments=("states", [environment.environment_name] * len(STATE_NAMES)),
        encoding_groups=("states", [0] * len(STATE_NAMES)),
    )


def make_results(
    time: np.ndarray,
    environment: Environment,
    acausal_posterior: np.ndarray,
    causal_posterior: np.ndarray,
    acausal_state_probabilities: np.ndarray,
    causal_state_probabilities: np.ndarray,
    marginal_log_likelihoods: list[float],
) -> xr.Dataset:
    """Wrap decoder outputs without copying the posteriors.

    acausal_posterior, causal_posterior : (n_time, n_states * n_bins) float32, NaN
        outside the track. *_state_probabilities : (n_time, n_states).
    """
    return xr.Dataset(
        {
            "acausal_posterior": (("time", "state_bins"), acausal_posterior),
            "causal_posterior": (("time", "state_bins"), causal_posterior),
            "acausal_state_probabilities": (("time", "states"), acausal_state_probabilities),
            "causal_state_probabilities": (("time", "states"), causal_state_probabilities),
        },
        coords=results_coordinates(time, environment),
        attrs={
            "marginal_log_likelihood": float(marginal_log_likelihoods[-1]),
            "marginal_log_likelihoods": np.asarray(marginal_log_likelihoods, dtype=float),
        },
    )


@contextlib.contextmanager
def streaming_results(
    path: str | os.PathLike,
    time: np.ndarray,
    environment: Environment,
    dtype,
    time_chunk: int,
    interval_labels: np.ndarray | None = None,
):
    """A results file the decoder writes into as it goes (for sessions too long to hold).

    Yields ``(causal, acausal, finish)``: the two posterior variables, sliceable
    (n_time, n_states * n_bins) HDF5 datasets, and ``finish(state_probabilities,
    attrs)`` to call once they are filled. The file appears at ``path`` only when
    complete (written under a temporary name, then renamed); the format is
    ``save_results``'s.
    """
    import h5netcdf

    coords = results_coordinates(time, environment)
    if interval_labels is not None:
        coords = coords.assign(interval_labels=("time", np.asarray(interval_labels)))
    skeleton = xr.Dataset(coords=coords).reset_index("state_bins")
    levels = list(state_bins_index(environment).names)
    skeleton.attrs = {"results_format_version": RESULTS_FORMAT_VERSION, "state_bins_levels": levels}
    with atomic_write(path) as tmp:
        skeleton.to_netcdf(tmp, engine="h5netcdf")
        with h5netcdf.File(tmp, "a") as f:
            shape = (len(time), skeleton.sizes["state_bins"])
            chunks = (min(time_chunk, shape[0]), shape[1])
            posteriors = [
                f.create_variable(name, ("time", "state_bins"), dtype=dtype, chunks=chunks, compression="gzip",
                                  compression_opts=4, fillvalue=np.nan)
                for name in ("causal_posterior", "acausal_posterior")
            ]  # fmt: skip

            def finish(state_probabilities: dict[str, np.ndarray], attrs: dict) -> None:
                for name, values in state_probabilities.items():
                    f.create_variable(name, ("time", "states"), data=np.asarray(values, dtype=np.float64))
                for key, value in attrs.items():
                    f.attrs[key] = _netcdf_attr(value)

            yield posteriors[0], posteriors[1], finish


def save_results(results: xr.Dataset, path: str | os.PathLike) -> Path:
    """Write results to ``path`` (netCDF), atomically: a temporary file, then a rename.

    The folder must exist; an existing file at ``path`` is replaced only once the new
    one is complete.
    """
    levels = list(results.indexes["state_bins"].names) if "state_bins" in results.indexes else []
    ds = results.reset_index("state_bins") if levels else results.copy()
    ds.attrs = {k: _netcdf_attr(v) for k, v in ds.attrs.items()}
    ds.attrs["results_format_version"] = RESULTS_FORMAT_VERSION
    ds.attrs["state_bins_levels"] = levels
    encoding = {}
    for name, variable in ds.data_vars.items():
        if variable.dtype.kind in "fiu" and variable.ndim > 0:
            chunks = tuple(min(n, 1024) if dim == "time" else n for dim, n in variable.sizes.items())
            encoding[name] = {"zlib": True, "complevel": 4, "chunksizes": chunks}
    with atomic_write(path) as tmp:
        ds.to_netcdf(tmp, engine="h5netcdf", encoding=encoding)
    return Path(path)


def load_results(path: str | os.PathLike) -> xr.Dataset:
    """Open results written by ``save_results`` (or by the reference package) lazily,
    with the ``state_bins`` MultiIndex rebuilt."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No decoding results file at {path}.")
    ds = xr.open_dataset(path, engine="h5netcdf")
    version = ds.attrs.get("results_format_version")
    if version is not None and int(version) > RESULTS_FORMAT_VERSION:
        ds.close()
        raise ValueError(
            f"{path} has results format version {version}; this version of decoding_assets reads up "
            f"to {RESULTS_FORMAT_VERSION}. Upgrade decoding_assets to read it."
        )
    if "state_bins_levels" in ds.attrs:
        levels = list(np.atleast_1d(ds.attrs.pop("state_bins_levels")))
    else:  # a reference file: every state_bins coordinate but the state index is a level
        levels = [name for name in ds["state_bins"].coords if name not in ("state_bins", "state_ind")]
    if levels:
        ds = ds.set_index(state_bins=levels)
    return ds


def _netcdf_attr(value):
    if isinstance(value, (bool, np.bool_)):
        return int(value)
    if isinstance(value, (list, tuple)):
        return np.asarray(value)
    return value

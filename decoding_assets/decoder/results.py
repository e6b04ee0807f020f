"""Decoding results as an ``xarray.Dataset`` laid out like ``non_local_detector``'s,
their netCDF files, and what a file keeps of them (``Keep``).

Layout in memory (``predict``): ``acausal_posterior`` and ``causal_posterior``
(time, state_bins) float32, NaN outside the track; ``acausal_state_probabilities`` and
``causal_state_probabilities`` (time, states); ``state_bins`` a MultiIndex of (state,
x_position, y_position) in 2D or (state, position) in 1D; attributes
``marginal_log_likelihood`` (the final one) and ``marginal_log_likelihoods`` (one per EM
iteration, or one).

File format (``RESULTS_FORMAT_VERSION`` 2): netCDF4 (HDF5). What it keeps is recorded
in its attributes (``Keep.of`` reads them back):

- ``acausal_posterior`` always; ``causal_posterior`` when ``kept_causal_posterior`` is 1;
- per state, (time, state_bins) with the MultiIndex reset to plain coordinates and the
  level names in ``state_bins_levels``; or, when ``posterior_per_state`` is 0, summed
  over the states: (time, x_position, y_position) in 2D, (time, position) in 1D;
- exactly as computed (``posterior_max_error`` 0), or within ``posterior_max_error`` of
  it: CF linear packing into uint16 (``scale_factor`` 1 / levels, ``_FillValue`` 65535
  outside the track), which xarray decodes to float32 with NaN by itself;
- posteriors chunked 1024 time bins by about 64 spatial bins, shuffled and
  zlib-compressed; each records ``max_abs_error`` and ``computed_max_abs_sum_error`` (the
  largest |sum over bins - 1| of the posterior as computed, before it was stored);
- the state probabilities (time, states) and the attributes as computed.

Version 1 files (both posteriors, per state, float32) and the reference package's
files (no ``results_format_version``) are read too.
"""

from __future__ import annotations

import contextlib
import math
import numbers
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from ..files import atomic_write
from .environment import Environment

RESULTS_FORMAT_VERSION = 2
STATE_NAMES = ("Continuous", "Fragmented")
_POSTERIORS = ("acausal_posterior", "causal_posterior")

_FILL = 65535  # uint16 code of NaN (outside the track); codes 0..levels are values
_MAX_LEVELS = 65534
# float32 decoding of a code (scale_factor and product, each rounded): at most 2**-23 on values <= 1
_DECODING_ROUNDING = 2.0**-23
MIN_MAX_ERROR = 0.5 / _MAX_LEVELS + _DECODING_ROUNDING  # about 7.75e-6: the finest 16-bit step
_CHUNK_ROWS = 1024
_CHUNK_BINS = 64  # spatial bins per chunk: neighbouring time bins of one bin compress together
_ZLIB_LEVEL = {"exact": 1, "bounded": 4}  # exact floats barely compress: spend little time on them
MAX_ERROR_EXPECTED = (
    f"null (exact) or a number from {MIN_MAX_ERROR:.3g} (the finest 16-bit step) to 0.5; "
    "in YAML write 1.0e-5, not 1e-5 (which YAML reads as text)"
)


@dataclass(frozen=True)
class StateLayout:
    """A model's discrete states in the order of its results: the ``n_point`` states of
    one bin each (no position) first, then the states on the spatial grid."""

    names: tuple[str, ...]
    n_point: int = 0

    @property
    def n_grid(self) -> int:
        return len(self.names) - self.n_point

    def width(self, n_bins: int) -> int:
        """Values per time bin of a per-state posterior."""
        return self.n_point + self.n_grid * n_bins

    def interior_columns(self, interior: np.ndarray) -> np.ndarray:
        """Columns of a per-state posterior that hold probability: every point state and
        the interior bins of every grid state. interior : (n_bins,) bool."""
        grid = np.flatnonzero(np.tile(interior, self.n_grid)) + self.n_point
        return np.concatenate([np.arange(self.n_point), grid])


CONTINUOUS_FRAGMENTED = StateLayout(STATE_NAMES)


@dataclass(frozen=True)
class Keep:
    """What a decode keeps in its results file.

    causal_posterior : also the filter's (causal) posterior; the acausal (smoothed) one
        is always kept, as the reference keeps it by default.
    per_state : the posterior per discrete state, (time, state_bins), the reference's
        layout; False sums it over the states on the grid: (time, x_position,
        y_position) in 2D, (time, position) in 1D (a state of one bin, such as the
        non-local detector's Local, has no position: its probability is in the state
        probabilities). The state probabilities are kept either way.
    max_error : None keeps the posteriors exactly as computed (float32, or float64 for a
        float64 decoder); a number stores each posterior value within that absolute
        error of the computed one, in 16 bits (from ``MIN_MAX_ERROR``, about 7.75e-6, to
        0.5). Values below about max_error are stored as 0, so a time bin's stored
        posterior sums to 1 within max_error times its number of bins.

    The default fits an hour of a 2D decode at 2 cm bins (a 1 m arena) in about 1.3 GB
    (benchmarks/output_size.py).
    """

    causal_posterior: bool = False
    per_state: bool = True
    max_error: float | None = 1.0e-5

    def __post_init__(self):
        for name in ("causal_posterior", "per_state"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise ValueError(f"{name} must be true or false; got {getattr(self, name)!r}.")
        if self.max_error is not None and not is_max_error(self.max_error):
            raise ValueError(f"max_error must be {MAX_ERROR_EXPECTED}; got {self.max_error!r}.")

    @property
    def levels(self) -> int | None:
        """uint16 codes for [0, 1]: the fewest whose step, with float32 decoding, stays within max_error."""
        if self.max_error is None:
            return None
        return min(_MAX_LEVELS, math.ceil(0.5 / (self.max_error - _DECODING_ROUNDING)))

    def attrs(self) -> dict:
        """What a results file records of it."""
        return {
            "kept_causal_posterior": int(self.causal_posterior),
            "posterior_per_state": int(self.per_state),
            "posterior_max_error": float(self.max_error or 0.0),
        }

    @classmethod
    def of(cls, results: xr.Dataset) -> Keep:
        """What a results file kept (a version 1 or reference file: everything it has, exactly)."""
        attrs = results.attrs
        if "posterior_per_state" not in attrs:
            return cls(causal_posterior="causal_posterior" in results, per_state=True, max_error=None)
        return cls(
            causal_posterior=bool(attrs["kept_causal_posterior"]),
            per_state=bool(attrs["posterior_per_state"]),
            max_error=float(attrs["posterior_max_error"]) or None,
        )


KEEP_EVERYTHING = Keep(causal_posterior=True, per_state=True, max_error=None)


def is_max_error(value) -> bool:
    """A bounded error that 16-bit storage can keep."""
    return (
        isinstance(value, numbers.Real)
        and not isinstance(value, (bool, np.bool_))
        and MIN_MAX_ERROR <= value <= 0.5
    )


def position_level_names(environment: Environment) -> list[str]:
    n_dims = environment.place_bin_centers_.shape[1]
    return ["position"] if n_dims == 1 else [f"{axis}_position" for axis in "xyzw"[:n_dims]]


def state_bins_index(environment: Environment, layout: StateLayout = CONTINUOUS_FRAGMENTED) -> pd.MultiIndex:
    """(state, *position levels) for every (state, bin): the point states first (one
    entry each, position NaN, as the reference lays them out), then each grid state's
    bins in C order."""
    centers = environment.place_bin_centers_
    n_bins = centers.shape[0]
    names = np.asarray(layout.names)
    states = np.concatenate([names[: layout.n_point], np.repeat(names[layout.n_point :], n_bins)])
    levels = [
        np.concatenate([np.full(layout.n_point, np.nan), np.tile(centers[:, d], layout.n_grid)])
        for d in range(centers.shape[1])
    ]
    return pd.MultiIndex.from_arrays([states, *levels], names=["state", *position_level_names(environment)])


def results_coordinates(
    time: np.ndarray, environment: Environment, layout: StateLayout = CONTINUOUS_FRAGMENTED
) -> xr.Coordinates:
    """time, the state_bins MultiIndex, states, and the reference's extra coordinates."""
    index = state_bins_index(environment, layout)
    n_bins = environment.place_bin_centers_.shape[0]
    coords = xr.Coordinates.from_pandas_multiindex(index, "state_bins")
    state_ind = np.concatenate(
        [np.arange(layout.n_point), np.repeat(np.arange(layout.n_point, len(layout.names)), n_bins)]
    )
    return coords.assign(
        time=np.asarray(time, dtype=float),
        states=list(layout.names),
        # its own dimension, as the reference lays it out: on state_bins, the reference's
        # load_results would take it for a third MultiIndex level
        state_ind=("state_ind", state_ind),
        environments=("states", [environment.environment_name] * len(layout.names)),
        encoding_groups=("states", [0] * len(layout.names)),
    )


def make_results(
    time: np.ndarray,
    environment: Environment,
    acausal_posterior: np.ndarray,
    causal_posterior: np.ndarray,
    acausal_state_probabilities: np.ndarray,
    causal_state_probabilities: np.ndarray,
    marginal_log_likelihoods: list[float],
    layout: StateLayout = CONTINUOUS_FRAGMENTED,
) -> xr.Dataset:
    """Wrap decoder outputs without copying the posteriors.

    acausal_posterior, causal_posterior : (n_time, layout.width(n_bins)) float32, NaN
        outside the track. *_state_probabilities : (n_time, n_states).
    """
    return xr.Dataset(
        {
            "acausal_posterior": (("time", "state_bins"), acausal_posterior),
            "causal_posterior": (("time", "state_bins"), causal_posterior),
            "acausal_state_probabilities": (("time", "states"), acausal_state_probabilities),
            "causal_state_probabilities": (("time", "states"), causal_state_probabilities),
        },
        coords=results_coordinates(time, environment, layout),
        attrs={
            "marginal_log_likelihood": float(marginal_log_likelihoods[-1]),
            "marginal_log_likelihoods": np.asarray(marginal_log_likelihoods, dtype=float),
        },
    )


def position_coordinates(environment: Environment) -> dict[str, np.ndarray]:
    """The grid's axes, named as the state_bins levels: {x_position, y_position} or {position}."""
    names = position_level_names(environment)
    shape = environment.centers_shape_
    grid = environment.place_bin_centers_.reshape(*shape, len(names))
    return {
        name: grid[tuple(slice(None) if d == k else 0 for d in range(len(shape))) + (k,)]
        for k, name in enumerate(names)
    }


def position_posterior(results: xr.Dataset, name: str = "acausal_posterior") -> xr.DataArray:
    """The posterior over position, summed over the states on the grid: (time,
    x_position, y_position) or (time, position), NaN outside the track, whichever form
    was kept. (States of one bin, such as the non-local detector's Local, have no
    position: their probability is in the state probabilities.)"""
    posterior = results[name]
    if "state_bins" not in posterior.dims:
        return posterior
    index = posterior.indexes["state_bins"]
    on_grid = np.all(np.stack(index.codes[1:]) >= 0, axis=0)  # a point state's position is NaN
    if not on_grid.all():
        posterior = posterior.isel(state_bins=np.flatnonzero(on_grid))
        index = posterior.indexes["state_bins"].remove_unused_levels()
    shape = tuple(len(level) for level in index.levels)
    in_c_order = int(np.prod(shape)) == len(index) and all(
        np.array_equal(codes, expected)
        for codes, expected in zip(index.codes, np.unravel_index(np.arange(len(index)), shape))
    )
    if not in_c_order:  # a layout we did not write: let xarray sort it out
        return posterior.unstack("state_bins").sum("state", min_count=1)
    # a reshape instead of unstack: the same values, without a copy per level
    values = np.asarray(posterior.values).reshape(posterior.shape[0], *shape)
    summed = np.where(np.isnan(values).all(axis=1), np.nan, np.nansum(values, axis=1))
    axes = {level: np.asarray(index.levels[k + 1]) for k, level in enumerate(index.names[1:])}
    return xr.DataArray(summed, coords={"time": posterior["time"].values, **axes}, dims=("time", *axes), name=name)


class _StoredPosterior:
    """One stored posterior, written whole chunks at a time (each compressed once,
    whatever the order the decoder writes rows in) from blocks of computed rows,
    (rows, n_states * n_bins) or already in the stored layout."""

    def __init__(self, variable, n_time: int, rows_per_chunk: int, encode):
        self.variable, self.n_time, self.rows_per_chunk, self.encode = variable, n_time, rows_per_chunk, encode
        self.pending: dict[int, list] = {}
        self.max_sum_error = 0.0

    def __setitem__(self, rows: slice, values) -> None:
        values = np.asarray(values)
        sums = np.nansum(values.reshape(values.shape[0], -1), axis=1, dtype=np.float64)
        self.max_sum_error = max(self.max_sum_error, float(np.max(np.abs(sums - 1.0), initial=0.0)))
        encoded = self.encode(values)
        start = rows.start
        while start < rows.stop:
            first = start // self.rows_per_chunk * self.rows_per_chunk
            last = min(first + self.rows_per_chunk, self.n_time)
            stop = min(last, rows.stop)
            buffer = self.pending.setdefault(first, [np.empty((last - first, *encoded.shape[1:]), encoded.dtype), 0])
            buffer[0][start - first : stop - first] = encoded[start - rows.start : stop - rows.start]
            buffer[1] += stop - start
            if buffer[1] == last - first:
                self.variable[first:last] = self.pending.pop(first)[0]
            start = stop

    def close(self) -> None:
        """Write what is pending (rows never given stay as the fill value) and the sum error."""
        for first, (buffer, _) in sorted(self.pending.items()):
            self.variable[first : first + buffer.shape[0]] = buffer
        self.pending.clear()
        self.variable.attrs["computed_max_abs_sum_error"] = self.max_sum_error


class _Scratch:
    """The computed causal posterior, exact, in an uncompressed temporary file beside the
    results (only the bins inside the track): the smoother reads it back, and a
    stored causal posterior, summed or within a bound, would change the acausal one.
    Named as ``atomic_write`` names temporaries, so ``cleanup`` finds it if the writer dies."""

    def __init__(self, path: Path, n_columns: int, columns: np.ndarray, dtype):
        self.n_columns, self.columns, self.dtype = n_columns, columns, np.dtype(dtype)
        self.row_bytes = columns.size * self.dtype.itemsize
        self.fd, name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp.bin", dir=path.parent)
        self.path = Path(name)

    def __setitem__(self, rows: slice, values) -> None:
        data = memoryview(np.ascontiguousarray(np.asarray(values)[:, self.columns], dtype=self.dtype)).cast("B")
        offset = rows.start * self.row_bytes
        while data.nbytes:
            written = os.pwrite(self.fd, data, offset)
            data, offset = data[written:], offset + written

    def __getitem__(self, rows: slice) -> np.ndarray:
        n_rows = rows.stop - rows.start
        data = bytearray()
        while len(data) < n_rows * self.row_bytes:
            read = os.pread(self.fd, n_rows * self.row_bytes - len(data), rows.start * self.row_bytes + len(data))
            if not read:
                raise EOFError(f"{self.path}: causal posterior rows {rows.start}-{rows.stop} were never written.")
            data += read
        out = np.full((n_rows, self.n_columns), np.nan, dtype=self.dtype)
        out[:, self.columns] = np.frombuffer(data, dtype=self.dtype).reshape(n_rows, -1)
        return out

    def close(self) -> None:
        os.close(self.fd)
        self.path.unlink(missing_ok=True)


class _Tee:
    """Writes go to the scratch and to the stored posterior; reads come from the scratch."""

    def __init__(self, scratch: _Scratch, stored: _StoredPosterior):
        self.scratch, self.stored = scratch, stored

    def __setitem__(self, rows: slice, values) -> None:
        self.scratch[rows] = values
        self.stored[rows] = values

    def __getitem__(self, rows: slice) -> np.ndarray:
        return self.scratch[rows]


@contextlib.contextmanager
def streaming_results(
    path: str | os.PathLike,
    time: np.ndarray,
    environment: Environment,
    dtype,
    keep: Keep = KEEP_EVERYTHING,
    interval_labels: np.ndarray | None = None,
    layout: StateLayout = CONTINUOUS_FRAGMENTED,
):
    """A results file the decoder writes into as it goes (for sessions too long to hold).

    Yields ``(causal, acausal, finish)``: two sinks taking (rows, layout.width(n_bins))
    blocks of computed posterior by row slices (the causal one reads them back, exact,
    for the smoother), and ``finish(state_probabilities, attrs)`` to call once they are
    filled. The file keeps what ``keep`` says, in ``save_results``'s format, and appears
    at ``path`` only when complete (written under a temporary name, then renamed).
    """
    import h5netcdf

    path = Path(path)
    n_time, n_bins = len(time), environment.place_bin_centers_.shape[0]
    coords = results_coordinates(time, environment, layout)
    levels = position_level_names(environment)
    if interval_labels is not None:
        coords = coords.assign(interval_labels=("time", np.asarray(interval_labels)))
    skeleton = xr.Dataset(coords=coords)
    if keep.per_state:
        skeleton = skeleton.reset_index("state_bins")
        dims, encode = ("time", "state_bins"), _encoder(keep, dtype, None)
    else:
        skeleton = skeleton.drop_vars(["state_bins", "state", *levels, "state_ind"])
        axes = position_coordinates(environment)
        skeleton = skeleton.assign_coords(axes)
        summed = (layout.n_point, layout.n_grid, *environment.centers_shape_)
        dims, encode = ("time", *axes), _encoder(keep, dtype, summed)
    skeleton.attrs = _format_attrs(keep, ["state", *levels] if keep.per_state else [])
    columns = layout.interior_columns(environment.is_track_interior_.ravel())
    with atomic_write(path) as tmp:
        skeleton.to_netcdf(tmp, engine="h5netcdf", encoding=_time_encoding(skeleton))
        scratch = _Scratch(path, layout.width(n_bins), columns, dtype)
        try:
            with h5netcdf.File(tmp, "a") as f:
                names = ["acausal_posterior", *(["causal_posterior"] if keep.causal_posterior else [])]
                stored = {name: _StoredPosterior(_create_posterior(f, name, dims, keep, dtype), n_time,
                                                 _CHUNK_ROWS, encode) for name in names}  # fmt: skip
                causal = _Tee(scratch, stored["causal_posterior"]) if keep.causal_posterior else scratch

                def finish(state_probabilities: dict[str, np.ndarray], attrs: dict) -> None:
                    for sink in stored.values():
                        sink.close()
                    for name, values in state_probabilities.items():
                        _create_state_probabilities(f, name, np.asarray(values, dtype=np.float64))
                    for key, value in attrs.items():
                        f.attrs[key] = _netcdf_attr(value)

                yield causal, stored["acausal_posterior"], finish
        finally:
            scratch.close()


def save_results(results: xr.Dataset, path: str | os.PathLike, keep: Keep = KEEP_EVERYTHING) -> Path:
    """Write what ``keep`` says of ``results`` to ``path`` (netCDF, ``RESULTS_FORMAT_VERSION``),
    atomically: a temporary file, then a rename.

    The default keeps everything the results hold, exactly; the pipeline keeps what its
    decoding configuration's ``keep`` says. The folder must exist; an existing file at
    ``path`` is replaced only once the new one is complete.
    """
    import h5netcdf

    names = [n for n in _POSTERIORS if n in results and (n == "acausal_posterior" or keep.causal_posterior)]
    per_state = keep.per_state and all("state_bins" in results[name].dims for name in names)
    levels = list(results.indexes["state_bins"].names) if "state_bins" in results.indexes else []
    posteriors = {name: results[name] if per_state else position_posterior(results, name) for name in names}
    rest = results.drop_vars([n for n in _POSTERIORS if n in results]).drop_encoding()
    if per_state and levels:
        rest = rest.reset_index("state_bins")
    elif not per_state:
        rest = rest.drop_vars([name for name in rest.coords if "state_bins" in rest[name].dims])
        for posterior in posteriors.values():
            axes = [d for d in posterior.dims if d != "time" and d in posterior.coords]
            rest = rest.assign_coords({d: posterior[d] for d in axes})
    rest.attrs = {k: _netcdf_attr(v) for k, v in rest.attrs.items() if k != "state_bins_levels"}
    kept = Keep("causal_posterior" in names, per_state, keep.max_error)  # what the results had of what was asked
    rest.attrs.update(_format_attrs(kept, levels if per_state else []))
    encoding = {**_time_encoding(rest)}
    for name, variable in rest.data_vars.items():
        if variable.dtype.kind in "fiu" and variable.ndim > 0:
            encoding[name] = {"zlib": True, "shuffle": True, "complevel": 4, "chunksizes": _chunk_shape(variable.shape)}
    with atomic_write(path) as tmp:
        rest.to_netcdf(tmp, engine="h5netcdf", encoding=encoding)
        with h5netcdf.File(tmp, "a") as f:
            for name, posterior in posteriors.items():
                for dim in posterior.dims:
                    if dim not in f.dimensions:
                        f.dimensions[dim] = posterior.sizes[dim]
                dtype = posterior.dtype if posterior.dtype.kind == "f" else np.float32
                n_time = posterior.sizes["time"]
                stored = _StoredPosterior(
                    _create_posterior(f, name, posterior.dims, keep, dtype), n_time, _CHUNK_ROWS,
                    _encoder(keep, dtype, None),
                )  # fmt: skip
                for start in range(0, n_time, _CHUNK_ROWS):
                    rows = slice(start, min(start + _CHUNK_ROWS, n_time))
                    stored[rows] = np.asarray(posterior[rows].values)
                stored.close()
    return Path(path)


def load_results(path: str | os.PathLike) -> xr.Dataset:
    """Open results written by ``save_results`` or ``predict_to_file`` (any version, any
    ``Keep``) or by the reference package, lazily, with the ``state_bins`` MultiIndex
    rebuilt where the posterior is per state. Posteriors come back as floats, NaN outside
    the track; ``Keep.of(results)`` says what was kept and within what error.

    ``path`` may be a local path or a URL fsspec opens (``s3://bucket/key.nc``, with the
    usual AWS environment variables); a URL is read lazily too, in ranges.
    """
    ds = _open(path)
    version = ds.attrs.get("results_format_version")
    if version is not None and int(version) > RESULTS_FORMAT_VERSION:
        ds.close()
        raise ValueError(
            f"{path} has results format version {version}; this version of decoding_assets reads up "
            f"to {RESULTS_FORMAT_VERSION}. Upgrade decoding_assets to read it."
        )
    if "state_bins" not in ds.dims:
        return ds
    if "state_bins_levels" in ds.attrs:
        levels = list(np.atleast_1d(ds.attrs.pop("state_bins_levels")))
    else:  # a reference file: every state_bins coordinate but the state index is a level
        levels = [name for name in ds["state_bins"].coords if name not in ("state_bins", "state_ind")]
    if levels:
        ds = ds.set_index(state_bins=levels)
    return ds


def _open(path: str | os.PathLike) -> xr.Dataset:
    """netCDF4 (HDF5) as we and the reference with h5netcdf write it, or NetCDF3, which a
    stock reference install writes (it has neither netCDF4 nor h5netcdf)."""
    if isinstance(path, str) and "://" in path:
        import fsspec

        try:
            handle = fsspec.open(path, "rb").open()
        except FileNotFoundError:
            raise FileNotFoundError(f"No decoding results file at {path}.") from None
    else:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"No decoding results file at {path}.")
        with path.open("rb") as f:
            signature = f.read(4)
        handle = path  # h5py reads a path natively, far faster than through a Python file object
    if not isinstance(handle, Path):
        signature = handle.read(4)
        handle.seek(0)
    if signature[:3] == b"CDF":
        return xr.open_dataset(handle, engine="scipy")
    if signature != b"\x89HDF":
        if not isinstance(handle, Path):
            handle.close()
        raise ValueError(
            f"{path} is not a netCDF file (it starts with {signature!r}): it is not decoding results, "
            "or it was cut short; decode again to rewrite it."
        )
    return xr.open_dataset(handle, engine="h5netcdf")


def _format_attrs(keep: Keep, levels: list[str]) -> dict:
    attrs = {"results_format_version": RESULTS_FORMAT_VERSION, **keep.attrs()}
    if levels:
        attrs["state_bins_levels"] = levels
    return attrs


def _encoder(keep: Keep, dtype, summed_shape: tuple[int, ...] | None):
    """Computed rows -> stored rows: summed over the grid states (when ``summed_shape``
    is (n_point, n_grid, *grid)), then quantized or cast."""
    levels = keep.levels

    def encode(values: np.ndarray) -> np.ndarray:
        if summed_shape is not None:
            n_point, n_grid, *grid = summed_shape
            values = values[:, n_point:].reshape(values.shape[0], n_grid, *grid).sum(axis=1)  # NaN outside stays
        if levels is None:
            return values.astype(dtype, copy=False)
        scaled = np.rint(np.clip(values.astype(np.float64) * levels, 0.0, levels))
        return np.where(np.isnan(scaled), _FILL, scaled).astype(np.uint16)

    return encode


def _create_posterior(f, name: str, dims: tuple[str, ...], keep: Keep, dtype):
    shape = tuple(f.dimensions[d].size for d in dims[1:])
    n_time = f.dimensions["time"].size
    options = {"chunks": _chunk_shape((n_time, *shape)), "compression": "gzip", "shuffle": True}
    if keep.max_error is None:
        variable = f.create_variable(name, dims, dtype=dtype, fillvalue=np.nan, compression_opts=_ZLIB_LEVEL["exact"],
                                     **options)  # fmt: skip
        variable.attrs["max_abs_error"] = 0.0
        return variable
    variable = f.create_variable(name, dims, dtype=np.uint16, fillvalue=np.uint16(_FILL),
                                 compression_opts=_ZLIB_LEVEL["bounded"], **options)  # fmt: skip
    variable.attrs["scale_factor"] = np.float32(1.0 / keep.levels)
    variable.attrs["max_abs_error"] = float(keep.max_error)
    return variable


def _create_state_probabilities(f, name: str, values: np.ndarray) -> None:
    f.create_variable(name, ("time", "states"), data=values, chunks=_chunk_shape(values.shape), compression="gzip",
                      compression_opts=4, shuffle=True)  # fmt: skip


def _chunk_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Up to 1024 time bins by about 64 spatial bins, taken from the fastest axes."""
    spatial, room = [], _CHUNK_BINS
    for size in reversed(shape[1:]):
        take = max(1, min(size, room))
        spatial.insert(0, take)
        room = max(1, room // take)
    return (max(1, min(_CHUNK_ROWS, shape[0])), *spatial)


def _time_encoding(ds: xr.Dataset) -> dict:
    """The per-time-bin coordinates (time, interval_labels), compressed."""
    return {
        name: {"zlib": True, "shuffle": True, "complevel": 4, "chunksizes": (min(len(ds[name]), 65536),)}
        for name, variable in ds.coords.items()
        if variable.dims == ("time",) and variable.dtype.kind in "fiu" and len(ds[name])
    }


def _netcdf_attr(value):
    if isinstance(value, (bool, np.bool_)):
        return int(value)
    if isinstance(value, (list, tuple)):
        return np.asarray(value)
    return value

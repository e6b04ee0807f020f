"""What labs measure on a decode, read from a results file a block of time bins at a
time, so memory stays bounded however long the decode (an hour at 2 ms is 1.8 million
bins; only per-bin numbers are held, never the posterior).

    results = load_results(path)                   # lazily
    environment = load_model(model_path).environments
    for block in stream_position_posterior(results):   # (rows, x_position, y_position)
        ...
    measures = analyze(results, environment, position, head_direction)   # (time,) each
    summary = summarize(measures, results)

Per time bin (``analyze``):

- ``most_probable_position``: the centre of the bin where the position posterior
  (summed over the states on the grid) is largest; on a track, its linear position.
- ``decoding_error``: the distance from the tracked position to the most probable
  one, in a 2D environment straight, on a track along the track graph.
- ``ahead_behind_distance``: that distance along the track graph (on a 2D grid: the
  shortest path through the track's interior bins), positive when the decoded position
  lies ahead of the animal, negative behind. Ahead is the way the head points: on a track,
  the end of the animal's edge its head direction points to (the way it moves where
  the head direction is unknown); in 2D, the decoded position is ahead when its
  direction from the animal is within 90 degrees of the head direction.
- ``hpd_area``: the spread of the posterior, the area (cm^2; on a track, the length in
  cm) of its highest-density region of ``mass``: the fewest bins holding at least
  ``mass`` of it, largest first.

Per decode (``summarize``): the medians of those and the fraction of time in each state
(the mean of its acausal probability over the time bins).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd
import xarray as xr
from scipy import sparse
from scipy.sparse import csgraph

from .environment import Environment

ROWS = 4096  # time bins read at once: 4096 x 2 states x 2,500 bins x 4 bytes = 80 MB
HPD_MASS = 0.95
_SOURCE_CACHE = 2048  # 2D shortest-path rows kept (2048 x 2,500 bins x 8 bytes = 40 MB)


def stream_position_posterior(
    results: xr.Dataset, rows: int = ROWS, name: str = "acausal_posterior"
) -> Iterator[xr.DataArray]:
    """The position posterior, summed over the states on the grid, ``rows`` time bins at
    a time: (rows, x_position, y_position) or (rows, position), NaN outside the track.
    Each block is read from the file as it is asked for."""
    states, axes = _grid_layout(results, name)
    time = results["time"].values
    for start in range(0, time.size, rows):
        values = _position_block(results[name], start, start + rows, states)
        shape = (values.shape[0], *(len(a) for a in axes.values()))
        yield xr.DataArray(
            values.reshape(shape), coords={"time": time[start : start + rows], **axes},
            dims=("time", *axes), name=name,
        )  # fmt: skip


@dataclass(frozen=True)
class DecodeSummary:
    """One decode's analyses, as the catalog records them. NaN where nothing was
    measured (no tracked position, no head direction)."""

    median_decoding_error_cm: float
    median_ahead_behind_cm: float
    median_abs_ahead_behind_cm: float
    median_hpd_area: float  # cm^2, or cm on a track
    hpd_mass: float
    state_fractions: dict[str, float]


def analyze(
    results: xr.Dataset,
    environment: Environment,
    position: np.ndarray | None = None,
    head_direction: np.ndarray | None = None,
    mass: float = HPD_MASS,
    rows: int = ROWS,
) -> xr.Dataset:
    """The per-bin measures (module docstring) as an ``xarray.Dataset`` over ``time``.

    position : (n_time, n_dims) the tracked position at the results' time bins (x, y;
        or linear on a track, or x, y on a track, linearized here); NaN where untracked.
        Without it, only ``most_probable_position`` and ``hpd_area``.
    head_direction : (n_time,) radians, as ``arctan2(dy, dx)``; NaN where unknown. Where
        it is unknown, the direction the position moves in stands in for it.
    """
    if not 0.0 < mass <= 1.0:
        raise ValueError(f"mass is {mass}; the highest-density region needs a mass in (0, 1].")
    time = results["time"].values
    n_time = time.size
    centers = environment.place_bin_centers_
    interior = np.flatnonzero(environment.is_track_interior_.ravel())  # the posterior is 0 elsewhere
    cell = _bin_sizes(environment)[interior]
    states, _ = _grid_layout(results, "acausal_posterior")
    tracked = heading = distances = None
    if position is not None:
        position = np.asarray(position, dtype=float).reshape(len(position), -1)
        if position.shape[0] != n_time:
            raise ValueError(f"position has {position.shape[0]} rows but the results have {n_time} time bins.")
        tracked = environment.to_decoding_position(position)
        heading = _heading(position, head_direction, time)
        if environment.is_track:  # where the plane gives no heading, the way along the track it moves
            linear = tracked[:, 0]
            moving = _sign(np.gradient(linear, time)) if n_time > 1 else np.full(n_time, np.nan)
            heading = np.column_stack([heading, moving])
        distances = _TrackDistances(environment) if environment.is_track else _GridDistances(environment)

    decoded_bin = np.empty(n_time, dtype=np.int64)
    hpd = np.empty(n_time)
    error, ahead = np.full(n_time, np.nan), np.full(n_time, np.nan)
    for start in range(0, n_time, rows):
        block = _position_block(results["acausal_posterior"], start, start + rows, states)
        stop = start + block.shape[0]
        block = np.nan_to_num(block)
        decoded_bin[start:stop] = np.where(block.sum(axis=1) > 0, block.argmax(axis=1), -1)  # -1: a skipped bin
        inside = block[:, interior]
        for part in range(0, block.shape[0], 1024):  # the sort's copies stay small
            hpd[start + part : min(start + part + 1024, stop)] = _hpd_area(inside[part : part + 1024], cell, mass)
        if distances is not None:
            here = np.arange(start, stop)[decoded_bin[start:stop] >= 0]
            error[here], ahead[here] = distances.measure(tracked[here], heading[here], decoded_bin[here])
    most_probable = np.where((decoded_bin >= 0)[:, np.newaxis], centers[decoded_bin], np.nan)
    measures = {
        "most_probable_position": (("time", "position_dim"), most_probable),
        "hpd_area": ("time", hpd),
    }
    if tracked is not None:
        measures |= {"decoding_error": ("time", error), "ahead_behind_distance": ("time", ahead)}
    dims = ["linear_position"] if environment.is_track else ["x_position", "y_position"][: centers.shape[1]]
    return xr.Dataset(
        measures, coords={"time": time, "position_dim": dims}, attrs={"hpd_mass": mass}
    )


def state_fractions(results: xr.Dataset) -> dict[str, float]:
    """The fraction of time in each state: the mean over time bins of its acausal
    probability (bins the decode skipped, all NaN, left out)."""
    probabilities = np.asarray(results["acausal_state_probabilities"].values, dtype=float)
    kept = ~np.isnan(probabilities).all(axis=1)
    names = [str(s) for s in results["states"].values]
    if not kept.any():
        return {name: float("nan") for name in names}
    return dict(zip(names, np.nanmean(probabilities[kept], axis=0).tolist()))


def summarize(measures: xr.Dataset, results: xr.Dataset) -> DecodeSummary:
    """The medians of ``analyze``'s measures (over bins where each is defined) and the
    fraction of time in each state."""

    def median(name: str, transform=lambda v: v) -> float:
        if name not in measures:
            return float("nan")
        values = transform(measures[name].values)
        values = values[np.isfinite(values)]
        return float(np.median(values)) if values.size else float("nan")

    return DecodeSummary(
        median_decoding_error_cm=median("decoding_error"),
        median_ahead_behind_cm=median("ahead_behind_distance"),
        median_abs_ahead_behind_cm=median("ahead_behind_distance", np.abs),
        median_hpd_area=median("hpd_area"),
        hpd_mass=float(measures.attrs["hpd_mass"]),
        state_fractions=state_fractions(results),
    )


# ---------------------------------------------------------------- the posterior, by blocks


def _grid_layout(results: xr.Dataset, name: str) -> tuple[tuple[int, int] | None, dict]:
    """(n_point, n_grid) states when the posterior is per state (None when it was kept
    summed), and the grid's axes."""
    posterior = results[name]
    if "state_bins" not in posterior.dims:
        return None, {d: results[d].values for d in posterior.dims[1:]}
    index = posterior.indexes["state_bins"]
    position = np.stack([np.asarray(index.get_level_values(k), dtype=float) for k in range(1, index.nlevels)], axis=1)
    on_grid = ~np.isnan(position).any(axis=1)  # a state of one bin (the detector's Local) has no position
    n_point = int(np.argmax(on_grid)) if on_grid.any() else on_grid.size
    names = list(index.names[1:])
    axes = {n: np.unique(position[on_grid, k]) for k, n in enumerate(names)}
    n_grid = (on_grid.size - n_point) // int(np.prod([len(a) for a in axes.values()]))
    return (n_point, n_grid), axes


def _position_block(posterior: xr.DataArray, start: int, stop: int, states) -> np.ndarray:
    """(rows, n_bins) position posterior of time bins [start, stop), read from the file,
    in float32 (as computed; a bounded file decodes to float64, twice the work after)."""
    values = np.asarray(posterior[start:stop].values, dtype=np.float32)
    values = values.reshape(values.shape[0], -1)
    if states is None:
        return values
    n_point, n_grid = states
    block = values[:, n_point:].reshape(values.shape[0], n_grid, -1)
    return np.where(np.isnan(block).all(axis=1), np.nan, np.nansum(block, axis=1))


def _bin_sizes(environment: Environment) -> np.ndarray:
    """(n_bins,) each bin's area (cm^2), or length on a track (cm)."""
    widths = [np.diff(edges) for edges in environment.edges_]
    return np.prod(np.stack(np.meshgrid(*widths, indexing="ij")), axis=0).ravel()


def _hpd_area(block: np.ndarray, cell: np.ndarray, mass: float) -> np.ndarray:
    """(rows,) the area of the fewest bins, largest first, holding ``mass`` of each row.

    Rows are normalized first: a posterior stored within a bound sums to 1 only within
    that bound times its bins. Bins of one size (a 2D grid) need only the values sorted;
    bins of several sizes (a track's edges) need the order too."""
    uniform = np.allclose(cell, cell[0])
    if uniform:
        ranked = -np.sort(-block, axis=1)
    else:
        order = np.argsort(-block, axis=1)
        ranked = np.take_along_axis(block, order, axis=1)
    total = ranked.sum(axis=1, keepdims=True)
    cumulative = np.cumsum(ranked, axis=1) / np.where(total > 0, total, 1.0)
    # bins before the one that reaches the mass, and that one (a float tolerance keeps
    # an exact mass, e.g. 0.5 + 0.5, from needing one bin more)
    needed = np.minimum((cumulative < mass - 1e-6).sum(axis=1) + 1, block.shape[1])  # an empty row: masked below
    if uniform:
        area = needed * cell[0]
    else:
        area = np.take_along_axis(np.cumsum(cell[order], axis=1), (needed - 1)[:, np.newaxis], axis=1)[:, 0]
    return np.where(total[:, 0] > 0, area, np.nan)


# ---------------------------------------------------------------- heading and distances


def _heading(position: np.ndarray, head_direction, time: np.ndarray) -> np.ndarray:
    """(n_time,) the direction ahead in the plane, radians: the head direction where
    known, else the direction the (x, y) position moves in; NaN where neither is known
    (or only a linear position was given)."""
    n_time = position.shape[0]
    heading = np.full(n_time, np.nan) if head_direction is None else np.asarray(head_direction, dtype=float).copy()
    if heading.shape != (n_time,):
        raise ValueError(f"head_direction has shape {heading.shape}; expected ({n_time},), one per time bin.")
    if n_time > 1 and position.shape[1] >= 2:
        velocity = np.gradient(position[:, :2], time, axis=0)
        moving = np.arctan2(velocity[:, 1], velocity[:, 0])
        moving[~(np.hypot(velocity[:, 0], velocity[:, 1]) > 0)] = np.nan
        heading = np.where(np.isnan(heading), moving, heading)
    return heading


def _sign(values: np.ndarray) -> np.ndarray:
    """+1, -1, or NaN where 0 or unknown."""
    return np.where(values > 0, 1.0, np.where(values < 0, -1.0, np.nan))


class _GridDistances:
    """Shortest paths through a 2D grid's interior bins (8 neighbours, straight-line
    steps), from the animal's bin; rows computed as the animal visits bins, a bounded
    number kept."""

    def __init__(self, environment: Environment):
        shape = environment.centers_shape_
        self.centers = environment.place_bin_centers_
        interior = environment.is_track_interior_.ravel()
        self.index = np.arange(interior.size).reshape(shape)
        self.interior = interior
        self.edges = environment.edges_
        rows, cols = [], []
        for dr, dc in ((0, 1), (1, 0), (1, 1), (1, -1)):
            r0, r1 = max(0, -dr), shape[0] - max(0, dr)
            c0, c1 = max(0, -dc), shape[1] - max(0, dc)
            a = self.index[r0:r1, c0:c1].ravel()
            b = self.index[r0 + dr : r1 + dr, c0 + dc : c1 + dc].ravel()
            both = interior[a] & interior[b]
            rows.append(a[both])
            cols.append(b[both])
        rows, cols = np.concatenate(rows), np.concatenate(cols)
        length = np.linalg.norm(self.centers[rows] - self.centers[cols], axis=1)
        n = interior.size
        self.graph = sparse.coo_matrix((length, (rows, cols)), shape=(n, n)).tocsr()
        self.graph = self.graph + self.graph.T
        self.cache: dict[int, np.ndarray] = {}

    def _bin_of(self, points: np.ndarray) -> np.ndarray:
        """(n,) the bin each point falls in, -1 outside the grid or the interior."""
        out = np.full(points.shape[0], -1)
        ok = ~np.isnan(points).any(axis=1)
        ij = [np.searchsorted(e, points[ok, k], side="right") - 1 for k, e in enumerate(self.edges)]
        inside = np.all([(i >= 0) & (i < len(e) - 1) for i, e in zip(ij, self.edges)], axis=0)
        flat = np.full(ok.sum(), -1)
        flat[inside] = np.ravel_multi_index([i[inside] for i in ij], self.index.shape)
        flat[flat >= 0] = np.where(self.interior[flat[flat >= 0]], flat[flat >= 0], -1)
        out[ok] = flat
        return out

    def _rows(self, sources: np.ndarray) -> np.ndarray:
        """(len(sources), n_bins) path lengths from each of ``sources`` (distinct bins)."""
        new = [int(s) for s in sources if int(s) not in self.cache]
        if len(self.cache) + len(new) > _SOURCE_CACHE:  # start afresh with what this block needs
            self.cache.clear()
            new = [int(s) for s in sources]
        if new:
            for s, row in zip(new, csgraph.dijkstra(self.graph, indices=new)):
                self.cache[s] = row
        return np.stack([self.cache[int(s)] for s in sources])

    def measure(self, tracked: np.ndarray, heading: np.ndarray, decoded: np.ndarray):
        """(error, ahead_behind) per time bin: the straight-line distance to the decoded
        bin's centre, and the path distance through the interior (animal's bin to the
        decoded bin, plus the animal's offset within its bin), signed by the heading."""
        error = np.linalg.norm(self.centers[decoded] - tracked, axis=1)
        source = self._bin_of(tracked)
        path = np.full(tracked.shape[0], np.nan)
        known = source >= 0
        if known.any():
            sources, which = np.unique(source[known], return_inverse=True)
            path[known] = self._rows(sources)[which, decoded[known]]
        # from the animal's own point, not its bin's centre; the decoded bin itself is 0 away
        path = np.where(source == decoded, error, path + np.linalg.norm(self.centers[np.maximum(source, 0)] - tracked, axis=1))
        path[~np.isfinite(path)] = np.nan
        toward = self.centers[decoded] - tracked
        sign = _sign(np.cos(heading) * toward[:, 0] + np.sin(heading) * toward[:, 1])
        sign[error == 0] = 1.0
        return error, sign * path


class _TrackDistances:
    """Distances along a track graph from the animal's point on an edge to each bin:
    within the edge, or out through one of its two nodes."""

    def __init__(self, environment: Environment):
        graph = environment.track_graph
        self.edge_index = environment.bin_edge_index_
        self.offset = environment.bin_edge_offset_
        self.ends, self.lengths = environment.edge_ends()
        along = nx_positions(graph, list(graph.nodes))[self.ends]  # (n_edges, 2 ends, 2 coordinates)
        self.direction = np.arctan2(along[:, 1, 1] - along[:, 0, 1], along[:, 1, 0] - along[:, 0, 0])
        self.node_to_bin = environment.node_bin_distances()
        centers = environment.place_bin_centers_[:, 0]
        self.edge_start = np.array([np.nanmin(centers[self.edge_index == k] - self.offset[self.edge_index == k])
                                    for k in range(len(self.lengths))])  # fmt: skip
        self.bin_edges = environment.edges_[0]

    def locate(self, linear: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(edge, offset) of linear positions; edge -1 off the track or in a gap."""
        b = np.searchsorted(self.bin_edges, linear, side="right") - 1
        ok = ~np.isnan(linear) & (b >= 0) & (b < self.edge_index.size)
        edge = np.full(linear.shape, -1)
        edge[ok] = self.edge_index[b[ok]]
        offset = np.full(linear.shape, np.nan)
        on = edge >= 0
        offset[on] = np.clip(linear[on] - self.edge_start[edge[on]], 0.0, self.lengths[edge[on]])
        return edge, offset

    def measure(self, tracked: np.ndarray, heading: np.ndarray, decoded: np.ndarray):
        """(error, ahead_behind) per time bin, both along the track; ahead is toward the
        end of the animal's edge its heading points to (heading within 90 degrees of the
        edge's direction: its second node). ``heading`` is (n, 2): the angle in the
        plane, and the sign of the linear velocity where the angle is NaN."""
        edge, offset = self.locate(tracked[:, 0])
        n = edge.size
        error, ahead = np.full(n, np.nan), np.full(n, np.nan)
        on = np.flatnonzero(edge >= 0)
        e, o, b = edge[on], offset[on], decoded[on]
        via_start = o + self.node_to_bin[self.ends[e, 0], b]
        via_end = (self.lengths[e] - o) + self.node_to_bin[self.ends[e, 1], b]
        same = self.edge_index[b] == e
        within = np.abs(self.offset[b] - o)
        distance = np.where(same, np.minimum(within, np.minimum(via_start, via_end)), np.minimum(via_start, via_end))
        # +1: the shortest way leaves toward the edge's end node (or lies ahead on the edge)
        toward_end = np.where(same & (within <= np.minimum(via_start, via_end)), self.offset[b] >= o, via_end <= via_start)
        facing = _sign(np.cos(heading[on, 0] - self.direction[e]))
        facing = np.where(np.isnan(facing), heading[on, 1], facing)
        sign = np.where(toward_end, 1.0, -1.0) * facing
        sign[distance == 0] = 1.0
        error[on] = distance
        ahead[on] = sign * distance
        return error, ahead


def nx_positions(graph, nodes) -> np.ndarray:
    """(n_nodes, 2) the nodes' ``pos``."""
    return np.array([graph.nodes[node]["pos"] for node in nodes], dtype=float)


def measures_frame(measures: xr.Dataset) -> pd.DataFrame:
    """The per-bin measures as a table indexed by time (one column per position dim)."""
    frame = pd.DataFrame(index=pd.Index(measures["time"].values, name="time"))
    for k, dim in enumerate(measures["position_dim"].values):
        frame[f"most_probable_{dim}"] = measures["most_probable_position"].values[:, k]
    for name in ("decoding_error", "ahead_behind_distance", "hpd_area"):
        if name in measures:
            frame[name] = measures[name].values
    return frame

"""A decode in the browser: one self-contained HTML file, no server, no network, no
account. It opens from disk or a shared folder, and ``decoding-assets ui`` serves the
same pages to the Dagster UI's links.

2D: the position posterior frame by frame over the environment (track interior
outlined), the animal's position and head direction, the most probable position, a time
slider with play/pause and speed. 1D: the posterior x time image with the linearized
position. Below either, linked traces around the current time: the state probabilities,
speed, and a spike raster by electrode group.

Frames are prepared in the page from compressed data, not drawn here one image per bin:
each frame is the mean posterior over ``frame_s`` (the decode's bins, or coarser so a
long epoch keeps at most ``MAX_FRAMES``), scaled to its own maximum in ``LEVELS``
levels, cropped to the track, and packed ``FRAMES_PER_CHUNK`` frames to a zlib chunk,
each cell's changes from frame to frame in a row, that the page inflates and adds up
when the slider reaches it (``DecompressionStream``, in every current browser).
The posterior is read from the results file a chunk at a time: memory stays bounded.
"""

from __future__ import annotations

import base64
import json
import math
import zlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from .decoder.analyses import stream_position_posterior
from .decoder.environment import Environment
from .files import atomic_write
from .position import GROUP_MAX_GAP_S, interpolate_angle, interpolate_by_time

PAGE_VERSION = 1  # what a page holds and how: pages written before a change are written again
MAX_FRAMES = 50_000
FRAMES_PER_CHUNK = 256
LEVELS = 64  # levels of a frame: 6 bits; a heatmap shows no more, and the file is half of 8 bits'
_ZLIB_LEVEL = 9


@dataclass(frozen=True)
class ViewerSource:
    """What a viewer shows of one decode (or an interval of it)."""

    title: str
    results: xr.Dataset  # as load_results opens it: read a chunk of frames at a time
    environment: Environment
    position: pd.DataFrame  # index time; position_x, position_y (or linear_position), orientation, speed
    spike_times: dict[str, np.ndarray]  # by electrode group name, seconds


def write_viewer(
    path: str | Path, source: ViewerSource, start: float | None = None, stop: float | None = None,
    frame_s: float | None = None,
) -> Path:  # fmt: skip
    """Write the viewer of ``source`` between ``start`` and ``stop`` (seconds, the
    session's clock; default: all of it) to ``path``, atomically."""
    page = viewer_html(source, start, stop, frame_s)
    with atomic_write(path) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return Path(path)


def viewer_html(source: ViewerSource, start: float | None = None, stop: float | None = None,
                frame_s: float | None = None) -> str:  # fmt: skip
    """The page, as text."""
    data = _page_data(source, start, stop, frame_s)
    template = resources.files("decoding_assets").joinpath("viewer.html").read_text(encoding="utf-8")
    payload = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")
    return template.replace("__TITLE__", _escape(source.title)).replace("__DATA__", payload)


def _page_data(source: ViewerSource, start, stop, frame_s) -> dict:
    results, env = source.results, source.environment
    time = results["time"].values
    if time.size == 0:
        raise ValueError(f"{source.title}: the decode has no time bins to show.")
    first = 0 if start is None else int(np.searchsorted(time, start, side="left"))
    last = time.size if stop is None else int(np.searchsorted(time, stop, side="left"))  # [start, stop)
    if last - first < 1:
        raise ValueError(
            f"{source.title}: --start {start} / --stop {stop} select no time bin; the decode covers "
            f"{time[0]:.3f} to {time[-1]:.3f} s. Choose times inside it."
        )
    dt = float(np.median(np.diff(time))) if time.size > 1 else 0.002
    n_bins = last - first
    if frame_s is not None:
        if not frame_s > 0:
            raise ValueError(f"frame_s is {frame_s}; give a positive duration in seconds.")
        per_frame = max(1, int(round(frame_s / dt)))
    else:
        per_frame = max(1, math.ceil(n_bins / MAX_FRAMES))
    n_frames = math.ceil(n_bins / per_frame)
    window = results.isel(time=slice(first, last))
    frame_start = time[first:last:per_frame]
    frame_mid = frame_start + 0.5 * per_frame * dt

    layout = _layout(env)
    chunks = []
    for block in stream_position_posterior(window, rows=per_frame * FRAMES_PER_CHUNK):
        values = block.values.reshape(block.shape[0], -1)[:, layout["cells"]]
        chunks.append(_pack(_along_time(_quantize(_frame_means(values, per_frame)))))

    probabilities = np.asarray(window["acausal_state_probabilities"].values, dtype=float)
    states = _frame_means(probabilities, per_frame)
    position = source.position
    samples = position.index.to_numpy()

    def at_frames(column: str) -> np.ndarray:
        if column not in position:
            return np.full(n_frames, np.nan)
        values = position[column].to_numpy(dtype=float)
        if column == "orientation":
            return interpolate_angle(samples, values, frame_mid, GROUP_MAX_GAP_S)
        return interpolate_by_time(samples, values, frame_mid, GROUP_MAX_GAP_S)

    tracks = {"speed": at_frames("speed")}
    if env.is_track:
        if "linear_position" in position:
            tracks["linear"] = at_frames("linear_position")
        else:
            xy = np.column_stack([at_frames("position_x"), at_frames("position_y")])
            tracks["linear"] = env.to_decoding_position(xy)[:, 0]
    else:
        tracks |= {"x": at_frames("position_x"), "y": at_frames("position_y"), "head": at_frames("orientation")}

    t0, t1 = float(frame_start[0]), float(time[last - 1] + dt)
    spikes = {}
    for name, times in source.spike_times.items():
        times = np.asarray(times, dtype=float)
        inside = times[(times >= t0) & (times < t1)]
        ms = np.round((inside - t0) * 1000.0).astype(np.int64)
        spikes[name] = _pack(np.diff(ms, prepend=0).astype(np.uint32))

    return {
        "title": source.title,
        "kind": "track" if env.is_track else "field",
        "t0": t0,
        "frame_s": per_frame * dt,
        "bin_s": dt,
        "n_frames": n_frames,
        "frames_per_chunk": FRAMES_PER_CHUNK,
        "chunks": chunks,
        "grid": layout["grid"],
        "states": [str(s) for s in window["states"].values],
        "state_probabilities": _pack(np.round(np.nan_to_num(states) * 255).clip(0, 255).astype(np.uint8).T.copy()),
        "tracks": {name: _pack(values.astype(np.float32)) for name, values in tracks.items()},
        "groups": list(spikes),
        "spikes": list(spikes.values()),
        "levels": LEVELS,
        "colormap": _pack(_colormap()),
    }


def _layout(env: Environment) -> dict:
    """The cells shown (the track interior's bounding box, in the results' bin order) and
    how to draw them."""
    interior = np.asarray(env.is_track_interior_, dtype=bool)
    if env.is_track:
        centers = env.place_bin_centers_[:, 0]
        edges = env.edges_[0]
        # where one edge of the track graph ends and the next begins (gaps drawn apart)
        index = env.bin_edge_index_
        breaks = [float(edges[k]) for k in range(1, index.size) if index[k] != index[k - 1]]
        return {
            "cells": np.arange(centers.size),
            "grid": {"n": int(centers.size), "low": float(edges[0]), "high": float(edges[-1]),
                     "interior": _pack(interior.astype(np.uint8)), "breaks": breaks},
        }  # fmt: skip
    rows, cols = np.nonzero(interior)
    i0, i1, j0, j1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    ix, iy = np.meshgrid(np.arange(i0, i1), np.arange(j0, j1), indexing="ij")
    cells = np.ravel_multi_index((ix.ravel(), iy.ravel()), interior.shape)
    x_edges, y_edges = env.edges_[0][i0 : i1 + 1], env.edges_[1][j0 : j1 + 1]
    inside = interior[i0:i1, j0:j1]
    return {
        "cells": cells,
        "grid": {
            "nx": int(i1 - i0), "ny": int(j1 - j0),
            "x_edges": x_edges.tolist(), "y_edges": y_edges.tolist(),
            "interior": _pack(inside.astype(np.uint8)),
            "outline": _outline(inside, x_edges, y_edges),
        },
    }  # fmt: skip


def _outline(inside: np.ndarray, x_edges: np.ndarray, y_edges: np.ndarray) -> list[list[float]]:
    """The track interior's border: [x0, y0, x1, y1] segments between an interior cell
    and one that is not (or the grid's edge)."""
    padded = np.pad(inside, 1)
    segments = []
    for i, j in zip(*np.nonzero(inside)):
        x0, x1, y0, y1 = x_edges[i], x_edges[i + 1], y_edges[j], y_edges[j + 1]
        p, q = i + 1, j + 1
        if not padded[p - 1, q]:
            segments.append([x0, y0, x0, y1])
        if not padded[p + 1, q]:
            segments.append([x1, y0, x1, y1])
        if not padded[p, q - 1]:
            segments.append([x0, y0, x1, y0])
        if not padded[p, q + 1]:
            segments.append([x0, y1, x1, y1])
    return [[round(float(v), 3) for v in s] for s in segments]


def _frame_means(values: np.ndarray, per_frame: int) -> np.ndarray:
    """(rows, n) -> (ceil(rows / per_frame), n): the mean of each frame's bins (NaN
    ignored; a frame of NaN only stays NaN)."""
    rows = values.shape[0]
    if per_frame == 1:
        return values
    pad = -rows % per_frame
    if pad:
        values = np.concatenate([values, np.full((pad, values.shape[1]), np.nan, values.dtype)])
    grouped = values.reshape(-1, per_frame, values.shape[1])
    counts = (~np.isnan(grouped)).sum(axis=1)
    sums = np.nansum(grouped, axis=1)
    return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def _quantize(frames: np.ndarray) -> np.ndarray:
    """Each frame scaled to its own maximum, in ``LEVELS`` levels 0..LEVELS-1 (0 also where
    NaN: off the track or not decoded)."""
    frames = np.nan_to_num(frames, nan=0.0)
    top = frames.max(axis=1, keepdims=True)
    return np.round((LEVELS - 1) * frames / np.where(top > 0, top, 1.0)).clip(0, LEVELS - 1).astype(np.uint8)


def _along_time(levels: np.ndarray) -> np.ndarray:
    """(frames, cells) -> (cells, frames) of each cell's change since the frame before
    (the first frame as it is), modulo 256: neighbouring frames differ little, and a
    cell's run of small changes compresses far better than whole frames."""
    changes = np.diff(levels.astype(np.int16), axis=0, prepend=0) % 256
    return np.ascontiguousarray(changes.astype(np.uint8).T)


def _pack(values: np.ndarray) -> str:
    """zlib-compressed bytes as base64 text (little-endian, as the page reads them)."""
    return base64.b64encode(zlib.compress(np.ascontiguousarray(values).astype(values.dtype.newbyteorder("<")).tobytes(),
                                          _ZLIB_LEVEL)).decode("ascii")  # fmt: skip


def _colormap() -> np.ndarray:
    """(LEVELS, 3) uint8: matplotlib's viridis, for the posterior."""
    from matplotlib import colormaps

    return np.round(colormaps["viridis"](np.linspace(0, 1, LEVELS))[:, :3] * 255).astype(np.uint8)


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")

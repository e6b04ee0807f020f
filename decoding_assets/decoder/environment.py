"""The spatial grid the decoder works on ("environment").

Two kinds, as in MODEL.md:

- a regular grid in 1D or 2D, fit on the positions given to ``fit``;
- a 1D track graph (nodes with (x, y) positions, edges, an edge order and the gaps
  between consecutive edges), onto which 2D positions are linearized.

After ``fit_place_grid`` an environment has:

- ``edges_``: list over dimensions of bin-edge arrays;
- ``centers_shape_``: the grid shape, e.g. (n_x, n_y);
- ``place_bin_centers_``: (n_bins, n_dims), bins flattened in C order;
- ``is_track_interior_``: bool array of shape ``centers_shape_``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import networkx as nx
import numpy as np
from scipy import ndimage


@dataclass
class Environment:
    """A spatial environment, described by how to bin it.

    Parameters
    ----------
    place_bin_size : float
        Largest bin width, cm.
    track_graph : networkx.Graph, optional
        Nodes carry ``pos`` = (x, y); edges carry ``distance``. Makes the environment
        a linearized 1D track.
    edge_order : list of (node, node), optional
        Order in which the edges are laid end to end; defaults to the graph's edge order.
    edge_spacing : float or list of float
        Gap (cm) between consecutive edges in ``edge_order``.
    fill_holes, dilate : bool
        Extra morphology on the inferred interior (2D grids only).
    bin_count_threshold : int
        A bin is interior when more than this many position samples fall in it.
    position_range : list of (low, high), optional
        Grid extent per dimension instead of the positions' extent.
    environment_name : str
    """

    place_bin_size: float = 2.0
    track_graph: nx.Graph | None = None
    edge_order: list[tuple[Any, Any]] | None = None
    edge_spacing: float | list[float] = 0.0
    fill_holes: bool = False
    dilate: bool = False
    bin_count_threshold: int = 0
    position_range: list[tuple[float, float]] | None = None
    environment_name: str = ""

    edges_: list[np.ndarray] = field(default=None, init=False, repr=False)
    centers_shape_: tuple[int, ...] = field(default=None, init=False, repr=False)
    place_bin_centers_: np.ndarray = field(default=None, init=False, repr=False)
    is_track_interior_: np.ndarray = field(default=None, init=False, repr=False)
    # 1D track only: per bin, which edge (index into edge_order, -1 in a gap) and
    # the distance from that edge's first node.
    bin_edge_index_: np.ndarray = field(default=None, init=False, repr=False)
    bin_edge_offset_: np.ndarray = field(default=None, init=False, repr=False)

    @property
    def is_track(self) -> bool:
        return self.track_graph is not None

    @property
    def is_fitted(self) -> bool:
        return self.place_bin_centers_ is not None

    @property
    def axis_centers(self) -> list[np.ndarray]:
        """Bin centres along each grid axis (one array on a track)."""
        return [0.5 * (edges[1:] + edges[:-1]) for edges in self.edges_]

    @property
    def n_position_dims(self) -> int:
        """Dimensions of the decoded position (1 on a track)."""
        return 1 if self.is_track else len(self.edges_)

    def _ordered_edges(self) -> list[tuple[Any, Any]]:
        return list(self.edge_order) if self.edge_order is not None else list(self.track_graph.edges)

    def _edge_spacings(self) -> np.ndarray:
        n_gaps = max(len(self._ordered_edges()) - 1, 0)
        spacing = np.broadcast_to(np.asarray(self.edge_spacing, dtype=float), (n_gaps,))
        return np.array(spacing)

    def linearize(self, position: np.ndarray) -> np.ndarray:
        """(n, 2) positions -> (n, 1) linear positions on the track (NaN stays NaN)."""
        from track_linearization import get_linearized_position

        position = np.asarray(position, dtype=float)
        out = np.full((position.shape[0], 1), np.nan)
        valid = ~np.any(np.isnan(position), axis=1)
        if valid.any():
            out[valid, 0] = get_linearized_position(
                position[valid],
                self.track_graph,
                edge_order=self._ordered_edges(),
                edge_spacing=self.edge_spacing,
            ).linear_position.to_numpy()
        return out

    def to_decoding_position(self, position: np.ndarray) -> np.ndarray:
        """Positions in the coordinates the grid is laid out in: (n, n_position_dims)."""
        position = np.asarray(position, dtype=float)
        if position.ndim == 1:
            position = position[:, np.newaxis]
        if self.is_track:
            if position.shape[1] == 1:
                return position  # already linear
            return self.linearize(position)
        return position

    def fit_place_grid(self, position: np.ndarray, infer_track_interior: bool = True) -> Environment:
        """Lay out the bins (MODEL.md, "The spatial grid").

        Parameters
        ----------
        position : (n_time, n_dims) positions in cm; NaN rows are ignored. For a track,
            (x, y) positions or already-linear (n_time, 1) positions.
        infer_track_interior : mark as interior only bins the animal visited (grids).
        """
        if self.is_track:
            self._fit_track_grid()
        else:
            self._fit_regular_grid(self.to_decoding_position(position), infer_track_interior)
        return self

    def _fit_regular_grid(self, position: np.ndarray, infer_track_interior: bool) -> None:
        position = position[~np.any(np.isnan(position), axis=1)]
        n_dims = position.shape[1]
        if self.position_range is not None:
            low, high = np.asarray(self.position_range, dtype=float).T
        else:
            if position.shape[0] == 0:
                raise ValueError("Cannot lay out the spatial grid: every position sample is NaN.")
            low, high = position.min(axis=0), position.max(axis=0)
        extent = high - low
        if np.any(extent <= 0):
            dim = int(np.argmax(extent <= 0))
            raise ValueError(
                f"Cannot lay out the spatial grid: positions have no extent along dimension "
                f"{dim} (all equal to {low[dim]:g}). Give position_range or more positions."
            )
        n_bins = np.ceil(extent / self.place_bin_size).astype(int)
        edges = [np.linspace(lo, hi, n + 1) for lo, hi, n in zip(low, high, n_bins)]
        if n_dims > 1:
            # one extra bin beyond each side, so the closing below can reach the border
            edges = [np.concatenate([[e[0] - (e[1] - e[0])], e, [e[-1] + (e[1] - e[0])]]) for e in edges]
        centers = [0.5 * (e[1:] + e[:-1]) for e in edges]
        self.edges_ = edges
        self.centers_shape_ = tuple(len(c) for c in centers)
        mesh = np.meshgrid(*centers, indexing="ij")
        self.place_bin_centers_ = np.stack([m.ravel() for m in mesh], axis=1)
        if infer_track_interior:
            self.is_track_interior_ = _infer_interior(
                position, edges, self.bin_count_threshold, self.fill_holes, self.dilate
            )
        else:
            self.is_track_interior_ = np.ones(self.centers_shape_, dtype=bool)

    def _fit_track_grid(self) -> None:
        ordered = self._ordered_edges()
        spacing = self._edge_spacings()
        bin_edges: list[float] = [0.0]
        edge_index: list[int] = []
        edge_offset: list[float] = []
        start = 0.0
        for k, (u, v) in enumerate(ordered):
            if k > 0 and spacing[k - 1] > 0:
                # the gap between two edges is one bin that is never interior
                bin_edges.append(start)
                edge_index.append(-1)
                edge_offset.append(np.nan)
            length = _edge_length(self.track_graph, u, v)
            n = max(int(np.ceil(length / self.place_bin_size)), 1)
            local_edges = np.linspace(0.0, length, n + 1)
            bin_edges.extend((start + local_edges[1:]).tolist())
            edge_index.extend([k] * n)
            edge_offset.extend((0.5 * (local_edges[1:] + local_edges[:-1])).tolist())
            start += length + (spacing[k] if k < len(spacing) else 0.0)
        edges = np.asarray(bin_edges)
        self.edges_ = [edges]
        self.centers_shape_ = (len(edges) - 1,)
        self.place_bin_centers_ = (0.5 * (edges[1:] + edges[:-1]))[:, np.newaxis]
        self.bin_edge_index_ = np.asarray(edge_index)
        self.bin_edge_offset_ = np.asarray(edge_offset)
        self.is_track_interior_ = self.bin_edge_index_ >= 0

    def edge_ends(self) -> tuple[np.ndarray, np.ndarray]:
        """The linearized edges (``edge_order``) as (n_edges, 2) numbers of their start
        and end nodes (in ``track_graph.nodes`` order) and (n_edges,) their lengths."""
        ordered = self._ordered_edges()
        number = {node: k for k, node in enumerate(self.track_graph.nodes)}
        ends = np.array([[number[u], number[v]] for u, v in ordered]).reshape(-1, 2)
        return ends, np.array([_edge_length(self.track_graph, u, v) for u, v in ordered])

    def node_bin_distances(self) -> np.ndarray:
        """Shortest-path distance along the track graph from each of its nodes (in
        ``track_graph.nodes`` order) to each bin centre, (n_nodes, n_bins): out through
        the bin's edge's start node or its end node. Gap bins are at infinite distance."""
        nodes = list(self.track_graph.nodes)
        number = {node: k for k, node in enumerate(nodes)}
        between = np.full((len(nodes), len(nodes)), np.inf)  # shortest paths between the graph's nodes
        for source, row in nx.all_pairs_dijkstra_path_length(self.track_graph, weight="distance"):
            for target, length in row.items():
                between[number[source], number[target]] = length
        index, offset = self.bin_edge_index_, self.bin_edge_offset_
        on_track = index >= 0
        ends, lengths = self.edge_ends()
        ends = ends[index[on_track]]
        distance = np.full((len(nodes), index.size), np.inf)
        distance[:, on_track] = np.minimum(
            between[:, ends[:, 0]] + offset[on_track],
            between[:, ends[:, 1]] + (lengths[index[on_track]] - offset[on_track]),
        )
        return distance

    def track_bin_distances(self) -> np.ndarray:
        """Shortest-path distance along the track graph between bin centres, (n_bins, n_bins).

        Gap bins are at infinite distance from everything. Two bins on one edge are
        |offset difference| apart; otherwise the path leaves through an end of one edge
        and goes on to the other bin (``node_bin_distances``).
        """
        from_node = self.node_bin_distances()
        index, offset = self.bin_edge_index_, self.bin_edge_offset_
        on_track = np.flatnonzero(index >= 0)
        ends, lengths = self.edge_ends()
        # each bin's two ways off its edge: through its start node, and through its end node
        ends = ends[index[on_track]]
        to_ends = np.column_stack([offset[on_track], lengths[index[on_track]] - offset[on_track]])
        best = np.minimum(
            to_ends[:, 0, np.newaxis] + from_node[np.ix_(ends[:, 0], on_track)],
            to_ends[:, 1, np.newaxis] + from_node[np.ix_(ends[:, 1], on_track)],
        )
        same_edge = index[on_track][:, np.newaxis] == index[on_track][np.newaxis, :]
        along = np.abs(offset[on_track][:, np.newaxis] - offset[on_track][np.newaxis, :])
        best = np.where(same_edge, np.minimum(best, along), best)
        distance = np.full((len(index), len(index)), np.inf)
        distance[np.ix_(on_track, on_track)] = best
        return distance

    def to_dict(self) -> dict:
        """Plain-JSON description (not the fitted grid)."""
        graph = None
        if self.track_graph is not None:
            graph = {
                "nodes": [
                    {"id": _json_node(n), "pos": [float(p) for p in d["pos"]]}
                    for n, d in self.track_graph.nodes(data=True)
                ],
                "edges": [[_json_node(u), _json_node(v)] for u, v in self.track_graph.edges],
            }
        return {
            "place_bin_size": float(self.place_bin_size),
            "track_graph": graph,
            "edge_order": None if self.edge_order is None else [[_json_node(u), _json_node(v)] for u, v in self.edge_order],
            "edge_spacing": np.asarray(self.edge_spacing, dtype=float).tolist(),
            "fill_holes": bool(self.fill_holes),
            "dilate": bool(self.dilate),
            "bin_count_threshold": int(self.bin_count_threshold),
            "position_range": None if self.position_range is None else np.asarray(self.position_range, dtype=float).tolist(),
            "environment_name": self.environment_name,
        }

    @classmethod
    def from_dict(cls, data: dict) -> Environment:
        data = dict(data)
        unknown = set(data) - {f for f in cls.__dataclass_fields__ if not f.endswith("_")}
        if unknown:
            raise ValueError(f"Unknown environment parameter(s): {sorted(unknown)}")
        graph = data.pop("track_graph", None)
        if graph is not None:
            from track_linearization import make_track_graph

            ids = [n["id"] for n in graph["nodes"]]
            position_of = {n["id"]: tuple(n["pos"]) for n in graph["nodes"]}
            if ids != list(range(len(ids))):
                raise ValueError("Track graph nodes must be numbered 0..n-1 in order.")
            data["track_graph"] = make_track_graph([position_of[i] for i in ids], [tuple(e) for e in graph["edges"]])
        if data.get("edge_order") is not None:
            data["edge_order"] = [tuple(e) for e in data["edge_order"]]
        return cls(**data)


def _json_node(node: Any) -> Any:
    return int(node) if isinstance(node, (int, np.integer)) else node


def _edge_length(graph: nx.Graph, u: Any, v: Any) -> float:
    data = graph.edges[u, v]
    if "distance" in data:
        return float(data["distance"])
    return float(np.linalg.norm(np.subtract(graph.nodes[u]["pos"], graph.nodes[v]["pos"])))


def _infer_interior(
    position: np.ndarray,
    edges: list[np.ndarray],
    bin_count_threshold: int,
    fill_holes: bool,
    dilate: bool,
) -> np.ndarray:
    counts, _ = np.histogramdd(position, bins=edges)
    interior = counts > bin_count_threshold
    if position.shape[1] > 1:
        cross = ndimage.generate_binary_structure(position.shape[1], 1)
        interior = ndimage.binary_closing(interior, structure=cross)
        if fill_holes:
            interior = ndimage.binary_fill_holes(interior)
        if dilate:
            interior = ndimage.binary_dilation(interior)
        for axis in range(interior.ndim):
            index = [slice(None)] * interior.ndim
            index[axis] = -1
            interior[tuple(index)] = False
    return interior.astype(bool)

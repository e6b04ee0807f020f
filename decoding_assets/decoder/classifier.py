"""``ContFragClusterlessClassifier``: the continuous / fragmented clusterless decoder.

Same constructor, ``fit``, ``predict`` and ``estimate_parameters`` arguments, defaults
and result layout as ``non_local_detector``'s class of that name (MODEL.md), so code
written against it ports by changing the import. Model parameters round-trip through
plain JSON (``to_dict`` / ``from_dict``); a fitted model saves to a versioned netCDF
file (``save_model`` / ``load_model``).
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import warnings
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr
from tqdm.auto import tqdm

from ..files import atomic_write
from . import inference
from . import likelihood as lik
from .environment import Environment
from .results import KEEP_EVERYTHING, STATE_NAMES, Keep, make_results, streaming_results
from .transitions import make_transitions

MODEL_FORMAT_VERSION = 1
DEFAULT_CLUSTERLESS_ALGORITHM_PARAMS = {
    "position_std": 6.0,
    "waveform_std": 24.0,
    "block_size": 10_000,
    "disable_progress_bar": False,
}
# Largest block of decoding spikes per matrix product, whatever block_size says:
# beyond this the product is no faster and only uses more memory.
_MAX_SPIKE_BLOCK = 512
# Bytes of log likelihood per chunk of time, and of posterior per filter/smoother call.
_CHUNK_BYTES = 128 * 2**20
_STEP_BYTES = 16 * 2**20


class ContFragClusterlessClassifier:
    """Clusterless decoder with a Continuous (random walk) and a Fragmented (uniform) state.

    Parameters
    ----------
    environments : Environment or [Environment]
        The spatial grid: ``Environment(place_bin_size=2.0)`` or a 1D track graph.
    clusterless_algorithm_params : dict
        ``position_std`` (cm), ``waveform_std`` (feature units, scalar or one per
        feature), ``block_size`` (decoding spikes per block, an upper bound), and
        ``disable_progress_bar``.
    infer_track_interior : bool
        Interior bins are those the animal visited (else every bin).
    movement_var : float
        Random-walk variance per time bin, cm^2.
    discrete_transition_diag : float
        Probability of staying in the same discrete state from one bin to the next.
    discrete_initial_conditions : (2,) probabilities of starting Continuous / Fragmented.
    discrete_transition_concentration : float
        Dirichlet concentration of the EM update of the discrete transitions.
    sampling_frequency : float
        Decoding time bins per second.
    dtype : "float32" or "float64"
    device : None, "cpu", "gpu", "gpu:1", an integer index or a ``jax.Device``
        Where to compute; None is JAX's default device.
    """

    def __init__(
        self,
        environments: Environment | list[Environment] | None = None,
        clusterless_algorithm_params: dict | None = None,
        *,
        infer_track_interior: bool = True,
        movement_var: float = 6.0,
        discrete_transition_diag: float = 0.98,
        discrete_initial_conditions: tuple[float, float] = (0.5, 0.5),
        discrete_transition_concentration: float = 1.1,
        sampling_frequency: float = 500.0,
        dtype: str = "float32",
        device=None,
    ):
        if environments is None:
            environments = Environment()
        if isinstance(environments, (list, tuple)):
            if len(environments) != 1:
                raise ValueError(f"Exactly one environment is supported; got {len(environments)}.")
            environments = environments[0]
        if not isinstance(environments, Environment):
            raise TypeError(f"environments must be an Environment, not {type(environments).__name__}.")
        params = dict(DEFAULT_CLUSTERLESS_ALGORITHM_PARAMS)
        unknown = set(clusterless_algorithm_params or {}) - set(params)
        if unknown:
            raise ValueError(
                f"Unknown clusterless_algorithm_params {sorted(unknown)}; known: {sorted(params)}."
            )
        params.update(clusterless_algorithm_params or {})
        _check_positive("position_std", params["position_std"])
        _check_positive("waveform_std", params["waveform_std"])
        if int(params["block_size"]) < 1:
            raise ValueError(f"block_size must be a positive integer, got {params['block_size']!r}.")
        _check_positive("movement_var", movement_var)
        _check_positive("sampling_frequency", sampling_frequency)
        if not 0.0 <= discrete_transition_diag <= 1.0:
            raise ValueError(f"discrete_transition_diag must be in [0, 1], got {discrete_transition_diag!r}.")
        initial = np.asarray(discrete_initial_conditions, dtype=float)
        if initial.shape != (2,) or np.any(initial < 0) or not np.isclose(initial.sum(), 1.0):
            raise ValueError(
                f"discrete_initial_conditions must be two probabilities summing to 1, got {discrete_initial_conditions!r}."
            )
        if discrete_transition_concentration < 1.0:
            raise ValueError("discrete_transition_concentration must be >= 1 (a Dirichlet MAP needs it).")
        if dtype not in ("float32", "float64"):
            raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}.")

        self.environments = environments
        self.clusterless_algorithm_params = params
        self.infer_track_interior = bool(infer_track_interior)
        self.movement_var = float(movement_var)
        self.discrete_transition_diag = float(discrete_transition_diag)
        self.discrete_initial_conditions = tuple(float(p) for p in initial)
        self.discrete_transition_concentration = float(discrete_transition_concentration)
        self.sampling_frequency = float(sampling_frequency)
        self.dtype = dtype
        self.device = device

    # ------------------------------------------------------------------ parameters

    @property
    def environment(self) -> Environment:
        return self.environments

    def to_dict(self) -> dict:
        """The model parameters as plain JSON-serializable data (no fitted state)."""
        params = dict(self.clusterless_algorithm_params)
        params["waveform_std"] = _json_number(params["waveform_std"])
        params["position_std"] = _json_number(params["position_std"])
        params["block_size"] = int(params["block_size"])
        params["disable_progress_bar"] = bool(params["disable_progress_bar"])
        return {
            "environments": self.environments.to_dict(),
            "clusterless_algorithm_params": params,
            "infer_track_interior": self.infer_track_interior,
            "movement_var": self.movement_var,
            "discrete_transition_diag": self.discrete_transition_diag,
            "discrete_initial_conditions": list(self.discrete_initial_conditions),
            "discrete_transition_concentration": self.discrete_transition_concentration,
            "sampling_frequency": self.sampling_frequency,
            "dtype": self.dtype,
        }

    @classmethod
    def from_dict(cls, data: dict, device=None) -> ContFragClusterlessClassifier:
        """Rebuild a model from ``to_dict()`` output (unknown keys are an error)."""
        data = dict(data)
        known = {
            "environments", "clusterless_algorithm_params", "infer_track_interior", "movement_var",
            "discrete_transition_diag", "discrete_initial_conditions",
            "discrete_transition_concentration", "sampling_frequency", "dtype",
        }  # fmt: skip
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"Unknown decoding parameter(s) {sorted(unknown)}; known: {sorted(known)}.")
        environment = data.pop("environments", None)
        if environment is not None:
            environment = Environment.from_dict(environment)
        return cls(environments=environment, device=device, **data)

    # ------------------------------------------------------------------ fit

    def fit(
        self,
        position_time: np.ndarray,
        position: np.ndarray,
        spike_times: list[np.ndarray],
        spike_waveform_features: list[np.ndarray],
        is_training: np.ndarray | None = None,
    ) -> ContFragClusterlessClassifier:
        """Lay out the grid and fit the encoding model.

        position_time : (n_pos,) s; position : (n_pos,) or (n_pos, n_dims) cm, NaN where
        tracking was lost; spike_times[e] : (n_e,) s; spike_waveform_features[e] :
        (n_e, n_features); is_training : (n_pos,) bool, the encoding period (default all).
        """
        position_time, position = _check_position(position_time, position)
        n_pos = position_time.shape[0]
        if is_training is None:
            is_training = np.ones(n_pos, dtype=bool)
        is_training = np.asarray(is_training).squeeze()
        if is_training.shape != (n_pos,):
            raise ValueError(f"is_training has {is_training.size} entries but there are {n_pos} position samples.")
        is_training = is_training.astype(bool)
        spike_times, marks = _check_spikes(spike_times, spike_waveform_features)
        env = self.environments
        if env.is_track and position.shape[1] not in (1, 2):
            raise ValueError(f"On a track, position must be (n, 2) or linear (n, 1); got {position.shape[1]} columns.")

        env.fit_place_grid(position, infer_track_interior=self.infer_track_interior)
        axis_centers = env.axis_centers
        position_std = self._position_std()

        tracked = ~np.any(np.isnan(position), axis=1)
        position_time, position, is_training = position_time[tracked], position[tracked], is_training[tracked]
        if not is_training.any():
            raise ValueError("No encoding data: is_training selects no position sample with a tracked position.")
        train_time, train_position = position_time[is_training], position[is_training]
        n_encoding_bins = int((train_time[-1] - train_time[0]) * self.sampling_frequency)
        if n_encoding_bins < 1:
            raise ValueError("The encoding period is shorter than one decoding time bin.")
        in_window = _encoding_windows(position_time, is_training)
        waveform_std = self.clusterless_algorithm_params["waveform_std"]

        dtype = self._jnp_dtype()
        disable = bool(self.clusterless_algorithm_params["disable_progress_bar"])
        with self._compute_context():
            occupancy = lik.kernel_density(env.to_decoding_position(train_position), axis_centers, position_std, dtype)
            encodings, summed_gpi = [], np.zeros(occupancy.shape[0])
            for e in tqdm(range(len(spike_times)), desc="Encoding models", unit="electrode", disable=disable):
                times = spike_times[e]
                keep = in_window(times) & (times >= train_time[0]) & (times <= train_time[-1])
                at_spike = np.column_stack(
                    [np.interp(times[keep], train_time, train_position[:, d]) for d in range(train_position.shape[1])]
                )
                encoding = lik.ElectrodeEncoding(
                    positions=env.to_decoding_position(at_spike).reshape(-1, len(position_std)),
                    marks=marks[e][keep],
                    mean_rate=keep.sum() / n_encoding_bins,
                )
                _check_waveform_std(waveform_std, encoding.marks.shape[1], e)
                encodings.append(encoding)
                summed_gpi += lik.ground_process_intensity(encoding, occupancy, axis_centers, position_std, dtype)

        n_bins = occupancy.shape[0]
        interior = env.is_track_interior_.ravel()
        if not interior.any():
            raise ValueError("The spatial grid has no interior bin: check the positions and place_bin_size.")
        self.occupancy_ = occupancy
        self.encodings_ = encodings
        self.summed_ground_process_intensity_ = summed_gpi
        self.initial_conditions_ = np.asarray(self.discrete_initial_conditions)[:, np.newaxis] * (
            interior / interior.sum()
        )[np.newaxis, :]
        d = self.discrete_transition_diag
        self.discrete_state_transitions_ = np.array([[d, 1 - d], [1 - d, d]])
        self.n_bins_ = n_bins
        return self

    # ------------------------------------------------------------------ predict

    def predict(
        self,
        spike_times: list[np.ndarray],
        spike_waveform_features: list[np.ndarray],
        time: np.ndarray,
        position: np.ndarray | None = None,
        position_time: np.ndarray | None = None,
        is_missing: np.ndarray | None = None,
    ) -> xr.Dataset:
        """Decode: the causal and acausal posteriors over (state, position) per time bin.

        time : (n_time,) decoding bin start times (strictly increasing). A spike at s
        falls in bin i when time[i] <= s < time[i+1]; the last bin lasts
        1 / sampling_frequency. is_missing : (n_time,) bins whose spikes are ignored.
        position : optional (n_time, n_dims) tracked position at ``time``; bins where it
        is NaN are treated as missing (as in the reference). ``position_time`` is
        accepted for compatibility and not used.
        """
        time, is_missing, spike_times, marks = self._decoding_inputs(
            time, spike_times, spike_waveform_features, is_missing, position
        )
        decoded = self._decode(time, spike_times, marks, is_missing, ll_cache=None)
        return self._results(time, decoded, [decoded["marginal_log_likelihood"]])

    def predict_to_file(
        self,
        path: str | os.PathLike,
        spike_times: list[np.ndarray],
        spike_waveform_features: list[np.ndarray],
        time: np.ndarray,
        is_missing: np.ndarray | None = None,
        interval_labels: np.ndarray | None = None,
        attrs: dict | None = None,
        keep: Keep = KEEP_EVERYTHING,
    ) -> Path:
        """``predict``, writing the results to a netCDF file as it goes instead of holding
        them: memory stays bounded however long the session. The file has
        ``save_results``'s format and appears only once complete; open it with
        ``load_results``.

        keep : what the file keeps (``Keep``; default: everything, exactly). The exact
            causal posterior, which the smoother reads back, goes meanwhile to an
            uncompressed temporary file beside ``path`` (n_time x 2 x interior bins x 4
            bytes), deleted at the end.

        interval_labels : optional (n_time,) integers; each run of equal labels is
            decoded on its own (from the initial conditions), as separate intervals
            are, into its rows of the one file, and stored as ``interval_labels``.
        attrs : extra attributes for the file.
        """
        time, is_missing, spike_times, marks = self._decoding_inputs(time, spike_times, spike_waveform_features, is_missing)
        n_time = time.shape[0]
        labels = np.zeros(n_time, dtype=np.int64) if interval_labels is None else np.asarray(interval_labels)
        if labels.shape != (n_time,):
            raise ValueError(f"interval_labels has {labels.size} entries but time has {n_time} bins.")
        bounds = [0, *(np.flatnonzero(np.diff(labels)) + 1), n_time]
        state = {k: np.empty((n_time, 2)) for k in ("acausal_state_probabilities", "causal_state_probabilities")}
        marginal = 0.0
        with streaming_results(path, time, self.environments, self._out_dtype, keep, labels) as (causal, acausal, finish):
            for start, stop in zip(bounds[:-1], bounds[1:]):
                decoded = self._decode(
                    time[start:stop], spike_times, marks, is_missing[start:stop], None,
                    _Rows(causal, start), _Rows(acausal, start),
                )  # fmt: skip
                for key in state:
                    state[key][start:stop] = decoded[key]
                marginal += decoded["marginal_log_likelihood"]
            finish(
                state,
                {
                    **(attrs or {}),
                    "marginal_log_likelihood": marginal,
                    "marginal_log_likelihoods": [marginal],
                    "device": self.device_,
                },
            )
        return Path(path)

    def compute_log_likelihood(
        self,
        time: np.ndarray,
        spike_times: list[np.ndarray],
        spike_waveform_features: list[np.ndarray],
        is_missing: np.ndarray | None = None,
    ) -> np.ndarray:
        """LL_i(x) of MODEL.md for every time bin and spatial bin: (n_time, n_bins),
        NaN outside the track. Holds all of it in memory: for inspection, not decoding."""
        time, is_missing, spike_times, marks = self._decoding_inputs(time, spike_times, spike_waveform_features, is_missing)
        n_time = time.shape[0]
        with self._compute_context():
            dtype = self._jnp_dtype()
            spikes = self._prepare_decoding_spikes(time, spike_times, marks, dtype)
            with tqdm(total=len(spike_times), disable=True) as progress:
                inside = np.asarray(self._log_likelihood_chunk(0, n_time, n_time, spikes, is_missing, dtype, progress))
        ll = np.full((n_time, self.n_bins_), np.nan)
        ll[:, self.environments.is_track_interior_.ravel()] = inside
        return ll

    def estimate_parameters(
        self,
        position_time: np.ndarray,
        position: np.ndarray,
        spike_times: list[np.ndarray],
        spike_waveform_features: list[np.ndarray],
        time: np.ndarray,
        is_missing: np.ndarray | None = None,
        is_training: np.ndarray | None = None,
        estimate_initial_conditions: bool = True,
        estimate_discrete_transition: bool = True,
        max_iter: int = 20,
        tolerance: float = 1e-4,
    ) -> xr.Dataset:
        """Fit, then re-estimate the discrete transitions and initial conditions by EM.

        E step: the filter and smoother. M step: the discrete transition matrix from the
        expected transition counts between discrete states, computed as the reference
        does from the per-state causal, predicted and acausal probabilities,

            xi[s, s'] = sum_t D[s, s'] causal_t(s) acausal_{t+1}(s') / predicted_{t+1}(s'),

        with a Dirichlet prior (concentration ``discrete_transition_concentration``):
        D[s, :] ∝ xi[s, :] + concentration - 1; the initial conditions are the first
        smoothed bin. Stops when the relative change of the marginal log likelihood is
        below ``tolerance`` or after ``max_iter`` iterations. The log likelihood is
        computed once and kept in memory for the iterations.

        Returns the results of the last E step; ``marginal_log_likelihoods`` lists
        every iteration's.
        """
        if max_iter < 1:
            raise ValueError("max_iter must be at least 1.")
        self.fit(position_time, position, spike_times, spike_waveform_features, is_training=is_training)
        time, is_missing, spike_times, marks = self._decoding_inputs(time, spike_times, spike_waveform_features, is_missing)
        cache: dict = {}
        history: list[float] = []
        decoded = {"causal_posterior": None, "acausal_posterior": None}
        while True:
            # each iteration overwrites the previous one's posteriors
            decoded = self._decode(
                time, spike_times, marks, is_missing, cache, decoded["causal_posterior"], decoded["acausal_posterior"]
            )
            history.append(decoded["marginal_log_likelihood"])
            converged = len(history) > 1 and _relative_change(history[-1], history[-2]) < tolerance
            if converged or len(history) >= max_iter:
                return self._results(time, decoded, history)
            if estimate_discrete_transition:
                self.discrete_state_transitions_ = _discrete_transition_update(
                    self.discrete_state_transitions_,
                    decoded["causal_state_probabilities"],
                    decoded["predicted_state_probabilities"],
                    decoded["acausal_state_probabilities"],
                    self.discrete_transition_concentration,
                )
            if estimate_initial_conditions:
                first = np.asarray(decoded["acausal_posterior"][0], dtype=np.float64).reshape(2, -1)
                self.initial_conditions_ = np.nan_to_num(first, nan=0.0)

    # ------------------------------------------------------------------ core

    def _results(self, time, decoded, history) -> xr.Dataset:
        results = make_results(
            time,
            self.environments,
            decoded["acausal_posterior"],
            decoded["causal_posterior"],
            decoded["acausal_state_probabilities"],
            decoded["causal_state_probabilities"],
            history,
        )
        results.attrs["device"] = self.device_
        return results

    def _decode(self, time, spike_times, marks, is_missing, ll_cache, causal_out=None, acausal_out=None) -> dict:
        """Filter then smooth, one chunk of time at a time.

        The posteriors are written to ``causal_out`` and ``acausal_out``: anything
        sliceable of shape (n_time, 2 * n_bins) (NumPy arrays, HDF5 variables); new
        NumPy arrays if None. The smoother reads the causal posterior back from
        ``causal_out``, so device memory holds one chunk at a time whatever the length.
        Returns the two sinks, the per-state probabilities (n_time, 2) (causal, acausal,
        and the one-step predicted ones) and the marginal log likelihood.
        """
        env = self.environments
        grid = env.centers_shape_
        n_bins = self.n_bins_
        n_time = time.shape[0]
        out_dtype = self._out_dtype
        if causal_out is None:
            causal_out = np.empty((n_time, 2 * n_bins), dtype=out_dtype)
        if acausal_out is None:
            acausal_out = np.empty((n_time, 2 * n_bins), dtype=out_dtype)
        step, span = _chunk_lengths(n_time, n_bins, int(env.is_track_interior_.sum()))
        state = {k: np.empty((n_time, 2)) for k in ("causal", "acausal", "predicted")}
        disable = bool(self.clusterless_algorithm_params["disable_progress_bar"])
        n_spans = -(-n_time // span)

        with self._compute_context():
            dtype = self._jnp_dtype()
            transitions = make_transitions(env, self.movement_var, self.discrete_state_transitions_, dtype)
            interior_index = jnp.asarray(np.flatnonzero(env.is_track_interior_.ravel()))
            spikes = self._prepare_decoding_spikes(time, spike_times, marks, dtype)
            prior = jnp.asarray(self.initial_conditions_.reshape(2, *grid), dtype=dtype)
            log_marginal = jnp.zeros((), dtype)
            with tqdm(total=n_spans * len(spike_times), desc="Likelihood", unit="electrode", disable=disable) as bar:
                for span_start in range(0, n_time, span):
                    span_stop = min(span_start + span, n_time)
                    if ll_cache is not None and span_start in ll_cache:
                        ll = jnp.asarray(ll_cache[span_start])
                        bar.update(len(spike_times))
                    else:
                        ll = self._log_likelihood_chunk(span_start, span_stop, span, spikes, is_missing, dtype, bar)
                        if ll_cache is not None:
                            ll_cache[span_start] = np.asarray(ll)
                    for start in range(span_start, span_stop, step):
                        stop = min(start + step, n_time)
                        offset = start - span_start
                        (prior, chunk_marginal), (causal, predicted) = inference.filter_chunk(
                            transitions,
                            prior,
                            _on_grid(ll[offset : offset + step], interior_index, grid),
                            jnp.arange(start, start + step) < n_time,
                        )
                        log_marginal = log_marginal + chunk_marginal
                        flat, state_probabilities = _to_output(causal, transitions.interior)
                        causal_out[start:stop] = np.asarray(flat)[: stop - start]
                        state["causal"][start:stop] = np.asarray(state_probabilities)[: stop - start]
                        state["predicted"][start:stop] = np.asarray(predicted)[: stop - start]

            acausal_next = jnp.zeros((2, *grid), dtype=dtype)
            padded = np.zeros((step, 2 * n_bins), dtype=out_dtype)  # the last, short chunk
            for start in reversed(range(0, n_time, step)):
                stop = min(start + step, n_time)
                if stop - start == step:
                    causal = causal_out[start:stop]
                else:
                    padded[: stop - start] = causal_out[start:stop]
                    causal = padded
                index = np.arange(start, start + step)
                acausal_next, acausal = inference.smoother_chunk(
                    transitions,
                    acausal_next,
                    _from_output(jnp.asarray(causal), grid),
                    jnp.asarray(index == n_time - 1),
                    jnp.asarray(index < n_time),
                )
                flat, state_probabilities = _to_output(acausal, transitions.interior)
                acausal_out[start:stop] = np.asarray(flat)[: stop - start]
                state["acausal"][start:stop] = np.asarray(state_probabilities)[: stop - start]
            log_marginal = float(log_marginal)
        self.device_ = str(self._device())
        return {
            "causal_posterior": causal_out,
            "acausal_posterior": acausal_out,
            "causal_state_probabilities": state["causal"],
            "acausal_state_probabilities": state["acausal"],
            "predicted_state_probabilities": state["predicted"],
            "marginal_log_likelihood": log_marginal,
        }

    def _prepare_decoding_spikes(self, time, spike_times, marks, dtype) -> list[dict]:
        """Per electrode: time-bin index of each in-range spike, marks scaled by
        waveform_std and centred on the encoding marks, and the encoding arrays."""
        edges_end = time[-1] + 1.0 / self.sampling_frequency
        waveform_std = self.clusterless_algorithm_params["waveform_std"]
        # every electrode padded to one size: one compiled likelihood for all of them
        n_padded = lik.encoding_bucket(max((e.marks.shape[0] for e in self.encodings_), default=1))
        prepared = []
        for e, encoding in enumerate(self.encodings_):
            n_features = encoding.marks.shape[1]
            std = np.broadcast_to(np.asarray(waveform_std, dtype=float), (n_features,))
            center = encoding.marks.mean(axis=0) if encoding.marks.shape[0] else np.zeros(n_features)
            times = spike_times[e]
            in_range = (times >= time[0]) & (times < edges_end)
            bins = np.searchsorted(time, times[in_range], side="right") - 1
            item = {
                "bins": bins,
                "marks": (marks[e][in_range] - center) / std,
                "n_encoding": encoding.marks.shape[0],
            }
            if item["n_encoding"]:
                enc_marks, valid = lik._pad_rows((encoding.marks - center) / std, n_padded)
                enc_positions, _ = lik._pad_rows(encoding.positions, n_padded)
                item["encoding_marks"] = jnp.asarray(enc_marks, dtype=dtype)
                item["encoding_valid"] = jnp.asarray(valid)
                item["encoding_positions"] = jnp.asarray(enc_positions, dtype=dtype)
                item["log_scale"] = jnp.asarray(
                    np.log(encoding.mean_rate / item["n_encoding"]) - np.sum(np.log(std * np.sqrt(2 * np.pi))),
                    dtype=dtype,
                )
            prepared.append(item)
        return prepared

    def _log_likelihood_chunk(self, start, stop, chunk, spikes, is_missing, dtype, progress) -> jnp.ndarray:
        """LL at interior bins for time bins [start, stop), padded to ``chunk`` rows:
        (chunk, n_interior). Bins outside the track carry no probability, so the
        likelihood is never computed there."""
        env = self.environments
        interior = env.is_track_interior_.ravel()
        interior_index = jnp.asarray(np.flatnonzero(interior))
        axis_centers = tuple(jnp.asarray(c, dtype=dtype) for c in env.axis_centers)
        position_std = jnp.asarray(self._position_std(), dtype=dtype)
        occupancy = self.occupancy_[interior]
        with np.errstate(divide="ignore"):
            log_occupancy = jnp.asarray(np.where(occupancy > 0, np.log(occupancy), np.inf), dtype=dtype)
        ground = jnp.asarray(self.summed_ground_process_intensity_[interior], dtype=dtype)
        ll = jnp.zeros((chunk, int(interior.sum())), dtype=dtype) - ground
        max_block = min(int(self.clusterless_algorithm_params["block_size"]), _MAX_SPIKE_BLOCK)
        for item in spikes:
            lo, hi = np.searchsorted(item["bins"], [start, stop])
            if hi > lo:
                kernel = None
                if item["n_encoding"]:
                    kernel = _interior_columns(
                        lik.position_kernel(item["encoding_positions"], axis_centers, position_std), interior_index
                    )
                for offset, size in lik.spike_blocks(hi - lo, max_block):
                    rows = slice(lo + offset, min(lo + offset + size, hi))
                    n = rows.stop - rows.start
                    bins = np.full(size, chunk, dtype=np.int32)  # padding rows fall outside the chunk
                    bins[:n] = item["bins"][rows] - start
                    if kernel is None:
                        ll = lik.add_constant_spike_terms(ll, jnp.asarray(bins))
                        continue
                    block_marks = np.zeros((size, item["marks"].shape[1]))
                    block_marks[:n] = item["marks"][rows]
                    ll = lik.add_spike_terms(
                        ll,
                        jnp.asarray(bins),
                        jnp.asarray(block_marks, dtype=dtype),
                        item["encoding_marks"],
                        item["encoding_valid"],
                        kernel,
                        log_occupancy,
                        item["log_scale"],
                    )
            progress.update(1)
        missing = np.zeros(chunk, dtype=bool)
        missing[: stop - start] = is_missing[start:stop]
        return jnp.where(jnp.asarray(missing)[:, jnp.newaxis], 0.0, ll)

    # ------------------------------------------------------------------ helpers

    def _position_std(self) -> np.ndarray:
        std = np.asarray(self.clusterless_algorithm_params["position_std"], dtype=float)
        n_dims = self.environments.n_position_dims
        if std.size not in (1, n_dims):
            raise ValueError(f"position_std has {std.size} values for {n_dims} position dimension(s).")
        return np.broadcast_to(std, (n_dims,)).copy()

    def _jnp_dtype(self):
        return jnp.float64 if self.dtype == "float64" else jnp.float32

    def _device(self):
        return resolve_device(self.device)

    @contextlib.contextmanager
    def _compute_context(self):
        with contextlib.ExitStack() as stack:
            if self.dtype == "float64":
                stack.enter_context(jax.enable_x64(True))
            stack.enter_context(jax.default_device(self._device()))
            yield

    def _check_fitted(self) -> None:
        if not hasattr(self, "encodings_"):
            raise RuntimeError("The model is not fitted: call fit() (or load_model()) before predict().")

    def _missing_mask(self, time, position, is_missing) -> np.ndarray:
        n_time = time.shape[0]
        missing = np.zeros(n_time, dtype=bool)
        if is_missing is not None:
            is_missing = np.asarray(is_missing).squeeze().astype(bool)
            if is_missing.shape != (n_time,):
                raise ValueError(f"is_missing has {is_missing.size} entries but time has {n_time} bins.")
            missing |= is_missing
        if position is not None:
            position = np.asarray(position, dtype=float)
            position = position[:, np.newaxis] if position.ndim == 1 else position
            if position.shape[0] != n_time:
                raise ValueError(f"position has {position.shape[0]} rows but time has {n_time} bins.")
            missing |= np.any(np.isnan(position), axis=1)
        return missing

    def _decoding_inputs(self, time, spike_times, spike_waveform_features, is_missing, position=None):
        """Validated (time, is_missing, spike_times, marks) for a fitted model."""
        self._check_fitted()
        time = _check_time(time)
        is_missing = self._missing_mask(time, position, is_missing)
        spike_times, marks = self._check_decoding_spikes(spike_times, spike_waveform_features)
        return time, is_missing, spike_times, marks

    @property
    def _out_dtype(self):
        return np.float32 if self.dtype == "float32" else np.float64

    def _check_decoding_spikes(self, spike_times, spike_waveform_features):
        spike_times, marks = _check_spikes(spike_times, spike_waveform_features)
        if len(spike_times) != len(self.encodings_):
            raise ValueError(
                f"The model was fitted on {len(self.encodings_)} electrode group(s) but "
                f"{len(spike_times)} were given to decode."
            )
        for e, (m, encoding) in enumerate(zip(marks, self.encodings_)):
            if m.shape[1] != encoding.marks.shape[1]:
                raise ValueError(
                    f"Electrode group {e}: {m.shape[1]} waveform features to decode but "
                    f"{encoding.marks.shape[1]} were used to fit."
                )
        return spike_times, marks

    # ------------------------------------------------------------------ persistence

    def save_model(self, path: str | os.PathLike) -> Path:
        """Write the fitted model to a netCDF file (format ``MODEL_FORMAT_VERSION``).

        Contents: attribute ``parameters`` (the ``to_dict()`` JSON) and
        ``model_format_version``; the fitted grid (``edges_<d>``, ``is_track_interior``),
        ``occupancy``, ``summed_ground_process_intensity``, ``initial_conditions``,
        ``discrete_state_transitions``, and per electrode group its ``mean_rate`` and
        ``n_encoding_spikes``, with all encoding spikes concatenated in
        ``encoding_positions`` and ``encoding_marks`` (NaN-padded to the widest group).
        """
        self._check_fitted()
        env = self.environments
        path = Path(path)
        counts = np.array([enc.marks.shape[0] for enc in self.encodings_], dtype=np.int64)
        n_features = np.array([enc.marks.shape[1] for enc in self.encodings_], dtype=np.int64)
        width = int(n_features.max()) if n_features.size else 0
        marks = np.full((counts.sum(), width), np.nan)
        row = 0
        for enc in self.encodings_:
            marks[row : row + enc.marks.shape[0], : enc.marks.shape[1]] = enc.marks
            row += enc.marks.shape[0]
        positions = (
            np.concatenate([enc.positions for enc in self.encodings_])
            if self.encodings_
            else np.zeros((0, env.n_position_dims))
        )
        grid_dims = [f"grid_{d}" for d in range(len(env.centers_shape_))]
        data = {
            "is_track_interior": (grid_dims, env.is_track_interior_.astype(np.int8)),
            "occupancy": ("bin", self.occupancy_),
            "summed_ground_process_intensity": ("bin", self.summed_ground_process_intensity_),
            "initial_conditions": (("state", "bin"), self.initial_conditions_),
            "discrete_state_transitions": (("state", "to_state"), self.discrete_state_transitions_),
            "mean_rate": ("electrode", np.array([enc.mean_rate for enc in self.encodings_], dtype=float)),
            "n_encoding_spikes": ("electrode", counts),
            "n_features": ("electrode", n_features),
            "encoding_positions": (("encoding_spike", "position_dim"), positions),
            "encoding_marks": (("encoding_spike", "feature"), marks),
        }
        for d, edges in enumerate(env.edges_):
            data[f"edges_{d}"] = (f"edge_{d}", edges)
        ds = xr.Dataset(
            data,
            attrs={
                "model_format_version": MODEL_FORMAT_VERSION,
                "model": type(self).__name__,
                "parameters": json.dumps(self.to_dict()),
            },
        )
        with atomic_write(path) as tmp:
            ds.to_netcdf(tmp, engine="h5netcdf")
        return path

    @classmethod
    def load_model(cls, path: str | os.PathLike, device=None) -> ContFragClusterlessClassifier:
        """Read a model written by ``save_model``."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"No saved model at {path}.")
        with xr.open_dataset(path, engine="h5netcdf") as ds:
            ds = ds.load()
        version = int(ds.attrs.get("model_format_version", -1))
        if version < 1 or version > MODEL_FORMAT_VERSION:
            raise ValueError(f"{path} is not a saved model this version can read (format version {version}).")
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
        model.occupancy_ = ds["occupancy"].values
        model.summed_ground_process_intensity_ = ds["summed_ground_process_intensity"].values
        model.initial_conditions_ = ds["initial_conditions"].values
        model.discrete_state_transitions_ = ds["discrete_state_transitions"].values
        model.n_bins_ = env.place_bin_centers_.shape[0]
        encodings, row = [], 0
        positions, marks = ds["encoding_positions"].values, ds["encoding_marks"].values
        for count, n_features, rate in zip(ds["n_encoding_spikes"].values, ds["n_features"].values, ds["mean_rate"].values):
            encodings.append(
                lik.ElectrodeEncoding(
                    positions=positions[row : row + count],
                    marks=marks[row : row + count, :n_features],
                    mean_rate=float(rate),
                )
            )
            row += count
        model.encodings_ = encodings
        return model

    def copy(self) -> ContFragClusterlessClassifier:
        return copy.deepcopy(self)


# ---------------------------------------------------------------------- helpers


class _Rows:
    """Rows [offset, ...) of a 2D sink, indexed from 0: one interval's part of a file."""

    def __init__(self, sink, offset: int):
        self.sink, self.offset = sink, offset

    def __getitem__(self, rows: slice):
        return self.sink[rows.start + self.offset : rows.stop + self.offset]

    def __setitem__(self, rows: slice, value) -> None:
        self.sink[rows.start + self.offset : rows.stop + self.offset] = value


def _chunk_lengths(n_time: int, n_bins: int, n_interior: int) -> tuple[int, int]:
    """(step, span): time bins per filter/smoother call and per likelihood chunk.

    A step's buffers stay under 16 MB, which the C allocator recycles instead of
    mapping fresh pages for every chunk; a span of log likelihood is up to 128 MB, so
    the position kernels are rebuilt rarely. span is a multiple of step.
    """
    step = int(np.clip(_STEP_BYTES // (8 * n_bins), 64, 4096))
    step = min(step, n_time)
    span = int(np.clip(_CHUNK_BYTES // (4 * max(n_interior, 1)), step, 65536))
    span = min(span // step * step, -(-n_time // step) * step)
    return step, span


@jax.jit
def _interior_columns(kernel: jnp.ndarray, interior_index: jnp.ndarray) -> jnp.ndarray:
    return kernel[:, interior_index]


@partial(jax.jit, static_argnums=2)
def _on_grid(log_likelihood: jnp.ndarray, interior_index: jnp.ndarray, grid: tuple) -> jnp.ndarray:
    """(T, n_interior) -> (T, *grid), zero outside the track."""
    n_time = log_likelihood.shape[0]
    full = jnp.zeros((n_time, int(np.prod(grid))), log_likelihood.dtype)
    return full.at[:, interior_index].set(log_likelihood).reshape(n_time, *grid)


@jax.jit
def _to_output(posterior: jnp.ndarray, interior: jnp.ndarray):
    """(T, 2, *grid) -> the stored layout (T, 2 * n_bins) with NaN outside the track,
    and the per-state probabilities (T, 2)."""
    n_time = posterior.shape[0]
    state_axes = tuple(range(2, posterior.ndim))
    flat = jnp.where(interior > 0, posterior, jnp.nan).reshape(n_time, -1)
    return flat, posterior.sum(axis=state_axes)


@partial(jax.jit, static_argnums=1)
def _from_output(flat: jnp.ndarray, grid: tuple) -> jnp.ndarray:
    """The stored layout back to (T, 2, *grid), zeros outside the track."""
    return jnp.nan_to_num(flat, nan=0.0).reshape(flat.shape[0], 2, *grid)


def resolve_device(device) -> jax.Device:
    """None -> JAX's default; "cpu", "gpu"/"cuda", "gpu:1", an index, or a Device.

    With None on a machine that has an NVIDIA GPU that JAX cannot use (a CPU-only
    jaxlib), warn instead of running silently on the CPU."""
    if device is None:
        default = jax.devices()[0]
        if default.platform == "cpu" and Path("/dev/nvidia0").exists() and os.environ.get("JAX_PLATFORMS") != "cpu":
            warnings.warn(
                "An NVIDIA GPU is present but JAX only sees the CPU: install JAX with CUDA "
                "(pip install 'jax[cuda12]') to decode on it, or set JAX_PLATFORMS=cpu to silence this.",
                stacklevel=3,
            )
        return default
    if isinstance(device, jax.Device):
        return device
    if isinstance(device, (int, np.integer)):
        devices = jax.devices()
        if not 0 <= device < len(devices):
            raise ValueError(f"No JAX device {device}; JAX sees {devices}.")
        return devices[device]
    name, _, index = str(device).lower().partition(":")
    platform = {"cuda": "gpu", "rocm": "gpu"}.get(name, name)
    try:
        devices = jax.devices(platform)
    except RuntimeError:
        raise ValueError(f"JAX finds no {name!r} device; it sees {jax.devices()}.") from None
    i = int(index) if index else 0
    if not 0 <= i < len(devices):
        raise ValueError(f"No {platform} device {i}; JAX sees {devices}.")
    return devices[i]


def _check_positive(name: str, value) -> None:
    v = np.asarray(value, dtype=float)
    if v.size == 0 or np.any(~np.isfinite(v)) or np.any(v <= 0):
        raise ValueError(f"{name} must be positive, got {value!r}.")


def _check_waveform_std(waveform_std, n_features: int, electrode: int) -> None:
    size = np.asarray(waveform_std).size
    if size not in (1, n_features):
        raise ValueError(
            f"Electrode group {electrode} has {n_features} waveform features but waveform_std has {size} values."
        )


def _json_number(value):
    value = np.asarray(value, dtype=float)
    return float(value) if value.ndim == 0 else value.tolist()


def _check_position(position_time, position) -> tuple[np.ndarray, np.ndarray]:
    position_time = np.asarray(position_time, dtype=float).ravel()
    position = np.asarray(position, dtype=float)
    if position.ndim == 1:
        position = position[:, np.newaxis]
    if position.ndim != 2 or position.shape[1] not in (1, 2):
        raise ValueError(f"position must be (n, 1) or (n, 2); got shape {position.shape}.")
    if position.shape[0] != position_time.shape[0]:
        raise ValueError(
            f"position has {position.shape[0]} samples but position_time has {position_time.shape[0]}."
        )
    if position_time.shape[0] < 2:
        raise ValueError("Need at least two position samples to fit.")
    if not np.all(np.isfinite(position_time)) or np.any(np.diff(position_time) <= 0):
        raise ValueError("position_time must be finite and strictly increasing.")
    return position_time, position


def _check_time(time) -> np.ndarray:
    time = np.asarray(time, dtype=float).ravel()
    if time.shape[0] == 0:
        raise ValueError("The decoding window is empty: time has no bins.")
    if not np.all(np.isfinite(time)) or np.any(np.diff(time) <= 0):
        raise ValueError("time must be finite and strictly increasing.")
    return time


def _check_spikes(spike_times, spike_waveform_features) -> tuple[list[np.ndarray], list[np.ndarray]]:
    if len(spike_times) != len(spike_waveform_features):
        raise ValueError(
            f"{len(spike_times)} arrays of spike times but {len(spike_waveform_features)} of waveform features: "
            "give one of each per electrode group."
        )
    times_out, marks_out = [], []
    for e, (times, marks) in enumerate(zip(spike_times, spike_waveform_features)):
        times = np.asarray(times, dtype=float).ravel()
        marks = np.asarray(marks, dtype=float)
        if marks.ndim == 1:
            marks = marks[:, np.newaxis]
        if marks.ndim != 2 or marks.shape[0] != times.shape[0]:
            raise ValueError(
                f"Electrode group {e}: {times.shape[0]} spike times but waveform features of shape {marks.shape}."
            )
        if marks.shape[1] == 0:
            raise ValueError(f"Electrode group {e}: waveform features have no columns.")
        if not np.all(np.isfinite(times)):
            raise ValueError(f"Electrode group {e}: spike times contain NaN or infinity.")
        bad = ~np.all(np.isfinite(marks), axis=1)
        if bad.any():
            raise ValueError(
                f"Electrode group {e}: {bad.sum()} spike(s) have NaN or infinite waveform features "
                f"(first at t={times[bad][0]:.6f} s). Drop or fix those spikes."
            )
        order = np.argsort(times, kind="stable")
        times_out.append(times[order])
        marks_out.append(marks[order])
    return times_out, marks_out


def _encoding_windows(position_time: np.ndarray, is_training: np.ndarray):
    """Encoding spikes fall within a run of training samples, widened by one position
    sample period on each side (the reference's rule). Returns times -> bool mask."""
    edges = np.diff(np.concatenate([[0], is_training.astype(np.int8), [0]]))
    run_start, run_stop = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1) - 1
    step = position_time[1] - position_time[0]
    lows, highs = position_time[run_start] - step, position_time[run_stop] + step

    def mask(times: np.ndarray) -> np.ndarray:
        inside = np.zeros(times.shape[0], dtype=bool)
        for low, high in zip(lows, highs):
            inside[np.searchsorted(times, low, side="left") : np.searchsorted(times, high, side="right")] = True
        return inside

    return mask


def _relative_change(current: float, previous: float) -> float:
    average = (abs(current) + abs(previous) + np.spacing(1)) / 2
    return abs(current - previous) / average


def _discrete_transition_update(discrete, causal_state, predicted_state, acausal_state, concentration):
    """Dirichlet-MAP re-estimate of the (2, 2) discrete transition matrix."""
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(np.isclose(predicted_state[1:], 0.0), 0.0, acausal_state[1:] / predicted_state[1:])
    counts = (discrete[np.newaxis] * causal_state[:-1, :, np.newaxis] * ratio[:, np.newaxis, :]).sum(axis=0)
    counts = counts + concentration - 1.0
    return counts / counts.sum(axis=1, keepdims=True)


__all__ = ["ContFragClusterlessClassifier", "resolve_device", "STATE_NAMES"]

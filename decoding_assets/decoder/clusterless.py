"""What every clusterless model here shares: the encoding fit, the decode (filter and
smoother over chunks, in memory or into a file), EM over the discrete transitions, and
saving. A model (``ContFragClusterlessClassifier``, ``NonLocalClusterlessDetector``) is
a thin subclass that says what its discrete states are, where they start, how they
move, and the log likelihood of its states of one bin.
"""

from __future__ import annotations

import contextlib
import copy
import os
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr
from tqdm.auto import tqdm

from . import inference, inputs, memory, model_files
from . import likelihood as lik
from . import transitions as tr
from .environment import Environment
from .progress import Progress, ProgressBars
from .results import KEEP_EVERYTHING, Keep, StateLayout, make_results, streaming_results

DEFAULT_CLUSTERLESS_ALGORITHM_PARAMS = {
    "position_std": 6.0,
    "waveform_std": 24.0,
    "block_size": 10_000,
    "disable_progress_bar": False,
}
# Largest block of decoding spikes per matrix product, whatever block_size says:
# beyond this the product is no faster and only uses more memory.
_MAX_SPIKE_BLOCK = 1024


MODELS: dict[str, type] = {}  # every model class by name, for load_model


def load_model(path: str | os.PathLike, device=None):
    """A fitted model from a file ``save_model`` wrote, of whichever class it was."""
    name = model_files.saved_model_name(path)
    if name not in MODELS:
        raise ValueError(f"{path} holds a {name}, which this version does not know; known: {sorted(MODELS)}.")
    return MODELS[name].load_model(path, device=device)


class ClusterlessDecoder:
    """The shared part of the clusterless models (not used on its own).

    A subclass sets ``layout`` (its states) and implements ``_model_parameters``,
    ``_discrete_initial_conditions``, ``_initial_discrete_transition``,
    ``_transition_stickiness`` and, if it has states of one bin, ``_point_log_likelihood``.
    """

    layout: StateLayout
    # the animal's position at decoding time is an input (a Local state)
    needs_position: bool = False

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        MODELS[cls.__name__] = cls

    def __init__(
        self,
        environments: Environment | list[Environment] | None,
        clusterless_algorithm_params: dict | None,
        infer_track_interior: bool,
        movement_var: float,
        discrete_transition_concentration: float,
        sampling_frequency: float,
        dtype: str,
        device,
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
            raise ValueError(f"Unknown clusterless_algorithm_params {sorted(unknown)}; known: {sorted(params)}.")
        params.update(clusterless_algorithm_params or {})
        inputs.check_positive("position_std", params["position_std"])
        inputs.check_positive("waveform_std", params["waveform_std"])
        if int(params["block_size"]) < 1:
            raise ValueError(f"block_size must be a positive integer, got {params['block_size']!r}.")
        inputs.check_positive("movement_var", movement_var)
        inputs.check_positive("sampling_frequency", sampling_frequency)
        if discrete_transition_concentration < 1.0:
            raise ValueError("discrete_transition_concentration must be >= 1 (a Dirichlet MAP needs it).")
        if dtype not in ("float32", "float64"):
            raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}.")
        self.environments = environments
        self.clusterless_algorithm_params = params
        self.infer_track_interior = bool(infer_track_interior)
        self.movement_var = float(movement_var)
        self.discrete_transition_concentration = float(discrete_transition_concentration)
        self.sampling_frequency = float(sampling_frequency)
        self.dtype = dtype
        self.device = device

    # ------------------------------------------------------------------ what a model says

    def _model_parameters(self) -> dict:
        """The subclass's own constructor arguments, as plain JSON."""
        raise NotImplementedError

    def _discrete_initial_conditions(self) -> np.ndarray:
        """(S,) the probability of starting in each state."""
        raise NotImplementedError

    def _initial_discrete_transition(self) -> np.ndarray:
        """(S, S) the discrete transition matrix before any EM."""
        raise NotImplementedError

    def _transition_stickiness(self):
        """The EM prior's extra weight on staying: a number or one per state."""
        return 0.0

    def _point_log_likelihood(self, decode: inputs.DecodingInputs, spike_bins: list, spikes: list, dtype):
        """A function (start, stop, rows) -> (rows, K) NumPy, the log likelihoods of the states
        of one bin for time bins [start, stop) padded to ``rows``; None if there are none.
        spike_bins[e] : (kept, bins) of each electrode group's spikes (``inputs.spike_time_bins``);
        spikes : those spikes as the likelihood on the grid uses them (``lik.DecodingSpikes``)."""
        return None

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
            "discrete_transition_concentration": self.discrete_transition_concentration,
            "sampling_frequency": self.sampling_frequency,
            "dtype": self.dtype,
            **self._model_parameters(),
        }

    @classmethod
    def from_dict(cls, data: dict, device=None):
        """Rebuild a model from ``to_dict()`` output (unknown keys are an error)."""
        data = dict(data)
        known = set(cls().to_dict())
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
    ):
        """Lay out the grid and fit the encoding model.

        position_time : (n_pos,) s; position : (n_pos,) or (n_pos, n_dims) cm, NaN where
        tracking was lost; spike_times[e] : (n_e,) s; spike_waveform_features[e] :
        (n_e, n_features); is_training : (n_pos,) bool, the encoding period (default all).
        """
        position_time, position = inputs.check_position(position_time, position)
        is_training = inputs.check_training(is_training, position_time.shape[0])
        spike_times, marks = inputs.check_spikes(spike_times, spike_waveform_features)
        env = self.environments
        if env.is_track and position.shape[1] not in (1, 2):
            raise ValueError(f"On a track, position must be (n, 2) or linear (n, 1); got {position.shape[1]} columns.")
        env.fit_place_grid(position, infer_track_interior=self.infer_track_interior)

        tracked = ~np.any(np.isnan(position), axis=1)
        position_time, position, is_training = position_time[tracked], position[tracked], is_training[tracked]
        if not is_training.any():
            raise ValueError("No encoding data: is_training selects no position sample with a tracked position.")
        train_time, train_position = position_time[is_training], position[is_training]
        n_encoding_bins = int((train_time[-1] - train_time[0]) * self.sampling_frequency)
        if n_encoding_bins < 1:
            raise ValueError("The encoding period is shorter than one decoding time bin.")
        in_window = inputs.encoding_windows(position_time, is_training)
        position_std = self._position_std()
        electrode_positions, electrode_marks = [], []
        for e, times in enumerate(spike_times):
            keep = in_window(times) & (times >= train_time[0]) & (times <= train_time[-1])
            at_spike = np.column_stack(
                [np.interp(times[keep], train_time, train_position[:, d]) for d in range(train_position.shape[1])]
            )
            electrode_positions.append(env.to_decoding_position(at_spike).reshape(keep.sum(), len(position_std)))
            electrode_marks.append(marks[e][keep])
            inputs.check_waveform_std(self.clusterless_algorithm_params["waveform_std"], marks[e].shape[1], e)

        disable = bool(self.clusterless_algorithm_params["disable_progress_bar"])
        training_positions = env.to_decoding_position(train_position)
        with self._compute_context(), tqdm(
            total=len(spike_times), desc="Encoding models", unit="electrode", disable=disable
        ) as progress:
            encoding = lik.fit_encoding(
                training_positions, electrode_positions, electrode_marks, n_encoding_bins,
                env.axis_centers, position_std, self._jnp_dtype(), progress,
            )  # fmt: skip
        interior = env.is_track_interior_.ravel()
        if not interior.any():
            raise ValueError("The spatial grid has no interior bin: check the positions and place_bin_size.")
        discrete = self._discrete_initial_conditions()
        n_point = self.layout.n_point
        grid = discrete[n_point:, np.newaxis] * (interior / interior.sum())
        initial = np.concatenate([discrete[:n_point], grid.ravel()])
        self._set_fitted(encoding, initial, self._initial_discrete_transition(), training_positions)
        return self

    def _set_fitted(self, encoding: lik.Encoding, initial_conditions, discrete_transitions, training_positions):
        """initial_conditions : (K + G * n_bins,) over the state bins, as the results lay
        them out; discrete_transitions : (S, S); training_positions : (n_train, n_dims)
        in decoding coordinates (kept only by models with a Local state)."""
        self.occupancy_ = encoding.occupancy
        self.encodings_ = list(encoding.electrodes)
        self.summed_ground_process_intensity_ = encoding.summed_ground_process_intensity
        self.initial_conditions_ = np.asarray(initial_conditions, dtype=float)
        self.discrete_state_transitions_ = np.asarray(discrete_transitions, dtype=float)
        self.n_bins_ = encoding.occupancy.shape[0]
        self.training_positions_ = training_positions if self.needs_position else None

    @property
    def encoding_(self) -> lik.Encoding:
        return lik.Encoding(self.occupancy_, self.encodings_, self.summed_ground_process_intensity_)

    # ------------------------------------------------------------------ predict

    def predict(
        self,
        spike_times: list[np.ndarray],
        spike_waveform_features: list[np.ndarray],
        time: np.ndarray,
        position: np.ndarray | None = None,
        position_time: np.ndarray | None = None,
        is_missing: np.ndarray | None = None,
        progress: Progress | None = None,
    ) -> xr.Dataset:
        """Decode: the causal and acausal posteriors over (state, position) per time bin.

        time : (n_time,) decoding bin start times (strictly increasing). Spikes are
        binned as the reference bins them: bin i holds time[i] <= s < time[i+1], the
        last-but-one bin also a spike at exactly time[-1], the last bin none.
        is_missing : (n_time,) bins whose spikes are ignored.
        position : the tracked position, sampled at ``time`` or at ``position_time``;
        bins where it is NaN are treated as missing (as in the reference). Optional for
        models without a Local state.
        progress : called (stage, done, total) as the decode goes (``decoder.progress``;
            default: tqdm bars, unless ``disable_progress_bar``).
        """
        decode = self._decoding_inputs(time, spike_times, spike_waveform_features, is_missing, position, position_time)
        n_time, width = decode.time.shape[0], self.layout.width(self.n_bins_)
        posteriors = self._decode(
            decode, inputs.interval_bounds(np.zeros(n_time)), None,
            memory.empty_rows((n_time, width), self._out_dtype), memory.empty_rows((n_time, width), self._out_dtype),
            progress or self._progress_bars(),
        )  # fmt: skip
        return self._results(decode.time, posteriors, [posteriors.marginal_log_likelihood])

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
        position: np.ndarray | None = None,
        position_time: np.ndarray | None = None,
        progress: Progress | None = None,
    ) -> Path:
        """``predict``, writing the results to a netCDF file as it goes instead of holding
        them: memory stays bounded however long the session. The file has
        ``save_results``'s format and appears only once complete; open it with
        ``load_results``.

        keep : what the file keeps (``Keep``; default: everything, exactly). The exact
            causal posterior, which the smoother reads back, goes meanwhile to an
            uncompressed temporary file beside ``path`` (n_time x the interior state bins
            x 4 bytes), deleted at the end.
        interval_labels : optional (n_time,) integers; each run of equal labels is
            decoded on its own (from the initial conditions), as separate intervals
            are, into its rows of the one file, and stored as ``interval_labels``.
            Spikes are binned within each interval.
        attrs : extra attributes for the file.
        position, position_time, progress : as for ``predict``; ``progress`` hears of
            the writing too.
        """
        decode = self._decoding_inputs(time, spike_times, spike_waveform_features, is_missing, position, position_time)
        n_time = decode.time.shape[0]
        labels = np.zeros(n_time, dtype=np.int64) if interval_labels is None else np.asarray(interval_labels)
        if labels.shape != (n_time,):
            raise ValueError(f"interval_labels has {labels.size} entries but time has {n_time} bins.")
        bounds = inputs.interval_bounds(labels)
        with streaming_results(
            path, decode.time, self.environments, self._out_dtype, keep, labels, self.layout
        ) as (causal, acausal, finish):
            report = progress or self._progress_bars()
            posteriors = self._decode(decode, bounds, None, causal, acausal, report)
            report("writing", 0, 1)
            finish(
                {
                    "acausal_state_probabilities": posteriors.acausal_state_probabilities,
                    "causal_state_probabilities": posteriors.causal_state_probabilities,
                },
                {
                    **(attrs or {}),
                    "marginal_log_likelihood": posteriors.marginal_log_likelihood,
                    "marginal_log_likelihoods": [posteriors.marginal_log_likelihood],
                    "device": self.device_,
                },
            )
        report("writing", 1, 1)
        return Path(path)

    def compute_log_likelihood(
        self,
        time: np.ndarray,
        spike_times: list[np.ndarray],
        spike_waveform_features: list[np.ndarray],
        is_missing: np.ndarray | None = None,
        position: np.ndarray | None = None,
        position_time: np.ndarray | None = None,
    ) -> np.ndarray:
        """The log likelihood of every time bin at every state bin, in the results'
        layout: (n_time, K + n_bins) (the states of one bin, then the grid, which every
        grid state shares), NaN outside the track. Holds all of it in memory: for
        inspection, not decoding."""
        decode = self._decoding_inputs(time, spike_times, spike_waveform_features, is_missing, position, position_time)
        n_time = decode.time.shape[0]
        with self._compute_context():
            log_likelihood = self._log_likelihood(decode, inputs.interval_bounds(np.zeros(n_time)), None)
            values = log_likelihood(0, n_time, n_time)
        n_point = self.layout.n_point
        ll = np.full((n_time, n_point + self.n_bins_), np.nan)
        ll[:, :n_point] = np.asarray(values.point)
        ll[:, n_point:][:, self.environments.is_track_interior_.ravel()] = np.asarray(values.grid)
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
        estimate_inital_conditions: bool | None = None,
        progress: Progress | None = None,
    ) -> xr.Dataset:
        """Fit, then re-estimate the discrete transitions and initial conditions by EM.

        Each iteration: an E step (the filter and smoother), then an M step, as in the
        reference, so the model keeps the estimate made from the last E step. The M step
        re-estimates the discrete transition matrix from the expected transition counts
        between discrete states, computed from the per-state causal, predicted and
        acausal probabilities, with a Dirichlet prior (concentration and the model's
        stickiness: ``transitions.estimate_discrete_transition``), and the initial
        conditions from the first smoothed bin. Stops when the relative change of the
        marginal log likelihood is below ``tolerance`` or after ``max_iter``
        iterations. The log likelihood is computed once and kept in memory.

        Returns the results of the last E step; ``marginal_log_likelihoods`` lists
        every iteration's. ``estimate_inital_conditions`` is the reference's spelling of
        ``estimate_initial_conditions``, accepted so that its code runs unchanged.
        ``progress`` hears of each iteration's filter and smoother (as for ``predict``).
        """
        if estimate_inital_conditions is not None:
            estimate_initial_conditions = estimate_inital_conditions
        if max_iter < 1:
            raise ValueError("max_iter must be at least 1.")
        self.fit(position_time, position, spike_times, spike_waveform_features, is_training=is_training)
        # as the reference: only is_missing marks bins missing here (the position is the
        # encoding's, and the Local state's where there is one)
        decode = self._decoding_inputs(time, spike_times, spike_waveform_features, is_missing)
        if self.needs_position:
            where = inputs.tracked_position(decode.time, position, position_time)
            decode = decode._replace(position_time=where[0], position=where[1])
        n_time, width = decode.time.shape[0], self.layout.width(self.n_bins_)
        bounds = inputs.interval_bounds(np.zeros(n_time))
        cache: dict = {}
        history: list[float] = []
        # every iteration overwrites the previous one's posteriors
        causal, acausal = (memory.empty_rows((n_time, width), self._out_dtype) for _ in range(2))
        while True:
            posteriors = self._decode(decode, bounds, cache, causal, acausal, progress or self._progress_bars())
            history.append(posteriors.marginal_log_likelihood)
            if estimate_discrete_transition:
                self.discrete_state_transitions_ = tr.estimate_discrete_transition(
                    self.discrete_state_transitions_,
                    posteriors.causal_state_probabilities,
                    posteriors.predicted_state_probabilities,
                    posteriors.acausal_state_probabilities,
                    self.discrete_transition_concentration,
                    self._transition_stickiness(),
                )
            if estimate_initial_conditions:
                self.initial_conditions_ = np.nan_to_num(np.asarray(posteriors.acausal_posterior[0], float), nan=0.0)
            converged = len(history) > 1 and _relative_change(history[-1], history[-2]) < tolerance
            if converged or len(history) >= max_iter:
                return self._results(decode.time, posteriors, history)

    # ------------------------------------------------------------------ core

    def _results(self, time, posteriors: inference.Posteriors, history) -> xr.Dataset:
        results = make_results(
            time,
            self.environments,
            posteriors.acausal_posterior,
            posteriors.causal_posterior,
            posteriors.acausal_state_probabilities,
            posteriors.causal_state_probabilities,
            history,
            self.layout,
        )
        results.attrs["device"] = self.device_
        return results

    def _initial_states(self, dtype) -> tr.States:
        n_point = self.layout.n_point
        grid = self.initial_conditions_[n_point:].reshape(self.layout.n_grid, *self.environments.centers_shape_)
        return tr.States(tr.on_device(self.initial_conditions_[:n_point], dtype), tr.on_device(grid, dtype))

    def _decode(
        self, decode: inputs.DecodingInputs, bounds, ll_cache, causal_out, acausal_out, progress: Progress
    ) -> inference.Posteriors:
        """Filter then smooth each interval of ``bounds`` on its own, from the initial
        conditions, into its rows of the sinks (n_time, K + G * n_bins), reporting to
        ``progress``."""
        env = self.environments
        with self._compute_context():
            dtype = self._jnp_dtype()
            transitions = tr.make_transitions(env, self.movement_var, self.discrete_state_transitions_, dtype)
            initial = self._initial_states(dtype)
            log_likelihood = self._log_likelihood(decode, bounds, ll_cache)
            parts = []
            for start, stop in zip(bounds[:-1], bounds[1:]):
                parts.append(
                    inference.filter_and_smooth(
                        transitions, initial, stop - start,
                        lambda a, b, rows, start=start: log_likelihood(start + a, start + b, rows),
                        _Rows(causal_out, start), _Rows(acausal_out, start),
                        # the intervals one after the other: bins of the whole decode
                        lambda stage, done, _, start=start: progress(stage, start + done, int(bounds[-1])),
                    )  # fmt: skip
                )
        self.device_ = str(self._device())
        return inference.Posteriors(
            causal_out,
            acausal_out,
            *(np.concatenate([getattr(p, name) for p in parts]) for name in (
                "causal_state_probabilities", "acausal_state_probabilities", "predicted_state_probabilities")),
            float(sum(p.marginal_log_likelihood for p in parts)),
        )  # fmt: skip

    def _log_likelihood(self, decode: inputs.DecodingInputs, bounds, ll_cache):
        """(start, stop, rows) -> ``inference.LogLikelihoods`` of bins [start, stop),
        padded to ``rows``; spans are kept in ``ll_cache`` (a dict) when one is given,
        for EM."""
        env = self.environments
        dtype = self._jnp_dtype()
        grid = lik.likelihood_grid(
            self.encoding_, env.is_track_interior_.ravel(), env.axis_centers, self._position_std(), dtype
        )
        spike_bins = [inputs.spike_time_bins(times, decode.time, bounds) for times in decode.spike_times]
        spikes = lik.prepare_decoding_spikes(
            self.encoding_, spike_bins, decode.marks, self.clusterless_algorithm_params["waveform_std"], dtype
        )
        max_block = min(int(self.clusterless_algorithm_params["block_size"]), _MAX_SPIKE_BLOCK)
        point_log_likelihood = self._point_log_likelihood(decode, spike_bins, spikes, dtype)

        def log_likelihood(start: int, stop: int, rows: int) -> inference.LogLikelihoods:
            key = (start, stop, rows)
            if ll_cache is not None and key in ll_cache:
                return jax.tree.map(tr.on_device, ll_cache[key])
            on_grid = lik.log_likelihood_rows(grid, spikes, start, stop, rows, decode.is_missing, max_block)
            if point_log_likelihood is None:
                point = np.zeros((rows, 0), dtype)
            else:
                point = np.array(point_log_likelihood(start, stop, rows), dtype)
            point[: stop - start][decode.is_missing[start:stop]] = lik.MISSING_LOG_LIKELIHOOD
            values = inference.LogLikelihoods(tr.on_device(point), on_grid)
            if ll_cache is not None:
                ll_cache[key] = jax.tree.map(np.asarray, values)
            return values

        return log_likelihood

    # ------------------------------------------------------------------ helpers

    def _progress_bars(self) -> ProgressBars:
        return ProgressBars(disable=bool(self.clusterless_algorithm_params["disable_progress_bar"]))

    def _position_std(self) -> np.ndarray:
        std = np.asarray(self.clusterless_algorithm_params["position_std"], dtype=float)
        n_dims = self.environments.n_position_dims
        if std.size not in (1, n_dims):
            raise ValueError(f"position_std has {std.size} values for {n_dims} position dimension(s).")
        return np.broadcast_to(std, (n_dims,)).copy()

    def _jnp_dtype(self):
        return jnp.float64 if self.dtype == "float64" else jnp.float32

    @property
    def _out_dtype(self):
        return np.float32 if self.dtype == "float32" else np.float64

    def _device(self):
        return resolve_device(self.device)

    @contextlib.contextmanager
    def _compute_context(self):
        with contextlib.ExitStack() as stack:
            if self.dtype == "float64":
                stack.enter_context(jax.enable_x64(True))
            stack.enter_context(jax.default_device(self._device()))
            yield

    def _decoding_inputs(
        self, time, spike_times, spike_waveform_features, is_missing, position=None, position_time=None
    ) -> inputs.DecodingInputs:
        if not hasattr(self, "encodings_"):
            raise RuntimeError("The model is not fitted: call fit() (or load_model()) before predict().")
        time = inputs.check_time(time)
        missing = inputs.missing_bins(time, is_missing, position, position_time)
        spike_times, marks = inputs.check_spikes(spike_times, spike_waveform_features)
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
        tracked_time = tracked = None
        if self.needs_position and position is not None:
            tracked_time, tracked = inputs.tracked_position(time, position, position_time)
        return inputs.DecodingInputs(time, missing, spike_times, marks, tracked_time, tracked)

    # ------------------------------------------------------------------ persistence

    def save_model(self, path: str | os.PathLike) -> Path:
        """Write the fitted model to a netCDF file (``model_files``)."""
        if not hasattr(self, "encodings_"):
            raise RuntimeError("The model is not fitted: call fit() before save_model().")
        return model_files.save_model(self, path)

    @classmethod
    def load_model(cls, path: str | os.PathLike, device=None):
        """Read a model written by ``save_model``."""
        return model_files.load_model(cls, path, device)

    def copy(self):
        return copy.deepcopy(self)


class _Rows:
    """Rows [offset, ...) of a 2D sink, indexed from 0: one interval's part of a file."""

    def __init__(self, sink, offset: int):
        self.sink, self.offset = sink, offset

    def __getitem__(self, rows: slice):
        return self.sink[rows.start + self.offset : rows.stop + self.offset]

    def __setitem__(self, rows: slice, value) -> None:
        self.sink[rows.start + self.offset : rows.stop + self.offset] = value


def _relative_change(current: float, previous: float) -> float:
    average = (abs(current) + abs(previous) + np.spacing(1)) / 2
    return abs(current - previous) / average


def _json_number(value):
    value = np.asarray(value, dtype=float)
    return float(value) if value.ndim == 0 else value.tolist()


def enable_compilation_cache(folder: str | os.PathLike) -> None:
    """Keep JAX's compiled decoder in ``folder`` (opt-in; the pipeline does it in its
    home): a new process then loads the compiled filter, smoother and likelihood
    instead of spending seconds compiling them. Compiled code depends on the shapes of a
    decode (grid, chunk lengths, encoding sizes), so the first decode of a new shape
    still compiles, once. numba's loops for tracks (``track_inference``) are kept in
    ``folder/numba`` too, unless NUMBA_CACHE_DIR says otherwise or numba was imported
    before this call (it reads the setting once): a container whose package folder and
    home are read-only still caches them."""
    Path(folder).expanduser().mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("NUMBA_CACHE_DIR", str(Path(folder).expanduser() / "numba"))
    jax.config.update("jax_compilation_cache_dir", str(Path(folder).expanduser()))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)


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




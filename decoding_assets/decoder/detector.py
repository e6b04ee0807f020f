"""``NonLocalClusterlessDetector``: is the hippocampus representing where the animal is
(Local), nothing (No-Spike), or somewhere else, moving smoothly (Non-Local Continuous)
or jumping (Non-Local Fragmented)? The lab pipeline's replay detector, with
``non_local_detector``'s defaults and result layout.

States, in the results' order: "Local" and "No-Spike" have one bin each; "Non-Local
Continuous" and "Non-Local Fragmented" live on the grid's interior bins. Transitions
(rows from, columns to):

- into Local and No-Spike: the discrete probability alone (one bin to go to);
- into Non-Local Continuous: a random walk from itself, uniform from the other states;
- into Non-Local Fragmented: uniform from every state.

Observations: Local, the clusterless likelihood at the animal's own position (which is
why ``predict`` needs ``position``); No-Spike, a Poisson process of ``no_spike_rate``
spikes/s on every electrode group; the non-local states, the clusterless likelihood on
the grid (``likelihood``). EM re-estimates the discrete transitions with a Dirichlet
prior of concentration 1.1 plus a per-state stickiness on staying.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from . import inputs
from . import likelihood as lik
from .clusterless import ClusterlessDecoder
from .environment import Environment
from .results import StateLayout

NON_LOCAL_STATES = StateLayout(("Local", "No-Spike", "Non-Local Continuous", "Non-Local Fragmented"), n_point=2)


def default_discrete_transition(
    local: float = 0.9,
    no_spike: float = 0.99,
    non_local_continuous: float = 0.9,
    non_local_fragmented: float = 0.98,
    into_no_spike: float = 1e-5,
) -> np.ndarray:
    """The detector's discrete transition matrix (rows from, columns to): each state's
    probability of staying on the diagonal; ``into_no_spike`` into No-Spike from every
    other state; what remains of a row split evenly between the remaining states."""
    matrix = np.zeros((4, 4))
    for state, stay in enumerate((local, no_spike, non_local_continuous, non_local_fragmented)):
        matrix[state, state] = stay
        others = [s for s in range(4) if s != state]
        if state != 1:
            matrix[state, 1] = into_no_spike
            others.remove(1)
        matrix[state, others] = (1.0 - matrix[state].sum()) / len(others)
    return matrix


DEFAULT_DISCRETE_TRANSITION = default_discrete_transition()
DEFAULT_STICKINESS = (30.0, 100_000.0, 30.0, 200.0)


class NonLocalClusterlessDetector(ClusterlessDecoder):
    """Clusterless replay detector: Local, No-Spike, Non-Local Continuous, Non-Local Fragmented.

    Parameters
    ----------
    discrete_initial_conditions : (4,) probabilities of starting in each state
        (default: Local).
    discrete_transition_matrix : (4, 4) rows from, columns to (default
        ``DEFAULT_DISCRETE_TRANSITION``: staying 0.9, 0.99, 0.9, 0.98; into No-Spike 1e-5).
    discrete_transition_concentration : float
        Dirichlet concentration of the EM update of the discrete transitions.
    discrete_transition_stickiness : a number or (4,): extra prior weight on staying in
        each state, in the EM update.
    discrete_transition_regularization : float
        Accepted for the reference's signature; the stationary EM update does not use it.
    environments, clusterless_algorithm_params, infer_track_interior, movement_var,
    sampling_frequency, dtype, device : as ``ContFragClusterlessClassifier``.
    no_spike_rate : float
        Spikes/s of each electrode group in the No-Spike state.
    """

    layout = NON_LOCAL_STATES
    needs_position = True

    def __init__(
        self,
        discrete_initial_conditions=(1.0, 0.0, 0.0, 0.0),
        discrete_transition_matrix=None,
        discrete_transition_concentration: float = 1.1,
        discrete_transition_stickiness=DEFAULT_STICKINESS,
        discrete_transition_regularization: float = 1e-10,
        environments: Environment | list[Environment] | None = None,
        clusterless_algorithm_params: dict | None = None,
        infer_track_interior: bool = True,
        movement_var: float = 6.0,
        sampling_frequency: float = 500.0,
        no_spike_rate: float = 1e-10,
        dtype: str = "float32",
        device=None,
    ):
        super().__init__(
            environments, clusterless_algorithm_params, infer_track_interior, movement_var,
            discrete_transition_concentration, sampling_frequency, dtype, device,
        )  # fmt: skip
        initial = np.asarray(discrete_initial_conditions, dtype=float)
        if initial.shape != (4,) or np.any(initial < 0) or not np.isclose(initial.sum(), 1.0):
            raise ValueError(
                f"discrete_initial_conditions must be four probabilities summing to 1 (Local, No-Spike, Non-Local "
                f"Continuous, Non-Local Fragmented), got {discrete_initial_conditions!r}."
            )
        matrix = DEFAULT_DISCRETE_TRANSITION if discrete_transition_matrix is None else discrete_transition_matrix
        matrix = np.asarray(matrix, dtype=float)
        if matrix.shape != (4, 4) or np.any(matrix < 0) or not np.allclose(matrix.sum(axis=1), 1.0):
            raise ValueError(
                "discrete_transition_matrix must be 4 x 4 (rows from, columns to), non-negative, each row summing "
                f"to 1; got {discrete_transition_matrix!r}."
            )
        stickiness = np.broadcast_to(np.asarray(discrete_transition_stickiness, dtype=float), (4,))
        if np.any(stickiness < 0):
            raise ValueError(f"discrete_transition_stickiness must be >= 0, got {discrete_transition_stickiness!r}.")
        inputs.check_positive("no_spike_rate", no_spike_rate)
        self.discrete_initial_conditions = tuple(float(p) for p in initial)
        self.discrete_transition_matrix = matrix
        self.discrete_transition_stickiness = tuple(float(s) for s in stickiness)
        self.discrete_transition_regularization = float(discrete_transition_regularization)
        self.no_spike_rate = float(no_spike_rate)

    def _model_parameters(self) -> dict:
        return {
            "discrete_initial_conditions": list(self.discrete_initial_conditions),
            "discrete_transition_matrix": self.discrete_transition_matrix.tolist(),
            "discrete_transition_stickiness": list(self.discrete_transition_stickiness),
            "discrete_transition_regularization": self.discrete_transition_regularization,
            "no_spike_rate": self.no_spike_rate,
        }

    def _discrete_initial_conditions(self) -> np.ndarray:
        return np.asarray(self.discrete_initial_conditions)

    def _initial_discrete_transition(self) -> np.ndarray:
        return self.discrete_transition_matrix.copy()

    def _transition_stickiness(self):
        return np.asarray(self.discrete_transition_stickiness)

    def _point_log_likelihood(self, decode: inputs.DecodingInputs, spike_bins: list, spikes: list, dtype):
        """Local and No-Spike for every bin, computed once per decode: (n_time, 2)."""
        if decode.position is None:
            raise ValueError(
                "The NonLocalClusterlessDetector needs the animal's position to decode (its Local state is the "
                "likelihood at the animal's position): give position (and position_time, if it is not sampled at time)."
            )
        env = self.environments
        n_time = decode.time.shape[0]

        def where(times: np.ndarray) -> np.ndarray:
            at = inputs.interpolate_position(decode.position_time, decode.position, times)
            return env.to_decoding_position(at).reshape(times.shape[0], env.n_position_dims)

        spike_positions = [where(times[kept]) for times, (kept, _) in zip(decode.spike_times, spike_bins)]
        local = lik.local_log_likelihood(
            self.encoding_, self.training_positions_, spikes, spike_positions, where(decode.time),
            self._position_std(), dtype,
        )  # fmt: skip
        # the reference's rate per bin: the median bin width, whatever the intervals
        width = float(np.median(np.diff(decode.time))) if n_time > 1 else 1.0 / self.sampling_frequency
        no_spike = lik.no_spike_log_likelihood([bins for _, bins in spike_bins], n_time, self.no_spike_rate * width)
        both = np.column_stack([local, no_spike])

        def rows(start: int, stop: int, n_rows: int):
            out = np.zeros((n_rows, 2))
            out[: stop - start] = both[start:stop]
            return out

        return rows

    @staticmethod
    def get_conditional_non_local_posterior(results: xr.Dataset) -> xr.DataArray:
        """The position posterior given that the representation is non-local: the two
        non-local states summed, divided by their probability, (time, *position)."""
        posterior = results.acausal_posterior.sel(state="Non-Local Continuous") + results.acausal_posterior.sel(
            state="Non-Local Fragmented"
        )
        non_local = results.acausal_state_probabilities.sel(states=["Non-Local Continuous", "Non-Local Fragmented"])
        return posterior.unstack("state_bins") / non_local.sum("states")

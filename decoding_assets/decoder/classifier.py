"""``ContFragClusterlessClassifier``: the continuous / fragmented clusterless decoder.

Same constructor, ``fit``, ``predict`` and ``estimate_parameters`` arguments, defaults
and result layout as ``non_local_detector``'s class of that name, so code written
against it ports by changing the import. Model parameters round-trip through plain JSON
(``to_dict`` / ``from_dict``); a fitted model saves to a versioned netCDF file
(``save_model`` / ``load_model``).
"""

from __future__ import annotations

import numpy as np

from .clusterless import ClusterlessDecoder, resolve_device
from .environment import Environment
from .results import CONTINUOUS_FRAGMENTED, STATE_NAMES


class ContFragClusterlessClassifier(ClusterlessDecoder):
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

    layout = CONTINUOUS_FRAGMENTED

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
        super().__init__(
            environments, clusterless_algorithm_params, infer_track_interior, movement_var,
            discrete_transition_concentration, sampling_frequency, dtype, device,
        )  # fmt: skip
        if not 0.0 <= discrete_transition_diag <= 1.0:
            raise ValueError(f"discrete_transition_diag must be in [0, 1], got {discrete_transition_diag!r}.")
        initial = np.asarray(discrete_initial_conditions, dtype=float)
        if initial.shape != (2,) or np.any(initial < 0) or not np.isclose(initial.sum(), 1.0):
            raise ValueError(
                f"discrete_initial_conditions must be two probabilities summing to 1, got {discrete_initial_conditions!r}."
            )
        self.discrete_transition_diag = float(discrete_transition_diag)
        self.discrete_initial_conditions = tuple(float(p) for p in initial)

    def _model_parameters(self) -> dict:
        return {
            "discrete_transition_diag": self.discrete_transition_diag,
            "discrete_initial_conditions": list(self.discrete_initial_conditions),
        }

    def _discrete_initial_conditions(self) -> np.ndarray:
        return np.asarray(self.discrete_initial_conditions)

    def _initial_discrete_transition(self) -> np.ndarray:
        d = self.discrete_transition_diag
        return np.array([[d, 1 - d], [1 - d, d]])


__all__ = ["ContFragClusterlessClassifier", "resolve_device", "STATE_NAMES"]

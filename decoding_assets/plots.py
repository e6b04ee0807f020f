"""A picture of a decode that works offline: the position posterior over time with the
animal's tracked position, the discrete state probabilities, speed and head direction."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import xarray as xr  # noqa: E402

from .decoder.results import position_posterior  # noqa: E402

_MAX_COLUMNS = 1500  # time columns drawn; longer decodes are shown at a coarser step


def plot_decode(results: xr.Dataset, position: pd.DataFrame, position_variables: list[str]) -> bytes:
    """PNG bytes: one posterior panel per decoded dimension (marginal over the other)
    with the tracked position on top, then state probabilities, then speed and head
    direction."""
    step = max(1, results.sizes["time"] // _MAX_COLUMNS)
    results = results.isel(time=slice(None, None, step))  # reads only the rows drawn
    posterior = position_posterior(results)  # whichever form the file kept: per state or summed
    dims = [d for d in posterior.dims if d != "time"]
    t = results["time"].values
    tracked = position.reindex(position.index.union(t)).interpolate(method="index", limit_area="inside").reindex(t)

    n_panels = len(dims) + 2
    # a fixed layout: constrained_layout costs a fifth of a second per picture, per session decoded
    fig, axes = plt.subplots(n_panels, 1, figsize=(11, 2.2 * n_panels), sharex=True)
    fig.subplots_adjust(left=0.07, right=0.92, top=1 - 0.35 / n_panels, bottom=0.3 / n_panels, hspace=0.12)
    for ax, dim, variable in zip(axes, dims, position_variables if len(dims) > 1 else position_variables[:1]):
        others = [d for d in dims if d != dim]
        marginal = posterior.sum(others) if others else posterior
        image = marginal.values.T
        centers = marginal[dim].values
        ax.imshow(
            image, aspect="auto", origin="lower", cmap="bone_r", interpolation="nearest",
            extent=[t[0], t[-1], centers[0], centers[-1]], vmin=0, vmax=np.nanpercentile(image, 99.5) or 1,
        )  # fmt: skip
        if len(dims) > 1 or variable in tracked:
            ax.plot(t, tracked[variable].values, color="magenta", lw=1, alpha=0.8, label=f"tracked {variable}")
            ax.legend(loc="upper right", fontsize=8)
        ax.set_ylabel(f"{dim} (cm)")
    states = results["acausal_state_probabilities"]
    ax = axes[len(dims)]
    for name in states["states"].values:
        ax.plot(t, states.sel(states=name).values, label=str(name))
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel("probability")
    ax.legend(loc="upper right", fontsize=8)
    ax = axes[-1]
    ax.plot(t, tracked["speed"].values, color="k", lw=1)
    ax.set_ylabel("speed (cm/s)")
    twin = ax.twinx()
    twin.plot(t, tracked["orientation"].values, ".", color="tab:orange", ms=1)
    twin.set_ylabel("head direction (rad)", color="tab:orange")
    ax.set_xlabel("time (s)")
    title = f"{results.attrs.get('nwb_file_name', '')}  {results.attrs.get('decoding_interval', '')}"
    fig.suptitle(title.strip() or "decode")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
    plt.close(fig)
    return buffer.getvalue()


def save_decode_plot(results: xr.Dataset, position: pd.DataFrame, position_variables: list[str], path: Path) -> Path:
    Path(path).write_bytes(plot_decode(results, position, position_variables))
    return Path(path)

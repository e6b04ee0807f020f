"""Clusterless kernel-density encoding and likelihood (MODEL.md, "Encoding", "Likelihood").

Position kernel K_x (std ``position_std`` per dimension), mark kernel K_m (std
``waveform_std`` per feature), both products of normal pdfs. For electrode e with
encoding spikes j at positions x_j with marks m_j and mean rate lambda_e:

    occ(x)        = mean_t K_x(x - pos_t)                      (training samples)
    Lambda_e(x)   = max(lambda_e mean_j K_x(x - x_j) / occ(x), 1e-15)
    LL_i(x)       = -sum_e Lambda_e(x)
                    + sum_{spikes k in bin i} max(log(lambda_e mean_j K_m(m_k - m_j) K_x(x - x_j) / occ(x)), log 1e-15)

The spike term is a matrix product per block of decoding spikes:
(B x E) mark weights times (E x n_bins) position kernel. The log mark weights come
from one product too, of the spikes' [u, 1] with the encoding spikes' [m, -|m|^2 / 2]
(``mark_terms``): u.m - |m|^2 / 2 is log K_m up to terms of u alone. They are
exponentiated after subtracting each row's maximum and the shift is added back after
the log, so float32 never turns a spike's density into log(0).

Missing bins (``is_missing``) get LL = 1 everywhere, as in the reference: the posterior
only propagates there, and the marginal log likelihood counts 1 per missing bin.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import logsumexp

from .transitions import on_device

EPS = 1e-15
LOG_EPS = float(np.log(EPS))
MISSING_LOG_LIKELIHOOD = 1.0  # the reference's value for bins flagged is_missing
_PADDING_SCORE = -1e30  # a padding encoding row's mark score: exp(-1e30 - best) is 0
_SAMPLE_BLOCK = 4096  # samples per block when summing kernels over positions


class ElectrodeEncoding(NamedTuple):
    """One electrode's encoding spikes.

    positions : (n_enc, n_position_dims) position at each encoding spike.
    marks : (n_enc, n_features) waveform features.
    mean_rate : spikes per decoding time bin during the encoding period.
    """

    positions: np.ndarray
    marks: np.ndarray
    mean_rate: float


class Encoding(NamedTuple):
    """What ``fit`` learns from the encoding period (MODEL.md, "Encoding").

    occupancy : (n_bins,) occ(x) at every grid bin.
    electrodes : one ElectrodeEncoding per electrode group.
    summed_ground_process_intensity : (n_bins,) Lambda(x) = sum_e Lambda_e(x).
    """

    occupancy: np.ndarray
    electrodes: list[ElectrodeEncoding]
    summed_ground_process_intensity: np.ndarray


class DecodingSpikes(NamedTuple):
    """One electrode group's spikes to decode, ready for ``log_likelihood_rows``.

    bins : (n,) time bin of each kept spike, sorted.
    marks : (n, n_features) marks, centred on the encoding marks' mean and divided by
        waveform_std (the mark kernel is shift invariant; centring keeps float32 exact).
    encoding_mark_terms, encoding_valid, encoding_positions : (E, n_features + 1), (E,),
        (E, n_dims) the encoding spikes padded to E rows: their marks m scaled as
        ``marks`` with -|m|^2 / 2 as a last column (``mark_terms``), whether each row
        is a spike, and their positions; None when the group has no encoding spike.
    log_scale : () log(lambda_e / n_enc) - sum_f log(waveform_std_f sqrt(2 pi)).
    """

    bins: np.ndarray
    marks: np.ndarray
    encoding_mark_terms: jnp.ndarray | None
    encoding_valid: jnp.ndarray | None
    encoding_positions: jnp.ndarray | None
    log_scale: jnp.ndarray | None


class LikelihoodGrid(NamedTuple):
    """The fitted grid as the likelihood needs it, on the device.

    interior_axis_index : per grid axis, (N,) each interior bin's index along the axis.
    axis_centers : per grid axis, (n_d,) bin centres.
    position_std : (n_dims,).
    log_occupancy : (N,) log occ(x) at interior bins, +inf where occ is 0.
    ground : (N,) Lambda(x) at interior bins.
    """

    interior_axis_index: tuple
    axis_centers: tuple
    position_std: jnp.ndarray
    log_occupancy: jnp.ndarray
    ground: jnp.ndarray


def encoding_bucket(n: int) -> int:
    """Padded count of encoding spikes: the next of 128-multiples growing by 2^(1/4)
    each. Electrodes of similar size share one compiled shape, at most ~19 % padding."""
    size = 128.0
    while size < n:
        size *= 2 ** 0.25
    return int(np.ceil(size / 128) * 128)


def _pad_rows(x: np.ndarray, n_padded: int) -> tuple[np.ndarray, np.ndarray]:
    n = x.shape[0]
    padded = np.zeros((n_padded,) + x.shape[1:], dtype=x.dtype)
    padded[:n] = x
    valid = np.zeros(n_padded, dtype=bool)
    valid[:n] = True
    return padded, valid


def mark_terms(marks: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """(E, F + 1) the scaled encoding marks m and -|m|^2 / 2, so that one product gives
    every log mark kernel up to the decoding spike's own term (``_mark_scores``).
    Padding rows (valid False) score _PADDING_SCORE, which exp takes to exactly 0."""
    terms = np.concatenate([marks, -0.5 * np.sum(marks**2, axis=1, keepdims=True)], axis=1)
    terms[~valid] = 0.0
    terms[~valid, -1] = _PADDING_SCORE
    return terms


def _mark_scores(decoding_marks: jnp.ndarray, encoding_mark_terms: jnp.ndarray) -> jnp.ndarray:
    """(B, E) u . m - |m|^2 / 2 = -|u - m|^2 / 2 + |u|^2 / 2: the log mark kernel of each
    decoding spike u and encoding spike m, plus a term of the decoding spike alone. One
    product over F + 1 columns, and every later pass over the (B, E) scores is one fewer
    than with the distances written out."""
    ones = jnp.ones((decoding_marks.shape[0], 1), decoding_marks.dtype)
    return jnp.concatenate([decoding_marks, ones], axis=1) @ encoding_mark_terms.T


def position_kernel(samples: jnp.ndarray, axis_centers: tuple, std: jnp.ndarray) -> jnp.ndarray:
    """K_x(x - x_j) for every sample j and grid bin x.

    The kernel is a product over dimensions and the bins form a grid, so each row is
    an outer product of per-axis factors: sum(n_d) exponentials per sample, not prod(n_d).

    samples : (n_samples, n_dims); axis_centers : n_dims arrays (n_d,) of bin centres
    along each axis (one array on a track); std : (n_dims,).
    returns (n_samples, prod(n_d)), bins in C order.
    """
    kernel = jnp.ones((samples.shape[0], 1), dtype=samples.dtype)
    for d, centers in enumerate(axis_centers):
        factor = _axis_factor(samples[:, d], centers, std[d])
        kernel = (kernel[:, :, jnp.newaxis] * factor[:, jnp.newaxis, :]).reshape(samples.shape[0], -1)
    return kernel


def _axis_factor(samples: jnp.ndarray, centers: jnp.ndarray, std) -> jnp.ndarray:
    """(n_samples, n_d) the Gaussian of each sample's distance to each bin centre along
    one axis: the factor both position kernels multiply."""
    z = (samples[:, jnp.newaxis] - centers[jnp.newaxis, :]) / std
    return jnp.exp(-0.5 * z**2) / (std * jnp.sqrt(2.0 * jnp.pi))


position_kernel = jax.jit(position_kernel)


@jax.jit
def _weighted_kernel_sum(samples, weights, axis_centers, std):
    return weights @ position_kernel(samples, axis_centers, std)


def kernel_density(samples: np.ndarray, axis_centers: list[np.ndarray], std: np.ndarray, dtype) -> np.ndarray:
    """mean_j K_x(x - x_j) at every grid bin, summed in fixed-size blocks of samples.

    samples : (n_samples, n_dims); returns (n_bins,) float64 (zeros if no samples).
    """
    n_samples = samples.shape[0]
    total = np.zeros(int(np.prod([len(c) for c in axis_centers])))
    if n_samples == 0:
        return total
    centers = tuple(on_device(c, dtype) for c in axis_centers)
    std = on_device(std, dtype)
    for start in range(0, n_samples, _SAMPLE_BLOCK):
        block, valid = _pad_rows(samples[start : start + _SAMPLE_BLOCK], _SAMPLE_BLOCK)
        total += np.asarray(
            _weighted_kernel_sum(np.asarray(block, dtype), np.asarray(valid, dtype), centers, std), dtype=np.float64
        )
    return total / n_samples


def ground_process_intensity(
    encoding: ElectrodeEncoding, occupancy: np.ndarray, axis_centers: list[np.ndarray], position_std: np.ndarray, dtype
) -> np.ndarray:
    """Lambda_e(x) = max(lambda_e mean_j K_x(x - x_j) / occ(x), 1e-15), (n_bins,)."""
    density = kernel_density(encoding.positions, axis_centers, position_std, dtype)
    with np.errstate(divide="ignore", invalid="ignore"):
        rate = np.where(occupancy > 0, encoding.mean_rate * density / occupancy, 0.0)
    return np.maximum(rate, EPS)


@partial(jax.jit, donate_argnums=0)
def add_spike_terms(
    log_likelihood: jnp.ndarray,
    bin_index: jnp.ndarray,
    decoding_marks: jnp.ndarray,
    encoding_mark_terms: jnp.ndarray,
    encoding_position_kernel: jnp.ndarray,
    log_occupancy: jnp.ndarray,
    log_scale: jnp.ndarray,
) -> jnp.ndarray:
    """Add one block of decoding spikes' log joint mark intensities to their time bins.

    log_likelihood : (n_time, n_bins) chunk being accumulated (donated).
    bin_index : (B,) time bin of each spike within the chunk; n_time for padding rows.
    decoding_marks : (B, F) divided by waveform_std; encoding_mark_terms : (E, F + 1)
        (``mark_terms``).
    encoding_position_kernel : (E, n_bins) K_x(x - x_j).
    log_occupancy : (n_bins,) log occ(x), +inf where occ is 0.
    log_scale : () log(lambda_e / n_enc) + log of the mark kernel's normalization.
    """
    score = _mark_scores(decoding_marks, encoding_mark_terms)
    best = jnp.max(score, axis=1, keepdims=True)
    density = jnp.exp(score - best) @ encoding_position_kernel  # (B, n_bins)
    shift = best - 0.5 * jnp.sum(decoding_marks**2, axis=1, keepdims=True)  # the largest log K_m
    term = jnp.log(density) + shift + log_scale - log_occupancy
    term = jnp.maximum(term, LOG_EPS)
    return log_likelihood.at[bin_index].add(term, mode="drop")


@partial(jax.jit, donate_argnums=0)
def add_constant_spike_terms(log_likelihood: jnp.ndarray, bin_index: jnp.ndarray) -> jnp.ndarray:
    """Spikes of an electrode with no encoding spikes: each adds log 1e-15 everywhere."""
    return log_likelihood.at[bin_index].add(LOG_EPS, mode="drop")


def spike_blocks(n_spikes: int, max_block: int) -> list[tuple[int, int]]:
    """(first row, padded size) of each block of decoding spikes.

    Full blocks of ``max_block`` rows, then the remainder padded to a multiple of 128:
    few compiled shapes (each costs tracing in every new process), at most 127 rows of
    padding.
    """
    blocks, start = [], 0
    while n_spikes - start >= max_block:
        blocks.append((start, max_block))
        start += max_block
    if start < n_spikes:
        blocks.append((start, min(-(-(n_spikes - start) // 128) * 128, max_block)))
    return blocks


def fit_encoding(
    train_position: np.ndarray,
    electrode_positions: list[np.ndarray],
    electrode_marks: list[np.ndarray],
    n_encoding_bins: int,
    axis_centers: list[np.ndarray],
    position_std: np.ndarray,
    dtype,
    progress=None,
) -> Encoding:
    """Occupancy, per-electrode encodings and the summed ground process intensity.

    train_position : (n_train, n_dims) decoding-space positions of the training samples.
    electrode_positions[e] : (n_e, n_dims) position at each encoding spike;
    electrode_marks[e] : (n_e, n_features). n_encoding_bins : length of the encoding
    period in decoding time bins (the mean rates are per bin).
    """
    occupancy = kernel_density(train_position, axis_centers, position_std, dtype)
    electrodes, summed = [], np.zeros(occupancy.shape[0])
    for positions, marks in zip(electrode_positions, electrode_marks):
        encoding = ElectrodeEncoding(positions=positions, marks=marks, mean_rate=marks.shape[0] / n_encoding_bins)
        electrodes.append(encoding)
        summed += ground_process_intensity(encoding, occupancy, axis_centers, position_std, dtype)
        if progress is not None:
            progress.update(1)
    return Encoding(occupancy, electrodes, summed)


def likelihood_grid(encoding: Encoding, interior: np.ndarray, axis_centers, position_std, dtype) -> LikelihoodGrid:
    """interior : (n_bins,) bool mask of the grid's interior bins."""
    occupancy = encoding.occupancy[interior]
    with np.errstate(divide="ignore"):
        log_occupancy = np.where(occupancy > 0, np.log(occupancy), np.inf)
    return LikelihoodGrid(
        interior_axis_index=tuple(
            on_device(i, np.int32) for i in np.unravel_index(np.flatnonzero(interior), [len(c) for c in axis_centers])
        ),
        axis_centers=tuple(on_device(c, dtype) for c in axis_centers),
        position_std=on_device(position_std, dtype),
        log_occupancy=on_device(log_occupancy, dtype),
        ground=on_device(encoding.summed_ground_process_intensity[interior], dtype),
    )


def prepare_decoding_spikes(
    encoding: Encoding, spike_bins: list[tuple[np.ndarray, np.ndarray]], marks: list[np.ndarray], waveform_std, dtype
) -> list[DecodingSpikes]:
    """Per electrode group: its kept spikes' bins and scaled marks, and its padded encoding.

    spike_bins[e] : (kept (n_e,) bool, bins (n_kept,)) from ``inputs.spike_time_bins``.
    """
    prepared = []
    for electrode, (kept, bins), group_marks in zip(encoding.electrodes, spike_bins, marks):
        n_encoding, n_features = electrode.marks.shape
        std = np.broadcast_to(np.asarray(waveform_std, dtype=float), (n_features,))
        center = electrode.marks.mean(axis=0) if n_encoding else np.zeros(n_features)
        scaled = (group_marks[kept] - center) / std
        if not n_encoding:
            prepared.append(DecodingSpikes(bins, scaled, None, None, None, None))
            continue
        # each electrode padded to its own bucket: electrodes of similar size share a
        # compiled shape, and none computes on another's padding
        n_padded = encoding_bucket(n_encoding)
        enc_marks, valid = _pad_rows((electrode.marks - center) / std, n_padded)
        enc_positions, _ = _pad_rows(electrode.positions, n_padded)
        log_scale = np.log(electrode.mean_rate / n_encoding) - np.sum(np.log(std * np.sqrt(2 * np.pi)))
        prepared.append(
            DecodingSpikes(
                bins=bins,
                marks=scaled,
                encoding_mark_terms=on_device(mark_terms(enc_marks, valid), dtype),
                encoding_valid=on_device(valid),
                encoding_positions=on_device(enc_positions, dtype),
                log_scale=on_device(log_scale, dtype),
            )
        )
    return prepared


@jax.jit
def interior_position_kernel(samples: jnp.ndarray, axis_centers: tuple, std: jnp.ndarray, axis_index: tuple):
    """``position_kernel`` at the interior bins only, (n_samples, N): each bin's column is
    the product of the per-axis factors at its index along each axis (``axis_index``,
    per axis (N,)), the same products ``position_kernel`` forms, and none of the others.
    """
    if len(axis_centers) == 1:
        # a track: the Gaussian at the interior centres themselves, the same numbers
        # without a gather, which costs more than the few exponentials it would save
        return _axis_factor(samples[:, 0], axis_centers[0][axis_index[0]], std[0])
    kernel = None
    for d, (centers, index) in enumerate(zip(axis_centers, axis_index)):
        factor = _axis_factor(samples[:, d], centers, std[d])[:, index]
        kernel = factor if kernel is None else kernel * factor
    return kernel


def log_likelihood_rows(
    grid: LikelihoodGrid,
    spikes: list[DecodingSpikes],
    start: int,
    stop: int,
    n_rows: int,
    is_missing: np.ndarray,
    max_block: int,
    progress=None,
) -> jnp.ndarray:
    """LL_i(x) at interior bins for time bins [start, stop), padded to ``n_rows``:
    (n_rows, N). Bins outside the track carry no probability, so it is never computed
    there. is_missing : (n_time,) bool for the whole decode."""
    dtype = grid.ground.dtype
    ll = _minus_ground(grid.ground, n_rows)
    for item in spikes:
        lo, hi = np.searchsorted(item.bins, [start, stop])
        if hi > lo:
            kernel = None
            if item.encoding_positions is not None:
                kernel = interior_position_kernel(
                    item.encoding_positions, grid.axis_centers, grid.position_std, grid.interior_axis_index
                )
            for offset, size in spike_blocks(hi - lo, max_block):
                rows = slice(lo + offset, min(lo + offset + size, hi))
                n = rows.stop - rows.start
                bins = np.full(size, n_rows, dtype=np.int32)  # padding rows fall outside the chunk
                bins[:n] = item.bins[rows] - start
                if kernel is None:
                    ll = add_constant_spike_terms(ll, bins)
                    continue
                block_marks = np.zeros((size, item.marks.shape[1]), dtype)
                block_marks[:n] = item.marks[rows]
                ll = add_spike_terms(
                    ll, bins, block_marks, item.encoding_mark_terms, kernel, grid.log_occupancy, item.log_scale,
                )  # fmt: skip
        if progress is not None:
            progress.update(1)
    missing = np.zeros(n_rows, dtype=bool)
    missing[: stop - start] = is_missing[start:stop]
    return _set_missing(ll, missing) if missing.any() else ll


@partial(jax.jit, static_argnums=1)
def _minus_ground(ground: jnp.ndarray, n_rows: int) -> jnp.ndarray:
    """(n_rows, N) rows of -ground: where the spikes' terms are added."""
    return jnp.broadcast_to(-ground, (n_rows, ground.shape[0]))


@partial(jax.jit, donate_argnums=0)
def _set_missing(log_likelihood: jnp.ndarray, missing: jnp.ndarray) -> jnp.ndarray:
    return jnp.where(missing[:, jnp.newaxis], MISSING_LOG_LIKELIHOOD, log_likelihood)


# ---------------------------------------------------------------------- states of one bin
#
# The non-local detector's Local state is the likelihood at the animal's own position
# p_t (interpolated at each bin and at each spike), from the same encoding model but
# evaluated at a point instead of on the grid:
#
#     LL_local(t) = sum_e [ sum_{spikes k of e in bin t} max(log(lambda_e dens_e(p_k, m_k) / occ(p_k)), log 1e-15)
#                           - lambda_e gpi_e(p_t) / occ(p_t) ]
#
# with occ(p) = mean over training samples of K_x(p - pos), gpi_e(p) = mean_j K_x(p - x_j)
# and dens_e(p, m) = mean_j K_x(p - x_j) K_m(m - m_j). Its No-Spike state is a Poisson
# process of a tiny rate r per bin on every electrode group:
#
#     LL_no_spike(t) = sum_e (n_e,t log r - r),      r = no_spike_rate * median bin width.


@jax.jit
def _log_position_kernel_block(points, samples, valid, std):
    """log K_x(p - s) for a block: points (B, D), samples (S, D) -> (B, S), -inf on padding."""
    squared = jnp.zeros((points.shape[0], samples.shape[0]), points.dtype)
    for d in range(points.shape[1]):  # one (B, S) array per dimension, never (B, S, D)
        squared = squared + ((points[:, d, jnp.newaxis] - samples[jnp.newaxis, :, d]) / std[d]) ** 2
    log_kernel = -0.5 * squared - jnp.sum(jnp.log(std * jnp.sqrt(2.0 * jnp.pi)))
    return jnp.where(valid[jnp.newaxis, :], log_kernel, -jnp.inf)


@jax.jit
def _weighted_density_block(points, samples, weights, std):
    """sum_s weights_s K_x(p - s) for a block of points: (B,)."""
    valid = weights != 0
    return jnp.exp(_log_position_kernel_block(points, samples, valid, std)) @ weights


def density_at(points: np.ndarray, samples: np.ndarray, weights: np.ndarray, std: np.ndarray, dtype) -> np.ndarray:
    """sum_s weights_s K_x(p - s) at each point: (n_points,) float64, in fixed-size
    blocks of points and samples (one compiled shape). points (n, D); samples (S, D)."""
    total = np.zeros(points.shape[0])
    if not samples.shape[0] or not points.shape[0]:
        return total
    std = on_device(std, dtype)
    rows = min(_SAMPLE_BLOCK, 1 << max(5, (points.shape[0] - 1).bit_length()))  # few points: a small block
    for i in range(0, points.shape[0], rows):
        block, _ = _pad_rows(points[i : i + rows], rows)
        block = on_device(block, dtype)
        for j in range(0, samples.shape[0], _SAMPLE_BLOCK):
            chunk, _ = _pad_rows(samples[j : j + _SAMPLE_BLOCK], _SAMPLE_BLOCK)
            chunk_weights, _ = _pad_rows(weights[j : j + _SAMPLE_BLOCK], _SAMPLE_BLOCK)
            part = _weighted_density_block(block, np.asarray(chunk, dtype), np.asarray(chunk_weights, dtype), std)
            total[i : i + rows] += np.asarray(part, dtype=np.float64)[: min(rows, points.shape[0] - i)]
    return total


@jax.jit
def _local_spike_terms(positions, marks, encoding_positions, mark_terms, encoding_valid, position_std, log_scale):
    """log(lambda_e mean_j K_x(p_k - x_j) K_m(m_k - m_j)) for a block of spikes: (B,).

    positions (B, D) and marks (B, F) of the spikes (marks scaled as ``DecodingSpikes``);
    encoding_positions, mark_terms (``mark_terms``) and encoding_valid padded to E rows;
    log_scale as ``DecodingSpikes.log_scale``.
    """
    log_position = _log_position_kernel_block(positions, encoding_positions, encoding_valid, position_std)
    log_mark = _mark_scores(marks, mark_terms) - 0.5 * jnp.sum(marks**2, axis=1, keepdims=True)
    return logsumexp(log_position + log_mark, axis=1) + log_scale


def local_log_likelihood(
    encoding: Encoding,
    training_positions: np.ndarray,
    spikes: list[DecodingSpikes],
    spike_positions: list[np.ndarray],
    bin_positions: np.ndarray,
    position_std: np.ndarray,
    dtype,
) -> np.ndarray:
    """LL_local(t) for every time bin: (n_time,) float64.

    spike_positions[e] : (n_kept, D) the animal's position at each kept spike of group e
    (decoding coordinates); bin_positions : (n_time, D) at each bin.
    """
    n_time = bin_positions.shape[0]
    mean_weights = np.full(training_positions.shape[0], 1.0 / training_positions.shape[0])
    occupancy = density_at(bin_positions, training_positions, mean_weights, position_std, dtype)
    rates = [
        np.full(e.positions.shape[0], e.mean_rate / e.positions.shape[0]) for e in encoding.electrodes if e.positions.size
    ]
    ground = np.zeros(n_time)
    if rates:
        samples = np.concatenate([e.positions for e in encoding.electrodes if e.positions.size])
        ground = density_at(bin_positions, samples, np.concatenate(rates), position_std, dtype)
    with np.errstate(divide="ignore", invalid="ignore"):
        ll = -np.where(occupancy > 0, ground / occupancy, 0.0)
    std = on_device(position_std, dtype)
    for item, positions in zip(spikes, spike_positions):
        if not item.bins.size:
            continue
        if item.encoding_positions is None:
            np.add.at(ll, item.bins, LOG_EPS)
            continue
        terms = np.empty(item.bins.size)
        for start in range(0, item.bins.size, _SAMPLE_BLOCK):
            block = slice(start, min(start + _SAMPLE_BLOCK, item.bins.size))
            padded_positions, _ = _pad_rows(positions[block], _SAMPLE_BLOCK)
            padded_marks, _ = _pad_rows(item.marks[block], _SAMPLE_BLOCK)
            values = _local_spike_terms(
                np.asarray(padded_positions, dtype), np.asarray(padded_marks, dtype), item.encoding_positions,
                item.encoding_mark_terms, item.encoding_valid, std, item.log_scale,
            )  # fmt: skip
            terms[block] = np.asarray(values, dtype=np.float64)[: block.stop - block.start]
        at_spike = density_at(positions, training_positions, mean_weights, position_std, dtype)
        with np.errstate(divide="ignore"):
            terms = np.maximum(terms - np.log(at_spike), LOG_EPS)
        np.add.at(ll, item.bins, terms)
    return ll


def no_spike_log_likelihood(spike_bins: list[np.ndarray], n_time: int, rate_per_bin: float) -> np.ndarray:
    """LL_no_spike(t) = sum_e (n_e,t log r - r): (n_time,) float64. spike_bins[e] : (n_kept,)."""
    counts = np.zeros(n_time)
    for bins in spike_bins:
        counts += np.bincount(bins, minlength=n_time)[:n_time]
    return counts * np.log(rate_per_bin) - len(spike_bins) * rate_per_bin

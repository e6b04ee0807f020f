"""The filter and smoother of ``inference``, compiled for the CPU on a track.

A track's grid has one axis of n bins (n in the hundreds), so one time bin's work is a
few products with the (n, n) walk kernel: about a microsecond of arithmetic. XLA's scan
costs several microseconds per step whatever the step holds, which made small decodes
slow for their size; these loops, compiled by numba, cost what the arithmetic costs.

The maths is ``inference``'s, term for term (see its docstring and ``transitions``):
with K point states, G grid states, D the (S, S) discrete transitions, m the interior
mask, w the walk's inverse row normalizers, W the symmetric (n, n) walk kernel, N the
number of interior bins and mass_s the probability of state s,

    filter      u_t = pi_t f_t (grid floored at 1e-15 inside),  c_t = sum u_t,
                where f_t = exp(l_t - max l_t) (``factors``)
    predict     q_k = sum_s D[s, k] mass_s;  q_g = m (sum_s D[s, g] mass_s - [g = 0] D00 mass_0) / N
                q_0 += D00 m (W (p_0 w))                              (D00 = D[K, K])
    backward    b_k = (D v)_k;  b_g = m (D v)_g;  b_0 += D00 (w (W (m r_0)) - m v_0)
                where v = (r_point, the interior means of r_grid)

W is Gaussian in the distance along the track, so in float32 most of it is exactly 0:
a bin reaches only bins within a few movement standard deviations. The products run
over the nonzero stretches of columns of each block of a few rows only (``kernel``),
which gives the dense product's terms, zeros left out.

The loops run with denormal numbers flushed to zero, as XLA's do (``denormals_flushed``).
Arrays are NumPy float32, as on the JAX path; the grid states are (G, n) rows that hold
the bins outside the track too (zero there). Each function takes a chunk of time bins
and writes into arrays it is given, so ``inference.filter_and_smooth`` streams a decode
of any length through them as through the XLA scans.
"""

from __future__ import annotations

import math
import platform
from contextlib import contextmanager
from typing import NamedTuple

import numba
import numpy as np
from llvmlite import ir
from numba.core import cgutils
from numba.extending import intrinsic

_FLOOR = np.float32(1e-15)
_OPTIONS = {"nogil": True, "cache": True, "error_model": "numpy"}
# Reassociating sums lets them run in SIMD lanes; a float32 sum's order changes it by
# rounding only. NaN and infinities keep their meaning (no "nnan"/"ninf").
_FAST = {"reassoc", "contract"}
_LANES = 16  # a run's length is rounded up to this, so its loop has no scalar tail
_ROWS = 4  # rows of W per pass over their columns (``_walk`` keeps one sum per row)


class Kernel(NamedTuple):
    """The walk kernel and its nonzero stretches, by blocks of _ROWS rows.

    values : (m, n) float32 W, m = n rounded up to whole blocks (the rows added are 0).
    runs_start, runs_stop : (R,) column ranges [start, stop); block_runs : (m / _ROWS
    + 1,) block b's runs are runs_start[block_runs[b]:block_runs[b + 1]].
    A row's loop over its columns costs more than its multiplications, so the rows of a
    block share one: several sums read each x[j] in one pass (0.6 us per product on
    the benchmark's W-track, against 0.9 us row by row).
    The ranges are unsigned: numba then drops its check for negative indices, which
    otherwise keeps the products' loops from running in SIMD lanes (7x slower).
    """

    values: np.ndarray
    block_runs: np.ndarray
    runs_start: np.ndarray
    runs_stop: np.ndarray


def kernel(values: np.ndarray) -> Kernel:
    """The runs of the nonzero columns of each block of rows, lengthened to whole SIMD
    widths where the block allows it. A run ends where the next nonzero column is more
    than a width away, so the columns a run gains hold zeros."""
    n = values.shape[0]
    padded = np.zeros((-(-n // _ROWS) * _ROWS, n), np.float32)
    padded[:n] = values
    block_runs, starts, stops = [0], [], []
    for first in range(0, padded.shape[0], _ROWS):
        columns = np.flatnonzero(padded[first : first + _ROWS].any(axis=0))
        if columns.size:
            breaks = np.flatnonzero(np.diff(columns) > _LANES) + 1
            for run in np.split(columns, breaks):
                start = int(run[0])
                starts.append(start)
                stops.append(min(n, start + -(-(int(run[-1]) + 1 - start) // _LANES) * _LANES))
        block_runs.append(len(starts))
    return Kernel(padded, np.array(block_runs, np.uint64), np.array(starts, np.uint64), np.array(stops, np.uint64))


def factors(ll_point: np.ndarray, ll_grid: np.ndarray, interior_index: np.ndarray, n: int):
    """The likelihood as the filter multiplies by it: f = exp(l - max l) per time bin.

    ll_point (T, K), ll_grid (T, N) at ``interior_index``. returns point factors (T, K),
    grid factors (T, n) (0 outside the track) and max l (T,) (0 where it is not finite).
    """
    largest = np.maximum(ll_grid.max(axis=1, initial=-np.inf), ll_point.max(axis=1, initial=-np.inf))
    largest = np.where(np.isfinite(largest), largest, 0.0).astype(np.float32)[:, np.newaxis]
    grid = np.full((ll_grid.shape[0], n), -np.inf, np.float32)
    # the interior is a few stretches of bins: copy each as a slice (a fancy-index
    # assignment of every column costs several times the exponentials)
    breaks = np.flatnonzero(np.diff(interior_index) != 1) + 1
    for first, last in zip(np.r_[0, breaks], np.r_[breaks, interior_index.size]):
        if last > first:
            start = interior_index[first]
            np.subtract(ll_grid[:, first:last], largest, out=grid[:, start : start + last - first])
    return np.exp(ll_point - largest), np.exp(grid, out=grid), largest[:, 0]


@numba.njit(fastmath=_FAST, **_OPTIONS)
def _walk(W, block_runs, runs_start, runs_stop, x, out):
    """out = W x over W's nonzero runs; x (n,), out (m,) (``Kernel``)."""
    for block in range(block_runs.shape[0] - 1):
        i = block * _ROWS
        total_0 = np.float32(0.0)
        total_1 = np.float32(0.0)
        total_2 = np.float32(0.0)
        total_3 = np.float32(0.0)
        for run in range(block_runs[block], block_runs[block + 1]):
            for j in range(runs_start[run], runs_stop[run]):
                total_0 += W[i, j] * x[j]
                total_1 += W[i + 1, j] * x[j]
                total_2 += W[i + 2, j] * x[j]
                total_3 += W[i + 3, j] * x[j]
        out[i] = total_0
        out[i + 1] = total_1
        out[i + 2] = total_2
        out[i + 3] = total_3


@numba.njit(fastmath=_FAST, **_OPTIONS)
def _walk_two(W, block_runs, runs_start, runs_stop, x, y, out_x, out_y):
    """out_x = W x and out_y = W y, two rows at a time: each pass over a block's runs
    reads W once for both products (four sums: more would not stay in registers)."""
    for block in range(block_runs.shape[0] - 1):
        for i in range(block * _ROWS, (block + 1) * _ROWS, 2):
            x_0 = np.float32(0.0)
            x_1 = np.float32(0.0)
            y_0 = np.float32(0.0)
            y_1 = np.float32(0.0)
            for run in range(block_runs[block], block_runs[block + 1]):
                for j in range(runs_start[run], runs_stop[run]):
                    x_0 += W[i, j] * x[j]
                    x_1 += W[i + 1, j] * x[j]
                    y_0 += W[i, j] * y[j]
                    y_1 += W[i + 1, j] * y[j]
            out_x[i] = x_0
            out_x[i + 1] = x_1
            out_y[i] = y_0
            out_y[i + 1] = y_1


@numba.njit(fastmath=_FAST, **_OPTIONS)
def _predict(point, grid, walked, interior, discrete, n_interior, out_point, out_grid, mass):
    """(out_point (K,), out_grid (G, n)) = (point, grid) A, the one-step prediction,
    given walked = W (grid[0] w) (n,). mass (S,) is work space."""
    n_point, n_grid, n = point.shape[0], grid.shape[0], grid.shape[1]
    for k in range(n_point):
        mass[k] = point[k]
    for g in range(n_grid):
        total = np.float32(0.0)
        for i in range(n):
            total += grid[g, i]
        mass[n_point + g] = total
    for k in range(n_point):
        total = np.float32(0.0)
        for s in range(n_point + n_grid):
            total += mass[s] * discrete[s, k]
        out_point[k] = total
    stays = discrete[n_point, n_point]
    for g in range(n_grid):
        into = np.float32(0.0)
        for s in range(n_point + n_grid):
            into += mass[s] * discrete[s, n_point + g]
        if g == 0:
            into -= stays * mass[n_point]
        level = into / n_interior
        if g == 0:
            for i in range(n):
                out_grid[g, i] = level * interior[i] + stays * (interior[i] * walked[i])
        else:
            for i in range(n):
                out_grid[g, i] = level * interior[i]


@numba.njit(fastmath=_FAST, **_OPTIONS)
def _store(point, grid, outside, out, states):
    """One time bin's distribution (point (K,), grid (G, n)) in the stored layout: out
    (K + G n,) with NaN at the ``outside`` bins, and states (S,) its state probabilities."""
    n_point, n_grid, n = point.shape[0], grid.shape[0], grid.shape[1]
    for k in range(n_point):
        out[k] = point[k]
        states[k] = point[k]
    for g in range(n_grid):
        mass = np.float32(0.0)
        row = out[n_point + g * n : n_point + (g + 1) * n]
        for i in range(n):
            mass += grid[g, i]
            row[i] = grid[g, i]
        for i in outside:
            row[i] = np.nan
        states[n_point + g] = mass


def filter_chunk(*args) -> float:
    """``_filter_loop`` with denormals flushed to zero (``denormals_flushed``)."""
    with denormals_flushed():
        return _filter_loop(*args)


def smoother_chunk(*args) -> None:
    """``_smoother_loop`` with denormals flushed to zero (``denormals_flushed``)."""
    with denormals_flushed():
        _smoother_loop(*args)


@numba.njit(fastmath=_FAST, **_OPTIONS)
def _filter_loop(
    W, block_runs, runs_start, runs_stop, interior, inverse_normalizer, discrete, n_interior,
    prior_point, prior_grid, point_factors, grid_factors, largest, causal_out, states_out, predicted_out,
):  # fmt: skip
    """The causal posterior of T time bins, from the predicted distribution of the first.

    prior_point (K,), prior_grid (G, n): pi for the chunk's first bin, updated in place
    to the prediction for the bin after the chunk. point_factors (T, K), grid_factors
    (T, n), largest (T,): ``factors``. Writes causal_out (T, K + G n) in the stored
    layout (NaN outside the track), states_out (T, S) its state probabilities and
    predicted_out (T, S) the prior's. returns the chunk's log marginal likelihood.
    """
    n_time = grid_factors.shape[0]
    n_point, n_grid, n = prior_point.shape[0], prior_grid.shape[0], prior_grid.shape[1]
    point = np.empty(n_point, np.float32)
    grid = np.empty((n_grid, n), np.float32)
    mass = np.empty(n_point + n_grid, np.float32)
    source, walked = np.empty(n, np.float32), np.empty(W.shape[0], np.float32)
    outside = np.flatnonzero(interior == 0)
    log_marginal = 0.0
    for t in range(n_time):
        total = np.float32(0.0)
        for k in range(n_point):
            predicted_out[t, k] = prior_point[k]
            point[k] = prior_point[k] * point_factors[t, k]
            total += point[k]
        for g in range(n_grid):
            prior_mass = np.float32(0.0)
            for i in range(n):
                prior_mass += prior_grid[g, i]
                grid[g, i] = max(prior_grid[g, i] * grid_factors[t, i], _FLOOR) * interior[i]
                total += grid[g, i]
            predicted_out[t, n_point + g] = prior_mass
        scale = np.float32(1.0) / total
        for k in range(n_point):
            point[k] *= scale
        for g in range(n_grid):
            for i in range(n):
                grid[g, i] *= scale
        _store(point, grid, outside, causal_out[t], states_out[t])
        log_marginal += math.log(total) + largest[t]
        for i in range(n):
            source[i] = grid[0, i] * inverse_normalizer[i]
        _walk(W, block_runs, runs_start, runs_stop, source, walked)
        _predict(point, grid, walked, interior, discrete, n_interior, prior_point, prior_grid, mass)
    return log_marginal


@numba.njit(fastmath=_FAST, **_OPTIONS)
def _smoother_loop(
    W, block_runs, runs_start, runs_stop, interior, inverse_normalizer, discrete, n_interior,
    next_point, next_grid, causal, is_last, acausal_out, states_out,
):  # fmt: skip
    """The acausal posterior of T time bins, scanning backwards.

    next_point (K,), next_grid (G, n): the acausal posterior of the bin after the chunk
    (any value if the chunk holds the last bin), updated in place to the chunk's first
    bin's. causal (T, K + G n): the stored causal posterior (NaN outside the track).
    is_last (T,): True at the session's last bin. Writes acausal_out (T, K + G n) and
    states_out (T, S).
    """
    n_time = causal.shape[0]
    n_point, n_grid, n = next_point.shape[0], next_grid.shape[0], next_grid.shape[1]
    n_states = n_point + n_grid
    stays = discrete[n_point, n_point]
    c_point = np.empty(n_point, np.float32)
    c_grid = np.empty((n_grid, n), np.float32)
    q_point = np.empty(n_point, np.float32)
    q_grid = np.empty((n_grid, n), np.float32)
    value = np.empty(n_states, np.float32)
    mass = np.empty(n_states, np.float32)
    source, walked = np.empty(n, np.float32), np.empty(W.shape[0], np.float32)
    # the walk of a bin's prediction, W (causal_t[grid 0] w), depends on the causal
    # posterior only: it is done one bin ahead, in one pass with the backward walk
    causal_source, causal_walked = np.empty(n, np.float32), np.empty(W.shape[0], np.float32)
    walked_ahead = False
    outside = np.flatnonzero(interior == 0)
    for t in range(n_time - 1, -1, -1):
        for k in range(n_point):
            c_point[k] = causal[t, k]
        for g in range(n_grid):
            row = causal[t, n_point + g * n : n_point + (g + 1) * n]
            for i in range(n):
                c_grid[g, i] = row[i]
            for i in outside:
                c_grid[g, i] = np.float32(0.0)
        if is_last[t]:
            next_point[:] = c_point
            next_grid[:, :] = c_grid
            walked_ahead = False
        else:
            if not walked_ahead:
                for i in range(n):
                    causal_source[i] = c_grid[0, i] * inverse_normalizer[i]
                _walk(W, block_runs, runs_start, runs_stop, causal_source, causal_walked)
            _predict(c_point, c_grid, causal_walked, interior, discrete, n_interior, q_point, q_grid, mass)
            # the ratio r = acausal_{t+1} / predicted (0 where predicted is 0), in q
            for k in range(n_point):
                q_point[k] = next_point[k] / q_point[k] if q_point[k] > 0 else np.float32(0.0)
                value[k] = q_point[k]
            for g in range(n_grid):
                interior_sum = np.float32(0.0)
                for i in range(n):
                    q = q_grid[g, i]
                    q_grid[g, i] = next_grid[g, i] / q if q > 0 else np.float32(0.0)
                    interior_sum += interior[i] * q_grid[g, i]
                value[n_point + g] = interior_sum / n_interior
            for i in range(n):
                source[i] = interior[i] * q_grid[0, i]
            walked_ahead = t > 0
            if walked_ahead:
                row = causal[t - 1, n_point : n_point + n]
                for i in range(n):
                    causal_source[i] = row[i] * inverse_normalizer[i]
                for i in outside:
                    causal_source[i] = np.float32(0.0)
                _walk_two(W, block_runs, runs_start, runs_stop, source, causal_source, walked, causal_walked)
            else:
                _walk(W, block_runs, runs_start, runs_stop, source, walked)
            total = np.float32(0.0)
            for k in range(n_point):
                back = np.float32(0.0)
                for s in range(n_states):
                    back += discrete[k, s] * value[s]
                next_point[k] = c_point[k] * back
                total += next_point[k]
            for g in range(n_grid):
                back = np.float32(0.0)
                for s in range(n_states):
                    back += discrete[n_point + g, s] * value[s]
                if g == 0:
                    for i in range(n):
                        walk = inverse_normalizer[i] * walked[i] - value[n_point] * interior[i]
                        b = back * interior[i] + stays * walk
                        next_grid[g, i] = c_grid[g, i] * b
                        total += next_grid[g, i]
                else:
                    for i in range(n):
                        next_grid[g, i] = c_grid[g, i] * (back * interior[i])
                        total += next_grid[g, i]
            scale = np.float32(1.0) / total
            for k in range(n_point):
                next_point[k] *= scale
            for g in range(n_grid):
                for i in range(n):
                    next_grid[g, i] *= scale
        _store(next_point, next_grid, outside, acausal_out[t], states_out[t])


# ------------------------------------------------------------------ denormal numbers
#
# Far from the animal, the walk multiplies kernel entries near 1e-38 by probabilities
# near 1e-15, and float32 products below 1.2e-38 are denormal. Intel cores compute
# each of those in a slow microcode assist: on a Xeon the loops ran 10-15 times slower
# than they do with the bits below set. XLA (our scans, and the reference's)
# runs with the SSE control bits FTZ and DAZ set, which make such numbers 0; the loops
# run under the same bits, so they compute what XLA computes, at full speed.

_FTZ_DAZ = 0x8040  # MXCSR bits 15 (flush to zero) and 6 (denormals are zero)
X86_64 = platform.machine().lower() in ("x86_64", "amd64")  # where MXCSR exists


def _call_x86(builder, name: str, slot) -> None:
    """Emit a call of the LLVM intrinsic ``name`` (stmxcsr or ldmxcsr) on a 32-bit slot."""
    function = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [slot.type]), name)
    builder.call(function, [slot])


@intrinsic
def _read_mxcsr(typingctx):
    def codegen(context, builder, signature, args):
        slot = cgutils.alloca_once(builder, ir.IntType(32))
        _call_x86(builder, "llvm.x86.sse.stmxcsr", slot)
        return builder.load(slot)

    return numba.types.uint32(), codegen


@intrinsic
def _write_mxcsr(typingctx, value):
    def codegen(context, builder, signature, args):
        _call_x86(builder, "llvm.x86.sse.ldmxcsr", cgutils.alloca_once_value(builder, args[0]))
        return context.get_dummy_value()

    return numba.types.void(numba.types.uint32), codegen


@numba.njit(**_OPTIONS)
def _mxcsr() -> int:
    return _read_mxcsr()


@numba.njit(**_OPTIONS)
def _set_mxcsr(value) -> None:
    _write_mxcsr(np.uint32(value))


@contextmanager
def denormals_flushed():
    """Run the block with FTZ and DAZ set on this thread, as XLA does, and put the
    thread's control word back after it (NumPy and Python keep their IEEE behaviour).
    Elsewhere than x86-64 the control word is left as it is: the slow assist is x86's."""
    if not X86_64:
        yield
        return
    saved = _mxcsr()
    _set_mxcsr(saved | _FTZ_DAZ)
    try:
        yield
    finally:
        _set_mxcsr(saved)

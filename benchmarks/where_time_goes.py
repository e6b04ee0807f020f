"""Where a warm ``ContFragClusterlessClassifier.predict`` spends its time, on the
simulated scenarios of ``run_benchmarks.py`` (seed 0), and what a first call costs.

    python benchmarks/where_time_goes.py                                   # w_track, 60 s decoded (~70 s)
    python benchmarks/where_time_goes.py --scenario open_field --decoding-s 10   # (~75 s)
    python benchmarks/where_time_goes.py --repeats 5 --json split.json     # more runs, every run kept

Prints three Markdown tables (medians of ``--repeats`` runs; the run times above are
the default ``--repeats 3`` on 2 cores, about a third of it the fresh processes):

1. A warm predict split into its parts: the likelihood (its setup, its spans and, within
   them, ``add_spike_terms`` and the position kernels), the filter scans
   with the layout to and from the stored form (``inference._filter_stored``; on a
   track on the CPU, ``track_inference``'s ``factors`` and ``filter_chunk``), the
   smoother's (``inference._smooth_stored``; on a track ``smoother_chunk``), the copies
   between device and host and the writes into the output arrays,
   ``transitions.make_transitions``, and the rest. Seconds and microseconds per decoded
   time bin. The package is not edited: for the instrumented runs the script replaces
   the module-level functions that predict calls (``inference._filter_stored`` and the
   like, ``inference.np`` by a proxy whose ``asarray`` is timed (host data reaches the
   device as arguments of the compiled calls, inside their time), ``clusterless._Rows``
   by a subclass whose reads and writes are timed) by wrappers that call the original, wait for its result (``jax.block_until_ready``) and add the
   time to their part; everything is restored afterwards. Three kinds of warm predict
   alternate, ``--repeats`` of each: plain (no wrapper: the real figure), instrumented
   (every part above timed, the likelihood's spans as a whole), and fine (as
   instrumented, but also every ``add_spike_terms`` and position-kernel call waited
   for, which stops the likelihood's calls from overlapping, so it is used only for
   their sub-rows). "other" is the instrumented total minus the timed parts.
2. The likelihood's achieved GFLOP/s against this machine's sgemm rate (a 2048^3
   float32 ``jnp.dot`` and NumPy's ``@``, timed in the same process before and after the
   predicts). Flops: per block of decoding spikes 2 B E F (mark distances) + 2 B E N (the
   product with the position kernel): "padded" with the shapes that run, "useful" with
   the real decoding spikes times the real encoding spikes of the electrode.
3. A first call in a fresh process (this script re-invoked with ``--child``): fit, first
   predict, second predict, with no compilation cache, and with a warm persistent cache
   (``decoding_assets.decoder.enable_compilation_cache``: one run fills an empty cache
   and is reported on its own line, then ``--repeats`` runs use it).
   Compilations are counted through ``jax.monitoring``: "compile/load s" is XLA's
   compilation or, on a cache hit, the cache read.

JAX runs on the CPU unless ``JAX_PLATFORMS`` says otherwise (the sgemm comparison is
meant for the CPU).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

_PROCESS_START = time.perf_counter()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

HERE = Path(__file__).resolve().parent
PARAMS = {"position_std": 6.0, "waveform_std": 24.0, "block_size": 10_000, "disable_progress_bar": True}


# ---------------------------------------------------------------------- inputs and fit


def write_inputs(scenario: str, decoding_s: float | None, seed: int, path: Path) -> dict:
    """run_benchmarks.write_inputs, the decoded stretch cut to its first ``decoding_s`` seconds."""
    sys.path.insert(0, str(HERE))
    import run_benchmarks

    info = run_benchmarks.write_inputs(scenario, path, seed)
    if decoding_s is not None:
        if decoding_s > info["decoding_s"]:
            raise SystemExit(f"--decoding-s {decoding_s} is longer than {scenario}'s {info['decoding_s']} s.")
        inputs = dict(np.load(path))
        inputs["decode_time"] = inputs["decode_time"][: int(round(decoding_s * info["sampling_frequency"]))]
        np.savez(path, **inputs)
        info["decoding_s"] = decoding_s
        info["decoding_bins"] = int(inputs["decode_time"].size)
    return info


def fit(inputs: dict):
    """Fit as decode_once.py does; returns (classifier, spike times, marks, fit seconds)."""
    sys.path.insert(0, str(HERE))
    from decode_once import _spikes, _track

    from decoding_assets.decoder import ContFragClusterlessClassifier, Environment

    track = _track(inputs)
    env = Environment(place_bin_size=2.0)
    if track:
        env = Environment(place_bin_size=2.0, track_graph=track[0], edge_order=track[1], edge_spacing=track[2])
    clf = ContFragClusterlessClassifier(environments=env, clusterless_algorithm_params=PARAMS)
    times, marks = _spikes(inputs, "spike")
    start = time.perf_counter()
    clf.fit(inputs["position_time"], inputs["position"], times, marks, is_training=inputs["is_training"])
    return clf, times, marks, time.perf_counter() - start


def predict(clf, times, marks, decode_time) -> float:
    """One predict, as decode_once.py times it (until the acausal posterior is on the host)."""
    start = time.perf_counter()
    results = clf.predict(times, marks, time=decode_time)
    np.asarray(results["acausal_posterior"].values)
    return time.perf_counter() - start


# ---------------------------------------------------------------------- instrumentation


class Split:
    """Seconds and calls per part of one predict; ``fine`` also times the likelihood's calls;
    ``blocks`` (a list) records every add_spike_terms call's shapes when not None."""

    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.fine = False
        self.blocks: list | None = None

    def reset(self, fine: bool = False, record: bool = False) -> None:
        self.seconds.clear()
        self.calls.clear()
        self.fine = fine
        self.blocks = [] if record else None

    def add(self, key: str, seconds: float) -> None:
        self.seconds[key] += seconds
        self.calls[key] += 1


def _tracing(args, kwargs) -> bool:
    import jax

    leaves = jax.tree.leaves((args, kwargs))
    return any(isinstance(x, jax.core.Tracer) for x in leaves)


def _timed(split: Split, fn, key: str, fine_only: bool = False):
    """fn, timed until its result is ready (only in the fine pass if ``fine_only``)."""
    import jax

    def wrapper(*args, **kwargs):
        if (fine_only and not split.fine) or _tracing(args, kwargs):
            return fn(*args, **kwargs)
        start = time.perf_counter()
        out = jax.block_until_ready(fn(*args, **kwargs))
        split.add(key, time.perf_counter() - start)
        return out

    return wrapper


class _TimedAsarray:
    """A module whose ``asarray`` is timed (until the array is ready); the rest is the module's."""

    def __init__(self, module, split: Split, key: str):
        import jax

        def asarray(*args, **kwargs):
            start = time.perf_counter()
            out = jax.block_until_ready(module.asarray(*args, **kwargs))
            split.add(key, time.perf_counter() - start)
            return out

        self._module = module
        self.asarray = asarray

    def __getattr__(self, name):
        return getattr(self._module, name)


@contextlib.contextmanager
def instrumented(split: Split):
    """Replace what predict calls by timing wrappers; restore everything on exit."""
    import jax

    from decoding_assets.decoder import clusterless, inference, track_inference
    from decoding_assets.decoder import likelihood as lik
    from decoding_assets.decoder import transitions as tr

    decoder = clusterless.ClusterlessDecoder
    log_likelihood = decoder.__dict__["_log_likelihood"]

    def timed_log_likelihood(self, *args, **kwargs):
        start = time.perf_counter()
        spans = log_likelihood(self, *args, **kwargs)
        split.add("likelihood setup", time.perf_counter() - start)

        def span(*a, **k):
            begin = time.perf_counter()
            out = jax.block_until_ready(spans(*a, **k))
            split.add("likelihood spans", time.perf_counter() - begin)
            return out

        return span

    add_spike_terms = lik.add_spike_terms

    def recorded_add_spike_terms(*args, **kwargs):
        if split.blocks is not None and not _tracing(args, kwargs):
            ll, bins, decoding_marks, mark_terms, kernel = args[:5]
            split.blocks.append(
                dict(B=int(bins.shape[0]), E=int(mark_terms.shape[0]), F=int(decoding_marks.shape[1]),
                     N=int(kernel.shape[1]), spikes=int((np.asarray(bins) < ll.shape[0]).sum()),
                     encoding=int((np.asarray(mark_terms)[:, -1] > lik._PADDING_SCORE).sum()))
            )  # fmt: skip
        return add_spike_terms(*args, **kwargs)

    class TimedRows(clusterless._Rows):
        def __getitem__(self, rows):
            start = time.perf_counter()
            out = super().__getitem__(rows)
            split.add("reads of the causal posterior (sink[rows])", time.perf_counter() - start)
            return out

        def __setitem__(self, rows, value):
            start = time.perf_counter()
            super().__setitem__(rows, value)
            split.add("writes into the output arrays (sink[rows] = ...)", time.perf_counter() - start)

    def plain_timed(fn, key):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            out = fn(*args, **kwargs)
            split.add(key, time.perf_counter() - start)
            return out

        return wrapper

    patches = [
        # one compiled call per chunk each: the scan with the layout to and from the stored form
        (inference, "_filter_stored", _timed(split, inference._filter_stored, "filter")),
        (inference, "_smooth_stored", _timed(split, inference._smooth_stored, "smoother")),
        # on a track, on the CPU: numba's loops, and the NumPy work around them
        (track_inference, "factors", _timed(split, track_inference.factors, "filter")),
        (track_inference, "filter_chunk", _timed(split, track_inference.filter_chunk, "filter")),
        (track_inference, "smoother_chunk", _timed(split, track_inference.smoother_chunk, "smoother")),
        (inference, "np", _TimedAsarray(inference.np, split, "device->host (np.asarray)")),
        (tr, "make_transitions", _timed(split, tr.make_transitions, "make_transitions")),
        (lik, "add_spike_terms", _timed(split, recorded_add_spike_terms, "add_spike_terms", fine_only=True)),
        (lik, "interior_position_kernel",
         _timed(split, lik.interior_position_kernel, "position kernels", fine_only=True)),
        (clusterless, "_Rows", TimedRows),
        (decoder, "_log_likelihood", timed_log_likelihood),
        (decoder, "_decoding_inputs", plain_timed(decoder.__dict__["_decoding_inputs"], "input checks")),
        (decoder, "_results", plain_timed(decoder.__dict__["_results"], "results (xarray Dataset)")),
    ]
    originals = [(owner, name, owner.__dict__[name] if isinstance(owner, type) else getattr(owner, name))
                 for owner, name, _ in patches]  # fmt: skip
    try:
        for owner, name, replacement in patches:
            setattr(owner, name, replacement)
        yield
    finally:
        for owner, name, original in originals:
            setattr(owner, name, original)


# ---------------------------------------------------------------------- 1. the split

LAYOUT = ()  # fused into the filter's and the smoother's calls (inference._filter_stored, _smooth_stored)
COPIES = (
    "device->host (np.asarray)",
    "writes into the output arrays (sink[rows] = ...)",
    "reads of the causal posterior (sink[rows])",
)
OTHER = ("input checks", "results (xarray Dataset)")


def rows_of(main: dict, fine: dict, total: float, plain: float) -> list[tuple[str, float, int | str]]:
    """(label, seconds, calls) of one round: an instrumented, a fine and a plain predict."""
    s, c = defaultdict(float, main["seconds"]), defaultdict(int, main["calls"])
    fs, fc = defaultdict(float, fine["seconds"]), defaultdict(int, fine["calls"])
    likelihood = s["likelihood setup"] + s["likelihood spans"]
    fine_rest = fs["likelihood spans"] - fs["add_spike_terms"] - fs["position kernels"]
    layout = sum(s[k] for k in LAYOUT)
    copies = sum(s[k] for k in COPIES)
    timed = likelihood + s["filter"] + s["smoother"] + layout + copies + s["make_transitions"]
    other = total - timed
    rows = [
        ("**likelihood**", likelihood, c["likelihood spans"]),
        ("· setup: spike bins, blocks, grid (`_log_likelihood`)", s["likelihood setup"], c["likelihood setup"]),
        ("· spans (`log_likelihood_rows` and the point/missing terms)", s["likelihood spans"], c["likelihood spans"]),
        ("· · `add_spike_terms` ¹", fs["add_spike_terms"], fc["add_spike_terms"]),
        ("· · position kernels (`interior_position_kernel`) ¹", fs["position kernels"], fc["position kernels"]),
        ("· · the rest of the spans (ll init, missing `where`, block prep) ¹", fine_rest, ""),
        ("**filter** (`_filter_stored`; on a track `track_inference.factors`, `filter_chunk`)",
         s["filter"], c["filter"]),
        ("**smoother** (`_smooth_stored`; on a track `track_inference.smoother_chunk`)",
         s["smoother"], c["smoother"]),
        ("**device<->host copies and writes**", copies, sum(c[k] for k in COPIES)),
        *((f"· {k}", s[k], c[k]) for k in COPIES),
        ("**make_transitions**", s["make_transitions"], c["make_transitions"]),
        ("**other**", other, ""),
        *((f"· {k}", s[k], c[k]) for k in OTHER),
        ("· the rest (np.empty outputs, eager slicing/aranges, Python)", other - sum(s[k] for k in OTHER), ""),
        ("**total, instrumented predict**", total, ""),
        ("total, fine pass (every likelihood call waited for)", fine["total"], ""),
        ("**total, plain predict (no wrapper)**", plain, ""),
    ]
    return rows


def split_predict(clf, times, marks, decode_time, repeats: int) -> dict:
    """Rounds of a plain, an instrumented and a fine warm predict, after one that compiles
    and one (instrumented) that records the spike blocks."""
    split = Split()
    first = predict(clf, times, marks, decode_time)  # compiles
    split.reset(fine=True, record=True)
    with instrumented(split):
        predict(clf, times, marks, decode_time)
    blocks = list(split.blocks)
    rounds = []
    for _ in range(repeats):
        record = {"plain": predict(clf, times, marks, decode_time)}
        for kind in ("main", "fine"):
            split.reset(fine=kind == "fine")
            with instrumented(split):
                total = predict(clf, times, marks, decode_time)
            record[kind] = {"total": total, "seconds": dict(split.seconds), "calls": dict(split.calls)}
        rounds.append(record)
    return {"first_predict_s": first, "blocks": blocks, "rounds": rounds}


def split_table(result: dict, n_time: int) -> str:
    per_round = [rows_of(r["main"], r["fine"], r["main"]["total"], r["plain"]) for r in result["rounds"]]
    total = statistics.median(r["main"]["total"] for r in result["rounds"])
    lines = [
        "| part | s | µs/bin | % of instrumented | calls | runs (s) |",
        "|---|---|---|---|---|---|",
    ]
    for i, (label, _, calls) in enumerate(per_round[0]):
        values = [rows[i][1] for rows in per_round]
        m = statistics.median(values)
        runs = " ".join(f"{v:.3f}" for v in values)
        lines.append(f"| {label} | {m:.3f} | {1e6 * m / n_time:.2f} | {100 * m / total:.0f} % | {calls} | {runs} |")
    fine_spans = statistics.median(r["fine"]["seconds"]["likelihood spans"] for r in result["rounds"])
    main_spans = statistics.median(r["main"]["seconds"]["likelihood spans"] for r in result["rounds"])
    lines += [
        "",
        f"¹ From the fine pass, where every `add_spike_terms` and position-kernel call is waited for: its spans "
        f"took {fine_spans:.3f} s (median) against {main_spans:.3f} s in the instrumented pass, so these sub-rows "
        "add up to the fine figure, not to the row above them.",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------- 2. GFLOP/s


def sgemm_rates(repeats: int = 5, n: int = 2048) -> dict:
    """GFLOP/s of an n^3 float32 product: jnp.dot (jitted) and NumPy; every run."""
    import jax
    import jax.numpy as jnp

    rng = np.random.default_rng(0)
    a, b = rng.random((n, n), dtype=np.float32), rng.random((n, n), dtype=np.float32)
    ja, jb = jnp.asarray(a), jnp.asarray(b)
    dot = jax.jit(jnp.dot)
    calls = {"jnp.dot": lambda: dot(ja, jb).block_until_ready(), "numpy": lambda: a @ b}
    rates = {}
    for name, call in calls.items():
        call()
        runs = []
        for _ in range(repeats):
            start = time.perf_counter()
            call()
            runs.append(2 * n**3 / (time.perf_counter() - start) / 1e9)
        rates[name] = runs
    return rates


def _halves(runs: list) -> str:
    half = len(runs) // 2
    return f"{statistics.median(runs[:half]):.1f} / {statistics.median(runs[half:]):.1f}"


def flops_table(result: dict, sgemm: dict) -> str:
    blocks = result["blocks"]
    padded = sum(2 * b["B"] * b["E"] * (b["F"] + b["N"]) for b in blocks)
    useful = sum(2 * b["spikes"] * b["encoding"] * (b["F"] + b["N"]) for b in blocks)
    rounds = result["rounds"]
    spans = statistics.median(r["main"]["seconds"]["likelihood spans"] for r in rounds)
    ast = statistics.median(r["fine"]["seconds"].get("add_spike_terms", 0.0) for r in rounds)
    dot = statistics.median(sgemm["jnp.dot"])
    npy = statistics.median(sgemm["numpy"])
    lines = [
        f"sgemm 2048³ float32, this process, {len(sgemm['jnp.dot'])} runs each (half before the predicts, half "
        f"after): `jnp.dot` median {dot:.1f} GFLOP/s (best {max(sgemm['jnp.dot']):.1f}; medians before / after "
        f"{_halves(sgemm['jnp.dot'])}), NumPy median {npy:.1f} (best {max(sgemm['numpy']):.1f}; "
        f"{_halves(sgemm['numpy'])}).",
        "",
        f"Flops per predict: {padded / 1e9:.2f} GFLOP padded, {useful / 1e9:.2f} GFLOP useful "
        f"({100 * useful / padded:.0f} %); {len(blocks)} `add_spike_terms` calls, "
        f"{len({(b['B'], b['E']) for b in blocks})} distinct (B, E) shapes; rows {sum(b['B'] for b in blocks)} "
        f"for {sum(b['spikes'] for b in blocks)} spikes; encoding rows (per call) "
        f"{sum(b['E'] for b in blocks)} for {sum(b['encoding'] for b in blocks)}.",
        "",
        "| what | s | padded GFLOP/s | % of jnp.dot | % of NumPy | useful GFLOP/s | % of jnp.dot | % of NumPy |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, seconds in (
        ("likelihood spans (instrumented pass)", spans),
        ("`add_spike_terms` only (fine pass)", ast),
    ):
        p, u = padded / seconds / 1e9, useful / seconds / 1e9
        lines.append(
            f"| {label} | {seconds:.3f} | {p:.1f} | {100 * p / dot:.0f} % | {100 * p / npy:.0f} % "
            f"| {u:.1f} | {100 * u / dot:.0f} % | {100 * u / npy:.0f} % |"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------- 3. first call


def child(inputs_path: Path, cache: str | None) -> None:
    """Fresh process: fit, predict twice; print one JSON line with times and compilations."""
    from jax import monitoring

    phase = ["import"]
    stats: dict = defaultdict(lambda: defaultdict(float))

    def on_duration(event, duration, **kwargs):
        stats[phase[0]][event] += duration
        stats[phase[0]][event + " n"] += 1

    def on_event(event, **kwargs):
        stats[phase[0]][event + " n"] += 1

    monitoring.register_event_duration_secs_listener(on_duration)
    monitoring.register_event_listener(on_event)
    from decoding_assets.decoder import enable_compilation_cache

    if cache:
        enable_compilation_cache(cache)
    inputs = dict(np.load(inputs_path))
    ready = time.perf_counter() - _PROCESS_START
    phase[0] = "fit"
    clf, times, marks, fit_s = fit(inputs)
    out = {"ready_s": ready, "fit_s": fit_s}
    for name in ("first", "again"):
        phase[0] = name
        out[f"{name}_s"] = predict(clf, times, marks, inputs["decode_time"])
    for name in ("fit", "first", "again"):
        s = stats[name]
        out[f"{name}_compiles"] = int(s["/jax/core/compile/backend_compile_duration n"])
        out[f"{name}_compile_s"] = s["/jax/core/compile/backend_compile_duration"]
        out[f"{name}_trace_lower_s"] = (
            s["/jax/core/compile/jaxpr_trace_duration"] + s["/jax/core/compile/jaxpr_to_mlir_module_duration"]
        )
        out[f"{name}_cache_hits"] = int(s["/jax/compilation_cache/cache_hits n"])
    print(json.dumps(out))


def run_child(inputs_path: Path, cache: str | None) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--inputs", str(inputs_path)]
    if cache:
        cmd += ["--cache", cache]
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if done.returncode:
        raise RuntimeError(f"child run failed:\n{done.stderr[-4000:]}")
    out = json.loads(done.stdout.strip().splitlines()[-1])
    out["process_wall_s"] = wall
    return out


def first_calls(inputs_path: Path, repeats: int) -> dict:
    runs: dict = {"no cache": [], "warm cache": []}
    with tempfile.TemporaryDirectory(prefix="jax_cache_") as cache:
        runs["cache empty (fills it)"] = [run_child(inputs_path, cache)]
        for _ in range(repeats):
            runs["no cache"].append(run_child(inputs_path, None))
            runs["warm cache"].append(run_child(inputs_path, cache))
        n_files = sum(1 for _ in Path(cache).rglob("*") if _.is_file())
        size = sum(p.stat().st_size for p in Path(cache).rglob("*") if p.is_file())
    runs["cache_files"], runs["cache_bytes"] = n_files, size
    return runs


def first_call_table(runs: dict) -> str:
    columns = [
        ("fit s", lambda r: f"{r['fit_s']:.2f}"),
        ("first predict s", lambda r: f"{r['first_s']:.2f}"),
        ("predict again s", lambda r: f"{r['again_s']:.2f}"),
        ("fit + first s", lambda r: f"{r['fit_s'] + r['first_s']:.2f}"),
        ("compiles or loads (1st predict)", lambda r: f"{r['first_compiles']}"),
        ("cache hits (1st predict)", lambda r: f"{r['first_cache_hits']}"),
        ("compile/load s (1st predict)", lambda r: f"{r['first_compile_s']:.2f}"),
        ("trace+lower s (1st predict)", lambda r: f"{r['first_trace_lower_s']:.2f}"),
        ("compile/load s (fit)", lambda r: f"{r['fit_compile_s']:.2f}"),
        ("imports+inputs s", lambda r: f"{r['ready_s']:.2f}"),
        ("process wall s", lambda r: f"{r['process_wall_s']:.2f}"),
    ]
    lines = [
        "| fresh process | runs | " + " | ".join(c for c, _ in columns) + " |",
        "|---|---" + "|---" * len(columns) + "|",
    ]
    for name in ("no cache", "cache empty (fills it)", "warm cache"):
        group = runs[name]
        median = {k: statistics.median(r[k] for r in group) for k in group[0]}
        lines.append(f"| {name} | {len(group)} | " + " | ".join(f(median) for _, f in columns) + " |")
    lines += [
        "",
        "First predict of each run (s): "
        + "; ".join(
            f"{name}: " + " ".join(f"{r['first_s']:.2f}" for r in runs[name]) for name in ("no cache", "warm cache")
        ),
        f"Cache after all runs: {runs['cache_files']} files, {runs['cache_bytes'] / 1024:.0f} KiB.",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------- main


def machine() -> str:
    import jax

    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{model}, {os.cpu_count()} cores, JAX {jax.__version__} on {jax.devices()[0].platform}"


def main() -> None:
    sys.path.insert(0, str(HERE))
    from run_benchmarks import SCENARIOS

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", choices=list(SCENARIOS), default="w_track")
    parser.add_argument("--decoding-s", type=float, default=None, help="decode only the first seconds (default: all)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-first-call", action="store_true", help="skip table 3 (the fresh processes)")
    parser.add_argument("--json", type=Path, help="also write every run here")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--inputs", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.inputs, args.cache)
        return

    started = time.perf_counter()
    import jax

    with tempfile.TemporaryDirectory(prefix="where_time_goes_") as tmp:
        inputs_path = Path(tmp) / "inputs.npz"
        info = write_inputs(args.scenario, args.decoding_s, args.seed, inputs_path)
        inputs = dict(np.load(inputs_path))
        clf, times, marks, fit_s = fit(inputs)
        n_time = int(inputs["decode_time"].size)
        load_before = os.getloadavg()
        sgemm = sgemm_rates()
        cpu = resource.getrusage(resource.RUSAGE_SELF)
        result = split_predict(clf, times, marks, inputs["decode_time"], args.repeats)
        cpu_after = resource.getrusage(resource.RUSAGE_SELF)
        after = sgemm_rates()
        sgemm = {k: sgemm[k] + after[k] for k in sgemm}
        load_after = os.getloadavg()
        first = None if args.no_first_call else first_calls(inputs_path, args.repeats)

    from decoding_assets.decoder import inference

    n_interior = int(clf.environments.is_track_interior_.sum())
    step, span = inference.chunk_lengths(n_time, clf.layout.width(clf.n_bins_), n_interior)
    encoding = [e.marks.shape[0] for e in clf.encodings_]
    print(f"## where_time_goes: {args.scenario}, {info['decoding_s']:g} s decoded ({n_time} time bins)\n")
    print(f"Machine: {machine()}. Load average {load_before[0]:.2f} before the predicts, {load_after[0]:.2f} after.")
    print(
        f"Grid: {clf.n_bins_} bins, {n_interior} interior; {len(encoding)} electrodes, encoding spikes "
        f"{min(encoding)}–{max(encoding)} (mean {np.mean(encoding):.0f}); chunks of {step} bins, likelihood spans of "
        f"{span}. Fit {fit_s:.2f} s; first predict in this process (compiling) {result['first_predict_s']:.2f} s.\n"
    )
    n_predicts = 2 + 3 * args.repeats
    print(
        f"CPU time of the {n_predicts} predicts of table 1: user {cpu_after.ru_utime - cpu.ru_utime:.1f} s, "
        f"system {cpu_after.ru_stime - cpu.ru_stime:.1f} s, "
        f"{cpu_after.ru_minflt - cpu.ru_minflt} minor page faults.\n"
    )
    print(f"### 1. Warm predict, split (medians of {args.repeats} rounds)\n")
    print(split_table(result, n_time))
    print("\n### 2. The likelihood's GFLOP/s against sgemm\n")
    print(flops_table(result, sgemm))
    if first is not None:
        print(f"\n### 3. First call in a fresh process (medians of {args.repeats}; the cache-filling run once)\n")
        print(first_call_table(first))
    print(f"\nTook {time.perf_counter() - started:.0f} s.")
    if args.json:
        shapes = Counter((b["B"], b["E"]) for b in result["blocks"])
        record = {"info": info, "n_time": n_time, "step": step, "span": span, "fit_s": fit_s, "split": result,
                  "add_spike_terms_shapes": [[*k, v] for k, v in sorted(shapes.items())], "sgemm_gflops": sgemm,
                  "first_calls": first, "jax": jax.__version__}  # fmt: skip
        args.json.write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()

"""The lineage catalog under load: many processes registering decoding outputs at once
while another reads, on a DuckDB file and on PostgreSQL; and how much of one demo
decode the catalog's own calls take.

    python benchmarks/catalog_concurrency.py              # 8 writers x 200 + a reader, both backends; the decodes
    python benchmarks/catalog_concurrency.py --workers 2 --transactions 10 --repeats 1 --skip-decode   # a quick check
    python benchmarks/catalog_concurrency.py --backends postgres --postgres-url postgresql://me@labserver/postgres

Concurrency. Each repeat, each backend gets a fresh catalog holding one session with
``workers x transactions`` selections (one decoding interval each) and a tiny file
per selection. Then ``--workers`` writer processes and one reader start together
(spawned; they import only the catalog, so they start fast). A writer's transaction
is one ``register_output``: a ``decoding_outputs`` row and its 3 ``lineage`` rows,
committed together; an exception is counted and the writer goes on. The reader runs
``len(cat.outputs())`` until the last writer is done. Afterwards the tables are
counted: lost = expected - distinct merge_ids, duplicates = rows - distinct, and
lineage must hold 3 rows per output. Throughput is successful transactions over the
time from the start signal to the last writer's last commit. On a DuckDB file, where
one process at a time holds the file, the reader takes turns with the writers. The
backends alternate within a repeat, so neither always runs on a warmer machine.

PostgreSQL: a throw-away server (``tests/postgres_server.py``; needs the server
binaries, e.g. Debian's ``postgresql``), or with ``--postgres-url`` a server where
you may create databases (psycopg2 creates one per catalog, and drops it after).

Per-decode catalog time. The demo session (``write_demo_session``: 8 tetrodes,
epochs 120/30/60 s, 30 s trials) is registered and prepared as the pipeline does,
and trial ``epoch0_block1_trial1`` is decoded in this process through a proxy that
times every call the pipeline makes to the catalog (register_output's checksum of
the results file included). One warm-up decode (JIT compilation), then
``--repeats`` timed ones.

Medians over repeats are printed as Markdown tables; every run is written to
``benchmarks/results/catalog_concurrency.json``. Targets:
PostgreSQL >= 300 transactions/s with no lost or duplicate rows, and a decode's
catalog calls < 5 % of the decode.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import platform
import queue
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

# the spawned workers import this module: keep it to the catalog and the standard library
from catalog import Catalog, DecodingSelection

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results" / "catalog_concurrency.json"
BACKENDS = ("duckdb", "postgres")
TARGET_TPS = 300.0
TARGET_SHARE = 5.0  # percent of a decode
INPUT_VERSIONS = {"session": {"session.nwb": "h"}, "decoding_params": {"contfrag": "v"}, "code": {"bench": "1"}}
DEMO_TRIAL = "epoch0_block1_trial1"
START_TIMEOUT_S = 600.0  # a worker that is not at the start line by then has failed


# ---------------------------------------------------------------------- where catalogs live


class PostgresDatabases:
    """Fresh databases on one PostgreSQL server: a throw-away one under ``folder``, or
    the server of ``admin_url`` (a database there we may run CREATE DATABASE from)."""

    def __init__(self, folder: Path, admin_url: str | None = None):
        self.admin_url = admin_url
        self.server = None
        self.made: list[str] = []
        if admin_url is None:
            sys.path.insert(0, str(REPO))  # tests/ is not installed
            from tests.postgres_server import PostgresServer

            self.server = PostgresServer(folder / "postgres").start()

    def new(self, name: str) -> str:
        if self.server is not None:
            return self.server.create_database(name)
        self._admin(f'CREATE DATABASE "{name}"')
        self.made.append(name)
        parts = urlsplit(self.admin_url)
        return urlunsplit(parts._replace(path=f"/{name}"))

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()
            return
        # a lab's server: leave nothing behind (FORCE closes this process's own connection)
        for name in self.made:
            try:
                self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            except Exception as error:  # noqa: BLE001 - a leftover database is worth a warning, not a lost run
                print(f"could not drop database {name}: {error}", file=sys.stderr)

    def _admin(self, sql: str) -> None:
        import psycopg2  # only for --postgres-url; not a dependency of the project

        con = psycopg2.connect(self.admin_url)
        try:
            con.autocommit = True  # CREATE/DROP DATABASE refuse to run inside a transaction
            con.cursor().execute(sql)
        finally:
            con.close()


def new_place(backend: str, folder: Path, databases: PostgresDatabases | None, name: str) -> tuple[str, Path]:
    """A location for an empty catalog and a folder for its outputs."""
    folder.mkdir(parents=True, exist_ok=True)
    if backend == "duckdb":
        return str(folder / f"{name}.duckdb"), folder / "outputs"
    return databases.new(name), folder / "outputs"


# ---------------------------------------------------------------------- concurrency


def prepare_catalog(location: str, output_dir: Path, folder: Path, n: int) -> tuple[Catalog, list[tuple]]:
    """A catalog with one session and ``n`` selections, each with its two output files
    written: what ``n`` finished decodes would leave for their workers to register.
    Returns (catalog, [(merge_id, results path, model path)])."""
    import numpy as np

    cat = Catalog(location, output_dir)
    nwb = folder / "session.nwb"
    nwb.write_bytes(b"a stand-in: the catalog reads only its name and checksum")
    intervals = {f"trial{i:05d}": (np.array([[i, i + 0.5]]), "trial") for i in range(n)}
    intervals["00_r1"] = (np.array([[0.0, float(n)]]), "epoch")
    name = cat.register_session(
        nwb, interval_lists=intervals, electrode_groups=[("tetrode_00", 4, "CA1")],
        waveform_features=[{"electrode_group_name": "tetrode_00", "features_param_name": "amplitude", "n_spikes": 10,
                            "n_features": 4, "source": "nwb", "content_hash": "abc"}],
    )  # fmt: skip
    cat.create_features_group(name, "all_tetrodes")
    cat.insert_position_params("default_decoding", {"max_plausible_speed": 100.0})
    position = cat.position_output_path(name, "00_r1", "default_decoding")
    position.write_bytes(b"position")
    cat.register_position_output(name, "00_r1", "default_decoding", position, 10)
    cat.create_position_group(name, "run_epochs", ["00_r1"])
    cat.insert_decoding_params("contfrag", {"block_size": 1000})
    work = []
    # one connection for the whole loop: a file catalog would otherwise open the file
    # three times per selection, and setup is not what is measured
    with cat.db.connect():
        for i in range(n):
            selection = DecodingSelection(name, "all_tetrodes", "run_epochs", "contfrag", "00_r1", f"trial{i:05d}")
            merge_id = cat.insert_selection(selection)
            path, model = cat.output_paths(selection)
            path.write_bytes(merge_id.encode())
            model.write_bytes(b"model")
            work.append((merge_id, str(path), str(model)))
    return cat, work


def write_outputs(index: int, location: str, output_dir: str, work: list, barrier, results) -> None:
    """A writer process: register each output once, timing each transaction."""
    report = {"role": "writer", "index": index, "latencies": [], "errors": 0, "error_messages": Counter()}
    try:
        cat = Catalog(location, output_dir, user=f"bench-writer{index}")  # connecting is not part of the race
        barrier.wait(timeout=START_TIMEOUT_S)
        report["start"] = time.monotonic()
        for merge_id, path, model in work:
            began = time.perf_counter()
            try:
                cat.register_output(
                    merge_id, path=path, model_path=model, code_version="bench", input_versions=INPUT_VERSIONS,
                    n_time_bins=1, run_seconds=0.0, device="cpu", median_decoding_error_cm=1.0,
                )  # fmt: skip
            except Exception as error:  # noqa: BLE001 - counted: a failed transaction is a result here
                report["errors"] += 1
                report["error_messages"][_describe(error)] += 1
                continue
            report["latencies"].append(time.perf_counter() - began)
        # monotonic is CLOCK_MONOTONIC on Linux, one clock for every process: start and
        # end times of different writers compare
        report["end"] = time.monotonic()
    except Exception as error:  # noqa: BLE001 - reported to the parent instead of a silent exit
        report["fatal"] = _describe(error)
        barrier.abort()
    report["error_messages"] = dict(report["error_messages"].most_common(5))
    results.put(report)


def read_outputs(location: str, barrier, writers_done, results) -> None:
    """The reader process: list every output, again and again, until the writers are done."""
    report = {"role": "reader", "latencies": [], "errors": 0, "error_messages": Counter(), "counts": []}
    try:
        cat = Catalog(location)
        barrier.wait(timeout=START_TIMEOUT_S)
        while not writers_done.is_set():
            began = time.perf_counter()
            try:
                seen = len(cat.outputs())
            except Exception as error:  # noqa: BLE001
                report["errors"] += 1
                report["error_messages"][_describe(error)] += 1
                continue
            report["latencies"].append(time.perf_counter() - began)
            report["counts"].append(seen)
    except Exception as error:  # noqa: BLE001
        report["fatal"] = _describe(error)
        barrier.abort()
    counts = report.pop("counts")
    # a reader that ever saw fewer outputs than before read an uncommitted or torn state
    report["went_back"] = any(b < a for a, b in zip(counts, counts[1:]))
    report["last_count"] = counts[-1] if counts else None
    report["error_messages"] = dict(report["error_messages"].most_common(5))
    results.put(report)


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {' '.join(str(error).split())[:300]}"


def race(location: str, output_dir: Path, work: list, workers: int) -> tuple[list[dict], dict, float]:
    """Start the writers (each its share of ``work``) and the reader together; their
    reports and the wall time from the start signal."""
    context = mp.get_context("spawn")
    barrier = context.Barrier(workers + 2)  # writers, reader and this process
    writers_done = context.Event()
    results = context.Queue()
    writers = [
        context.Process(target=write_outputs, args=(w, location, str(output_dir), work[w::workers], barrier, results))
        for w in range(workers)
    ]
    reader = context.Process(target=read_outputs, args=(location, barrier, writers_done, results))
    for p in [*writers, reader]:
        p.start()
    try:
        with contextlib.suppress(threading.BrokenBarrierError):  # a worker failed to start: its report says why
            barrier.wait(timeout=START_TIMEOUT_S)
        reports: dict = {}
        reader_report = None
        # drain the queue before joining: a process does not exit until its report is read
        while len(reports) < workers:
            try:
                report = results.get(timeout=5)
            except queue.Empty:
                gone = [w for w, p in enumerate(writers) if p.exitcode is not None and w not in reports]
                for w in gone:
                    fatal = f"exited ({writers[w].exitcode}) without a report"
                    reports[w] = {"role": "writer", "index": w, "fatal": fatal, "latencies": [], "errors": 0,
                                  "error_messages": {}}  # fmt: skip
                continue
            if report["role"] == "reader":
                reader_report = report
            else:
                reports[report["index"]] = report
        writers_done.set()
        if reader_report is None:
            try:
                reader_report = results.get(timeout=START_TIMEOUT_S)
            except queue.Empty:
                reader_report = {"role": "reader", "fatal": "no report", "latencies": [], "errors": 0}
    finally:
        writers_done.set()
        for p in [*writers, reader]:
            p.join(timeout=60)
            if p.is_alive():
                p.terminate()
    writer_reports = [reports[w] for w in range(workers)]
    starts = [r["start"] for r in writer_reports if "start" in r]
    ends = [r["end"] for r in writer_reports if "end" in r]
    wall = max(ends) - min(starts) if starts and ends else float("nan")
    return writer_reports, reader_report, wall


def count_rows(cat: Catalog) -> dict:
    counts = cat.query(
        "SELECT (SELECT count(*) FROM decoding_outputs) AS rows, "
        "(SELECT count(DISTINCT merge_id) FROM decoding_outputs) AS distinct_ids, "
        "(SELECT count(*) FROM lineage) AS lineage_rows, "
        "(SELECT count(*) FROM (SELECT merge_id FROM lineage GROUP BY merge_id HAVING count(*) <> 3)) AS bad_lineage"
    ).iloc[0]
    return {k: int(v) for k, v in counts.items()}


def run_concurrency(backend: str, folder: Path, databases, workers: int, transactions: int, label: str) -> dict:
    """One repeat on one backend: a fresh catalog, the race, and the counts after it."""
    location, output_dir = new_place(backend, folder, databases, label)
    expected = workers * transactions
    began = time.perf_counter()
    cat, work = prepare_catalog(location, output_dir, folder, expected)
    setup_s = time.perf_counter() - began
    writers, reader, wall = race(location, output_dir, work, workers)
    counts = count_rows(cat)
    latencies = [x for r in writers for x in r["latencies"]]
    messages = Counter()
    for r in [*writers, reader]:
        messages.update(r.get("error_messages", {}))
    fatal = [f"{r['role']} {r.get('index', '')}: {r['fatal']}".strip() for r in [*writers, reader] if "fatal" in r]
    return {
        "backend": backend,
        "workers": workers,
        "transactions_per_worker": transactions,
        "setup_s": setup_s,
        "wall_s": wall,
        "transactions": len(latencies),
        "transactions_per_s": len(latencies) / wall if wall > 0 else None,
        "latency_p50_ms": _ms(percentile(latencies, 50)),
        "latency_p95_ms": _ms(percentile(latencies, 95)),
        "latency_max_ms": _ms(max(latencies, default=None)),
        "errors": sum(r["errors"] for r in writers),
        "lost": expected - counts["distinct_ids"],
        "duplicates": counts["rows"] - counts["distinct_ids"],
        "lineage_ok": counts["lineage_rows"] == 3 * counts["distinct_ids"] and counts["bad_lineage"] == 0,
        "counts": counts,
        "reads": len(reader["latencies"]),
        "read_errors": reader["errors"],
        "read_p50_ms": _ms(percentile(reader["latencies"], 50)),
        "read_p95_ms": _ms(percentile(reader["latencies"], 95)),
        "reader_went_back": reader.get("went_back"),
        "per_writer_s": [r["end"] - r["start"] if "end" in r else None for r in writers],
        "server_version": postgres_version(cat) if backend == "postgres" else None,
        "error_messages": dict(messages.most_common(5)),
        "fatal": fatal,
    }


def percentile(values: list[float], q: float) -> float | None:
    """Linear interpolation between the nearest ranks (numpy's default), without numpy."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else 1000.0 * seconds


CONCURRENCY_KEYS = [
    "transactions_per_s", "latency_p50_ms", "latency_p95_ms", "latency_max_ms", "errors", "lost", "duplicates",
    "reads", "read_p95_ms", "setup_s",
]  # fmt: skip


def summarize(runs: list[dict], keys: list[str]) -> dict:
    summary = {}
    for key in keys:
        values = [r[key] for r in runs if r.get(key) is not None]
        summary[key] = statistics.median(values) if values else None
    return summary


# ---------------------------------------------------------------------- per-decode catalog time


class TimedCatalog:
    """Stands in for a Catalog and adds up the wall time of each call made to it.

    Only the outermost call counts: a catalog method that (through this proxy) called
    another would otherwise be counted twice."""

    def __init__(self, catalog: Catalog):
        self._catalog = catalog
        self._depth = 0
        self.seconds = 0.0
        self.calls = 0
        self.by_method: dict[str, list] = {}  # name: [calls, seconds]

    def __getattr__(self, name: str):
        value = getattr(self._catalog, name)
        if not callable(value):
            return value

        def timed(*args, **kwargs):
            self._depth += 1
            began = time.perf_counter()
            try:
                return value(*args, **kwargs)
            finally:
                self._depth -= 1
                if self._depth == 0:
                    spent = time.perf_counter() - began
                    self.seconds += spent
                    self.calls += 1
                    entry = self.by_method.setdefault(name, [0, 0.0])
                    entry[0] += 1
                    entry[1] += spent

        return timed


def prepare_demo(location: str, output_dir: Path, nwb: Path):
    """The demo session registered, its position processed, its raw tetrodes' features
    extracted and its groups made, as the pipeline does; the catalog and the merge_id
    of one trial's decode."""
    from decoding_assets import pipeline

    cat = Catalog(location, output_dir)
    name = pipeline.register_session(cat, nwb)
    config = pipeline.load_config()
    pipeline.ensure_parameter_sets(cat, config)
    pipeline.process_session_position(cat, name, "default_decoding")
    pipeline.extract_session_features(cat, name, "amplitude")
    pipeline.ensure_features_groups(cat, name, config)
    pipeline.ensure_position_groups(cat, name, config)
    merge_id = pipeline.select(cat, name, DEMO_TRIAL, config["decodings"][0])
    return cat, merge_id


def decode_once(cat: Catalog, merge_id: str) -> dict:
    from decoding_assets import pipeline

    timed = TimedCatalog(cat)
    began = time.perf_counter()
    out = pipeline.decode(timed, merge_id)
    seconds = time.perf_counter() - began
    n_time_bins = out["results"].sizes["time"]
    out["results"].close()
    return {
        "decode_s": seconds,
        "catalog_s": timed.seconds,
        "catalog_calls": timed.calls,
        "catalog_share_pct": 100.0 * timed.seconds / seconds,
        "n_time_bins": n_time_bins,
        "by_method": {k: {"calls": c, "seconds": s} for k, (c, s) in sorted(timed.by_method.items())},
    }


def run_decodes(backend: str, folder: Path, databases, nwb: Path, repeats: int) -> dict:
    location, output_dir = new_place(backend, folder, databases, f"bench_{os.getpid()}_decode")
    began = time.perf_counter()
    cat, merge_id = prepare_demo(location, output_dir, nwb)
    setup_s = time.perf_counter() - began
    warmup = decode_once(cat, merge_id)  # JIT compilation, and the first connection's costs
    print(f"decode {backend} warm-up: {_brief(warmup)}", file=sys.stderr)
    runs = []
    for repeat in range(repeats):
        runs.append(decode_once(cat, merge_id))
        print(f"decode {backend} run {repeat + 1}: {_brief(runs[-1])}", file=sys.stderr)
    keys = ["decode_s", "catalog_s", "catalog_calls", "catalog_share_pct"]
    return {"setup_s": setup_s, "merge_id": merge_id, "warmup": warmup, "runs": runs, "summary": summarize(runs, keys)}


def _brief(run: dict) -> str:
    return ", ".join(f"{k} {v:.3g}" for k, v in run.items() if isinstance(v, (int, float)) and not isinstance(v, bool))


# ---------------------------------------------------------------------- report


def _fmt(value, spec: str = ".1f") -> str:
    return "–" if value is None else format(value, spec)


def markdown_tables(concurrency: dict, decodes: dict, workers: int, transactions: int) -> str:
    lines = []
    if concurrency:
        lines += [
            f"Concurrency: {workers} writers x {transactions} transactions + 1 reader "
            "(medians over repeats; latencies per transaction)",
            "",
            "| backend | tx/s | p50 ms | p95 ms | max ms | errors | lost | duplicates | lineage ok | reads "
            "| read p95 ms | setup s |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for backend, record in concurrency.items():
            s = record["summary"]
            lineage = all(r["lineage_ok"] for r in record["runs"])
            lines.append(
                f"| {backend} | {_fmt(s['transactions_per_s'], '.0f')} | {_fmt(s['latency_p50_ms'])} "
                f"| {_fmt(s['latency_p95_ms'])} | {_fmt(s['latency_max_ms'])} | {_fmt(s['errors'], 'g')} "
                f"| {_fmt(s['lost'], 'g')} | {_fmt(s['duplicates'], 'g')} | {'yes' if lineage else 'NO'} "
                f"| {_fmt(s['reads'], 'g')} | {_fmt(s['read_p95_ms'])} | {_fmt(s['setup_s'])} |"
            )
    if decodes:
        lines += [
            "",
            f"Per-decode catalog time: demo session, {DEMO_TRIAL} (medians after one warm-up decode)",
            "",
            "| backend | decode s | catalog s | catalog calls | catalog share |",
            "|---|---|---|---|---|",
        ]
        for backend, record in decodes.items():
            s = record["summary"]
            lines.append(
                f"| {backend} | {_fmt(s['decode_s'], '.2f')} | {_fmt(s['catalog_s'], '.3f')} "
                f"| {_fmt(s['catalog_calls'], 'g')} | {_fmt(s['catalog_share_pct'], '.2f')} % |"
            )
    lines += ["", *verdicts(concurrency, decodes)]
    return "\n".join(lines)


def verdicts(concurrency: dict, decodes: dict) -> list[str]:
    """The targets, judged on every run for correctness and on the medians for speed."""
    lines = []
    if "postgres" in concurrency:
        record = concurrency["postgres"]
        tps = record["summary"]["transactions_per_s"]
        met = tps is not None and tps >= TARGET_TPS
        verdict = "met" if met else "NOT met"
        lines.append(f"- PostgreSQL >= {TARGET_TPS:.0f} transactions/s: {verdict} ({_fmt(tps, '.0f')})")
    for backend, record in concurrency.items():
        bad = sum(r["lost"] + r["duplicates"] for r in record["runs"])
        broken = [r for r in record["runs"] if not r["lineage_ok"] or r["fatal"] or r["reader_went_back"]]
        lines.append(
            f"- {backend}: lost or duplicate rows in all runs: {bad}"
            + (f"; {len(broken)} run(s) with broken lineage, a failed process or a reader going back" if broken else "")
        )
    for backend, record in decodes.items():
        share = record["summary"]["catalog_share_pct"]
        met = share is not None and share < TARGET_SHARE
        verdict = "met" if met else "NOT met"
        lines.append(f"- {backend}: catalog < {TARGET_SHARE:.0f} % of a decode: {verdict} ({_fmt(share, '.2f')} %)")
    return lines


def machine_info(backends: list[str]) -> dict:
    import duckdb

    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "duckdb": duckdb.__version__,
        "backends": backends,
    }


def postgres_version(cat: Catalog) -> str | None:
    with contextlib.suppress(Exception):
        sql = "SELECT * FROM postgres_query('lab', 'SELECT current_setting(''server_version'')')"
        return str(cat.query(sql).iloc[0, 0])
    return None


# ---------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=8, help="writer processes (plus one reader)")
    parser.add_argument("--transactions", type=int, default=200, help="outputs each writer registers")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--backends", default=",".join(BACKENDS), help="comma-separated: duckdb, postgres")
    parser.add_argument("--skip-decode", action="store_true", help="only the concurrency part")
    parser.add_argument("--skip-concurrency", action="store_true", help="only the per-decode catalog time")
    parser.add_argument(
        "--postgres-url",
        help="a database on a server where you may CREATE DATABASE (default: a throw-away server)",
    )
    args = parser.parse_args()
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = set(backends) - set(BACKENDS)
    if unknown or not backends:
        parser.error(f"--backends: unknown {sorted(unknown)}; choose from {list(BACKENDS)}")

    record = {"info": machine_info(backends), "args": vars(args), "concurrency": {}, "decode": {}}
    with tempfile.TemporaryDirectory(prefix="catalog-bench-") as tmp, contextlib.ExitStack() as stack:
        tmp = Path(tmp)
        databases = None
        if "postgres" in backends:
            began = time.perf_counter()
            databases = PostgresDatabases(tmp, args.postgres_url)
            stack.callback(databases.close)
            record["info"]["postgres_start_s"] = time.perf_counter() - began
        if not args.skip_concurrency:
            for repeat in range(args.repeats):
                # alternate the order so neither backend always runs on a warmer machine
                order = backends if repeat % 2 == 0 else backends[::-1]
                for backend in order:
                    label = f"bench_{os.getpid()}_{repeat}"
                    run = run_concurrency(
                        backend, tmp / f"{backend}{repeat}", databases, args.workers, args.transactions, label
                    )
                    print(f"{backend} run {repeat + 1}: {_brief(run)}", file=sys.stderr)
                    if run["error_messages"] or run["fatal"]:
                        print(f"  errors: {run['error_messages']} {run['fatal']}", file=sys.stderr)
                    record["concurrency"].setdefault(backend, {"runs": []})["runs"].append(run)
            for entry in record["concurrency"].values():
                entry["summary"] = summarize(entry["runs"], CONCURRENCY_KEYS)
        if not args.skip_decode:
            os.environ.setdefault("JAX_PLATFORMS", "cpu")  # before anything imports jax
            from decoding_assets.nwb import write_demo_session

            began = time.perf_counter()
            nwb = write_demo_session(tmp / "demo.nwb")
            record["info"]["demo_session_s"] = time.perf_counter() - began
            for backend in backends:
                folder = tmp / f"decode_{backend}"
                record["decode"][backend] = run_decodes(backend, folder, databases, nwb, args.repeats)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(record, indent=2, default=str))
    print(markdown_tables(record["concurrency"], record["decode"], args.workers, args.transactions))
    print(f"\nevery run: {RESULTS}")


if __name__ == "__main__":
    main()

"""``decoding-assets``: the demo, the UI, registering files and cleaning up.

    decoding-assets demo            # make the demo session and decode it end to end
    decoding-assets ui              # the Dagster UI on http://localhost:3000 (viewers on :3001)
    decoding-assets view MERGE_ID   # a decode in the browser: a self-contained HTML file
    decoding-assets register PATH   # register an NWB file (and its partitions)
    decoding-assets run PATH...     # register NWB files (or folders of them), process and decode them
    decoding-assets cleanup --yes   # delete output files no result references any more
    decoding-assets catalog migrate --to postgresql://me@labserver/decoding   # copy this catalog into the lab's
    decoding-assets catalog delete MERGE_ID [--force]                         # forget a decoding output
    decoding-assets catalog compact                                           # a DuckDB catalog opens fast again

Everything lives under ``--home`` (default ``$DECODING_ASSETS_HOME``, else
``decoding-assets`` in ``$XDG_DATA_HOME`` or ``~/.local/share``): the catalog, the
outputs, the watched folder ``incoming/`` and the Dagster instance ``dagster/``.
``--catalog`` (or ``$DECODING_ASSETS_CATALOG``) names another catalog, e.g. the lab's
``postgresql://user@host/dbname``; with it, ``--outputs`` (or ``$DECODING_ASSETS_OUTPUTS``)
names a folder or an object store URL (``s3://bucket/prefix``) every worker reaches, and Dagster keeps its runs in the database
``<dbname>_dagster`` on the same server. ``--decode-slots`` (or
``$DECODING_ASSETS_DECODE_SLOTS``) is how many decodes may run at once. These options go
before or after the command.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from decoding_assets.files import atomic_write

WRITTEN_BY = "# Written by decoding-assets"
DAGSTER_YAML = WRITTEN_BY + """ (edit freely: once edited, it is left alone). Decoding steps
# share the "gpu" concurrency pool, on every machine using this instance. Its limit is set
# through the instance, never here (changing default_limit once the pool exists makes its
# runs fail): one per GPU by default, or `decoding-assets --decode-slots N`
# (DECODING_ASSETS_DECODE_SLOTS), or `dagster instance concurrency set gpu N`.
concurrency:
  pools:
    default_limit: 1
# A run whose process is killed is marked failed (the launcher checks that the process
# still exists) and its decode slot freed soon after, so later decodes do not wait for it.
run_launcher:
  module: decoding_assets.defs.runs
  class: DecodingRunLauncher
run_monitoring:
  enabled: true
  poll_interval_seconds: 15
  max_resume_run_attempts: 0
  free_slots_after_run_end_seconds: 15
telemetry:
  enabled: false
"""
# psycopg2 is the driver dagster-postgres brings; a bare postgresql:// means psycopg 3
# to SQLAlchemy 2.1
POSTGRES_STORAGE = """storage:
  postgres:
    postgres_url: "{url}"
"""


def _setup_home(home: Path) -> Path:
    """Point the library and Dagster at ``home`` (and at the catalog named by
    ``$DECODING_ASSETS_CATALOG``), and set how many decodes may run at once
    (``$DECODING_ASSETS_DECODE_SLOTS``); returns the Dagster instance folder. With a
    PostgreSQL catalog, Dagster's runs, events and schedules go to the database
    ``<dbname>_dagster`` on the same server (created if missing)."""
    home = home.resolve()
    (home / "incoming").mkdir(parents=True, exist_ok=True)
    dagster_home = home / "dagster"
    dagster_home.mkdir(exist_ok=True)
    os.environ["DECODING_ASSETS_HOME"] = str(home)
    os.environ["DAGSTER_HOME"] = str(dagster_home)
    import dagster as dg

    from decoding_assets.defs.resources import catalog_location, decode_slots
    from decoding_assets.defs.runs import set_decode_slots

    slots = decode_slots()  # a bad setting stops here, before anything is written
    text = DAGSTER_YAML
    location = catalog_location()
    if location.startswith(("postgresql://", "postgres://")):
        text += POSTGRES_STORAGE.format(url=_dagster_database(location))
    config = dagster_home / "dagster.yaml"
    if not config.exists() or (config.read_text().startswith(WRITTEN_BY) and config.read_text() != text):
        with atomic_write(config) as tmp:  # another command starting now never reads half of it
            tmp.write_text(text)
    with dg.DagsterInstance.get() as instance:
        set_decode_slots(instance, slots)
    return dagster_home


def _dagster_database(catalog_url: str) -> str:
    """The URL of Dagster's own database beside the catalog's, created if missing."""
    import psycopg2
    from psycopg2 import sql

    parts = urlsplit(catalog_url)
    name = parts.path.lstrip("/") + "_dagster"
    with contextlib.closing(psycopg2.connect(urlunsplit(parts._replace(scheme="postgresql", path="/postgres")))) as con:
        con.autocommit = True  # CREATE DATABASE cannot run in a transaction
        with con.cursor() as cursor:
            cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name])
            if cursor.fetchone() is None:
                with contextlib.suppress(psycopg2.errors.DuplicateDatabase):  # another process made it first
                    cursor.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return urlunsplit(parts._replace(scheme="postgresql+psycopg2", path="/" + name))


def _default_home() -> Path:
    from decoding_assets.defs.resources import home

    return home()


def _without_password(location: str) -> str:
    parts = urlsplit(location)
    user, _, host = parts.netloc.rpartition("@")
    if ":" not in user:
        return location
    return urlunsplit(parts._replace(netloc=f"{user.partition(':')[0]}:***@{host}"))


def _announce(home: Path) -> None:
    """One line saying where this command reads and writes: a wrong home is seen at once."""
    from decoding_assets.defs.resources import catalog_location, outputs_folder

    print(
        f"decoding-assets: home {home.resolve()}, catalog {_without_password(catalog_location())}, "
        f"outputs {outputs_folder()}",
        file=sys.stderr,
        flush=True,
    )


def _port_taken(port: int) -> str | None:
    """Why the UI could not listen on ``port`` of 127.0.0.1, or None when it can."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # as the web server binds: a port left in TIME_WAIT by a closed UI is free
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as error:
            return error.strerror or str(error)
    return None


def _register(catalog, instance, path: Path, config: dict) -> tuple[str, list[str]]:
    """Register an NWB file in the catalog, and give Dagster its partition (as the
    ``catalog_sync`` sensor would at its next tick)."""
    from decoding_assets.defs.automation import plan_sync
    from decoding_assets.pipeline import decodable_intervals, register_session

    cat = catalog.get()
    name = register_session(cat, path, config)
    plan_sync(instance, cat, config, sessions=[name]).apply(instance)
    return name, decodable_intervals(cat, name, config)


def _materialize(defs, instance, catalog, config: dict, nwb_file_names: list[str], say, decode_only: bool = False) -> list[str]:
    """Store the parameter sets, process each session and decode what each decoding
    configuration still has to decode in them, through Dagster (so the UI shows every
    run). Sessions are decoded several to a run, as a backfill does (one start-up and
    one JAX initialization for all of them). ``decode_only``: the sessions are
    processed already. Returns what failed, one line each; a failure does not stop the
    other sessions."""
    from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

    from decoding_assets.defs.automation import decoding_job_name, plan_sync
    from decoding_assets.defs.decoding import partitions_per_run
    from decoding_assets.defs.partitions import decoding_partitions
    from decoding_assets.defs.runs import release_dead_runs
    from decoding_assets.plan import nothing_to_decode

    for run_id in release_dead_runs(instance):
        say(f"Run {run_id} had lost its process: marked failed, and its decode slot freed.")

    def run(job_name: str, partition_key=None, sessions: list[str] | None = None) -> str | None:
        tags = None
        if sessions is not None and len(sessions) > 1:
            tags = {ASSET_PARTITION_RANGE_START_TAG: sessions[0], ASSET_PARTITION_RANGE_END_TAG: sessions[-1]}
        elif sessions is not None:
            partition_key = sessions[0]
        result = defs.resolve_job_def(job_name).execute_in_process(
            instance=instance,
            partition_key=partition_key,
            tags=tags,
            raise_on_error=False,
            run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
        )
        label = f"{job_name} {partition_key or ', '.join(sessions or [])}".strip()
        if result.success:
            say(f"  {label}: ok")
            return None
        errors = [e.event_specific_data.error for e in result.all_events if e.is_step_failure]
        cause = " ".join(str(errors[0].message).split()) if errors else "see the run in the UI"
        say(f"  {label}: FAILED: {cause}")
        return f"{label}: {cause}"

    failures = []
    if not decode_only:
        say("Storing parameter sets ...")
        if (failure := run("store_parameter_sets")) is not None:
            return [failure]
    cat = catalog.get()
    processed = []
    for nwb_file_name in nwb_file_names:
        if not decode_only:
            say(f"Processing {nwb_file_name} ...")
            if (failure := run("process_sessions", nwb_file_name)) is not None:
                failures.append(failure)
                continue
        plan_sync(instance, cat, config, sessions=[nwb_file_name]).apply(instance)  # its decoding partitions
        processed.append(nwb_file_name)
    for decoding in config["decodings"]:
        order = instance.get_dynamic_partitions(decoding_partitions(decoding.name).name)
        for nwb_file_name in sorted(set(processed) - set(order)):
            say(f"  {decoding_job_name(decoding)} {nwb_file_name}: skipped: {nothing_to_decode(cat, nwb_file_name, decoding)}")
        for sessions in _runs_of(order, set(processed), partitions_per_run()):
            say(f"Decoding {', '.join(sessions)} ...")
            if (failure := run(decoding_job_name(decoding), sessions=sessions)) is not None:
                failures.append(failure)
    return failures


def _runs_of(order: list[str], wanted: set[str], per_run: int) -> list[list[str]]:
    """The wanted partitions in runs: a run covers a range of the partitions' order (only
    neighbours in it), and at most ``per_run`` of them."""
    runs, current = [], []
    for key in order:
        if key in wanted and len(current) < per_run:
            current.append(key)
            continue
        if current:
            runs.append(current)
        current = [key] if key in wanted else []
    if current:
        runs.append(current)
    return runs


def run_demo(
    home: Path, n_tetrodes: int = 8, epoch_durations=(120.0, 30.0, 60.0), trial_duration: float = 30.0, quiet: bool = False
) -> list[dict]:
    """Make the demo session, register it and materialize the whole graph for it."""
    _setup_home(home)
    import dagster as dg

    from decoding_assets.definitions import build_definitions
    from decoding_assets.defs.resources import default_catalog_resource, watch_folder
    from decoding_assets.nwb import write_demo_session
    from decoding_assets.pipeline import load_config

    say = (lambda *a: None) if quiet else (lambda *a: print(*a, flush=True))
    config = load_config()
    defs = build_definitions(config)
    instance = dg.DagsterInstance.get()
    catalog = default_catalog_resource()
    path = watch_folder() / "demo.nwb"
    if not path.exists():
        say(f"Writing the demo session to {path} ...")
        write_demo_session(path, n_tetrodes=n_tetrodes, epoch_durations=epoch_durations, trial_duration=trial_duration)
    nwb_file_name, _ = _register(catalog, instance, path, config)
    say(f"Registered {nwb_file_name} in {catalog.location}")
    failures = _materialize(defs, instance, catalog, config, [nwb_file_name], say)
    if failures:
        raise RuntimeError("The demo failed: " + "; ".join(failures))
    cat = catalog.get()
    extracted = cat.extracted_features(nwb_file_name)
    say("\nWaveform features extracted from the raw recording:")
    say(extracted[["electrode_group_name", "features_param_name", "n_spikes", "electrode_ids", "bad_electrode_ids"]].to_string(index=False))
    outputs = cat.outputs(nwb_file_name)
    say("\nDecoding outputs (the catalog's decoding_outputs table):")
    say(outputs[OUTPUT_COLUMNS].to_string(index=False))
    example = outputs["merge_id"].iloc[0] if len(outputs) else "<merge_id>"
    say(
        f"\nCatalog: {catalog.location}\n"
        f"Open the UI with:  {sys.argv[0]} --home {home} ui\n"
        f"In Python:         from catalog import Catalog; from decoding_assets.fetch import fetch_results\n"
        f"                   fetch_results(Catalog({catalog.location!r}), {example!r})"
    )
    return outputs.to_dict("records")


OUTPUT_COLUMNS = ["waveform_features_group_name", "decoding_interval", "median_decoding_error_cm", "run_seconds", "path"]


def run_files(home: Path, paths: list[Path]) -> int:
    """Register NWB files (a folder: every ``.nwb`` in it), then process and decode each
    with the configuration. A file that cannot be registered is reported in one line
    and the others go on. Exit status 1 when anything failed."""
    _setup_home(home)
    import dagster as dg

    from decoding_assets.definitions import build_definitions
    from decoding_assets.defs.resources import default_catalog_resource
    from decoding_assets.pipeline import describe_failure, load_config

    def say(*a):
        print(*a, flush=True)

    config = load_config()
    defs = build_definitions(config)
    instance = dg.DagsterInstance.get()
    catalog = default_catalog_resource()
    files = [f for p in paths for f in (sorted(p.glob("*.nwb")) if p.is_dir() else [p])]
    registered, failures = [], []
    for path in files:
        try:
            name, intervals = _register(catalog, instance, path, config)
        except Exception as error:  # one bad file never stops the others
            failures.append(describe_failure(path, error))
            print(f"error: {failures[-1]}", file=sys.stderr, flush=True)
            continue
        registered.append(name)
        say(f"Registered {name}; decoding intervals: {', '.join(intervals) or 'none'}")
    if registered:
        failures += _materialize(defs, instance, catalog, config, registered, say)
        cat = catalog.get()
        for name in registered:
            outputs = cat.outputs(name)
            say(f"\nDecoding outputs of {name}:")
            say(outputs[OUTPUT_COLUMNS].to_string(index=False) if len(outputs) else "  none")
    say(f"\n{len(registered)} of {len(files)} file(s) registered; "
        + (f"{len(failures)} problem(s), each reported above." if failures else "no problems."))
    return 1 if failures or not files else 0


def verify_files(home: Path, full: bool = False, repair: bool = False) -> int:
    """Check every file the catalog registered; say which are bad and what to do. Dagster
    is told at once (a decoding partition with a bad file shows as missing). With
    ``repair``: decode again what a bad results or model file belongs to, and process
    again a session whose position or features file is bad. Exit status 1 while
    anything is bad."""
    import dagster as dg

    from decoding_assets.definitions import build_definitions
    from decoding_assets.defs.automation import plan_sync
    from decoding_assets.defs.resources import default_catalog_resource
    from decoding_assets.pipeline import load_config

    catalog, config = default_catalog_resource(), load_config()
    cat = catalog.get()
    table = cat.verify_outputs(full=full)
    bad = table[table["status"] != "ok"]
    print(f"Checked {len(table)} file(s) ({'every one hashed' if full else 'size and time; changed ones hashed'}): "
          f"{len(bad)} bad.")  # fmt: skip
    for row in bad.itertuples():
        print(f"  {row.status}: {row.message}")
    instance = dg.DagsterInstance.get()
    sessions = sorted(set(bad["nwb_file_name"]))
    plan_sync(instance, cat, config, sessions=sessions).apply(instance)
    if bad.empty or not repair:
        return 1 if len(bad) else 0
    defs = build_definitions(config)
    reprocess = sorted(set(bad.loc[bad["kind"].isin(["position", "waveform_features"]), "nwb_file_name"]))
    redecode = sorted(set(bad.loc[bad["kind"].isin(["results", "model"]), "nwb_file_name"]) - set(reprocess))
    lost_nwb = bad.loc[bad["kind"] == "nwb", "path"].tolist()
    say = lambda *a: print(*a, flush=True)  # noqa: E731
    failures = _materialize(defs, instance, catalog, config, reprocess, say) if reprocess else []
    failures += _materialize(defs, instance, catalog, config, redecode, say, decode_only=True) if redecode else []
    for path in lost_nwb:
        print(f"error: cannot repair {path}: restore the NWB file, or register its new version", file=sys.stderr)
    still = cat.verify_outputs()
    still = still[still["status"] != "ok"]
    print(f"After the repair: {len(still)} bad file(s)" + (f"; {len(failures)} run(s) failed." if failures else "."))
    return 1 if len(still) or failures else 0


def _place_options() -> argparse.ArgumentParser:
    """Where things are, accepted before and after the command. Unset, they stay out of
    the result (SUPPRESS): otherwise the command's defaults would undo values given
    before it."""
    place = argparse.ArgumentParser(add_help=False)
    place.add_argument(
        "--home", type=Path, default=argparse.SUPPRESS,
        help="catalog, outputs and Dagster instance folder (default: $DECODING_ASSETS_HOME, else "
        "decoding-assets in $XDG_DATA_HOME or ~/.local/share)",
    )  # fmt: skip
    place.add_argument(
        "--catalog", default=argparse.SUPPRESS,
        help="the catalog: a DuckDB file or postgresql://user@host/dbname (default: in --home)",
    )  # fmt: skip
    place.add_argument(
        "--outputs", default=argparse.SUPPRESS,
        help="where outputs are written: a folder, or a URL such as s3://bucket/prefix (default: outputs/ in --home)",
    )  # fmt: skip
    place.add_argument(
        "--decode-slots", default=argparse.SUPPRESS,  # checked with the variable it sets
        help="how many decodes may run at once (default: $DECODING_ASSETS_DECODE_SLOTS, else one per GPU, else as many "
        "as the cores and memory hold)",
    )  # fmt: skip
    return place


def _parser() -> argparse.ArgumentParser:
    place = _place_options()
    parser = argparse.ArgumentParser(
        prog="decoding-assets", description=__doc__, parents=[place],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", parents=[place], help="make the demo session, register it and decode it end to end")
    demo.add_argument("--tetrodes", type=int, default=8)
    ui = sub.add_parser("ui", parents=[place], help="start the Dagster UI on localhost")
    ui.add_argument("--port", type=int, default=3000)
    ui.add_argument("--viewer-port", type=int, help="where the decode viewers are served (default: --port + 1)")
    view = sub.add_parser(
        "view", parents=[place], help="write a decode's viewer: one HTML file that opens offline in any browser"
    )
    view.add_argument("merge_id")
    view.add_argument("--start", type=float, help="from this time (s, the session's clock; default: the start)")
    view.add_argument("--stop", type=float, help="to this time (s; default: the end)")
    view.add_argument("--frame-ms", type=float, help="one frame per this many ms (default: the decode's bins, "
                      "coarser for a long decode so it keeps at most 50,000 frames)")  # fmt: skip
    view.add_argument("--out", type=Path, help="the file to write (default: viewers/ under the home)")
    register = sub.add_parser("register", parents=[place], help="register an NWB file and add its partitions")
    register.add_argument("path", type=Path)
    run = sub.add_parser(
        "run", parents=[place], help="register NWB files (or every .nwb in a folder), process and decode them"
    )
    run.add_argument("paths", type=Path, nargs="+")
    cleanup = sub.add_parser(
        "cleanup", parents=[place], help="delete output files this catalog wrote that nothing references"
    )
    cleanup.add_argument("--yes", action="store_true", help="delete (default: only list)")
    cleanup.add_argument("--min-age-s", type=float, default=3600.0, help="spare files younger than this")
    cleanup.add_argument(
        "--stale-after-s", type=float, default=600.0,
        help="a writer on another machine silent for this long is taken for dead (its files are reclaimed)",
    )  # fmt: skip
    verify = sub.add_parser(
        "verify", parents=[place], help="check every registered file against the catalog; --repair decodes bad ones again"
    )
    verify.add_argument("--full", action="store_true", help="hash every file (default: only those whose size or time changed)")
    verify.add_argument("--repair", action="store_true", help="decode again (or reprocess) what a bad file belongs to")
    catalog = sub.add_parser("catalog", parents=[place], help="move or prune the catalog")
    catalog_sub = catalog.add_subparsers(dest="action", required=True)
    migrate = catalog_sub.add_parser(
        "migrate", parents=[place], help="copy this catalog into another (e.g. the lab's); again: a no-op"
    )
    migrate.add_argument("--to", required=True, help="the target: postgresql://user@host/dbname or a DuckDB file")
    catalog_sub.add_parser(
        "compact", parents=[place], help="rebuild a DuckDB catalog's tables so it opens fast again (the sync does it too)"
    )
    delete = catalog_sub.add_parser(
        "delete", parents=[place], help="forget a decoding output (its files go at the next cleanup)"
    )
    delete.add_argument("merge_id")
    delete.add_argument("--force", action="store_true", help="even one another user made")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if catalog := getattr(args, "catalog", None):
        os.environ["DECODING_ASSETS_CATALOG"] = catalog
    if outputs := getattr(args, "outputs", None):
        from catalog.storage import key

        os.environ["DECODING_ASSETS_OUTPUTS"] = key(outputs)
    if slots := getattr(args, "decode_slots", None):
        os.environ["DECODING_ASSETS_DECODE_SLOTS"] = slots
    # before anything starts: `dagster dev` on a taken port fails after its daemon is up, and leaves it running
    if args.command == "ui":
        args.viewer_port = args.viewer_port or args.port + 1
        for port, option in ((args.port, "--port"), (args.viewer_port, "--viewer-port")):
            if (problem := _port_taken(port)) is not None:
                print(
                    f"error: the UI cannot listen on 127.0.0.1:{port}: {problem}. Is another `decoding-assets ui` "
                    f"running? Stop it, or choose another port with {option}.",
                    file=sys.stderr,
                )
                return 1
    home = getattr(args, "home", None) or _default_home()
    try:
        _setup_home(home)
    except ValueError as error:  # a bad setting: one line, never a traceback
        print(f"error: {error}", file=sys.stderr)
        return 1
    _announce(home)
    return _run_command(args, home)


def _run_command(args: argparse.Namespace, home: Path) -> int:
    if args.command == "demo":
        run_demo(home, n_tetrodes=args.tetrodes)
    elif args.command == "ui":
        return _ui(home, args.port, args.viewer_port)
    elif args.command == "view":
        return _view(home, args.merge_id, args.start, args.stop, args.frame_ms, args.out)
    elif args.command == "register":
        import dagster as dg

        from decoding_assets.defs.resources import default_catalog_resource
        from decoding_assets.pipeline import describe_failure, load_config

        try:
            name, intervals = _register(default_catalog_resource(), dg.DagsterInstance.get(), args.path, load_config())
        except Exception as error:  # a user sees one line, never a traceback
            print(f"error: {describe_failure(args.path, error)}", file=sys.stderr)
            return 1
        print(f"Registered {name}; decoding intervals: {', '.join(intervals) or 'none'}")
    elif args.command == "run":
        return run_files(home, args.paths)
    elif args.command == "catalog":
        from catalog import Catalog, CatalogError, copy_catalog
        from decoding_assets.defs.resources import default_catalog_resource

        try:
            source = default_catalog_resource().get()
            if args.action == "compact":
                if source.compact():
                    with source.held():  # an opening of the rebuilt file
                        pass
                    print(f"Compacted {source.location}: an opening now takes {source.db.opening_seconds * 1000:.0f} ms.")
                else:
                    print(f"{source.location} is a PostgreSQL catalog: the server keeps its indexes itself.")
            elif args.action == "migrate":
                copied = copy_catalog(source, Catalog(args.to))
                print(f"Copied {sum(copied.values())} row(s) from {source.location} to {args.to}"
                      + "".join(f"\n  {table}: {n}" for table, n in copied.items() if n))  # fmt: skip
            else:
                _delete_output(source, args.merge_id, args.force)
        except CatalogError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
    elif args.command == "cleanup":
        return _cleanup(args.yes, args.min_age_s, args.stale_after_s)
    elif args.command == "verify":
        return verify_files(home, full=args.full, repair=args.repair)
    return 0


def _ui(home: Path, port: int, viewer_port: int) -> int:
    """``dagster dev`` on ``port``, and the decode viewers its links open on ``viewer_port``."""
    from decoding_assets.defs.resources import default_catalog_resource
    from decoding_assets.viewing import serve_viewers

    server = serve_viewers(lambda: default_catalog_resource().get(), home / "viewers", viewer_port)
    os.environ["DECODING_ASSETS_VIEWER_URL"] = f"http://127.0.0.1:{viewer_port}"  # what the assets link to
    cmd = [sys.executable, "-m", "dagster", "dev", "-m", "decoding_assets.definitions", "-h", "127.0.0.1", "-p", str(port)]
    print(f"Dagster UI on http://127.0.0.1:{port} (instance {os.environ['DAGSTER_HOME']}); "
          f"decode viewers on http://127.0.0.1:{viewer_port}", flush=True)  # fmt: skip
    try:
        return subprocess.call(cmd)
    finally:
        server.shutdown()
        server.server_close()


def _view(home: Path, merge_id: str, start, stop, frame_ms, out: Path | None) -> int:
    """Write a decode's viewer and say where, how large, and how long it took."""
    import time

    from catalog import CatalogError
    from decoding_assets.defs.resources import default_catalog_resource
    from decoding_assets.viewing import viewer_file

    started = time.perf_counter()
    frame_s = None if frame_ms is None else frame_ms / 1000.0
    try:
        path = viewer_file(default_catalog_resource().get(), merge_id, home / "viewers", start, stop, frame_s)
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
            with atomic_write(out) as tmp:
                tmp.write_bytes(path.read_bytes())
            path = out
    except (CatalogError, ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    size = path.stat().st_size
    print(f"Wrote {path} ({size / 2**20:.1f} MiB, {time.perf_counter() - started:.1f} s); open it in a browser "
          f"(offline: it needs nothing else): file://{path.resolve()}")  # fmt: skip
    return 0


def _delete_output(catalog, merge_id: str, force: bool) -> None:
    """Forget a decoding output for good, and show it in Dagster at once: the partition
    lists what is left (or goes, when nothing is), and automation leaves it alone."""
    import dagster as dg

    from catalog import CatalogError
    from decoding_assets.defs.automation import plan_sync
    from decoding_assets.pipeline import load_config

    try:
        nwb_file_name = catalog.fetch_selection(merge_id).nwb_file_name
    except CatalogError:
        nwb_file_name = None  # delete_output says what is wrong with the id
    catalog.delete_output(merge_id, force=force)
    with dg.DagsterInstance.get() as instance:
        plan_sync(instance, catalog, load_config(), sessions=[nwb_file_name]).apply(instance)
    print(
        f"Deleted the decoding output {merge_id} (session {nwb_file_name}); it is not decoded again unless asked for "
        "by name. `decoding-assets cleanup --yes` removes its files."
    )


def _cleanup(delete: bool, min_age_s: float, stale_after_s: float) -> int:
    """Delete (or list) unused output files; say what was spared and why, and what could not
    be deleted (exit status 1)."""
    from collections import Counter

    from decoding_assets.defs.resources import default_catalog_resource

    report = default_catalog_resource().get().cleanup(dry_run=not delete, min_age_s=min_age_s, stale_after_s=stale_after_s)
    verb = "Deleted" if delete else "Would delete (use --yes)"
    why = Counter(reason for _, reason in report.spared)
    spared = f"; spared {len(report.spared)}: " + ", ".join(f"{reason} ({n})" for reason, n in why.items())
    print(f"{verb} {len(report.deleted)} file(s){spared if why else ''}" + "".join(f"\n  {p}" for p in report.deleted))
    for path, error in report.errors:
        print(f"error: could not delete {path}: {error}", file=sys.stderr)
    return 1 if report.errors else 0


if __name__ == "__main__":
    sys.exit(main())

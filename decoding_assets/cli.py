"""``decoding-assets``: the demo, the UI, registering files and cleaning up.

    decoding-assets demo            # make the demo session and decode it end to end
    decoding-assets ui              # the Dagster UI on http://localhost:3000
    decoding-assets register PATH   # register an NWB file (and its partitions)
    decoding-assets run PATH...     # register NWB files (or folders of them), process and decode them
    decoding-assets cleanup --yes   # delete output files no result references any more
    decoding-assets catalog migrate --to postgresql://me@labserver/decoding   # copy this catalog into the lab's
    decoding-assets catalog delete MERGE_ID [--force]                         # forget a decoding output

Everything lives under ``--home`` (default ``$DECODING_ASSETS_HOME`` or
``./.decoding_assets``): the catalog, the outputs, the watched folder ``incoming/`` and
the Dagster instance ``dagster/``. ``--catalog`` (or ``$DECODING_ASSETS_CATALOG``) names
another catalog, e.g. the lab's ``postgresql://user@host/dbname``; with it, ``--outputs``
(or ``$DECODING_ASSETS_OUTPUTS``) names a folder every worker reaches, and Dagster keeps
its runs in the database ``<dbname>_dagster`` on the same server.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
from pathlib import Path

WRITTEN_BY = "# Written by decoding-assets"
DAGSTER_YAML = WRITTEN_BY + """ (edit freely: once edited, it is left alone). Decoding steps
# share the "gpu" concurrency pool: one at a time, on every machine using this instance.
# For more GPUs, set the pool's limit: `dagster instance concurrency set gpu 4` (changing
# default_limit once the pool exists makes its runs fail).
concurrency:
  pools:
    default_limit: 1
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
    ``$DECODING_ASSETS_CATALOG``); returns the Dagster instance folder. With a
    PostgreSQL catalog, Dagster's runs, events and schedules go to the database
    ``<dbname>_dagster`` on the same server (created if missing)."""
    home = home.resolve()
    (home / "incoming").mkdir(parents=True, exist_ok=True)
    dagster_home = home / "dagster"
    dagster_home.mkdir(exist_ok=True)
    os.environ["DECODING_ASSETS_HOME"] = str(home)
    os.environ["DAGSTER_HOME"] = str(dagster_home)
    from decoding_assets.defs.resources import catalog_location

    text = DAGSTER_YAML
    location = catalog_location()
    if location.startswith(("postgresql://", "postgres://")):
        text += POSTGRES_STORAGE.format(url=_dagster_database(location))
    config = dagster_home / "dagster.yaml"
    if not config.exists() or (config.read_text().startswith(WRITTEN_BY) and config.read_text() != text):
        config.write_text(text)
    return dagster_home


def _dagster_database(catalog_url: str) -> str:
    """The URL of Dagster's own database beside the catalog's, created if missing."""
    from urllib.parse import urlsplit, urlunsplit

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
    return Path(os.environ.get("DECODING_ASSETS_HOME", ".decoding_assets"))


def _materialize(defs, instance, catalog, config: dict, nwb_file_names: list[str], say) -> list[str]:
    """Store the parameter sets, process each session and decode every interval the
    configuration decodes, through Dagster (so the UI shows every run). Returns what
    failed, one line each; a failure does not stop the other sessions."""
    import dagster as dg

    from decoding_assets.defs.automation import decoding_job_name
    from decoding_assets.pipeline import decoding_intervals

    def run(job_name: str, partition_key=None) -> str | None:
        result = defs.resolve_job_def(job_name).execute_in_process(
            instance=instance,
            partition_key=partition_key,
            raise_on_error=False,
            run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
        )
        label = f"{job_name} {partition_key or ''}".strip()
        if result.success:
            say(f"  {label}: ok")
            return None
        errors = [e.event_specific_data.error for e in result.all_events if e.is_step_failure]
        cause = " ".join(str(errors[0].message).split()) if errors else "see the run in the UI"
        say(f"  {label}: FAILED: {cause}")
        return f"{label}: {cause}"

    failures = []
    say("Storing parameter sets ...")
    if (failure := run("store_parameter_sets")) is not None:
        return [failure]
    cat = catalog.get()
    for nwb_file_name in nwb_file_names:
        say(f"Processing {nwb_file_name} ...")
        if (failure := run("process_sessions", nwb_file_name)) is not None:
            failures.append(failure)
            continue
        say(f"Decoding {nwb_file_name} ...")
        for decoding in config["decodings"]:
            for interval in decoding_intervals(cat, nwb_file_name, decoding):
                key = dg.MultiPartitionKey({"session": nwb_file_name, "interval": interval})
                if (failure := run(decoding_job_name(decoding), key)) is not None:
                    failures.append(failure)
    return failures


def run_demo(
    home: Path, n_tetrodes: int = 8, epoch_durations=(120.0, 30.0, 60.0), trial_duration: float = 30.0, quiet: bool = False
) -> list[dict]:
    """Make the demo session, register it and materialize the whole graph for it."""
    _setup_home(home)
    import dagster as dg

    from decoding_assets.definitions import build_definitions
    from decoding_assets.defs.automation import register_file
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
    nwb_file_name, _ = register_file(catalog, instance, path, config)
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
    from decoding_assets.defs.automation import register_file
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
            name, intervals = register_file(catalog, instance, path, config)
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="decoding-assets", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", type=Path, default=_default_home(), help="catalog, outputs and Dagster instance folder")
    parser.add_argument("--catalog", help="the catalog: a DuckDB file or postgresql://user@host/dbname (default: in --home)")
    parser.add_argument("--outputs", type=Path, help="where outputs are written (default: outputs/ in --home)")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="make the demo session, register it and decode it end to end")
    demo.add_argument("--tetrodes", type=int, default=8)
    ui = sub.add_parser("ui", help="start the Dagster UI on localhost")
    ui.add_argument("--port", type=int, default=3000)
    register = sub.add_parser("register", help="register an NWB file and add its partitions")
    register.add_argument("path", type=Path)
    run = sub.add_parser("run", help="register NWB files (or every .nwb in a folder), process and decode them")
    run.add_argument("paths", type=Path, nargs="+")
    cleanup = sub.add_parser("cleanup", help="delete output files this catalog wrote that nothing references")
    cleanup.add_argument("--yes", action="store_true", help="delete (default: only list)")
    cleanup.add_argument("--min-age-s", type=float, default=3600.0, help="spare files younger than this")
    catalog = sub.add_parser("catalog", help="move or prune the catalog")
    catalog_sub = catalog.add_subparsers(dest="action", required=True)
    migrate = catalog_sub.add_parser("migrate", help="copy this catalog into another (e.g. the lab's); again: a no-op")
    migrate.add_argument("--to", required=True, help="the target: postgresql://user@host/dbname or a DuckDB file")
    delete = catalog_sub.add_parser("delete", help="forget a decoding output (its files go at the next cleanup)")
    delete.add_argument("merge_id")
    delete.add_argument("--force", action="store_true", help="even one another user made")
    args = parser.parse_args(argv)
    if args.catalog:
        os.environ["DECODING_ASSETS_CATALOG"] = args.catalog
    if args.outputs:
        os.environ["DECODING_ASSETS_OUTPUTS"] = str(args.outputs.resolve())

    if args.command == "demo":
        run_demo(args.home, n_tetrodes=args.tetrodes)
    elif args.command == "ui":
        _setup_home(args.home)
        cmd = [sys.executable, "-m", "dagster", "dev", "-m", "decoding_assets.definitions", "-h", "127.0.0.1", "-p", str(args.port)]
        print(f"Dagster UI on http://127.0.0.1:{args.port} (instance {os.environ['DAGSTER_HOME']})", flush=True)
        return subprocess.call(cmd)
    elif args.command == "register":
        _setup_home(args.home)
        import dagster as dg

        from decoding_assets.defs.automation import register_file
        from decoding_assets.defs.resources import default_catalog_resource
        from decoding_assets.pipeline import describe_failure, load_config

        try:
            name, intervals = register_file(default_catalog_resource(), dg.DagsterInstance.get(), args.path, load_config())
        except Exception as error:  # a user sees one line, never a traceback
            print(f"error: {describe_failure(args.path, error)}", file=sys.stderr)
            return 1
        print(f"Registered {name}; decoding intervals: {', '.join(intervals) or 'none'}")
    elif args.command == "run":
        return run_files(args.home, args.paths)
    elif args.command == "catalog":
        _setup_home(args.home)
        from catalog import Catalog, CatalogError, copy_catalog
        from decoding_assets.defs.resources import default_catalog_resource

        try:
            source = default_catalog_resource().get()
            if args.action == "migrate":
                copied = copy_catalog(source, Catalog(args.to))
                print(f"Copied {sum(copied.values())} row(s) from {source.location} to {args.to}"
                      + "".join(f"\n  {table}: {n}" for table, n in copied.items() if n))  # fmt: skip
            else:
                source.delete_output(args.merge_id, force=args.force)
                print(f"Deleted the decoding output {args.merge_id}; `decoding-assets cleanup --yes` removes its files.")
        except CatalogError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
    elif args.command == "cleanup":
        _setup_home(args.home)
        from decoding_assets.defs.resources import default_catalog_resource

        paths = default_catalog_resource().get().cleanup(dry_run=not args.yes, min_age_s=args.min_age_s)
        verb = "Deleted" if args.yes else "Would delete (use --yes)"
        print(f"{verb} {len(paths)} file(s)" + "".join(f"\n  {p}" for p in paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())

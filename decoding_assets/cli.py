"""``decoding-assets``: the demo, the UI, registering files and cleaning up.

    decoding-assets demo            # make the demo session and decode it end to end
    decoding-assets ui              # the Dagster UI on http://localhost:3000
    decoding-assets register PATH   # register an NWB file (and its partitions)
    decoding-assets run PATH...     # register NWB files (or folders of them), process and decode them
    decoding-assets cleanup --yes   # delete output files no result references any more

Everything lives under ``--home`` (default ``$DECODING_ASSETS_HOME`` or
``./.decoding_assets``): the catalog, the outputs, the watched folder ``incoming/`` and
the Dagster instance ``dagster/``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

DAGSTER_YAML = """\
# Written by decoding-assets. Decoding steps share the "gpu" concurrency pool: one at a
# time on this machine (raise default_limit, or set a limit for the pool, for more GPUs).
concurrency:
  pools:
    default_limit: 1
telemetry:
  enabled: false
"""


def _setup_home(home: Path) -> Path:
    """Point the library and Dagster at ``home``; returns the Dagster instance folder."""
    home = home.resolve()
    (home / "incoming").mkdir(parents=True, exist_ok=True)
    dagster_home = home / "dagster"
    dagster_home.mkdir(exist_ok=True)
    config = dagster_home / "dagster.yaml"
    if not config.exists():
        config.write_text(DAGSTER_YAML)
    os.environ["DECODING_ASSETS_HOME"] = str(home)
    os.environ["DAGSTER_HOME"] = str(dagster_home)
    return dagster_home


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
    say(f"Registered {nwb_file_name} in {catalog.catalog_path}")
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
        f"\nCatalog: {catalog.catalog_path}\n"
        f"Open the UI with:  {sys.argv[0]} --home {home} ui\n"
        f"In Python:         from catalog import Catalog; Catalog({catalog.catalog_path!r}).fetch_results({example!r})"
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
    args = parser.parse_args(argv)

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
    elif args.command == "cleanup":
        _setup_home(args.home)
        from decoding_assets.defs.resources import default_catalog_resource

        paths = default_catalog_resource().get().cleanup(dry_run=not args.yes, min_age_s=args.min_age_s)
        verb = "Deleted" if args.yes else "Would delete (use --yes)"
        print(f"{verb} {len(paths)} file(s)" + "".join(f"\n  {p}" for p in paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``decoding-assets``: the demo, the UI, registering files and cleaning up.

    decoding-assets demo            # make the demo session and decode it end to end
    decoding-assets ui              # the Dagster UI on http://localhost:3000
    decoding-assets register PATH   # register an NWB file (and its partitions)
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


def run_demo(
    home: Path, n_tetrodes: int = 8, epoch_durations=(120.0, 30.0, 60.0), trial_duration: float = 30.0, quiet: bool = False
) -> list[dict]:
    """Make the demo session, register it and materialize the whole graph for it."""
    _setup_home(home)
    import dagster as dg

    from decoding_assets.definitions import build_definitions
    from decoding_assets.defs.automation import decoding_job_name, register_file
    from decoding_assets.defs.resources import default_catalog_resource, watch_folder
    from decoding_assets.nwb import write_demo_session
    from decoding_assets.pipeline import decoding_intervals, load_config

    say = (lambda *a: None) if quiet else (lambda *a: print(*a, flush=True))
    config = load_config()
    defs = build_definitions(config)
    instance = dg.DagsterInstance.get()
    catalog = default_catalog_resource()
    path = watch_folder() / "demo.nwb"
    if not path.exists():
        say(f"Writing the demo session to {path} ...")
        write_demo_session(path, n_tetrodes=n_tetrodes, epoch_durations=epoch_durations, trial_duration=trial_duration)
    nwb_file_name, _ = register_file(catalog, instance, path)
    say(f"Registered {nwb_file_name} in {catalog.catalog_path}")

    def run(job_name: str, partition_key=None) -> None:
        result = defs.resolve_job_def(job_name).execute_in_process(
            instance=instance,
            partition_key=partition_key,
            raise_on_error=True,
            run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
        )
        say(f"  {job_name} {partition_key or ''}: {'ok' if result.success else 'FAILED'}")

    say("Storing parameter sets, processing the session ...")
    run("store_parameter_sets")
    run("process_sessions", nwb_file_name)
    cat = catalog.get()
    say("Decoding ...")
    for decoding in config["decodings"]:
        for interval in decoding_intervals(cat, nwb_file_name, decoding):
            run(decoding_job_name(decoding), dg.MultiPartitionKey({"session": nwb_file_name, "interval": interval}))
    extracted = cat.extracted_features(nwb_file_name)
    say("\nWaveform features extracted from the raw recording:")
    say(extracted[["electrode_group_name", "features_param_name", "n_spikes", "electrode_ids", "bad_electrode_ids"]].to_string(index=False))
    outputs = cat.outputs(nwb_file_name)
    columns = ["waveform_features_group_name", "decoding_interval", "median_decoding_error_cm", "run_seconds", "path"]
    say("\nDecoding outputs (the catalog's decoding_outputs table):")
    say(outputs[columns].to_string(index=False))
    example = outputs["merge_id"].iloc[0] if len(outputs) else "<merge_id>"
    say(
        f"\nCatalog: {catalog.catalog_path}\n"
        f"Open the UI with:  {sys.argv[0]} --home {home} ui\n"
        f"In Python:         from catalog import Catalog; Catalog({catalog.catalog_path!r}).fetch_results({example!r})"
    )
    return outputs.to_dict("records")


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

        from catalog import CatalogError
        from decoding_assets.defs.automation import register_file
        from decoding_assets.defs.resources import default_catalog_resource
        from decoding_assets.nwb import NWBReadError

        try:
            name, intervals = register_file(default_catalog_resource(), dg.DagsterInstance.get(), args.path)
        except (CatalogError, NWBReadError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        print(f"Registered {name}; decoding intervals: {', '.join(intervals) or 'none'}")
    elif args.command == "cleanup":
        _setup_home(args.home)
        from decoding_assets.defs.resources import default_catalog_resource

        paths = default_catalog_resource().get().cleanup(dry_run=not args.yes, min_age_s=args.min_age_s)
        verb = "Deleted" if args.yes else "Would delete (use --yes)"
        print(f"{verb} {len(paths)} file(s)" + "".join(f"\n  {p}" for p in paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())

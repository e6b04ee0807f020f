"""The worker the fault tests start and kill: decodes of one session, as the Dagster
asset and notebooks run them (``plan.decode_session``), in a process of its own.

    python -m tests.fault_workers CATALOG OUTPUTS CONFIG NWB_FILE_NAME JAX_CACHE [INTERVAL...]

(from the repository's root, as a module: run as a script, tests/ would come first on
the path and its catalog/ would hide the catalog package).

Prints one JSON line (the intervals decoded with their results paths, and the failures)
and exits 1 when an interval failed. On SIGUSR1 it writes every thread's stack to
stderr, so a test can see where it waits before killing it."""

from __future__ import annotations

import faulthandler
import json
import signal
import sys

from catalog import Catalog
from decoding_assets import pipeline, plan
from decoding_assets.decoder import enable_compilation_cache


def main(argv: list[str]) -> int:
    location, output_dir, config_path, nwb_file_name, jax_cache, *intervals = argv
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    enable_compilation_cache(jax_cache)
    decoding = pipeline.load_config(config_path)["decodings"][0]
    done = plan.decode_session(Catalog(location, output_dir), nwb_file_name, decoding, intervals=intervals or None)
    decoded = {record["decoding_interval"]: record["path"] for record in done.decoded}
    print(json.dumps({"decoded": decoded, "failed": dict(done.failed)}), flush=True)
    return 1 if done.failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""One decoding asset per named decoding configuration, partitioned by the sessions it
decodes. A partition decodes every interval the configuration selects in its session that
is not decoded yet (or whose inputs changed since, or whose file went bad); the intervals
are listed in its materialization. The decode is a GPU step: it runs in the ``gpu``
concurrency pool, takes a GPU of its own on this machine (``runs.claim_gpu``) and asks
Kubernetes for a GPU.

A backfill decodes up to ``DECODING_ASSETS_PARTITIONS_PER_RUN`` sessions (default 20) in
one run, so a process's start-up and JAX's initialization are paid once for all of them
(compiled code comes from the persistent cache in the home folder). Each session is
materialized, with its own metadata and checks, as soon as it is decoded; one that fails
leaves the others materialized and fails the run, naming it."""


import contextlib
import os
from collections.abc import Iterator

import dagster as dg
import pandas as pd
from pydantic import Field

from catalog import Catalog, CatalogError
from decoding_assets import pipeline, plan
from decoding_assets.viewing import viewer_url

from .parameters import parameter_sets
from .partitions import decoding_partitions
from .resources import CatalogResource, home
from .runs import claim_gpu
from .sessions import position_groups, waveform_features_groups

GPU_POOL = "gpu"
DEVICE_LOCKS = "device_locks"  # in the home folder: a lock file per GPU (runs.claim_gpu)
PARTITIONS_PER_RUN_VARIABLE = "DECODING_ASSETS_PARTITIONS_PER_RUN"
DEFAULT_PARTITIONS_PER_RUN = 20
RESULTS_INTACT = "results_intact"
# where a decode step runs on a cluster: the Celery executor's gpu queue (workers on GPU
# nodes listen to it), and the step pod's GPU request under the Kubernetes job executor
GPU_QUEUE = "gpu"
GPU_OP_TAGS = {
    "gpu": "true",
    "dagster-celery/queue": GPU_QUEUE,
    "dagster-k8s/config": {
        "container_config": {"resources": {"requests": {"nvidia.com/gpu": "1"}, "limits": {"nvidia.com/gpu": "1"}}}
    },
}


class DecodeRequest(dg.Config):
    """What a materialization decodes (launchpad: "Open launchpad")."""

    intervals: list[str] = Field(
        default_factory=list,
        description="Only these decoding intervals (deleted ones too). Default: every interval not decoded yet.",
    )
    redecode: bool = Field(False, description="Decode every interval again, even those already decoded.")


def decoding_asset_key(config: pipeline.DecodingConfig) -> dg.AssetKey:
    return dg.AssetKey(["decoding", config.name])


def partition_metadata(catalog: Catalog, nwb_file_name: str, config: pipeline.DecodingConfig) -> dict:
    """What the catalog holds for one decoding partition, as materialization metadata:
    the same whether a run wrote it or the catalog sync reports a decode made elsewhere."""
    planned = plan.plan_session(catalog, nwb_file_name, config)
    outputs = catalog.outputs(nwb_file_name).set_index("merge_id")
    rows = []
    for item in planned:
        merge_id = item.selection.merge_id
        output = outputs.loc[merge_id] if merge_id in outputs.index else None
        rows.append({
            "interval": item.interval, "status": item.status, "merge_id": merge_id,
            "median_decoding_error_cm": None if output is None else output["median_decoding_error_cm"],
            "time_bins": None if output is None else int(output["n_time_bins"]),
            "device": None if output is None else output["device"],
            "created_by": None if output is None else output["created_by"],
            "path": None if output is None else output["path"], "detail": item.detail,
            # opened by the viewers `decoding-assets ui` serves beside the UI
            "view": None if output is None else f"[view]({viewer_url(merge_id)})",
        })  # fmt: skip
    table = pd.DataFrame(rows)
    decoded = table[table["status"] == "decoded"] if len(table) else table
    errors = decoded["median_decoding_error_cm"].dropna() if len(decoded) else pd.Series(dtype=float)
    return {
        "intervals": dg.MetadataValue.md(table.to_markdown(index=False) if len(table) else "(none)"),
        "outputs": dg.MetadataValue.json({r["merge_id"]: r["path"] for r in decoded.to_dict("records")}),
        "n_decoded": len(decoded),
        "n_intervals": int((~table["status"].isin(plan.NOT_WANTED)).sum()) if len(table) else 0,
        "median_decoding_error_cm": float(errors.median()) if len(errors) else None,
    }


def results_intact(catalog: Catalog, nwb_file_name: str, decoding, full=frozenset()) -> dg.AssetCheckEvaluation:
    """Check the files of a decoding partition's outputs against the catalog (the
    statuses are recorded there, so the next catalog sync shows a bad one as missing)."""
    problems, n_files = [], 0
    with catalog.held():
        planned = plan.plan_session(catalog, nwb_file_name, decoding, check_inputs=False)
    for item in planned:
        if item.status not in ("decoded", "bad file"):
            continue
        checks = catalog.check_output(item.selection.merge_id, full=item.selection.merge_id in full)
        n_files += len(checks)
        problems += [f"{item.interval}: {c.message}" for c in checks if c.status != "ok"]
    return dg.AssetCheckEvaluation(
        asset_key=decoding_asset_key(decoding),
        check_name=RESULTS_INTACT,
        passed=not problems,
        partition=nwb_file_name,
        metadata={
            "files_checked": n_files,
            "problems": dg.MetadataValue.md("\n".join(f"- {p}" for p in problems) or "none"),
        },
    )


def partitions_per_run() -> int:
    """``DECODING_ASSETS_PARTITIONS_PER_RUN``: how many sessions a backfill (or the
    automation, which launches a backfill when it decodes several at once) decodes in
    one run, read when the definitions load. One run is one process: its start-up and
    JAX's initialization are paid once for all of them."""
    value = os.environ.get(PARTITIONS_PER_RUN_VARIABLE, "").strip() or str(DEFAULT_PARTITIONS_PER_RUN)
    if not value.isdigit() or int(value) < 1:
        raise ValueError(
            f"{PARTITIONS_PER_RUN_VARIABLE} is {value!r}: it must be how many sessions a backfill decodes in one run, "
            f"a whole number from 1 (1: a run per session); unset it for the default, {DEFAULT_PARTITIONS_PER_RUN}."
        )
    return int(value)


@contextlib.contextmanager
def decode_device(catalog: CatalogResource, log) -> Iterator[str | None]:
    """The device a decode step uses: the one configured, else a GPU of this machine that
    no other decode holds (claimed for the step), else JAX's default (the CPU)."""
    if catalog.device:
        yield catalog.device
        return
    with claim_gpu(home() / DEVICE_LOCKS, on_wait=log.warning) as gpu:
        if gpu is not None:
            log.info(f"Decoding on {gpu} (CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')}).")
        yield gpu


def decode_partition(
    cat: Catalog, nwb_file_name: str, decoding: pipeline.DecodingConfig, request: DecodeRequest, device, run_id: str,
    log=None,
) -> list:
    """Decode one session (partition) and return its materialization and check results;
    raises ``dg.Failure`` naming the session and each interval that failed. ``log(line)``
    hears how far each decode has got (the run's log)."""
    key = decoding_asset_key(decoding)
    done = plan.decode_session(
        cat, nwb_file_name, decoding, intervals=request.intervals or None, redecode=request.redecode,
        device=device, run_id=run_id, log=log,
    )  # fmt: skip
    if done.failed:
        raise dg.Failure(
            description=f"Session {nwb_file_name}, decoding {decoding.name!r}: {len(done.failed)} interval(s) failed "
            + "; ".join(f"{interval}: {message}" for interval, message in done.failed)
            + f". {len(done.decoded)} other(s) decoded and registered; materialize again to retry the rest."
        )
    with cat.held():
        metadata = partition_metadata(cat, nwb_file_name, decoding)
    metadata.update(
        decoded_now=", ".join(r["decoding_interval"] for r in done.decoded) or "none (all decoded already)",
        run_seconds=float(sum(r["run_seconds"] for r in done.decoded)),
    )
    worst = max((r["max_posterior_sum_error"] for r in done.decoded), default=0.0)
    n_nan = sum(r["n_nan_inside_track"] for r in done.decoded)
    checked = {"intervals_checked": len(done.decoded)}
    fresh = {r["merge_id"] for r in done.decoded}  # hashed in full; the others by size and time
    return [
        dg.AssetMaterialization(asset_key=key, partition=nwb_file_name, metadata=metadata),
        results_intact(cat, nwb_file_name, decoding, full=fresh),
        dg.AssetCheckEvaluation(
            asset_key=key, check_name="posterior_sums_to_one", passed=worst < 1e-3, partition=nwb_file_name,
            metadata={"max_abs_error": worst, **checked},
        ),
        dg.AssetCheckEvaluation(
            asset_key=key, check_name="no_nan_inside_track", passed=n_nan == 0, partition=nwb_file_name,
            metadata={"n_nan": n_nan, **checked},
        ),
    ]  # fmt: skip


def build_decoding_asset(decoding: pipeline.DecodingConfig) -> dg.AssetsDefinition:
    key = decoding_asset_key(decoding)
    checks = [
        dg.AssetCheckSpec("posterior_sums_to_one", asset=key, description="Each time bin's posterior sums to 1."),
        dg.AssetCheckSpec("no_nan_inside_track", asset=key, description="No NaN at bins inside the track."),
        dg.AssetCheckSpec(
            RESULTS_INTACT, asset=key,
            description="Every results and model file of the partition is the one registered (size, time, checksum). "
            "Also checked every few hours by the verify_outputs sensor.",
        ),  # fmt: skip
    ]
    # a session's decoding depends on that session's groups (same partition key)
    same_session = dg.IdentityPartitionMapping()

    @dg.asset(
        key=key,
        partitions_def=decoding_partitions(decoding.name),
        group_name="decoding",
        deps=[
            dg.AssetDep(waveform_features_groups, partition_mapping=same_session),
            dg.AssetDep(position_groups, partition_mapping=same_session),
            parameter_sets,
        ],
        pool=GPU_POOL,
        op_tags=GPU_OP_TAGS,
        backfill_policy=dg.BackfillPolicy.multi_run(max_partitions_per_run=partitions_per_run()),
        output_required=False,  # each session's materialization is reported as it is decoded
        kinds={"jax", "netcdf"},
        check_specs=checks,
        automation_condition=dg.AutomationCondition.on_missing(),
        description=(
            f"Decoding {decoding.name!r}: features group {decoding.waveform_features_group_name!r}, position group "
            f"{decoding.position_group_name!r}, parameters {decoding.decoding_param_name!r}, encoding interval "
            f"{decoding.encoding_interval!r}, decoding intervals {decoding.decoding_intervals!r}, "
            f"estimate_decoding_params={decoding.estimate_decoding_params}."
        ),
    )
    def _decode(context: dg.AssetExecutionContext, config: DecodeRequest, catalog: CatalogResource):
        """Every session of the run in turn (one, or a backfill's range): each is
        materialized as soon as it is decoded; a session that fails does not stop the
        others, and the step then fails naming it."""
        cat, failed = catalog.get(), {}
        sessions = context.partition_keys
        checks = context.selected_asset_check_keys
        with decode_device(catalog, context.log) as device:
            for nwb_file_name in sessions:
                try:
                    events = decode_partition(cat, nwb_file_name, decoding, config, device, context.run_id, context.log.info)
                except Exception as error:  # one session's failure is reported, the others go on
                    failed[nwb_file_name] = error.description if isinstance(error, dg.Failure) else _one_line(error)
                    context.log.error(f"Session {nwb_file_name}: {failed[nwb_file_name]}")
                    continue
                yield from (e for e in events if getattr(e, "asset_check_key", None) in (None, *checks))
        if failed:
            others = len(sessions) - len(failed)
            raise dg.Failure(
                description=f"Decoding {decoding.name!r}: {len(failed)} of {len(sessions)} session(s) failed: "
                + " | ".join(f"{session}: {message.rstrip('.')}" for session, message in failed.items())
                + (f". The other {others} are decoded and materialized." if others else "."),
                metadata={"failed_sessions": ", ".join(failed)},
            )
        for check_key in checks:  # each check's results were reported per session above
            yield dg.Output(None, output_name=context.assets_def.get_output_name_for_asset_check_key(check_key))

    return _decode


def _one_line(error: Exception) -> str:
    message = " ".join(str(error).split()) or "(no message)"
    return message if isinstance(error, CatalogError) else f"{type(error).__name__}: {message}"


def build_decoding_assets(config: dict) -> list[dg.AssetsDefinition]:
    return [build_decoding_asset(c) for c in config["decodings"]]

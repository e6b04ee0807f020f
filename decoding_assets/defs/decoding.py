"""One decoding asset per named decoding configuration, partitioned by the sessions it
decodes. A partition decodes every interval the configuration selects in its session that
is not decoded yet (or whose inputs changed since, or whose file went bad); the intervals
are listed in its materialization. The decode is a GPU step: it runs in the ``gpu``
concurrency pool and asks Kubernetes for a GPU."""


import base64

import dagster as dg
import pandas as pd
from pydantic import Field

from catalog import Catalog
from decoding_assets import pipeline, plan
from decoding_assets.plots import plot_decode

from .parameters import parameter_sets
from .partitions import decoding_partitions
from .resources import CatalogResource
from .sessions import position_groups, waveform_features_groups

GPU_POOL = "gpu"
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


def results_intact(catalog: Catalog, nwb_file_name: str, decoding, full=frozenset()) -> dg.AssetCheckResult:
    """Check the files of a decoding partition's outputs against the catalog (the
    statuses are recorded there, so the next catalog sync shows a bad one as missing)."""
    problems, n_files = [], 0
    for item in plan.plan_session(catalog, nwb_file_name, decoding, check_inputs=False):
        if item.status not in ("decoded", "bad file"):
            continue
        checks = catalog.check_output(item.selection.merge_id, full=item.selection.merge_id in full)
        n_files += len(checks)
        problems += [f"{item.interval}: {c.message}" for c in checks if c.status != "ok"]
    return dg.AssetCheckResult(
        asset_key=decoding_asset_key(decoding),
        check_name=RESULTS_INTACT,
        passed=not problems,
        metadata={"files_checked": n_files, "problems": dg.MetadataValue.md("\n".join(f"- {p}" for p in problems) or "none")},
    )


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
        nwb_file_name = context.partition_key
        cat = catalog.get()
        pictures = []

        def picture(record: dict) -> None:
            if not pictures:  # the first interval decoded in this run
                png = plot_decode(record["results"], record["position"], record["position_variables"])
                pictures.append(f"![decode](data:image/png;base64,{base64.b64encode(png).decode()})")

        done = plan.decode_session(
            cat, nwb_file_name, decoding, intervals=config.intervals or None, redecode=config.redecode,
            device=catalog.device, on_decoded=picture, run_id=context.run_id,
        )  # fmt: skip
        metadata = partition_metadata(cat, nwb_file_name, decoding)
        for item in plan.plan_session(cat, nwb_file_name, decoding, check_inputs=False):
            if item.status == "cannot decode":
                context.log.warning(f"Session {nwb_file_name}, decoding {decoding.name!r}: {item.detail}")
        metadata.update(
            decoded_now=", ".join(r["decoding_interval"] for r in done.decoded) or "none (all decoded already)",
            run_seconds=float(sum(r["run_seconds"] for r in done.decoded)),
        )
        if pictures:
            metadata["decode"] = dg.MetadataValue.md(pictures[0])
        if done.failed:
            raise dg.Failure(
                description=f"Session {nwb_file_name}, decoding {decoding.name!r}: {len(done.failed)} interval(s) failed "
                + "; ".join(f"{interval}: {message}" for interval, message in done.failed)
                + f". {len(done.decoded)} other(s) decoded and registered; materialize again to retry the rest.",
                metadata=metadata,
            )
        worst = max((r["max_posterior_sum_error"] for r in done.decoded), default=0.0)
        n_nan = sum(r["n_nan_inside_track"] for r in done.decoded)
        checked = {"intervals_checked": len(done.decoded)}
        fresh = {r["merge_id"] for r in done.decoded}  # hashed in full; the others by size and time
        intact = results_intact(cat, nwb_file_name, decoding, full=fresh)
        yield dg.MaterializeResult(
            metadata=metadata,
            check_results=[
                intact,
                dg.AssetCheckResult(
                    check_name="posterior_sums_to_one", passed=worst < 1e-3, metadata={"max_abs_error": worst, **checked}
                ),
                dg.AssetCheckResult(
                    check_name="no_nan_inside_track", passed=n_nan == 0, metadata={"n_nan": n_nan, **checked}
                ),
            ],
        )

    return _decode


def build_decoding_assets(config: dict) -> list[dg.AssetsDefinition]:
    return [build_decoding_asset(c) for c in config["decodings"]]

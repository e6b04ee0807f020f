"""One decoding asset per named decoding configuration, partitioned by session x
decoding interval. The decode is a GPU step: it runs in the ``gpu`` concurrency pool
and asks Kubernetes for a GPU."""


import base64

import dagster as dg

from decoding_assets import pipeline
from decoding_assets.plots import plot_decode

from .parameters import parameter_sets
from .partitions import decoding_partitions
from .resources import CatalogResource
from .sessions import position_groups, waveform_features_groups

GPU_POOL = "gpu"
GPU_OP_TAGS = {
    "gpu": "true",
    "dagster-k8s/config": {
        "container_config": {"resources": {"requests": {"nvidia.com/gpu": "1"}, "limits": {"nvidia.com/gpu": "1"}}}
    },
}


def build_decoding_asset(config: pipeline.DecodingConfig) -> dg.AssetsDefinition:
    key = dg.AssetKey(["decoding", config.name])
    checks = [
        dg.AssetCheckSpec("posterior_sums_to_one", asset=key, description="Each time bin's posterior sums to 1."),
        dg.AssetCheckSpec("no_nan_inside_track", asset=key, description="No NaN at bins inside the track."),
    ]

    @dg.asset(
        key=key,
        partitions_def=decoding_partitions,
        group_name="decoding",
        # a (session, interval) partition depends on its session's partition
        deps=[waveform_features_groups, position_groups, parameter_sets],
        pool=GPU_POOL,
        op_tags=GPU_OP_TAGS,
        kinds={"jax", "netcdf"},
        check_specs=checks,
        description=(
            f"Decoding {config.name!r}: features group {config.waveform_features_group_name!r}, position group "
            f"{config.position_group_name!r}, parameters {config.decoding_param_name!r}, encoding interval "
            f"{config.encoding_interval!r}, decoding intervals {config.decoding_intervals!r}, "
            f"estimate_decoding_params={config.estimate_decoding_params}."
        ),
    )
    def _decode(context: dg.AssetExecutionContext, catalog: CatalogResource):
        keys = context.partition_key.keys_by_dimension
        cat = catalog.get()
        merge_id = pipeline.select(cat, keys["session"], keys["interval"], config)
        out = pipeline.decode(cat, merge_id, device=catalog.device)
        results = out["results"]
        total_error, n_nan = out["max_posterior_sum_error"], out["n_nan_inside_track"]
        png = plot_decode(results, out["position"], out["position_variables"])
        encoding_interval = results.attrs["encoding_interval"]
        results.close()
        picture = base64.b64encode(png).decode()
        yield dg.MaterializeResult(
            metadata={
                "merge_id": merge_id,
                "path": dg.MetadataValue.path(out["path"]),
                "size_bytes": int(out["size_bytes"]),
                "time_bins": int(out["n_time_bins"]),
                "run_seconds": float(out["run_seconds"]),
                "device": out["device"],
                "median_decoding_error_cm": out["median_decoding_error_cm"],
                "encoding_interval": encoding_interval,
                "decode": dg.MetadataValue.md(f"![decode](data:image/png;base64,{picture})"),
            },
            check_results=[
                dg.AssetCheckResult(
                    check_name="posterior_sums_to_one", passed=total_error < 1e-3, metadata={"max_abs_error": total_error}
                ),
                dg.AssetCheckResult(check_name="no_nan_inside_track", passed=n_nan == 0, metadata={"n_nan": n_nan}),
            ],
        )

    return _decode


def build_decoding_assets(config: dict) -> list[dg.AssetsDefinition]:
    return [build_decoding_asset(c) for c in config["decodings"]]

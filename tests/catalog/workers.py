"""What the worker processes of the concurrency tests run: spawned processes import
this module, so it imports the catalog and nothing heavier."""

from catalog import Catalog, DecodeAnalyses, DecodingSelection


def decode_many(location: str, output_dir: str, merge_ids: list[str], user: str) -> None:
    """Stand in for a worker finishing decodes: register each output with its lineage."""
    cat = Catalog(location, output_dir, user=user)
    for merge_id in merge_ids:
        path, model = cat.output_paths(cat.fetch_selection(merge_id))
        path.write_bytes(merge_id.encode())
        model.write_bytes(b"model")
        cat.register_output(
            merge_id, path=path, model_path=model, code_version="test", n_time_bins=1, run_seconds=0.0, device="cpu",
            analyses=DecodeAnalyses(median_decoding_error_cm=1.0, state_fractions=(("Continuous", 0.5),)),
            input_versions={"session": {"session.nwb": "h"}, "decoding_params": {"contfrag": "v"}, "code": {"x": "1"}},
        )  # fmt: skip


def select_all(location: str, selections: list[DecodingSelection]) -> None:
    cat = Catalog(location)
    for selection in selections:
        cat.insert_selection(selection)


def read_while_writing(location: str, stop, counts) -> None:
    cat = Catalog(location)
    while not stop.is_set():
        counts.append(len(cat.outputs()))

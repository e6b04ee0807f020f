"""The pipeline's steps as plain functions of a ``Catalog``: what the Dagster assets,
the CLI and notebooks call. No Dagster here.

register_session -> process_position -> ensure_parameter_sets / ensure_groups ->
decode (one decoding selection, written to netCDF and registered with its lineage).
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import hashlib
import json
import os
import shutil
import time as clock
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from catalog import Catalog, CatalogError, DecodeAnalyses, DecodeSources, DecodingSelection, check_name, file_checksum
from catalog.position import POSITION_VARIABLES
from catalog.storage import UploadError, is_url, local_form

from . import __version__
from .decoder import analyses, load_results, save_results
from .decoder.progress import LoggedProgress
from .decoder.results import MAX_ERROR_EXPECTED, Keep, is_max_error
from .files import uploaded
from .models import check_decoding_params, decoding_model, store_decoding_params
from .nwb import (
    NoRawRecordingError,
    NWBReadError,
    RawPosition,
    WaveformFeatures,
    format_seconds,
    open_raw_recording,
    read_raw_position,
    read_session_info,
    read_waveform_features,
)
from .plan import input_versions
from .position import (
    GROUP_MAX_GAP_S,
    check_position_params,
    interpolate_angle,
    interpolate_by_time,
    load_position,
    process_position,
    save_position,
    upsample_position_group,
)
from .waveforms import (
    check_features_params,
    check_values,
    extract_waveform_features,
    is_number,
    load_features,
    median_peak_uv,
    save_features,
)

DEFAULT_CONFIG = Path(__file__).with_name("decoding_configs.yaml")


# ---------------------------------------------------------------------- configuration


# rules that choose a session's interval lists, beside globs over their names
INTERVAL_RULES = ("{run_epochs}", "{sleep_epochs}", "{epochs}", "{trials}")
# rules that choose the encoding interval from the decoding interval, beside a name
ENCODING_RULES = ("{epoch}", "{nearest_run_epoch}")


@dataclass(frozen=True)
class DecodingConfig:
    """One named decoding configuration: a decoding asset in the graph.

    ``decoding_intervals``: rules tried in order, the first that chooses any of a
    session's interval lists wins: a glob over names, or {run_epochs}, {sleep_epochs},
    {epochs}, {trials}. ``encoding_interval``: an interval list name, "{epoch}" (the
    epoch holding the decoding interval) or "{nearest_run_epoch}" (the run epoch
    nearest in time, e.g. to decode replay in a sleep epoch). ``keep``: what each
    decode's results file keeps (``Keep``; the YAML ``keep`` mapping)."""

    name: str
    waveform_features_group_name: str
    position_group_name: str
    decoding_param_name: str
    encoding_interval: str
    decoding_intervals: tuple[str, ...]
    estimate_decoding_params: bool = False
    keep: Keep = Keep()


def _is_name(value) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _is_rule(value) -> bool:
    """A glob over interval list names or one of INTERVAL_RULES."""
    return _is_name(value) and ("{" not in value and "}" not in value or value in INTERVAL_RULES)


def _is_rules(value) -> bool:
    return _is_rule(value) or (isinstance(value, list) and bool(value) and all(map(_is_rule, value)))


def _interval_rules(value) -> tuple[str, ...]:
    return (value,) if isinstance(value, str) else tuple(value)


_RULES = (_is_rules, f"a glob over interval list names or one of {list(INTERVAL_RULES)}, or a list of them")
_POSITION_GROUP_CHECKS = {
    "intervals": _RULES,
    "trodes_pos_params_name": (_is_name, "the name of a position parameter set"),
    "upsample_rate": (lambda v: is_number(v) and v > 0, "a positive number (Hz)"),
    "position_variables": (
        lambda v: isinstance(v, list) and bool(v) and all(x in POSITION_VARIABLES for x in v) and len(set(v)) == len(v),
        f"a list drawn from {list(POSITION_VARIABLES)}",
    ),
}
_FEATURES_GROUP_CHECKS = {
    "features_param_name": (_is_name, "the name of a waveform features parameter set"),
    "source": (lambda v: v in (None, "raw", "nwb"), "'raw', 'nwb' or null (either)"),
    "electrode_group_names": (
        lambda v: v is None or (isinstance(v, list) and bool(v) and all(map(_is_name, v))),
        "a list of electrode group names, or null (every group with the features)",
    ),
}
_DECODING_CHECKS = {
    "waveform_features_group_name": (_is_name, "the name of a waveform features group"),
    "position_group_name": (_is_name, "the name of a position group"),
    "decoding_param_name": (_is_name, "the name of a decoding parameter set"),
    "encoding_interval": (
        lambda v: _is_name(v) and ("{" not in v and "}" not in v or v in ENCODING_RULES),
        f"an interval list name or one of {list(ENCODING_RULES)}",
    ),
    "decoding_intervals": _RULES,
    "estimate_decoding_params": (lambda v: isinstance(v, bool), "true or false"),
    "keep": (lambda v: v is None or isinstance(v, dict), "a mapping of causal_posterior, per_state and max_error"),
}
_KEEP_CHECKS = {
    "causal_posterior": (lambda v: isinstance(v, bool), "true or false"),
    "per_state": (lambda v: isinstance(v, bool), "true or false"),
    "max_error": (lambda v: v is None or is_max_error(v), MAX_ERROR_EXPECTED),
}
_LED = (lambda v: v is None or _is_name(v), "a position series name, or an LED of the labs' per-epoch layout (led_1)")
_LED_SERIES_CHECKS = {"front": _LED, "back": _LED}


def _as_mapping(entry) -> dict:
    """A section's entry as a mapping (null: empty)."""
    if entry is None:
        return {}
    if not isinstance(entry, dict):
        raise ValueError(f"expected a mapping of keys to values; got {entry!r}.")
    return dict(entry)


def _checked_entry(entry, checks: dict, required: tuple[str, ...] = ()) -> dict:
    """A section's entry with only known keys, the required ones among them, each value checked."""
    entry = _as_mapping(entry)
    unknown = sorted(set(entry) - set(checks), key=str)
    if unknown:
        raise ValueError(f"unknown key(s) {unknown}; known: {sorted(checks)}.")
    missing = [k for k in required if entry.get(k) is None]
    if missing:
        raise ValueError(f"missing key(s) {missing}.")
    check_values(entry, checks)
    return entry


def _position_group(entry) -> dict:
    entry = _checked_entry(entry, _POSITION_GROUP_CHECKS)
    return {**entry, "intervals": _interval_rules(entry.get("intervals", "{run_epochs}"))}


def _decoding(name: str, entry) -> DecodingConfig:
    required = tuple(k for k in _DECODING_CHECKS if k not in ("estimate_decoding_params", "keep"))
    entry = _checked_entry(entry, _DECODING_CHECKS, required)
    keep = _keep(entry.pop("keep", None))
    return DecodingConfig(
        name=name, keep=keep, **{**entry, "decoding_intervals": _interval_rules(entry["decoding_intervals"])}
    )


def _keep(entry) -> Keep:
    """A decoding's ``keep`` mapping; a key left out keeps its default."""
    try:
        return Keep(**_checked_entry(entry, _KEEP_CHECKS))
    except ValueError as error:
        raise ValueError(f"keep: {error}") from None


def _each(config: dict, section: str, check: Callable[[str, object], object]) -> dict:
    """{name: check(name, entry)} over a section's named entries; an error names the
    section and the entry."""
    entries = config.get(section) or {}
    if not isinstance(entries, dict):
        raise ValueError(f"{section} must map names to entries; got {entries!r}.")
    out = {}
    for name, entry in entries.items():
        try:
            check_name("the name", name)
            out[name] = check(name, entry)
        except ValueError as error:
            raise ValueError(f"{section} {name!r}: {error}") from None
    return out


# each parameter set is checked as the pipeline checks it when it stores it
_PARAMETER_SETS = {
    "waveform_features_params": check_features_params,
    "position_params": check_position_params,
    "decoding_params": check_decoding_params,
}
CONFIG_SECTIONS = (*_PARAMETER_SETS, "waveform_features_groups", "position_groups", "decodings", "position_series")


def load_config(path: str | Path | None = None) -> dict:
    """The user-edited configuration (``DECODING_ASSETS_CONFIG`` or the packaged file),
    checked whole when it is loaded, so as the Dagster definitions load: every parameter
    set by the checker the pipeline stores it with; every group, decoding and
    position_series entry, its keys and values (booleans are YAML's true and false). An
    error names the file, the section, the entry, the key and the value, and says what
    is expected.

    Returns the sections as written, except ``decodings``: a list of ``DecodingConfig``;
    and each position group's ``intervals``: a tuple of rules."""
    path = Path(path or os.environ.get("DECODING_ASSETS_CONFIG") or DEFAULT_CONFIG)
    with open(path) as f:
        config = yaml.safe_load(f) or {}
    try:
        return _checked_config(config)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None


def _checked_config(config) -> dict:
    if not isinstance(config, dict):
        raise ValueError(f"expected the sections {list(CONFIG_SECTIONS)}; got {config!r}.")
    unknown = sorted(set(config) - set(CONFIG_SECTIONS), key=str)
    if unknown:
        raise ValueError(f"unknown section(s) {unknown}; known: {sorted(CONFIG_SECTIONS)}.")
    for section, check in _PARAMETER_SETS.items():
        _each(config, section, lambda _, params, check=check: check(_as_mapping(params)))
    _each(config, "waveform_features_groups", lambda _, entry: _checked_entry(entry, _FEATURES_GROUP_CHECKS))
    _each(config, "position_series", lambda _, entry: _checked_entry(entry, _LED_SERIES_CHECKS, ("front",)))
    return {
        **config,
        "position_groups": _each(config, "position_groups", lambda _, entry: _position_group(entry)),
        "decodings": list(_each(config, "decodings", _decoding).values()),
    }


def position_series_for(config: dict | None, nwb_file_name: str) -> dict | None:
    """The ``position_series`` mapping (front and back LED series) of the first
    pattern in the configuration that matches the session's file name, if any."""
    for pattern, mapping in ((config or {}).get("position_series") or {}).items():
        if fnmatch.fnmatchcase(nwb_file_name, pattern):
            return mapping
    return None


# ---------------------------------------------------------------------- sessions


def register_session(catalog: Catalog, nwb_path: str | Path, config: dict | None = None) -> str:
    """Read an NWB file's metadata, intervals, epochs, electrode groups and waveform
    features and record them in the catalog (one transaction). ``config``: for its
    ``position_series`` mapping."""
    nwb_path = Path(nwb_path)
    info = read_session_info(nwb_path, position_series_for(config, nwb_path.name))
    content_hash = file_checksum(nwb_path)
    features = [
        {
            "electrode_group_name": group,
            "features_param_name": param,
            "n_spikes": n_spikes,
            "n_features": n_channels,
            "source": "nwb",
            "content_hash": f"{content_hash}:{group}",
        }
        for group, param, n_spikes, n_channels in info["waveform_features"]
    ]
    return catalog.register_session(
        nwb_path,
        content_hash=content_hash,
        subject_id=info["subject_id"],
        session_description=info["session_description"],
        session_start_time=info["session_start_time"],
        interval_lists=info["intervals"],
        epochs=[vars(e) for e in info["epochs"]],
        electrode_groups=info["electrode_groups"],
        waveform_features=features,
    )


def describe_failure(path: str | Path, error: BaseException) -> str:
    """One line saying which file could not be registered and why: our own errors say
    what to do; anything else is named by its type so it can be looked up."""
    message = " ".join(str(error).split()) or "(no message)"
    if isinstance(error, (CatalogError, NWBReadError)):
        return f"{Path(path).name}: not registered: {message}"
    return f"{Path(path).name}: not registered: {type(error).__name__}: {message}"


def zero_length(nwb_file_name: str, interval_list_name: str, valid_times: np.ndarray) -> str | None:
    """What is wrong with an interval list that holds no time (None when it holds some)."""
    valid_times = np.asarray(valid_times, dtype=float).reshape(-1, 2)
    if np.any(valid_times[:, 1] > valid_times[:, 0]):
        return None
    if not valid_times.size:
        span = "its valid_times are empty"
    elif len(valid_times) == 1:
        span = f"start = stop = {format_seconds(valid_times[0, 0])} s"
    else:
        first, last = format_seconds(valid_times[0, 0]), format_seconds(valid_times[-1, 1])
        span = f"start = stop in each of its {len(valid_times)} pieces, {first} s to {last} s"
    return f"Interval {interval_list_name!r} of session {nwb_file_name} has zero length ({span})."


def _check_length(nwb_file_name: str, interval_list_name: str, valid_times: np.ndarray) -> None:
    problem = zero_length(nwb_file_name, interval_list_name, valid_times)
    if problem:
        raise CatalogError(
            f"{problem} There is nothing to encode or decode in it: choose another interval, or leave it out of the "
            "decoding configuration's rules."
        )


def process_session_position(
    catalog: Catalog, nwb_file_name: str, trodes_pos_params_name: str, config: dict | None = None, run_id: str | None = None
) -> list[dict]:
    """Process the raw LEDs of every epoch with a named parameter set, each epoch from
    its own camera's series; one netCDF file and one catalog row per epoch.

    Returns one row per epoch: the LED series used, how many LEDs (one: no
    orientation), the samples written and the fraction with a position; an epoch of
    zero length, or one no position series covers, is reported and skipped."""
    session = catalog.fetch_session(nwb_file_name)
    params = catalog.fetch_position_params(trodes_pos_params_name)
    sources = read_raw_position(session["nwb_path"], position_series_for(config, nwb_file_name))
    epochs = catalog.interval_lists(nwb_file_name).query("source == 'epoch'")["interval_list_name"]
    if epochs.empty:
        raise CatalogError(f"Session {nwb_file_name} has no epochs to process position for.")
    report = []
    for epoch in epochs:
        valid_times = catalog.fetch_interval_list(nwb_file_name, epoch)
        problem = zero_length(nwb_file_name, epoch, valid_times)
        if problem:
            report.append({"interval_list_name": epoch, "status": "skipped", "message": problem})
            continue
        source = _position_source_for(sources, valid_times)
        if source is None:
            report.append({"interval_list_name": epoch, "status": "skipped",
                           "message": f"Session {nwb_file_name}: no position series has frames in epoch {epoch}."})  # fmt: skip
            continue
        frame = process_position(source, valid_times, params)
        path = catalog.position_output_path(nwb_file_name, epoch, trodes_pos_params_name, run_id=run_id)
        with catalog.writing([path], run_id=run_id):
            save_position(frame, path)
            catalog.register_position_output(nwb_file_name, epoch, trodes_pos_params_name, path, len(frame))
        report.append({
            "interval_list_name": epoch, "status": "processed", "series": source.name, "n_leds": source.n_leds,
            "orientation": "from 2 LEDs" if source.n_leds == 2 else "none (one LED)", "n_samples": len(frame),
            "fraction_tracked": float(frame["position_x"].notna().mean()), "path": str(path),
            "message": None,
        })  # fmt: skip
    return report


def _position_source_for(sources: list[RawPosition], valid_times: np.ndarray) -> RawPosition | None:
    """The position source with the most camera frames inside the interval."""
    counts = [int(_within(s.time, valid_times).sum()) for s in sources]
    return sources[int(np.argmax(counts))] if counts and max(counts) > 0 else None


def ensure_parameter_sets(catalog: Catalog, config: dict) -> dict[str, list[str]]:
    """Store the configuration's named parameter sets (idempotent)."""
    from .position import check_position_params

    for name, params in (config.get("position_params") or {}).items():
        checked = check_position_params(params or {})
        if not _stored_as(catalog.fetch_position_params, name, checked, check_position_params):
            catalog.insert_position_params(name, checked)
    for name, params in (config.get("decoding_params") or {}).items():
        store_decoding_params(catalog, name, params or {})
    for name, params in (config.get("waveform_features_params") or {}).items():
        try:
            checked = check_features_params(params)
            if not _stored_as(catalog.fetch_features_params, name, checked, check_features_params):
                catalog.insert_features_params(name, checked)
        except ValueError as error:
            raise CatalogError(f"waveform_features_params {name!r}: {error}") from None
    return {
        "waveform_features_params": sorted(config.get("waveform_features_params") or {}),
        "position_params": sorted(config.get("position_params") or {}),
        "decoding_params": sorted(config.get("decoding_params") or {}),
    }


def _stored_as(fetch, name: str, checked: dict, check) -> bool:
    """Whether the set stored under ``name`` means the same as ``checked`` once the
    defaults fill it: a set stored before a parameter was added (at a default that
    keeps the old behaviour) is the same set, not a conflict."""
    try:
        return check(fetch(name)) == checked
    except ValueError:  # not stored yet, or stored as something else (an NWB placeholder)
        return False


def check_nwb_features(catalog: Catalog, nwb_file_name: str) -> list[dict]:
    """Check the waveform features the NWB file holds against what the catalog
    recorded when the file was registered (spike counts, finite features, spikes in
    time order); one row per electrode group.

    A group without spikes is kept, recorded with 0 spikes (it adds nothing to a
    decode), and its row's message says so; a decode whose features group has no
    spikes at all is refused (``decode``). Anything else is an error naming the group."""
    recorded = catalog.waveform_features(nwb_file_name).query("source == 'nwb'")
    if recorded.empty:
        return []
    nwb_path = catalog.fetch_session(nwb_file_name)["nwb_path"]
    features = read_waveform_features(nwb_path, list(recorded["electrode_group_name"]))
    rows = []
    for n_spikes, f in zip(recorded["n_spikes"], features):
        where = f"Session {nwb_file_name}: electrode group {f.electrode_group_name}"
        _check_nwb_group(f, int(n_spikes), where)
        rows.append({
            "electrode_group_name": f.electrode_group_name, "features_param_name": f.features_param_name,
            "source": "nwb", "status": "from NWB file" if f.times.size else "no spikes", "n_spikes": int(f.times.size),
            "n_channels": int(f.features.shape[1]), "median_peak_uv": median_peak_uv(f.features),
            "message": None if f.times.size else
            f"{where} has no spikes in the NWB file; it is kept with 0 spikes and adds nothing to a decode.",
        })  # fmt: skip
    return rows


def _check_nwb_group(features: WaveformFeatures, n_spikes: int, where: str) -> None:
    if features.times.size != n_spikes:
        raise CatalogError(f"{where}: the NWB file holds {features.times.size} spikes, {n_spikes} when it was "
                           "registered. Register the changed file under a new name.")  # fmt: skip
    if not np.isfinite(features.features).all():
        raise CatalogError(f"{where}: the NWB file's waveform features hold NaN or infinity. Fix the file and "
                           "register it under a new name.")  # fmt: skip
    if not (np.isfinite(features.times).all() and np.all(np.diff(features.times) >= 0)):
        raise CatalogError(f"{where}: the NWB file's spike times are NaN or out of order. Fix the file and register "
                           "it under a new name.")  # fmt: skip


def extract_session_features(
    catalog: Catalog,
    nwb_file_name: str,
    features_param_name: str,
    n_workers: int | None = None,
    chunk_duration_s: float = 2.0,
    run_id: str | None = None,
) -> list[dict]:
    """Extract a named features set from the session's raw recording, for every
    electrode group recorded raw whose features the NWB file does not already hold;
    one file per group, all registered in one transaction.

    Returns one row per electrode group: what was done and, when something was unusual
    (no raw recording, every channel bad, no spikes), a message saying so.
    """
    started = clock.perf_counter()
    session = catalog.fetch_session(nwb_file_name)
    params = catalog.fetch_features_params(features_param_name)
    if "raw_series_name" not in params:  # a set known only from NWB files
        return [{"electrode_group_name": None, "status": "skipped",
                 "message": f"{features_param_name!r} has no extraction parameters; its features come from NWB files."}]  # fmt: skip
    from_nwb = set(
        catalog.waveform_features(nwb_file_name).query("source == 'nwb' and features_param_name == @features_param_name")[
            "electrode_group_name"
        ]
    )
    report, rows = [], []
    with contextlib.ExitStack() as stack:
        try:
            recording = stack.enter_context(open_raw_recording(session["nwb_path"], params["raw_series_name"]))
        except NoRawRecordingError:
            return [{"electrode_group_name": None, "status": "skipped",
                     "message": f"Session {nwb_file_name} has no raw ElectricalSeries; nothing to extract."}]  # fmt: skip
        groups = sorted(set(np.asarray(recording.group_names).astype(str)))
        for group in sorted(from_nwb & set(groups)):
            report.append({"electrode_group_name": group, "status": "from NWB file",
                           "message": f"The NWB file holds {features_param_name!r} features for {group}; they are used."})  # fmt: skip
        todo = [g for g in groups if g not in from_nwb]
        try:
            extracted = extract_waveform_features(
                recording, params, todo, chunk_duration_s=chunk_duration_s, n_workers=n_workers
            )
        except ValueError as error:
            raise CatalogError(f"Session {nwb_file_name}, waveform features {features_param_name!r}: {error}") from None
    seconds = clock.perf_counter() - started
    kept = [f for f in extracted if f.electrode_ids]
    paths = [catalog.features_output_path(nwb_file_name, f.electrode_group_name, features_param_name, run_id=run_id)
             for f in kept]  # fmt: skip
    with catalog.writing(paths, run_id=run_id):
        _save_extracted(catalog, nwb_file_name, features_param_name, params, recording.name, extracted,
                        dict(zip((f.electrode_group_name for f in kept), paths)), seconds, report, rows)  # fmt: skip
        catalog.register_extracted_features(nwb_file_name, features_param_name, rows)
    return report


def _save_extracted(catalog, nwb_file_name, features_param_name, params, series, extracted, paths, seconds, report, rows):
    for features in extracted:
        row = {"electrode_group_name": features.electrode_group_name, "n_spikes": int(features.times.size),
               "n_channels": len(features.electrode_ids), "bad_electrode_ids": features.bad_electrode_ids,
               "message": features.message}  # fmt: skip
        if not features.electrode_ids:
            report.append({**row, "status": "skipped"})
            continue
        path = paths[features.electrode_group_name]
        attrs = {"nwb_file_name": nwb_file_name, "features_param_name": features_param_name, "params": params,
                 "raw_series_name": series, "code_version": __version__}  # fmt: skip
        save_features(features, path, attrs)
        rows.append({"electrode_group_name": features.electrode_group_name, "path": path, "raw_series_name": series,
                     "n_spikes": features.times.size, "electrode_ids": features.electrode_ids,
                     "bad_electrode_ids": features.bad_electrode_ids, "code_version": __version__,
                     "run_seconds": seconds, "content_hash": _features_version(features, params)})  # fmt: skip
        report.append({**row, "status": "extracted", "path": str(path), "median_peak_uv": median_peak_uv(features.features)})


def _features_version(features, params: dict) -> str:
    """A version of extracted features that depends on their values and parameters
    only, so extracting the same recording again keeps the version decodes recorded."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(json.dumps({"params": params, "electrode_ids": features.electrode_ids}, sort_keys=True).encode())
    digest.update(np.ascontiguousarray(features.times, dtype=np.float64).tobytes())
    digest.update(np.ascontiguousarray(features.features, dtype=np.float32).tobytes())
    return digest.hexdigest()


def read_features(nwb_path: str, sources) -> list[WaveformFeatures]:
    """Spike times and features of each electrode group of a waveform features group
    (``FeaturesSource`` rows, in order), from the NWB file or from the files extracted
    from its raw recording."""
    in_nwb_names = [s.electrode_group_name for s in sources if s.path is None]
    in_nwb = {}
    if in_nwb_names:  # a session recorded only raw has no features in its NWB file
        in_nwb = {f.electrode_group_name: f for f in read_waveform_features(nwb_path, in_nwb_names)}
    return [
        in_nwb[s.electrode_group_name]
        if s.path is None
        else WaveformFeatures(s.electrode_group_name, s.features_param_name, *load_features(s.path))
        for s in sources
    ]


def ensure_features_groups(catalog: Catalog, nwb_file_name: str, config: dict) -> dict[str, str]:
    """Create the configuration's waveform features groups for a session. An entry with
    ``source: raw`` (or ``nwb``) takes only the electrode groups whose features came
    from the raw recording (or the NWB file); a session with none is skipped. Returns
    {group name: "created" or why it was skipped}."""
    done = {}
    for name, entry in (config.get("waveform_features_groups") or {}).items():
        entry = entry or {}
        features_param_name = entry.get("features_param_name", "amplitude")
        members = entry.get("electrode_group_names")
        source = entry.get("source")
        if source is not None:
            if source not in ("raw", "nwb"):
                raise CatalogError(f"Waveform features group {name!r}: source must be 'raw' or 'nwb'; got {source!r}.")
            table = catalog.waveform_features(nwb_file_name).query("features_param_name == @features_param_name")
            matching = table["source"].str.startswith("raw") if source == "raw" else table["source"] == "nwb"
            members = [m for m in table.loc[matching, "electrode_group_name"] if members is None or m in members]
            if not members:
                done[name] = f"skipped: no {features_param_name!r} features from the {source} data"
                continue
        catalog.create_features_group(nwb_file_name, name, electrode_group_names=members, features_param_name=features_param_name)
        done[name] = "created"
    return done


def ensure_position_groups(catalog: Catalog, nwb_file_name: str, config: dict) -> list[str]:
    """Create the configuration's position groups for a session; a group's
    ``intervals`` rule ({run_epochs} by default) chooses its epochs."""
    names = []
    for name, entry in (config.get("position_groups") or {}).items():
        entry = dict(entry or {})
        rules = entry.pop("intervals")
        members = intervals_matching(catalog, nwb_file_name, rules)
        if not members:
            raise CatalogError(
                f"Position group {name!r}: no interval list of {nwb_file_name} matches {list(rules)}; its epochs are "
                f"{_describe_epochs(catalog, nwb_file_name)}. Change the group's intervals in decoding_configs.yaml."
            )
        catalog.create_position_group(nwb_file_name, name, members, **entry)
        names.append(name)
    return names


def _describe_epochs(catalog: Catalog, nwb_file_name: str) -> str:
    epochs = catalog.epochs(nwb_file_name)
    return ", ".join(f"{r.interval_list_name} ({r.epoch_kind or 'kind unknown'})" for r in epochs.itertuples()) or "none"


def intervals_matching(catalog: Catalog, nwb_file_name: str, rules) -> list[str]:
    """A session's interval list names (in time order) chosen by the first rule that
    chooses any: a glob over names, or {run_epochs}, {sleep_epochs}, {epochs}, {trials}.
    Run and sleep epochs are told apart by the NWB file's tasks table, else by the
    epoch tags' NN_rK / NN_sK."""
    lists = catalog.interval_lists(nwb_file_name)
    for rule in (rules,) if isinstance(rules, str) else rules:
        if rule in ("{run_epochs}", "{sleep_epochs}"):
            epochs = catalog.epochs(nwb_file_name)
            chosen = epochs.loc[epochs["epoch_kind"] == rule[1:].split("_")[0], "interval_list_name"].tolist()
        elif rule == "{epochs}":
            chosen = lists.loc[lists["source"] == "epoch", "interval_list_name"].tolist()
        elif rule == "{trials}":
            chosen = lists.loc[lists["source"] == "trial", "interval_list_name"].tolist()
        else:
            chosen = [n for n in lists["interval_list_name"] if fnmatch.fnmatchcase(n, rule)]
        if chosen:
            return chosen
    return []


def decoding_intervals(catalog: Catalog, nwb_file_name: str, config: DecodingConfig) -> list[str]:
    """The interval lists of a session that a decoding configuration decodes."""
    return intervals_matching(catalog, nwb_file_name, config.decoding_intervals)


def decodable_intervals(catalog: Catalog, nwb_file_name: str, config: dict) -> list[str]:
    """Every interval list of a session that some decoding configuration decodes."""
    return sorted({n for c in config["decodings"] for n in decoding_intervals(catalog, nwb_file_name, c)})


def encoding_interval_for(catalog: Catalog, nwb_file_name: str, config: DecodingConfig, decoding_interval: str) -> str:
    """The interval a configuration encodes on for a decoding interval; an interval of
    zero length, decoding or encoding, is an error before anything else is tried."""
    target = catalog.fetch_interval_list(nwb_file_name, decoding_interval)
    _check_length(nwb_file_name, decoding_interval, target)
    encoding = _encoding_interval(catalog, nwb_file_name, config, decoding_interval, target)
    _check_length(nwb_file_name, encoding, catalog.fetch_interval_list(nwb_file_name, encoding))
    return encoding


def _encoding_interval(
    catalog: Catalog, nwb_file_name: str, config: DecodingConfig, decoding_interval: str, target: np.ndarray
) -> str:
    if config.encoding_interval not in ENCODING_RULES:
        return config.encoding_interval
    if config.encoding_interval == "{nearest_run_epoch}":
        runs = catalog.epochs(nwb_file_name).query("epoch_kind == 'run'")
        if runs.empty:
            raise CatalogError(
                f"Session {nwb_file_name} has no run epoch to encode on for {decoding_interval!r}; its epochs are "
                f"{_describe_epochs(catalog, nwb_file_name)}."
            )
        middle = 0.5 * (target[0, 0] + target[-1, 1])
        distance = np.maximum(runs["start_time"] - middle, 0) + np.maximum(middle - runs["stop_time"], 0)
        return str(runs["interval_list_name"].iloc[int(np.argmin(distance.to_numpy()))])
    lists = catalog.interval_lists(nwb_file_name).query("source == 'epoch'")
    for epoch in lists["interval_list_name"]:
        times = catalog.fetch_interval_list(nwb_file_name, epoch)
        if all(((times[:, 0] <= a) & (b <= times[:, 1])).any() for a, b in target):
            return epoch
    raise CatalogError(f"No epoch of {nwb_file_name} contains interval {decoding_interval!r}; name an encoding interval.")


def selection_for(catalog: Catalog, nwb_file_name: str, decoding_interval: str, config: DecodingConfig) -> DecodingSelection:
    """The decoding selection a configuration makes for one interval of a session."""
    if decoding_interval not in decoding_intervals(catalog, nwb_file_name, config):
        raise CatalogError(
            f"Decoding {config.name!r} does not decode interval {decoding_interval!r} of {nwb_file_name} "
            f"(it decodes intervals matching {config.decoding_intervals!r} that the session has)."
        )
    return DecodingSelection(
        nwb_file_name=nwb_file_name,
        waveform_features_group_name=config.waveform_features_group_name,
        position_group_name=config.position_group_name,
        decoding_param_name=config.decoding_param_name,
        encoding_interval=encoding_interval_for(catalog, nwb_file_name, config, decoding_interval),
        decoding_interval=decoding_interval,
        estimate_decoding_params=config.estimate_decoding_params,
    )


def select(catalog: Catalog, nwb_file_name: str, decoding_interval: str, config: DecodingConfig) -> str:
    """Insert the decoding selection of a configuration for one interval; its merge_id."""
    return catalog.insert_selection(selection_for(catalog, nwb_file_name, decoding_interval, config))


# ---------------------------------------------------------------------- decoding


@dataclass(frozen=True, eq=False)
class DecodingInputs:
    """Everything a decode reads, for one selection."""

    sources: DecodeSources  # what the catalog holds for it
    position: pd.DataFrame  # the position group, upsampled; index time
    spike_times: list[np.ndarray]
    spike_waveform_features: list[np.ndarray]
    electrode_group_names: list[str]
    versions: dict[str, dict[str, str]]

    @property
    def selection(self) -> DecodingSelection:
        return self.sources.selection

    @property
    def position_variables(self) -> list[str]:
        return list(self.sources.position_variables)


def load_decoding_inputs(catalog: Catalog, merge_id: str) -> DecodingInputs:
    """One catalog read, then the files it names, each checked against the catalog
    first: a changed NWB, features or position file stops the decode, named."""
    sources = catalog.verify_decode_inputs(catalog.fetch_decode_sources(merge_id))
    selection = sources.selection
    _check_length(selection.nwb_file_name, selection.encoding_interval, sources.encoding_times)
    _check_length(selection.nwb_file_name, selection.decoding_interval, sources.decoding_times)
    features = read_features(sources.nwb_path, sources.features)
    position = upsample_position_group([load_position(p.path) for p in sources.position], sources.upsample_rate)
    versions = input_versions(sources)
    return DecodingInputs(
        sources=sources,
        position=position,
        spike_times=[f.times for f in features],
        spike_waveform_features=[f.features for f in features],
        electrode_group_names=[f.electrode_group_name for f in features],
        versions=versions,
    )


def _within(times: np.ndarray, intervals: np.ndarray) -> np.ndarray:
    inside = np.zeros(times.shape, dtype=bool)
    for start, stop in intervals:
        inside |= (times >= start) & (times <= stop)
    return inside


def decode(
    catalog: Catalog, merge_id: str, device=None, progress: bool = False, run_id: str | None = None, keep: Keep = Keep(),
    log: Callable[[str], None] | None = None,
) -> dict:
    """Run one decoding selection: fit on the encoding interval, decode each piece of
    the decoding interval, write the results (netCDF) and the fitted model, register
    both with their lineage. Returns what was recorded plus run metadata. ``keep``: what
    the results file keeps (a decoding configuration's ``keep``).

    The output paths are recorded as being written by this process (and Dagster run
    ``run_id``) and kept alive while it writes, so ``cleanup`` never takes them. With
    outputs in an object store, both files are written locally (the scratch folder),
    uploaded, and only then registered. How far the decode has got goes to ``log`` (lines,
    e.g. a Dagster run's log) if given, else to tqdm bars if ``progress``."""
    started = clock.perf_counter()
    inputs = load_decoding_inputs(catalog, merge_id)
    selection, sources = inputs.selection, inputs.sources
    where = f"session {selection.nwb_file_name}"
    if not any(times.size for times in inputs.spike_times):
        name = selection.nwb_file_name
        raise CatalogError(
            f"Session {name}: waveform features group {selection.waveform_features_group_name!r} has no spikes at all "
            f"(electrode groups: {', '.join(inputs.electrode_group_names)}); there is nothing to decode from. Decode "
            f"with a group that has spikes: cat.waveform_features({name!r}) gives each electrode group's n_spikes."
        )
    model = decoding_model(sources.decoding_params, device=device)
    model.clusterless_algorithm_params["disable_progress_bar"] = not progress
    position_time = inputs.position.index.to_numpy()
    position = inputs.position[inputs.position_variables].to_numpy()
    tracked = ~np.isnan(position).any(axis=1)
    is_training = _within(position_time, sources.encoding_times) & tracked
    if not is_training.any():
        raise CatalogError(
            f"{where}: encoding interval {selection.encoding_interval!r} has no tracked position samples in "
            f"position group {selection.position_group_name!r}."
        )
    fs = model.sampling_frequency
    # the decoding interval needs no position (replay in a sleep epoch); where the
    # position group covers it, the decoding error is measured
    pieces = [np.arange(start, stop, 1.0 / fs) for start, stop in sources.decoding_times]

    path, model_path = catalog.output_paths(selection, run_id=run_id)
    with catalog.writing([path, model_path], run_id=run_id):
        label = f"Session {selection.nwb_file_name}, interval {selection.decoding_interval!r}"
        report = None if log is None else LoggedProgress(log, label)
        return _decode_into(catalog, inputs, model, pieces, is_training, path, model_path, started, keep, report)


def _decode_into(
    catalog, inputs: DecodingInputs, model, pieces, is_training, path: Path, model_path: Path, started, keep: Keep,
    progress,
) -> dict:
    selection, sources = inputs.selection, inputs.sources
    merge_id, fs = sources.merge_id, model.sampling_frequency
    position_time = inputs.position.index.to_numpy()
    position = inputs.position[inputs.position_variables].to_numpy()
    attrs = {
        "nwb_file_name": selection.nwb_file_name,
        "decoding_interval": selection.decoding_interval,
        "encoding_interval": selection.encoding_interval,
        "merge_id": merge_id,
        "decoding_param_name": selection.decoding_param_name,
        "code_version": __version__,
    }
    # written where they go, or (outputs in an object store) locally then uploaded; the
    # upload is named like a full disk when it fails
    with _room_for(0, path, selection, merge_id), uploaded(path, model_path) as (local, local_model):
        if selection.estimate_decoding_params:
            # EM over the span of the interval, times outside its pieces treated as missing
            # (EM keeps its results in memory)
            span = np.arange(sources.decoding_times[0, 0], sources.decoding_times[-1, 1], 1.0 / fs)
            results = model.estimate_parameters(
                position_time, position, inputs.spike_times, inputs.spike_waveform_features, time=span,
                is_training=is_training, is_missing=~_within(span, sources.decoding_times), progress=progress,
            )  # fmt: skip
            label = np.full(span.size, -1)
            for k, piece in enumerate(sources.decoding_times):
                label[_within(span, piece[np.newaxis])] = k
            results = results.assign_coords(interval_labels=("time", label)).isel(time=label >= 0)
            results.attrs.update(attrs, device=model.device_)
            report = progress or (lambda stage, done, total: None)
            with _room_for(results.nbytes, path, selection, merge_id):
                report("writing", 0, 1)
                save_results(results, local, keep)
                report("writing", 1, 1)
        else:
            # each piece decoded on its own, streamed into one file; a piece too short for a
            # single bin is skipped and the labels keep every other piece's index
            model.fit(position_time, position, inputs.spike_times, inputs.spike_waveform_features, is_training=is_training)
            labels = np.concatenate([np.full(p.size, k) for k, p in enumerate(pieces)])
            # the exact causal posterior at interior bins (the smoother reads it back from a
            # temporary beside the file), plus what is kept of the posteriors uncompressed
            size = np.dtype(model._out_dtype).itemsize
            layout, interior = model.layout, model.environments.is_track_interior_.ravel()
            kept = (1 + keep.causal_posterior) * (layout.width(model.n_bins_) if keep.per_state else model.n_bins_)
            scratch = layout.interior_columns(interior).size
            bound = labels.size * (scratch * size + kept * (size if keep.max_error is None else 2))
            # the non-local detector's Local state is the likelihood at the animal's position
            where = {"position": position, "position_time": position_time} if model.needs_position else {}
            with _room_for(bound, path, selection, merge_id):
                model.predict_to_file(
                    local, inputs.spike_times, inputs.spike_waveform_features, np.concatenate(pieces),
                    interval_labels=labels, attrs=attrs, keep=keep, progress=progress, **where,
                )  # fmt: skip
        with _room_for(0, model_path, selection, merge_id):
            model.save_model(local_model)
        # measured on the local file: no read back over the network
        results = load_results(local)
        summary = summarize_results(results, inputs.position, inputs.position_variables, model)
        n_time_bins = results.sizes["time"]
        if is_url(path):
            results.close()  # its local copy goes once uploaded
    record = catalog.register_output(
        merge_id,
        path=path,
        model_path=model_path,
        code_version=__version__,
        input_versions=inputs.versions,
        n_time_bins=n_time_bins,
        run_seconds=clock.perf_counter() - started,
        device=model.device_,
        analyses=summary["analyses"],
    )
    if is_url(path):
        results = load_results(path)  # lazily, from the store
    return {**record, **summary, "results": results}


@contextlib.contextmanager
def _room_for(nbytes: int, path: Path | str, selection: DecodingSelection, merge_id: str):
    """Write ``path`` only if the disk it is written on (for a URL: the scratch folder its
    local copy is written in) has room for about ``nbytes``, and turn a full disk or a
    failed upload into an error naming the folder or URL. Checking first matters: HDF5
    left with a write that failed for want of space can crash the process when it exits."""
    where = f"Session {selection.nwb_file_name}, interval {selection.decoding_interval!r} (decode {merge_id})"
    folder = local_form(path).parent
    if is_url(path):
        place, setting = f"the scratch folder {folder}", "DECODING_ASSETS_SCRATCH"
    else:
        place, setting = f"the outputs folder {folder}", "--outputs / DECODING_ASSETS_OUTPUTS"
    what = (f"Free space there, or point {setting} at a larger disk, then decode again; `decoding-assets cleanup "
            "--yes` reclaims what the failed write left.")  # fmt: skip
    if nbytes and (free := shutil.disk_usage(folder).free) < 1.1 * nbytes + 2**20:
        raise CatalogError(
            f"{where}: {place} has {free / 2**20:.1f} MiB free and the results need about {nbytes / 2**20:.1f} MiB "
            f"(No space left on device). {what}"
        )
    try:
        yield
    except UploadError as error:
        raise CatalogError(
            f"{where}: could not upload {error.url} ({type(error.cause).__name__}: {error.cause}). Check that the "
            "outputs URL (--outputs / DECODING_ASSETS_OUTPUTS) names a bucket that exists, that the store is reachable "
            "and that the credentials (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL) may write there, "
            "then decode again. Nothing was registered; `decoding-assets cleanup --yes` reclaims what was left."
        ) from None
    except OSError as error:
        if error.errno != errno.ENOSPC and "No space left on device" not in str(error):
            raise
        raise CatalogError(f"{where}: {place} is full (No space left on device). {what}") from None


def summarize_results(results, position: pd.DataFrame, position_variables: list[str], model, rows: int = 4096) -> dict:
    """Read a (lazily opened) decode a block of rows at a time and measure:

    - ``analyses``: the analyses labs run on a decode (``decoder.analyses``), against
      the tracked position and head direction, as the catalog keeps them;
    - ``median_decoding_error_cm``: of those, the median distance between the most
      probable decoded position (of the states on the grid: the detector's non-local
      states) and the tracked one (on a track: along the track graph);
    - ``max_posterior_sum_error``: the largest |sum of a bin's posterior - 1|, of the
      posterior as computed (a file that keeps it within a bound records it; a stored
      bin sums to 1 only within the bound times its number of bins);
    - ``n_nan_inside_track``: NaN posterior values at bins inside the track.

    Works on every form a file keeps (per state or summed over states, exact or bounded).
    """
    env = model.environments
    time = results["time"].values
    # never across a pause between the position group's epochs, nor a tracking gap
    samples = position.index.to_numpy()
    tracked = np.column_stack([interpolate_by_time(samples, position[v].to_numpy(), time, GROUP_MAX_GAP_S)
                               for v in position_variables])  # fmt: skip
    heading = None  # the head direction, in the camera's plane (NaN with one LED: movement stands in)
    if "orientation" in position:
        heading = interpolate_angle(samples, position["orientation"].to_numpy(), time, GROUP_MAX_GAP_S)
    measured = analyses.summarize(analyses.analyze(results, env, tracked, heading, rows=rows), results)
    worst_sum, n_nan = _posterior_integrity(results, model, rows)
    return {
        "analyses": DecodeAnalyses(
            median_decoding_error_cm=measured.median_decoding_error_cm,
            median_ahead_behind_cm=measured.median_ahead_behind_cm,
            median_abs_ahead_behind_cm=measured.median_abs_ahead_behind_cm,
            median_hpd_area=measured.median_hpd_area,
            hpd_mass=measured.hpd_mass,
            state_fractions=tuple(measured.state_fractions.items()),
        ),
        "median_decoding_error_cm": None if np.isnan(measured.median_decoding_error_cm) else measured.median_decoding_error_cm,
        "max_posterior_sum_error": worst_sum,
        "n_nan_inside_track": n_nan,
    }


def _posterior_integrity(results, model, rows: int) -> tuple[float, int]:
    """The largest |sum of a bin's posterior - 1| (as computed, for a bounded file) and
    the NaN values at bins inside the track."""
    posterior = results["acausal_posterior"]
    per_state = "state_bins" in posterior.dims
    n_point = model.layout.n_point if per_state else 0
    n_grid = model.layout.n_grid if per_state else 1
    interior = model.environments.is_track_interior_.ravel()
    worst_sum, n_nan = 0.0, 0
    for start in range(0, results.sizes["time"], rows):
        values = np.asarray(posterior[start : start + rows].values)
        values = values.reshape(values.shape[0], -1)
        point, block = values[:, :n_point], values[:, n_point:].reshape(values.shape[0], n_grid, -1)
        worst_sum = max(worst_sum, float(np.max(np.abs(np.nansum(values, axis=1) - 1.0))))
        n_nan += int(np.isnan(block[:, :, interior]).sum() + np.isnan(point).sum())
    if Keep.of(results).max_error is not None:
        worst_sum = float(posterior.attrs["computed_max_abs_sum_error"])
    return worst_sum, n_nan

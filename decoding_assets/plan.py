"""What a decoding configuration still has to decode in a session, and decoding it:
plain functions of a ``Catalog`` that the Dagster asset, the CLI and notebooks share.

A configuration wants one decode per interval it selects in a session. Each is in one
of these states:

- ``decoded``: its output is registered, its files are intact and its inputs are the
  ones it was made from;
- ``missing``: never decoded, or its output was forgotten (e.g. by a repair);
- ``inputs changed``: the NWB file, features, position or parameters it read have
  changed since (its lineage says what it read);
- ``bad file``: its results were found missing or corrupted;
- ``deleted``: someone deleted it on purpose; it is decoded again only when asked for
  by name;
- ``cannot decode``: the interval itself is unusable (e.g. of zero length); the detail
  says why.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from catalog import Catalog, CatalogError, DecodeSources, DecodingSelection
from catalog.integrity import BAD

from . import __version__

# what a decode's lineage compares; code changes alone do not make a decode stale
COMPARED_INPUTS = ("session", "waveform_features", "position", "decoding_params")
TO_DECODE = ("missing", "inputs changed", "bad file")
NOT_WANTED = ("deleted", "cannot decode")


@dataclass(frozen=True)
class PlannedDecode:
    """One interval a configuration decodes in a session, and where it stands."""

    selection: DecodingSelection
    status: str
    detail: str = ""

    @property
    def interval(self) -> str:
        return self.selection.decoding_interval


@dataclass(frozen=True)
class SessionDecodes:
    """What one pass over a session did: the intervals decoded (their catalog records,
    with the run's measures), those left as they were, and those that failed."""

    nwb_file_name: str
    decoded: tuple[dict, ...]
    unchanged: tuple[PlannedDecode, ...]
    failed: tuple[tuple[str, str], ...]  # (interval, message)


def params_version(params: dict) -> str:
    return hashlib.blake2b(json.dumps(params, sort_keys=True).encode(), digest_size=10).hexdigest()


def input_versions(sources: DecodeSources) -> dict[str, dict[str, str]]:
    """{kind: {key: version}} of everything a decode reads: the lineage it records."""
    s = sources.selection
    return {
        "session": {s.nwb_file_name: sources.session_content_hash},
        "waveform_features": {f.electrode_group_name: f.content_hash for f in sources.features},
        "position": {f"{p.interval_list_name}/{p.trodes_pos_params_name}": p.checksum for p in sources.position},
        "decoding_params": {s.decoding_param_name: params_version(sources.decoding_params)},
        "code": {"decoding_assets": __version__},
    }


def plan_session(catalog: Catalog, nwb_file_name: str, config, check_inputs: bool = True) -> list[PlannedDecode]:
    """Every decode ``config`` (a ``pipeline.DecodingConfig``) wants in a session, in
    interval order, with its state. Empty when the session lacks the configuration's
    waveform features group or position group (not processed yet, or e.g. no raw
    recording for a ``source: raw`` group). Without ``check_inputs`` (cheaper), a
    registered decode with an intact file is ``decoded`` whatever its lineage says."""
    from .pipeline import decoding_intervals, selection_for

    try:
        catalog.fetch_features_group(nwb_file_name, config.waveform_features_group_name)
        catalog.fetch_position_group(nwb_file_name, config.position_group_name)
    except CatalogError:
        return []
    outputs = catalog.outputs(nwb_file_name).set_index("merge_id")
    deleted = catalog.deleted_selections(nwb_file_name).set_index("merge_id")
    planned = []
    for interval in decoding_intervals(catalog, nwb_file_name, config):
        try:
            selection = selection_for(catalog, nwb_file_name, interval, config)
        except CatalogError as error:  # one unusable interval never hides the others
            planned.append(PlannedDecode(_unselectable(nwb_file_name, interval, config), "cannot decode", str(error)))
            continue
        merge_id = selection.merge_id
        if merge_id in outputs.index:
            planned.append(_state_of(catalog, selection, outputs.loc[merge_id], check_inputs))
        elif merge_id in deleted.index:
            row = deleted.loc[merge_id]
            planned.append(
                PlannedDecode(selection, "deleted", f"deleted by {row['deleted_by']} at {row['deleted_at']}")
            )
        else:
            planned.append(PlannedDecode(selection, "missing"))
    return planned


def _unselectable(nwb_file_name: str, interval: str, config) -> DecodingSelection:
    """A stand-in selection naming an interval no selection can be made for."""
    return DecodingSelection(
        nwb_file_name=nwb_file_name,
        waveform_features_group_name=config.waveform_features_group_name,
        position_group_name=config.position_group_name,
        decoding_param_name=config.decoding_param_name,
        encoding_interval="",
        decoding_interval=interval,
        estimate_decoding_params=config.estimate_decoding_params,
    )


def _state_of(catalog: Catalog, selection: DecodingSelection, output, check_inputs: bool) -> PlannedDecode:
    if output["file_status"] in BAD:
        return PlannedDecode(selection, "bad file", f"its results file is {output['file_status']}")
    if not check_inputs:
        return PlannedDecode(selection, "decoded")
    recorded = catalog.lineage(selection.merge_id)
    recorded = {(r.input_kind, r.input_key): r.input_version for r in recorded.itertuples()}
    try:
        current = input_versions(catalog.fetch_decode_sources(selection.merge_id))
    except CatalogError as error:
        return PlannedDecode(selection, "inputs changed", str(error))
    changed = sorted(
        f"{kind} {key}"
        for kind in COMPARED_INPUTS
        for key in set(current[kind]) | {k for (c, k) in recorded if c == kind}
        if current[kind].get(key) != recorded.get((kind, key))
    )
    if changed:
        return PlannedDecode(selection, "inputs changed", "changed since: " + ", ".join(changed))
    return PlannedDecode(selection, "decoded")


def choose(
    planned: list[PlannedDecode], intervals: list[str] | None = None, redecode: bool = False
) -> list[PlannedDecode]:
    """The decodes to run: those named in ``intervals`` (whatever their state, deleted
    ones included); else every one that needs it (every one not deleted, with
    ``redecode``)."""
    if intervals:
        by_interval = {p.interval: p for p in planned}
        unknown = [i for i in intervals if i not in by_interval]
        if unknown:
            raise CatalogError(
                f"This decoding does not decode interval(s) {', '.join(map(repr, unknown))} of "
                f"{planned[0].selection.nwb_file_name if planned else 'this session'}; it decodes "
                f"{', '.join(by_interval) or 'none of its intervals'}."
            )
        unusable = [f"{p.interval}: {p.detail}" for i in intervals if (p := by_interval[i]).status == "cannot decode"]
        if unusable:
            raise CatalogError("Cannot decode " + "; ".join(unusable))
        return [by_interval[i] for i in intervals]
    if redecode:
        return [p for p in planned if p.status not in NOT_WANTED]
    return [p for p in planned if p.status in TO_DECODE]


def decode_session(
    catalog: Catalog,
    nwb_file_name: str,
    config,
    *,
    intervals: list[str] | None = None,
    redecode: bool = False,
    device=None,
    run_id: str | None = None,
    log=None,
) -> SessionDecodes:
    """Decode what ``config`` wants in a session and does not have (see ``choose``).

    An interval that fails does not stop the others: its error is returned in
    ``failed``. ``log(line)``, if given, hears how far each decode has got."""
    from .pipeline import decode

    with catalog.held():
        planned = plan_session(catalog, nwb_file_name, config)
        if not planned:
            raise CatalogError(nothing_to_decode(catalog, nwb_file_name, config))
    todo = choose(planned, intervals, redecode)
    decoded, failed = [], []
    for item in todo:
        try:
            merge_id = catalog.insert_selection(item.selection)
            record = decode(catalog, merge_id, device=device, run_id=run_id, keep=config.keep, log=log)
        except Exception as error:  # one interval's failure is reported, the others go on
            failed.append((item.interval, _one_line(error)))
            continue
        record["results"].close()
        kept = {k: v for k, v in record.items() if k != "results"}
        decoded.append({**kept, "decoding_interval": item.interval})
    chosen = {p.interval for p in todo}
    return SessionDecodes(
        nwb_file_name=nwb_file_name,
        decoded=tuple(decoded),
        unchanged=tuple(p for p in planned if p.interval not in chosen),
        failed=tuple(failed),
    )


def nothing_to_decode(catalog: Catalog, nwb_file_name: str, config) -> str:
    """Why a configuration has nothing to decode in a session, and what to do."""
    from .pipeline import decoding_intervals

    where = f"Decoding {config.name!r}, session {nwb_file_name}"
    if nwb_file_name not in set(catalog.sessions()["nwb_file_name"]):
        return (
            f"{where}: no such session in the catalog ({catalog.location}); register its NWB file, or check the name."
        )
    for fetch, name, kind in (
        (catalog.fetch_features_group, config.waveform_features_group_name, "waveform features group"),
        (catalog.fetch_position_group, config.position_group_name, "position group"),
    ):
        try:
            fetch(nwb_file_name, name)
        except CatalogError:
            return f"{where}: the session has no {kind} {name!r}; process the session first (process_sessions)."
    if not decoding_intervals(catalog, nwb_file_name, config):
        return f"{where}: no interval list of the session matches {list(config.decoding_intervals)}."
    return f"{where}: nothing to decode."


def _one_line(error: BaseException) -> str:
    message = " ".join(str(error).split()) or "(no message)"
    return message if isinstance(error, CatalogError) else f"{type(error).__name__}: {message}"

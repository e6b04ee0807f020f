"""A decoding selection: what to decode, as a value with a stable id."""

from __future__ import annotations

import dataclasses
import json
import uuid
from dataclasses import dataclass

_MERGE_NAMESPACE = uuid.UUID("6f1d2c1e-3b7a-4d53-9a55-0c2b8f1e7d41")


@dataclass(frozen=True)
class DecodingSelection:
    """One decode: a session's waveform features group and position group, a decoding
    parameter set, the interval to fit on and the interval to decode. The same seven
    fields always give the same ``merge_id``, in every catalog."""

    nwb_file_name: str
    waveform_features_group_name: str
    position_group_name: str
    decoding_param_name: str
    encoding_interval: str
    decoding_interval: str
    estimate_decoding_params: bool = False

    def __post_init__(self):
        object.__setattr__(self, "estimate_decoding_params", bool(self.estimate_decoding_params))

    @property
    def merge_id(self) -> str:
        return str(uuid.uuid5(_MERGE_NAMESPACE, json.dumps(dataclasses.asdict(self), sort_keys=True)))

    @classmethod
    def from_row(cls, row: dict) -> "DecodingSelection":
        return cls(**{f: row[f] for f in SELECTION_FIELDS})


SELECTION_FIELDS = tuple(f.name for f in dataclasses.fields(DecodingSelection))

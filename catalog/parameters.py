"""Named parameter sets: how features are extracted, how position is processed, how
a decode is configured. A name, once stored, always means the same parameters."""

from __future__ import annotations

import json

import pandas as pd

from .connection import Database
from .errors import CatalogError, check_name
from .sessions import NWB_FEATURES_PARAMS

# each kind of parameter set: its table and its name column (constants, never user input)
_KINDS = {
    "waveform_features_params": "features_param_name",
    "position_params": "trodes_pos_params_name",
    "decoding_params": "decoding_param_name",
}


class ParameterStore:
    def __init__(self, db: Database, user: str):
        self.db, self.user = db, user

    def insert_features_params(self, features_param_name: str, params: dict) -> None:
        """Store how a named set of features is extracted from raw recordings. A name
        first seen on features found in an NWB file gets these parameters; the file's
        own features stay in use for its groups."""
        self._insert("waveform_features_params", features_param_name, params, replaceable=NWB_FEATURES_PARAMS)

    def fetch_features_params(self, features_param_name: str) -> dict:
        return self._fetch("waveform_features_params", features_param_name)

    def insert_position_params(self, trodes_pos_params_name: str, params: dict) -> None:
        self._insert("position_params", trodes_pos_params_name, params)

    def fetch_position_params(self, trodes_pos_params_name: str) -> dict:
        return self._fetch("position_params", trodes_pos_params_name)

    def insert_decoding_params(self, decoding_param_name: str, params: dict) -> None:
        """Store a named model configuration, as given: ``decoding_assets`` stores the
        complete one (``store_decoding_params``), so a name never depends on defaults."""
        self._insert("decoding_params", decoding_param_name, params)

    def fetch_decoding_params(self, decoding_param_name: str) -> dict:
        return self._fetch("decoding_params", decoding_param_name)

    def decoding_params(self) -> pd.DataFrame:
        return self.db.query("SELECT * FROM decoding_params ORDER BY decoding_param_name")

    def parameter_set_names(self) -> dict[str, list[str]]:
        """The names of every stored parameter set, by kind (``waveform_features_params``,
        ``position_params``, ``decoding_params``), whoever stored them."""
        with self.db.connect():
            return {
                table: [n for (n,) in self.db.rows(f"SELECT {key} FROM {table} ORDER BY 1")]
                for table, key in _KINDS.items()
            }

    def _insert(self, table: str, name: str, params: dict, replaceable: dict | None = None) -> None:
        """Store named parameters; the same again is a no-op, others under the name an
        error, unless what is stored equals ``replaceable`` (a placeholder)."""
        key = _KINDS[table]
        check_name(key, name)
        text = json.dumps(params, sort_keys=True)

        def write(con):
            select = f"SELECT params FROM {table} WHERE {key} = ?"
            existing = con.execute(select, [name]).fetchone()
            if existing is not None and replaceable is not None and json.loads(existing[0]) == replaceable:
                con.execute(f"UPDATE {table} SET params = ?, created_by = ? WHERE {key} = ?", [text, self.user, name])
                return
            if existing is None:
                # another process may store the name between the read and this insert:
                # then its parameters are what the name means, and they are compared below
                con.execute(
                    f"INSERT INTO {table} ({key}, params, created_at, created_by) VALUES (?, ?, current_timestamp, ?) "
                    "ON CONFLICT DO NOTHING",
                    [name, text, self.user],
                )
                existing = con.execute(select, [name]).fetchone()
            stored, given = json.loads(existing[0]), json.loads(text)
            if stored != given:
                differ = {k: (stored.get(k), given.get(k)) for k in sorted(set(stored) | set(given))
                          if stored.get(k) != given.get(k)}  # fmt: skip
                raise CatalogError(
                    f"{key} {name!r} already exists with other parameters (stored vs given: "
                    + ", ".join(f"{k}: {a!r} vs {b!r}" for k, (a, b) in differ.items())
                    + "); choose a new name, or give the stored values to keep using it."
                )

        self.db.write(write)

    def _fetch(self, table: str, name: str) -> dict:
        key = _KINDS[table]
        value = self.db.scalar(f"SELECT params FROM {table} WHERE {key} = ?", [name])
        if value is None:
            known = [r[0] for r in self.db.rows(f"SELECT {key} FROM {table} ORDER BY 1")]
            raise CatalogError(f"Unknown {key} {name!r}; known: {known or 'none'}.")
        return json.loads(value)

"""The catalog's tables, in one place. DuckDB runs the same statements on a DuckDB
file and on a PostgreSQL server (its postgres extension creates the tables there, with
their keys and checks), so both backends hold the same schema.

Keys are the natural names users already use (``nwb_file_name``,
``interval_list_name``, ...). Every file the catalog hands out a path for is recorded
in ``written_files`` before it is written, with who writes it (``state`` 'writing',
host, pid, heartbeat), so ``cleanup`` can tell its own orphans from anyone else's files
and from files still being written; registering a file marks it 'registered', replacing
or deleting its output marks it 'orphaned'. Every registered file keeps its identity
(size, st_mtime_ns, checksum), so what is read back can be verified.
``created_by`` (``user@host``) says who wrote a row; NULL in rows written before it
was recorded. Tables are listed parents first.

Parameters and versions are JSON text in VARCHAR columns, and inserts give every
column a value rather than lean on a default: DuckDB reads a server's tables as the
server describes them, and a server's json columns and defaults do not survive that
trip intact.
"""

SCHEMA_VERSION = 4

TABLES = [
    """
    CREATE TABLE IF NOT EXISTS catalog_info (
        key VARCHAR PRIMARY KEY,
        value VARCHAR NOT NULL
    )""",
    """
    CREATE TABLE IF NOT EXISTS sessions (
        nwb_file_name VARCHAR PRIMARY KEY,
        nwb_path VARCHAR NOT NULL,
        content_hash VARCHAR NOT NULL,
        subject_id VARCHAR,
        session_description VARCHAR,
        session_start_time VARCHAR,
        registered_at TIMESTAMPTZ NOT NULL DEFAULT current_timestamp,
        created_by VARCHAR,
        size_bytes BIGINT,
        modified_ns BIGINT
    )""",
    """
    CREATE TABLE IF NOT EXISTS interval_lists (
        nwb_file_name VARCHAR NOT NULL REFERENCES sessions (nwb_file_name),
        interval_list_name VARCHAR NOT NULL,
        valid_times DOUBLE[][] NOT NULL,
        source VARCHAR NOT NULL,
        PRIMARY KEY (nwb_file_name, interval_list_name)
    )""",
    # what each epoch was: the task (from the NWB file's tasks table) and whether it is a
    # run or a sleep epoch (from the task, else the tag's NN_rK / NN_sK; NULL: unknown)
    """
    CREATE TABLE IF NOT EXISTS task_epochs (
        nwb_file_name VARCHAR NOT NULL,
        interval_list_name VARCHAR NOT NULL,
        epoch INTEGER,
        task_name VARCHAR,
        task_environment VARCHAR,
        camera_id INTEGER,
        epoch_kind VARCHAR CHECK (epoch_kind IN ('run', 'sleep')),
        PRIMARY KEY (nwb_file_name, interval_list_name),
        FOREIGN KEY (nwb_file_name, interval_list_name) REFERENCES interval_lists (nwb_file_name, interval_list_name)
    )""",
    """
    CREATE TABLE IF NOT EXISTS electrode_groups (
        nwb_file_name VARCHAR NOT NULL REFERENCES sessions (nwb_file_name),
        electrode_group_name VARCHAR NOT NULL,
        n_channels INTEGER NOT NULL,
        location VARCHAR,
        PRIMARY KEY (nwb_file_name, electrode_group_name)
    )""",
    """
    CREATE TABLE IF NOT EXISTS waveform_features_params (
        features_param_name VARCHAR PRIMARY KEY,
        params VARCHAR NOT NULL,
        created_at TIMESTAMPTZ DEFAULT current_timestamp,
        created_by VARCHAR
    )""",
    """
    CREATE TABLE IF NOT EXISTS waveform_features (
        nwb_file_name VARCHAR NOT NULL,
        electrode_group_name VARCHAR NOT NULL,
        features_param_name VARCHAR NOT NULL REFERENCES waveform_features_params (features_param_name),
        n_spikes BIGINT NOT NULL,
        n_features INTEGER NOT NULL,
        source VARCHAR NOT NULL,
        content_hash VARCHAR NOT NULL,
        PRIMARY KEY (nwb_file_name, electrode_group_name, features_param_name),
        FOREIGN KEY (nwb_file_name, electrode_group_name) REFERENCES electrode_groups (nwb_file_name, electrode_group_name)
    )""",
    # features extracted from a raw ElectricalSeries: the file and where it came from
    """
    CREATE TABLE IF NOT EXISTS waveform_features_files (
        nwb_file_name VARCHAR NOT NULL,
        electrode_group_name VARCHAR NOT NULL,
        features_param_name VARCHAR NOT NULL,
        path VARCHAR NOT NULL,
        raw_series_name VARCHAR NOT NULL,
        electrode_ids BIGINT[] NOT NULL,
        bad_electrode_ids BIGINT[] NOT NULL,
        params VARCHAR NOT NULL,
        code_version VARCHAR NOT NULL,
        run_seconds DOUBLE NOT NULL,
        created_at TIMESTAMPTZ NOT NULL DEFAULT current_timestamp,
        created_by VARCHAR,
        size_bytes BIGINT,
        modified_ns BIGINT,
        checksum VARCHAR,
        PRIMARY KEY (nwb_file_name, electrode_group_name, features_param_name),
        FOREIGN KEY (nwb_file_name, electrode_group_name, features_param_name)
            REFERENCES waveform_features (nwb_file_name, electrode_group_name, features_param_name)
    )""",
    """
    CREATE TABLE IF NOT EXISTS waveform_features_groups (
        nwb_file_name VARCHAR NOT NULL REFERENCES sessions (nwb_file_name),
        waveform_features_group_name VARCHAR NOT NULL,
        created_at TIMESTAMPTZ NOT NULL DEFAULT current_timestamp,
        created_by VARCHAR,
        PRIMARY KEY (nwb_file_name, waveform_features_group_name)
    )""",
    """
    CREATE TABLE IF NOT EXISTS waveform_features_group_members (
        nwb_file_name VARCHAR NOT NULL,
        waveform_features_group_name VARCHAR NOT NULL,
        electrode_group_name VARCHAR NOT NULL,
        features_param_name VARCHAR NOT NULL,
        PRIMARY KEY (nwb_file_name, waveform_features_group_name, electrode_group_name),
        FOREIGN KEY (nwb_file_name, electrode_group_name, features_param_name)
            REFERENCES waveform_features (nwb_file_name, electrode_group_name, features_param_name)
    )""",
    """
    CREATE TABLE IF NOT EXISTS position_params (
        trodes_pos_params_name VARCHAR PRIMARY KEY,
        params VARCHAR NOT NULL,
        created_at TIMESTAMPTZ DEFAULT current_timestamp,
        created_by VARCHAR
    )""",
    """
    CREATE TABLE IF NOT EXISTS position_outputs (
        nwb_file_name VARCHAR NOT NULL,
        interval_list_name VARCHAR NOT NULL,
        trodes_pos_params_name VARCHAR NOT NULL REFERENCES position_params (trodes_pos_params_name),
        path VARCHAR NOT NULL,
        n_samples BIGINT NOT NULL,
        checksum VARCHAR NOT NULL,
        created_at TIMESTAMPTZ NOT NULL DEFAULT current_timestamp,
        created_by VARCHAR,
        size_bytes BIGINT,
        modified_ns BIGINT,
        PRIMARY KEY (nwb_file_name, interval_list_name, trodes_pos_params_name),
        FOREIGN KEY (nwb_file_name, interval_list_name) REFERENCES interval_lists (nwb_file_name, interval_list_name)
    )""",
    """
    CREATE TABLE IF NOT EXISTS position_groups (
        nwb_file_name VARCHAR NOT NULL REFERENCES sessions (nwb_file_name),
        position_group_name VARCHAR NOT NULL,
        upsample_rate DOUBLE NOT NULL,
        position_variables VARCHAR[] NOT NULL,
        created_at TIMESTAMPTZ NOT NULL DEFAULT current_timestamp,
        created_by VARCHAR,
        PRIMARY KEY (nwb_file_name, position_group_name)
    )""",
    """
    CREATE TABLE IF NOT EXISTS position_group_members (
        nwb_file_name VARCHAR NOT NULL,
        position_group_name VARCHAR NOT NULL,
        interval_list_name VARCHAR NOT NULL,
        trodes_pos_params_name VARCHAR NOT NULL,
        PRIMARY KEY (nwb_file_name, position_group_name, interval_list_name, trodes_pos_params_name),
        FOREIGN KEY (nwb_file_name, interval_list_name, trodes_pos_params_name)
            REFERENCES position_outputs (nwb_file_name, interval_list_name, trodes_pos_params_name)
    )""",
    """
    CREATE TABLE IF NOT EXISTS decoding_params (
        decoding_param_name VARCHAR PRIMARY KEY,
        params VARCHAR NOT NULL,
        created_at TIMESTAMPTZ NOT NULL DEFAULT current_timestamp,
        created_by VARCHAR
    )""",
    """
    CREATE TABLE IF NOT EXISTS decoding_selections (
        nwb_file_name VARCHAR NOT NULL,
        waveform_features_group_name VARCHAR NOT NULL,
        position_group_name VARCHAR NOT NULL,
        decoding_param_name VARCHAR NOT NULL REFERENCES decoding_params (decoding_param_name),
        encoding_interval VARCHAR NOT NULL,
        decoding_interval VARCHAR NOT NULL,
        estimate_decoding_params BOOLEAN NOT NULL,
        merge_id VARCHAR NOT NULL UNIQUE,
        created_by VARCHAR,
        PRIMARY KEY (nwb_file_name, waveform_features_group_name, position_group_name, decoding_param_name,
                     encoding_interval, decoding_interval, estimate_decoding_params),
        FOREIGN KEY (nwb_file_name, waveform_features_group_name)
            REFERENCES waveform_features_groups (nwb_file_name, waveform_features_group_name),
        FOREIGN KEY (nwb_file_name, position_group_name) REFERENCES position_groups (nwb_file_name, position_group_name),
        FOREIGN KEY (nwb_file_name, encoding_interval) REFERENCES interval_lists (nwb_file_name, interval_list_name),
        FOREIGN KEY (nwb_file_name, decoding_interval) REFERENCES interval_lists (nwb_file_name, interval_list_name)
    )""",
    """
    CREATE TABLE IF NOT EXISTS decoding_outputs (
        merge_id VARCHAR PRIMARY KEY REFERENCES decoding_selections (merge_id),
        path VARCHAR NOT NULL,
        model_path VARCHAR NOT NULL,
        size_bytes BIGINT NOT NULL,
        checksum VARCHAR NOT NULL,
        created_at TIMESTAMPTZ NOT NULL DEFAULT current_timestamp,
        code_version VARCHAR NOT NULL,
        input_versions VARCHAR NOT NULL,
        n_time_bins BIGINT NOT NULL,
        run_seconds DOUBLE NOT NULL,
        device VARCHAR NOT NULL,
        median_decoding_error_cm DOUBLE,
        created_by VARCHAR,
        modified_ns BIGINT,
        model_size_bytes BIGINT,
        model_modified_ns BIGINT,
        model_checksum VARCHAR,
        file_status VARCHAR,
        checked_at TIMESTAMPTZ
    )""",
    # a decoding output's summary: the medians of the analyses over its time bins
    # (decoder.analyses), and the fraction of time it spends in each of its model's
    # states (the mean of the state's acausal probability), one row per state
    """
    CREATE TABLE IF NOT EXISTS decoding_summaries (
        merge_id VARCHAR PRIMARY KEY REFERENCES decoding_selections (merge_id),
        median_decoding_error_cm DOUBLE,
        median_ahead_behind_cm DOUBLE,
        median_abs_ahead_behind_cm DOUBLE,
        median_hpd_area DOUBLE,
        hpd_mass DOUBLE
    )""",
    """
    CREATE TABLE IF NOT EXISTS decoding_state_fractions (
        merge_id VARCHAR NOT NULL REFERENCES decoding_selections (merge_id),
        state VARCHAR NOT NULL,
        fraction DOUBLE,
        PRIMARY KEY (merge_id, state)
    )""",
    # a decoding output a user deleted: automation does not decode its selection again by
    # itself; registering an output of the selection (an explicit decode) clears it
    """
    CREATE TABLE IF NOT EXISTS deleted_selections (
        merge_id VARCHAR PRIMARY KEY REFERENCES decoding_selections (merge_id),
        deleted_by VARCHAR,
        deleted_at TIMESTAMPTZ NOT NULL
    )""",
    """
    CREATE TABLE IF NOT EXISTS lineage (
        merge_id VARCHAR NOT NULL,
        input_kind VARCHAR NOT NULL,
        input_key VARCHAR NOT NULL,
        input_version VARCHAR NOT NULL,
        PRIMARY KEY (merge_id, input_kind, input_key)
    )""",
    """
    CREATE TABLE IF NOT EXISTS written_files (
        path VARCHAR PRIMARY KEY,
        kind VARCHAR NOT NULL,
        written_at TIMESTAMPTZ NOT NULL DEFAULT current_timestamp,
        created_by VARCHAR,
        state VARCHAR,
        host VARCHAR,
        pid BIGINT,
        process_start VARCHAR,
        run_id VARCHAR,
        heartbeat_at TIMESTAMPTZ
    )""",
]

TABLE_NAMES = [ddl.split("CREATE TABLE IF NOT EXISTS ")[1].split()[0] for ddl in TABLES]

# what each version adds to a catalog made by the one before
UPGRADES = {
    2: [
        "ALTER TABLE waveform_features_params ADD COLUMN IF NOT EXISTS created_at TIMESTAMPTZ",
        "ALTER TABLE position_params ADD COLUMN IF NOT EXISTS created_at TIMESTAMPTZ",
        *(
            f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS created_by VARCHAR"
            for table in (
                "sessions", "waveform_features_params", "waveform_features_files", "waveform_features_groups",
                "position_params", "position_outputs", "position_groups", "decoding_params", "decoding_selections",
                "decoding_outputs", "written_files",
            )
        ),
    ],
    # file identities start unknown: the first verification hashes the file and records
    # them (a file missing or unlike its stored checksum is reported, never recorded);
    # a decoding output is 'unchecked' until then. Every written file that an output
    # references is registered, any other is an orphan for cleanup (which still spares
    # it for min_age_s, as before).
    3: [
        *(
            f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {column} {kind}"
            for table, column, kind in (
                ("sessions", "size_bytes", "BIGINT"), ("sessions", "modified_ns", "BIGINT"),
                ("waveform_features_files", "size_bytes", "BIGINT"),
                ("waveform_features_files", "modified_ns", "BIGINT"),
                ("waveform_features_files", "checksum", "VARCHAR"),
                ("position_outputs", "size_bytes", "BIGINT"), ("position_outputs", "modified_ns", "BIGINT"),
                ("decoding_outputs", "modified_ns", "BIGINT"), ("decoding_outputs", "model_size_bytes", "BIGINT"),
                ("decoding_outputs", "model_modified_ns", "BIGINT"), ("decoding_outputs", "model_checksum", "VARCHAR"),
                ("decoding_outputs", "file_status", "VARCHAR"), ("decoding_outputs", "checked_at", "TIMESTAMPTZ"),
                ("written_files", "state", "VARCHAR"), ("written_files", "host", "VARCHAR"),
                ("written_files", "pid", "BIGINT"), ("written_files", "process_start", "VARCHAR"),
                ("written_files", "run_id", "VARCHAR"), ("written_files", "heartbeat_at", "TIMESTAMPTZ"),
            )
        ),
        "UPDATE decoding_outputs SET file_status = 'unchecked' WHERE file_status IS NULL",
        "UPDATE written_files SET heartbeat_at = written_at, state = CASE WHEN path IN ("
        "SELECT path FROM decoding_outputs UNION ALL SELECT model_path FROM decoding_outputs "
        "UNION ALL SELECT path FROM position_outputs UNION ALL SELECT path FROM waveform_features_files"
        ") THEN 'registered' ELSE 'orphaned' END WHERE state IS NULL",
    ],
    # decoding_summaries and decoding_state_fractions, created with the tables; outputs
    # from before have no summary until decoded again
    4: [],
}  # fmt: skip

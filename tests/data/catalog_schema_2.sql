-- The catalog's tables as schema version 2 created them (catalog/schema.py before version 3),
-- for the test that upgrades a schema-2 catalog. One statement per block, each ending with a semicolon.

CREATE TABLE IF NOT EXISTS catalog_info (
    key VARCHAR PRIMARY KEY,
    value VARCHAR NOT NULL
);

CREATE TABLE IF NOT EXISTS sessions (
    nwb_file_name VARCHAR PRIMARY KEY,
    nwb_path VARCHAR NOT NULL,
    content_hash VARCHAR NOT NULL,
    subject_id VARCHAR,
    session_description VARCHAR,
    session_start_time VARCHAR,
    registered_at TIMESTAMPTZ NOT NULL DEFAULT current_timestamp,
    created_by VARCHAR
);

CREATE TABLE IF NOT EXISTS interval_lists (
    nwb_file_name VARCHAR NOT NULL REFERENCES sessions (nwb_file_name),
    interval_list_name VARCHAR NOT NULL,
    valid_times DOUBLE[][] NOT NULL,
    source VARCHAR NOT NULL,
    PRIMARY KEY (nwb_file_name, interval_list_name)
);

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
);

CREATE TABLE IF NOT EXISTS electrode_groups (
    nwb_file_name VARCHAR NOT NULL REFERENCES sessions (nwb_file_name),
    electrode_group_name VARCHAR NOT NULL,
    n_channels INTEGER NOT NULL,
    location VARCHAR,
    PRIMARY KEY (nwb_file_name, electrode_group_name)
);

CREATE TABLE IF NOT EXISTS waveform_features_params (
    features_param_name VARCHAR PRIMARY KEY,
    params VARCHAR NOT NULL,
    created_at TIMESTAMPTZ DEFAULT current_timestamp,
    created_by VARCHAR
);

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
);

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
    PRIMARY KEY (nwb_file_name, electrode_group_name, features_param_name),
    FOREIGN KEY (nwb_file_name, electrode_group_name, features_param_name)
        REFERENCES waveform_features (nwb_file_name, electrode_group_name, features_param_name)
);

CREATE TABLE IF NOT EXISTS waveform_features_groups (
    nwb_file_name VARCHAR NOT NULL REFERENCES sessions (nwb_file_name),
    waveform_features_group_name VARCHAR NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT current_timestamp,
    created_by VARCHAR,
    PRIMARY KEY (nwb_file_name, waveform_features_group_name)
);

CREATE TABLE IF NOT EXISTS waveform_features_group_members (
    nwb_file_name VARCHAR NOT NULL,
    waveform_features_group_name VARCHAR NOT NULL,
    electrode_group_name VARCHAR NOT NULL,
    features_param_name VARCHAR NOT NULL,
    PRIMARY KEY (nwb_file_name, waveform_features_group_name, electrode_group_name),
    FOREIGN KEY (nwb_file_name, electrode_group_name, features_param_name)
        REFERENCES waveform_features (nwb_file_name, electrode_group_name, features_param_name)
);

CREATE TABLE IF NOT EXISTS position_params (
    trodes_pos_params_name VARCHAR PRIMARY KEY,
    params VARCHAR NOT NULL,
    created_at TIMESTAMPTZ DEFAULT current_timestamp,
    created_by VARCHAR
);

CREATE TABLE IF NOT EXISTS position_outputs (
    nwb_file_name VARCHAR NOT NULL,
    interval_list_name VARCHAR NOT NULL,
    trodes_pos_params_name VARCHAR NOT NULL REFERENCES position_params (trodes_pos_params_name),
    path VARCHAR NOT NULL,
    n_samples BIGINT NOT NULL,
    checksum VARCHAR NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT current_timestamp,
    created_by VARCHAR,
    PRIMARY KEY (nwb_file_name, interval_list_name, trodes_pos_params_name),
    FOREIGN KEY (nwb_file_name, interval_list_name) REFERENCES interval_lists (nwb_file_name, interval_list_name)
);

CREATE TABLE IF NOT EXISTS position_groups (
    nwb_file_name VARCHAR NOT NULL REFERENCES sessions (nwb_file_name),
    position_group_name VARCHAR NOT NULL,
    upsample_rate DOUBLE NOT NULL,
    position_variables VARCHAR[] NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT current_timestamp,
    created_by VARCHAR,
    PRIMARY KEY (nwb_file_name, position_group_name)
);

CREATE TABLE IF NOT EXISTS position_group_members (
    nwb_file_name VARCHAR NOT NULL,
    position_group_name VARCHAR NOT NULL,
    interval_list_name VARCHAR NOT NULL,
    trodes_pos_params_name VARCHAR NOT NULL,
    PRIMARY KEY (nwb_file_name, position_group_name, interval_list_name, trodes_pos_params_name),
    FOREIGN KEY (nwb_file_name, interval_list_name, trodes_pos_params_name)
        REFERENCES position_outputs (nwb_file_name, interval_list_name, trodes_pos_params_name)
);

CREATE TABLE IF NOT EXISTS decoding_params (
    decoding_param_name VARCHAR PRIMARY KEY,
    params VARCHAR NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT current_timestamp,
    created_by VARCHAR
);

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
);

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
    created_by VARCHAR
);

CREATE TABLE IF NOT EXISTS lineage (
    merge_id VARCHAR NOT NULL,
    input_kind VARCHAR NOT NULL,
    input_key VARCHAR NOT NULL,
    input_version VARCHAR NOT NULL,
    PRIMARY KEY (merge_id, input_kind, input_key)
);

CREATE TABLE IF NOT EXISTS written_files (
    path VARCHAR PRIMARY KEY,
    kind VARCHAR NOT NULL,
    written_at TIMESTAMPTZ NOT NULL DEFAULT current_timestamp,
    created_by VARCHAR
);

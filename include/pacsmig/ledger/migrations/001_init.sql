-- pacsmig ledger, version 1: studies, instances, quarantine, custody, MPI crosswalk, ADT events.
CREATE TABLE IF NOT EXISTS studies (
    study_instance_uid   text PRIMARY KEY,
    patient_id           text,
    issuer_of_patient_id text,
    mpi_patient_id       text,
    accession_number     text,
    study_date           date,
    modalities           text,
    expected_series      integer,
    expected_instances   integer,
    state                text NOT NULL DEFAULT 'discovered',
    reason               text,
    last_error           text,
    priority             integer NOT NULL DEFAULT 0,
    attempts             integer NOT NULL DEFAULT 0,
    claimed_by           text,
    claimed_at           timestamptz,
    discovered_at        timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT studies_state_check CHECK (state IN ('discovered','queued','extracting','extracted',
        'transformed','loaded','verified','quarantined','held','review'))
);
CREATE INDEX IF NOT EXISTS studies_state_idx ON studies (state, priority DESC, study_date DESC);
CREATE INDEX IF NOT EXISTS studies_date_idx ON studies (study_date);
CREATE INDEX IF NOT EXISTS studies_patient_idx ON studies (patient_id, issuer_of_patient_id);
CREATE INDEX IF NOT EXISTS studies_mpi_idx ON studies (mpi_patient_id);

CREATE TABLE IF NOT EXISTS instances (
    study_instance_uid   text NOT NULL REFERENCES studies (study_instance_uid),
    sop_instance_uid     text NOT NULL,
    series_instance_uid  text,
    sop_class_uid        text,
    transfer_syntax_uid  text,
    size_bytes           bigint,
    number_of_frames     integer,
    source_pixel_hash    text,
    source_raw_hash      text,
    source_file_hash     text,
    staged_path          text,
    transformed_path     text,
    transformed_file_hash text,
    target_status        text NOT NULL DEFAULT 'pending',
    target_pixel_hash    text,
    target_ack           jsonb,
    received_at          timestamptz NOT NULL DEFAULT now(),
    loaded_at            timestamptz,
    verified_at          timestamptz,
    PRIMARY KEY (study_instance_uid, sop_instance_uid),
    CONSTRAINT instances_target_status_check CHECK (target_status IN
        ('pending','loaded','verified','mismatch','missing','quarantined'))
);
CREATE INDEX IF NOT EXISTS instances_sop_idx ON instances (sop_instance_uid);

CREATE TABLE IF NOT EXISTS quarantine (
    id                   bigserial PRIMARY KEY,
    study_instance_uid   text,
    sop_instance_uid     text,
    reason               text NOT NULL,
    detail               text,
    path                 text,
    file_hash            text,
    created_at           timestamptz NOT NULL DEFAULT now(),
    UNIQUE (study_instance_uid, sop_instance_uid, reason, file_hash)
);

-- Append-only, hash-chained chain of custody: entry_hash = sha256(prev_hash || canonical entry).
CREATE TABLE IF NOT EXISTS custody (
    seq                  bigserial PRIMARY KEY,
    study_instance_uid   text,
    event                text NOT NULL,
    actor                text NOT NULL,
    details              jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at           timestamptz NOT NULL,
    prev_hash            text NOT NULL,
    entry_hash           text NOT NULL UNIQUE
);
CREATE INDEX IF NOT EXISTS custody_study_idx ON custody (study_instance_uid, seq);

CREATE TABLE IF NOT EXISTS mpi_crosswalk (
    issuer_of_patient_id text NOT NULL DEFAULT '',
    patient_id           text NOT NULL,
    mpi_patient_id       text NOT NULL,
    PRIMARY KEY (issuer_of_patient_id, patient_id)
);
CREATE INDEX IF NOT EXISTS mpi_crosswalk_mpi_idx ON mpi_crosswalk (mpi_patient_id);

CREATE TABLE IF NOT EXISTS adt_events (
    id                   bigserial PRIMARY KEY,
    message_control_id   text NOT NULL,
    event_type           text NOT NULL,
    mpi_patient_id       text,
    raw_message          text NOT NULL,
    received_at          timestamptz NOT NULL DEFAULT now(),
    processed_at         timestamptz,
    UNIQUE (message_control_id)
);

CREATE TABLE IF NOT EXISTS review_sample (
    study_instance_uid   text PRIMARY KEY REFERENCES studies (study_instance_uid),
    stratum              text,
    reason               text,
    signoff_state        text NOT NULL DEFAULT 'pending',
    signed_by            text,
    signed_at            timestamptz,
    created_at           timestamptz NOT NULL DEFAULT now()
);

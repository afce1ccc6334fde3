-- pacsmig ledger, version 2: custody is append-only (trigger + role), verification results.

-- Why a trigger and a role: the role keeps the pipeline's own tasks from rewriting history; the
-- trigger also stops an owner or superuser who forgets, and must be disabled on purpose (which
-- `pacsmig custody verify` then still catches through the hash chain and the anchors).
CREATE OR REPLACE FUNCTION custody_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'custody is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$;

DROP TRIGGER IF EXISTS custody_no_update_delete ON custody;
CREATE TRIGGER custody_no_update_delete BEFORE UPDATE OR DELETE ON custody
    FOR EACH ROW EXECUTE FUNCTION custody_append_only();
DROP TRIGGER IF EXISTS custody_no_truncate ON custody;
CREATE TRIGGER custody_no_truncate BEFORE TRUNCATE ON custody
    FOR EACH STATEMENT EXECUTE FUNCTION custody_append_only();

-- Roles are cluster-wide and several ledgers (test databases) migrate concurrently: create it
-- once, tolerating the race.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'pacsmig_task') THEN
        CREATE ROLE pacsmig_task NOLOGIN;
    END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;
END;
$$;

-- Per-instance verification results: what `pacsmig validate` found, kept so that a re-run resumes
-- (skips what is verified) and the reports can be rebuilt from the ledger alone.
CREATE TABLE IF NOT EXISTS verification (
    study_instance_uid   text NOT NULL,
    sop_instance_uid     text NOT NULL,
    status               text NOT NULL,
    source_pixel_hash    text,
    target_pixel_hash    text,
    source_raw_hash      text,
    target_raw_hash      text,
    source_frames        integer,
    target_frames        integer,
    source_transfer_syntax text,
    target_transfer_syntax text,
    detail               text,
    checked_at           timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (study_instance_uid, sop_instance_uid),
    CONSTRAINT verification_status_check CHECK (status IN ('verified','pixel_mismatch',
        'header_mismatch','missing_at_target','quarantined','held'))
);
CREATE INDEX IF NOT EXISTS verification_status_idx ON verification (status);

GRANT USAGE ON SCHEMA public TO pacsmig_task;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO pacsmig_task;
REVOKE UPDATE, DELETE, TRUNCATE ON custody FROM pacsmig_task;
GRANT SELECT, INSERT ON custody TO pacsmig_task;
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO pacsmig_task;
-- Tables of later migrations get the ordinary DML grant; custody keeps its narrower one.
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO pacsmig_task;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT USAGE, SELECT ON SEQUENCES TO pacsmig_task;

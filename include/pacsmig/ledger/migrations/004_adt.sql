-- pacsmig ledger, version 4: what ADT reconciliation needs beyond 001's adt_events.

-- A40 (merge): the prior (non-surviving) patient ID from MRG-1, kept for MPI reconciliation.
ALTER TABLE adt_events ADD COLUMN IF NOT EXISTS prior_patient_id text;
-- Header facts (sender, version, timestamps), all PID-3 identifiers and every merge pair, so the
-- event can be reconciled without re-parsing raw_message.
ALTER TABLE adt_events ADD COLUMN IF NOT EXISTS details jsonb NOT NULL DEFAULT '{}'::jsonb;

-- The prefetch trigger polls for unprocessed admissions; keep that scan small as the table grows.
CREATE INDEX IF NOT EXISTS adt_events_pending_idx ON adt_events (event_type, id) WHERE processed_at IS NULL;
CREATE INDEX IF NOT EXISTS adt_events_mpi_idx ON adt_events (mpi_patient_id);
CREATE INDEX IF NOT EXISTS adt_events_prior_idx ON adt_events (prior_patient_id)
    WHERE prior_patient_id IS NOT NULL;

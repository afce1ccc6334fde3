-- pacsmig ledger, version 5: how read-back established each target pixel hash
-- ('raw_identical': same syntax, pixel bytes and decode inputs as the source; 'decoded').
ALTER TABLE verification ADD COLUMN IF NOT EXISTS method text;

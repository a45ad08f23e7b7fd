-- A grant's rollover cap goes into the ledger, so that reconcile and restore rebuild its bucket whole
-- (-1: the grant carries nothing into the next period; entries written before this migration kept no caps).
ALTER TABLE ledger_entries ADD COLUMN bucket_rollover_cap BIGINT NOT NULL DEFAULT -1;

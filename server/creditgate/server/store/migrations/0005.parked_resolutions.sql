-- A parked outbox entry written by `creditgate ledger retry-parked` once its cause was fixed. The sidecar's role
-- only inserts: the parked entry itself is kept (what happened stays on record), and this row takes it off the list.
CREATE TABLE IF NOT EXISTS parked_resolutions (
  source_id TEXT PRIMARY KEY,
  resolved_ms BIGINT NOT NULL
) {without_rowid};

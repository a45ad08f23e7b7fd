-- A customer's own settings (low-balance threshold, auto top-up) as they were changed: restore replays them.
CREATE TABLE IF NOT EXISTS settings_changes (
  source_id TEXT PRIMARY KEY,
  customer_id TEXT NOT NULL,
  fields {json} NOT NULL,
  changed_ms BIGINT NOT NULL
);

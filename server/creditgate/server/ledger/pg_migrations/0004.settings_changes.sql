-- A customer's own settings (low-balance threshold, auto top-up) as they were changed: restore replays them.
CREATE TABLE settings_changes (
  source_id TEXT PRIMARY KEY,
  customer_id TEXT NOT NULL,
  fields JSONB NOT NULL,
  changed_ms BIGINT NOT NULL
);
CREATE INDEX settings_changes_by_customer ON settings_changes (customer_id);

-- The durable store's schema in SQLite (PRAGMA user_version 1).
CREATE TABLE IF NOT EXISTS catalog_applications (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  version TEXT NOT NULL,
  source TEXT NOT NULL,
  applied_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS customers (
  customer_id TEXT PRIMARY KEY,
  name TEXT NOT NULL,
  metadata TEXT NOT NULL,
  created_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS subscription_changes (
  source_id TEXT PRIMARY KEY,
  customer_id TEXT NOT NULL,
  plan TEXT NOT NULL,
  status TEXT NOT NULL,
  anchor_ms INTEGER NOT NULL,
  changed_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS ledger_entries (
  customer_id TEXT NOT NULL,
  seq INTEGER NOT NULL,
  kind TEXT NOT NULL,
  credits_delta INTEGER NOT NULL,
  balance_after INTEGER NOT NULL,
  created_ms INTEGER NOT NULL,
  feature TEXT NOT NULL,
  quantity INTEGER NOT NULL,
  dimensions TEXT NOT NULL,
  free_units_used INTEGER NOT NULL,
  overage_credits INTEGER NOT NULL,
  bucket_id TEXT NOT NULL,
  request_id TEXT NOT NULL,
  reason TEXT NOT NULL,
  price TEXT NOT NULL,
  bucket_priority INTEGER NOT NULL,
  bucket_expires_ms INTEGER NOT NULL,
  reserved_delta INTEGER NOT NULL,
  reservation_id TEXT NOT NULL,
  takes TEXT NOT NULL,
  PRIMARY KEY (customer_id, seq)
) WITHOUT ROWID;
-- The ledger is append-only: entries are corrected by new entries, never edited.
CREATE TRIGGER IF NOT EXISTS ledger_entries_no_update BEFORE UPDATE ON ledger_entries
BEGIN SELECT RAISE(ABORT, 'ledger_entries is append-only'); END;
CREATE TRIGGER IF NOT EXISTS ledger_entries_no_delete BEFORE DELETE ON ledger_entries
BEGIN SELECT RAISE(ABORT, 'ledger_entries is append-only'); END;
CREATE TABLE IF NOT EXISTS parked_entries (
  source_id TEXT PRIMARY KEY,
  raw TEXT NOT NULL,
  error TEXT NOT NULL
);

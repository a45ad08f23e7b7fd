-- The durable store's schema in SQLite (PRAGMA user_version 4; sqlite_store.py migrates older files).
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
-- A customer's own settings (low-balance threshold, auto top-up) as they were changed: restore replays them.
CREATE TABLE IF NOT EXISTS settings_changes (
  source_id TEXT PRIMARY KEY,
  customer_id TEXT NOT NULL,
  fields TEXT NOT NULL,
  changed_ms INTEGER NOT NULL
);
-- The invoicer asks whether a customer canceled after a period ended (then that period is complete).
CREATE INDEX IF NOT EXISTS subscription_changes_by_customer ON subscription_changes (customer_id, changed_ms);
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
  bucket_rollover_cap INTEGER NOT NULL DEFAULT -1
);
-- Rows go in in flush order and a customer's entries are found through this index: keyed by (customer_id, seq)
-- itself, the table took a random page per entry under many customers (version 1), twice the CPU per entry.
CREATE UNIQUE INDEX IF NOT EXISTS ledger_entries_by_customer ON ledger_entries (customer_id, seq);
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
-- A parked entry written by `creditgate ledger retry-parked`: kept on record, off the list of parked entries.
CREATE TABLE IF NOT EXISTS parked_resolutions (
  source_id TEXT PRIMARY KEY,
  resolved_ms INTEGER NOT NULL
) WITHOUT ROWID;
-- Billing (issue 5): credit periods as rollover opened them, invoices, events and their webhook deliveries.
CREATE TABLE IF NOT EXISTS periods (
  customer_id TEXT NOT NULL,
  start_ms INTEGER NOT NULL,
  plan TEXT NOT NULL,
  period_index INTEGER NOT NULL,
  end_ms INTEGER NOT NULL,
  PRIMARY KEY (customer_id, start_ms)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS periods_by_end ON periods (end_ms);
CREATE TABLE IF NOT EXISTS invoices (
  invoice_id TEXT PRIMARY KEY,
  customer_id TEXT NOT NULL,
  period_start_ms INTEGER NOT NULL,
  body TEXT NOT NULL,
  created_ms INTEGER NOT NULL,
  UNIQUE (customer_id, period_start_ms)
);
CREATE TABLE IF NOT EXISTS events (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  event_id TEXT NOT NULL UNIQUE,
  customer_id TEXT NOT NULL,
  type TEXT NOT NULL,
  entry_id TEXT NOT NULL,
  created_ms INTEGER NOT NULL,
  payload TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_customer ON events (customer_id, seq);
CREATE TABLE IF NOT EXISTS deliveries (
  event_id TEXT NOT NULL,
  url TEXT NOT NULL,
  status TEXT NOT NULL,
  attempts INTEGER NOT NULL,
  next_attempt_ms INTEGER NOT NULL,
  last_error TEXT NOT NULL,
  PRIMARY KEY (event_id, url)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (status, next_attempt_ms);
-- Entries that came with a number the ledger had given to another (Redis came back older than the ledger): kept
-- under the next free number (seq), and remembered here so that a replay of one is not kept twice.
CREATE TABLE IF NOT EXISTS ledger_conflicts (
  customer_id TEXT NOT NULL,
  original_seq INTEGER NOT NULL,
  digest TEXT NOT NULL,
  seq INTEGER NOT NULL,
  created_ms INTEGER NOT NULL,
  PRIMARY KEY (customer_id, original_seq, digest)
);

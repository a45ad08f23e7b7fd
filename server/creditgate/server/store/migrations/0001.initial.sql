-- The durable store's first tables. {json} is JSONB in PostgreSQL and JSON text in SQLite; {identity} an id the
-- engine numbers itself.
CREATE TABLE IF NOT EXISTS catalog_applications (
  id {identity},
  version TEXT NOT NULL,
  source TEXT NOT NULL,
  applied_ms BIGINT NOT NULL
);

CREATE TABLE IF NOT EXISTS customers (
  customer_id TEXT PRIMARY KEY,
  name TEXT NOT NULL,
  metadata {json} NOT NULL,
  created_ms BIGINT NOT NULL
);

CREATE TABLE IF NOT EXISTS subscription_changes (
  source_id TEXT PRIMARY KEY,
  customer_id TEXT NOT NULL,
  plan TEXT NOT NULL,
  status TEXT NOT NULL,
  anchor_ms BIGINT NOT NULL,
  changed_ms BIGINT NOT NULL
);
-- The invoicer asks whether a customer canceled after a period ended (then that period is complete).
CREATE INDEX IF NOT EXISTS subscription_changes_by_customer ON subscription_changes (customer_id, changed_ms);

-- Keyed by (customer_id, seq): each engine's part says how.
CREATE TABLE IF NOT EXISTS ledger_entries (
  customer_id TEXT NOT NULL,
  seq BIGINT NOT NULL,
  kind TEXT NOT NULL,
  credits_delta BIGINT NOT NULL,
  balance_after BIGINT NOT NULL,
  created_ms BIGINT NOT NULL,
  feature TEXT NOT NULL,
  quantity BIGINT NOT NULL,
  dimensions {json} NOT NULL,
  free_units_used BIGINT NOT NULL,
  overage_credits BIGINT NOT NULL,
  bucket_id TEXT NOT NULL,
  request_id TEXT NOT NULL,
  reason TEXT NOT NULL,
  price TEXT NOT NULL,
  bucket_priority BIGINT NOT NULL,
  bucket_expires_ms BIGINT NOT NULL,
  reserved_delta BIGINT NOT NULL,
  reservation_id TEXT NOT NULL,
  takes {json} NOT NULL
);

CREATE TABLE IF NOT EXISTS parked_entries (
  source_id TEXT PRIMARY KEY,
  raw TEXT NOT NULL,
  error TEXT NOT NULL
);

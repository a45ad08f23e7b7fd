-- The durable store's schema in PostgreSQL: the same tables and columns as sqlite_schema.sql.
CREATE TABLE catalog_applications (
  id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  version TEXT NOT NULL,
  source TEXT NOT NULL,
  applied_ms BIGINT NOT NULL
);

CREATE TABLE customers (
  customer_id TEXT PRIMARY KEY,
  name TEXT NOT NULL,
  metadata JSONB NOT NULL,
  created_ms BIGINT NOT NULL
);

CREATE TABLE subscription_changes (
  source_id TEXT PRIMARY KEY,
  customer_id TEXT NOT NULL,
  plan TEXT NOT NULL,
  status TEXT NOT NULL,
  anchor_ms BIGINT NOT NULL,
  changed_ms BIGINT NOT NULL
);
CREATE INDEX subscription_changes_by_customer ON subscription_changes (customer_id, changed_ms);

CREATE TABLE ledger_entries (
  customer_id TEXT NOT NULL,
  seq BIGINT NOT NULL,
  kind TEXT NOT NULL,
  credits_delta BIGINT NOT NULL,
  balance_after BIGINT NOT NULL,
  created_ms BIGINT NOT NULL,
  feature TEXT NOT NULL,
  quantity BIGINT NOT NULL,
  dimensions JSONB NOT NULL,
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
  takes JSONB NOT NULL,
  PRIMARY KEY (customer_id, seq)
);

CREATE TABLE parked_entries (
  source_id TEXT PRIMARY KEY,
  raw TEXT NOT NULL,
  error TEXT NOT NULL
);

-- The ledger is append-only: entries are corrected by new entries, never edited. Privileges keep the
-- sidecar's role from UPDATE, DELETE and TRUNCATE (see PostgresStore); these triggers stop anyone else too.
CREATE FUNCTION ledger_entries_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'ledger_entries is append-only' USING ERRCODE = 'insufficient_privilege';
END
$$;

CREATE TRIGGER ledger_entries_no_update_or_delete BEFORE UPDATE OR DELETE ON ledger_entries
  FOR EACH ROW EXECUTE FUNCTION ledger_entries_append_only();

CREATE TRIGGER ledger_entries_no_truncate BEFORE TRUNCATE ON ledger_entries
  FOR EACH STATEMENT EXECUTE FUNCTION ledger_entries_append_only();

REVOKE UPDATE, DELETE, TRUNCATE ON ledger_entries FROM PUBLIC;

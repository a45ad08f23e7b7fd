-- Billing (issue 5): credit periods as rollover opened them, invoices, events and their webhook deliveries.
CREATE TABLE IF NOT EXISTS periods (
  customer_id TEXT NOT NULL,
  start_ms BIGINT NOT NULL,
  plan TEXT NOT NULL,
  period_index BIGINT NOT NULL,
  end_ms BIGINT NOT NULL,
  PRIMARY KEY (customer_id, start_ms)
) {without_rowid};
CREATE INDEX IF NOT EXISTS periods_by_end ON periods (end_ms);

CREATE TABLE IF NOT EXISTS invoices (
  invoice_id TEXT PRIMARY KEY,
  customer_id TEXT NOT NULL,
  period_start_ms BIGINT NOT NULL,
  body TEXT NOT NULL,
  created_ms BIGINT NOT NULL,
  UNIQUE (customer_id, period_start_ms)
);

CREATE TABLE IF NOT EXISTS events (
  seq {identity},
  event_id TEXT NOT NULL UNIQUE,
  customer_id TEXT NOT NULL,
  type TEXT NOT NULL,
  entry_id TEXT NOT NULL,
  created_ms BIGINT NOT NULL,
  payload TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_customer ON events (customer_id, seq);

CREATE TABLE IF NOT EXISTS deliveries (
  event_id TEXT NOT NULL,
  url TEXT NOT NULL,
  status TEXT NOT NULL,
  attempts INTEGER NOT NULL,
  next_attempt_ms BIGINT NOT NULL,
  last_error TEXT NOT NULL,
  PRIMARY KEY (event_id, url)
) {without_rowid};
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (status, next_attempt_ms);

-- Entries that came with a number the ledger had given to another (Redis came back older than the ledger): kept
-- under the next free number (seq), and remembered here so that a replay of one is not kept twice.
CREATE TABLE IF NOT EXISTS ledger_conflicts (
  customer_id TEXT NOT NULL,
  original_seq BIGINT NOT NULL,
  digest TEXT NOT NULL,
  seq BIGINT NOT NULL,
  created_ms BIGINT NOT NULL,
  PRIMARY KEY (customer_id, original_seq, digest)
);

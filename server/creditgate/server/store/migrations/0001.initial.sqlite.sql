-- Rows go in in flush order and a customer's entries are found through this index: keyed by (customer_id, seq)
-- itself, the table took a random page per entry under many customers, twice the CPU per entry.
CREATE UNIQUE INDEX IF NOT EXISTS ledger_entries_by_customer ON ledger_entries (customer_id, seq);
-- The ledger is append-only: entries are corrected by new entries, never edited.
CREATE TRIGGER IF NOT EXISTS ledger_entries_no_update BEFORE UPDATE ON ledger_entries
BEGIN SELECT RAISE(ABORT, 'ledger_entries is append-only'); END;
CREATE TRIGGER IF NOT EXISTS ledger_entries_no_delete BEFORE DELETE ON ledger_entries
BEGIN SELECT RAISE(ABORT, 'ledger_entries is append-only'); END;

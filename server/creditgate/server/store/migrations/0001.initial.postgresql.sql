ALTER TABLE ledger_entries ADD PRIMARY KEY (customer_id, seq);

-- The ledger is append-only: entries are corrected by new entries, never edited. Privileges keep the
-- sidecar's role from UPDATE, DELETE and TRUNCATE (store/postgres.py); these triggers stop anyone else too.
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

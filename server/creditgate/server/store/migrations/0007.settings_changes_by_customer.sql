-- Restore reads one customer's settings changes. PostgreSQL stores made this index in 0004 before the engines
-- shared one history; SQLite files of schema version 4 never had it.
CREATE INDEX IF NOT EXISTS settings_changes_by_customer ON settings_changes (customer_id);

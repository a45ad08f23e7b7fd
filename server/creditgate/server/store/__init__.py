"""Durable persistence: one store per concern (ledger, customers, catalogs, invoices, events and deliveries), each
written once over the small Dialect that SQLite and PostgreSQL differ by, and one schema history both run.
store.py composes them into the Store the rest of the server uses; open_store picks the engine from a URL."""

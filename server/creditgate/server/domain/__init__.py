"""The domain: the catalog model and its rules, billing periods, gateway routes and the ledger's records.

Pure: it imports nothing of creditgate but errors and clock (the foundation), so every layer above may use it and
it can be tested without a server, a Redis or a database."""

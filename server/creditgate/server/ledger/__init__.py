"""The durable ledger: stores and the flusher that moves the Redis outbox into them."""

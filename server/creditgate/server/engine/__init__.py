"""The decisions: Lua scripts that run atomically in Redis, and the Python that calls them."""

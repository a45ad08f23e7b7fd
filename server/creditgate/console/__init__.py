"""The operator console: a web app over creditgate's public API (`creditgate console`)."""

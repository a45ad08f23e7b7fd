"""`creditgate loadtest`: a multi-process gRPC load generator that checks the credits it charged."""

"""creditgate's server: a gRPC sidecar that decides and charges credits before each billable action."""

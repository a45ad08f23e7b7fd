"""Operations: metrics, the health probe, TLS credentials."""

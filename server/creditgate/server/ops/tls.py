"""gRPC server credentials from PEM files: TLS with a certificate and key, mTLS when a client CA is given."""

from __future__ import annotations

from pathlib import Path

import grpc
from creditgate.server.errors import FailedPrecondition
from creditgate.server.settings import Settings


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """None when no certificate is configured (plaintext, as for loopback development)."""
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    certificate = _read(settings.tls_cert_file, "tls_cert_file")
    key = _read(settings.tls_key_file, "tls_key_file")
    client_ca = _read(settings.tls_client_ca_file, "tls_client_ca_file") if settings.tls_client_ca_file else None
    return grpc.ssl_server_credentials(
        [(key, certificate)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


def _read(path: Path, field: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise FailedPrecondition(
            f"cannot read {field} {path}: {exc}", field=field, reason="TLS_FILE_UNREADABLE"
        ) from exc

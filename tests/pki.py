"""A test PKI: a CA, a server certificate for localhost and 127.0.0.1, client certificates (one from another CA)."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

NOW = datetime.datetime.now(datetime.UTC)


@dataclass(frozen=True)
class Issued:
    certificate: bytes
    key: bytes


def issue(name: str, issuer: Issued | None, *, ca: bool = False, server: bool = False) -> Issued:
    """A certificate for `name`, signed by `issuer` (self-signed when None)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    signer_key, signer_name = key, subject
    if issuer is not None:
        signer_key = serialization.load_pem_private_key(issuer.key, None)  # type: ignore[assignment]
        signer_name = x509.load_pem_x509_certificate(issuer.certificate).subject
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(signer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - datetime.timedelta(hours=1))
        .not_valid_after(NOW + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        ).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    elif not ca:
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    certificate = builder.sign(signer_key, hashes.SHA256())
    return Issued(
        certificate.public_bytes(serialization.Encoding.PEM),
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
    )


@dataclass(frozen=True)
class Pki:
    ca: Issued
    server: Issued
    client: Issued
    stranger: Issued  # a client certificate from another CA

    def write(self, folder: Path) -> dict[str, Path]:
        files = {
            "tls_cert_file": folder / "server.pem",
            "tls_key_file": folder / "server.key",
            "tls_client_ca_file": folder / "ca.pem",
        }
        files["tls_cert_file"].write_bytes(self.server.certificate)
        files["tls_key_file"].write_bytes(self.server.key)
        files["tls_client_ca_file"].write_bytes(self.ca.certificate)
        return files


def new_pki() -> Pki:
    ca = issue("creditgate test CA", None, ca=True)
    other_ca = issue("someone else's CA", None, ca=True)
    return Pki(
        ca=ca,
        server=issue("localhost", ca, server=True),
        client=issue("app-server", ca),
        stranger=issue("app-server", other_ca),
    )

"""TLS and mTLS from certificate files: the test makes its own CA, server and client certificates."""

from __future__ import annotations

import datetime
import ipaddress
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from creditgate.v1 import admin_pb2, admin_pb2_grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from harness import RedisServer, RunningServer, start_server

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


@pytest.fixture(scope="module")
def pki() -> Pki:
    ca = issue("creditgate test CA", None, ca=True)
    other_ca = issue("someone else's CA", None, ca=True)
    return Pki(
        ca=ca,
        server=issue("localhost", ca, server=True),
        client=issue("app-server", ca),
        stranger=issue("app-server", other_ca),
    )


def start(redis_server: RedisServer, tmp_path: Path, files: dict[str, Path]) -> RunningServer:
    return start_server(redis_server.url, tmp_path, **files)


@pytest.fixture
def tls_server(redis_server: RedisServer, tmp_path: Path, pki: Pki) -> Iterator[RunningServer]:
    files = pki.write(tmp_path)
    del files["tls_client_ca_file"]
    running = start(redis_server, tmp_path, files)
    yield running
    stop(running)


@pytest.fixture
def mtls_server(redis_server: RedisServer, tmp_path: Path, pki: Pki) -> Iterator[RunningServer]:
    running = start(redis_server, tmp_path, pki.write(tmp_path))
    yield running
    stop(running)


def stop(running: RunningServer) -> None:
    # Let the flusher finish its first pass: redis-py 8.1 can swallow a cancellation that lands inside a
    # command, and then App.stop waits for the flusher's whole interval (reported; not this test's subject).
    time.sleep(0.3)
    running.stop()


def catalog_version(server: RunningServer, credentials: grpc.ChannelCredentials | None) -> str:
    """GetCatalog over a fresh channel; raises grpc.RpcError when the connection is refused."""
    target = f"127.0.0.1:{server.app.port}"
    channel = (
        grpc.insecure_channel(target)
        if credentials is None
        else grpc.secure_channel(target, credentials, options=[("grpc.ssl_target_name_override", "localhost")])
    )
    with channel:
        response = admin_pb2_grpc.AdminServiceStub(channel).GetCatalog(admin_pb2.GetCatalogRequest(), timeout=10)
        return str(response.version)


def test_tls_serves_a_client_that_trusts_the_ca(tls_server: RunningServer, pki: Pki) -> None:
    version = catalog_version(tls_server, grpc.ssl_channel_credentials(root_certificates=pki.ca.certificate))
    assert version == tls_server.app.catalog.rules.version


def test_tls_refuses_plaintext(tls_server: RunningServer) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        catalog_version(tls_server, None)
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE


def test_tls_client_refuses_a_server_signed_by_another_ca(tls_server: RunningServer, pki: Pki) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        catalog_version(tls_server, grpc.ssl_channel_credentials(root_certificates=pki.stranger.certificate))
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE


def test_mtls_accepts_a_client_certificate_signed_by_the_ca(mtls_server: RunningServer, pki: Pki) -> None:
    credentials = grpc.ssl_channel_credentials(pki.ca.certificate, pki.client.key, pki.client.certificate)
    assert catalog_version(mtls_server, credentials) == mtls_server.app.catalog.rules.version


@pytest.mark.parametrize("client", ["none", "stranger"])
def test_mtls_refuses_a_client_without_a_certificate_from_the_ca(
    mtls_server: RunningServer, pki: Pki, client: str
) -> None:
    if client == "none":
        credentials = grpc.ssl_channel_credentials(pki.ca.certificate)
    else:
        credentials = grpc.ssl_channel_credentials(pki.ca.certificate, pki.stranger.key, pki.stranger.certificate)
    with pytest.raises(grpc.RpcError) as raised:
        catalog_version(mtls_server, credentials)
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE

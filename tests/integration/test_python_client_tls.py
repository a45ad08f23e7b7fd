"""The Python SDK over TLS: a test CA signs a certificate for a TLS endpoint in front of the real server."""

from __future__ import annotations

import asyncio
import datetime

import grpc
from creditgate.client import AsyncClient, Client
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_proxy import LossyProxy
from harness import RunningServer

HOST = "creditgate.test"


def certificate(
    subject: str, key: ec.EllipticCurvePrivateKey, issuer: str, signer: ec.EllipticCurvePrivateKey, ca: bool
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(subject)]), critical=False)
    return builder.sign(signer, hashes.SHA256())


def pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


def test_both_clients_reach_the_server_over_tls(server: RunningServer) -> None:
    server.create_customer("acme", "basic")
    ca_key, server_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = certificate("creditgate test CA", ca_key, "creditgate test CA", ca_key, ca=True)
    leaf = certificate(HOST, server_key, "creditgate test CA", ca_key, ca=False)
    key_pem = server_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    proxy = LossyProxy(server.app.port, credentials=grpc.ssl_server_credentials([(key_pem, pem(leaf))]))
    target = f"127.0.0.1:{proxy.port}"
    # The certificate names HOST; the test reaches it on loopback.
    credentials = grpc.ssl_channel_credentials(root_certificates=pem(ca))
    channel_options = [("grpc.ssl_target_name_override", HOST)]
    try:
        with Client(target, credentials=credentials, channel_options=channel_options) as client:
            synced = client.check_and_debit("acme", "email_unlock", 3)

        async def asynchronously() -> int:
            async with AsyncClient(target, credentials=credentials, channel_options=channel_options) as client:
                return (await client.get_balance("acme")).available_credits

        assert (synced.credits_charged, synced.balance_after) == (3, 2_497)
        assert asyncio.run(asynchronously()) == 2_497
        assert len(proxy.attempts) == 2
    finally:
        proxy.stop()

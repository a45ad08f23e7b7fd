"""TLS and mTLS from certificate files: the test makes its own CA, server and client certificates."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from creditgate.v1 import admin_pb2, admin_pb2_grpc
from harness import RunningServer
from pki import Pki, new_pki


@pytest.fixture(scope="module")
def pki() -> Pki:
    return new_pki()


@pytest.fixture
def server_overrides(request: pytest.FixtureRequest, tmp_path: Path, pki: Pki) -> dict[str, Path]:
    """The `server` serves TLS with the test CA's certificate; mTLS (asks for a client certificate from the CA) for
    a test parametrized with server_overrides="mtls"."""
    files = pki.write(tmp_path)
    if getattr(request, "param", "tls") == "tls":
        del files["tls_client_ca_file"]
    return files


MTLS = pytest.mark.parametrize("server_overrides", ["mtls"], indirect=True)


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


def test_tls_serves_a_client_that_trusts_the_ca(server: RunningServer, pki: Pki) -> None:
    version = catalog_version(server, grpc.ssl_channel_credentials(root_certificates=pki.ca.certificate))
    assert version == server.app.catalog.rules.version


def test_tls_refuses_plaintext(server: RunningServer) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        catalog_version(server, None)
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE


def test_tls_client_refuses_a_server_signed_by_another_ca(server: RunningServer, pki: Pki) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        catalog_version(server, grpc.ssl_channel_credentials(root_certificates=pki.stranger.certificate))
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE


@MTLS
def test_mtls_accepts_a_client_certificate_signed_by_the_ca(server: RunningServer, pki: Pki) -> None:
    credentials = grpc.ssl_channel_credentials(pki.ca.certificate, pki.client.key, pki.client.certificate)
    assert catalog_version(server, credentials) == server.app.catalog.rules.version


@MTLS
@pytest.mark.parametrize("client", ["none", "stranger"])
def test_mtls_refuses_a_client_without_a_certificate_from_the_ca(server: RunningServer, pki: Pki, client: str) -> None:
    if client == "none":
        credentials = grpc.ssl_channel_credentials(pki.ca.certificate)
    else:
        credentials = grpc.ssl_channel_credentials(pki.ca.certificate, pki.stranger.key, pki.stranger.certificate)
    with pytest.raises(grpc.RpcError) as raised:
        catalog_version(server, credentials)
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE

"""TLS and mTLS from certificate files: the test makes its own CA, server and client certificates."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from creditgate.v1 import admin_pb2, admin_pb2_grpc
from harness import RedisServer, RunningServer, start_server
from pki import Pki, new_pki


@pytest.fixture(scope="module")
def pki() -> Pki:
    return new_pki()


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

"""How the command-line clients (the admin commands and the loadtest) reach a server: its address, TLS and the API
key. One definition of the options and of the channel credentials, so every command connects the same way."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import grpc
import typer
from creditgate.server.settings import Settings
from creditgate.v1 import admin_pb2_grpc, metering_pb2_grpc
from rich.console import Console

TargetOption = Annotated[str | None, typer.Option(help="host:port of the server (default: CREDITGATE_LISTEN)")]
ApiKeyOption = Annotated[
    str, typer.Option(help="API key sent with every call as a Bearer token (the server's CREDITGATE_API_KEYS)")
]
TlsOption = Annotated[bool, typer.Option(help="connect with TLS (implied by the options below)")]
CaFileOption = Annotated[
    Path | None, typer.Option(exists=True, dir_okay=False, help="PEM of the CA to trust (default: the system's)")
]
CertFileOption = Annotated[
    Path | None, typer.Option(exists=True, dir_okay=False, help="PEM client certificate, for mTLS")
]
KeyFileOption = Annotated[Path | None, typer.Option(exists=True, dir_okay=False, help="PEM key of --cert-file")]
ServerNameOption = Annotated[
    str, typer.Option(help="the name on the server's certificate, when --target is an address it does not name")
]


@dataclass(frozen=True, slots=True)
class TlsOptions:
    """TLS to the server, as files' contents (picklable: every loadtest process opens its own channels)."""

    # PEM of the CA(s) to trust; None: the system's roots.
    root_certificates: bytes | None = None
    # PEM of a client certificate chain and its key, for a server that asks for one (mTLS); both or neither.
    certificate_chain: bytes | None = None
    private_key: bytes | None = None
    # The name the server's certificate must carry, when the target is an address it does not name.
    server_name: str = ""


def tls_options(
    tls: bool, ca_file: Path | None, cert_file: Path | None, key_file: Path | None, server_name: str
) -> TlsOptions | None:
    """The TLS a command's options ask for; None: plaintext (no TLS option given)."""
    if (cert_file is None) != (key_file is None):
        raise typer.BadParameter("--cert-file and --key-file go together", param_hint="--cert-file")
    if not (tls or ca_file or cert_file or server_name):
        return None
    return TlsOptions(
        root_certificates=ca_file.read_bytes() if ca_file else None,
        certificate_chain=cert_file.read_bytes() if cert_file else None,
        private_key=key_file.read_bytes() if key_file else None,
        server_name=server_name,
    )


def channel_credentials(tls: TlsOptions) -> tuple[grpc.ChannelCredentials, list[tuple[str, str]] | None]:
    """The credentials and channel options of a TLS channel (for grpc and grpc.aio alike)."""
    credentials = grpc.ssl_channel_credentials(tls.root_certificates, tls.private_key, tls.certificate_chain)
    options = [("grpc.ssl_target_name_override", tls.server_name)] if tls.server_name else None
    return credentials, options


def auth_metadata(api_key: str) -> tuple[tuple[str, str], ...] | None:
    """The metadata every call carries: the API key, when the server asks for one."""
    return (("authorization", f"Bearer {api_key}"),) if api_key else None


def open_channel(target: str, tls: TlsOptions | None) -> grpc.Channel:
    """A blocking channel to `target` (the admin commands): plaintext without `tls`."""
    if tls is None:
        return grpc.insecure_channel(target)
    credentials, options = channel_credentials(tls)
    return grpc.secure_channel(target, credentials, options=options)


def open_aio_channel(target: str, tls: TlsOptions | None) -> grpc.aio.Channel:
    """An asyncio channel to `target` (the loadtest): plaintext without `tls`."""
    if tls is None:
        return grpc.aio.insecure_channel(target)
    credentials, options = channel_credentials(tls)
    return grpc.aio.secure_channel(target, credentials, options=options)


@dataclass(frozen=True, slots=True)
class Remote:
    """A server an admin command calls: where, over which TLS, with which API key."""

    target: str
    tls: TlsOptions | None = None
    api_key: str = ""

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return auth_metadata(self.api_key) or ()


def remote(
    target: str | None,
    api_key: str,
    tls: bool,
    ca_file: Path | None,
    cert_file: Path | None,
    key_file: Path | None,
    server_name: str,
) -> Remote:
    """The server a command's connection options name (no --target: the address this machine's server listens on)."""
    return Remote(target or Settings().listen, tls_options(tls, ca_file, cert_file, key_file, server_name), api_key)


@contextmanager
def calling(
    server: Remote, console: Console
) -> Iterator[tuple[admin_pb2_grpc.AdminServiceStub, metering_pb2_grpc.MeteringServiceStub]]:
    """The server's stubs for one command (each call passes `server.metadata`); a refused call prints its code and
    message and exits 1."""
    with open_channel(server.target, server.tls) as channel:
        try:
            yield admin_pb2_grpc.AdminServiceStub(channel), metering_pb2_grpc.MeteringServiceStub(channel)
        except grpc.RpcError as exc:
            console.print(f"[red]{exc.code().name}[/red]: {exc.details()}")
            raise typer.Exit(1) from exc

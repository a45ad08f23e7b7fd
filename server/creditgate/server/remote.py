"""How the command-line clients (the admin commands and the loadtest) reach a server: its address, TLS and the API
key. One definition of the options and of the channel credentials, so every command connects the same way."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

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


# A command that calls a server: typer builds its options from its signature; it returns nothing.
Command = Callable[..., None]

_KEYWORD = inspect.Parameter.KEYWORD_ONLY
# How to reach the server, after where: the options every such command takes, named as `remote` names them.
_HOW_OPTIONS = (
    inspect.Parameter("api_key", _KEYWORD, annotation=ApiKeyOption, default=""),
    inspect.Parameter("tls", _KEYWORD, annotation=TlsOption, default=False),
    inspect.Parameter("ca_file", _KEYWORD, annotation=CaFileOption, default=None),
    inspect.Parameter("cert_file", _KEYWORD, annotation=CertFileOption, default=None),
    inspect.Parameter("key_file", _KEYWORD, annotation=KeyFileOption, default=None),
    inspect.Parameter("server_name", _KEYWORD, annotation=ServerNameOption, default=""),
)


def takes_server(command: Command) -> Command:
    """`command` with the connection options (--target, default CREDITGATE_LISTEN; --api-key, --tls, --ca-file,
    --cert-file, --key-file, --server-name) where its `server` parameter stands; it is called with the `Remote`
    they name as `server`. The shared-options idiom of click/typer: typer reads the options off `__signature__`."""
    target = inspect.Parameter("target", _KEYWORD, annotation=TargetOption, default=None)
    return _with_connection_options(command, (target, *_HOW_OPTIONS))


def takes_server_at_target(target_help: str) -> Callable[[Command], Command]:
    """`takes_server` for a command that must be told where the server is (the loadtest): --target is required."""
    target = inspect.Parameter("target", _KEYWORD, annotation=Annotated[str, typer.Option(help=target_help)])
    return lambda command: _with_connection_options(command, (target, *_HOW_OPTIONS))


def _with_connection_options(command: Command, options: tuple[inspect.Parameter, ...]) -> Command:
    # Evaluated annotations: typer reads a given __signature__ as it stands, and the commands' modules postpone theirs.
    signature = inspect.signature(command, eval_str=True)
    own = list(signature.parameters.values())
    at = next((index for index, parameter in enumerate(own) if parameter.name == "server"), None)
    if at is None:
        raise TypeError(f"{command.__qualname__} has no `server` parameter to receive the Remote in")
    # What follows keyword-only options must be keyword-only too; typer passes every parameter by name anyway.
    after = [parameter.replace(kind=_KEYWORD) for parameter in own[at + 1 :]]
    parameters = [*own[:at], *options, *after]

    @functools.wraps(command)
    def connected(*args: Any, **kwargs: Any) -> None:
        server = remote(**{option.name: kwargs.pop(option.name) for option in options})
        command(*args, server=server, **kwargs)

    connected.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
    connected.__annotations__ = {parameter.name: parameter.annotation for parameter in parameters} | {
        "return": signature.return_annotation
    }
    return connected


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

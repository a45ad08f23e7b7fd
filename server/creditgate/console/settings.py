"""The console's settings, read and validated once from CREDITGATE_CONSOLE_* environment variables."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def is_loopback_listen(listen: str) -> bool:
    host = listen.rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ConsoleSettings(BaseSettings):
    """Everything the console can be told; nothing else in the console reads the environment."""

    model_config = SettingsConfigDict(env_prefix="CREDITGATE_CONSOLE_", frozen=True, extra="ignore")

    # host:port of the creditgate server whose public API the console calls.
    target: str = "127.0.0.1:50051"
    # host:port the console's web server listens on.
    listen: str = "127.0.0.1:8080"
    # The sign-in password, or its hash (`creditgate console-hash-password` prints one); one of them at most.
    password: SecretStr | None = None
    password_hash: SecretStr | None = None
    # Sent as `authorization: Bearer <key>`; the key needs the admin and metering scopes.
    api_key: SecretStr | None = None
    # TLS to the server: on with `tls`, or when a CA file is given (else the system's roots are trusted).
    tls: bool = False
    tls_ca_file: Path | None = None
    # mTLS: the console's own certificate and key, for a server that asks for client certificates.
    tls_client_cert_file: Path | None = None
    tls_client_key_file: Path | None = None
    # The name the server's certificate is checked against, when the target's host is not it.
    tls_server_name: str | None = None
    # The server's Prometheus endpoint (http://host:port/metrics): the live view's decisions per second.
    metrics_url: str | None = None
    # The live view samples the server this often, and keeps this many samples.
    sample_interval_seconds: float = Field(default=2.0, gt=0, le=60)
    samples_kept: int = Field(default=90, ge=2, le=10_000)
    # A session unused this long is signed out.
    session_idle_seconds: int = Field(default=8 * 3600, ge=60)
    # Wrong passwords allowed per minute (all clients together) before sign-in pauses for the rest of it.
    sign_in_failures_per_minute: int = Field(default=10, ge=1)
    # Seconds each API call may take, retries included.
    call_timeout_seconds: float = Field(default=5.0, gt=0, le=120)

    @field_validator("target", "listen")
    @classmethod
    def _has_port(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError("must be host:port, e.g. 127.0.0.1:8080")
        return value

    @model_validator(mode="after")
    def _one_password(self) -> ConsoleSettings:
        if self.password is not None and self.password_hash is not None:
            raise ValueError("set password or password_hash, not both")
        if (self.tls_client_cert_file is None) != (self.tls_client_key_file is None):
            raise ValueError("tls_client_cert_file and tls_client_key_file are set together")
        return self

    @property
    def uses_tls(self) -> bool:
        return self.tls or self.tls_ca_file is not None or self.tls_client_cert_file is not None

    @property
    def has_password(self) -> bool:
        return self.password is not None or self.password_hash is not None

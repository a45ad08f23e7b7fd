"""The admin commands (`creditgate customer create`, `subscribe`, `topup`, `debit`, `balance`, `ledger`, `invoice`,
`apply-catalog`) against a real server that asks for TLS and an API key, with the loadtest's connection options;
every command's --help lists those options (one definition, remote.takes_server)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from creditgate.server.api.auth import hash_key, new_key
from creditgate.server.cli import app
from creditgate.server.settings import ApiKey
from harness import APOLLO, RunningServer
from pki import new_pki
from typer.testing import CliRunner

KEY = new_key()


@pytest.fixture
def server_overrides(tmp_path: Path) -> dict[str, Any]:
    """The `server` serves TLS with the test CA's certificate for "localhost" and asks for an API key (both scopes)."""
    files: dict[str, Any] = new_pki().write(tmp_path)
    del files["tls_client_ca_file"]  # TLS, not mTLS: the client shows no certificate
    api_keys = (ApiKey.model_validate({"name": "ops", "sha256": hash_key(KEY), "scopes": ["metering", "admin"]}),)
    return files | {"api_keys": api_keys}


def run(server: RunningServer, *args: str, options: tuple[str, ...]) -> tuple[int, str]:
    """One command against `server`, with `options` after its own arguments; its exit code and output on one line."""
    done = CliRunner().invoke(app, [*args, f"--target=127.0.0.1:{server.app.port}", *options], terminal_width=200)
    return done.exit_code, " ".join(done.output.split())


def test_admin_commands_reach_a_tls_server_with_an_api_key(server: RunningServer, tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"  # written by pki.write: the CA that signed the server's certificate
    connected = ("--tls", f"--ca-file={ca}", "--server-name=localhost", f"--api-key={KEY}")

    assert run(server, "customer", "create", "acme", options=connected) == (0, "customer acme created")
    assert run(server, "subscribe", "acme", "basic", options=connected) == (
        0,
        "acme on basic: 2,500 credits available",
    )
    assert run(server, "topup", "acme", "--package=starter", options=connected) == (
        0,
        "+1,000 credits for 29.00 USD: 3,500 available",
    )
    code, said = run(server, "debit", "acme", "email_unlock", "--quantity=5", options=connected)
    assert (code, said.split(":")[0]) == (0, "allowed")
    code, said = run(server, "balance", "acme", options=connected)
    assert (code, said.split(" (")[0]) == (0, "acme: 3,495 credits available")
    server.flush()
    code, said = run(server, "ledger", "acme", options=connected)
    assert code == 0
    assert re.findall(r"│ (acme/\d+) │ (\w+) │ ([+-][\d,]+) │ ([\d,]+) │", said) == [
        ("acme/3", "debit", "-5", "3,495"),
        ("acme/2", "top_up", "+1,000", "3,500"),
        ("acme/1", "grant", "+2,500", "2,500"),
    ]
    code, said = run(server, "invoice", "preview", "acme", options=connected)
    assert code == 0
    assert re.findall(r"│ ([^│]+?) +│ ([^│]*?) *│ ([^│]*?) *│ ([^│]+?) +│", said) == [
        ("Basic (yearly)", "1", "588.00", "588.00"),
        ("Starter: 1,000 credits", "1", "29.00", "29.00"),
        ("Subtotal", "", "", "617.00"),
        ("Total", "", "", "617.00 USD"),
        ("usage: email_unlock", "5 credits", "", "(0.15)"),
    ]
    code, said = run(server, "invoice", "list", "acme", options=connected)
    assert (code, "acme/inv/" in said) == (0, False)  # January is still running: nothing finalized
    assert run(server, "apply-catalog", str(APOLLO), options=connected)[0] == 0


@pytest.mark.parametrize(
    ("case", "options", "said"),
    [
        ("no API key", ("--tls", "--ca-file={ca}", "--server-name=localhost"), "UNAUTHENTICATED: "),
        ("a wrong API key", ("--ca-file={ca}", "--server-name=localhost", "--api-key=cg_wrong"), "UNAUTHENTICATED: "),
        ("no TLS", (f"--api-key={KEY}",), "UNAVAILABLE: "),
        (
            "a CA that did not sign the server's certificate",
            ("--ca-file={other}", "--server-name=localhost"),
            "UNAVAILABLE: ",
        ),
    ],
    ids=["no-api-key", "wrong-api-key", "no-tls", "other-ca"],
)
def test_a_command_the_server_refuses_says_why_and_exits_1(
    server: RunningServer, tmp_path: Path, case: str, options: tuple[str, ...], said: str
) -> None:
    other = tmp_path / "other-ca.pem"
    other.write_bytes(new_pki().ca.certificate)
    filled = tuple(option.format(ca=tmp_path / "ca.pem", other=other) for option in options)
    code, output = run(server, "balance", "acme", options=filled)
    assert (code, said in output) == (1, True), (case, output)


def test_a_client_certificate_without_its_key_is_refused_before_any_call(server: RunningServer, tmp_path: Path) -> None:
    cert = tmp_path / "client.pem"
    cert.write_bytes(new_pki().client.certificate)
    code, said = run(server, "balance", "acme", options=(f"--cert-file={cert}",))
    assert code == 2
    assert "--cert-file and --key-file go together" in said


def test_without_a_target_a_command_calls_the_server_creditgate_listen_names(
    server: RunningServer, tmp_path: Path
) -> None:
    connected = ["--tls", f"--ca-file={tmp_path / 'ca.pem'}", "--server-name=localhost", f"--api-key={KEY}"]
    listen = {"CREDITGATE_LISTEN": f"127.0.0.1:{server.app.port}"}
    done = CliRunner().invoke(app, ["customer", "create", "acme", *connected], env=listen, terminal_width=200)
    assert (done.exit_code, " ".join(done.output.split())) == (0, "customer acme created")


# The connection options' rows in a command's --help: name, then the help text (and default) typer prints.
CONNECTION_ROWS = [
    ("--api-key", "API key sent with every call as a Bearer token (the server's CREDITGATE_API_KEYS)"),
    ("--tls", "connect with TLS (implied by the options below) [default: no-tls]"),
    ("--ca-file", "PEM of the CA to trust (default: the system's)"),
    ("--cert-file", "PEM client certificate, for mTLS"),
    ("--key-file", "PEM key of --cert-file"),
    ("--server-name", "the name on the server's certificate, when --target is an address it does not name"),
]
ADMIN_TARGET_ROW = ("--target", "host:port of the server (default: CREDITGATE_LISTEN)")
LOADTEST_TARGET_ROW = ("--target", "host:port of the creditgate server to load (see --tls, --api-key) [required]")


def help_rows(*command: str) -> list[tuple[str, str]]:
    """The option rows of a command's --help, as (name, help text), on a terminal wide enough for one line each."""
    done = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "200"})
    assert done.exit_code == 0, done.output
    return re.findall(r"│ +(?:\* +)?(--[a-z-]+) +(?:--no-[a-z-]+ +)?<\w+> +(.*?) *│", done.output)


@pytest.mark.parametrize(
    "command",
    [
        "apply-catalog",
        "customer create",
        "subscribe",
        "topup",
        "debit",
        "balance",
        "ledger entries",
        "invoice show",
        "invoice preview",
        "invoice list",
    ],
)
def test_every_admin_command_lists_the_connection_options_last_in_its_help(command: str) -> None:
    assert help_rows(*command.split())[-8:] == [
        ADMIN_TARGET_ROW,
        *CONNECTION_ROWS,
        ("--help", "Show this message and exit."),
    ]


def test_the_loadtest_lists_the_connection_options_first_with_target_required() -> None:
    assert help_rows("loadtest")[:7] == [LOADTEST_TARGET_ROW, *CONNECTION_ROWS]

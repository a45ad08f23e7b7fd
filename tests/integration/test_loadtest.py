"""`creditgate loadtest` against the real server: what it counts is what the server charged, in every mode."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pytest
from creditgate.server.api.auth import hash_key, new_key
from creditgate.server.loadtest.report import as_json
from creditgate.server.loadtest.runner import LoadSettings, run_load
from creditgate.server.remote import TlsOptions
from creditgate.server.settings import ApiKey
from harness import RedisServer, RunningServer, start_server
from pki import new_pki

CLI = [sys.executable, "-m", "creditgate.server", "loadtest"]

# One Basic customer: its month's grant of 2,500 credits and no overage. Both features cost 10 credits a call
# (phone_reveal 10, email_unlock 1 x 10), so 250 calls are allowed whatever the mix picks, and the rest denied.
MIX = "phone_reveal:1,email_unlock*10:1"
GRANT = 2_500
ALLOWED = GRANT // 10

# (mode, settings, calls, decisions)
MODES: list[tuple[str, dict[str, Any], int, int]] = [
    ("debit", {"requests": 300}, 300, 300),
    ("batch", {"requests": 30, "batch_size": 10}, 30, 300),
    ("reserve-commit", {"requests": 300}, 300, 300),
]


def one_basic_customer(server: RunningServer, **overrides: Any) -> LoadSettings:
    """A run over one new Basic customer with nothing but its grant, 8 calls in flight."""
    base: dict[str, Any] = {"customers": 1, "plan": "basic", "credits_per_customer": 0, "features": MIX}
    return LoadSettings(target=f"127.0.0.1:{server.app.port}", concurrency=8, **{**base, **overrides})


@pytest.mark.parametrize(("mode", "settings", "calls", "decisions"), MODES, ids=[case[0] for case in MODES])
def test_the_loadtest_counts_what_the_server_charged(
    server: RunningServer, mode: str, settings: dict[str, Any], calls: int, decisions: int
) -> None:
    report = run_load(
        one_basic_customer(
            server,
            mode=mode,  # one of the modes, from the table
            processes=2,
            **settings,
        )
    )
    assert (report.calls, report.decisions) == (calls, decisions)
    assert (report.allowed, report.denied, report.errors) == (ALLOWED, decisions - ALLOWED, {})
    assert (report.charged, report.balance_drop, report.verified) == (GRANT, GRANT, True)
    assert report.histogram.get_total_count() == calls
    summary = as_json(report)
    assert summary["mix"] == {"phone_reveal": 1, "email_unlock*10": 1}
    assert (summary["credits_charged"], summary["verified"]) == (GRANT, True)


def test_a_server_that_asks_for_keys_is_loaded_with_one(redis_server: RedisServer, tmp_path: Path) -> None:
    key = new_key()
    api_keys = [ApiKey(name="loadtest", sha256=hash_key(key), scopes=frozenset({"metering", "admin"}))]
    guarded = start_server(redis_server.url, tmp_path, api_keys=api_keys)
    try:
        settings = one_basic_customer(guarded, processes=1, requests=300)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            run_load(settings)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        done = subprocess.run(
            [*CLI, f"--target={settings.target}", "--requests=10"], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 1
        assert "refused the load test: UNAUTHENTICATED" in done.stderr
        report = run_load(replace(settings, api_key=key))
        assert (report.allowed, report.denied, report.errors) == (ALLOWED, 300 - ALLOWED, {})
        assert (report.charged, report.balance_drop, report.verified) == (GRANT, GRANT, True)
    finally:
        guarded.stop()


# (case, TLS options given to the command, exit code, what stderr says): a server that asks for client certificates.
TLS_CASES: list[tuple[str, list[str], int, str]] = [
    ("plaintext", [], 1, "refused the load test: UNAVAILABLE"),
    ("no client certificate", ["--ca-file={ca}"], 1, "refused the load test: UNAVAILABLE"),
    ("certificate without its key", ["--ca-file={ca}", "--cert-file={cert}"], 2, "--key-file go together"),
    (
        "a name the certificate does not carry",
        ["--ca-file={ca}", "--cert-file={cert}", "--key-file={key}", "--server-name=elsewhere.test"],
        1,
        "refused the load test: UNAVAILABLE",
    ),
    ("mTLS", ["--ca-file={ca}", "--cert-file={cert}", "--key-file={key}", "--server-name=localhost"], 0, ""),
]


def test_a_server_behind_mtls_is_loaded_with_the_client_certificate(redis_server: RedisServer, tmp_path: Path) -> None:
    pki = new_pki()
    guarded = start_server(redis_server.url, tmp_path, **pki.write(tmp_path))
    files = {"ca": tmp_path / "ca.pem", "cert": tmp_path / "client.pem", "key": tmp_path / "client.key"}
    files["cert"].write_bytes(pki.client.certificate)
    files["key"].write_bytes(pki.client.key)
    try:
        settings = one_basic_customer(guarded, processes=2, requests=300)
        tls = TlsOptions(pki.ca.certificate, pki.client.certificate, pki.client.key)
        report = run_load(replace(settings, tls=tls))
        assert (report.allowed, report.denied, report.errors) == (ALLOWED, 300 - ALLOWED, {})
        assert (report.charged, report.balance_drop, report.verified) == (GRANT, GRANT, True)
        for case, options, exit_code, said in TLS_CASES:
            done = subprocess.run(
                [
                    *CLI,
                    f"--target={settings.target}",
                    *(option.format(**files) for option in options),
                    "--customers=1",
                    "--plan=basic",
                    "--credits-per-customer=0",
                    f"--features={MIX}",
                    "--requests=300",
                    "--processes=1",
                    "--json=-",
                ],
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert done.returncode == exit_code, (case, done.stderr)
            assert said in " ".join(done.stderr.split()), case
            if exit_code == 0:
                figures = json.loads(done.stdout)
                assert (figures["allowed"], figures["denied"]) == (ALLOWED, 300 - ALLOWED), case
                assert (figures["credits_charged"], figures["balance_drop"]) == (GRANT, GRANT), case
    finally:
        guarded.stop()


def test_the_command_writes_its_json_and_plot(server: RunningServer, tmp_path: Path) -> None:
    summary, plot = tmp_path / "summary.json", tmp_path / "latency.png"
    done = subprocess.run(
        [
            *CLI,
            f"--target=127.0.0.1:{server.app.port}",
            "--customers=1",
            "--plan=basic",
            "--credits-per-customer=0",
            f"--features={MIX}",
            "--requests=300",
            "--concurrency=8",
            f"--json={summary}",
            f"--plot={plot}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    figures = json.loads(summary.read_text())
    assert (figures["calls"], figures["allowed"], figures["denied"]) == (300, ALLOWED, 300 - ALLOWED)
    assert (figures["credits_charged"], figures["balance_drop"], figures["verified"]) == (GRANT, GRANT, True)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_command_refuses_an_unknown_mode(server: RunningServer) -> None:
    done = subprocess.run(
        [*CLI, f"--target=127.0.0.1:{server.app.port}", "--mode=spray", "--requests=10"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "--mode" in done.stderr

"""The console's parts that need no browser: passwords, the start rule, once-only actions, live rates, layering."""

from __future__ import annotations

import ast
import asyncio
import base64
import hashlib
import re
from pathlib import Path
from typing import Any, cast

import pytest
from creditgate.client import AsyncClient
from creditgate.console.actions import Submissions
from creditgate.console.auth import PasswordCheck, hash_password
from creditgate.console.live import LiveSampler, Sample, decisions_by_outcome
from creditgate.console.serve import ConsoleRefused, prepare
from creditgate.console.settings import ConsoleSettings
from harness import REPO
from pydantic import SecretStr, ValidationError

CONSOLE = REPO / "server" / "creditgate" / "console"


def test_a_hashed_password_is_accepted_in_scrypt_and_pbkdf2_form() -> None:
    check = PasswordCheck(password=None, password_hash=hash_password("s3cret pass"))
    assert (check.matches("s3cret pass"), check.matches("s3cret pas"), check.matches("")) == (True, False, False)

    salt = b"0123456789abcdef"
    digest = hashlib.pbkdf2_hmac("sha256", b"other", salt, 1000)
    encoded = "$".join(
        ["pbkdf2_sha256", "1000", *(base64.urlsafe_b64encode(raw).decode().rstrip("=") for raw in (salt, digest))]
    )
    pbkdf2 = PasswordCheck(password=None, password_hash=encoded)
    assert (pbkdf2.matches("other"), pbkdf2.matches("Other")) == (True, False)


def test_a_plain_password_matches_exactly_and_a_malformed_hash_fails_at_start() -> None:
    check = PasswordCheck(password="hunter2", password_hash=None)
    assert (check.matches("hunter2"), check.matches("hunter2 "), check.matches("")) == (True, False, False)
    with pytest.raises(ValueError, match="password_hash must be"):
        PasswordCheck(password=None, password_hash="md5$abc")


def test_a_console_reachable_from_other_machines_refuses_to_start_without_a_password(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("CREDITGATE_CONSOLE_PASSWORD", raising=False)
    monkeypatch.delenv("CREDITGATE_CONSOLE_PASSWORD_HASH", raising=False)
    with pytest.raises(ConsoleRefused, match=re.escape("0.0.0.0:8080 is reachable from other machines")):
        prepare({"listen": "0.0.0.0:8080"})
    settings, generated = prepare({"listen": "127.0.0.1:8080"})
    assert settings.listen == "127.0.0.1:8080" and generated is not None and len(generated) >= 16

    monkeypatch.setenv("CREDITGATE_CONSOLE_PASSWORD", "set by the operator")
    settings, generated = prepare({"listen": "0.0.0.0:8080", "target": None})
    assert generated is None and settings.password is not None
    assert settings.password.get_secret_value() == "set by the operator"
    with pytest.raises(ValidationError, match="password or password_hash, not both"):
        ConsoleSettings(password=SecretStr("a"), password_hash=SecretStr(hash_password("a")))


def test_a_request_id_runs_once_even_when_two_submissions_race() -> None:
    calls: list[str] = []

    async def top_up() -> str:
        calls.append("top_up")
        await asyncio.sleep(0.01)
        return "Topped up"

    async def twice() -> list[tuple[str, bool]]:
        submissions = Submissions()
        return list(await asyncio.gather(submissions.once("id-1", top_up), submissions.once("id-1", top_up)))

    assert asyncio.run(twice()) == [("Topped up", False), ("Topped up", True)]
    assert calls == ["top_up"]


def test_a_refused_submission_may_be_sent_again() -> None:
    refusals = [ValueError("refused")]

    async def flaky() -> str:
        if refusals:
            raise refusals.pop()
        return "done"

    async def retried() -> tuple[str, bool]:
        submissions = Submissions()
        with pytest.raises(ValueError, match="refused"):
            await submissions.once("id-2", flaky)
        return await submissions.once("id-2", flaky)

    assert asyncio.run(retried()) == ("done", False)


EXPOSITION = """\
# HELP creditgate_decisions_total Charging decisions
# TYPE creditgate_decisions_total counter
creditgate_decisions_total{feature="email_unlock",outcome="allowed"} 7.0
creditgate_decisions_total{feature="contact_export",outcome="allowed"} 3.0
creditgate_decisions_total{feature="ai_personalization",outcome="not_entitled"} 2.0
# HELP creditgate_rpcs_total Finished RPCs
# TYPE creditgate_rpcs_total counter
creditgate_rpcs_total{code="OK",rpc="CheckAndDebit"} 12.0
"""


def sample(monotonic: float, decisions: dict[str, float] | None, backlog: int = 0) -> Sample:
    return Sample(1_800_000_000 + monotonic, monotonic, decisions, backlog, 0, 0.0, {"server": "SERVING"})


def test_live_rates_are_the_counters_difference_over_the_time_between_samples() -> None:
    assert decisions_by_outcome(EXPOSITION) == {"allowed": 10.0, "not_entitled": 2.0}

    async def view() -> dict[str, Any]:
        sampler = LiveSampler(cast(AsyncClient, None), lambda service: asyncio.sleep(0, "SERVING"), "x", 2.0, 10)
        sampler.samples.extend(
            [
                sample(100.0, {"allowed": 10.0, "not_entitled": 2.0}),
                sample(102.0, {"allowed": 16.0, "not_entitled": 3.0, "insufficient_credits": 4.0}, backlog=5),
                sample(104.0, {"allowed": 1.0}),  # the server restarted: no rate for this interval
            ]
        )
        return sampler.view()

    live = asyncio.run(view())
    assert live["points"] == [
        {"at": 1_800_000_102.0, "rates": {"allowed": 3.0, "not_entitled": 0.5, "insufficient_credits": 2.0},
         "backlog": 5},
    ]  # fmt: skip
    assert live["outcomes"] == ["allowed", "insufficient_credits", "not_entitled"]
    assert live["latest"]["decisions_total"] == {"allowed": 1.0}


def test_the_console_is_a_client_of_the_public_api_only() -> None:
    """It never imports the server's code (nor Redis or the stores): only the SDK, the stubs and its own."""
    imported: dict[str, set[str]] = {}
    for path in CONSOLE.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [alias.name for alias in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            for name in names:
                imported.setdefault(name, set()).add(Path(path).name)
    forbidden = {name for name in imported if name.split(".")[:2] == ["creditgate", "server"]}
    forbidden |= {name for name in imported if name.split(".")[0] in {"redis", "psycopg", "sqlite3", "aiosqlite"}}
    assert forbidden == set()

"""Settings that would lose money are refused at start, with the reason: an idempotency TTL shorter than the
longest hold, and a Redis that may evict any key (maxmemory-policy allkeys-*); volatile-* starts with a warning
(it evicts remembered request_id answers), and so does a Redis whose CONFIG command is renamed away."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from pathlib import Path
from typing import Any

import pytest
from creditgate.server.app import App, build_app
from creditgate.server.errors import FailedPrecondition
from creditgate.server.settings import Settings
from harness import REPO, RedisServer, server_settings
from pydantic import ValidationError
from structlog.testing import capture_logs

TTL_REFUSED = (
    "idempotency_ttl_seconds (3600) is shorter than hold_max_ttl_seconds (7200): a Reserve's request_id would be"
    " forgotten while its hold is open, and a retry would hold the credits again; raise idempotency_ttl_seconds or"
    " lower hold_max_ttl_seconds"
)


def allkeys_refused(policy: str) -> str:
    return (
        f"Redis maxmemory-policy is {policy}: a full Redis would evict balances, holds and acknowledged decisions"
        " not yet in the ledger; set maxmemory-policy noeviction (CONFIG SET maxmemory-policy noeviction, and in"
        " redis.conf)"
    )


def redis_with(tmp_path: Path, *config: str) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis", *config)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def allkeys_lru_redis(tmp_path: Path) -> Iterator[RedisServer]:
    yield from redis_with(tmp_path, "--maxmemory-policy", "allkeys-lru")


WhileUp = Callable[[App], Awaitable[None]]


def start_and_stop(settings: Settings, while_up: WhileUp | None = None) -> list[MutableMapping[str, Any]]:
    """Starts the app as `serve` does (and stops it, also after a refused start); returns its warnings."""

    async def scenario() -> None:
        app = build_app(settings)
        try:
            await app.start()
            if while_up is not None:
                await while_up(app)
        finally:
            await app.stop(grace_seconds=0)

    with capture_logs() as logs:
        asyncio.run(scenario())
    return [line for line in logs if line["log_level"] == "warning"]


def test_an_idempotency_ttl_shorter_than_the_longest_hold_is_refused() -> None:
    with pytest.raises(ValidationError) as refused:
        Settings(idempotency_ttl_seconds=3600, hold_max_ttl_seconds=7200)
    assert [error["msg"] for error in refused.value.errors()] == [f"Value error, {TTL_REFUSED}"]
    # As long as the longest hold is enough.
    assert Settings(idempotency_ttl_seconds=7200, hold_max_ttl_seconds=7200).idempotency_ttl_seconds == 7200


@pytest.mark.parametrize("policy", ["allkeys-lru", "allkeys-lfu", "allkeys-random"])
def test_a_redis_that_may_evict_any_key_is_refused_at_start(tmp_path: Path, policy: str) -> None:
    for redis_server in redis_with(tmp_path, "--maxmemory-policy", policy):
        with pytest.raises(FailedPrecondition) as refused:
            start_and_stop(server_settings(redis_server.url, tmp_path))
        assert refused.value.message == allkeys_refused(policy)
        assert (refused.value.field, refused.value.reason) == ("maxmemory-policy", "REDIS_MAY_EVICT_BALANCES")


@pytest.mark.parametrize("policy", ["volatile-lru", "volatile-lfu", "volatile-random", "volatile-ttl"])
def test_a_redis_that_evicts_remembered_answers_starts_with_a_warning(tmp_path: Path, policy: str) -> None:
    for redis_server in redis_with(tmp_path, "--maxmemory-policy", policy):
        warnings = start_and_stop(server_settings(redis_server.url, tmp_path))
        assert [(line["event"], line["policy"]) for line in warnings] == [("redis_evicts_remembered_answers", policy)]


def test_noeviction_starts_without_a_warning(redis_server: RedisServer, tmp_path: Path) -> None:
    assert start_and_stop(server_settings(redis_server.url, tmp_path)) == []


def test_a_redis_without_config_starts_with_a_warning_that_the_policy_is_unchecked(tmp_path: Path) -> None:
    for redis_server in redis_with(tmp_path, "--maxmemory-policy", "allkeys-lru", "--rename-command", "CONFIG", ""):
        warnings = start_and_stop(server_settings(redis_server.url, tmp_path))
        assert [line["event"] for line in warnings] == ["redis_eviction_policy_unchecked"]
        assert "unknown command" in warnings[0]["error"].lower()


def test_the_embedded_redis_does_not_evict(tmp_path: Path) -> None:
    policies: list[dict[str | None, str | None]] = []

    async def read_policy(app: App) -> None:
        assert app.embedded_redis is not None
        policies.append(await app.redis.config_get("maxmemory-policy"))

    settings = server_settings("", tmp_path).model_copy(update={"redis_url": None})
    assert start_and_stop(settings, read_policy) == []
    assert policies == [{"maxmemory-policy": "noeviction"}]


def serve(env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "creditgate.server", "serve"],
        env={
            **os.environ,
            "CREDITGATE_LISTEN": "127.0.0.1:0",
            "CREDITGATE_DATA_DIR": str(tmp_path / "data"),
            "CREDITGATE_FLUSHER_PROCESS": "false",
            "COLUMNS": "200",
            **env,
        },
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    result.stdout = " ".join(result.stdout.split())  # rich wraps long lines
    return result


def test_serve_exits_with_the_reason_for_a_short_idempotency_ttl(redis_server: RedisServer, tmp_path: Path) -> None:
    env = {
        "CREDITGATE_REDIS_URL": redis_server.url,
        "CREDITGATE_IDEMPOTENCY_TTL_SECONDS": "3600",
        "CREDITGATE_HOLD_MAX_TTL_SECONDS": "7200",
    }
    result = serve(env, tmp_path)
    assert result.returncode == 2
    assert result.stdout == f"creditgate cannot start: {TTL_REFUSED}"


def test_serve_exits_with_the_reason_for_an_allkeys_redis(allkeys_lru_redis: RedisServer, tmp_path: Path) -> None:
    result = serve({"CREDITGATE_REDIS_URL": allkeys_lru_redis.url}, tmp_path)
    assert result.returncode == 2
    assert f"creditgate cannot start: {allkeys_refused('allkeys-lru')}" in result.stdout

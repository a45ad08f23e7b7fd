"""API keys: each service asks for its scope, refusals are UNAUTHENTICATED / PERMISSION_DENIED with an ErrorInfo
and counted; health and reflection stay open; without keys only a loopback address is served."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis
from creditgate.server.api.auth import hash_key, is_loopback, new_key
from creditgate.server.app import build_app
from creditgate.server.clock import ManualClock, to_ms
from creditgate.server.errors import FailedPrecondition
from creditgate.server.settings import ApiKey, Settings
from creditgate.v1 import admin_pb2, metering_pb2
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status
from harness import JAN_1, REPO, RedisServer, RunningServer, server_settings

METERING_KEY, ADMIN_KEY, BOTH_KEY = new_key(), new_key(), new_key()
KEYS = (
    ApiKey.model_validate({"name": "app", "sha256": hash_key(METERING_KEY), "scopes": ["metering"]}),
    ApiKey.model_validate({"name": "ops", "sha256": hash_key(ADMIN_KEY), "scopes": ["admin"]}),
    ApiKey.model_validate({"name": "both", "sha256": hash_key(BOTH_KEY), "scopes": ["metering", "admin"]}),
)
Code = grpc.StatusCode
Metadata = tuple[tuple[str, str], ...]


def settings(redis_server: RedisServer, tmp_path: Path, **overrides: Any) -> Settings:
    return server_settings(redis_server.url, tmp_path, **overrides)


@pytest.fixture
def guarded(redis_server: RedisServer, tmp_path: Path) -> Iterator[RunningServer]:
    redis.Redis.from_url(redis_server.url).flushall()
    keys_file = tmp_path / "keys.json"
    keys_file.write_text(json.dumps([KEYS[2].model_dump(mode="json")]))
    running = RunningServer(
        settings(redis_server, tmp_path, api_keys=KEYS[:2], api_keys_file=keys_file), ManualClock(to_ms(JAN_1))
    )
    running.admin.CreateCustomer(admin_pb2.CreateCustomerRequest(customer_id="acme"), metadata=bearer(ADMIN_KEY))
    running.admin.TopUp(
        admin_pb2.TopUpRequest(customer_id="acme", credits=7, request_id="seven"), metadata=bearer(ADMIN_KEY)
    )
    yield running
    running.stop()


def balance(server: RunningServer, metadata: Metadata) -> Any:
    return server.metering.GetBalance(metering_pb2.GetBalanceRequest(customer_id="acme"), metadata=metadata)


def customer(server: RunningServer, metadata: Metadata) -> Any:
    return server.admin.GetCustomer(admin_pb2.GetCustomerRequest(customer_id="acme"), metadata=metadata)


def bearer(key: str) -> Metadata:
    return (("authorization", f"Bearer {key}"),)


# (case, call, metadata, status code, ErrorInfo reason; "" when the call succeeds)
CASES = [
    ("no key, metering", balance, (), Code.UNAUTHENTICATED, "API_KEY_MISSING"),
    ("no key, admin", customer, (), Code.UNAUTHENTICATED, "API_KEY_MISSING"),
    ("unknown key", balance, bearer(new_key()), Code.UNAUTHENTICATED, "API_KEY_INVALID"),
    ("key without Bearer", balance, (("authorization", METERING_KEY),), Code.UNAUTHENTICATED, "API_KEY_INVALID"),
    ("Basic scheme", balance, (("authorization", f"Basic {METERING_KEY}"),), Code.UNAUTHENTICATED, "API_KEY_INVALID"),
    ("the hash as the key", balance, bearer(KEYS[0].sha256), Code.UNAUTHENTICATED, "API_KEY_INVALID"),
    ("metering key on admin", customer, bearer(METERING_KEY), Code.PERMISSION_DENIED, "API_KEY_SCOPE"),
    ("admin key on metering", balance, bearer(ADMIN_KEY), Code.PERMISSION_DENIED, "API_KEY_SCOPE"),
    ("metering key on metering", balance, bearer(METERING_KEY), Code.OK, ""),
    ("lower-case bearer", balance, (("authorization", f"bearer {METERING_KEY}"),), Code.OK, ""),
    ("admin key on admin", customer, bearer(ADMIN_KEY), Code.OK, ""),
    ("key from the keys file", customer, bearer(BOTH_KEY), Code.OK, ""),
]


@pytest.mark.parametrize(("case", "call", "metadata", "code", "reason"), CASES, ids=[case[0] for case in CASES])
def test_each_service_needs_a_key_with_its_scope(
    guarded: RunningServer, case: str, call: Any, metadata: Metadata, code: Code, reason: str
) -> None:
    if code == Code.OK:
        answer = call(guarded, metadata)
        # The call got through to acme: its 7 credits, or its record.
        assert (answer.available_credits if call is balance else answer.customer.customer_id) == (
            7 if call is balance else "acme"
        )
        return
    with pytest.raises(grpc.RpcError) as raised:
        call(guarded, metadata)
    assert raised.value.code() == code
    status = rpc_status.from_call(raised.value)  # type: ignore[arg-type]  # a failed call's error is also its Call
    assert status is not None
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    assert (info.reason, info.metadata["field"]) == (reason, "authorization")


def test_refusals_are_counted_by_reason(guarded: RunningServer) -> None:
    for call, metadata in ((customer, ()), (balance, ()), (customer, bearer(new_key())), (balance, bearer(ADMIN_KEY))):
        with pytest.raises(grpc.RpcError):
            call(guarded, metadata)
    registry = guarded.app.metrics.registry
    counted = {
        reason: registry.get_sample_value("creditgate_auth_failures_total", {"reason": reason})
        for reason in ("api_key_missing", "api_key_invalid", "api_key_scope")
    }
    assert counted == {"api_key_missing": 2.0, "api_key_invalid": 1.0, "api_key_scope": 1.0}


def test_health_and_reflection_need_no_key(guarded: RunningServer) -> None:
    health = health_pb2_grpc.HealthStub(guarded.channel)
    assert health.Check(health_pb2.HealthCheckRequest()).status == health_pb2.HealthCheckResponse.SERVING
    reflection = reflection_pb2_grpc.ServerReflectionStub(guarded.channel)
    answers = list(reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
    services = {service.name for service in answers[0].list_services_response.service}
    assert {"creditgate.v1.MeteringService", "creditgate.v1.AdminService", "grpc.health.v1.Health"} <= services


@pytest.mark.parametrize(
    ("listen", "loopback"),
    [
        ("127.0.0.1:50051", True),
        ("127.8.9.10:1", True),
        ("localhost:50051", True),
        ("[::1]:50051", True),
        ("0.0.0.0:50051", False),
        ("[::]:50051", False),
        ("10.0.0.7:50051", False),
        ("creditgate.internal:50051", False),
    ],
)
def test_loopback_addresses(listen: str, loopback: bool) -> None:
    assert is_loopback(listen) is loopback


def test_no_keys_on_a_public_address_refuses_to_build(redis_server: RedisServer, tmp_path: Path) -> None:
    with pytest.raises(FailedPrecondition, match=r"refusing to listen on 0\.0\.0\.0:0 without API keys"):
        build_app(settings(redis_server, tmp_path, listen="0.0.0.0:0"))


def test_serve_on_a_public_address_without_keys_exits_with_the_reason(redis_server: RedisServer) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "creditgate.server", "serve"],
        env={
            **os.environ,
            "CREDITGATE_LISTEN": "0.0.0.0:0",
            "CREDITGATE_REDIS_URL": redis_server.url,
            "COLUMNS": "200",
        },
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert result.returncode == 2
    assert "creditgate cannot start: refusing to listen on 0.0.0.0:0 without API keys" in result.stdout


def test_keys_new_prints_a_key_and_the_entry_with_its_hash() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "creditgate.server", "keys", "new", "--scope", "metering", "--name", "web"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    key_line, entry_line = result.stdout.splitlines()
    key = key_line.removeprefix("key:").strip()
    entry = json.loads(entry_line.removeprefix("entry:"))
    assert entry == {"name": "web", "sha256": hash_key(key), "scopes": ["metering"]}
    assert key.startswith("cg_") and len(key) == 46

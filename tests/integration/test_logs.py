"""JSON logs: one line per RPC (every RPC with log_calls=all, failed ones by default) carrying its request_id and
customer_id, and never a credential."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis
import structlog
from creditgate.server.api.auth import hash_key, new_key
from creditgate.server.clock import ManualClock, to_ms
from creditgate.server.logs import configure
from creditgate.server.settings import ApiKey, Settings
from creditgate.v1 import admin_pb2, metering_pb2
from harness import APOLLO, JAN_1, RedisServer, RunningServer

KEY, WRONG_KEY = new_key(), new_key()


@pytest.fixture(params=["all"])
def logged(
    request: pytest.FixtureRequest, redis_server: RedisServer, tmp_path: Path
) -> Iterator[tuple[RunningServer, io.StringIO]]:
    redis.Redis.from_url(redis_server.url).flushall()
    output = io.StringIO()
    configure("json")
    structlog.configure(logger_factory=structlog.WriteLoggerFactory(file=output))
    settings = Settings(
        listen="127.0.0.1:0",
        redis_url=redis_server.url,
        database_url=f"sqlite:///{tmp_path / 'ledger.db'}",
        catalog=APOLLO,
        data_dir=tmp_path,
        flush_interval_seconds=60,
        log_calls=request.param,
        api_keys=(ApiKey.model_validate({"name": "app", "sha256": hash_key(KEY), "scopes": ["metering", "admin"]}),),
    )
    running = RunningServer(settings, ManualClock(to_ms(JAN_1)))
    try:
        yield running, output
    finally:
        running.stop()
        structlog.reset_defaults()


def rpc_lines(output: io.StringIO) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in output.getvalue().splitlines()]
    return [line for line in lines if line["event"] == "rpc"]


def test_each_rpc_logs_one_json_line_with_its_ids_and_no_secret(logged: tuple[RunningServer, io.StringIO]) -> None:
    server, output = logged
    auth = (("authorization", f"Bearer {KEY}"),)
    server.admin.CreateCustomer(admin_pb2.CreateCustomerRequest(customer_id="acme"), metadata=auth)
    server.admin.CreateSubscription(
        admin_pb2.CreateSubscriptionRequest(customer_id="acme", plan="basic"),
        metadata=(*auth, ("x-request-id", "trace-7")),
    )
    server.metering.CheckAndDebit(
        metering_pb2.CheckAndDebitRequest(customer_id="acme", feature="email_unlock", request_id="order-42"),
        metadata=auth,
    )
    with pytest.raises(grpc.RpcError):
        server.metering.GetBalance(
            metering_pb2.GetBalanceRequest(customer_id="acme"), metadata=(("authorization", f"Bearer {WRONG_KEY}"),)
        )

    deadline = time.monotonic() + 10
    while len(rpc_lines(output)) < 4 and time.monotonic() < deadline:
        time.sleep(0.01)  # the server logs a refused call just after the client has its answer
    lines = rpc_lines(output)
    assert [(line["rpc"], line["code"], line["customer_id"]) for line in lines] == [
        ("CreateCustomer", "OK", "acme"),
        ("CreateSubscription", "OK", "acme"),
        ("CheckAndDebit", "OK", "acme"),
        ("GetBalance", "UNAUTHENTICATED", ""),  # refused before its request is read
    ]
    assert lines[1]["request_id"] == "trace-7"  # from x-request-id when the message has none
    assert lines[2]["request_id"] == "order-42"
    assert (lines[2]["feature"], lines[2]["outcome"]) == ("email_unlock", "allowed")
    assert lines[3]["error_reason"] == "API_KEY_INVALID"
    assert all(line["request_id"] for line in lines)
    text = output.getvalue()
    for secret in (KEY, WRONG_KEY, "authorization", "Bearer"):
        assert secret not in text


@pytest.mark.parametrize("logged", ["errors"], indirect=True)
def test_by_default_only_failed_calls_are_logged(logged: tuple[RunningServer, io.StringIO]) -> None:
    server, output = logged
    auth = (("authorization", f"Bearer {KEY}"),)
    server.admin.CreateCustomer(admin_pb2.CreateCustomerRequest(customer_id="acme"), metadata=auth)
    server.metering.CheckAndDebit(
        metering_pb2.CheckAndDebitRequest(customer_id="acme", feature="email_unlock", request_id="order-1"),
        metadata=auth,
    )
    with pytest.raises(grpc.RpcError):
        server.metering.CheckAndDebit(
            metering_pb2.CheckAndDebitRequest(customer_id="nobody", feature="email_unlock", request_id="order-2"),
            metadata=auth,
        )
    with pytest.raises(grpc.RpcError):
        server.metering.GetBalance(metering_pb2.GetBalanceRequest(customer_id="acme"), metadata=())

    deadline = time.monotonic() + 10
    while len(rpc_lines(output)) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)  # a line for the successful calls would have been written by now
    lines = rpc_lines(output)
    assert [(line["rpc"], line["code"], line["customer_id"], line.get("error_reason")) for line in lines] == [
        ("CheckAndDebit", "NOT_FOUND", "nobody", "CUSTOMER_NOT_FOUND"),
        ("GetBalance", "UNAUTHENTICATED", "", "API_KEY_MISSING"),
    ]
    assert lines[0]["request_id"] == "order-2"

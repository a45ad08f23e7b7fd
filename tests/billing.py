"""What the billing tests share: a server with its own settings and catalog, and reading ErrorInfo."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
from creditgate.v1 import admin_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from harness import APOLLO, JAN_1, REPO, Database, RedisServer, RunningServer, start_server

FIXTURES = REPO / "tests" / "fixtures"


@contextmanager
def billing_server(
    redis_server: RedisServer, database: Database, tmp_path: Path, catalog: Path = APOLLO, **settings: Any
) -> Iterator[RunningServer]:
    """A fresh real server on an empty Redis and the test's `database`, its ManualClock at 2027-01-01."""
    running = start_server(
        redis_server.url,
        tmp_path,
        catalog=catalog,
        **database.settings,
        health_probe_interval_seconds=300,  # the probe stays asleep: its first round is at start
        **settings,
    )
    try:
        yield running
    finally:
        running.stop()


def error_reason(error: grpc.RpcError) -> tuple[grpc.StatusCode, str]:
    """The status code and the ErrorInfo reason of a failed call."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    return error.code(), info.reason


def invoice_once(server: RunningServer) -> int:
    """One round of the invoicer after the outbox is drained (the flusher's loop does that in production)."""
    assert server.app.invoicer is not None
    server.flush()
    return server.call(server.app.invoicer.invoice_once())


def a_month_of_professional(server: RunningServer) -> None:
    """4,600 credits spent with 4,000 granted (600 overage), then a Starter pack, then 100 of its credits."""
    server.create_customer("acme", "professional", start=JAN_1)
    server.clock.set(datetime(2027, 1, 5, tzinfo=UTC))
    decision = server.debit("acme", "email_unlock", 4600)
    assert (decision.credits_charged, decision.overage_credits) == (4000, 600)
    server.clock.set(datetime(2027, 1, 15, tzinfo=UTC))
    server.admin.TopUp(admin_pb2.TopUpRequest(customer_id="acme", package="starter", request_id="starter-1"))
    server.clock.set(datetime(2027, 1, 20, tzinfo=UTC))
    assert server.debit("acme", "mobile_unlock", 10, quality="verified").credits_charged == 100

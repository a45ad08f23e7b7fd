"""What the billing tests share: a server with its own settings and catalog, and reading ErrorInfo."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import redis
from creditgate.server.clock import ManualClock, to_ms
from creditgate.server.settings import Settings
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from harness import APOLLO, JAN_1, REPO, RedisServer, RunningServer

FIXTURES = REPO / "tests" / "fixtures"


@contextmanager
def billing_server(
    redis_server: RedisServer, tmp_path: Path, catalog: Path = APOLLO, **settings: Any
) -> Iterator[RunningServer]:
    """A fresh real server on an empty Redis and SQLite, its ManualClock at 2027-01-01."""
    redis.Redis.from_url(redis_server.url).flushall()
    running = RunningServer(
        Settings(
            listen="127.0.0.1:0",
            redis_url=redis_server.url,
            database_url=f"sqlite:///{tmp_path / 'ledger.db'}",
            catalog=catalog,
            data_dir=tmp_path,
            flush_interval_seconds=60,
            # The probe stays asleep: its first round is at start.
            health_probe_interval_seconds=300,
            **settings,
        ),
        ManualClock(to_ms(JAN_1)),
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

"""What the billing tests share: a server with its own settings and catalog, and reading ErrorInfo."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from harness import APOLLO, REPO, RedisServer, RunningServer, start_server

FIXTURES = REPO / "tests" / "fixtures"


@contextmanager
def billing_server(
    redis_server: RedisServer, tmp_path: Path, catalog: Path = APOLLO, **settings: Any
) -> Iterator[RunningServer]:
    """A fresh real server on an empty Redis and SQLite, its ManualClock at 2027-01-01."""
    running = start_server(
        redis_server.url,
        tmp_path,
        catalog=catalog,
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

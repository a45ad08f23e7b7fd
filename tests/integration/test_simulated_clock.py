"""The simulated clock: AdvanceClock moves the server's time (and with it credit periods); a real clock refuses."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from billing import billing_server, error_reason
from creditgate.v1 import admin_pb2
from harness import JAN_1, Database, RedisServer, RunningServer

DAY = 86_400


def test_advance_clock_moves_time_and_opens_the_next_credit_period(
    redis_server: RedisServer, database: Database, tmp_path: Path
) -> None:
    with billing_server(redis_server, database, tmp_path, clock="simulated") as server:
        server.create_customer("acme", "basic", start=JAN_1)
        server.debit("acme", "email_unlock", 100)

        moved = server.admin.AdvanceClock(admin_pb2.AdvanceClockRequest(seconds=31 * DAY))

        assert moved.now.ToMilliseconds() == server.clock.now_ms()
        assert moved.now.ToDatetime().isoformat() == "2027-02-01T00:00:00"
        # January's 2,400 left expired at Feb 1; February's 2,500 were granted.
        assert server.available("acme") == 2500
        kinds = [(entry.kind, entry.credits_delta) for entry in server.ledger("acme")]
        assert kinds == [
            (admin_pb2.LEDGER_ENTRY_KIND_GRANT, 2500),
            (admin_pb2.LEDGER_ENTRY_KIND_DEBIT, -100),
            (admin_pb2.LEDGER_ENTRY_KIND_EXPIRY, -2400),
            (admin_pb2.LEDGER_ENTRY_KIND_GRANT, 2500),
        ]


@pytest.mark.parametrize("seconds", [0, -5, 100 * 365 * DAY + 1])
def test_advance_clock_refuses_a_move_out_of_range(
    redis_server: RedisServer, database: Database, tmp_path: Path, seconds: int
) -> None:
    with billing_server(redis_server, database, tmp_path, clock="simulated") as server:
        before = server.clock.now_ms()
        with pytest.raises(grpc.RpcError) as raised:
            server.admin.AdvanceClock(admin_pb2.AdvanceClockRequest(seconds=seconds))
        assert error_reason(raised.value) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT")
        assert server.clock.now_ms() == before


def test_a_real_clock_refuses_to_move(server: RunningServer) -> None:
    before = server.clock.now_ms()
    with pytest.raises(grpc.RpcError) as raised:
        server.admin.AdvanceClock(admin_pb2.AdvanceClockRequest(seconds=60))
    assert error_reason(raised.value) == (grpc.StatusCode.FAILED_PRECONDITION, "CLOCK_NOT_SIMULATED")
    assert server.clock.now_ms() == before

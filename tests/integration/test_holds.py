"""Reserve / Commit / Release: two-phase holds against the real server and Redis."""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, timedelta

import grpc
import pytest
from creditgate.v1 import admin_pb2, metering_pb2
from google.protobuf.duration_pb2 import Duration
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from harness import RunningServer

pytestmark = [pytest.mark.cluster_too, pytest.mark.postgres_too]


def reserve(
    server: RunningServer, customer_id: str, feature: str, quantity: int, ttl_seconds: int = 300, **dimensions: str
) -> metering_pb2.ReserveResponse:
    response: metering_pb2.ReserveResponse = server.metering.Reserve(
        metering_pb2.ReserveRequest(
            customer_id=customer_id,
            feature=feature,
            quantity=quantity,
            dimensions=dimensions,
            ttl=Duration(seconds=ttl_seconds),
            request_id=str(uuid.uuid4()),
        )
    )
    return response


def commit(
    server: RunningServer, reservation_id: str, quantity: int | None = None, request_id: str = ""
) -> metering_pb2.CommitResponse:
    request = metering_pb2.CommitRequest(reservation_id=reservation_id, request_id=request_id)
    if quantity is not None:
        request.quantity = quantity
    response: metering_pb2.CommitResponse = server.metering.Commit(request)
    return response


def release(server: RunningServer, reservation_id: str, request_id: str = "") -> metering_pb2.ReleaseResponse:
    response: metering_pb2.ReleaseResponse = server.metering.Release(
        metering_pb2.ReleaseRequest(reservation_id=reservation_id, request_id=request_id)
    )
    return response


def wallet(server: RunningServer, customer_id: str) -> tuple[int, int]:
    balance = server.metering.GetBalance(metering_pb2.GetBalanceRequest(customer_id=customer_id))
    return balance.available_credits, balance.reserved_credits


def error_reason(error: grpc.RpcError) -> str:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]  # a failed call's error is also its Call
    assert status is not None
    info = error_details_pb2.ErrorInfo()
    status.details[0].Unpack(info)
    return str(info.reason)


def assert_ledger_matches(server: RunningServer, customer_id: str) -> list[admin_pb2.LedgerEntry]:
    entries = server.ledger(customer_id)
    available, reserved = wallet(server, customer_id)
    assert sum(entry.credits_delta for entry in entries) == available
    assert sum(entry.reserved_delta for entry in entries) == reserved
    return entries


def test_partial_commit_charges_what_was_used_and_returns_the_rest(server: RunningServer) -> None:
    server.create_customer("enrich", plan="basic")
    hold = reserve(server, "enrich", "api_enrichment", 500)
    assert (hold.allowed, hold.credits_reserved, hold.balance_after) == (True, 500, 2000)
    assert hold.reservation_id == "enrich/h1"
    assert hold.expires_at.ToDatetime(tzinfo=UTC) == server.clock_now() + timedelta(seconds=300)
    assert wallet(server, "enrich") == (2000, 500)

    settled = commit(server, hold.reservation_id, 320)
    assert (settled.credits_charged, settled.credits_released, settled.balance_after) == (320, 180, 2180)
    assert wallet(server, "enrich") == (2180, 0)
    kinds = [admin_pb2.LedgerEntryKind.Name(e.kind) for e in assert_ledger_matches(server, "enrich")]
    assert kinds == ["LEDGER_ENTRY_KIND_GRANT", "LEDGER_ENTRY_KIND_RESERVE", "LEDGER_ENTRY_KIND_COMMIT"]


def test_a_hold_settles_once_and_retries_get_the_first_answer(server: RunningServer) -> None:
    server.create_customer("once", plan="basic")
    committed = reserve(server, "once", "email_unlock", 10).reservation_id
    released = reserve(server, "once", "email_unlock", 10).reservation_id
    first = commit(server, committed, request_id="c-1")
    assert commit(server, committed, request_id="c-1") == first
    assert release(server, released, request_id="r-1") == release(server, released, request_id="r-1")
    cases: list[tuple[Callable[[], object], str]] = [
        (lambda: commit(server, committed), "RESERVATION_ALREADY_COMMITTED"),
        (lambda: release(server, committed), "RESERVATION_ALREADY_COMMITTED"),
        (lambda: commit(server, released), "RESERVATION_ALREADY_RELEASED"),
        (lambda: release(server, released), "RESERVATION_ALREADY_RELEASED"),
    ]
    for call, reason in cases:
        with pytest.raises(grpc.RpcError) as raised:
            call()
        assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert error_reason(raised.value) == reason
    assert wallet(server, "once") == (2490, 0)


def test_commit_of_more_than_reserved_is_refused_and_changes_nothing(server: RunningServer) -> None:
    server.create_customer("greedy", plan="basic")
    hold = reserve(server, "greedy", "email_unlock", 10)
    with pytest.raises(grpc.RpcError) as raised:
        commit(server, hold.reservation_id, 11)
    assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_reason(raised.value) == "QUANTITY_EXCEEDS_RESERVATION"
    assert wallet(server, "greedy") == (2490, 10)
    assert commit(server, hold.reservation_id).credits_charged == 10


def test_held_free_units_and_cap_usage_are_free_again_after_release(server: RunningServer) -> None:
    server.create_customer("units", plan="basic")
    hold = reserve(server, "units", "contact_export", 40)
    assert (hold.free_units_reserved, hold.credits_reserved) == (40, 0)
    check = server.metering.CheckEntitlement(
        metering_pb2.CheckEntitlementRequest(customer_id="units", feature="contact_export", quantity=20)
    )
    assert (check.free_units_remaining, check.credits_to_charge) == (10, 10)
    capped = reserve(server, "units", "email_send", 250, mailbox="m1")
    assert not server.debit("units", "email_send", mailbox="m1").allowed
    release(server, hold.reservation_id)
    release(server, capped.reservation_id)
    assert server.debit("units", "contact_export", quantity=50).credits_charged == 0
    assert server.debit("units", "email_send", quantity=250, mailbox="m1").allowed


def test_credits_returned_to_a_bucket_that_expired_meanwhile_expire(server: RunningServer) -> None:
    server.create_customer("late", plan="basic")
    server.admin.AdjustCredits(
        admin_pb2.AdjustCreditsRequest(customer_id="late", delta=-2500, reason="drain the grant", request_id="adj")
    )
    server.admin.TopUp(admin_pb2.TopUpRequest(customer_id="late", credits=100, expires_in_days=1, request_id="t1"))
    server.clock.advance(12 * 3600)
    hold = reserve(server, "late", "email_unlock", 60, ttl_seconds=86400)
    server.clock.advance(18 * 3600)
    settled = commit(server, hold.reservation_id, 20)
    assert (settled.credits_charged, settled.credits_released, settled.balance_after) == (20, 40, 0)
    entries = assert_ledger_matches(server, "late")
    expiries = [e.credits_delta for e in entries if e.kind == admin_pb2.LEDGER_ENTRY_KIND_EXPIRY]
    assert expiries == [-40, -40]


@pytest.mark.slow
def test_1000_abandoned_holds_return_their_credits_within_ttl_plus_1_second(server: RunningServer) -> None:
    server.create_customer("abandon", plan="basic")
    holds = [reserve(server, "abandon", "email_unlock", 1, ttl_seconds=2) for _ in range(1000)]
    assert wallet(server, "abandon") == (1500, 1000)
    server.clock.advance(2 - 0.001)
    time.sleep(1.2)  # two sweeper rounds: nothing is due yet, so nothing may be released
    assert wallet(server, "abandon") == (1500, 1000)

    server.clock.advance(0.001)
    deadline = time.monotonic() + 1.0
    while server.reserved_in_redis("abandon") != 0:
        assert time.monotonic() < deadline, "the sweeper did not release every hold within 1 s"
        time.sleep(0.02)
    assert wallet(server, "abandon") == (2500, 0)
    with pytest.raises(grpc.RpcError) as raised:
        commit(server, holds[0].reservation_id)
    assert error_reason(raised.value) == "RESERVATION_EXPIRED"
    entries = assert_ledger_matches(server, "abandon")
    assert sum(e.kind == admin_pb2.LEDGER_ENTRY_KIND_RESERVATION_EXPIRY for e in entries) == 1000


@pytest.mark.slow
def test_10000_partial_commits_change_the_balance_by_exactly_the_committed_amount(server: RunningServer) -> None:
    server.create_customer("partial", plan="basic")
    server.admin.TopUp(admin_pb2.TopUpRequest(customer_id="partial", package="pro", request_id="pro-1"))
    server.admin.TopUp(admin_pb2.TopUpRequest(customer_id="partial", credits=10**8, request_id="big-1"))
    rng = random.Random(20261126)
    features = [("email_unlock", 1, {}), ("mobile_unlock", 10, {"quality": "verified"}), ("phone_reveal", 10, {})]
    with ThreadPoolExecutor(8) as pool:

        def one_case(_: int) -> tuple[int, int]:
            feature, unit_cost, dimensions = rng.choice(features)
            reserved = rng.randint(1, 1000)
            used = rng.randint(0, reserved)
            hold = reserve(server, "partial", feature, reserved, 300, **dimensions)
            settled = commit(server, hold.reservation_id, used)
            assert (settled.credits_charged, settled.credits_released) == (
                used * unit_cost,
                (reserved - used) * unit_cost,
            )
            return used * unit_cost, settled.credits_charged

        results = list(pool.map(one_case, range(10_000)))
    before = 2500 + 20_000 + 10**8
    assert wallet(server, "partial") == (before - sum(expected for expected, _ in results), 0)
    assert_ledger_matches(server, "partial")


@pytest.mark.slow
def test_64_clients_mixing_holds_and_debits_never_overspend(server: RunningServer) -> None:
    server.create_customer("mixed", plan="basic")
    rng = random.Random(7)
    lowest = [2500]

    def client(seed: int) -> None:
        local = random.Random(seed)
        for _ in range(40):
            action = local.choice(["debit", "hold-commit", "hold-release", "hold-partial"])
            if action == "debit":
                response = server.debit("mixed", "email_unlock", quantity=local.randint(1, 20))
                lowest[0] = min(lowest[0], response.balance_after)
                continue
            hold = reserve(server, "mixed", "email_unlock", local.randint(1, 20))
            lowest[0] = min(lowest[0], hold.balance_after)
            if not hold.allowed:
                continue
            if action == "hold-release":
                release(server, hold.reservation_id)
            else:
                quantity = None if action == "hold-commit" else local.randint(0, hold.credits_reserved)
                lowest[0] = min(lowest[0], commit(server, hold.reservation_id, quantity).balance_after)

    with ThreadPoolExecutor(64) as pool:
        list(pool.map(client, [rng.randint(0, 10**9) for _ in range(64)]))
    available, reserved = wallet(server, "mixed")
    assert lowest[0] >= 0
    assert available >= 0
    assert reserved == 0
    entries = assert_ledger_matches(server, "mixed")
    charged = -sum(e.credits_delta for e in entries if e.kind == admin_pb2.LEDGER_ENTRY_KIND_DEBIT)
    committed = sum(
        -(e.credits_delta + e.reserved_delta) for e in entries if e.kind == admin_pb2.LEDGER_ENTRY_KIND_COMMIT
    )
    assert charged + committed == 2500 - available

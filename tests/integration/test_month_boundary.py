"""Credit periods with an injected clock: the month's last decision and the next month's first."""

from __future__ import annotations

from datetime import timedelta

import pytest
from creditgate.server.clock import to_ms
from creditgate.server.engine.model import DebitRequest
from creditgate.v1 import admin_pb2, metering_pb2
from harness import JAN_1, RunningServer

pytestmark = [pytest.mark.cluster_too, pytest.mark.postgres_too]

FEB_1 = JAN_1.replace(month=2)
MAR_1 = JAN_1.replace(month=3)


def buckets(server: RunningServer, customer_id: str) -> list[tuple[str, int, int]]:
    response = server.metering.GetBalance(metering_pb2.GetBalanceRequest(customer_id=customer_id))
    return [(b.id, b.remaining_credits, b.expires_at.ToMilliseconds()) for b in response.buckets]


def test_last_decision_of_january_and_first_of_february_see_their_own_grant(server: RunningServer) -> None:
    server.create_customer("monthly", plan="basic")
    server.debit("monthly", "contact_export", quantity=50)
    server.debit("monthly", "email_enrichment", quantity=50)
    assert buckets(server, "monthly") == [("b1", 2400, to_ms(FEB_1))]

    server.clock.set(FEB_1 - timedelta(milliseconds=1))
    last_of_january = server.debit("monthly", "email_unlock")
    assert (last_of_january.balance_after, last_of_january.entry_id) == (2399, "monthly/4")
    assert buckets(server, "monthly") == [("b1", 2399, to_ms(FEB_1))]

    server.clock.set(FEB_1)
    first_of_february = server.debit("monthly", "contact_export", quantity=1)
    assert (first_of_february.credits_charged, first_of_february.free_units_used) == (0, 1)
    assert first_of_february.balance_after == 2500
    assert buckets(server, "monthly") == [("b2", 2500, to_ms(MAR_1))]

    ledger = server.ledger("monthly")
    summary = [
        (
            admin_pb2.LedgerEntryKind.Name(e.kind),
            e.credits_delta,
            e.bucket_id,
            e.create_time.ToDatetime(tzinfo=FEB_1.tzinfo),
        )
        for e in ledger
    ]
    assert summary[-3:] == [
        ("LEDGER_ENTRY_KIND_EXPIRY", -2399, "b1", FEB_1),
        ("LEDGER_ENTRY_KIND_GRANT", 2500, "b2", FEB_1),
        ("LEDGER_ENTRY_KIND_DEBIT", 0, "", FEB_1),
    ]
    assert sum(entry.credits_delta for entry in ledger) == 2500


def test_purchased_credits_outlive_the_month_and_idle_months_are_each_granted_and_expired(
    server: RunningServer,
) -> None:
    server.create_customer("idle", plan="basic")
    server.admin.TopUp(admin_pb2.TopUpRequest(customer_id="idle", package="starter", request_id="pack-1"))
    server.clock.set(JAN_1.replace(month=4, day=15))
    assert server.available("idle") == 3500
    kinds = [(admin_pb2.LedgerEntryKind.Name(e.kind), e.credits_delta) for e in server.ledger("idle")]
    assert kinds == [
        ("LEDGER_ENTRY_KIND_GRANT", 2500),
        ("LEDGER_ENTRY_KIND_TOP_UP", 1000),
        *[("LEDGER_ENTRY_KIND_EXPIRY", -2500), ("LEDGER_ENTRY_KIND_GRANT", 2500)] * 3,
    ]


def test_a_subscription_starting_later_grants_nothing_until_it_starts(server: RunningServer) -> None:
    server.create_customer("later", plan="basic", start=FEB_1)
    denied = server.debit("later", "email_unlock")
    assert (denied.allowed, denied.deny_reason) == (False, metering_pb2.DENY_REASON_NO_ACTIVE_SUBSCRIPTION)
    assert server.available("later") == 0
    server.clock.set(FEB_1)
    assert server.debit("later", "email_unlock").balance_after == 2499


def test_a_decision_that_read_its_clock_before_a_rollover_lands_in_the_period_it_was_counted_in(
    server: RunningServer,
) -> None:
    """The server reads its clock, then the call waits for Redis; meanwhile another call opens February. The late
    call is counted in February's usage, so its entry is February's too (never January's, being invoiced)."""
    server.create_customer("late", "basic")
    feb_1 = to_ms(JAN_1 + timedelta(days=31))
    server.clock.set(JAN_1 + timedelta(days=31, seconds=1))
    server.debit("late", "contact_export", 10)  # opens February: 10 of its 50 free exports used
    decisions, state = server.app.decisions, server.app.holds._state
    request = DebitRequest("late", "contact_export", 45, {}, "read-in-january")
    read_in_january = feb_1 - 1
    keys, args = decisions._decide_call(request, state.rules, read_in_january)
    answer = server.call(state.run_touching("decide", "late", keys, args, read_in_january))
    assert (answer.status, answer["allowed"]) == ("ok", 1)
    entries = server.ledger("late")
    assert [(e.entry_id, e.create_time.ToMilliseconds()) for e in entries[-2:]] == [
        ("late/4", feb_1 + 1000),
        ("late/5", feb_1),
    ]
    # Counted once, in February: 5 of the 45 were beyond February's 50 free units.
    assert entries[-1].credits_delta == -5
    january = server.call(server.app.store.ledger_between("late", to_ms(JAN_1), feb_1))
    assert [e.seq for e in january] == [1]  # its grant only: the grant expired at February's start

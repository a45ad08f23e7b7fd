"""Low-balance alerts and auto top-up: decided inside the scripts, so exactly once per crossing under 64
concurrent debits; the events reach the durable store with ids derived from their ledger entries."""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from creditgate.v1 import admin_pb2
from google.protobuf.duration_pb2 import Duration
from harness import JAN_1, RunningServer

pytestmark = [pytest.mark.cluster_too, pytest.mark.postgres_too]

CONCURRENCY = 64


def debit_concurrently(server: RunningServer, credits_each: int) -> None:
    with ThreadPoolExecutor(CONCURRENCY) as pool:
        decisions = list(pool.map(lambda _: server.debit("acme", "email_unlock", credits_each), range(CONCURRENCY)))
    assert all(decision.allowed for decision in decisions)


def event_types(server: RunningServer) -> Counter[str]:
    server.flush()
    events = server.admin.ListEvents(admin_pb2.ListEventsRequest(customer_id="acme", page_size=1000)).events
    return Counter(event.type for event in events)


def test_low_balance_fires_once_per_crossing_then_depleted_and_recovered(server: RunningServer) -> None:
    server.create_customer("acme", "basic", start=JAN_1)  # 2,500 credits, threshold 250

    debit_concurrently(server, 39)  # 2,496 credits: the balance crosses 250 in exactly one of them
    assert server.available("acme") == 4
    assert event_types(server) == Counter(grant_issued=1, low_balance=1)
    server.debit("acme", "email_unlock", 4)
    server.admin.TopUp(admin_pb2.TopUpRequest(customer_id="acme", package="starter", request_id="t1"))

    assert event_types(server) == Counter(grant_issued=1, low_balance=1, depleted=1, recovered=1)
    low = [entry for entry in server.ledger("acme") if entry.balance_after < 250]
    events = server.admin.ListEvents(admin_pb2.ListEventsRequest(customer_id="acme")).events
    low_event = next(event for event in events if event.type == "low_balance")
    # The event belongs to the first entry that left the balance below 250.
    assert low_event.event_id == f"{low[0].entry_id}:low_balance"


def test_a_customer_threshold_overrides_the_plans(server: RunningServer) -> None:
    server.create_customer("acme", "basic", start=JAN_1)
    server.admin.SetLowBalanceThreshold(
        admin_pb2.SetLowBalanceThresholdRequest(customer_id="acme", threshold_credits=2000)
    )
    server.debit("acme", "email_unlock", 400)
    assert event_types(server)["low_balance"] == 0
    server.debit("acme", "email_unlock", 101)  # 1,999 left
    assert event_types(server)["low_balance"] == 1


def test_auto_top_up_buys_once_per_crossing_and_not_again_within_the_cooldown(server: RunningServer) -> None:
    server.create_customer("acme", "basic", start=JAN_1)
    configured = server.admin.SetAutoTopUp(
        admin_pb2.SetAutoTopUpRequest(
            customer_id="acme",
            package="starter",
            threshold_credits=500,
            cooldown=Duration(seconds=3600),
        )
    )
    assert (configured.credits, configured.price) == (1000, "29.00")
    # 2,500 - 64 x 40: the 52nd debit leaves 460, buys 1,000 once; 940 at the end.
    debit_concurrently(server, 40)
    assert server.available("acme") == 940
    # Within the hour's cooldown a new crossing buys nothing: 940 - 64 x 10 = 300.
    debit_concurrently(server, 10)
    assert server.available("acme") == 300
    # After the cooldown the next change below the threshold buys again.
    server.clock.advance(timedelta(hours=1).total_seconds())
    server.debit("acme", "email_unlock", 1)
    assert server.available("acme") == 1299

    auto = [e for e in server.ledger("acme") if e.kind == admin_pb2.LEDGER_ENTRY_KIND_TOP_UP]
    assert [(e.credits_delta, e.reason) for e in auto] == [(1000, "auto:starter")] * 2
    assert event_types(server)["auto_topup"] == 2

"""Reconcile and restore against the real server, Redis and the durable store."""

from __future__ import annotations

import os
import subprocess
import uuid
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
from billing import FIXTURES, billing_server, error_reason
from creditgate.server.engine.keys import KeySpace
from creditgate.server.ledger.restore import RestoreReport
from creditgate.v1 import admin_pb2, metering_pb2
from harness import JAN_1, REPO, Database, RedisServer, RunningServer, awaited

pytestmark = pytest.mark.postgres_too


def busy_month(server: RunningServer) -> None:
    """Every kind of entry: grants, expiries (a month boundary), debits with free units, caps and overage,
    top-ups, adjustments both ways, a cancellation."""
    server.create_customer("basic-co", plan="basic")
    server.create_customer("pro-co", plan="professional")
    server.create_customer("walk-in")
    server.create_customer("quitter", plan="basic")
    server.admin.CancelSubscription(admin_pb2.CancelSubscriptionRequest(customer_id="quitter"))
    assert server.debit("basic-co", "contact_export", quantity=60).allowed
    assert server.debit("basic-co", "email_send", quantity=7, mailbox="sales@acme.io").allowed
    server.clock.set(datetime(2027, 2, 3, tzinfo=UTC))
    assert server.debit("basic-co", "mobile_unlock", quality="verified").allowed
    assert server.debit("basic-co", "email_send", quantity=5, mailbox="sales@acme.io").allowed
    server.admin.TopUp(admin_pb2.TopUpRequest(customer_id="basic-co", package="starter", request_id="t1"))
    server.admin.AdjustCredits(
        admin_pb2.AdjustCreditsRequest(customer_id="basic-co", delta=-2600, reason="refund", request_id="a1")
    )
    server.admin.AdjustCredits(
        admin_pb2.AdjustCreditsRequest(customer_id="basic-co", delta=15, reason="goodwill", request_id="a2")
    )
    assert server.debit("pro-co", "phone_reveal", quantity=450).allowed  # 4,500 of 4,000 + 500 overage
    assert server.debit("pro-co", "email_send", quantity=3, mailbox="ceo@pro.io").allowed


def balances(server: RunningServer, *customers: str) -> list[metering_pb2.GetBalanceResponse]:
    return [server.metering.GetBalance(metering_pb2.GetBalanceRequest(customer_id=c)) for c in customers]


def test_a_healthy_system_has_no_drift_with_or_without_the_outbox_flushed(server: RunningServer) -> None:
    busy_month(server)
    unflushed = server.reconcile()
    assert (unflushed.customers_checked, unflushed.drifts) == (4, [])
    server.flush()
    flushed = server.reconcile()
    assert (flushed.customers_checked, flushed.drifts) == (4, [])


def test_a_tampered_bucket_in_redis_is_reported(server: RunningServer) -> None:
    busy_month(server)
    server.flush()
    buckets_key = KeySpace(server.app.settings.shards).for_customer("basic-co").buckets
    value = server.call(awaited(server.app.redis.hget(buckets_key, "b3")))
    assert value == "885|20|0|topup"  # the starter pack after the 2,600 refund took the rest of the grant
    server.call(awaited(server.app.redis.hset(buckets_key, "b3", "890|20|0|topup")))
    report = server.reconcile()
    assert [(d.customer_id, d.credits, d.entries) for d in report.drifts] == [("basic-co", 5, 0)]
    assert [(d.what, d.redis, d.ledger) for d in report.drifts[0].differences] == [
        ("bucket b3", "890|20|0|topup", "885|20|0|topup"),
        ("balance", "905", "900"),
    ]


def test_a_running_total_that_drifted_from_its_buckets_is_reported_and_restore_repairs_it(
    server: RunningServer,
) -> None:
    busy_month(server)
    server.flush()
    customer_key = KeySpace(server.app.settings.shards).for_customer("basic-co").customer
    assert server.call(awaited(server.app.redis.hget(customer_key, "bucket_credits"))) == "900"
    server.call(awaited(server.app.redis.hincrby(customer_key, "bucket_credits", 7)))
    report = server.reconcile()
    assert [(d.customer_id, d.credits, d.entries) for d in report.drifts] == [("basic-co", 0, 0)]
    assert [(d.what, d.redis, d.ledger) for d in report.drifts[0].differences] == [("bucket_credits", "907", "900")]
    server.restore()
    assert server.reconcile().drifts == []
    assert server.debit("basic-co", "email_unlock", quantity=10).balance_after == 890


def test_a_forged_ledger_entry_is_reported(server: RunningServer, database: Database) -> None:
    busy_month(server)
    server.flush()
    seq = server.ledger("basic-co")[-1].balance_after and len(server.ledger("basic-co")) + 1
    database.rows(
        "INSERT INTO ledger_entries VALUES ('basic-co', ?, 'debit', -7, 0, 0, 'email_unlock', 7, '{}',"
        " 0, 0, '', 'forged', '', '', 0, 0, 0, '', '[]', -1)",
        seq,
    )
    report = server.reconcile()
    assert [(d.customer_id, d.credits, d.entries) for d in report.drifts] == [("basic-co", 7, 1)]
    assert {d.what for d in report.drifts[0].differences} >= {"seq", "balance"}


def test_restore_rebuilds_a_lost_redis_to_zero_drift_and_decisions_carry_on(server: RunningServer) -> None:
    busy_month(server)
    server.flush()
    customers = ("basic-co", "pro-co", "walk-in", "quitter")
    before = balances(server, *customers)
    server.call(awaited(server.app.redis.flushall()))

    lost = server.reconcile()
    assert [(d.customer_id, d.credits) for d in lost.drifts] == [
        ("basic-co", -before[0].available_credits),
        ("pro-co", 0),
        ("quitter", -2500),
        ("walk-in", 0),
    ]
    # basic-co's starter pack and goodwill bucket (900), and quitter's January grant: due to expire, but
    # nothing has touched the canceled customer since, so Redis (and the restore) still hold it.
    assert server.restore() == RestoreReport(customers=4, buckets=3, credits=900 + 2500)
    assert server.reconcile().drifts == []
    assert balances(server, *customers) == before

    # The next decision numbers from a new block past the customer's sequence (what Redis lost may have numbered
    # entries above the ledger's), and the counters it checks came back too:
    # 5 of basic's 250 sends a day per mailbox were used today, and 503 of professional's 5,000 overage credits.
    assert len(server.ledger("basic-co")) < 1_000_000
    after = server.debit("basic-co", "email_send", quantity=245, mailbox="sales@acme.io")
    assert (after.allowed, after.entry_id, after.balance_after) == (True, "basic-co/1000001", 655)
    capped = server.debit("basic-co", "email_send", mailbox="sales@acme.io")
    assert capped.deny_reason == metering_pb2.DENY_REASON_LIMIT_EXCEEDED
    beyond = server.debit("pro-co", "email_unlock", quantity=4498)
    assert beyond.deny_reason == metering_pb2.DENY_REASON_INSUFFICIENT_CREDITS
    assert server.debit("pro-co", "email_unlock", quantity=4497).overage_credits == 4497
    server.flush()
    assert server.reconcile().drifts == []


def test_a_grant_that_rolls_over_is_reconciled_and_restored_with_its_cap(
    redis_server: RedisServer, database: Database, tmp_path: Path
) -> None:
    with billing_server(redis_server, database, tmp_path, FIXTURES / "grant_rollover_capped.yaml") as server:
        server.create_customer("acme", "basic", start=JAN_1)  # 2,500 a month, up to 1,000 carried over
        server.debit("acme", "email_unlock", 500)
        # A hold that drains the grant's bucket and is released: the bucket comes back with its cap.
        hold = server.metering.Reserve(
            metering_pb2.ReserveRequest(customer_id="acme", feature="email_unlock", quantity=2000)
        )
        server.metering.Release(metering_pb2.ReleaseRequest(reservation_id=hold.reservation_id))
        server.flush()
        assert server.reconcile().drifts == []  # the ledger knows the grant's cap, as Redis does
        server.call(awaited(server.app.redis.flushall()))
        assert server.restore() == RestoreReport(customers=1, buckets=1, credits=2000)
        assert server.reconcile().drifts == []
        server.clock.set(datetime(2027, 2, 1, tzinfo=UTC))
        balance = server.metering.GetBalance(metering_pb2.GetBalanceRequest(customer_id="acme"))
        assert [(b.source, b.remaining_credits) for b in balance.buckets] == [
            (metering_pb2.BUCKET_SOURCE_ROLLOVER, 1000),
            (metering_pb2.BUCKET_SOURCE_PLAN_GRANT, 2500),
        ]


def test_restore_puts_back_a_customers_own_threshold_and_auto_top_up(server: RunningServer) -> None:
    server.create_customer("acme", plan="basic")  # 2,500 credits; Basic's own low-balance threshold is 250
    server.admin.SetLowBalanceThreshold(
        admin_pb2.SetLowBalanceThresholdRequest(customer_id="acme", threshold_credits=1)
    )
    server.admin.SetLowBalanceThreshold(
        admin_pb2.SetLowBalanceThresholdRequest(customer_id="acme", threshold_credits=2_000)
    )
    server.admin.SetAutoTopUp(
        admin_pb2.SetAutoTopUpRequest(customer_id="acme", package="starter", threshold_credits=1_000)
    )
    server.flush()
    server.call(awaited(server.app.redis.flushall()))
    assert server.restore() == RestoreReport(customers=1, buckets=1, credits=2_500)
    assert server.reconcile().drifts == []

    # Below its own 2,000 (the last of its two thresholds), then below 1,000: the Starter pack (1,000) is bought.
    assert server.debit("acme", "email_unlock", 600).balance_after == 1_900
    assert server.debit("acme", "email_unlock", 1_000).balance_after == 1_900
    server.flush()
    events = server.admin.ListEvents(admin_pb2.ListEventsRequest(customer_id="acme")).events
    assert [event.type for event in reversed(events)] == ["grant_issued", "low_balance", "auto_topup"]


def test_restore_expires_the_holds_it_finds_open_and_numbers_new_ones_after_them(server: RunningServer) -> None:
    server.create_customer("acme", plan="basic")  # 2,500 credits
    placed = [
        server.metering.Reserve(metering_pb2.ReserveRequest(customer_id="acme", feature="email_unlock", quantity=100))
        for _ in range(2)
    ]
    server.metering.Commit(metering_pb2.CommitRequest(reservation_id=placed[0].reservation_id, quantity=40))
    server.flush()
    server.call(awaited(server.app.redis.flushall()))

    # 40 charged, 100 still held by acme/h2: the restore puts it back due at once.
    assert server.restore() == RestoreReport(customers=1, buckets=1, credits=2_360, holds=1)
    assert server.reserved_in_redis("acme") == 100
    with pytest.raises(grpc.RpcError) as raised:
        server.metering.Commit(metering_pb2.CommitRequest(reservation_id=placed[1].reservation_id, quantity=10))
    assert error_reason(raised.value) == (grpc.StatusCode.FAILED_PRECONDITION, "RESERVATION_EXPIRED")
    assert (server.available("acme"), server.reserved_in_redis("acme")) == (2_460, 0)
    again = server.metering.Reserve(metering_pb2.ReserveRequest(customer_id="acme", feature="email_unlock"))
    assert again.reservation_id == "acme/h1000001"  # not acme/h1 again, nor any number Redis may have lost
    server.flush()
    assert server.reconcile().drifts == []
    expired = [e for e in server.ledger("acme") if e.kind == admin_pb2.LEDGER_ENTRY_KIND_RESERVATION_EXPIRY]
    assert [(e.credits_delta, e.reservation_id) for e in expired] == [(100, placed[1].reservation_id)]


def test_restore_keeps_a_hold_redis_still_has(server: RunningServer) -> None:
    server.create_customer("acme", plan="basic")
    hold = server.metering.Reserve(
        metering_pb2.ReserveRequest(customer_id="acme", feature="email_unlock", quantity=100)
    )
    server.flush()
    assert server.restore().holds == 1  # nothing was lost: the hold keeps its record and expiry
    settled = server.metering.Commit(metering_pb2.CommitRequest(reservation_id=hold.reservation_id, quantity=40))
    assert (settled.credits_charged, settled.credits_released, settled.balance_after) == (40, 60, 2_460)


def test_the_reconcile_command_exits_with_the_drift(server: RunningServer) -> None:
    server.create_customer("acme", plan="basic")
    server.flush()
    env = {
        **os.environ,
        "CREDITGATE_REDIS_URL": str(server.app.settings.redis_url),
        "CREDITGATE_DATABASE_URL": server.app.settings.effective_database_url,
        # On PostgreSQL the command opens the store as serve does: the schema owner checks the migrations.
        **(
            {"CREDITGATE_DATABASE_MIGRATION_URL": migration}
            if (migration := server.app.settings.database_migration_url)
            else {}
        ),
    }
    command = [str(REPO / ".venv" / "bin" / "creditgate"), "reconcile"]
    healthy = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert (healthy.returncode, healthy.stdout.splitlines()[-1]) == (
        0,
        "drift: 0 of 1 customers, +0 credits, +0 entries",
    )
    server.admin.AdjustCredits(
        admin_pb2.AdjustCreditsRequest(customer_id="acme", delta=-40, reason="unflushed", request_id=str(uuid.uuid4()))
    )
    server.call(awaited(server.app.redis.delete(*KeySpace(server.app.settings.shards).all_outboxes())))
    drifted = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert (drifted.returncode, drifted.stdout.splitlines()[-1]) == (
        1,
        "drift: 1 of 1 customers, -40 credits, -1 entries",
    )

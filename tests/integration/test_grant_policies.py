"""A year of the Basic plan on the simulated clock under each grant policy, and a plan change mid-period."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from billing import FIXTURES, billing_server
from creditgate.v1 import admin_pb2, metering_pb2
from harness import APOLLO, JAN_1, Database, RedisServer

pytestmark = pytest.mark.postgres_too

GRANT = admin_pb2.LEDGER_ENTRY_KIND_GRANT
EXPIRY = admin_pb2.LEDGER_ENTRY_KIND_EXPIRY
ROLLOVER = admin_pb2.LEDGER_ENTRY_KIND_ROLLOVER
NEXT_JAN_1 = datetime(2028, 1, 1, tzinfo=UTC)
# Credits spent each month of 2027: 2,400 in January, then 1,200 a month.
SPENT = [2400] + [1200] * 11

# (catalog, balance on Dec 31 2027, balance on Jan 1 2028, credits expired in 2027 and at Jan 1 2028,
#  credits rolled over), all worked out by hand from 2,500 granted each month:
# - period_end: each month's rest expires: 100 in Jan, 1,300 in each other month; December leaves 1,300.
# - never: 30,000 granted - 15,600 spent = 14,400, plus 2,500 on Jan 1.
# - rollover capped at 1,000: Jan leaves 100 (all carried); Feb has 100 + 2,500, spends the 100 carried first,
#   leaves 1,400 of its grant (1,000 carried); every later month has 3,500, leaves 2,300 (1,000 carried).
YEAR_CASES = [
    ("period_end", APOLLO, 1300, 2500, [100] + [1300] * 11, []),
    ("never", FIXTURES / "grant_expires_never.yaml", 14400, 16900, [], []),
    (
        "rollover_capped",
        FIXTURES / "grant_rollover_capped.yaml",
        2300,
        3500,
        [100, 1400] + [2300] * 10,
        [100] + [1000] * 11,
    ),
]


@pytest.mark.parametrize(
    ("case", "catalog", "dec_31", "jan_1", "expired", "rolled"), YEAR_CASES, ids=[case[0] for case in YEAR_CASES]
)
def test_a_year_of_basic(
    redis_server: RedisServer,
    database: Database,
    tmp_path: Path,
    case: str,
    catalog: Path,
    dec_31: int,
    jan_1: int,
    expired: list[int],
    rolled: list[int],
) -> None:
    with billing_server(redis_server, database, tmp_path, catalog, clock="simulated") as server:
        server.create_customer("acme", "basic", start=JAN_1)
        for month, credits in enumerate(SPENT, start=1):
            server.clock.set(datetime(2027, month, 15, tzinfo=UTC))
            assert server.debit("acme", "email_unlock", credits).allowed
        server.clock.set(datetime(2027, 12, 31, 23, 59, tzinfo=UTC))
        assert server.available("acme") == dec_31
        server.clock.set(NEXT_JAN_1)
        assert server.available("acme") == jan_1

        entries = server.ledger("acme")
        in_2027 = [entry for entry in entries if entry.create_time.ToDatetime(UTC) < NEXT_JAN_1]
        grants = [entry.credits_delta for entry in in_2027 if entry.kind == GRANT]
        assert grants == [2500] * 12
        assert [
            (e.create_time.ToDatetime(UTC).month, e.create_time.ToDatetime(UTC).day) for e in in_2027 if e.kind == GRANT
        ] == [(month, 1) for month in range(1, 13)]
        assert [-entry.credits_delta for entry in entries if entry.kind == EXPIRY] == expired
        assert [entry.credits_delta for entry in entries if entry.kind == ROLLOVER] == rolled
        # Every expiry and rollover happens at a month's first millisecond.
        for entry in entries:
            if entry.kind in (EXPIRY, ROLLOVER):
                when = entry.create_time.ToDatetime(UTC)
                assert (when.day, when.hour, when.minute, when.second) == (1, 0, 0, 0)
        assert sum(entry.credits_delta for entry in entries) == jan_1


def test_carried_credits_are_spent_first_and_expire_at_the_next_period_end(
    redis_server: RedisServer, database: Database, tmp_path: Path
) -> None:
    with billing_server(redis_server, database, tmp_path, FIXTURES / "grant_rollover_capped.yaml") as server:
        server.create_customer("acme", "basic", start=JAN_1)
        server.debit("acme", "email_unlock", 500)
        server.clock.set(datetime(2027, 2, 1, tzinfo=UTC))
        balance = server.metering.GetBalance(metering_pb2.GetBalanceRequest(customer_id="acme"))
        buckets = [(b.source, b.remaining_credits, b.expires_at.ToDatetime(UTC)) for b in balance.buckets]
        assert buckets == [
            (metering_pb2.BUCKET_SOURCE_ROLLOVER, 1000, datetime(2027, 3, 1, tzinfo=UTC)),
            (metering_pb2.BUCKET_SOURCE_PLAN_GRANT, 2500, datetime(2027, 3, 1, tzinfo=UTC)),
        ]


def test_a_plan_change_grants_the_new_plan_now_and_the_old_buckets_keep_their_expiry(
    redis_server: RedisServer, database: Database, tmp_path: Path
) -> None:
    with billing_server(redis_server, database, tmp_path, clock="simulated") as server:
        server.create_customer("acme", "basic", start=JAN_1)
        server.debit("acme", "email_unlock", 500)
        server.clock.set(datetime(2027, 1, 10, 12, tzinfo=UTC))

        changed = server.admin.ChangePlan(admin_pb2.ChangePlanRequest(customer_id="acme", plan="professional"))

        assert changed.available_credits == 2000 + 4000
        assert changed.subscription.plan == "professional"
        assert changed.subscription.current_period_start.ToDatetime(UTC) == datetime(2027, 1, 10, 12, tzinfo=UTC)
        assert changed.subscription.current_period_end.ToDatetime(UTC) == datetime(2027, 2, 10, 12, tzinfo=UTC)
        balance = server.metering.GetBalance(metering_pb2.GetBalanceRequest(customer_id="acme"))
        assert [(b.remaining_credits, b.expires_at.ToDatetime(UTC)) for b in balance.buckets] == [
            (2000, datetime(2027, 2, 1, tzinfo=UTC)),
            (4000, datetime(2027, 2, 10, 12, tzinfo=UTC)),
        ]
        # Professional's features now; Basic's bucket expires on its own date, mid-period.
        assert server.debit("acme", "ai_personalization").allowed
        server.clock.set(datetime(2027, 2, 1, tzinfo=UTC))
        # The credit went from Basic's bucket (it expires first); its other 1,999 expire on Feb 1.
        assert server.available("acme") == 4000
        expiries = [(e.credits_delta, e.create_time.ToDatetime(UTC)) for e in server.ledger("acme") if e.kind == EXPIRY]
        assert expiries == [(-1999, datetime(2027, 2, 1, tzinfo=UTC))]

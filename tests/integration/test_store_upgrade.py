"""A store written before the engines shared one schema history (a SQLite file of schema version 4; a PostgreSQL
database yoyo had taken to migration 0006) is upgraded in place when this creditgate opens it: every record it held
reads back as it was written, and it is then the schema a new store gets.

The fixtures are the stores creditgate wrote at commit ea06c99, dumped: the records below are what it was given."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import psycopg
import pytest
from billing import FIXTURES
from creditgate.server.domain.records import (
    CustomerRecord,
    LedgerRecord,
    PeriodRecord,
    SettingsRecord,
    SubscriptionRecord,
)
from creditgate.server.errors import FailedPrecondition
from creditgate.server.store.events import Delivery
from creditgate.server.store.invoices import StoredInvoice
from creditgate.server.store.ledger import ParkedEntry
from harness import OWNER_ROLE, PostgresServer, StoreUnderTest

MIGRATIONS = [
    "0001.initial",
    "0002.billing",
    "0003.ledger_rollover_cap",
    "0004.settings_changes",
    "0005.parked_resolutions",
    "0006.ledger_conflicts",
    "0007.settings_changes_by_customer",
]
GRANT = LedgerRecord(
    customer_id="acme-ü",
    seq=1,
    kind="grant",
    credits_delta=2500,
    balance_after=2500,
    created_ms=1_798_761_600_000,
    bucket_id="b1",
    reason="basic",
    bucket_priority=10,
    bucket_expires_ms=1_801_440_000_000,
    bucket_rollover_cap=1000,
)
# Written with events=("low_balance",): the event is its own row, and the entry reads back without it.
RICH = LedgerRecord(
    customer_id="acme-ü",
    seq=2,
    kind="debit",
    credits_delta=-2490,
    balance_after=10,
    created_ms=1_798_761_600_123,
    feature="mobile_unlock",
    quantity=249,
    dimensions={"quality": "verified", "mailbox": "ceo@acme.io"},
    free_units_used=3,
    overage_credits=40,
    request_id="req-1",
    reserved_delta=-5,
    reservation_id="acme-ü/h2",
    takes=[["b1", 2000], ["b2", 490]],
)
TOPUP = LedgerRecord("acme", 1, "topup", 500, 500, 1000, bucket_id="t1", price="5.00")
DEBIT = LedgerRecord("acme", 2, "debit", -1, 499, 1500, feature="call", quantity=1, takes=[["t1", 1]])
# Came later with DEBIT's number (a rewound Redis): kept as a conflict under acme's next number, 3.
REWOUND = LedgerRecord("acme", 2, "debit", -7, 493, 1600, feature="call", quantity=7, takes=[["t1", 7]])
EVENTS = [
    (4, "acme/inv/1000:invoice_finalized"),
    (3, "acme/3:ledger_conflict"),
    (2, "acme-ü/2:low_balance"),
    (1, "acme-ü/1:grant_issued"),
]


def sqlite_v4(tmp_path: Path) -> StoreUnderTest:
    path = tmp_path / "ledger.db"
    with sqlite3.connect(path) as db:
        db.executescript((FIXTURES / "store_sqlite_v4.sql").read_text())
        assert db.execute("PRAGMA user_version").fetchone() == (4,)
    return StoreUnderTest("sqlite", f"sqlite:///{path}")


def postgres_0006(postgres_server: PostgresServer, database: str) -> StoreUnderTest:
    owner_url = postgres_server.url(database, OWNER_ROLE)
    with psycopg.connect(owner_url, autocommit=True) as conn:
        conn.execute((FIXTURES / "store_postgres_0006.sql").read_bytes())
    assert [
        row[0] for row in postgres_server.query(database, "SELECT migration_id FROM _yoyo_migration ORDER BY 1")
    ] == (MIGRATIONS[:6])
    return StoreUnderTest("postgresql", postgres_server.url(database), owner_url)


@pytest.fixture(params=["sqlite", "postgresql"])
def upgraded(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreUnderTest]:
    """The old store, opened (and so upgraded) by this creditgate."""
    if request.param == "sqlite":
        under_test = sqlite_v4(tmp_path)
    else:
        under_test = postgres_0006(
            request.getfixturevalue("postgres_server"), request.getfixturevalue("postgres_database")
        )
    yield under_test
    under_test.close()


def applied_migrations(under_test: StoreUnderTest) -> list[str]:
    """What the store records as applied, read as the schema owner (the sidecar's role may not read it)."""
    query = "SELECT id FROM schema_migrations ORDER BY id"
    if under_test.kind == "sqlite":
        with sqlite3.connect(under_test.url.removeprefix("sqlite:///")) as db:
            return [row[0] for row in db.execute(query)]
    assert under_test.migration_url is not None
    with psycopg.connect(under_test.migration_url) as conn:
        return [row[0] for row in conn.execute(query.encode())]


def test_every_record_of_an_old_store_reads_back_after_the_upgrade(upgraded: StoreUnderTest) -> None:
    store = upgraded.store
    assert applied_migrations(upgraded) == MIGRATIONS
    assert upgraded.run(store.ledger_since("acme-ü", 0, 10)) == [GRANT, RICH]
    assert upgraded.run(store.list_ledger("acme", 10, None)) == [replace(REWOUND, seq=3), DEBIT, TOPUP]
    assert upgraded.run(store.customers()) == [
        CustomerRecord("acme", "Acme Corp", {"tier": "gold"}, 10),
        CustomerRecord("acme-ü", "Ä Inc", {}, 20),
    ]
    assert upgraded.run(store.subscription_changes()) == [
        SubscriptionRecord("cg:{s1}:outbox/1-0", "acme", "basic", "pending", 1000, 1000),
        SubscriptionRecord("cg:{s1}:outbox/5-0", "acme", "basic", "canceled", 1000, 2500),
    ]
    assert upgraded.run(store.settings_changes("acme")) == [
        SettingsRecord("cg:{s1}:outbox/3-0", "acme", {"low_threshold": "200", "auto_package": "starter"}, 1200)
    ]
    assert upgraded.run(store.latest_catalog()) == ("v2", "currency: EUR\n")
    # Two were parked; one was written since (resolved).
    assert upgraded.run(store.parked()) == [ParkedEntry("cg:{s0}:outbox/8-0", "{'type': 'x'}", "ValueError('unknown')")]
    assert upgraded.run(store.parked_count()) == 1
    # February was ended early (at 2500) by the cancellation, which completes it; January has its invoice.
    february = PeriodRecord("acme", "basic", 1, 2000, 2500)
    assert upgraded.run(store.periods_to_invoice(10_000, 10)) == [(february, True)]
    assert upgraded.run(store.current_period("acme")) == february
    invoice = StoredInvoice("acme/inv/1000", "acme", 1000, '{"total": "5.00"}', 2100)
    assert upgraded.run(store.list_invoices("acme", 10, None)) == [invoice]
    assert upgraded.run(store.get_invoice("acme/inv/1000")) == invoice
    events = upgraded.run(store.list_events("", 10, None))
    assert [(seq, event.event_id) for seq, event in events] == EVENTS
    assert '"original_entry_id": "acme/2"' in events[1][1].payload
    # Every event went to two receivers; one delivery was made.
    deliveries = upgraded.run(store.deliveries_of([event_id for _, event_id in EVENTS]))
    assert sorted(deliveries, key=lambda d: (d.event_id, d.url)) == [
        Delivery("acme-ü/1:grant_issued", "http://a", "delivered", 1, 3100, ""),
        Delivery("acme-ü/1:grant_issued", "http://b", "pending", 0, 3000, ""),
        Delivery("acme-ü/2:low_balance", "http://a", "pending", 0, 3000, ""),
        Delivery("acme-ü/2:low_balance", "http://b", "pending", 0, 3000, ""),
        Delivery("acme/3:ledger_conflict", "http://a", "pending", 0, 3000, ""),
        Delivery("acme/3:ledger_conflict", "http://b", "pending", 0, 3000, ""),
        Delivery("acme/inv/1000:invoice_finalized", "http://a", "pending", 0, 3000, ""),
        Delivery("acme/inv/1000:invoice_finalized", "http://b", "pending", 0, 3000, ""),
    ]


def test_an_upgraded_store_goes_on_as_before(upgraded: StoreUnderTest) -> None:
    # The conflict kept before the upgrade is remembered: its replay is not kept twice.
    assert upgraded.run(upgraded.store.write([REWOUND], [])) == []
    upgraded.write(LedgerRecord("acme", 4, "debit", -3, 490, 1700, events=("depleted",)))
    assert [e.seq for e in upgraded.run(upgraded.store.ledger_since("acme", 2, 10))] == [3, 4]
    assert upgraded.run(upgraded.store.list_events("acme", 1, None))[0] == (
        5,
        upgraded.run(upgraded.store.get_event("acme/4:depleted")),
    )
    upgraded.run(upgraded.store.save_catalog("v3", "currency: GBP\n", 7))
    assert upgraded.run(upgraded.store.latest_catalog()) == ("v3", "currency: GBP\n")
    # Opened again: nothing more to apply.
    upgraded.run(upgraded.store.close())
    upgraded.store = upgraded.open()
    assert applied_migrations(upgraded) == MIGRATIONS
    assert len(upgraded.run(upgraded.store.ledger_since("acme", 0, 10))) == 4


def sqlite_schema(path: Path) -> set[tuple[str, ...]]:
    with sqlite3.connect(path) as db:
        tables = [row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        columns = {
            (t, row[1], str(row[3]), str(row[4])) for t in tables for row in db.execute(f"PRAGMA table_info({t})")
        }
        others = {
            tuple(row) for row in db.execute("SELECT type, name, tbl_name FROM sqlite_master WHERE type != 'table'")
        }
    return columns | others


def test_an_upgraded_sqlite_file_has_the_schema_of_a_new_one(tmp_path: Path) -> None:
    (tmp_path / "old").mkdir()
    sqlite_v4(tmp_path / "old").close()
    StoreUnderTest("sqlite", f"sqlite:///{tmp_path / 'new.db'}").close()
    assert sqlite_schema(tmp_path / "old" / "ledger.db") == sqlite_schema(tmp_path / "new.db")
    with sqlite3.connect(tmp_path / "old" / "ledger.db") as db:
        assert db.execute("PRAGMA user_version").fetchone() == (5,)
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            db.execute("DELETE FROM ledger_entries")


POSTGRES_SCHEMA = """
SELECT 'column', table_name,
  column_name || ' ' || data_type || ' ' || is_nullable || ' ' || coalesce(column_default, '')
  FROM information_schema.columns WHERE table_schema = 'public' AND table_name NOT LIKE '%%yoyo%%'
UNION ALL SELECT 'index', tablename, indexdef FROM pg_indexes
  WHERE schemaname = 'public' AND tablename NOT LIKE '%%yoyo%%'
UNION ALL SELECT 'trigger', event_object_table, trigger_name || ' ' || event_manipulation
  FROM information_schema.triggers
UNION ALL SELECT 'grant', table_name, grantee || ' ' || privilege_type FROM information_schema.table_privileges
  WHERE table_schema = 'public' AND grantee NOT IN ('postgres', 'PUBLIC') AND table_name NOT LIKE '%%yoyo%%'
"""


def test_an_upgraded_postgres_database_has_the_schema_of_a_new_one(postgres_server: PostgresServer) -> None:
    old, new = postgres_server.create_database(), postgres_server.create_database()
    postgres_0006(postgres_server, old).close()
    StoreUnderTest("postgresql", postgres_server.url(new), postgres_server.url(new, OWNER_ROLE)).close()
    old_schema = set(postgres_server.query(old, POSTGRES_SCHEMA))
    assert old_schema == set(postgres_server.query(new, POSTGRES_SCHEMA))
    assert ("trigger", "ledger_entries", "ledger_entries_no_update_or_delete DELETE") in old_schema


def test_a_sqlite_file_a_newer_creditgate_migrated_is_refused_and_left_as_it_is(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    StoreUnderTest("sqlite", f"sqlite:///{path}").close()
    with sqlite3.connect(path) as db:
        db.execute("INSERT INTO schema_migrations (id, applied_ms) VALUES ('0099.from_the_future', 1)")
    with pytest.raises(FailedPrecondition) as raised:
        StoreUnderTest("sqlite", f"sqlite:///{path}")
    assert (raised.value.reason, raised.value.field) == ("STORE_SCHEMA_TOO_NEW", "database_url")
    assert "0099.from_the_future" in raised.value.message
    with sqlite3.connect(path) as db:
        assert [row[0] for row in db.execute("SELECT id FROM schema_migrations ORDER BY id")] == [
            *MIGRATIONS,
            "0099.from_the_future",
        ]

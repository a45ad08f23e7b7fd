"""One suite for both durable stores: SQLite and a real PostgreSQL, through the same Store interface."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import pytest
from billing import FIXTURES
from creditgate.server.domain.records import CustomerRecord, LedgerRecord, SettingsRecord, SubscriptionRecord
from creditgate.server.errors import FailedPrecondition, InternalError, InvalidArgument
from creditgate.server.store.ledger import ParkedEntry
from creditgate.server.store.sqlite import SCHEMA_VERSION
from creditgate.server.store.store import open_store
from harness import OWNER_ROLE, PostgresServer, StoreUnderTest

T = TypeVar("T")
MIGRATIONS = Path(__file__).resolve().parents[2] / "server" / "creditgate" / "server" / "store" / "migrations"


def entry(customer_id: str, seq: int, **fields: Any) -> LedgerRecord:
    values: dict[str, Any] = {"kind": "debit", "credits_delta": -1, "balance_after": 100 - seq, "created_ms": seq}
    values.update(fields)
    return LedgerRecord(customer_id=customer_id, seq=seq, **values)


RICH_ENTRY = LedgerRecord(
    customer_id="acme-ü",
    seq=7,
    kind="debit",
    credits_delta=-2490,
    balance_after=10,
    created_ms=1_798_761_600_123,
    feature="mobile_unlock",
    quantity=249,
    dimensions={"quality": "verified", "mailbox": "ceo@acme.io"},
    free_units_used=3,
    overage_credits=40,
    bucket_id="",
    request_id="req-1",
    reason="",
    price="",
    bucket_priority=0,
    bucket_expires_ms=0,
    reserved_delta=-5,
    reservation_id="acme-ü/h2",
    takes=[["b1", 2000], ["b2", 490]],
    bucket_rollover_cap=17,
)
GRANT_ENTRY = LedgerRecord(
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
)


def test_every_field_of_a_ledger_entry_reads_back_as_written(store: StoreUnderTest) -> None:
    store.write(GRANT_ENTRY, RICH_ENTRY)
    assert store.run(store.store.list_ledger("acme-ü", 10, None)) == [RICH_ENTRY, GRANT_ENTRY]
    assert store.run(store.store.ledger_since("acme-ü", 0, 10)) == [GRANT_ENTRY, RICH_ENTRY]


def test_replayed_batches_write_nothing_twice(store: StoreUnderTest) -> None:
    batch = [entry("a", seq) for seq in range(1, 6)]
    store.write(*batch)
    # A flusher that crashed after the commit and before XACK writes the same batch again, plus new entries.
    store.write(*batch, entry("a", 6), entry("b", 1))
    store.write(*batch)
    assert [record.seq for record in store.run(store.store.ledger_since("a", 0, 100))] == [1, 2, 3, 4, 5, 6]
    assert len(store.run(store.store.ledger_since("b", 0, 100))) == 1


@pytest.mark.parametrize(
    ("limit", "before_seq", "after_seq", "newest_first", "oldest_first"),
    [
        (3, None, 0, [10, 9, 8], [1, 2, 3]),
        (3, 8, 7, [7, 6, 5], [8, 9, 10]),
        (100, 2, 10, [1], []),
        (1, 1, 9, [], [10]),
    ],
)
def test_ledger_pages_in_both_directions(
    store: StoreUnderTest,
    limit: int,
    before_seq: int | None,
    after_seq: int,
    newest_first: list[int],
    oldest_first: list[int],
) -> None:
    store.write(*[entry("a", seq) for seq in range(1, 11)], entry("other", 1))
    assert [r.seq for r in store.run(store.store.list_ledger("a", limit, before_seq))] == newest_first
    assert [r.seq for r in store.run(store.store.ledger_since("a", after_seq, limit))] == oldest_first


def test_customers_and_subscription_changes_read_back_in_order(store: StoreUnderTest) -> None:
    customers = [CustomerRecord("b", "B Inc", {}, 2), CustomerRecord("a", "Ä Inc", {"tier": "gold"}, 1)]
    changes = [
        SubscriptionRecord("cg:{s1}:outbox/1-0", "a", "basic", "pending", 100, 100),
        SubscriptionRecord("cg:{s1}:outbox/5-0", "a", "basic", "canceled", 100, 500),
        SubscriptionRecord("cg:{s1}:outbox/6-0", "a", "professional", "pending", 600, 600),
        SubscriptionRecord("cg:{s2}:outbox/3-0", "b", "basic", "pending", 300, 300),
    ]
    store.write(*customers, *changes[::-1])
    store.write(customers[0], changes[0])
    assert store.run(store.store.customers()) == customers[::-1]
    assert store.run(store.store.subscription_changes()) == changes


def test_the_latest_catalog_wins(store: StoreUnderTest) -> None:
    assert store.run(store.store.latest_catalog()) is None
    store.run(store.store.save_catalog("v1", "currency: USD", 1))
    store.run(store.store.save_catalog("v2", "currency: EUR", 2))
    assert store.run(store.store.latest_catalog()) == ("v2", "currency: EUR")


def test_settings_changes_are_kept_once_each(store: StoreUnderTest) -> None:
    first = SettingsRecord("cg:{s1}:outbox/9-0", "a", {"low_threshold": "2000"}, 900)
    second = SettingsRecord("cg:{s1}:outbox/10-0", "a", {"low_threshold": "", "auto_package": "starter"}, 1000)
    store.write(first, second)
    store.write(second)  # a replayed batch
    assert store.run(store.store.settings_changes()) == [first, second]


def test_parked_entries_are_kept_once(store: StoreUnderTest) -> None:
    poison = ParkedEntry("cg:{s0}:outbox/9-0", "{'type': 'ledger', 'e': '{'}", "JSONDecodeError(...)")
    store.write(entry("a", 1), parked=(poison,))
    store.write(parked=(poison,))
    assert store.run(store.store.parked()) == [poison]


def test_a_record_the_store_cannot_hold_fails_the_batch_as_internal_and_writes_nothing(
    store: StoreUnderTest,
) -> None:
    with pytest.raises(InternalError):
        store.write(entry("a", 1), entry("a", 2, balance_after=2**70))
    assert store.run(store.store.ledger_since("a", 0, 10)) == []


def test_reopening_applies_the_schema_once_and_keeps_the_data(store: StoreUnderTest) -> None:
    store.write(entry("a", 1))
    store.run(store.store.close())
    store.store = store.open()
    assert len(store.run(store.store.ledger_since("a", 0, 10))) == 1


@pytest.mark.parametrize("version", [1, 2])
def test_an_older_sqlite_ledger_is_moved_into_the_current_schema_with_its_entries(tmp_path: Path, version: int) -> None:
    path = tmp_path / "ledger.db"
    with sqlite3.connect(path) as db:
        db.executescript((FIXTURES / f"sqlite_ledger_v{version}.sql").read_text())
    under_test = StoreUnderTest("sqlite", f"sqlite:///{path}")
    # Entry 3 is new, and its replay (the same entry again) writes nothing more.
    under_test.write(entry("acme", 3, balance_after=2494), entry("acme", 3, balance_after=2494))
    under_test.write(entry("acme", 4, kind="grant", credits_delta=2500, bucket_id="b2", bucket_rollover_cap=1000))
    entries = under_test.run(under_test.store.ledger_since("acme", 0, 10))
    under_test.close()
    # Older files kept no rollover caps: their entries read -1 (carries nothing).
    assert [(e.seq, e.kind, e.credits_delta, e.balance_after, e.bucket_rollover_cap) for e in entries] == [
        (1, "grant", 2500, 2500, -1),
        (2, "debit", -5, 2495, -1),
        (3, "debit", -1, 2494, -1),
        (4, "grant", 2500, 96, 1000),
    ]
    assert entries[1].takes == [["b1", 5]] and entries[1].request_id == "req-1"
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert "ledger_entries_v1" not in tables
        (ledger_sql,) = db.execute("SELECT sql FROM sqlite_master WHERE name = 'ledger_entries'").fetchone()
        assert "WITHOUT ROWID" not in ledger_sql
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            db.execute("DELETE FROM ledger_entries")


def test_a_sqlite_file_of_a_newer_schema_version_is_refused_and_left_as_it_is(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    newer = SCHEMA_VERSION + 1
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version={newer}")
    with pytest.raises(FailedPrecondition) as raised:
        StoreUnderTest("sqlite", f"sqlite:///{path}")
    assert (raised.value.reason, raised.value.field) == ("STORE_SCHEMA_TOO_NEW", "database_url")
    assert f"schema version {newer}" in raised.value.message
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (newer,)
        assert db.execute("SELECT count(*) FROM sqlite_master").fetchone() == (0,)


def test_an_unknown_database_url_is_refused() -> None:
    with pytest.raises(InvalidArgument) as raised:
        open_store("mysql://localhost/creditgate")
    assert raised.value.field == "database_url"


SQLITE_TAMPERING = [
    "UPDATE ledger_entries SET credits_delta = 1000",
    "DELETE FROM ledger_entries",
]


@pytest.mark.parametrize("statement", SQLITE_TAMPERING)
def test_sqlite_ledger_refuses_edits(tmp_path: Path, statement: str) -> None:
    under_test = StoreUnderTest("sqlite", f"sqlite:///{tmp_path / 'ledger.db'}")
    under_test.write(entry("a", 1))
    under_test.close()
    with sqlite3.connect(tmp_path / "ledger.db") as db, pytest.raises(sqlite3.IntegrityError, match="append-only"):
        db.execute(statement)


@pytest.mark.parametrize(
    ("role", "statement", "error"),
    [
        # The sidecar's role was granted SELECT and INSERT only.
        ("creditgate_app", "UPDATE ledger_entries SET credits_delta = 1000", "permission denied"),
        ("creditgate_app", "DELETE FROM ledger_entries", "permission denied"),
        ("creditgate_app", "TRUNCATE ledger_entries", "permission denied"),
        ("creditgate_app", "UPDATE customers SET name = 'x'", "permission denied"),
        # The owner may hold every privilege; the triggers still refuse.
        (OWNER_ROLE, "UPDATE ledger_entries SET credits_delta = 1000", "append-only"),
        (OWNER_ROLE, "DELETE FROM ledger_entries", "append-only"),
        (OWNER_ROLE, "TRUNCATE ledger_entries", "append-only"),
    ],
)
def test_postgres_ledger_refuses_edits(
    postgres_server: PostgresServer, postgres_database: str, role: str, statement: str, error: str
) -> None:
    under_test = StoreUnderTest(
        "postgresql", postgres_server.url(postgres_database), postgres_server.url(postgres_database, OWNER_ROLE)
    )
    under_test.write(entry("a", 1), CustomerRecord("a", "A", {}, 1))
    under_test.close()
    if role == OWNER_ROLE:
        # Give the owner back what the single-role set-up revokes, to show the trigger alone holds.
        postgres_server.query(postgres_database, f"GRANT ALL ON ledger_entries TO {OWNER_ROLE}")
    with (
        psycopg.connect(postgres_server.url(postgres_database, role), autocommit=True) as conn,
        pytest.raises(psycopg.errors.InsufficientPrivilege, match=error),
    ):
        conn.execute(statement.encode())
    assert postgres_server.query(postgres_database, "SELECT count(*), sum(credits_delta) FROM ledger_entries") == [
        (1, -1)
    ]


def test_postgres_single_role_set_up_revokes_its_own_ledger_edits(
    postgres_server: PostgresServer, postgres_database: str
) -> None:
    owner_url = postgres_server.url(postgres_database, OWNER_ROLE)
    under_test = StoreUnderTest("postgresql", owner_url)
    under_test.write(entry("a", 1))
    under_test.close()
    with (
        psycopg.connect(owner_url, autocommit=True) as conn,
        pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied"),
    ):
        conn.execute(b"DELETE FROM ledger_entries")
    applied = postgres_server.query(postgres_database, "SELECT id FROM schema_migrations ORDER BY 1")
    # A migration's id is its file name up to the engine's part: NNNN.name[.sqlite|.postgresql].sql.
    shipped = sorted({".".join(path.name.split(".")[:2]) for path in MIGRATIONS.glob("*.sql")})
    assert [row[0] for row in applied] == shipped
    assert shipped[0] == "0001.initial"


def test_periods_invoices_events_and_deliveries(store: StoreUnderTest) -> None:
    from creditgate.server.domain.records import PeriodRecord, event_record
    from creditgate.server.store.events import Delivery
    from creditgate.server.store.invoices import StoredInvoice

    jan = PeriodRecord("acme", "basic", 0, 1000, 2000)
    low = entry("acme", 1, events=("low_balance",))
    store.write(jan, GRANT_ENTRY, low)
    store.write(jan, low)  # a replayed batch makes no second event
    # A plan change ends February early (the earlier end wins, in either order); March is the new plan's first.
    store.write(PeriodRecord("acme", "basic", 1, 2000, 2500), PeriodRecord("acme", "basic", 1, 2000, 3000))
    store.write(PeriodRecord("acme", "pro", 0, 2500, 5000))

    due = store.run(store.store.periods_to_invoice(3000, 10))
    assert due == [(jan, True), (PeriodRecord("acme", "basic", 1, 2000, 2500), True)]
    assert store.run(store.store.current_period("acme")) == PeriodRecord("acme", "pro", 0, 2500, 5000)
    assert [e.seq for e in store.run(store.store.ledger_between("acme", 1, 2))] == [1]

    invoice = StoredInvoice("acme/inv/1000", "acme", 1000, '{"total": "1.00"}', 2100)
    finalized = event_record("invoice_finalized", "acme", "", 2100, {"invoice_id": "acme/inv/1000"})
    assert store.run(store.store.save_invoice(invoice, finalized)) is True
    assert store.run(store.store.save_invoice(invoice, finalized)) is False
    assert store.run(store.store.get_invoice("acme/inv/1000")) == invoice
    assert store.run(store.store.list_invoices("acme", 10, None)) == [invoice]
    assert [p for p, _ in store.run(store.store.periods_to_invoice(3000, 10))] == [
        PeriodRecord("acme", "basic", 1, 2000, 2500)
    ]

    # March (the new plan's first period) has no period after it; a cancellation at its end completes it.
    march = PeriodRecord("acme", "pro", 0, 2500, 5000)
    assert store.run(store.store.periods_to_invoice(5000, 10))[-1] == (march, False)
    store.write(SubscriptionRecord("cg:{s1}:outbox/9-0", "acme", "pro", "canceled", 2500, 5000))
    assert store.run(store.store.periods_to_invoice(5000, 10))[-1] == (march, True)

    # Newest first: the invoice's event, the entry's low_balance (the grant's grant_issued is another customer's).
    events = [e.event_id for _, e in store.run(store.store.list_events("acme", 10, None))]
    assert events == ["acme/inv/1000:invoice_finalized", "acme/1:low_balance"]
    assert [e.event_id for _, e in store.run(store.store.list_events("", 10, None))][-1] == "acme-ü/1:grant_issued"

    newest = store.run(store.store.list_events("", 1, None))[0][0]
    assert store.run(store.store.enqueue_deliveries(["http://a"], 100)) == (3, newest)
    assert store.run(store.store.enqueue_deliveries(["http://a"], 100)) == (0, newest)
    due_deliveries = store.run(store.store.due_deliveries(100, 10))
    assert len(due_deliveries) == 3 and all(d.payload for d in due_deliveries)
    first = due_deliveries[0]
    assert store.run(store.store.claim_delivery(first, 200)) is True
    assert store.run(store.store.claim_delivery(first, 200)) is False  # another replica had it
    done = Delivery(first.event_id, first.url, "delivered", 1, 200, "")
    store.run(store.store.record_delivery(done))
    assert store.run(store.store.deliveries_of([first.event_id])) == [done]
    assert store.run(store.store.redeliver(first.event_id, 300)) == 1
    assert store.run(store.store.deliveries_of([first.event_id])) == [
        Delivery(first.event_id, first.url, "pending", 0, 300, "")
    ]

    # After a seq, only the events stored since are queued: a new URL gets the new event only.
    store.write(jan, entry("acme", 2, events=("depleted",)))
    latest = store.run(store.store.list_events("", 1, None))[0][0]
    assert store.run(store.store.enqueue_deliveries(["http://a", "http://b"], 400, newest)) == (2, latest)
    assert [d.url for d in store.run(store.store.deliveries_of(["acme/2:depleted"]))] == ["http://a", "http://b"]
    # A receiver's lane reads its own due deliveries only: http://b has just the new one, http://a all four.
    due_to_b = store.run(store.store.due_deliveries(400, 10, url="http://b"))
    assert [(d.event_id, d.url) for d in due_to_b] == [("acme/2:depleted", "http://b")]
    assert len(store.run(store.store.due_deliveries(400, 10, url="http://a"))) == 4


def test_an_entry_whose_id_the_ledger_holds_with_other_content_is_kept_under_the_next_number(
    store: StoreUnderTest,
) -> None:
    store.write(entry("acme", 1), entry("acme", 2))
    rewound = entry("acme", 2, credits_delta=-7, balance_after=91)
    opened = store.store
    conflicts = store.run(opened.write([entry("acme", 2), rewound, entry("acme", 3)], []))
    assert [(c.customer_id, c.original_seq, c.seq) for c in conflicts] == [("acme", 2, 4)]
    # Replayed (the flusher read it again before acknowledging): not kept twice.
    assert store.run(opened.write([rewound], [])) == []
    ledger = store.run(opened.ledger_since("acme", 0, 10))
    assert [(e.seq, e.credits_delta, e.balance_after) for e in ledger] == [
        (1, -1, 99),
        (2, -1, 98),
        (3, -1, 97),
        (4, -7, 91),
    ]
    events = store.run(opened.list_events("acme", 10, None))
    assert [(event.type, event.entry_id) for _, event in events] == [("ledger_conflict", "acme/4")]
    assert '"original_entry_id": "acme/2"' in events[0][1].payload


def test_customers_are_searched_by_id_prefix_or_name_in_either_case(store: StoreUnderTest) -> None:
    store.write(
        CustomerRecord("org:acme", "Acme Corp", {}, 1),
        CustomerRecord("org:acme:eu", "Acme Europe", {}, 2),
        CustomerRecord("jane", "Jane ACME-fan", {}, 3),
        CustomerRecord("org_x", "X", {}, 4),
    )
    opened = store.store
    found = store.run(opened.search_customers("acme", 2, None))
    assert [c.customer_id for c in found] == ["jane", "org:acme"]
    assert [c.customer_id for c in store.run(opened.search_customers("acme", 2, "org:acme"))] == ["org:acme:eu"]
    assert [c.customer_id for c in store.run(opened.search_customers("org_", 10, None))] == ["org_x"]
    assert [c.customer_id for c in store.run(opened.search_customers("", 10, None))] == [
        "jane",
        "org:acme",
        "org:acme:eu",
        "org_x",
    ]

"""Parked outbox entries are visible and retryable: counted (creditgate_parked_entries, GetLedgerStatus), listed
(`creditgate ledger parked`) and written once their cause is fixed (`creditgate ledger retry-parked`), keeping
those that still fail."""

from __future__ import annotations

import json
from typing import Any

import redis
from creditgate.server.cli import app as cli
from creditgate.server.engine.keys import KeySpace
from creditgate.server.ledger.parked import retry_parked
from creditgate.server.store.ledger import ParkedEntry
from creditgate.v1 import admin_pb2
from harness import OWNER_ROLE, PostgresServer, RedisServer, RunningServer, StoreUnderTest
from typer.testing import CliRunner

STREAM = KeySpace(1).outbox(0)
POISON_FIELDS: dict[Any, Any] = {"type": "gift", "e": "{}"}
DEBITS = 3


def debit_fields(customer_id: str, seq: int) -> dict[str, Any]:
    body = {"k": "debit", "c": customer_id, "n": seq, "d": -1, "b": 100 - seq, "t": 1000 + seq}
    return {"type": "ledger", "e": json.dumps(body)}


def test_retry_writes_the_parked_entries_that_now_parse_and_keeps_the_rest(store: StoreUnderTest) -> None:
    # Parked while the store refused it; the cause is gone now.
    fixed = ParkedEntry(f"{STREAM}/5-0", repr(debit_fields("a", 1)), "InternalError: rejected the batch")
    poison = ParkedEntry(f"{STREAM}/6-0", repr(POISON_FIELDS), "ValueError(\"unknown outbox entry type 'gift'\")")
    store.write(parked=(fixed, poison))
    assert store.run(store.store.parked_count()) == 2

    report = store.run(retry_parked(store.store, 1_700_000_000_000))
    assert report.written == [fixed.source_id]
    assert report.still_parked == [poison]
    assert store.run(store.store.parked()) == [poison]
    assert store.run(store.store.parked_count()) == 1
    assert [(e.seq, e.credits_delta, e.balance_after) for e in store.run(store.store.ledger_since("a", 0, 10))] == [
        (1, -1, 99)
    ]
    # Again: nothing more is written, the poison stays.
    again = store.run(retry_parked(store.store, 1_700_000_000_001))
    assert (again.written, again.still_parked) == ([], [poison])
    assert len(store.run(store.store.ledger_since("a", 0, 10))) == 1


def test_parked_entries_are_counted_listed_and_retried_once_the_cause_is_fixed(
    pg_server: RunningServer, redis_server: RedisServer, postgres_server: PostgresServer, postgres_database: str
) -> None:
    server = pg_server
    server.create_customer("acme", "basic")
    server.flush()
    # A constraint the debits break (say, added by hand to the wrong table): each is refused and parked.
    postgres_server.query(
        postgres_database,
        "ALTER TABLE ledger_entries ADD CONSTRAINT no_phone_reveals CHECK (feature <> 'phone_reveal') NOT VALID",
    )
    for _ in range(DEBITS):
        assert server.debit("acme", "phone_reveal").allowed
    poison_id = str(
        redis.Redis.from_url(redis_server.url, decode_responses=True).xadd(
            KeySpace(server.app.settings.shards).outbox(0), POISON_FIELDS
        )
    )
    assert server.flush() == DEBITS + 1
    assert [e.kind for e in server.ledger("acme")] == [admin_pb2.LEDGER_ENTRY_KIND_GRANT]

    status = server.admin.GetLedgerStatus(admin_pb2.GetLedgerStatusRequest())
    assert (status.backlog_entries, status.parked_entries) == (0, DEBITS + 1)
    assert server.call(server.app.probe.run_once()) is True  # type: ignore[union-attr]
    assert server.app.metrics.registry.get_sample_value("creditgate_parked_entries") == DEBITS + 1

    env = {
        "CREDITGATE_REDIS_URL": redis_server.url,
        "CREDITGATE_DATABASE_URL": postgres_server.url(postgres_database),
        "CREDITGATE_DATABASE_MIGRATION_URL": postgres_server.url(postgres_database, OWNER_ROLE),
    }
    runner = CliRunner()
    # The ledger lacks the parked debits that Redis counted.
    assert runner.invoke(cli, ["reconcile"], env=env).exit_code == 1
    listed = runner.invoke(cli, ["ledger", "parked"], env=env)
    assert listed.exit_code == 1, listed.output
    assert f"{DEBITS + 1} parked entries" in listed.output
    assert listed.output.count('violates check constraint "no_phone_reveals"') == DEBITS
    assert f"{KeySpace(server.app.settings.shards).outbox(0)}/{poison_id}" in listed.output
    assert "unknown outbox entry type 'gift'" in listed.output

    postgres_server.query(postgres_database, "ALTER TABLE ledger_entries DROP CONSTRAINT no_phone_reveals")
    retried = runner.invoke(cli, ["ledger", "retry-parked"], env=env)
    assert retried.exit_code == 1, retried.output  # the poison still fails
    assert f"{DEBITS} parked entries written, 1 still parked" in retried.output

    debits = [(e.credits_delta, e.balance_after) for e in server.ledger("acme")[1:]]
    assert debits == [(-10, 2_490), (-10, 2_480), (-10, 2_470)]
    status = server.admin.GetLedgerStatus(admin_pb2.GetLedgerStatusRequest())
    assert status.parked_entries == 1
    assert server.call(server.app.probe.run_once()) is True  # type: ignore[union-attr]
    assert server.app.metrics.registry.get_sample_value("creditgate_parked_entries") == 1
    listed = runner.invoke(cli, ["ledger", "parked"], env=env)
    assert "1 parked entries" in listed.output
    # The ledger and Redis agree again.
    reconciled = runner.invoke(cli, ["reconcile"], env=env)
    assert reconciled.exit_code == 0, reconciled.output


def test_get_ledger_status_leaves_the_parked_count_unset_while_the_store_hangs(
    pg_server: RunningServer, postgres_server: PostgresServer
) -> None:
    server = pg_server
    server.create_customer("acme", "basic")
    assert server.debit("acme", "phone_reveal").allowed
    postgres_server.pause()
    try:
        status = server.admin.GetLedgerStatus(admin_pb2.GetLedgerStatusRequest(), timeout=10)
    finally:
        postgres_server.resume()
    # The customer, its subscription, its first period, the plan's grant and the debit wait in the outbox.
    assert (status.backlog_entries, status.HasField("parked_entries")) == (5, False)
    server.flush()
    status = server.admin.GetLedgerStatus(admin_pb2.GetLedgerStatusRequest())
    assert (status.backlog_entries, status.HasField("parked_entries"), status.parked_entries) == (0, True, 0)

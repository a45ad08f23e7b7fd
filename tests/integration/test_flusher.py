"""The flusher against real Redis and each real store: poison entries, dead consumers, lost groups, status."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from creditgate.server.engine.keys import KeySpace
from creditgate.server.engine.wire import RedisWire
from creditgate.server.ledger.flusher import GROUP, Flusher
from creditgate.v1 import admin_pb2
from harness import RedisServer, RunningServer, StoreUnderTest

STREAM = KeySpace(1).outbox(0)


@pytest.fixture
def outbox(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    client.flushall()
    yield client
    client.close()


def make_flusher(
    store: StoreUnderTest, redis_server: RedisServer, batch_size: int = 100, streams: list[str] | None = None
) -> Flusher:
    from redis.asyncio import Redis

    flusher = Flusher(
        Redis.from_url(redis_server.url, decode_responses=True),
        RedisWire(redis_server.url, timeout_seconds=5),
        store.store,
        streams or [STREAM],
        batch_size=batch_size,
        interval_seconds=60,
        claim_idle_ms=0,
    )
    store.run(flusher.setup())
    return flusher


def debit(customer_id: str, seq: int, **overrides: object) -> dict[Any, Any]:
    body: dict[str, object] = {"k": "debit", "c": customer_id, "n": seq, "d": -1, "b": 100 - seq, "t": 1000 + seq}
    body.update(overrides)
    return {"type": "ledger", "e": json.dumps(body)}


POISON: list[tuple[str, dict[Any, Any]]] = [
    ("not JSON", {"type": "ledger", "e": "{"}),
    ("unknown entry type", {"type": "gift", "e": "{}"}),
    (
        "unknown ledger kind",
        {"type": "ledger", "e": json.dumps({"k": "bribe", "c": "a", "n": 9, "d": 1, "b": 1, "t": 1})},
    ),
    ("no type field", {"e": "{}"}),
    ("a balance the store cannot hold", debit("a", 3, b=2**70)),
]


def test_poison_entries_are_parked_and_the_stream_keeps_moving(
    store: StoreUnderTest, redis_server: RedisServer, outbox: redis.Redis
) -> None:
    flusher = make_flusher(store, redis_server)
    outbox.xadd(STREAM, debit("a", 1))
    poison_ids = [str(outbox.xadd(STREAM, fields)) for _, fields in POISON]
    outbox.xadd(STREAM, debit("a", 2))
    assert store.run(flusher.flush_once()) == 2 + len(POISON)
    assert [entry.seq for entry in store.run(store.store.ledger_since("a", 0, 10))] == [1, 2]
    parked = store.run(store.store.parked())
    assert sorted(entry.source_id for entry in parked) == sorted(f"{STREAM}/{entry_id}" for entry_id in poison_ids)
    assert all(entry.error for entry in parked)
    assert outbox.xlen(STREAM) == 0
    # The stream moves on: the next entry is flushed as usual.
    outbox.xadd(STREAM, debit("a", 4))
    assert store.run(flusher.flush_once()) == 1
    assert store.run(flusher.status()).backlog == 0


def test_a_dead_flushers_pending_entries_are_claimed_and_written_once(
    store: StoreUnderTest, redis_server: RedisServer, outbox: redis.Redis
) -> None:
    flusher = make_flusher(store, redis_server)
    for seq in range(1, 8):
        outbox.xadd(STREAM, debit("a", seq))
    # A replica read five entries, wrote them, and died before XACK.
    read: Any = outbox.xreadgroup(GROUP, "dead-replica", {STREAM: ">"}, count=5)
    assert len(read[0][1]) == 5
    status = store.run(flusher.status())
    assert (status.backlog, status.pending) == (7, 5)
    assert store.run(flusher.drain()) == 7
    assert [entry.seq for entry in store.run(store.store.ledger_since("a", 0, 10))] == list(range(1, 8))
    assert store.run(flusher.status()) == type(status)(0, 0, 0)


def test_dead_consumers_are_removed_once_their_entries_are_claimed(
    store: StoreUnderTest, redis_server: RedisServer, outbox: redis.Redis
) -> None:
    flusher = make_flusher(store, redis_server)  # claim_idle_ms=0: a consumer is idle long enough at once
    outbox.xadd(STREAM, debit("a", 1))
    outbox.xadd(STREAM, debit("a", 2))
    outbox.xreadgroup(GROUP, "dead-holding", {STREAM: ">"}, count=2)
    outbox.xgroup_createconsumer(STREAM, GROUP, "dead-empty")

    def consumers() -> dict[str, int]:
        return {c["name"]: c["pending"] for c in outbox.xinfo_consumers(STREAM, GROUP)}

    assert consumers() == {"dead-holding": 2, "dead-empty": 0}
    # A consumer that still holds entries is kept: removing it would leave them pending for no one.
    assert store.run(flusher.remove_dead_consumers()) == 1
    assert consumers() == {"dead-holding": 2}
    assert store.run(flusher.drain()) == 2
    assert store.run(flusher.remove_dead_consumers()) == 1
    assert consumers() == {flusher.consumer: 0}


def test_one_round_moves_a_batch_from_every_stream(
    store: StoreUnderTest, redis_server: RedisServer, outbox: redis.Redis
) -> None:
    streams = KeySpace(3).all_outboxes()
    flusher = make_flusher(store, redis_server, batch_size=2, streams=streams)
    for seq in (1, 2, 3):
        outbox.xadd(streams[0], debit("a", seq))
    outbox.xadd(streams[1], debit("b", 1))
    poison_id = str(outbox.xadd(streams[1], {"type": "gift", "e": "{}"}))
    # At most a batch from each stream: a's third entry waits for the next round.
    assert store.run(flusher.flush_once()) == 4
    assert [entry.seq for entry in store.run(store.store.ledger_since("a", 0, 10))] == [1, 2]
    assert [entry.seq for entry in store.run(store.store.ledger_since("b", 0, 10))] == [1]
    assert [entry.source_id for entry in store.run(store.store.parked())] == [f"{streams[1]}/{poison_id}"]
    assert [outbox.xlen(stream) for stream in streams] == [1, 0, 0]
    # One stream lost with its group (Redis lost data): the round makes the group again and moves every stream.
    outbox.delete(streams[2])
    outbox.xadd(streams[2], debit("c", 1))
    assert store.run(flusher.flush_once()) == 2
    assert [entry.seq for entry in store.run(store.store.ledger_since("a", 0, 10))] == [1, 2, 3]
    assert [entry.seq for entry in store.run(store.store.ledger_since("c", 0, 10))] == [1]
    assert store.run(flusher.flush_once()) == 0
    assert store.run(flusher.status()).backlog == 0


def test_an_outbox_lost_with_redis_data_gets_its_group_back(
    store: StoreUnderTest, redis_server: RedisServer, outbox: redis.Redis
) -> None:
    flusher = make_flusher(store, redis_server)
    outbox.flushall()
    assert store.run(flusher.flush_once()) == 0
    outbox.xadd(STREAM, debit("a", 1))
    assert store.run(flusher.flush_once()) == 1


def test_status_counts_the_backlog_and_ages_the_oldest_entry(
    store: StoreUnderTest, redis_server: RedisServer, outbox: redis.Redis
) -> None:
    flusher = make_flusher(store, redis_server, batch_size=2)
    seconds, micros = outbox.time()
    written_ms = seconds * 1000 + micros // 1000 - 5000
    outbox.xadd(STREAM, debit("a", 1), id=f"{written_ms}-0")
    outbox.xadd(STREAM, debit("a", 2))
    outbox.xadd(STREAM, debit("a", 3))
    status = store.run(flusher.status())
    assert (status.backlog, status.pending) == (3, 0)
    assert 5000 <= status.oldest_age_ms < 65_000
    assert store.run(flusher.flush_once()) == 2
    after = store.run(flusher.status())
    assert (after.backlog, after.pending) == (1, 0)
    assert after.oldest_age_ms < status.oldest_age_ms


def test_get_ledger_status_reports_the_backlog_until_it_is_flushed(server: RunningServer) -> None:
    server.create_customer("acme", plan="basic")
    server.flush()
    for _ in range(3):
        assert server.debit("acme", "email_unlock").allowed
    oldest_ms = server.oldest_outbox_ms()
    time.sleep(0.05)  # the least age below is then above 0: a clamped 0 cannot pass
    before_ms = server.redis_time_ms()
    status = server.admin.GetLedgerStatus(admin_pb2.GetLedgerStatusRequest())
    after_ms = server.redis_time_ms()
    assert (status.backlog_entries, status.pending_entries) == (3, 0)
    # The age is Redis TIME, read while the call ran, less the oldest entry's id time.
    age_ms = status.oldest_unflushed_age.ToMilliseconds()
    assert before_ms - oldest_ms <= age_ms <= after_ms - oldest_ms
    assert server.flush() == 3
    drained = server.admin.GetLedgerStatus(admin_pb2.GetLedgerStatusRequest())
    assert (drained.backlog_entries, drained.pending_entries, drained.oldest_unflushed_age.ToMilliseconds()) == (
        0,
        0,
        0,
    )

"""A Redis written in key layout 1 keeps working: its keys are moved into layout 2 when the server starts.

tests/fixtures/redis_layout_v1.json holds every key a real server of the layout-1 code (commit 5519441) wrote:
customers whose ids contain ':' and '@', debits, a top-up, a committed hold, an open hold, remembered request_id
answers and the outbox streams."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import redis
from creditgate.server.clock import ManualClock, from_ms
from creditgate.server.engine import bucket_codec
from creditgate.server.engine.keys import LAYOUT, KeySpace
from creditgate.v1 import metering_pb2
from harness import REPO, RedisServer, RunningServer, assert_wallet_index_exact, server_settings

FIXTURE = REPO / "tests" / "fixtures" / "redis_layout_v1.json"
# Written by the layout-2 code (tests/fixtures/write_redis_layout_v2.py): customers with many buckets.
FIXTURE_V2 = REPO / "tests" / "fixtures" / "redis_layout_v2.json"
CREDITGATE = str(Path(sys.executable).parent / "creditgate")


def load_fixture(url: str, fixture: Path = FIXTURE) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(fixture.read_text())
    client = redis.Redis.from_url(url)
    client.flushall()
    for item in doc["keys"]:
        key, value = item["key"], item["value"]
        if item["type"] == "hash":
            client.hset(key, mapping=value)
        elif item["type"] == "zset":
            client.zadd(key, {member: score for member, score in value})
        elif item["type"] == "string":
            client.set(key, base64.b64decode(value))
        elif item["type"] == "stream":
            for entry_id, fields in value:
                client.xadd(key, fields, id=entry_id)
        if item["ttl"] > 0:
            client.expire(key, item["ttl"])
    return doc


def test_a_layout_1_redis_is_migrated_at_start_and_every_customer_carries_on(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    doc = load_fixture(redis_server.url)
    server = RunningServer(server_settings(redis_server.url, tmp_path), ManualClock(doc["clock_ms"]))
    try:
        client = redis.Redis.from_url(redis_server.url, decode_responses=True)
        keys = KeySpace(server.app.settings.shards)
        assert [client.hget(meta, "layout") for meta in keys.all_metas()] == [str(LAYOUT)] * 8
        # Nothing of layout 1 is left: every key under `c:` is a customer hash named by its own id.
        leftovers = [key for key in client.scan_iter("cg:*:c:*") if client.hget(key, "id") != key.split(":", 3)[3]]
        assert leftovers == []
        moved = {"org:acme": ("buckets", "usage", "holds", "holds_open"), "jane@example.com": ("holds", "holds_done")}
        for customer_id, kinds in moved.items():
            customer_keys = keys.for_customer(customer_id)
            assert all(client.exists(getattr(customer_keys, kind)) for kind in kinds), customer_id

        assert {c: server.available(c) for c in doc["balances"]} == doc["balances"]
        # Remembered answers moved with them: a retry replays, it is not charged again.
        replay = server.debit("org:acme", "email_unlock", request_id="req:1")
        assert (replay.entry_id, server.available("org:acme")) == ("org:acme/3", doc["balances"]["org:acme"])
        mobile = server.debit("jane@example.com", "mobile_unlock", 2, request_id="mob-1", quality="verified")
        assert mobile.entry_id == "jane@example.com/2"
        # The hold left open is still held, and settles once.
        committed = server.metering.Commit(
            metering_pb2.CommitRequest(reservation_id=doc["open_reservation"], quantity=4, request_id="c")
        )
        assert committed.credits_charged == 4
        # And new decisions go on from where the customers were.
        fresh = server.debit("org:acme:buckets-co", "email_unlock", request_id="new")
        assert (fresh.allowed, fresh.balance_after) == (True, doc["balances"]["org:acme:buckets-co"] - 1)
        assert server.available("org:acme") == doc["balances"]["org:acme"]  # the hold's 4 were reserved already
        # The fixture's six entries, then the commit: numbered from a new block, as after any Redis from another epoch.
        assert [e.entry_id for e in server.ledger("org:acme")] == [
            *(f"org:acme/{n}" for n in range(1, 7)),
            "org:acme/1000001",
        ]
    finally:
        server.stop()


def test_creditgate_migrate_moves_a_layout_1_redis_and_says_how_much(redis_server: RedisServer, tmp_path: Path) -> None:
    load_fixture(redis_server.url)
    env = {
        **os.environ,
        "CREDITGATE_REDIS_URL": redis_server.url,
        "CREDITGATE_DATABASE_URL": f"sqlite:///{tmp_path / 'ledger.db'}",
    }
    first = subprocess.run([CREDITGATE, "migrate"], env=env, capture_output=True, text=True, timeout=60)
    assert (first.returncode, first.stdout.strip().splitlines()[-1]) == (0, "8 of 8 shards migrated, 19 keys moved")
    again = subprocess.run([CREDITGATE, "migrate"], env=env, capture_output=True, text=True, timeout=60)
    assert (again.returncode, again.stdout.strip().splitlines()[-1]) == (0, "0 of 8 shards migrated, 0 keys moved")


def test_a_layout_2_redis_gets_its_wallet_index_at_start_and_spends_and_expires_exactly(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    doc = load_fixture(redis_server.url, FIXTURE_V2)
    assert len(next(item["value"] for item in doc["keys"] if item["key"] == "cg:{s2}:b:jane")) == 37
    server = RunningServer(server_settings(redis_server.url, tmp_path), ManualClock(doc["clock_ms"]))
    try:
        client = redis.Redis.from_url(redis_server.url, decode_responses=True)
        keys = KeySpace(server.app.settings.shards)
        assert [client.hget(meta, "layout") for meta in keys.all_metas()] == ["3"] * 8
        for customer_id in ("jane", "org:acme"):
            assert_wallet_index_exact(redis_server.url, server.app.settings.shards, customer_id)
        assert {c: server.available(c) for c in doc["balances"]} == doc["balances"] == {"jane": 74, "org:acme": 4993}

        # The open hold commits 5 of its 20 and gives back 15 (5 to the grant, 10 to 1-day top-ups); then a debit
        # of 10 takes the front of the spending order, the way layout 2 sorted every bucket: priority, earliest
        # expiry (never last), oldest: the grant's 5, then 1-day top-ups.
        committed = server.metering.Commit(
            metering_pb2.CommitRequest(reservation_id=doc["open_reservation"], quantity=5, request_id="c")
        )
        assert (committed.credits_charged, committed.credits_released, committed.balance_after) == (5, 15, 89)
        before = {
            str(bucket_id): str(value) for bucket_id, value in client.hgetall(keys.for_customer("jane").buckets).items()
        }
        debit = server.debit("jane", "email_unlock", quantity=10, request_id="after-migration")
        assert debit.balance_after == 79
        order = sorted(
            (bucket_codec.decode(bucket_id, value) for bucket_id, value in before.items()),
            key=lambda b: (b.priority, b.expires_at_ms or float("inf"), b.seq),
        )
        expected, left = {}, 10
        for bucket in order:
            taken = min(left, bucket.remaining)
            left -= taken
            if bucket.remaining - taken:
                expected[bucket.id] = bucket.remaining - taken
        balance = server.metering.GetBalance(metering_pb2.GetBalanceRequest(customer_id="jane"))
        assert {b.id: b.remaining_credits for b in balance.buckets} == expected

        # A day later the 1-day top-ups left (15 credits) expire, found through the expiry index the migration built.
        due = sum(
            remaining
            for bucket_id, remaining in expected.items()
            if 0 < bucket_codec.decode(bucket_id, before[bucket_id]).expires_at_ms <= doc["clock_ms"] + 86_400_001
        )
        server.clock.set(from_ms(doc["clock_ms"] + 86_400_001))
        assert (due, server.available("jane")) == (15, 64)
        assert_wallet_index_exact(redis_server.url, server.app.settings.shards, "jane")
    finally:
        server.stop()

"""`creditgate reshard`: every customer moved from the 8 shards of a single node to the 256 a cluster spreads, on a
single Redis and on the 3+3 Redis Cluster, with what a dead sidecar's flusher had read and not written."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import redis
from creditgate.server.clock import ManualClock, to_ms
from creditgate.server.engine.keys import KeySpace
from creditgate.server.errors import FailedPrecondition
from creditgate.server.ledger.commands import run_reshard
from creditgate.server.ledger.flusher import GROUP
from creditgate.server.ledger.reconcile import reconcile
from creditgate.v1 import admin_pb2, metering_pb2
from google.protobuf.duration_pb2 import Duration
from harness import JAN_1, RunningServer, server_settings, start_server
from redis.cluster import RedisCluster
from rich.console import Console

# Ids with every character an id may have.
CUSTOMERS = [f"reshard:{n}" for n in range(48)] + ["org:a@b.c+d_e-f"]


def client_for(url: str) -> redis.Redis | RedisCluster:
    seeds = url.split(",")
    if len(seeds) == 1:
        return redis.Redis.from_url(seeds[0], decode_responses=True)
    host, port = seeds[0].removeprefix("redis://").split("/")[0].split(":")
    return RedisCluster(host=host, port=int(port), decode_responses=True)


@pytest.mark.parametrize("topology", ["redis_server", "redis_cluster"])
def test_reshard_moves_every_customer_from_8_to_256_shards(
    request: pytest.FixtureRequest, topology: str, tmp_path: Path
) -> None:
    url = request.getfixturevalue(topology).url
    server = start_server(url, tmp_path, shards=8)
    try:
        answers, holds = {}, {}
        for customer in CUSTOMERS:
            server.create_customer(customer, plan="basic")
            answers[customer] = server.debit(customer, "email_unlock", 3, request_id=f"{customer}-r1")
            holds[customer] = server.metering.Reserve(
                metering_pb2.ReserveRequest(
                    customer_id=customer, feature="email_unlock", quantity=10, ttl=Duration(seconds=3600)
                )
            )
        balances = {customer: server.available(customer) for customer in CUSTOMERS}
        server.flush()
        late = {customer: server.debit(customer, "email_unlock", request_id=f"{customer}-r2") for customer in CUSTOMERS}
    finally:
        # A sidecar's flusher that read the last decisions and died before writing them: pending, not in the ledger.
        client = client_for(url)
        old = KeySpace(8)
        for stream in old.all_outboxes():
            client.xreadgroup(GROUP, "dead-sidecar", {stream: ">"}, count=10_000)
        server.stop()
    waiting = sum(int(client.xlen(stream)) for stream in old.all_outboxes())
    assert waiting == len(CUSTOMERS)

    settings = server_settings(url, tmp_path, shards=256)
    with pytest.raises(FailedPrecondition):
        RunningServer(settings, ManualClock(to_ms(JAN_1)))
    out = io.StringIO()
    assert run_reshard(settings, Console(file=out, width=200)) == 0
    new = KeySpace(256)
    moving = [c for c in CUSTOMERS if new.shard_of(c) != old.shard_of(c)]
    assert f"{len(CUSTOMERS)} outbox entries of the 8 old shards moved into the ledger" in out.getvalue()
    assert f"{len(moving)} customers moved from 8 to 256 shards" in out.getvalue()
    # Every key of a moved customer is under its new tag only; customers now sit on tags past the old eight.
    for customer in moving:
        before, after = old.for_customer(customer), new.for_customer(customer)
        kinds = ("customer", "buckets", "bucket_order", "holds")
        assert [client.exists(getattr(before, kind)) for kind in kinds] == [0, 0, 0, 0]
        assert [client.exists(getattr(after, kind)) for kind in kinds] == [1, 1, 1, 1]
        assert client.exists(after.request(f"{customer}-r1")) == 1
        assert 0 < client.pttl(after.request(f"{customer}-r1")) <= server.app.settings.idempotency_ttl_seconds * 1000
    assert len({new.shard_of(c) for c in CUSTOMERS if new.shard_of(c) >= 8}) > 30
    # The open holds are due in their new shard's set, where the sweeper looks for them.
    due = {
        str(m)
        for s in range(256)
        for m in client.zrange(new.holds_due(s), 0, -1)
        if s == new.shard_of(str(m).rpartition("/")[0])
    }
    assert due == {hold.reservation_id for hold in holds.values()}

    moved = RunningServer(settings, ManualClock(to_ms(JAN_1)))
    try:
        for customer in CUSTOMERS:
            assert moved.available(customer) == balances[customer] - 1, customer
            # Remembered answers moved with their customers: a retry is answered, not charged again.
            replay = moved.debit(customer, "email_unlock", 3, request_id=f"{customer}-r1")
            assert replay.entry_id == answers[customer].entry_id
            # The dead sidecar's entries reached the ledger; the open hold settles once.
            assert late[customer].entry_id in {e.entry_id for e in moved.ledger(customer)}
            committed = moved.metering.Commit(
                metering_pb2.CommitRequest(reservation_id=holds[customer].reservation_id, quantity=4)
            )
            assert committed.credits_charged == 4
            assert moved.available(customer) == balances[customer] - 1 + 10 - 4
        debits = [e for c in CUSTOMERS for e in moved.ledger(c) if e.kind == admin_pb2.LEDGER_ENTRY_KIND_DEBIT]
        assert len(debits) == 2 * len(CUSTOMERS)
        report = moved.call(reconcile(moved.app.redis, moved.app.store, new, moved.clock.now_ms()))
        assert (report.customers_checked, report.drifts) == (len(CUSTOMERS), [])
    finally:
        moved.stop()
    # Run again: nothing left to move.
    assert run_reshard(settings, Console(file=io.StringIO())) == 0

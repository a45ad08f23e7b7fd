"""creditgate on a real Redis Cluster: 3 primaries, 3 replicas, started by the test suite."""

from __future__ import annotations

import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
import redis
from creditgate.server.clock import ManualClock, to_ms
from creditgate.server.engine.cluster import slot_of
from creditgate.server.engine.keys import KeySpace
from creditgate.server.errors import FailedPrecondition
from creditgate.server.settings import CLUSTER_SHARDS
from creditgate.v1 import admin_pb2, metering_pb2
from google.protobuf.duration_pb2 import Duration
from harness import JAN_1, RedisClusterServer, RedisServer, RunningServer, server_settings, start_server
from redis.asyncio.cluster import RedisCluster


def test_the_cluster_has_three_primaries_each_with_a_replica(redis_cluster: RedisClusterServer) -> None:
    primaries = redis_cluster.primaries()
    assert len(primaries) == 3
    replicas_of = {
        node.port: redis.Redis(port=node.port, decode_responses=True).info("replication")["connected_slaves"]
        for node in primaries
    }
    assert replicas_of == {node.port: 1 for node in primaries}
    info = redis.Redis(port=primaries[0].port, decode_responses=True).cluster("INFO")
    assert (info["cluster_state"], int(info["cluster_slots_assigned"]), int(info["cluster_known_nodes"])) == (
        "ok",
        16384,
        6,
    )


def test_decisions_on_the_cluster_route_by_slot_and_reach_the_ledger(
    redis_cluster: RedisClusterServer, tmp_path: Path
) -> None:
    server = start_server(redis_cluster.url, tmp_path)
    try:
        assert isinstance(server.app.redis, RedisCluster)
        customers = [f"org:{n}" for n in range(24)]
        for customer in customers:
            server.create_customer(customer, plan="basic")
        for customer in customers:
            assert server.debit(customer, "api_enrichment", 3).credits_charged == 3
        batch = server.metering.CheckAndDebitBatch(
            metering_pb2.CheckAndDebitBatchRequest(
                items=[
                    metering_pb2.CheckAndDebitRequest(customer_id=customer, feature="api_enrichment", quantity=2)
                    for customer in customers
                ]
            )
        )
        assert [result.decision.credits_charged for result in batch.results] == [2] * 24
        assert {server.available(customer) for customer in customers} == {2495}
        kinds = {
            tuple(admin_pb2.LedgerEntryKind.Name(e.kind) for e in server.ledger(customer)) for customer in customers
        }
        assert kinds == {("LEDGER_ENTRY_KIND_GRANT", "LEDGER_ENTRY_KIND_DEBIT", "LEDGER_ENTRY_KIND_DEBIT")}
    finally:
        server.stop()


def test_customers_spread_over_every_primary_and_reconcile_walks_them_all(
    redis_cluster: RedisClusterServer, tmp_path: Path
) -> None:
    server = start_server(redis_cluster.url, tmp_path)
    try:
        assert server.app.settings.shards == CLUSTER_SHARDS
        customers = [f"user{n}@example.com" for n in range(300)]
        for customer in customers:
            server.create_customer(customer, plan="basic")
            assert server.debit(customer, "api_enrichment", 7).allowed
        keys_per_primary = {node.port: int(redis.Redis(port=node.port).dbsize()) for node in redis_cluster.primaries()}
        # Per primary: its customers' keys (customer, buckets, usage) and the outboxes, metas and request keys of
        # its shards.
        print(f"keys per primary: {keys_per_primary}")
        assert len(keys_per_primary) == 3
        assert all(count > 0 for count in keys_per_primary.values())
        customers_per_primary = {
            node.port: len(list(redis.Redis(port=node.port).scan_iter(match="cg:{s*}:c:*", count=1000)))
            for node in redis_cluster.primaries()
        }
        print(f"customers per primary: {customers_per_primary}")
        assert sum(customers_per_primary.values()) == 300
        assert min(customers_per_primary.values()) >= 50

        unflushed = server.reconcile()
        assert (unflushed.customers_checked, unflushed.drifts) == (300, [])
        server.flush()  # the flusher's own loop may have moved some already
        # Every customer's grant and debit reached the ledger, from the streams of every primary.
        assert sum(len(server.ledger(customer)) for customer in customers) == 300 * 2
        flushed = server.reconcile()
        assert (flushed.customers_checked, flushed.drifts) == (300, [])
    finally:
        server.stop()


def test_restore_rebuilds_every_customer_on_every_primary(redis_cluster: RedisClusterServer, tmp_path: Path) -> None:
    server = start_server(redis_cluster.url, tmp_path)
    try:
        customers = [f"acct-{n}" for n in range(60)]
        for customer in customers:
            server.create_customer(customer, plan="basic")
            assert server.debit(customer, "api_enrichment", 11).allowed
        server.flush()
        for node in redis_cluster.primaries():
            # Every customer's keys gone, as in a Redis that lost them; the outboxes, metas and groups stay.
            client = redis.Redis(port=node.port)
            for key in client.scan_iter(match="cg:{s*}:[cbu]:*", count=1000):
                client.delete(key)
        report = server.restore()
        assert (report.customers, report.credits) == (60, 60 * 2489)
        assert {server.available(customer) for customer in customers} == {2489}
        assert server.reconcile().drifts == []
    finally:
        server.stop()


def test_the_hold_sweeper_expires_holds_on_every_primary(redis_cluster: RedisClusterServer, tmp_path: Path) -> None:
    server = start_server(redis_cluster.url, tmp_path, hold_sweep_interval_seconds=0.05)
    try:
        customers = [f"holder-{n}" for n in range(30)]
        for customer in customers:
            server.create_customer(customer, plan="basic")
            server.metering.Reserve(
                metering_pb2.ReserveRequest(
                    customer_id=customer,
                    feature="api_enrichment",
                    quantity=40,
                    ttl=Duration(seconds=2),
                    request_id=f"hold-{customer}",
                )
            )
        assert {server.reserved_in_redis(customer) for customer in customers} == {40}
        server.clock.advance(2)
        deadline = time.monotonic() + 10
        while any(server.reserved_in_redis(customer) for customer in customers):
            assert time.monotonic() < deadline, "the sweeper did not expire every hold"
            time.sleep(0.05)
        assert {server.available(customer) for customer in customers} == {2500}
    finally:
        server.stop()


def test_a_start_with_another_shard_count_is_refused(redis_server: RedisServer, tmp_path: Path) -> None:
    start_server(redis_server.url, tmp_path, shards=8).stop()
    settings = server_settings(redis_server.url, tmp_path, shards=16)
    with pytest.raises(FailedPrecondition) as refused:
        RunningServer(settings, ManualClock(to_ms(JAN_1)))
    assert (refused.value.field, refused.value.reason) == ("shards", "SHARDS_CHANGED")
    assert "start with CREDITGATE_SHARDS=8" in refused.value.message
    assert "run `creditgate reshard` with CREDITGATE_SHARDS=16" in refused.value.message


def debit_retrying(
    server: RunningServer, customer: str, request_id: str
) -> tuple[metering_pb2.CheckAndDebitResponse, int]:
    """A client that retries UNAVAILABLE with the same request_id (the documented safe retry); returns the answer
    and how many retries it took."""
    for retries in range(50):
        try:
            return server.debit(customer, "api_enrichment", 1, request_id=request_id), retries
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.UNAVAILABLE:
                raise
            time.sleep(0.05)
    raise AssertionError(f"{request_id} never answered")


def test_slots_moved_between_primaries_under_load_fail_nothing_and_charge_once(
    redis_cluster: RedisClusterServer, tmp_path: Path
) -> None:
    server = start_server(redis_cluster.url, tmp_path, flush_interval_seconds=0.2)
    try:
        keys = KeySpace(server.app.settings.shards)
        # Two busy shards, their customers hammered while their slots move to another primary.
        shards = sorted({keys.shard_of(f"mover-{n}") for n in range(200)})[:2]
        movers = [c for c in (f"mover-{n}" for n in range(200)) if keys.shard_of(c) in shards][:12]
        for customer in movers:
            server.create_customer(customer, plan="basic")
        slots = [slot_of(keys.shard_tag(shard)[1:-1]) for shard in shards]
        before = redis_cluster.error_counts()
        stop = threading.Event()
        answers: list[tuple[str, str, int, int]] = []

        def client(customer: str) -> None:
            n = 0
            while not stop.is_set():
                n += 1
                request_id = f"{customer}-{n}"
                answer, retries = debit_retrying(server, customer, request_id)
                # Every so often the same request_id again: the first answer, never a second charge.
                if n % 5 == 0:
                    again, _ = debit_retrying(server, customer, request_id)
                    assert again.entry_id == answer.entry_id
                answers.append((customer, answer.entry_id, answer.credits_charged, retries))

        with ThreadPoolExecutor(len(movers)) as pool:
            running = [pool.submit(client, customer) for customer in movers]
            time.sleep(0.3)
            moved = []
            for slot in slots:
                source = redis_cluster.owner(slot)
                target = next(node for node in redis_cluster.primaries() if node.port != source.port)
                moved.append(redis_cluster.move_slot(slot, target))
                assert redis_cluster.owner(slot).port == target.port
            time.sleep(0.3)
            stop.set()
            for future in running:
                future.result()
        after = redis_cluster.error_counts()
        redirects = {code: after.get(code, 0) - before.get(code, 0) for code in ("MOVED", "ASK", "TRYAGAIN")}
        retried = sum(retries for *_, retries in answers)
        print(f"keys moved {moved}, decisions {len(answers)}, redirects {redirects}, client retries {retried}")
        assert all(count > 0 for count in moved)
        assert redirects["MOVED"] > 0
        assert {charged for _, _, charged, _ in answers} == {1}
        for customer in movers:
            entries = [entry for c, entry, _, _ in answers if c == customer]
            debits = [e for e in server.ledger(customer) if e.kind == admin_pb2.LEDGER_ENTRY_KIND_DEBIT]
            # Each request_id charged once: one ledger debit per answered request, with the answer's entry id.
            assert sorted(e.entry_id for e in debits) == sorted(entries)
            assert server.available(customer) == 2500 - len(entries)
        assert server.reconcile().drifts == []
    finally:
        server.stop()


def test_with_wait_replicas_a_change_is_answered_once_its_replica_has_it(
    redis_cluster: RedisClusterServer, tmp_path: Path
) -> None:
    server = start_server(redis_cluster.url, tmp_path, redis_wait_replicas=1, redis_timeout_seconds=1)
    try:
        customers = [f"waiter-{n}" for n in range(12)]
        for customer in customers:
            server.create_customer(customer, plan="basic")
        assert server.debit(customers[0], "api_enrichment", 5, request_id="w-1").credits_charged == 5
        # The replica of customers[1]'s primary stopped: its changes cannot be confirmed.
        keys = KeySpace(server.app.settings.shards)
        primary = redis_cluster.owner(slot_of(keys.for_customer(customers[1]).customer))
        replica = redis_cluster.replica_of(primary)
        assert replica.process is not None
        os.kill(replica.process.pid, signal.SIGSTOP)
        try:
            with pytest.raises(grpc.RpcError) as unconfirmed:
                server.debit(customers[1], "api_enrichment", 5, request_id="w-2")
        finally:
            os.kill(replica.process.pid, signal.SIGCONT)
        assert unconfirmed.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "REDIS_WAIT_TIMEOUT" in str(unconfirmed.value.trailing_metadata())
        # It ran on the primary: the retry with the same request_id gets that answer, charged once.
        retried = server.debit(customers[1], "api_enrichment", 5, request_id="w-2")
        assert (retried.credits_charged, retried.balance_after) == (5, 2495)
        batch = server.metering.CheckAndDebitBatch(
            metering_pb2.CheckAndDebitBatchRequest(
                items=[
                    metering_pb2.CheckAndDebitRequest(
                        customer_id=customer, feature="api_enrichment", quantity=2, request_id=f"b-{customer}"
                    )
                    for customer in customers
                ]
            )
        )
        assert [result.decision.credits_charged for result in batch.results] == [2] * 12
        debits = [
            e for customer in customers for e in server.ledger(customer) if e.kind == admin_pb2.LEDGER_ENTRY_KIND_DEBIT
        ]
        assert sorted(-e.credits_delta for e in debits) == [2] * 12 + [5, 5]
    finally:
        server.stop()

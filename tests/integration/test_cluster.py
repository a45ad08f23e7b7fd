"""creditgate on a real Redis Cluster: 3 primaries, 3 replicas, started by the test suite."""

from __future__ import annotations

from pathlib import Path

import redis
from creditgate.v1 import admin_pb2, metering_pb2
from harness import RedisClusterServer, start_server
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

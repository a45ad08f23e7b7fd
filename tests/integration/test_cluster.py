"""creditgate on a real Redis Cluster: 3 primaries, 3 replicas, started by the test suite."""

from __future__ import annotations

import redis
from harness import RedisClusterServer


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

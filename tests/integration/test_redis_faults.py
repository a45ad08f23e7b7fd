"""Redis answers that mean "not here" or "not now", produced by a real redis-server under the real server: a
replica after a failover (READONLY), a replica cut off from its primary (MASTERDOWN), a script holding Redis
(BUSY), a Redis loading its data (LOADING), a full memory (OOM). Each answers UNAVAILABLE with a reason naming it,
charges nothing, and the next call after the cause is gone succeeds without anyone stepping in."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import redis
from billing import error_reason
from creditgate.client import Client, RetryPolicy
from creditgate.server.engine.wire import RedisWire
from creditgate.v1 import metering_pb2
from harness import RedisServer, RunningServer, free_port, start_server
from redis.exceptions import BusyLoadingError, ResponseError

UNAVAILABLE = grpc.StatusCode.UNAVAILABLE


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test alone: the test turns it into a replica, fills it, restarts it."""
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def sidecar(own_redis: RedisServer, tmp_path: Path) -> Iterator[RunningServer]:
    running = start_server(own_redis.url, tmp_path)
    running.create_customer("acme", plan="basic")
    assert running.debit("acme", "email_unlock").balance_after == 2499
    yield running
    running.stop()


def refused(sidecar: RunningServer, request_id: str) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as failure:
        sidecar.debit("acme", "email_unlock", request_id=request_id)
    return error_reason(failure.value)


def refusals(sidecar: RunningServer) -> float:
    """CheckAndDebit calls the server answered UNAVAILABLE."""
    value = sidecar.app.metrics.registry.get_sample_value(
        "creditgate_rpcs_total", {"rpc": "CheckAndDebit", "code": "UNAVAILABLE"}
    )
    return value or 0.0


@pytest.mark.parametrize(
    ("serve_stale_data", "reason"),
    [("yes", "REDIS_READONLY"), ("no", "REDIS_MASTERDOWN")],
    ids=["readonly", "masterdown"],
)
def test_a_replica_answers_unavailable_and_the_promoted_redis_serves_the_next_call(
    own_redis: RedisServer, sidecar: RunningServer, serve_stale_data: str, reason: str
) -> None:
    admin = redis.Redis(port=own_redis.port)
    admin.config_set("replica-serve-stale-data", serve_stale_data)
    admin.replicaof("127.0.0.1", str(free_port()))  # a primary that is not there: the link stays down
    try:
        assert refused(sidecar, "during-failover") == (UNAVAILABLE, reason)
        assert refused(sidecar, "during-failover") == (UNAVAILABLE, reason)
    finally:
        admin.replicaof("NO", "ONE")
    decision = sidecar.debit("acme", "email_unlock", request_id="during-failover")
    assert (decision.allowed, decision.balance_after) == (True, 2498)
    assert [entry.credits_delta for entry in sidecar.ledger("acme")] == [2500, -1, -1]


def test_a_batch_on_a_replica_answers_unavailable_and_reconnects(
    own_redis: RedisServer, sidecar: RunningServer
) -> None:
    # decide_many runs each decision in a pcall: READONLY reaches the server inside a normal reply, item by item,
    # so the wire itself never saw it and is told to connect again.
    sidecar.create_customer("beta", plan="basic")
    batch = metering_pb2.CheckAndDebitBatchRequest(
        items=[metering_pb2.CheckAndDebitRequest(customer_id=c, feature="email_unlock") for c in ("acme", "beta")]
    )
    admin = redis.Redis(port=own_redis.port)
    admin.replicaof("127.0.0.1", str(free_port()))
    try:
        with pytest.raises(grpc.RpcError) as failure:
            sidecar.metering.CheckAndDebitBatch(batch)
        wire = sidecar.app.scripts._wire
        assert isinstance(wire, RedisWire)
        wire_dropped = wire._protocol is None
    finally:
        admin.replicaof("NO", "ONE")
    assert error_reason(failure.value) == (UNAVAILABLE, "REDIS_READONLY")
    assert wire_dropped
    results = sidecar.metering.CheckAndDebitBatch(batch).results
    assert [result.decision.balance_after for result in results] == [2498, 2499]


def test_the_python_client_retries_through_a_read_only_window_and_is_charged_once(
    own_redis: RedisServer, sidecar: RunningServer
) -> None:
    admin = redis.Redis(port=own_redis.port)
    admin.replicaof("127.0.0.1", str(free_port()))
    promoted = threading.Timer(0.5, lambda: redis.Redis(port=own_redis.port).replicaof("NO", "ONE"))
    promoted.start()
    try:
        retry = RetryPolicy(max_attempts=50, initial_backoff_seconds=0.05, max_backoff_seconds=0.1)
        with Client(f"127.0.0.1:{sidecar.app.port}", retry=retry, timeout=10) as client:
            decision = client.check_and_debit("acme", "email_unlock", request_id="retried")
            replayed = client.check_and_debit("acme", "email_unlock", request_id="retried")
    finally:
        promoted.join()
        admin.replicaof("NO", "ONE")
    assert refusals(sidecar) >= 2  # attempts answered UNAVAILABLE while Redis was a replica, then one went through
    assert (decision.allowed, decision.balance_after, decision.entry_id) == (True, 2498, "acme/3")
    assert (replayed.allowed, replayed.balance_after, replayed.entry_id) == (True, 2498, "acme/3")
    assert [entry.credits_delta for entry in sidecar.ledger("acme")] == [2500, -1, -1]


def _run_forever(port: int, outcome: list[str]) -> None:
    try:
        redis.Redis(port=port).eval("while true do end", 0)
    except ResponseError as exc:
        outcome.append(str(exc))


def test_a_redis_busy_with_a_script_answers_unavailable_until_the_script_is_killed(
    own_redis: RedisServer, sidecar: RunningServer
) -> None:
    admin = redis.Redis(port=own_redis.port)
    admin.config_set("busy-reply-threshold", 100)
    outcome: list[str] = []
    busy = threading.Thread(target=_run_forever, args=(own_redis.port, outcome))
    busy.start()
    try:
        while True:  # until Redis says BUSY: the script runs, past the threshold
            try:
                admin.ping()
            except ResponseError as exc:
                assert str(exc).startswith("BUSY")
                break
        assert refused(sidecar, "while-busy") == (UNAVAILABLE, "REDIS_BUSY")
    finally:
        admin.script_kill()
        busy.join()
    assert outcome and outcome[0].startswith("Script killed")
    decision = sidecar.debit("acme", "email_unlock", request_id="while-busy")
    assert (decision.allowed, decision.balance_after) == (True, 2498)
    assert [entry.credits_delta for entry in sidecar.ledger("acme")] == [2500, -1, -1]


def test_a_redis_out_of_memory_answers_unavailable_until_memory_is_freed(
    own_redis: RedisServer, sidecar: RunningServer
) -> None:
    admin = redis.Redis(port=own_redis.port)
    admin.config_set("maxmemory", 1)  # noeviction (the default): every write is refused
    try:
        assert refused(sidecar, "full") == (UNAVAILABLE, "REDIS_OOM")
    finally:
        admin.config_set("maxmemory", 0)
    decision = sidecar.debit("acme", "email_unlock", request_id="full")
    assert (decision.allowed, decision.balance_after) == (True, 2498)
    assert [entry.credits_delta for entry in sidecar.ledger("acme")] == [2500, -1, -1]


# 40,000 keys loaded at 50 us each: Redis answers LOADING for about two seconds after a restart.
FILLER_KEYS = 40_000


def test_a_restarted_redis_loading_its_data_answers_unavailable_then_serves(
    own_redis: RedisServer, sidecar: RunningServer
) -> None:
    admin = redis.Redis(port=own_redis.port)
    for start in range(0, FILLER_KEYS, 1000):
        admin.mset({f"filler:{n}": "x" for n in range(start, start + 1000)})
    admin.save()
    own_redis.stop()
    # Slow loading, and clients answered (LOADING) often while it lasts.
    own_redis.extra = ("--key-load-delay", "50", "--loading-process-events-interval-bytes", "1024")
    restarting = threading.Thread(target=own_redis.start)  # returns once Redis has loaded its data
    restarting.start()
    try:
        deadline = time.monotonic() + 10
        while True:  # until the new Redis accepts connections and says it is loading
            try:
                redis.Redis(port=own_redis.port).ping()
                raise AssertionError("Redis loaded its data before the test saw it loading")
            except BusyLoadingError:
                break
            except redis.ConnectionError:
                assert time.monotonic() < deadline
                time.sleep(0.01)
        assert refused(sidecar, "while-loading") == (UNAVAILABLE, "REDIS_LOADING")
    finally:
        restarting.join()
    decision = sidecar.debit("acme", "email_unlock", request_id="while-loading")
    assert (decision.allowed, decision.balance_after) == (True, 2498)
    assert [entry.credits_delta for entry in sidecar.ledger("acme")] == [2500, -1, -1]

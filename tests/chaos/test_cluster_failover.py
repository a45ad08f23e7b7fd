"""A primary of a Redis Cluster SIGKILLed under 64 clients, the sidecar left running: its replica takes over,
decisions resume, and with CREDITGATE_REDIS_WAIT_REPLICAS=1 no acknowledged decision is lost (Redis and ledger),
no retried request_id is charged twice, nothing is overspent, and reconcile is clean afterwards.

The cluster has two replicas per primary (3+6, its own, not the session's): with one, the promoted replica has no
replica of its own until the killed node is back, and WAIT 1 answers UNAVAILABLE for its slots until then. (The
killed node restarted empty and rejoining is not covered yet: tried once, two request_ids were answered with one
entry id — issue 17.)"""

from __future__ import annotations

import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from creditgate.server.engine.cluster import slot_of
from creditgate.server.engine.keys import KeySpace
from creditgate.server.ledger.reconcile import reconcile
from creditgate.v1 import admin_pb2, metering_pb2, metering_pb2_grpc
from harness import RedisClusterServer, RunningServer, start_server

CUSTOMERS = [f"failover:{n}" for n in range(64)]
CLIENTS = 64
GRANT = 2500


@dataclass
class Answers:
    """Every acknowledged decision: entry_id -> (customer, credits charged); when each was answered."""

    allowed: dict[str, tuple[str, int]] = field(default_factory=dict)
    answered_at: dict[str, list[float]] = field(default_factory=dict)
    unavailable: int = 0
    errors: list[BaseException] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def load(server: RunningServer, answers: Answers, stop: threading.Event) -> list[threading.Thread]:
    """CLIENTS threads, one customer each, debiting 1 credit a call; UNAVAILABLE is retried with the same
    request_id (as the clients do) until it is answered."""
    channel = grpc.insecure_channel(f"127.0.0.1:{server.app.port}")
    stub = metering_pb2_grpc.MeteringServiceStub(channel)

    def client(customer: str) -> None:
        try:
            n = 0
            while not stop.is_set():
                n += 1
                request = metering_pb2.CheckAndDebitRequest(
                    customer_id=customer, feature="api_enrichment", quantity=1, request_id=f"{customer}-r{n}"
                )
                while True:
                    try:
                        answer = stub.CheckAndDebit(request, timeout=10)
                        break
                    except grpc.RpcError as exc:
                        if exc.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                            raise
                        with answers.lock:
                            answers.unavailable += 1
                        time.sleep(0.05)
                with answers.lock:
                    assert answer.entry_id not in answers.allowed, "two request_ids answered with one entry"
                    answers.allowed[answer.entry_id] = (customer, answer.credits_charged)
                    answers.answered_at.setdefault(customer, []).append(time.monotonic())
        except BaseException as exc:
            with answers.lock:
                answers.errors.append(exc)

    threads = [threading.Thread(target=client, args=(customer,)) for customer in CUSTOMERS[:CLIENTS]]
    for thread in threads:
        thread.start()
    return threads


@pytest.mark.slow
def test_a_primary_killed_under_load_with_wait_1_loses_no_acknowledged_decision(tmp_path: Path) -> None:
    cluster = RedisClusterServer(tmp_path / "cluster", node_timeout_ms=2000, replicas=2)
    cluster.start()
    server = start_server(cluster.url, tmp_path, redis_wait_replicas=1, flush_interval_seconds=0.2)
    try:
        for customer in CUSTOMERS:
            server.create_customer(customer, plan="basic")
        keys = KeySpace(server.app.settings.shards)
        victim = cluster.owner(slot_of(keys.for_customer(CUSTOMERS[0]).customer))
        on_victim = [c for c in CUSTOMERS[:CLIENTS] if cluster.owner(slot_of(keys.for_customer(c).customer)) is victim]
        answers = Answers()
        stop = threading.Event()
        threads = load(server, answers, stop)
        time.sleep(1.5)
        assert victim.process is not None
        victim.process.send_signal(signal.SIGKILL)
        victim.process.wait()
        killed_at = time.monotonic()
        # One of its two replicas takes over, and has the other as its replica: WAIT 1 is confirmed again.
        time.sleep(8)
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
        assert answers.errors == []

        # Decisions of the killed primary's customers resumed: the first answer after the kill, per customer.
        resumed = max(min(t for t in answers.answered_at[c] if t > killed_at) - killed_at for c in on_victim)
        lost = []
        overspent = []
        for customer in CUSTOMERS:
            acknowledged = {entry for entry, (c, _) in answers.allowed.items() if c == customer}
            debits = [e for e in server.ledger(customer) if e.kind == admin_pb2.LEDGER_ENTRY_KIND_DEBIT]
            lost += sorted(acknowledged - {e.entry_id for e in debits})
            # Each request_id charged once: one debit per acknowledged answer, no other.
            assert len(debits) == len({e.entry_id for e in debits}) == len(acknowledged)
            available = server.available(customer)
            assert available == GRANT - len(acknowledged)
            overspent += [customer] if available < 0 else []
        report = server.call(reconcile(server.app.redis, server.app.store, keys, server.clock.now_ms()))
        print(
            f"decisions {len(answers.allowed)}, on the killed primary's customers"
            f" {sum(1 for c, _ in answers.allowed.values() if c in on_victim)}, client retries {answers.unavailable},"
            f" resumed {resumed:.2f} s after the kill, lost {len(lost)},"
            f" overspent {len(overspent)}, drift {len(report.drifts)}"
        )
        assert (lost, overspent, report.drifts) == ([], [], [])
        assert resumed < cluster.node_timeout_ms / 1000 + 5
    finally:
        server.stop()
        cluster.stop()

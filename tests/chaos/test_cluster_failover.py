"""A primary of a 3-primary + 3-replica Redis Cluster SIGKILLed under 64 clients, the sidecar left running.

- With CREDITGATE_REDIS_WAIT_REPLICAS=1 the replica takes over and nothing acknowledged is lost (Redis and ledger),
  no retried request_id is charged twice, nothing is overspent, reconcile is clean. The promoted replica has no
  replica of its own until the killed node is back, so WAIT 1 answers UNAVAILABLE for its slots until then: the
  killed node is restarted once its replica has taken over, as a supervisor would, and rejoins as a replica.
- Without WAIT, what the replica had not received when its primary died is lost from Redis: it is detected (the
  promoted replica is another epoch) and each customer rebuilt from the ledger; the ledger holds every acknowledged
  decision it had received, and the test reports how many were lost before reaching it.
- A killed primary restarted empty *before* its replica took over (what Redis's replication docs warn against:
  persistence off and automatic restart) makes its replica sync to the empty data set, so even WAIT 1 cannot keep
  what was acknowledged. The same holds as without WAIT, and no entry id is ever given to two decisions: a rebuilt
  customer numbers from a new block (lib.lua next_number). Before that, two request_ids were answered with one
  entry id here."""

from __future__ import annotations

import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from creditgate.server.engine.cluster import slot_of
from creditgate.server.engine.keys import KeySpace
from creditgate.v1 import admin_pb2, metering_pb2, metering_pb2_grpc
from harness import RedisClusterServer, RedisServer, RunningServer, start_server

CUSTOMERS = [f"failover:{n}" for n in range(64)]
CLIENTS = 64
GRANT = 2500


@dataclass
class Answers:
    """Every acknowledged decision: entry_id -> (customer, request_id); when each was answered."""

    allowed: dict[str, tuple[str, str]] = field(default_factory=dict)
    answered_at: dict[str, list[float]] = field(default_factory=dict)
    reused_entry_ids: list[str] = field(default_factory=list)
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
                request_id = f"{customer}-r{n}"
                request = metering_pb2.CheckAndDebitRequest(
                    customer_id=customer, feature="api_enrichment", quantity=1, request_id=request_id
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
                    if answer.entry_id in answers.allowed:
                        answers.reused_entry_ids.append(answer.entry_id)
                    answers.allowed[answer.entry_id] = (customer, request_id)
                    answers.answered_at.setdefault(customer, []).append(time.monotonic())
        except BaseException as exc:
            with answers.lock:
                answers.errors.append(exc)

    threads = [threading.Thread(target=client, args=(customer,)) for customer in CUSTOMERS[:CLIENTS]]
    for thread in threads:
        thread.start()
    return threads


@dataclass
class Outcome:
    answers: Answers
    victim_customers: list[str]
    killed_at: float
    lost: list[str]  # acknowledged entry ids the ledger does not have
    unacknowledged: list[str]  # ledger debits no answer acknowledged
    charged_twice: list[str]  # request_ids with more than one debit in the ledger
    overspent: list[str]
    drifts: int

    def resumed_seconds(self) -> float:
        """The first answer after the kill, of the killed primary's slowest customer."""
        return max(
            min(t for t in self.answers.answered_at[c] if t > self.killed_at) - self.killed_at
            for c in self.victim_customers
        )

    def report(self) -> str:
        on_victim = sum(1 for c, _ in self.answers.allowed.values() if c in self.victim_customers)
        return (
            f"decisions {len(self.answers.allowed)} ({on_victim} of the killed primary's customers), client retries"
            f" {self.answers.unavailable}, resumed {self.resumed_seconds():.2f} s after the kill, acknowledged but"
            f" lost before reaching the ledger {len(self.lost)}, entry ids reused {len(self.answers.reused_entry_ids)},"
            f" charged twice {len(self.charged_twice)}, overspent {len(self.overspent)}, drift {self.drifts}"
        )


def kill_a_primary_under_load(tmp_path: Path, wait_replicas: int, restart: str) -> Outcome:
    """64 clients; the primary of the first customer's slot SIGKILLed 1.5 s in; `restart`: "after_failover" (once
    its replica serves its slots), "before_failover" (0.3 s after the kill, empty) or "never"."""
    cluster = RedisClusterServer(tmp_path / "cluster", node_timeout_ms=2000, replicas=1)
    cluster.start()
    server = start_server(cluster.url, tmp_path, redis_wait_replicas=wait_replicas, flush_interval_seconds=0.2)
    try:
        for customer in CUSTOMERS:
            server.create_customer(customer, plan="basic")
        keys = KeySpace(server.app.settings.shards)
        first_slot = slot_of(keys.for_customer(CUSTOMERS[0]).customer)
        victim = cluster.owner(first_slot)
        on_victim = [c for c in CUSTOMERS if cluster.owner(slot_of(keys.for_customer(c).customer)) is victim]
        answers = Answers()
        stop = threading.Event()
        threads = load(server, answers, stop)
        time.sleep(1.5)
        assert victim.process is not None
        victim.process.send_signal(signal.SIGKILL)
        victim.process.wait()
        killed_at = time.monotonic()
        if restart == "before_failover":
            time.sleep(0.3)
            victim.start()
        elif restart == "after_failover":
            wait_for_new_owner(cluster, first_slot, victim)
            victim.start()
        time.sleep(10)
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
        assert answers.errors == []
        return outcome(server, keys, answers, on_victim, killed_at)
    finally:
        server.stop()
        cluster.stop()


def wait_for_new_owner(cluster: RedisClusterServer, slot: int, old: RedisServer, timeout_seconds: float = 30) -> None:
    deadline = time.monotonic() + timeout_seconds
    while True:
        try:
            if cluster.owner(slot) is not old:
                return
        except Exception:  # a node asked mid-failover may not answer: ask again
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"no replica took over slot {slot}")
        time.sleep(0.1)


def outcome(server: RunningServer, keys: KeySpace, answers: Answers, on_victim: list[str], killed_at: float) -> Outcome:
    lost: list[str] = []
    unacknowledged: list[str] = []
    charged_twice: list[str] = []
    overspent: list[str] = []
    for customer in CUSTOMERS:
        acknowledged = {entry: rid for entry, (c, rid) in answers.allowed.items() if c == customer}
        debits = [e for e in server.ledger(customer) if e.kind == admin_pb2.LEDGER_ENTRY_KIND_DEBIT]
        in_ledger = {e.entry_id: e.request_id for e in debits}
        lost += sorted(set(acknowledged) - set(in_ledger))
        # An entry id names one decision: the ledger's and the answer's request_id agree.
        unacknowledged += sorted(e for e, rid in in_ledger.items() if acknowledged.get(e) != rid)
        charged_twice += sorted(rid for rid, n in Counter(e.request_id for e in debits).items() if n > 1)
        available = server.available(customer)
        assert available == GRANT - len(debits), customer
        overspent += [customer] if available < 0 else []
    report = server.reconcile()
    return Outcome(answers, on_victim, killed_at, lost, unacknowledged, charged_twice, overspent, len(report.drifts))


@pytest.mark.slow
def test_a_primary_killed_under_load_with_wait_1_loses_no_acknowledged_decision(tmp_path: Path) -> None:
    result = kill_a_primary_under_load(tmp_path, wait_replicas=1, restart="after_failover")
    print(result.report())
    assert (result.lost, result.answers.reused_entry_ids, result.unacknowledged) == ([], [], [])
    assert (result.charged_twice, result.overspent, result.drifts) == ([], [], 0)
    # Node timeout (2 s), the election, the killed node back and in sync: then WAIT 1 is confirmed again (~4.7 s
    # on an idle 2-core machine, up to ~9.6 s seen beside other test runs).
    assert result.resumed_seconds() < 2 + 10


@pytest.mark.slow
def test_a_primary_killed_without_wait_loses_only_what_the_ledger_had_not_received(tmp_path: Path) -> None:
    result = kill_a_primary_under_load(tmp_path, wait_replicas=0, restart="never")
    print(result.report())
    # What was lost is reported (result.lost); nothing else differs: every ledger debit is the decision its id
    # was answered with, no id named two decisions, no request_id charged twice, Redis agrees with the ledger.
    assert (result.answers.reused_entry_ids, result.unacknowledged, result.charged_twice) == ([], [], [])
    assert (result.overspent, result.drifts) == ([], 0)


@pytest.mark.slow
def test_a_primary_restarted_empty_before_failover_never_gives_one_entry_id_to_two_decisions(tmp_path: Path) -> None:
    result = kill_a_primary_under_load(tmp_path, wait_replicas=1, restart="before_failover")
    print(result.report())
    assert (result.answers.reused_entry_ids, result.unacknowledged, result.charged_twice) == ([], [], [])
    assert (result.overspent, result.drifts) == ([], 0)

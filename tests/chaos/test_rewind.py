"""Redis coming back older than the durable ledger, with the sidecar left running under 64 clients: no acknowledged
decision is missing from the ledger or differs there, every customer Redis rewound is rebuilt from the ledger before
its next decision (no operator, no restore), and reconcile is clean afterwards.

The three ways it happens: a restart from an older snapshot (a restore from backup, a failover to a replica that
lagged), FLUSHALL, and a crash under `appendfsync everysec`. The snapshot and FLUSHALL are done between two load
phases, with the outbox drained: what Redis throws away of an outbox it had not handed over yet is gone with it (the
README's durability table)."""

from __future__ import annotations

import itertools
import json
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis
from creditgate.server.engine.keys import KeySpace
from creditgate.v1 import admin_pb2, metering_pb2, metering_pb2_grpc
from harness import RedisServer, RunningServer, start_server

CUSTOMERS = [f"rewind:{n}" for n in range(16)]
CLIENTS = 64


@dataclass
class Answers:
    """Every acknowledged decision: entry_id -> (credits charged, balance after)."""

    allowed: dict[str, tuple[int, int]] = field(default_factory=dict)
    unavailable: int = 0
    # What a client thread failed with (a test thread's exception would otherwise only be a warning).
    errors: list[BaseException] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def load(server: RunningServer, answers: Answers, seconds: float, ids: Iterator[int]) -> None:
    """CLIENTS threads debiting the customers for `seconds`; a call that fails UNAVAILABLE (Redis down) is retried
    with its request_id, as the clients do."""
    stop = time.monotonic() + seconds
    channel = grpc.insecure_channel(f"127.0.0.1:{server.app.port}")
    stub = metering_pb2_grpc.MeteringServiceStub(channel)

    def client(number: int) -> None:
        try:
            decide(number)
        except BaseException as exc:
            with answers.lock:
                answers.errors.append(exc)

    def decide(number: int) -> None:
        while time.monotonic() < stop:
            request_id = f"load-{next(ids)}"
            customer = CUSTOMERS[number % len(CUSTOMERS)]
            request = metering_pb2.CheckAndDebitRequest(
                customer_id=customer, feature="email_unlock", quantity=1 + number % 3, request_id=request_id
            )
            for _ in range(100):
                try:
                    answer = stub.CheckAndDebit(request, timeout=5)
                    break
                except grpc.RpcError as exc:
                    assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc
                    with answers.lock:
                        answers.unavailable += 1
                    time.sleep(0.05)
            else:
                continue  # never acknowledged: nothing to find in the ledger
            assert answer.allowed and answer.entry_id.rpartition("/")[0] == customer
            with answers.lock:
                answers.allowed[answer.entry_id] = (answer.credits_charged, answer.balance_after)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    channel.close()
    assert answers.errors == []


def verified(server: RunningServer, result: str) -> int:
    return int(server.app.metrics.customers_verified.labels(result)._value.get())


def check_ledger(server: RunningServer, answers: Answers) -> None:
    """Every acknowledged decision is in the durable ledger as it was answered; reconcile finds no drift."""
    server.flush()
    missing, different = [], []
    for customer in CUSTOMERS:
        stored = {entry.entry_id: entry for entry in server.ledger(customer)}
        for entry_id, (charged, balance) in answers.allowed.items():
            if entry_id.rpartition("/")[0] != customer:
                continue
            entry = stored.get(entry_id)
            if entry is None:
                missing.append(entry_id)
            elif (entry.credits_delta, entry.balance_after) != (-charged, balance):
                different.append((entry_id, (entry.credits_delta, entry.balance_after), (-charged, balance)))
    assert (missing, different) == ([], [])
    report = server.reconcile()
    assert report.drifts == []
    print(
        f"\n{len(answers.allowed):,} acknowledged, 0 missing or different in the ledger,"
        f" {answers.unavailable:,} UNAVAILABLE retried; customers rebuilt {verified(server, 'rebuilt')},"
        f" verified current {verified(server, 'current')}; reconcile 0"
    )


@pytest.fixture
def rewinding(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[tuple[RedisServer, RunningServer]]:
    extra: tuple[str, ...] = getattr(request, "param", ())
    # Redis's files in memory (tmpfs) when the machine has one: under appendfsync everysec Redis holds its AOF writes
    # back, and answers anyway, for up to 2 s while a background fsync is slow (a loaded test machine's disk); a kill
    # then loses acknowledged writes whatever the sidecar does. These tests are about the sidecar's part.
    memory = Path("/dev/shm")
    workdir = Path(tempfile.mkdtemp(dir=memory)) if memory.is_dir() else tmp_path
    redis_server = RedisServer(workdir / "redis", *extra)
    redis_server.start()
    server = start_server(redis_server.url, tmp_path, flush_interval_seconds=0.05, redis_timeout_seconds=1)
    for customer in CUSTOMERS:
        server.create_customer(customer, "basic")
        server.admin.AdjustCredits(
            admin_pb2.AdjustCreditsRequest(customer_id=customer, delta=1_000_000, reason="load", request_id="fund")
        )
    yield redis_server, server
    server.stop()
    redis_server.stop()
    if workdir != tmp_path:
        shutil.rmtree(workdir, ignore_errors=True)


def run_phases(server: RunningServer, between: Callable[[], object]) -> Answers:
    answers, ids = Answers(), itertools.count()
    load(server, answers, 1.5, ids)
    server.flush()
    between()
    before = len(answers.allowed)
    load(server, answers, 2.0, ids)
    assert len(answers.allowed) > before
    return answers


def test_redis_restarted_from_an_older_snapshot(rewinding: tuple[RedisServer, RunningServer]) -> None:
    redis_server, server = rewinding
    client = redis.Redis.from_url(redis_server.url)
    answers, ids = Answers(), itertools.count()
    load(server, answers, 1.0, ids)
    client.save()
    snapshot = redis_server.workdir / "snapshot.rdb"
    shutil.copy(redis_server.workdir / "dump.rdb", snapshot)
    load(server, answers, 1.0, ids)
    server.flush()
    behind = len(answers.allowed)
    redis_server.stop()  # SIGKILL
    shutil.copy(snapshot, redis_server.workdir / "dump.rdb")
    redis_server.start()
    load(server, answers, 2.0, ids)
    assert len(answers.allowed) > behind
    check_ledger(server, answers)
    assert verified(server, "rebuilt") == len(CUSTOMERS)


def test_flushall(rewinding: tuple[RedisServer, RunningServer]) -> None:
    redis_server, server = rewinding
    answers = run_phases(server, lambda: redis.Redis.from_url(redis_server.url).flushall())
    check_ledger(server, answers)
    assert verified(server, "rebuilt") == len(CUSTOMERS)
    # The customers lost are back with their own names and settings, not created anew.
    assert {KeySpace(server.app.settings.shards).for_customer(c).customer for c in CUSTOMERS} <= {
        key.decode() for key in redis.Redis.from_url(redis_server.url).scan_iter("cg:*:c:*")
    }


@pytest.mark.parametrize("rewinding", [("--appendonly", "yes", "--appendfsync", "everysec")], indirect=True)
def test_redis_killed_under_everysec_and_restarted(rewinding: tuple[RedisServer, RunningServer]) -> None:
    redis_server, server = rewinding
    answers, ids = Answers(), itertools.count()
    loading = threading.Thread(target=load, args=(server, answers, 4.0, ids))
    loading.start()
    time.sleep(1.5)
    redis_server.stop()  # SIGKILL while 64 clients are deciding
    redis_server.start()
    loading.join()
    assert answers.unavailable > 0
    check_ledger(server, answers)
    # Nothing was lost (the AOF is written before a reply leaves): every customer verified current, none rebuilt.
    assert (verified(server, "rebuilt"), verified(server, "current")) == (0, len(CUSTOMERS))


def forge_conflict(server: RunningServer, customer: str, credits: int) -> str:
    """Writes into the outbox a debit of `credits` that reuses the number of the customer's last entry (as a
    decision made on a rewound Redis would), and returns that entry's id."""
    client = redis.Redis.from_url(server.app.redis_url, decode_responses=True)
    outbox = KeySpace(server.app.settings.shards).for_customer(customer).outbox
    server.debit(customer, "email_unlock", 10)
    newest: Any = client.xrevrange(outbox, count=1)
    fields = newest[0][1]
    server.flush()
    entry = json.loads(fields["e"])
    entry.update(d=-credits, b=entry["b"] + entry["d"] + -credits, q=credits, takes=[["b1", credits]])
    client.xadd(outbox, {"type": "ledger", "e": json.dumps(entry)})
    return str(entry["id"])


def test_an_entry_that_reuses_a_ledger_number_is_kept_and_its_customer_rebuilt(server: RunningServer) -> None:
    server.create_customer("kept", "basic")
    server.create_customer("overspent", "basic")
    assert forge_conflict(server, "kept", 100) == "kept/2"
    assert forge_conflict(server, "overspent", 3000) == "overspent/2"
    server.flush()
    # Kept under the next number, not dropped; the customer is rebuilt before it is read or changed again.
    assert [(e.entry_id, e.credits_delta) for e in server.ledger("kept")] == [
        ("kept/1", 2500),
        ("kept/2", -10),
        ("kept/3", -100),
    ]
    assert server.available("kept") == 2390
    after = server.debit("kept", "email_unlock", 1)
    # A rebuilt customer numbers its next entry from a new block: what the lost state had numbered is never reused.
    assert (after.entry_id, after.balance_after) == ("kept/1000001", 2389)
    # The one that spent more than it had: its credits are gone, and the 510 beyond them reported.
    assert server.available("overspent") == 0
    assert verified(server, "rebuilt") == 2
    assert server.app.metrics.overspent_credits._value.get() == 510
    events = {
        customer: [
            (event.type, event.entry_id) for _, event in server.call(server.app.store.list_events(customer, 10, None))
        ]
        for customer in ("kept", "overspent")
    }
    assert ("ledger_conflict", "kept/3") in events["kept"] and ("customer_rebuilt", "kept/3") in events["kept"]
    assert ("credits_overspent", "overspent/3") in events["overspent"]
    report = server.reconcile()
    assert [(drift.customer_id, drift.credits) for drift in report.drifts] == [("overspent", 510)]

"""Chaos: the real sidecar process, real Redis and real PostgreSQL, killed and paused under load from client
threads on 127.0.0.1. Acknowledged decisions must land in PostgreSQL exactly once."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
import redis
from creditgate.server.engine.keys import KeySpace
from creditgate.server.ledger.reconcile import ReconcileReport, reconcile, redis_now_ms
from creditgate.server.store.store import open_store
from creditgate.v1 import admin_pb2, admin_pb2_grpc, metering_pb2, metering_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from harness import APOLLO, OWNER_ROLE, REPO, PostgresServer, RedisServer, free_port

CREDITGATE = REPO / ".venv" / "bin" / "creditgate"
CUSTOMERS = [f"chaos-{n}" for n in range(16)]
# Each answer is awaited at most this long; a call that gets no answer is retried with the same request_id.
CALL_DEADLINE_SECONDS = 2.0
# After the load is told to stop, a request still unanswered is retried for at most this long.
SETTLE_SECONDS = 60.0
RETRIED = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED}
pytestmark = pytest.mark.slow


class Sidecar:
    """`creditgate serve` as a child process on a fixed loopback port."""

    def __init__(self, workdir: Path, redis_url: str, database_url: str, migration_url: str) -> None:
        self.port = free_port()
        self.target = f"127.0.0.1:{self.port}"
        self.workdir = workdir
        self.env = {
            **os.environ,
            "CREDITGATE_LISTEN": self.target,
            "CREDITGATE_REDIS_URL": redis_url,
            "CREDITGATE_DATABASE_URL": database_url,
            "CREDITGATE_DATABASE_MIGRATION_URL": migration_url,
            "CREDITGATE_DATA_DIR": str(workdir),
            "CREDITGATE_SHARDS": "4",
            "CREDITGATE_FLUSH_INTERVAL_SECONDS": "0.05",
            # A killed sidecar's unacknowledged entries are claimed by the next one after this idle time.
            "CREDITGATE_FLUSH_CLAIM_IDLE_SECONDS": "1",
            "CREDITGATE_REDIS_TIMEOUT_SECONDS": "0.5",
            "CREDITGATE_LOG_FORMAT": "json",
        }
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        log = (self.workdir / f"sidecar-{self.starts}.log").open("wb")
        self.process = subprocess.Popen(
            [str(CREDITGATE), "serve", "--catalog", str(APOLLO)],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + 60
        with grpc.insecure_channel(self.target) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            while True:
                try:
                    answer = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
                    if answer.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"sidecar did not start; see {self.workdir}/sidecar-{self.starts}.log")
                time.sleep(0.1)

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait()

    def terminate(self) -> int:
        """SIGTERM: the graceful shutdown; returns the exit code."""
        assert self.process is not None
        self.process.terminate()
        return self.process.wait(timeout=60)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.kill()

    def admin(self) -> admin_pb2_grpc.AdminServiceStub:
        return admin_pb2_grpc.AdminServiceStub(grpc.insecure_channel(self.target))

    def ledger_status(self) -> admin_pb2.GetLedgerStatusResponse:
        response: admin_pb2.GetLedgerStatusResponse = self.admin().GetLedgerStatus(
            admin_pb2.GetLedgerStatusRequest(), timeout=5
        )
        return response

    def wait_flushed(self, timeout_seconds: float = 90) -> None:
        deadline = time.monotonic() + timeout_seconds
        while True:
            try:
                if self.ledger_status().backlog_entries == 0:
                    return
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError("the outbox did not drain")
            time.sleep(0.2)


@dataclass
class Attempt:
    started: float
    ended: float
    code: grpc.StatusCode


@dataclass
class Decision:
    request_id: str
    customer_id: str
    quantity: int
    allowed: bool
    entry_id: str
    charged: int
    answered_at: float


@dataclass
class Load:
    """Client threads, each sending CheckAndDebit calls one after another; a call without an answer is retried
    with the same request_id until it gets one (as an app server should)."""

    target: str
    clients: int
    per_client: int | None = None
    decisions: list[Decision] = field(default_factory=list)
    attempts: list[Attempt] = field(default_factory=list)
    unanswered: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> Load:
        for number in range(self.clients):
            thread = threading.Thread(target=self._client, args=(number,), daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> Load:
        self._stop.set()
        return self.join()

    def join(self) -> Load:
        for thread in self._threads:
            thread.join(timeout=SETTLE_SECONDS + 30)
        assert not any(thread.is_alive() for thread in self._threads)
        return self

    def _client(self, number: int) -> None:
        rng = random.Random(number)
        with grpc.insecure_channel(self.target) as channel:
            metering = metering_pb2_grpc.MeteringServiceStub(channel)
            sent = 0
            while not self._stop.is_set() and (self.per_client is None or sent < self.per_client):
                sent += 1
                request = metering_pb2.CheckAndDebitRequest(
                    customer_id=rng.choice(CUSTOMERS),
                    feature="email_unlock",
                    quantity=rng.randint(1, 3),
                    request_id=uuid.uuid4().hex,
                )
                self._until_answered(metering, request)

    def _until_answered(
        self, metering: metering_pb2_grpc.MeteringServiceStub, request: metering_pb2.CheckAndDebitRequest
    ) -> None:
        give_up: float | None = None
        while True:
            started = time.monotonic()
            try:
                answer = metering.CheckAndDebit(request, timeout=CALL_DEADLINE_SECONDS)
            except grpc.RpcError as exc:
                code = exc.code()
                self.attempts.append(Attempt(started, time.monotonic(), code))
                if code not in RETRIED:
                    raise
                if self._stop.is_set():
                    give_up = give_up or time.monotonic() + SETTLE_SECONDS
                    if time.monotonic() > give_up:
                        self.unanswered.append(request.request_id)
                        return
                time.sleep(0.05)
                continue
            ended = time.monotonic()
            self.attempts.append(Attempt(started, ended, grpc.StatusCode.OK))
            self.decisions.append(
                Decision(
                    request.request_id,
                    request.customer_id,
                    request.quantity,
                    answer.allowed,
                    answer.entry_id,
                    answer.credits_charged,
                    ended,
                )
            )
            return

    def allowed(self) -> list[Decision]:
        return [decision for decision in self.decisions if decision.allowed]


@dataclass
class Stack:
    redis: RedisServer
    postgres: PostgresServer
    database: str
    sidecar: Sidecar

    def debit_rows(self) -> list[tuple[str, str, int]]:
        """(request_id, customer_id, seq) of every debit in PostgreSQL."""
        rows = self.postgres.query(
            self.database, "SELECT request_id, customer_id, seq FROM ledger_entries WHERE kind = 'debit'"
        )
        return [(str(row[0]), str(row[1]), int(row[2])) for row in rows]

    def assert_exactly_once(self, load: Load) -> None:
        """Every acknowledged decision is one PostgreSQL row, and nothing else was charged."""
        assert load.unanswered == []
        allowed = load.allowed()
        assert len(allowed) == len(load.decisions)  # the customers never run out in these tests
        rows = self.debit_rows()
        by_request = {request_id: f"{customer}/{seq}" for request_id, customer, seq in rows}
        assert len(by_request) == len(rows), "a request_id was charged twice"
        assert {d.request_id: d.entry_id for d in allowed} == by_request
        retried = sum(1 for attempt in load.attempts if attempt.code != grpc.StatusCode.OK)
        print(f"acknowledged {len(allowed)}, rows {len(rows)}, failed attempts retried {retried}")

    def redis_backlog(self) -> int:
        client = redis.Redis.from_url(self.redis.url)
        try:
            return sum(int(client.xlen(stream)) for stream in KeySpace(4).all_outboxes())
        finally:
            client.close()

    def reconcile(self) -> ReconcileReport:
        async def run() -> ReconcileReport:
            from redis.asyncio import Redis

            client = Redis.from_url(self.redis.url, decode_responses=True)
            store = open_store(self.postgres.url(self.database), self.postgres.url(self.database, OWNER_ROLE))
            await store.open()
            try:
                return await reconcile(client, store, KeySpace(4), await redis_now_ms(client))
            finally:
                await store.close()
                await client.aclose()

        return asyncio.run(run())

    def command(self, name: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(CREDITGATE), name], env=self.sidecar.env, capture_output=True, text=True, timeout=120, check=False
        )


def make_stack(tmp_path: Path, postgres: PostgresServer, database: str, *redis_args: str) -> Stack:
    redis_server = RedisServer(tmp_path / "redis", *redis_args)
    redis_server.start()
    sidecar = Sidecar(tmp_path, redis_server.url, postgres.url(database), postgres.url(database, OWNER_ROLE))
    sidecar.start()
    admin = sidecar.admin()
    for customer in CUSTOMERS:
        admin.CreateCustomer(admin_pb2.CreateCustomerRequest(customer_id=customer, name=customer))
        admin.CreateSubscription(admin_pb2.CreateSubscriptionRequest(customer_id=customer, plan="basic"))
        admin.TopUp(admin_pb2.TopUpRequest(customer_id=customer, credits=10_000_000, request_id=f"seed-{customer}"))
    return Stack(redis_server, postgres, database, sidecar)


@pytest.fixture
def stack(tmp_path: Path, postgres_server: PostgresServer, postgres_database: str) -> Iterator[Stack]:
    built = make_stack(tmp_path, postgres_server, postgres_database)
    yield built
    built.sidecar.stop()
    built.redis.stop()


@pytest.fixture
def aof_always_stack(tmp_path: Path, postgres_server: PostgresServer, postgres_database: str) -> Iterator[Stack]:
    built = make_stack(tmp_path, postgres_server, postgres_database, "--appendonly", "yes", "--appendfsync", "always")
    yield built
    built.sidecar.stop()
    built.redis.stop()


def test_sigkill_the_sidecar_ten_times_under_64_clients_loses_and_duplicates_nothing(stack: Stack) -> None:
    load = Load(stack.sidecar.target, clients=64).start()
    for _ in range(10):
        time.sleep(1.5)
        stack.sidecar.kill()
        stack.sidecar.start()
    time.sleep(1.0)
    load.stop()
    stack.sidecar.wait_flushed()
    assert len(load.allowed()) > 0
    stack.assert_exactly_once(load)
    assert stack.reconcile().drifts == []


def spawned_children(pid: int) -> list[int]:
    """The multiprocessing children of a process (not its resource tracker)."""
    children = [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    return [child for child in children if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes()]


def test_the_flusher_runs_in_a_child_that_exits_when_the_sidecar_is_killed(stack: Stack) -> None:
    assert stack.sidecar.process is not None
    (flusher,) = spawned_children(stack.sidecar.process.pid)
    before = Load(stack.sidecar.target, clients=4, per_client=25).start().join()
    stack.sidecar.wait_flushed()  # flushed by the child: the serving process runs no flusher task
    assert len(stack.debit_rows()) == len(before.allowed()) == 100
    stack.sidecar.kill()  # SIGKILL: no chance to stop its child
    deadline = time.monotonic() + 20
    while Path(f"/proc/{flusher}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not Path(f"/proc/{flusher}").exists(), "the flusher outlived its sidecar"
    stack.sidecar.start()


def test_sigterm_finishes_in_flight_calls_and_flushes_before_exit(stack: Stack) -> None:
    load = Load(stack.sidecar.target, clients=16).start()
    time.sleep(2.0)
    assert stack.sidecar.terminate() == 0
    acked_before_exit = load.allowed()
    # Nothing runs now: what PostgreSQL holds was flushed by the sidecar that exited.
    flushed = {request_id for request_id, _, _ in stack.debit_rows()}
    assert {d.request_id for d in acked_before_exit} <= flushed
    assert stack.redis_backlog() == 0
    stack.sidecar.start()
    load.stop()
    stack.sidecar.wait_flushed()
    stack.assert_exactly_once(load)


def test_sigkill_redis_with_appendfsync_always_loses_no_acknowledged_decision(aof_always_stack: Stack) -> None:
    stack = aof_always_stack
    load = Load(stack.sidecar.target, clients=64).start()
    time.sleep(3.0)
    stack.redis.stop()  # SIGKILL
    stack.redis.start()
    time.sleep(3.0)
    load.stop()
    stack.sidecar.wait_flushed()
    stack.assert_exactly_once(load)
    assert stack.reconcile().drifts == []


def test_without_aof_reconcile_reports_exactly_the_lost_window_and_restore_repairs_it(stack: Stack) -> None:
    before = Load(stack.sidecar.target, clients=8, per_client=40).start().join()
    stack.sidecar.wait_flushed()
    redis.Redis.from_url(stack.redis.url).save()  # the last snapshot: everything after it dies with Redis
    lost = Load(stack.sidecar.target, clients=8, per_client=25).start().join()
    stack.sidecar.wait_flushed()
    stack.redis.stop()  # SIGKILL, no AOF: Redis comes back as it was at the snapshot
    stack.redis.start()

    report = stack.reconcile()
    assert report.entries_drift == len(lost.allowed()) == 200
    # Redis has the credits the lost window charged: they are in the ledger only.
    assert report.credits_drift == sum(d.charged for d in lost.allowed())
    assert {drift.customer_id for drift in report.drifts} == {d.customer_id for d in lost.allowed()}
    reconcile_command = stack.command("reconcile")
    assert reconcile_command.returncode == 1
    assert reconcile_command.stdout.splitlines()[-1] == (
        f"drift: {len(report.drifts)} of {len(CUSTOMERS)} customers, {report.credits_drift:+,} credits,"
        f" {report.entries_drift:+,} entries"
    )

    assert stack.sidecar.terminate() == 0
    restored = stack.command("restore")
    assert (restored.returncode, restored.stdout.split(":")[0]) == (0, f"restored {len(CUSTOMERS)} customers")
    assert stack.command("reconcile").returncode == 0
    stack.sidecar.start()
    after = Load(stack.sidecar.target, clients=4, per_client=5).start().join()
    stack.sidecar.wait_flushed()
    # Sequences continued where the ledger ended: no new entry collided with a lost one.
    assert len(stack.debit_rows()) == len(before.allowed()) + len(lost.allowed()) + len(after.allowed())
    assert stack.reconcile().drifts == []


def test_postgres_paused_30s_decisions_go_on_and_the_backlog_drains_exactly(stack: Stack) -> None:
    stack.sidecar.wait_flushed()
    stack.postgres.pause()
    try:
        load = Load(stack.sidecar.target, clients=16).start()
        time.sleep(30)
        load.stop()
        codes = Counter(attempt.code.name for attempt in load.attempts)
        assert load.unanswered == [], codes
        assert len(load.allowed()) > 0
        status = stack.sidecar.ledger_status()
        assert status.backlog_entries == len(load.allowed())
        assert status.oldest_unflushed_age.ToMilliseconds() > 0
    finally:
        stack.postgres.resume()
    stack.sidecar.wait_flushed()
    stack.assert_exactly_once(load)


def test_redis_paused_5s_calls_fail_fast_then_retries_are_charged_once(stack: Stack) -> None:
    load = Load(stack.sidecar.target, clients=16).start()
    time.sleep(1.0)
    stack.redis.process.send_signal(signal.SIGSTOP)  # type: ignore[union-attr]
    paused_at = time.monotonic()
    time.sleep(5.0)
    stack.redis.process.send_signal(signal.SIGCONT)  # type: ignore[union-attr]
    resumed_at = time.monotonic()
    time.sleep(2.0)
    load.stop()
    during = [a for a in load.attempts if a.started > paused_at + 0.1 and a.ended < resumed_at]
    assert len(during) > 0
    # No false OK and no hanging until the deadline: every call while Redis was stopped said UNAVAILABLE.
    # (A call that waited out its deadline would say DEADLINE_EXCEEDED.)
    assert {a.code for a in during} == {grpc.StatusCode.UNAVAILABLE}
    stack.sidecar.wait_flushed()
    stack.assert_exactly_once(load)
    balances = metering_pb2_grpc.MeteringServiceStub(grpc.insecure_channel(stack.sidecar.target))
    charged: dict[str, int] = {}
    for decision in load.allowed():
        charged[decision.customer_id] = charged.get(decision.customer_id, 0) + decision.charged
    for customer in CUSTOMERS:
        answer = balances.GetBalance(metering_pb2.GetBalanceRequest(customer_id=customer))
        assert answer.available_credits == 2500 + 10_000_000 - charged.get(customer, 0)

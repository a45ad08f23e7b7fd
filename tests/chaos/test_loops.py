"""Every background loop is supervised: a loop whose round fails is counted, reported NOT_SERVING for the services
that need it, retried, and SERVING again once a round succeeds; a flusher that cannot write (a read-only PostgreSQL)
keeps retrying and catches up; the `serve`-mode flusher process killed with SIGKILL is restarted and drains the
backlog. Rounds are run by the tests (run_once) wherever the figure depends on how many rounds ran."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import redis
from creditgate.server.clock import ManualClock, to_ms
from creditgate.server.domain.catalog import load_catalog
from creditgate.v1 import admin_pb2, metering_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from harness import (
    APOLLO,
    JAN_1,
    OWNER_ROLE,
    PostgresServer,
    RedisServer,
    RunningServer,
    server_settings,
    start_server,
)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
METERING = metering_pb2.DESCRIPTOR.services_by_name["MeteringService"].full_name
ADMIN = admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name
ALL_SERVING = (SERVING, SERVING, SERVING)
# basic: 2,500 credits a month; phone_reveal costs 10.
DEBITS = 20


def statuses(server: RunningServer) -> tuple[int, int, int]:
    """The server's (""), MeteringService's and AdminService's health."""
    health = health_pb2_grpc.HealthStub(server.channel)
    overall, metering, admin = (
        health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status
        for service in ("", METERING, ADMIN)
    )
    return overall, metering, admin


def metric(server: RunningServer, name: str, **labels: str) -> float | None:
    return server.app.metrics.registry.get_sample_value(name, labels)


def wait_until(condition: Callable[[], bool], what: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"still not {what} after {seconds} s"
        time.sleep(0.05)


def ledger_entries(server: RunningServer, customer_id: str) -> list[admin_pb2.LedgerEntry]:
    """The customer's durable ledger, oldest first, as it is (no flush by the test)."""
    page = server.admin.ListLedgerEntries(admin_pb2.ListLedgerEntriesRequest(customer_id=customer_id, page_size=1000))
    assert not page.next_page_token
    return list(page.entries)[::-1]


def debits_of(entries: list[admin_pb2.LedgerEntry]) -> list[tuple[int, int]]:
    return [(e.credits_delta, e.balance_after) for e in entries if e.kind == admin_pb2.LEDGER_ENTRY_KIND_DEBIT]


def expected_debits(count: int) -> list[tuple[int, int]]:
    return [(-10, 2_500 - 10 * n) for n in range(1, count + 1)]


def set_read_only(postgres: PostgresServer, on: bool) -> None:
    """Every session of the cluster read-only (as on a standby) or writable again, open sessions included: a
    reloaded postgresql.conf reaches every backend before its next command."""
    with psycopg.connect(postgres.url("postgres", "postgres"), autocommit=True) as conn:
        conn.execute("SET default_transaction_read_only = off")
        conn.execute(f"ALTER SYSTEM SET default_transaction_read_only = {'on' if on else 'off'}")
        loaded = conn.execute("SELECT pg_conf_load_time()").fetchone()
        conn.execute("SELECT pg_reload_conf()")
        # This session reloads once the postmaster has signalled every backend.
        wait_until(lambda: conn.execute("SELECT pg_conf_load_time()").fetchone() != loaded, "reloaded")


def test_a_failing_loop_is_counted_not_serving_and_serving_again_once_it_recovers(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    server = start_server(redis_server.url, tmp_path, health_probe_interval_seconds=300)
    follower = server.app.catalog.follower
    try:
        assert statuses(server) == ALL_SERVING
        # Another replica saved a catalog this version refuses: this one would go on charging by the old one.
        server.call(server.app.store.save_catalog("from-the-future", "plans: [", server.clock.now_ms()))
        assert server.call(follower.run_once()) is None
        assert server.call(follower.run_once()) is None
        state = follower.state()
        assert (state.running, state.failures, state.restarts) == (True, 2, 2)
        assert state.last_error.startswith("InvalidArgument: ")
        assert statuses(server) == (NOT_SERVING, NOT_SERVING, NOT_SERVING)
        assert metric(server, "creditgate_background_task_restarts_total", task="catalog_follower") == 2.0
        assert metric(server, "creditgate_background_task_up", task="catalog_follower") == 0.0
        assert metric(server, "creditgate_background_task_up", task="flusher") == 1.0
        # A probe that finds Redis and the store answering does not hide the failing loop.
        assert server.call(server.app.probe.run_once()) is True  # type: ignore[union-attr]
        assert statuses(server) == (NOT_SERVING, NOT_SERVING, NOT_SERVING)

        # The catalog is applied again (the one this replica runs): the next round follows it.
        source = APOLLO.read_text()
        server.call(server.app.store.save_catalog(load_catalog(source).version, source, server.clock.now_ms()))
        assert server.call(follower.run_once()) is False  # nothing to swap: it is the catalog running
        assert (follower.state().failures, follower.state().restarts) == (0, 2)
        assert statuses(server) == ALL_SERVING
        assert metric(server, "creditgate_background_task_up", task="catalog_follower") == 1.0
    finally:
        time.sleep(0.3)
        server.stop()


def test_a_flusher_facing_a_read_only_postgresql_keeps_retrying_and_catches_up(
    pg_server: RunningServer, postgres_server: PostgresServer
) -> None:
    server, flusher = pg_server, pg_server.app.flusher.task
    server.create_customer("acme", "basic")
    assert server.flush() > 0
    set_read_only(postgres_server, True)
    try:
        for _ in range(DEBITS):
            assert server.debit("acme", "phone_reveal").allowed
        assert server.call(flusher.run_once()) is None
        state = flusher.state()
        assert (state.running, state.failures, state.restarts) == (True, 1, 1)
        assert state.last_error.startswith(
            "Unavailable: PostgreSQL refuses writes (SQLSTATE 25006 read_only_sql_transaction"
        )
        # Decisions go on (their entries wait in Redis); the ledger's readers are told it is behind.
        assert statuses(server) == (SERVING, SERVING, NOT_SERVING)
        assert server.call(server.app.probe.run_once()) is True  # type: ignore[union-attr]  # reads still answer
        assert statuses(server) == (SERVING, SERVING, NOT_SERVING)
        assert metric(server, "creditgate_background_task_restarts_total", task="flusher") == 1.0
        assert metric(server, "creditgate_background_task_up", task="flusher") == 0.0
        status = server.admin.GetLedgerStatus(admin_pb2.GetLedgerStatusRequest())
        assert (status.backlog_entries, status.pending_entries) == (DEBITS, DEBITS)
        assert server.call(flusher.run_once()) is None  # retried: still refused, still counted
        assert (flusher.state().failures, flusher.state().restarts) == (2, 2)
    finally:
        set_read_only(postgres_server, False)
    assert server.call(flusher.run_once()) == DEBITS
    assert (flusher.state().failures, flusher.state().restarts) == (0, 2)
    assert statuses(server) == ALL_SERVING
    status = server.admin.GetLedgerStatus(admin_pb2.GetLedgerStatusRequest())
    assert (status.backlog_entries, status.pending_entries, status.parked_entries) == (0, 0, 0)
    assert debits_of(ledger_entries(server, "acme")) == expected_debits(DEBITS)


def serve_mode_server(
    redis_server: RedisServer,
    tmp_path: Path,
    postgres_server: PostgresServer,
    postgres_database: str,
    **overrides: Any,
) -> RunningServer:
    """A server on PostgreSQL whose flusher runs in a child process, as `serve` runs it."""
    redis.Redis.from_url(redis_server.url).flushall()
    settings = server_settings(
        redis_server.url,
        tmp_path,
        database_url=postgres_server.url(postgres_database),
        database_migration_url=postgres_server.url(postgres_database, OWNER_ROLE),
        flush_interval_seconds=0.05,
        health_probe_interval_seconds=300,
        **overrides,
    )
    return RunningServer(settings, ManualClock(to_ms(JAN_1)), separate_flusher=True)


def test_a_killed_flusher_process_is_restarted_and_drains_the_backlog(
    redis_server: RedisServer, tmp_path: Path, postgres_server: PostgresServer, postgres_database: str
) -> None:
    # The dead child's entries are claimed by the next one after this long.
    server = serve_mode_server(redis_server, tmp_path, postgres_server, postgres_database, flush_claim_idle_seconds=0.5)
    child = server.app.flusher_process
    assert child is not None and child.process is not None
    try:
        server.create_customer("acme", "basic")
        wait_until(lambda: server.call(server.app.flusher.status()).backlog == 0, "flushed by the child")
        first_pid = child.process.pid
        assert first_pid is not None
        # The store hangs: the child reads debits and waits on its write, holding them pending.
        postgres_server.pause()
        try:
            for _ in range(DEBITS):
                assert server.debit("acme", "phone_reveal").allowed
            # The child reads as the debits come: its first batch holds one or more of them, the rest wait unread.
            wait_until(lambda: server.call(server.app.flusher.status()).pending > 0, "read by the child")
            held = server.call(server.app.flusher.status())
            assert held.backlog == DEBITS and 1 <= held.pending <= DEBITS
            os.kill(first_pid, signal.SIGKILL)
            wait_until(lambda: server.call(child.check()) is False, "seen dead")
            state = child.state()
            assert (state.running, state.restarts) == (False, 1)
            assert state.last_error == f"the flusher process exited with code {-signal.SIGKILL}"
            assert statuses(server) == (SERVING, SERVING, NOT_SERVING)
            assert metric(server, "creditgate_background_task_up", task="flusher") == 0.0
        finally:
            postgres_server.resume()
        wait_until(lambda: child.process is not None and child.process.is_alive(), "restarted")
        assert child.process is not None and child.process.pid != first_pid
        wait_until(lambda: server.call(server.app.flusher.status()).backlog == 0, "drained by the new child")
        assert debits_of(ledger_entries(server, "acme")) == expected_debits(DEBITS)
        wait_until(lambda: statuses(server) == ALL_SERVING, "serving")
        assert metric(server, "creditgate_background_task_restarts_total", task="flusher") == 1.0
        assert metric(server, "creditgate_background_task_up", task="flusher") == 1.0
    finally:
        time.sleep(0.3)
        server.stop()


def test_a_failing_flusher_process_is_counted_and_not_serving_in_the_serving_process(
    redis_server: RedisServer, tmp_path: Path, postgres_server: PostgresServer, postgres_database: str
) -> None:
    server = serve_mode_server(redis_server, tmp_path, postgres_server, postgres_database)
    child = server.app.flusher_process
    assert child is not None and child.process is not None
    try:
        first_pid = child.process.pid
        server.create_customer("acme", "basic")
        wait_until(lambda: server.call(server.app.flusher.status()).backlog == 0, "flushed by the child")
        set_read_only(postgres_server, True)
        try:
            for _ in range(DEBITS):
                assert server.debit("acme", "phone_reveal").allowed
            # The child lives on and retries; its failures reach this process through shared memory.
            wait_until(lambda: child.state().failures > 0, "failing")
            state = child.state()
            assert state.running and state.restarts >= 1 and state.failing_since_ms > 0
            assert state.last_error == "the flusher process's loop is failing (see its log)"
            wait_until(lambda: statuses(server) == (SERVING, SERVING, NOT_SERVING), "admin not serving")
            assert metric(server, "creditgate_background_task_up", task="flusher") == 0.0
            assert server.call(server.app.flusher.status()).backlog == DEBITS
        finally:
            set_read_only(postgres_server, False)
        wait_until(lambda: server.call(server.app.flusher.status()).backlog == 0, "caught up")
        wait_until(lambda: statuses(server) == ALL_SERVING, "serving")
        assert child.state().failures == 0
        assert debits_of(ledger_entries(server, "acme")) == expected_debits(DEBITS)
        # The same child all along: it was failing, not dead.
        assert child.process is not None and child.process.pid == first_pid
        restarts = metric(server, "creditgate_background_task_restarts_total", task="flusher")
        assert restarts is not None and restarts == child.state().restarts >= 1
    finally:
        time.sleep(0.3)
        server.stop()

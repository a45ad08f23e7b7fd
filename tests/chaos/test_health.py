"""gRPC health follows the dependencies: everything is NOT_SERVING while Redis does not answer; while the durable
store does not, AdminService is NOT_SERVING but MeteringService and the server ("") keep SERVING, because decisions
need only Redis (their ledger entries wait in the outbox). SERVING again once they answer (the probe's run_once is
called by the test)."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from creditgate.server.clock import ManualClock, to_ms
from creditgate.server.settings import Settings
from creditgate.v1 import admin_pb2, metering_pb2, metering_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from harness import APOLLO, JAN_1, OWNER_ROLE, PostgresServer, RedisServer, RunningServer

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
METERING = metering_pb2.DESCRIPTOR.services_by_name["MeteringService"].full_name
ADMIN = admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name
ALL_SERVING = (SERVING, SERVING, SERVING)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test alone, since the test stops it."""
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


def running(redis_url: str, tmp_path: Path, **store: str) -> RunningServer:
    settings = Settings(
        listen="127.0.0.1:0",
        redis_url=redis_url,
        database_url=store.get("database_url", f"sqlite:///{tmp_path / 'ledger.db'}"),
        database_migration_url=store.get("database_migration_url"),
        catalog=APOLLO,
        data_dir=tmp_path,
        flush_interval_seconds=60,
        health_probe_interval_seconds=300,  # the test runs the probe itself
        health_probe_timeout_seconds=1,
    )
    return RunningServer(settings, ManualClock(to_ms(JAN_1)))


def statuses(server: RunningServer) -> tuple[int, int, int]:
    """The server's (""), MeteringService's and AdminService's health."""
    health = health_pb2_grpc.HealthStub(server.channel)
    overall, metering, admin = (
        health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status
        for service in ("", METERING, ADMIN)
    )
    return overall, metering, admin


def probe(server: RunningServer) -> bool:
    assert server.app.probe is not None
    return server.call(server.app.probe.run_once())


def metric(server: RunningServer, name: str, **labels: str) -> float | None:
    return server.app.metrics.registry.get_sample_value(name, labels)


def stop(server: RunningServer) -> None:
    server.stop()


def test_redis_down_is_not_serving_and_back_up_is_serving(own_redis: RedisServer, tmp_path: Path) -> None:
    server = running(own_redis.url, tmp_path)
    try:
        assert probe(server) is True
        assert statuses(server) == ALL_SERVING

        own_redis.stop()
        assert probe(server) is False
        assert statuses(server) == (NOT_SERVING, NOT_SERVING, NOT_SERVING)
        assert metric(server, "creditgate_dependency_up", dependency="redis") == 0.0
        assert metric(server, "creditgate_dependency_up", dependency="store") == 1.0
        assert metric(server, "creditgate_redis_errors_total", source="health_probe") == 1.0

        own_redis.start()  # same port
        assert probe(server) is True
        assert statuses(server) == ALL_SERVING
        assert metric(server, "creditgate_dependency_up", dependency="redis") == 1.0
    finally:
        stop(server)


def test_a_frozen_redis_is_not_serving_until_it_thaws(own_redis: RedisServer, tmp_path: Path) -> None:
    server = running(own_redis.url, tmp_path)
    assert own_redis.process is not None
    try:
        os.kill(own_redis.process.pid, signal.SIGSTOP)
        try:
            assert probe(server) is False  # the ping times out after health_probe_timeout_seconds
            assert statuses(server) == (NOT_SERVING, NOT_SERVING, NOT_SERVING)
        finally:
            os.kill(own_redis.process.pid, signal.SIGCONT)
        assert probe(server) is True
        assert statuses(server) == ALL_SERVING
    finally:
        stop(server)


def test_a_frozen_durable_store_stops_admin_but_not_decisions_until_it_thaws(
    own_redis: RedisServer, tmp_path: Path, postgres_server: PostgresServer, postgres_database: str
) -> None:
    server = running(
        own_redis.url,
        tmp_path,
        database_url=postgres_server.url(postgres_database),
        database_migration_url=postgres_server.url(postgres_database, OWNER_ROLE),
    )
    try:
        server.create_customer("acme", "basic")
        assert probe(server) is True
        postgres_server.pause()
        try:
            assert probe(server) is False
            assert statuses(server) == (SERVING, SERVING, NOT_SERVING)
            assert metric(server, "creditgate_dependency_up", dependency="store") == 0.0
            assert metric(server, "creditgate_dependency_up", dependency="redis") == 1.0
            # What MeteringService's SERVING promises: a decision while the store is frozen.
            decided = metering_pb2_grpc.MeteringServiceStub(server.channel).CheckAndDebit(
                metering_pb2.CheckAndDebitRequest(customer_id="acme", feature="phone_reveal"), timeout=10
            )
            assert (decided.allowed, decided.credits_charged, decided.balance_after) == (True, 10, 2_490)
        finally:
            postgres_server.resume()
        assert probe(server) is True
        assert statuses(server) == ALL_SERVING
    finally:
        stop(server)

"""Shared fixtures: a real redis-server and a real PostgreSQL per session, and a fresh real server per test."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from creditgate.server.embedded_redis import redis_server_binary
from harness import (
    OWNER_ROLE,
    Database,
    PostgresServer,
    RedisClusterServer,
    RedisServer,
    RunningServer,
    StoreUnderTest,
    start_server,
)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    assert shutil.which("redis-server") or redis_server_binary()
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterServer]:
    """A real Redis Cluster, 3 primaries + 3 replicas, started once for the tests that ask for it."""
    cluster = RedisClusterServer(tmp_path_factory.mktemp("redis-cluster"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    server = PostgresServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def postgres_database(postgres_server: PostgresServer) -> str:
    """A fresh database of the session's PostgreSQL, owned by the schema owner role."""
    return postgres_server.create_database()


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreUnderTest]:
    """Each durable store in turn, opened on a fresh database."""
    if request.param == "sqlite":
        under_test = StoreUnderTest("sqlite", f"sqlite:///{tmp_path / 'ledger.db'}")
    else:
        postgres: PostgresServer = request.getfixturevalue("postgres_server")
        database = request.getfixturevalue("postgres_database")
        under_test = StoreUnderTest("postgresql", postgres.url(database), postgres.url(database, OWNER_ROLE))
    yield under_test
    under_test.close()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # Tests marked cluster_too run their `server` on a single Redis and on the Redis Cluster; the slow ones (load,
    # thousands of calls) on the single Redis only, so that the suite stays fast. Tests marked postgres_too run their
    # `server` (or their `database`) on SQLite and on PostgreSQL, on the single Redis: the cluster runs on SQLite
    # only, since the store does not change what Redis sees.
    marked = metafunc.definition.get_closest_marker
    on_cluster = bool(marked("cluster_too")) and not marked("slow")
    on_postgres = bool(marked("postgres_too"))
    if "server" in metafunc.fixturenames and (on_cluster or on_postgres):
        runs = [("redis", "sqlite", "redis")]
        runs += [("redis-cluster", "sqlite", "redis-cluster")] if on_cluster else []
        runs += [("redis", "postgresql", "postgresql")] if on_postgres else []
        metafunc.parametrize(
            ("redis_kind", "store_kind"), [run[:2] for run in runs], indirect=True, ids=[run[2] for run in runs]
        )
    elif "database" in metafunc.fixturenames and on_postgres:
        metafunc.parametrize("store_kind", ["sqlite", "postgresql"], indirect=True)


@pytest.fixture
def redis_kind(request: pytest.FixtureRequest) -> str:
    """Which Redis the `server` fixture runs on: "redis" (one node) unless a test is marked cluster_too."""
    kind: str = getattr(request, "param", "redis")
    return kind


@pytest.fixture
def store_kind(request: pytest.FixtureRequest) -> str:
    """Which durable store `database` (and so `server`) is: "sqlite" unless a test is marked postgres_too."""
    kind: str = getattr(request, "param", "sqlite")
    return kind


@pytest.fixture
def database(store_kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> Database:
    """The durable store of the test's server: SQLite in tmp_path, or a fresh PostgreSQL database."""
    if store_kind == "postgresql":
        return Database.postgresql(request.getfixturevalue("postgres_server"))
    return Database.sqlite(tmp_path)


@pytest.fixture
def server_overrides() -> dict[str, Any]:
    """Settings of the `server` fixture besides the harness's: a test module overrides this fixture to serve with
    TLS, API keys, metrics … (start_server's defaults otherwise)."""
    return {}


@pytest.fixture
def server(
    redis_kind: str,
    database: Database,
    server_overrides: dict[str, Any],
    request: pytest.FixtureRequest,
    tmp_path: Path,
) -> Iterator[RunningServer]:
    redis: RedisServer | RedisClusterServer = request.getfixturevalue(
        "redis_cluster" if redis_kind == "redis-cluster" else "redis_server"
    )
    running = start_server(redis.url, tmp_path, **database.settings, **server_overrides)
    yield running
    running.stop()


@pytest.fixture
def pg_server(
    redis_server: RedisServer, tmp_path: Path, postgres_server: PostgresServer, postgres_database: str
) -> Iterator[RunningServer]:
    """A real server on PostgreSQL whose health probe the test runs itself."""
    server = start_server(
        redis_server.url,
        tmp_path,
        database_url=postgres_server.url(postgres_database),
        database_migration_url=postgres_server.url(postgres_database, OWNER_ROLE),
        health_probe_interval_seconds=300,
    )
    yield server
    server.stop()

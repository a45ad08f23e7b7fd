"""Test harness: a real redis-server and a real PostgreSQL on free loopback ports, and the real gRPC server in a
thread."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import tempfile
import threading
import time
from collections.abc import Awaitable, Coroutine
from concurrent.futures import Future
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import grpc
import psycopg
import redis
from creditgate.server.app import App, build_app
from creditgate.server.clock import ManualClock, from_ms, to_ms
from creditgate.server.domain.records import Record
from creditgate.server.embedded_redis import redis_server_binary
from creditgate.server.engine import bucket_codec, customer_fields
from creditgate.server.engine.keys import KeySpace
from creditgate.server.ledger.reconcile import ReconcileReport, reconcile
from creditgate.server.ledger.restore import RestoreReport, restore
from creditgate.server.settings import Settings
from creditgate.server.store.ledger import ParkedEntry
from creditgate.server.store.store import Store, open_store
from creditgate.v1 import admin_pb2, admin_pb2_grpc, metering_pb2, metering_pb2_grpc

REPO = Path(__file__).resolve().parent.parent
APOLLO = REPO / "examples" / "apollo.yaml"
T = TypeVar("T")
# How long a test server runs at least before it is stopped (see RunningServer.stop).
SETTLE_SECONDS = 0.3


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    """A redis-server child process on a free loopback port."""

    def __init__(self, workdir: Path, *extra: str) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.extra = extra
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                redis_server_binary(),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.workdir),
                "--save",
                "",
                "--appendonly",
                "no",
                *self.extra,
            ],
            stdout=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()


class RedisClusterServer:
    """A Redis Cluster of `primaries` primaries with one replica each: redis-server children on free loopback ports,
    each in its own folder under `workdir`, joined by `redis-cli --cluster create`."""

    def __init__(self, workdir: Path, primaries: int = 3, node_timeout_ms: int = 2000, replicas: int = 1) -> None:
        self.workdir = workdir
        self.replicas = replicas
        self.node_timeout_ms = node_timeout_ms
        self.nodes = [
            RedisServer(
                workdir / f"node{index}",
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                str(node_timeout_ms),
                # Its own free port for the cluster bus: the default, port + 10000, may be past 65535.
                "--cluster-port",
                str(free_port()),
                # A replica (a killed primary back as one) gets its copy at once, not after the default 5 s wait
                # for other replicas to share the transfer: until then WAIT 1 cannot be confirmed.
                "--repl-diskless-sync-delay",
                "0",
            )
            for index in range(primaries * (1 + replicas))
        ]

    @property
    def url(self) -> str:
        """Every node as a seed, comma-separated (CREDITGATE_REDIS_URL's cluster form)."""
        return ",".join(node.url for node in self.nodes)

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        subprocess.run(
            [
                shutil.which("redis-cli") or "redis-cli",
                "--cluster",
                "create",
                *(f"127.0.0.1:{node.port}" for node in self.nodes),
                "--cluster-replicas",
                str(self.replicas),
                "--cluster-yes",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        self.wait_ok()
        self.wait_replicas_online()

    def wait_replicas_online(self, timeout_seconds: float = 30) -> None:
        """Until every primary has one replica in sync (state online: WAIT counts it)."""
        deadline = time.monotonic() + timeout_seconds
        while not all(
            redis.Redis(port=node.port, decode_responses=True).info("replication").get(f"slave{n}", {}).get("state")
            == "online"
            for node in self.primaries()
            for n in range(self.replicas)
        ):
            if time.monotonic() > deadline:
                raise TimeoutError("the replicas did not come in sync with their primaries")
            time.sleep(0.1)

    def wait_ok(self, timeout_seconds: float = 30) -> None:
        """Until every live node says cluster_state:ok and agrees on who serves every slot."""
        deadline = time.monotonic() + timeout_seconds
        while True:
            if all(self._ok(node) for node in self.nodes if node.alive):
                return
            if time.monotonic() > deadline:
                raise TimeoutError("the Redis Cluster did not reach cluster_state:ok")
            time.sleep(0.1)

    @staticmethod
    def _ok(node: RedisServer) -> bool:
        try:
            client = redis.Redis(port=node.port, decode_responses=True)
            info = client.cluster("INFO")
            slots = client.cluster("SLOTS")
        except redis.RedisError:
            return False
        covered = sum(int(end) - int(start) + 1 for start, end, *_ in slots)
        return bool(info["cluster_state"] == "ok" and covered == 16384)

    def primaries(self) -> list[RedisServer]:
        """The nodes that are primaries now, by port."""
        ports = set()
        for node in self.nodes:
            if not node.alive:
                continue
            for _, _, primary, *_ in redis.Redis(port=node.port).cluster("SLOTS"):
                ports.add(int(primary[1]))
            break
        return sorted((node for node in self.nodes if node.port in ports), key=lambda node: node.port)

    def node_id(self, node: RedisServer) -> str:
        return str(redis.Redis(port=node.port, decode_responses=True).cluster("MYID"))

    def owner(self, slot: int) -> RedisServer:
        """The primary that serves `slot` now."""
        for start, end, primary, *_ in redis.Redis(port=self.primaries()[0].port).cluster("SLOTS"):
            if int(start) <= slot <= int(end):
                return next(node for node in self.nodes if node.port == int(primary[1]))
        raise LookupError(f"no primary serves slot {slot}")

    def move_slot(self, slot: int, target: RedisServer, batch: int = 10) -> int:
        """Move `slot` to `target` as `redis-cli --cluster reshard` does (IMPORTING, MIGRATING, MIGRATE the keys
        `batch` at a time, then NODE on every primary); returns how many keys moved."""
        source = self.owner(slot)
        source_client = redis.Redis(port=source.port, decode_responses=True)
        target_id, source_id = self.node_id(target), self.node_id(source)
        redis.Redis(port=target.port).cluster("SETSLOT", slot, "IMPORTING", source_id)
        source_client.cluster("SETSLOT", slot, "MIGRATING", target_id)
        moved = 0
        while keys := source_client.cluster("GETKEYSINSLOT", slot, batch):
            source_client.migrate("127.0.0.1", target.port, keys, 0, 5000)
            moved += len(keys)
        for node in (target, source, *self.primaries()):
            redis.Redis(port=node.port).cluster("SETSLOT", slot, "NODE", target_id)
        return moved

    def replica_of(self, primary: RedisServer) -> RedisServer:
        """The replica that follows `primary` now."""
        replication = redis.Redis(port=primary.port, decode_responses=True).info("replication")
        port = int(replication["slave0"]["port"])
        return next(node for node in self.nodes if node.port == port)

    def error_counts(self) -> dict[str, int]:
        """Error replies by code (INFO errorstats) summed over every live node: MOVED, ASK, TRYAGAIN …"""
        counts: dict[str, int] = {}
        for node in self.nodes:
            if node.alive:
                for name, value in redis.Redis(port=node.port).info("errorstats").items():
                    code = str(name).removeprefix("errorstat_")
                    counts[code] = counts.get(code, 0) + int(value["count"])
        return counts

    def flushall(self) -> None:
        """Every primary emptied (replicas follow)."""
        for node in self.primaries():
            redis.Redis(port=node.port).flushall()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


POSTGRES_BIN = Path("/usr/lib/postgresql/15/bin")
OWNER_ROLE = "creditgate_owner"
SIDECAR_ROLE = "creditgate_app"


class PostgresServer:
    """A PostgreSQL 15 cluster in a temporary folder on a free loopback port (trust auth, fsync off).

    PostgreSQL refuses to run as root: as root, initdb and postgres run as the `postgres` system user, in a
    folder it owns under /tmp (pytest's own temporary folders are closed to other users)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.workdir = Path(tempfile.mkdtemp(prefix="creditgate-pg-"))
        self.data = self.workdir / "data"
        self.user = "postgres" if os.geteuid() == 0 else None
        self.process: subprocess.Popen[bytes] | None = None
        self._databases = 0

    def start(self) -> None:
        if self.user is not None:
            shutil.chown(self.workdir, self.user, self.user)
        if not self.data.exists():
            subprocess.run(
                [POSTGRES_BIN / "initdb", "-D", self.data, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"],
                check=True,
                stdout=subprocess.DEVNULL,
                user=self.user,
            )
        self.process = subprocess.Popen(
            [
                POSTGRES_BIN / "postgres",
                "-D",
                self.data,
                "-p",
                str(self.port),
                "-k",
                self.workdir,
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "fsync=off",
                "-c",
                "max_connections=200",
            ],
            stdout=subprocess.DEVNULL,
            stderr=open(self.workdir / "postgres.log", "ab"),  # noqa: SIM115 - the child keeps it
            user=self.user,
            start_new_session=True,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                with psycopg.connect(self.url("postgres", "postgres"), connect_timeout=2):
                    break
            except psycopg.OperationalError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        with psycopg.connect(self.url("postgres", "postgres"), autocommit=True) as conn:
            for role in (OWNER_ROLE, SIDECAR_ROLE):
                if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone() is None:
                    conn.execute(f"CREATE ROLE {role} LOGIN")

    def url(self, database: str, role: str = SIDECAR_ROLE) -> str:
        return f"postgresql://{role}@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        """A new empty database owned by OWNER_ROLE; returns its name."""
        self._databases += 1
        name = f"creditgate_{self._databases}"
        with psycopg.connect(self.url("postgres", "postgres"), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name} OWNER {OWNER_ROLE}")
        return name

    def query(self, database: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Rows of one query run as the superuser (what tests check or tamper with)."""
        with psycopg.connect(self.url(database, "postgres"), autocommit=True) as conn:
            cursor = conn.execute(sql.encode(), params)
            return cursor.fetchall() if cursor.description else []

    def _processes(self) -> list[int]:
        """The postmaster and its children (each backend calls setsid(), so a process group misses them)."""
        assert self.process is not None
        found = [self.process.pid]
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    stat = (entry / "stat").read_text()
                except OSError:
                    continue
                if int(stat.rpartition(")")[2].split()[1]) == self.process.pid:
                    found.append(int(entry.name))
        return found

    def pause(self) -> None:
        """SIGSTOP the whole cluster: connections stay open and every query waits (a hung database)."""
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal(signal.SIGCONT)

    def _signal(self, signum: signal.Signals) -> None:
        for pid in self._processes():
            # A backend whose connection closed since it was listed has exited: nothing to stop or resume.
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def stop(self) -> None:
        if self.process is not None:
            self.resume()
            self.process.send_signal(signal.SIGINT)  # fast shutdown
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
            self.process = None
        shutil.rmtree(self.workdir, ignore_errors=True)


class Database:
    """The durable store a test server runs on: SQLite in the test's folder, or a fresh database of the session's
    PostgreSQL. `rows` reads (or tampers with) it beside the server, also after the server stopped."""

    def __init__(self, kind: str, url: str, postgres: PostgresServer | None = None, name: str = "") -> None:
        self.kind = kind
        self.url = url
        self.postgres = postgres
        self.name = name

    @classmethod
    def sqlite(cls, folder: Path) -> Database:
        return cls("sqlite", f"sqlite:///{folder / 'ledger.db'}")

    @classmethod
    def postgresql(cls, postgres: PostgresServer) -> Database:
        name = postgres.create_database()
        return cls("postgresql", postgres.url(name), postgres, name)

    @property
    def settings(self) -> dict[str, Any]:
        """The server settings that point it at this store (PostgreSQL: migrated by the schema owner)."""
        if self.postgres is None:
            return {"database_url": self.url}
        return {"database_url": self.url, "database_migration_url": self.postgres.url(self.name, OWNER_ROLE)}

    def rows(self, query: str, *params: object) -> list[tuple[Any, ...]]:
        """Rows of one query written with `?` placeholders, in either dialect (PostgreSQL: as the superuser)."""
        if self.postgres is None:
            with contextlib.closing(sqlite3.connect(self.url.removeprefix("sqlite:///"))) as db, db:
                return db.execute(query, params).fetchall()
        return self.postgres.query(self.name, query.replace("?", "%s"), params)


class StoreUnderTest:
    """An opened store with its own event loop, so tests read like plain calls."""

    def __init__(self, kind: str, url: str, migration_url: str | None = None) -> None:
        self.kind = kind
        self.url = url
        self.migration_url = migration_url
        self.loop = asyncio.new_event_loop()
        self.store: Store = self.open()

    def open(self) -> Store:
        store = open_store(self.url, self.migration_url)
        self.run(store.open())
        return store

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coroutine)

    def write(self, *records: Record, parked: tuple[ParkedEntry, ...] = ()) -> None:
        self.run(self.store.write(list(records), list(parked)))

    def close(self) -> None:
        self.run(self.store.close())
        self.loop.close()


async def awaited(command: Awaitable[T]) -> T:
    """redis-py types its commands as Awaitable; RunningServer.call runs coroutines."""
    return await command


class RunningServer:
    """The real app (gRPC server, flusher, SQLite) on its own event loop in a thread, with a manual clock."""

    def __init__(self, settings: Settings, clock: ManualClock, separate_flusher: bool = False) -> None:
        """separate_flusher: the outbox is flushed by a child process, as `creditgate serve` does."""
        self.clock = clock
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.app: App = self.call(self._build(settings, separate_flusher))
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.app.port}")
        self.metering = metering_pb2_grpc.MeteringServiceStub(self.channel)
        self.admin = admin_pb2_grpc.AdminServiceStub(self.channel)
        self.started = time.monotonic()

    async def _build(self, settings: Settings, separate_flusher: bool) -> App:
        app = build_app(settings, self.clock)
        await app.start(separate_flusher=separate_flusher)
        return app

    def call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine on the server's loop (flush, store reads) and wait for it."""
        future: Future[T] = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        return future.result(timeout=120)

    def clock_now(self) -> datetime:
        return from_ms(self.clock.now_ms())

    def reserved_in_redis(self, customer_id: str) -> int:
        """The customer's reserved credits read straight from Redis, without touching the customer."""
        key = KeySpace(self.app.settings.shards).for_customer(customer_id).customer
        return int(self.call(awaited(self.app.redis.hget(key, customer_fields.RESERVED))) or 0)

    def flush(self) -> int:
        return self.call(self.app.flusher.drain())

    def reconcile(self) -> ReconcileReport:
        """`creditgate reconcile` against this server's Redis and store, at the server's time."""
        keys = KeySpace(self.app.settings.shards)
        return self.call(reconcile(self.app.redis, self.app.store, keys, self.clock.now_ms()))

    def restore(self) -> RestoreReport:
        """`creditgate restore` into this server's Redis from its store, at the server's time."""
        keys = KeySpace(self.app.settings.shards)
        return self.call(restore(self.app.redis, self.app.store, keys, self.clock.now_ms()))

    def redis_time_ms(self) -> int:
        """Redis's own clock (TIME), which stamps outbox entry ids: what outbox ages are measured against."""
        seconds, micros = self.call(awaited(self.app.redis.time()))
        return int(seconds) * 1000 + int(micros) // 1000

    def oldest_outbox_ms(self) -> int:
        """The id time of the oldest entry in any outbox stream (the outbox must not be empty)."""
        keys = KeySpace(self.app.settings.shards).all_outboxes()
        firsts = [self.call(awaited(self.app.redis.xrange(key, count=1))) for key in keys]
        return min(int(str(first[0][0]).split("-")[0]) for first in firsts if first)

    def create_customer(self, customer_id: str, plan: str | None = None, start: datetime | None = None) -> None:
        self.admin.CreateCustomer(admin_pb2.CreateCustomerRequest(customer_id=customer_id, name=customer_id))
        if plan is not None:
            request = admin_pb2.CreateSubscriptionRequest(customer_id=customer_id, plan=plan)
            if start is not None:
                request.start_time.FromDatetime(start)
            self.admin.CreateSubscription(request)

    def debit(
        self, customer_id: str, feature: str, quantity: int | None = None, request_id: str = "", **dimensions: str
    ) -> metering_pb2.CheckAndDebitResponse:
        request = metering_pb2.CheckAndDebitRequest(
            customer_id=customer_id, feature=feature, dimensions=dimensions, request_id=request_id
        )
        if quantity is not None:
            request.quantity = quantity
        response: metering_pb2.CheckAndDebitResponse = self.metering.CheckAndDebit(request)
        return response

    def available(self, customer_id: str) -> int:
        response = self.metering.GetBalance(metering_pb2.GetBalanceRequest(customer_id=customer_id))
        return int(response.available_credits)

    def ledger(self, customer_id: str) -> list[admin_pb2.LedgerEntry]:
        """Every durable ledger entry of a customer, oldest first, after draining the outbox."""
        self.flush()
        entries: list[admin_pb2.LedgerEntry] = []
        token = ""
        while True:
            page = self.admin.ListLedgerEntries(
                admin_pb2.ListLedgerEntriesRequest(customer_id=customer_id, page_size=1000, page_token=token)
            )
            entries.extend(page.entries)
            token = page.next_page_token
            if not token:
                return entries[::-1]

    def stop(self) -> None:
        # A server stopped within moments of its start lets the flusher finish its first pass first: redis-py 8.1
        # can swallow a cancellation that lands inside a command, and then App.stop waits for the flusher's whole
        # interval (reported; not the tests' subject).
        time.sleep(max(0.0, SETTLE_SECONDS - (time.monotonic() - self.started)))
        self.channel.close()
        self.call(self.app.stop(grace_seconds=1))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)


JAN_1 = datetime(2027, 1, 1, tzinfo=UTC)


def server_settings(redis_url: str, tmp_path: Path, **overrides: Any) -> Settings:
    """A test server's settings: a free loopback port, SQLite in tmp_path, the Apollo catalog, and a flusher loop
    that stays out of the way (tests drain the outbox themselves with flush())."""
    values: dict[str, Any] = {
        "listen": "127.0.0.1:0",
        "redis_url": redis_url,
        "database_url": f"sqlite:///{tmp_path / 'ledger.db'}",
        "catalog": APOLLO,
        "data_dir": tmp_path,
        "flush_interval_seconds": 60,
    }
    return Settings(**(values | overrides))


def flush_redis(redis_url: str) -> None:
    """Empty the Redis of `redis_url`: the one node, or every primary of a cluster named by comma-separated seeds."""
    for seed in redis_url.split(","):
        # A replica answers READONLY: its primary's FLUSHALL empties it.
        with contextlib.suppress(redis.ReadOnlyError):
            redis.Redis.from_url(seed).flushall()


def start_server(redis_url: str, tmp_path: Path, **overrides: Any) -> RunningServer:
    """A real server on an emptied Redis, its ManualClock at JAN_1."""
    flush_redis(redis_url)
    return RunningServer(server_settings(redis_url, tmp_path, **overrides), ManualClock(to_ms(JAN_1)))


def assert_wallet_index_exact(redis_url: str, shards: int, customer_id: str) -> None:
    """The customer's wallet index (bucket order, bucket expiry, bucket_credits) is exactly what its buckets make."""
    keys = KeySpace(shards).for_customer(customer_id)
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        buckets = client.hgetall(keys.buckets)
        index = bucket_codec.wallet_index({str(bucket_id): str(value) for bucket_id, value in buckets.items()})
        assert client.zrange(keys.bucket_order, 0, -1) == sorted(index.order)
        assert dict(client.zrange(keys.bucket_expiry, 0, -1, withscores=True)) == index.expiry  # type: ignore[arg-type]
        assert int(client.hget(keys.customer, customer_fields.BUCKET_CREDITS) or 0) == index.credits
    finally:
        client.close()

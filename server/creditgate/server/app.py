"""Wiring: build_app(settings) assembles Redis, the store, the engine, the flusher and the gRPC server."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import grpc
import structlog
from creditgate.server.api.admin import AdminServicer
from creditgate.server.api.auth import ApiKeyInterceptor, load_api_keys, require_keys_off_loopback
from creditgate.server.api.calls import CallEnvelope
from creditgate.server.api.gateway import FrontDoors, read_routes
from creditgate.server.api.grpc_server import new_grpc_server
from creditgate.server.api.metering import MeteringServicer
from creditgate.server.billing.invoices import Invoicer
from creditgate.server.billing.webhooks import WebhookSender
from creditgate.server.catalog.holder import CatalogHolder
from creditgate.server.clock import Clock, ManualClock, SystemClock
from creditgate.server.embedded_redis import EmbeddedRedis
from creditgate.server.engine.accounts import Accounts
from creditgate.server.engine.balances import Balances
from creditgate.server.engine.cluster import ClusterWire, RedisClient, open_redis
from creditgate.server.engine.customer_state import CustomerState
from creditgate.server.engine.decisions import Decisions
from creditgate.server.engine.eviction import check_eviction_policy
from creditgate.server.engine.holds import Holds
from creditgate.server.engine.keys import KeySpace
from creditgate.server.engine.migrate import check_shards, migrate
from creditgate.server.engine.redis_errors import redis_error
from creditgate.server.engine.scripts import Scripts
from creditgate.server.engine.wire import RedisWire
from creditgate.server.errors import CreditgateError, InternalError
from creditgate.server.ledger.flusher import Flusher
from creditgate.server.ledger.flusher_process import FlusherProcess, new_flusher
from creditgate.server.ledger.heal import Healer
from creditgate.server.ops.metrics import Metrics
from creditgate.server.ops.probe import HealthProbe
from creditgate.server.ops.tls import server_credentials
from creditgate.server.settings import Settings
from creditgate.server.store.store import Store, open_store
from creditgate.server.tasks import Supervised
from creditgate.v1 import admin_pb2, metering_pb2
from grpc_health.v1 import _async as health_aio  # published as health.aio, which type checkers cannot see
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from redis.exceptions import RedisError

log = structlog.get_logger(__name__)
METERING_SERVICE = metering_pb2.DESCRIPTOR.services_by_name["MeteringService"]
ADMIN_SERVICE = admin_pb2.DESCRIPTOR.services_by_name["AdminService"]
SERVICE_NAMES = (METERING_SERVICE.full_name, ADMIN_SERVICE.full_name)
# Which gRPC health services each background loop holds up: while a loop is failing (or stopped), they are
# NOT_SERVING. Decisions (MeteringService and the server, "") need the health probe (nothing vouches for Redis
# without it) and the catalog follower (a replica that cannot follow would charge by an older catalog). They do not
# need the flusher, the invoicer or the hold sweeper: entries wait in the outbox, and a decision expires its own
# customer's due holds; AdminService, which reads the durable ledger, invoices and events, needs them all.
SERVES_DECISIONS = ("", METERING_SERVICE.full_name)
SERVES_LEDGER = (ADMIN_SERVICE.full_name,)


@dataclass
class App:
    settings: Settings
    clock: Clock
    redis: RedisClient
    scripts: Scripts
    store: Store
    catalog: CatalogHolder
    decisions: Decisions
    balances: Balances
    accounts: Accounts
    flusher: Flusher
    holds: Holds
    server: grpc.aio.Server
    health: health_aio.HealthServicer
    embedded_redis: EmbeddedRedis | None = None
    port: int = field(default=0)
    metrics: Metrics = field(default_factory=Metrics)
    probe: HealthProbe | None = None
    metrics_port: int = 0
    invoicer: Invoicer | None = None
    webhooks: WebhookSender | None = None
    redis_url: str = ""
    flusher_process: FlusherProcess | None = None
    front_doors: FrontDoors | None = None

    async def start(self, separate_flusher: bool = False) -> None:
        """separate_flusher: the outbox is flushed by a child process (serve) rather than a task of this one."""
        await self.store.open()
        try:
            await self.redis.ping()
        except RedisError as exc:
            raise redis_error(exc, "reaching Redis") from exc
        await check_eviction_policy(self.redis)
        await self.scripts.load()
        # Customers are placed by the shard count: another count than the one they were placed by would lose them.
        await check_shards(self.redis, KeySpace(self.settings.shards), self.settings.shards)
        # Keys of the layout before this one are renamed into it before anything reads them.
        await migrate(self.redis, KeySpace(self.settings.shards), self.settings.shards)
        await self.flusher.setup()
        await self.catalog.load_saved()
        if self.settings.catalog is not None:
            version, changed = await self.catalog.apply(self.settings.catalog.read_text())
            log.info("catalog_applied", path=str(self.settings.catalog), version=version, changed=changed)
        credentials = server_credentials(self.settings)
        if credentials is None:
            self.port = self.server.add_insecure_port(self.settings.listen)
        else:
            self.port = self.server.add_secure_port(self.settings.listen, credentials)
        if self.front_doors is not None:
            await self.front_doors.start()
        await self.server.start()
        for name in (*SERVICE_NAMES, ""):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        flusher: Supervised = self.flusher.task
        if separate_flusher:
            self.flusher_process = FlusherProcess(self.settings, self.redis_url, self.clock)
            self.flusher_process.start()
            flusher = self.flusher_process
        else:
            self.flusher.start()
        if self.invoicer is not None:
            self.invoicer.start()
        if self.webhooks is not None:
            self.webhooks.start()
        if self.probe is not None:
            self.probe.start()
        if self.settings.metrics_listen is not None:
            self.metrics_port = self.metrics.serve(self.settings.metrics_listen)
        self.holds.start()
        self.catalog.start()
        self._supervise(flusher)
        log.info("serving", listen=self.settings.listen, port=self.port)

    def _supervise(self, flusher: Supervised) -> None:
        """Every background loop in the metrics, and in the health of the services that need it (SERVES_*)."""
        if self.probe is None or self.invoicer is None:
            raise InternalError("the app has no health probe or invoicer to supervise (build_app makes both)")
        on_decisions: list[Supervised] = [self.probe.task, self.catalog.follower]
        on_ledger: list[Supervised] = [flusher, self.invoicer.task, self.holds.sweeper]
        self.probe.depends_on(SERVES_DECISIONS, on_decisions)
        self.probe.depends_on(SERVES_LEDGER, [*on_decisions, *on_ledger])
        self.metrics.tasks.extend([*on_decisions, *on_ledger])
        for loop in (*on_decisions, *on_ledger):
            loop.watch(self.probe.loop_changed)
        if self.flusher_process is not None:
            self.metrics.tasks.append(self.flusher_process.watcher)

    async def stop(self, grace_seconds: float = 5.0) -> None:
        """Stop taking calls, let in-flight ones finish, flush the outbox, close."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace_seconds)
        if self.front_doors is not None:
            await self.front_doors.stop()
        if self.probe is not None:
            await self.probe.stop()
        self.metrics.close()
        await self.catalog.stop()
        await self.holds.stop()
        if self.invoicer is not None:
            await self.invoicer.stop()
        if self.webhooks is not None:
            await self.webhooks.stop()
        await self.flusher.stop()
        if self.flusher_process is not None:
            await self.flusher_process.stop()
        await self.scripts.close()
        await self.redis.aclose()
        await self.store.close()
        if self.embedded_redis is not None:
            self.embedded_redis.stop()


def build_app(settings: Settings, clock: Clock | None = None) -> App:
    api_keys = load_api_keys(settings)
    require_keys_off_loopback(settings, api_keys)
    routes = read_routes(settings.routes) if settings.routes is not None else None
    simulated = settings.clock in ("simulated", "manual")
    clock = clock or (ManualClock(SystemClock().now_ms()) if simulated else SystemClock())
    embedded = None
    redis_url = settings.redis_url
    if redis_url is None:
        embedded = EmbeddedRedis(settings.data_dir / "redis")
        embedded.start()
        redis_url = embedded.url
    # The embedded Redis is one node; any other is asked (INFO cluster) and runs in cluster mode when it says so.
    redis, cluster = open_redis(redis_url, settings.redis_timeout_seconds, one_node=embedded is not None)
    wire: RedisWire | ClusterWire
    if cluster:
        settings = settings.on_cluster()
        wire = ClusterWire(redis_url, settings.redis_timeout_seconds)
    else:
        wire = RedisWire(redis_url, settings.redis_timeout_seconds)
    keys = KeySpace(settings.shards)
    store = open_store(settings.effective_database_url, settings.database_migration_url)
    catalog = CatalogHolder(store, clock, settings.catalog_refresh_interval_seconds)
    scripts = Scripts(redis, wire, settings.redis_wait_replicas, int(settings.redis_timeout_seconds * 1000 / 2))
    metrics = Metrics()
    healer = Healer(redis, scripts, keys, store, catalog, clock, metrics)
    # The engine by job: decisions, reads, and the account changes; holds beside them. They share the customer's
    # state in Redis (periods opened, due holds expired, a customer Redis may hold older than the ledger healed).
    state = CustomerState(redis, scripts, keys, catalog, clock, settings, healer)
    decisions = Decisions(state)
    balances = Balances(state)
    accounts = Accounts(state, balances)
    flusher = new_flusher(redis, redis_url, store, settings, clock)
    holds = Holds(state)
    envelope = CallEnvelope(metrics, log_successes=settings.log_calls == "all")

    def refused(method: str, error: CreditgateError, metadata: Any) -> None:
        metrics.auth_failures.labels(error.reason.lower()).inc()
        envelope.refused(method, error, metadata)

    # Only with keys: an interceptor costs every call a little, and without keys there is nothing to check.
    interceptors = [ApiKeyInterceptor(api_keys, refused)] if api_keys else []
    server = new_grpc_server(interceptors)
    envelope.register(server, METERING_SERVICE, MeteringServicer(decisions, balances, holds, settings))
    simulated_clock = clock if simulated and isinstance(clock, ManualClock) else None
    invoicer = Invoicer(store, balances, catalog, clock, interval_seconds=settings.invoice_interval_seconds)
    admin = AdminServicer(accounts, balances, catalog, store, flusher, simulated_clock, invoicer, settings.webhook_urls)
    envelope.register(server, ADMIN_SERVICE, admin)
    front_doors = None
    if routes is not None:
        front_doors = FrontDoors(routes, settings.http_authz_listen, api_keys, decisions, balances, catalog, metrics)
        front_doors.register(envelope, server)
    health_servicer = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    app = App(
        settings=settings,
        clock=clock,
        redis=redis,
        scripts=scripts,
        store=store,
        catalog=catalog,
        decisions=decisions,
        balances=balances,
        accounts=accounts,
        flusher=flusher,
        holds=holds,
        server=server,
        health=health_servicer,
        embedded_redis=embedded,
        redis_url=redis_url,
    )
    app.metrics = metrics
    app.front_doors = front_doors
    app.invoicer = invoicer
    app.webhooks = WebhookSender(store, clock, SystemClock(), settings)
    app.probe = HealthProbe(
        redis,
        store,
        health_servicer,
        (METERING_SERVICE.full_name, ""),
        (ADMIN_SERVICE.full_name,),
        keys.all_outboxes(),
        [keys.holds_due(shard) for shard in range(settings.shards)],
        metrics,
        clock,
        interval_seconds=settings.health_probe_interval_seconds,
        timeout_seconds=settings.health_probe_timeout_seconds,
    )
    return app

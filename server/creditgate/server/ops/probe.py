"""The health probe: reports a service NOT_SERVING while a dependency it needs does not answer or a background loop
it needs is failing, and measures the outbox backlog and lag, the open holds and the parked entries for the
metrics."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence
from typing import Any, TypeVar

import structlog
from creditgate.server.clock import Clock
from creditgate.server.engine.cluster import RedisClient
from creditgate.server.ops.metrics import Metrics
from creditgate.server.store.store import Store
from creditgate.server.tasks import PeriodicTask, Supervised, TaskState
from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health_pb2
from redis.asyncio.cluster import RedisCluster

log = structlog.get_logger(__name__)
T = TypeVar("T")
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
# A customer id the validator never lets in, so the store's probe query reads an index and finds nothing.
PROBE_CUSTOMER_ID = "#health-probe"


class HealthProbe:
    def __init__(
        self,
        redis: RedisClient,
        store: Store,
        health: health_aio.HealthServicer,
        services_on_redis: Sequence[str],
        services_on_both: Sequence[str],
        outboxes: Sequence[str],
        holds_due: Sequence[str],
        metrics: Metrics,
        clock: Clock,
        *,
        interval_seconds: float,
        timeout_seconds: float,
    ) -> None:
        self._redis = redis
        self._store = store
        self._health = health
        # Decisions need only Redis: while the store is down their ledger entries wait in the outbox (the
        # durability contract), so a load balancer must keep sending them. Reads of the ledger need the store too.
        self._services_on_redis = services_on_redis
        self._services_on_both = services_on_both
        self._outboxes = outboxes
        self._holds_due = holds_due
        self._metrics = metrics
        self._clock = clock
        self._timeout = timeout_seconds
        # start() published SERVING after reaching both.
        self._up: tuple[bool, bool] = (True, True)
        self._changed_ms = clock.now_ms()
        self._loops: dict[str, list[Supervised]] = {}
        self._published: dict[str, int] = {}
        # The first probe is one interval after start.
        self.task = PeriodicTask("health_probe", self.run_once, interval_seconds, clock, wait_first=True)

    def depends_on(self, services: Sequence[str], loops: Sequence[Supervised]) -> None:
        """`services` are NOT_SERVING while any of `loops` is failing or not running."""
        for service in services:
            self._loops.setdefault(service, []).extend(loops)

    async def loop_changed(self, state: TaskState) -> None:
        """A PeriodicTask watcher: a loop failed or recovered, so the health of what depends on it is published
        now rather than at the next probe."""
        await self.publish()

    async def run_once(self) -> bool:
        """Probe both dependencies, publish the verdicts to gRPC health and the metrics; True when both answer."""
        redis_up = await self._answers("redis", self._redis.ping())
        store_up = await self._answers("store", self._store.list_ledger(PROBE_CUSTOMER_ID, 1, None))
        if (redis_up, store_up) != self._up:
            now = self._clock.now_ms()
            (log.info if redis_up and store_up else log.warning)(
                "health_changed", redis_up=redis_up, store_up=store_up, after_ms=now - self._changed_ms
            )
            self._up, self._changed_ms = (redis_up, store_up), now
        await self.publish()
        if redis_up:
            await self._answers("redis", self._measure())
        if store_up:
            await self._answers("store", self._measure_parked())
        return redis_up and store_up

    async def publish(self) -> None:
        """Each service's health from the last dependency verdicts and the state of the loops it needs."""
        redis_up, store_up = self._up
        for services, dependencies_up in (
            (self._services_on_redis, redis_up),
            (self._services_on_both, redis_up and store_up),
        ):
            for service in services:
                failing = [loop.name for loop in self._loops.get(service, ()) if not loop.state().healthy]
                status = SERVING if dependencies_up and not failing else NOT_SERVING
                before = self._published.get(service)
                if before != status:
                    if failing:
                        log.warning("service_not_serving", service=service or "(server)", failing_loops=failing)
                    elif before == NOT_SERVING and status == SERVING:
                        log.info("service_serving", service=service or "(server)")
                    self._published[service] = status
                    await self._health.set(service, status)

    async def _answers(self, dependency: str, check: Awaitable[Any]) -> bool:
        try:
            await asyncio.wait_for(check, self._timeout)
        except Exception as exc:  # whatever a dependency raises, the probe answers "unreachable" and goes on
            log.warning("dependency_unreachable", dependency=dependency, error=str(exc) or type(exc).__name__)
            self._metrics.dependency_up.labels(dependency).set(0)
            if dependency == "redis":
                self._metrics.redis_errors.labels("health_probe").inc()
            return False
        self._metrics.dependency_up.labels(dependency).set(1)
        return True

    async def _measure(self) -> None:
        backlog, oldest_ms, now_ms = await outbox_backlog(self._redis, self._outboxes)
        self._metrics.outbox_backlog.set(backlog)
        self._metrics.outbox_lag.set(max(0, now_ms - oldest_ms) / 1000 if backlog else 0)
        async with self._redis.pipeline(transaction=False) as pipe:
            for key in self._holds_due:
                pipe.zcard(key)
            self._metrics.holds_outstanding.set(sum(int(count) for count in await pipe.execute()))

    async def _measure_parked(self) -> None:
        self._metrics.parked_entries.set(await self._store.parked_count())

    def start(self) -> None:
        self.task.start()

    async def stop(self) -> None:
        # A probe waits at most timeout_seconds for each of its three checks.
        await self.task.stop(3 * self._timeout + 1)


async def outbox_backlog(redis: RedisClient, outboxes: Sequence[str]) -> tuple[int, int, int]:
    """(entries waiting in all outboxes, the oldest one's Redis time in ms, Redis's time now in ms).

    The flusher deletes an entry once the store has it, so a stream's length is its backlog, and its first
    entry's id (Redis time at XADD) tells how long the oldest has waited.
    """
    # A cluster's pipeline sends each command to its key's primary and refuses a keyless TIME: asked apart.
    cluster = isinstance(redis, RedisCluster)
    async with redis.pipeline(transaction=False) as pipe:
        if not cluster:
            pipe.time()
        for stream in outboxes:
            pipe.xlen(stream)
            pipe.xrange(stream, count=1)
        replies = await pipe.execute()
    if cluster:
        replies = [await redis.time(), *replies]
    seconds, micros = replies[0]
    now_ms = int(seconds) * 1000 + int(micros) // 1000
    backlog, oldest_ms = 0, now_ms
    for length, first in zip(replies[1::2], replies[2::2], strict=True):
        backlog += int(length)
        if first:
            entry_id = first[0][0]
            entry_text = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
            oldest_ms = min(oldest_ms, int(entry_text.split("-")[0]))
    return backlog, oldest_ms, now_ms

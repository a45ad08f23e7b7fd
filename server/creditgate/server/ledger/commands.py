"""`creditgate reconcile`, `restore`, `migrate`, `reshard` and `creditgate ledger parked / retry-parked`:
connect to Redis and the durable store from the settings, run, print; the exit code says whether Redis and the
ledger agree, or whether entries are (still) parked."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from creditgate.server.clock import SystemClock
from creditgate.server.embedded_redis import EmbeddedRedis
from creditgate.server.engine.cluster import RedisClient, open_redis
from creditgate.server.engine.keys import KeySpace
from creditgate.server.engine.migrate import MigrationReport, migrate
from creditgate.server.engine.reshard import ReshardReport, recorded_shards, reshard
from creditgate.server.ledger.flusher_process import new_flusher
from creditgate.server.ledger.parked import RetryReport, retry_parked
from creditgate.server.ledger.reconcile import ReconcileReport, reconcile, redis_now_ms
from creditgate.server.ledger.restore import RestoreReport, restore
from creditgate.server.settings import Settings
from creditgate.server.store.ledger import ParkedEntry
from creditgate.server.store.store import Store, open_store
from rich.console import Console
from rich.table import Table

T = TypeVar("T")
# Differences listed per customer before "… and N more".
SHOWN_DIFFERENCES = 8


def run_reconcile(settings: Settings, console: Console) -> int:
    """Prints the drift; returns the exit code: 0 healthy, 1 drift."""
    report = asyncio.run(_with_connections(settings, _reconcile))
    print_reconcile(report, console)
    return 0 if report.healthy else 1


def run_restore(settings: Settings, console: Console) -> int:
    report = asyncio.run(_with_connections(settings, _restore))
    console.print(
        f"restored {report.customers:,} customers: {report.buckets:,} buckets, {report.credits:,} credits available,"
        f" {report.holds:,} open holds (those Redis lost are due at once)"
    )
    return 0


def run_migrate(settings: Settings, console: Console) -> int:
    """Moves a Redis of an older key layout into the current one (the server also does it at start); exit code 1
    when keys were left that no single customer owns."""
    report = asyncio.run(_with_connections(settings, _migrate))
    console.print(f"{report.shards_migrated} of {settings.shards} shards migrated, {report.keys_moved:,} keys moved")
    for key in report.keys_left:
        console.print(f"left in place (no single customer owns it): {key}")
    return 1 if report.keys_left else 0


async def _migrate(redis: RedisClient, store: Store, keys: KeySpace) -> MigrationReport:
    return await migrate(redis, keys, len(keys.all_outboxes()))


def run_reshard(settings: Settings, console: Console) -> int:
    """Moves every customer from the shard count Redis records to the settings' (sidecars stopped): the old
    outboxes are drained into the ledger first. Exit code 1 when keys were left that no customer owns."""

    async def work(redis: RedisClient, store: Store, keys: KeySpace) -> ReshardReport | None:
        recorded = await recorded_shards(redis, keys)
        if recorded is None or recorded == len(keys.all_outboxes()):
            return None
        old = KeySpace(recorded)
        # Every sidecar is stopped: what their flushers had read and not acknowledged is taken over at once.
        url = settings.redis_url or EmbeddedRedis(settings.data_dir / "redis").url
        flusher = new_flusher(redis, url, store, settings, SystemClock(), keys=old, claim_idle_ms=0)
        await flusher.setup()
        drained = await flusher.drain()
        console.print(f"{drained:,} outbox entries of the {recorded} old shards moved into the ledger")
        return await reshard(redis, old, keys)

    report = asyncio.run(_with_connections(settings, work))
    if report is None:
        console.print("nothing to move: Redis is at the configured shard count (or holds no customers yet)")
        return 0
    console.print(
        f"{report.customers_moved:,} customers moved from {report.shards_from} to {report.shards_to} shards"
        f" ({report.keys_moved:,} keys, {report.holds_due_moved:,} due holds)"
    )
    for key in report.keys_left:
        console.print(f"left in place (no customer of its shard owns it): {key}", markup=False)
    return 1 if report.keys_left else 0


def run_parked(settings: Settings, console: Console) -> int:
    """Lists the parked entries; returns the exit code: 0 none, 1 some."""
    parked = asyncio.run(_with_store(settings, _parked))
    for entry in parked:
        print_parked(entry, console)
    console.print(f"{len(parked):,} parked entries", markup=False)
    return 1 if parked else 0


def run_retry_parked(settings: Settings, console: Console) -> int:
    """Writes the parked entries that now parse and write; returns the exit code: 0 none left, 1 some still fail."""
    report = asyncio.run(_with_store(settings, _retry))
    for entry in report.still_parked:
        print_parked(entry, console)
    console.print(
        f"{len(report.written):,} parked entries written, {len(report.still_parked):,} still parked", markup=False
    )
    return 1 if report.still_parked else 0


def print_parked(entry: ParkedEntry, console: Console) -> None:
    # Plain text: the raw fields hold brackets that rich would read as markup.
    console.print(f"{entry.source_id}\n  error: {entry.error}\n  raw:   {entry.raw}", markup=False, highlight=False)


async def _parked(store: Store) -> list[ParkedEntry]:
    return await store.parked()


async def _retry(store: Store) -> RetryReport:
    return await retry_parked(store, SystemClock().now_ms())


async def _with_store(settings: Settings, work: Callable[[Store], Awaitable[T]]) -> T:
    store = open_store(settings.effective_database_url, settings.database_migration_url)
    await store.open()
    try:
        return await work(store)
    finally:
        await store.close()


async def _reconcile(redis: RedisClient, store: Store, keys: KeySpace) -> ReconcileReport:
    return await reconcile(redis, store, keys, await redis_now_ms(redis))


async def _restore(redis: RedisClient, store: Store, keys: KeySpace) -> RestoreReport:
    return await restore(redis, store, keys, await redis_now_ms(redis))


async def _with_connections(settings: Settings, work: Callable[[RedisClient, Store, KeySpace], Awaitable[T]]) -> T:
    url = settings.redis_url or EmbeddedRedis(settings.data_dir / "redis").url
    redis, cluster = open_redis(url, settings.redis_timeout_seconds, one_node=settings.redis_url is None)
    if cluster:
        settings = settings.on_cluster()
    store = open_store(settings.effective_database_url, settings.database_migration_url)
    await store.open()
    try:
        return await work(redis, store, KeySpace(settings.shards))
    finally:
        await store.close()
        await redis.aclose()


def print_reconcile(report: ReconcileReport, console: Console) -> None:
    if report.drifts:
        table = Table(
            "customer", "credits (redis - ledger)", "entries missing in redis", "what differs (redis → ledger)"
        )
        for drift in report.drifts:
            shown = [f"{d.what}: {d.redis} → {d.ledger}" for d in drift.differences[:SHOWN_DIFFERENCES]]
            if len(drift.differences) > SHOWN_DIFFERENCES:
                shown.append(f"… and {len(drift.differences) - SHOWN_DIFFERENCES} more")
            table.add_row(drift.customer_id, f"{drift.credits:+,}", f"{drift.entries:+,}", "\n".join(shown))
        console.print(table)
    console.print(
        f"drift: {len(report.drifts)} of {report.customers_checked} customers,"
        f" {report.credits_drift:+,} credits, {report.entries_drift:+,} entries"
    )

"""Moves a Redis written in key layout 1 (`c:<id>:buckets`, `c:<id>:req:<request_id>` …) to layout 2, and one in
layout 2 to layout 3 (keys.py): each customer's wallet index (bucket order, bucket expiry, bucket_credits) built
from its buckets hash with engine/bucket_codec.py.

Run at every start (a shard whose meta hash says `layout 2` costs one HGET) and by `creditgate migrate`. Every key
of a customer shares its shard's slot, so each one moves with RENAME (atomic, no copy), under its new name.
Layout 1 let a crafted id name another customer's key; a key that cannot be told apart (it could belong to two
customers) is left where it is and reported, never guessed."""

from __future__ import annotations

from dataclasses import dataclass, field

import structlog
from creditgate.server.engine import bucket_codec, customer_fields
from creditgate.server.engine.cluster import RedisClient
from creditgate.server.engine.keys import LAYOUT, KeySpace, scan_literal
from creditgate.server.errors import FailedPrecondition, Unavailable
from redis.exceptions import RedisError

log = structlog.get_logger(__name__)
# Layout 1's per-customer keys: the suffix after `c:<id>` and the CustomerKeys field it becomes.
SUFFIXES = {
    ":buckets": "buckets",
    ":usage": "usage",
    ":holds": "holds",
    ":holds_open": "holds_open",
    ":holds_done": "holds_done",
}
REQUEST_MARK = ":req:"
SCAN_COUNT = 1000


@dataclass
class MigrationReport:
    shards_migrated: int = 0
    keys_moved: int = 0
    # Layout-1 keys left in place: no customer, or more than one, could own them.
    keys_left: list[str] = field(default_factory=list)
    # Customers whose wallet index was built (layout 2 -> 3).
    wallets_indexed: int = 0


async def migrate(redis: RedisClient, keys: KeySpace, shards: int) -> MigrationReport:
    report = MigrationReport()
    try:
        for shard in range(shards):
            layout = await redis.hget(keys.meta(shard), "layout")
            if layout == str(LAYOUT):
                continue
            if layout != "2":
                await _migrate_shard(redis, keys, shard, report)
            await _index_wallets(redis, keys, shard, report)
            await redis.hset(keys.meta(shard), "layout", str(LAYOUT))
            report.shards_migrated += 1
    except RedisError as exc:
        raise Unavailable(f"Redis: {exc}") from exc
    if report.keys_moved or report.keys_left or report.wallets_indexed:
        log.warning(
            "redis_layout_migrated",
            moved=report.keys_moved,
            left=report.keys_left[:20],
            wallets_indexed=report.wallets_indexed,
        )
    return report


async def check_shards(redis: RedisClient, keys: KeySpace, shards: int) -> None:
    """Refuse to start with another shard count than the one this Redis's customers were placed by (recorded in
    shard 0's meta by the first start that found none: a Redis written before it was recorded is taken to be at
    the count it is started with). Another count would look for customers under other tags, and they would seem lost:
    `creditgate reshard` moves them (engine/reshard.py)."""
    try:
        await redis.hsetnx(keys.meta(0), "shards", str(shards))
        found = await redis.hget(keys.meta(0), "shards")
    except RedisError as exc:
        raise Unavailable(f"Redis: {exc}") from exc
    recorded = int(found) if found is not None else shards
    if recorded != shards:
        raise FailedPrecondition(
            f"shards is {shards} but this Redis holds customers placed over {recorded} shards; a new count moves"
            f" every customer: stop every sidecar and run `creditgate reshard` with CREDITGATE_SHARDS={shards},"
            f" or start with CREDITGATE_SHARDS={recorded}",
            field="shards",
            reason="SHARDS_CHANGED",
        )


async def _migrate_shard(redis: RedisClient, keys: KeySpace, shard: int, report: MigrationReport) -> None:
    prefix = keys.customer_prefix(shard)
    found = [str(key) async for key in redis.scan_iter(match=scan_literal(prefix) + "*", count=SCAN_COUNT)]
    tails = {key: key[len(prefix) :] for key in found}
    customers: set[str] = set()
    for key, tail in tails.items():
        if await redis.type(key) == "hash" and await redis.hget(key, customer_fields.ID) == tail:
            customers.add(tail)
    for key, tail in tails.items():
        if tail in customers:
            continue  # a customer hash: layout 2 names it the same
        owners = [
            (base, kind)
            for suffix, kind in SUFFIXES.items()
            if tail.endswith(suffix) and (base := tail[: -len(suffix)]) in customers
        ]
        start = 0
        while (at := tail.find(REQUEST_MARK, start)) >= 0:
            if tail[:at] in customers:
                owners.append((tail[:at], "request:" + tail[at + len(REQUEST_MARK) :]))
            start = at + 1
        owners = [(base, kind) for base, kind in owners if keys.shard_of(base) == shard]
        if len(owners) != 1:
            report.keys_left.append(key)
            continue
        base, kind = owners[0]
        customer_keys = keys.for_customer(base)
        target = (
            customer_keys.request(kind.removeprefix("request:"))
            if kind.startswith("request:")
            else getattr(customer_keys, kind)
        )
        if await redis.renamenx(key, target):
            report.keys_moved += 1
        else:
            report.keys_left.append(key)


async def shard_customers(redis: RedisClient, keys: KeySpace, shard: int) -> list[str]:
    """The ids of the customers whose hash is in `shard`, each confirmed by its hash's own `id` (SCAN also finds
    keys that only look like a customer's)."""
    found: list[str] = []
    match = scan_literal(keys.customer_prefix(shard)) + "*"
    async for key in redis.scan_iter(match=match, count=SCAN_COUNT, _type="hash"):
        customer_id = keys.customer_id_of(str(key))
        if await redis.hget(key, customer_fields.ID) == customer_id and keys.shard_of(customer_id) == shard:
            found.append(customer_id)
    return found


async def _index_wallets(redis: RedisClient, keys: KeySpace, shard: int, report: MigrationReport) -> None:
    """Layout 2 -> 3: every customer of the shard gets the index of the buckets it has."""
    for customer_id in await shard_customers(redis, keys, shard):
        customer_keys = keys.for_customer(customer_id)
        buckets = await redis.hgetall(customer_keys.buckets)
        index = bucket_codec.wallet_index({str(field): str(value) for field, value in buckets.items()})
        async with redis.pipeline(transaction=True) as pipe:
            pipe.delete(*customer_keys.wallet_index)
            if index.order:
                pipe.zadd(customer_keys.bucket_order, index.order)
            if index.expiry:
                pipe.zadd(customer_keys.bucket_expiry, index.expiry)
            pipe.hset(customer_keys.customer, customer_fields.BUCKET_CREDITS, str(index.credits))
            await pipe.execute()
        report.wallets_indexed += 1

"""Moves every customer from the shard count its Redis was written with to another (`creditgate reshard`).

A customer's shard is crc32(id) % shards, and every key of it carries the shard's `{sN}` tag, so a new count puts
most customers under another tag: their keys must move, or they would be looked for where they are not. Going from
the 8 shards of a single node to the 256 a Redis Cluster spreads over its primaries is the case this is for.

Offline, with every sidecar stopped: the caller first drains the old shards' outboxes into the durable ledger (an
outbox entry names no customer key, but it sits in the old stream), then this moves, per old shard, each customer's
hashes, hold sets and remembered answers (DUMP + RESTORE with the key's TTL, then DEL: on a cluster the two names
live in different slots, so RENAME cannot) and its open holds' entries of the shard's holds_due set; the count is
recorded last. Safe to run again after a crash: a key already restored under its new name (the same DUMP) is not
copied twice, and the old one is deleted."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import structlog
from creditgate.server.engine.cluster import RedisClient
from creditgate.server.engine.keys import LAYOUT, REQUEST, KeySpace, scan_literal
from creditgate.server.engine.migrate import shard_customers
from creditgate.server.errors import FailedPrecondition, Unavailable
from redis.exceptions import RedisError, ResponseError

log = structlog.get_logger(__name__)
SCAN_COUNT = 1000
# The CustomerKeys fields a customer owns alone (the outbox and holds_due are its shard's).
OWN_KEYS = ("customer", "buckets", "bucket_order", "bucket_expiry", "usage", "holds", "holds_open", "holds_done")


@dataclass
class ReshardReport:
    shards_from: int
    shards_to: int
    customers_moved: int = 0
    keys_moved: int = 0
    holds_due_moved: int = 0
    # Keys found under an old tag that no customer of it owns: left in place.
    keys_left: list[str] = field(default_factory=list)


async def recorded_shards(redis: RedisClient, keys: KeySpace) -> int | None:
    """The shard count this Redis's customers were placed by (shard 0's meta), None when none is recorded."""
    try:
        found = await redis.hget(keys.meta(0), "shards")
    except RedisError as exc:
        raise Unavailable(f"Redis: {exc}") from exc
    return int(found) if found is not None else None


async def reshard(redis: RedisClient, old: KeySpace, new: KeySpace) -> ReshardReport:
    """Move every customer of `old` (its shard count) to its place in `new`. The old outboxes must be empty."""
    report = ReshardReport(len(old.all_outboxes()), len(new.all_outboxes()))
    try:
        waiting = {stream: int(await redis.xlen(stream)) for stream in old.all_outboxes()}
        if any(waiting.values()):
            raise FailedPrecondition(
                f"{sum(waiting.values()):,} ledger entries are still in the outbox of the old shards; drain them into"
                " the ledger first (creditgate reshard does, when it can reach the store)",
                field="outbox",
                reason="OUTBOX_NOT_DRAINED",
            )
        for shard in range(report.shards_from):
            await _move_shard(redis, old, new, shard, report)
        for shard in range(report.shards_to):
            await redis.hset(new.meta(shard), "layout", str(LAYOUT))
        await redis.hset(new.meta(0), "shards", str(report.shards_to))
    except RedisError as exc:
        raise Unavailable(f"Redis: {exc}") from exc
    log.warning(
        "redis_resharded",
        shards_from=report.shards_from,
        shards_to=report.shards_to,
        customers=report.customers_moved,
        keys=report.keys_moved,
        left=report.keys_left[:20],
    )
    return report


async def _move_shard(redis: RedisClient, old: KeySpace, new: KeySpace, shard: int, report: ReshardReport) -> None:
    tag = old.shard_prefix(shard)
    customers = set(await shard_customers(redis, old, shard))
    moving = {c for c in customers if new.shard_of(c) != shard}
    for customer_id in sorted(moving):
        before, after = old.for_customer(customer_id), new.for_customer(customer_id)
        for name in OWN_KEYS:
            report.keys_moved += await _move_key(redis, getattr(before, name), getattr(after, name))
        report.customers_moved += 1
    # Remembered answers: `r:<len(id)>:<id>:<request_id>`; the length says where the id ends.
    requests = f"{tag}{REQUEST}:"
    async for found in redis.scan_iter(match=scan_literal(requests) + "*", count=SCAN_COUNT):
        key = str(found)
        rest = key[len(requests) :]
        length, _, tail = rest.partition(":")
        customer_id = tail[: int(length)] if length.isdigit() else ""
        if customer_id not in customers:
            report.keys_left.append(key)
            continue
        if customer_id in moving:
            request_id = tail[int(length) + 1 :]
            report.keys_moved += await _move_key(redis, key, new.for_customer(customer_id).request(request_id))
    # Open holds due: members `customer_id/h<n>` scored by expiry, in the shard's set.
    due_key = old.holds_due(shard)
    due: Any = await redis.zrange(due_key, 0, -1, withscores=True)
    for member, score in due:
        customer_id = str(member).rpartition("/")[0]
        if customer_id in moving and new.holds_due(new.shard_of(customer_id)) != due_key:
            await redis.zadd(new.holds_due(new.shard_of(customer_id)), {str(member): score})
            await redis.zrem(due_key, str(member))
            report.holds_due_moved += 1


async def _move_key(redis: RedisClient, source: str, target: str) -> int:
    """1 when `source` was moved to `target` (its value and TTL), 0 when it does not exist."""
    if source == target:
        return 0
    dumped = await redis.dump(source)
    if dumped is None:
        return 0
    ttl_ms = int(await redis.pttl(source))
    try:
        await redis.restore(target, max(ttl_ms, 0), dumped)
    except ResponseError as exc:
        # BUSYKEY: a run stopped between RESTORE and DEL already copied it (the same value); anything else differs.
        if "BUSYKEY" not in str(exc) or await redis.dump(target) != dumped:
            raise FailedPrecondition(
                f"cannot move {source} to {target}: {exc}", field="shards", reason="RESHARD_TARGET_EXISTS"
            ) from exc
    await redis.delete(source)
    return 1

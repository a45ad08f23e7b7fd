"""Reconcile: for every customer, Redis's balances, buckets, counters and subscription against the durable
ledger (plus the outbox entries not flushed yet); the drift is what differs."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from creditgate.server.domain.catalog import load_catalog
from creditgate.server.domain.rules import RuleBook
from creditgate.server.engine import bucket_codec, customer_fields, usage_codec
from creditgate.server.engine.cluster import RedisClient
from creditgate.server.engine.keys import KeySpace
from creditgate.server.engine.redis_errors import redis_error
from creditgate.server.ledger.rebuild import DurableView, expected_state, read_durable
from creditgate.server.store.store import Store
from redis.exceptions import RedisError

# Customer hash fields reconcile checks (others, like holds, are not rebuilt from the ledger).
CUSTOMER_FIELDS = (
    customer_fields.ID,
    customer_fields.NAME,
    customer_fields.CREATED_AT,
    customer_fields.STATUS,
    customer_fields.SEQ,
    customer_fields.BUCKET_SEQ,
    customer_fields.PLAN,
    customer_fields.ANCHOR,
    customer_fields.PERIOD_INDEX,
)
SCAN_COUNT = 1000


@dataclass(frozen=True, slots=True)
class Difference:
    what: str
    redis: str
    ledger: str


@dataclass(frozen=True, slots=True)
class CustomerDrift:
    customer_id: str
    # Available credits in Redis minus what the ledger sums to.
    credits: int
    # Ledger entries Redis has not seen (positive) or Redis counted that the ledger lacks (negative).
    entries: int
    differences: list[Difference]


@dataclass(frozen=True, slots=True)
class ReconcileReport:
    customers_checked: int
    drifts: list[CustomerDrift] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        return not self.drifts

    @property
    def credits_drift(self) -> int:
        """Credits Redis holds beyond the ledger, summed over customers (negative: fewer)."""
        return sum(drift.credits for drift in self.drifts)

    @property
    def entries_drift(self) -> int:
        return sum(drift.entries for drift in self.drifts)


async def load_rules(store: Store) -> RuleBook | None:
    saved = await store.latest_catalog()
    return RuleBook(load_catalog(saved[1])) if saved else None


async def read_outbox(
    redis: RedisClient, keys: KeySpace, streams: list[str] | None = None
) -> list[tuple[str, str, dict[str, str]]]:
    """Every entry still in the outbox streams (all shards', or those named): not yet in the durable store."""
    entries: list[tuple[str, str, dict[str, str]]] = []
    try:
        for stream in keys.all_outboxes() if streams is None else streams:
            found: Any = await redis.xrange(stream)
            for entry_id, fields in found or []:
                entries.append((stream, _text(entry_id), {_text(k): _text(v) for k, v in (fields or {}).items()}))
    except RedisError as exc:
        raise redis_error(exc, "reconcile reading Redis") from exc
    return entries


async def redis_customer_ids(redis: RedisClient, keys: KeySpace) -> set[str]:
    found: set[str] = set()
    try:
        async for key in redis.scan_iter(match=keys.customer_scan_pattern(), count=SCAN_COUNT, _type="hash"):
            customer_id = await redis.hget(key, customer_fields.ID)
            if customer_id is not None and keys.for_customer(_text(customer_id)).customer == _text(key):
                found.add(_text(customer_id))
    except RedisError as exc:
        raise redis_error(exc, "reconcile reading Redis") from exc
    return found


async def read_customer(redis: RedisClient, keys: KeySpace, customer_id: str) -> tuple[dict[str, str], ...]:
    customer_keys = keys.for_customer(customer_id)
    try:
        async with redis.pipeline(transaction=True) as pipe:
            pipe.hgetall(customer_keys.customer)
            pipe.hgetall(customer_keys.buckets)
            pipe.hgetall(customer_keys.usage)
            replies = await pipe.execute()
    except RedisError as exc:
        raise redis_error(exc, "reconcile reading Redis") from exc
    return tuple({_text(k): _text(v) for k, v in reply.items()} for reply in replies)


async def redis_now_ms(redis: RedisClient) -> int:
    try:
        seconds, micros = await redis.time()
    except RedisError as exc:
        raise redis_error(exc, "reconcile reading Redis") from exc
    return int(seconds) * 1000 + int(micros) // 1000


async def reconcile(redis: RedisClient, store: Store, keys: KeySpace, now_ms: int, rounds: int = 3) -> ReconcileReport:
    """Compare every customer; a customer that differs is looked at again (up to `rounds` times in all), so
    decisions made while reconcile runs are not taken for drift."""
    rules = await load_rules(store)
    suspects: set[str] | None = None
    checked = 0
    drifts: dict[str, CustomerDrift] = {}
    for _ in range(rounds):
        # Redis first: an entry flushed meanwhile is then in the store, never in neither.
        outbox = await read_outbox(redis, keys)
        in_redis = await redis_customer_ids(redis, keys) if suspects is None else suspects
        snapshot = {customer_id: await read_customer(redis, keys, customer_id) for customer_id in sorted(in_redis)}
        view = await read_durable(store, outbox)
        everyone = set(snapshot) | set(view.customers) | set(view.ledger)
        if suspects is None:
            checked = len(everyone)
        else:
            everyone &= suspects
        drifts = {}
        for customer_id in sorted(everyone):
            redis_state = snapshot.get(customer_id)
            if redis_state is None:
                redis_state = await read_customer(redis, keys, customer_id)
            drift = compare(customer_id, redis_state, view, rules, now_ms)
            if drift is not None:
                drifts[customer_id] = drift
        if not drifts:
            break
        suspects = set(drifts)
    return ReconcileReport(checked, [drifts[customer_id] for customer_id in sorted(drifts)])


def compare(
    customer_id: str, redis_state: tuple[dict[str, str], ...], view: DurableView, rules: RuleBook | None, now_ms: int
) -> CustomerDrift | None:
    customer, buckets, usage = redis_state
    expected = expected_state(view, customer_id, rules, now_ms)
    differences: list[Difference] = []
    if not customer:
        differences.append(Difference("customer", "missing", "present"))
    elif customer_id not in view.customers:
        differences.append(Difference("customer", "present", "missing"))
    for name in CUSTOMER_FIELDS:
        if customer and customer.get(name, "") != expected.customer.get(name, ""):
            differences.append(Difference(name, customer.get(name, ""), expected.customer.get(name, "")))
    if customer and _metadata(customer.get(customer_fields.METADATA)) != _metadata(
        expected.customer[customer_fields.METADATA]
    ):
        differences.append(
            Difference(
                customer_fields.METADATA,
                customer.get(customer_fields.METADATA, ""),
                expected.customer[customer_fields.METADATA],
            )
        )
    for bucket_id in sorted(set(buckets) | set(expected.buckets), key=lambda name: (len(name), name)):
        if buckets.get(bucket_id) != expected.buckets.get(bucket_id):
            differences.append(
                Difference(f"bucket {bucket_id}", buckets.get(bucket_id, "-"), expected.buckets.get(bucket_id, "-"))
            )
    for name in sorted(set(usage) | set(expected.usage)):
        if usage_codec.counts_now(name, now_ms) and usage.get(name, "0") != expected.usage.get(name, "0"):
            differences.append(Difference(f"usage {name}", usage.get(name, "0"), expected.usage.get(name, "0")))
    redis_balance = sum(bucket_codec.decode(bucket_id, value).remaining for bucket_id, value in buckets.items())
    # The wallet's running total is what decisions read as the balance: it must be what the ledger's buckets hold.
    running_total = customer.get(customer_fields.BUCKET_CREDITS, "0") if customer else "0"
    if customer and running_total != expected.customer[customer_fields.BUCKET_CREDITS]:
        differences.append(
            Difference(customer_fields.BUCKET_CREDITS, running_total, expected.customer[customer_fields.BUCKET_CREDITS])
        )
    if redis_balance != expected.ledger_balance:
        differences.append(Difference("balance", str(redis_balance), str(expected.ledger_balance)))
    if not differences:
        return None
    entries = int(expected.customer[customer_fields.SEQ]) - int(customer.get(customer_fields.SEQ, 0) or 0)
    return CustomerDrift(customer_id, redis_balance - expected.ledger_balance, entries, differences)


def _metadata(value: str | None) -> Any:
    try:
        return json.loads(value or "{}")
    except ValueError:
        return value


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)

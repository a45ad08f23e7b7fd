"""Restore: rebuild every customer's Redis state from the durable store (disaster recovery after Redis lost
data), keeping the outbox entries Redis still has. Run it while no sidecar serves decisions."""

from __future__ import annotations

from dataclasses import dataclass

from creditgate.server.engine import bucket_codec, customer_fields
from creditgate.server.engine.cluster import RedisClient
from creditgate.server.engine.keys import KeySpace
from creditgate.server.engine.redis_errors import redis_error
from creditgate.server.ledger.rebuild import expected_state, read_durable
from creditgate.server.ledger.reconcile import load_rules, read_outbox
from creditgate.server.store.store import Store
from redis.exceptions import RedisError


@dataclass(frozen=True, slots=True)
class RestoreReport:
    customers: int
    buckets: int
    # Available credits written, over all customers.
    credits: int
    # Holds placed and never settled; those Redis lost are put back due at once (the sweeper returns their credits).
    holds: int = 0


async def restore(redis: RedisClient, store: Store, keys: KeySpace, now_ms: int) -> RestoreReport:
    rules = await load_rules(store)
    view = await read_durable(store, await read_outbox(redis, keys))
    customers = buckets = credits = holds = 0
    for customer_id in sorted(set(view.customers) | set(view.ledger)):
        state = expected_state(view, customer_id, rules, now_ms)
        customer_keys = keys.for_customer(customer_id)
        try:
            # One MULTI per customer (its keys share a slot): a decision sees the old state or the new, never half.
            async with redis.pipeline(transaction=True) as pipe:
                pipe.delete(
                    customer_keys.customer, customer_keys.buckets, customer_keys.usage, *customer_keys.wallet_index
                )
                pipe.hset(customer_keys.customer, mapping=state.customer)  # type: ignore[arg-type]
                if state.buckets:
                    pipe.hset(customer_keys.buckets, mapping=state.buckets)  # type: ignore[arg-type]
                    index = bucket_codec.wallet_index(state.buckets)
                    pipe.zadd(customer_keys.bucket_order, index.order)
                    if index.expiry:
                        pipe.zadd(customer_keys.bucket_expiry, index.expiry)
                if state.usage:
                    pipe.hset(customer_keys.usage, mapping=state.usage)  # type: ignore[arg-type]
                if state.open_holds:
                    # Due at once: the sweeper expires them, returning their credits through the ledger. A hold
                    # Redis still has (a partial loss) keeps its own record and expiry.
                    for hold_id, record in state.open_holds.items():
                        pipe.hsetnx(customer_keys.holds, hold_id, record)
                    pipe.zadd(customer_keys.holds_open, dict.fromkeys(state.open_holds, now_ms), nx=True)
                    due = {f"{customer_id}/{hold_id}": now_ms for hold_id in state.open_holds}
                    pipe.zadd(customer_keys.holds_due, due, nx=True)
                await pipe.execute()
        except RedisError as exc:
            raise redis_error(exc, "restore writing Redis") from exc
        customers += 1
        holds += len(state.open_holds)
        buckets += len(state.buckets)
        credits += int(state.customer[customer_fields.BUCKET_CREDITS])
    return RestoreReport(customers, buckets, credits, holds)

"""Heals customers after Redis came back older than the durable ledger, one customer at a time, before it changes.

A crash under `appendfsync everysec`, a restart from an older snapshot, a failover to a replica that lagged, a
FLUSHALL: Redis then holds, for some customers, a state the ledger has moved past, and a decision made on it would
reuse entry numbers the ledger already has. The scripts refuse to change a customer that was not verified in the
current epoch (lib.lua: the run_id of the Redis they run on) and answer 'verify'; the engine then asks this healer,
which compares the customer's entry sequence in Redis with the ledger's last entry and, when Redis is behind (or has
lost the customer), rebuilds the customer from the ledger (the restore model, ledger/rebuild.py) — no operator, no
global stop. After a plain restart every customer is verified once, lazily: one indexed read of the ledger each."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import structlog
from creditgate.server.clock import Clock
from creditgate.server.domain.records import event_record
from creditgate.server.domain.rules import RuleSource
from creditgate.server.engine import bucket_codec, customer_fields
from creditgate.server.engine.cluster import RedisClient
from creditgate.server.engine.keys import KeySpace
from creditgate.server.engine.scripts import Scripts
from creditgate.server.ledger.rebuild import expected_state, read_durable
from creditgate.server.ledger.reconcile import read_outbox
from creditgate.server.ops.metrics import Metrics
from creditgate.server.store.store import Store

log = structlog.get_logger(__name__)
# Customers whose verification lock is kept; past it the locks of idle customers are dropped.
LOCKS_KEPT = 4096


class Healer:
    def __init__(
        self,
        redis: RedisClient,
        scripts: Scripts,
        keys: KeySpace,
        store: Store,
        catalog: RuleSource,
        clock: Clock,
        metrics: Metrics,
    ) -> None:
        self._redis = redis
        self._scripts = scripts
        self._keys = keys
        self._store = store
        self._catalog = catalog
        self._clock = clock
        self._metrics = metrics
        # Many calls of one customer may ask at once: one verifies, the others wait for it.
        self._locks: dict[str, asyncio.Lock] = {}

    async def verify(self, customer_id: str) -> bool:
        """Make the customer's Redis state at least as new as the ledger and stamp it with the current epoch;
        False when neither Redis nor the ledger knows the customer."""
        lock = self._lock(customer_id)
        async with lock:
            keys = self._keys.for_customer(customer_id)
            newest = await self._store.list_ledger(customer_id, 1, None)
            ledger_seq = newest[0].seq if newest else 0
            result = await self._scripts.run("verify", [keys.customer], [ledger_seq])
            if result.status == "ok":
                self._metrics.customers_verified.labels("current").inc()
            if result.status in ("ok", "verified"):
                return True
            if result.status == "missing" and not newest and not await self._store.customers(customer_id):
                return False
            redis_seq = result.int("seq") if result.status == "behind" else -1
            await self._rebuild(customer_id, redis_seq, ledger_seq)
            return True

    async def _rebuild(self, customer_id: str, redis_seq: int, ledger_seq: int) -> None:
        keys = self._keys.for_customer(customer_id)
        now = self._clock.now_ms()
        # The shard's outbox: the ledger's newest part, still in Redis.
        outbox = await read_outbox(self._redis, self._keys, [keys.outbox])
        view = await read_durable(self._store, outbox, customer_id)
        state = expected_state(view, customer_id, self._catalog.rules, now)
        index = bucket_codec.wallet_index(state.buckets)
        encoded = json.dumps(
            {
                "customer": state.customer,
                "buckets": state.buckets,
                "usage": state.usage,
                "holds": state.open_holds,
                # The wallet's index as heal.lua writes it: [member, ...] and [id, expires_at, ...].
                "order": list(index.order),
                "expiry": [part for item in index.expiry.items() for part in item],
            },
            # Lua's cjson turns an empty object into an empty table either way; keep the order stable for logs.
            sort_keys=True,
        )
        hold_keys = [keys.customer, keys.buckets, keys.usage, keys.holds, keys.holds_open, keys.holds_due]
        hold_keys += keys.wallet_index
        result = await self._scripts.run("heal", hold_keys, [customer_id, encoded, now])
        if result.status != "healed":
            return  # another server healed it first
        overspent = max(0, -state.ledger_balance)
        self._metrics.customers_verified.labels("rebuilt").inc()
        if overspent:
            self._metrics.overspent_credits.inc(overspent)
        log.warning(
            "customer_rebuilt_from_ledger",
            customer_id=customer_id,
            redis_seq=redis_seq,
            ledger_seq=int(state.customer[customer_fields.SEQ]),
            balance=state.ledger_balance,
            overspent=overspent,
        )
        data: dict[str, Any] = {
            # -1: Redis had lost the customer.
            "redis_seq": redis_seq,
            "ledger_seq": int(state.customer[customer_fields.SEQ]),
            "balance": state.ledger_balance,
            "overspent_credits": overspent,
        }
        entry_id = f"{customer_id}/{state.customer['seq']}"
        events = [event_record("customer_rebuilt", customer_id, entry_id, now, data)]
        if overspent:
            events.append(event_record("credits_overspent", customer_id, entry_id, now, data))
        await self._store.write(list(events), [])

    def _lock(self, customer_id: str) -> asyncio.Lock:
        lock = self._locks.get(customer_id)
        if lock is None:
            if len(self._locks) >= LOCKS_KEPT:
                self._locks = {key: held for key, held in self._locks.items() if held.locked()}
            lock = self._locks[customer_id] = asyncio.Lock()
        return lock

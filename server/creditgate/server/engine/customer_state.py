"""A customer's state in Redis, shared by every job of the engine (decisions.py, accounts.py, balances.py, and
holds.py): the scripts that change a customer run through run_touching / run_verified, which first open new credit
periods, expire due holds and verify a customer Redis may hold older than the durable ledger; `current` reads a
customer as those would leave it."""

from __future__ import annotations

import hashlib
import json
from typing import Any, Protocol

from creditgate.server.clock import Clock
from creditgate.server.domain.periods import periods_started
from creditgate.server.domain.rules import RuleBook, RuleSource
from creditgate.server.engine import customer_fields
from creditgate.server.engine.cluster import RedisClient
from creditgate.server.engine.keys import CustomerKeys, KeySpace
from creditgate.server.engine.model import CustomerView, SubscriptionView
from creditgate.server.engine.redis_errors import redis_error
from creditgate.server.engine.script_reply import ScriptReply
from creditgate.server.engine.scripts import Scripts
from creditgate.server.errors import FailedPrecondition, InternalError, NotFound, RequestIdReused, Unavailable
from creditgate.server.settings import Settings
from redis.exceptions import RedisError

# A call that finds a new period, due holds or due buckets settles them and tries again; five rounds suffice.
MAX_ROLLOVER_ROUNDS = 5
# Request fingerprints up to this long are stored as their text, longer ones as a hash.
FINGERPRINT_TEXT_LIMIT = 64
# expire_holds.lua settles at most this many holds per call.
HOLDS_EXPIRED_PER_CALL = 200
# A customer as read from Redis: its hash, its buckets, its usage counters.
CustomerHashes = tuple[dict[str, str], dict[str, str], dict[str, str]]


def fingerprint(*parts: Any) -> str:
    """What a request_id is bound to: the same id with other content is a different request."""
    # repr of ints, strings and sorted pairs is canonical, and several times cheaper than sorted JSON; short
    # ones are kept as they are (a hash never starts with "[", so the two never meet).
    canonical = repr([sorted(part.items()) if isinstance(part, dict) and part else part for part in parts])
    if len(canonical) <= FINGERPRINT_TEXT_LIMIT:
        return canonical
    return hashlib.blake2b(canonical.encode(), digest_size=16).hexdigest()


def customer_not_found(customer_id: str) -> NotFound:
    return NotFound(f"customer {customer_id!r} does not exist", field="customer_id", reason="CUSTOMER_NOT_FOUND")


def changed(reply: ScriptReply, customer_id: str) -> ScriptReply:
    """The reply of a script that changes a customer under a request_id, once it says 'ok': an unknown customer is
    NOT_FOUND, a request_id sent again with other content is refused, any other status is a bug of ours."""
    if reply.status == "not_found":
        raise customer_not_found(customer_id)
    if reply.status == "reused":
        raise RequestIdReused()
    if reply.status != "ok":
        raise InternalError(f"{reply.script} answered {reply.status!r}")
    return reply


def subscription_view(customer: dict[str, str]) -> SubscriptionView | None:
    if customer.get(customer_fields.STATUS, "none") == "none":
        return None
    return SubscriptionView(
        plan=customer[customer_fields.PLAN],
        status=customer[customer_fields.STATUS],
        anchor_ms=int(customer[customer_fields.ANCHOR]),
        period_start_ms=int(customer[customer_fields.PERIOD_START]),
        period_end_ms=int(customer[customer_fields.PERIOD_END]),
    )


def customer_view(customer: dict[str, str]) -> CustomerView:
    return CustomerView(
        customer_id=customer[customer_fields.ID],
        name=customer.get(customer_fields.NAME, ""),
        metadata=json.loads(customer.get(customer_fields.METADATA, "{}")),
        created_ms=int(customer.get(customer_fields.CREATED_AT, 0)),
        subscription=subscription_view(customer),
    )


class Verifier(Protocol):
    """Brings a customer whose Redis state may be older than the durable ledger up to it (ledger/heal.py)."""

    async def verify(self, customer_id: str) -> bool:
        """True once the customer's state is at least as new as the ledger and stamped with the current epoch;
        False when neither Redis nor the ledger knows the customer."""
        ...


class CustomerState:
    """The Redis side every job of the engine shares; one per server."""

    def __init__(
        self,
        redis: RedisClient,
        scripts: Scripts,
        keys: KeySpace,
        catalog: RuleSource,
        clock: Clock,
        settings: Settings,
        verifier: Verifier,
    ) -> None:
        self.redis = redis
        self._verifier = verifier
        self.scripts = scripts
        self.keys = keys
        self._catalog = catalog
        self.clock = clock
        self.settings = settings
        # Settled holds are kept this long for late calls, as long as request_id answers (lib.lua's settle_hold).
        self.settled_hold_retention_ms = settings.idempotency_ttl_seconds * 1000

    @property
    def rules(self) -> RuleBook:
        """The rules in force now (the catalog follower's)."""
        return self._catalog.rules

    async def verify(self, customer_id: str) -> bool:
        """The verifier's answer for a customer (see Verifier)."""
        return await self._verifier.verify(customer_id)

    def now_ms(self) -> int:
        """The server's time (the injected clock)."""
        return self.clock.now_ms()

    async def run_touching(
        self, script: str, customer_id: str, keys: list[str], args: list[Any], now: int
    ) -> ScriptReply:
        """Run a script that changes a customer; first open new periods or expire due holds when it asks."""
        for _ in range(MAX_ROLLOVER_ROUNDS):
            result = await self.run_verified(script, customer_id, keys, args)
            if result.status == "rollover":
                await self.open_periods(customer_id, self.keys.for_customer(customer_id), now)
            elif result.status == "expire_holds":
                await self.expire_holds(customer_id, now)
            else:
                return result
        raise InternalError(f"{script} kept asking for periods or holds to be settled")

    async def run_verified(self, script: str, customer_id: str, keys: list[str], args: list[Any]) -> ScriptReply:
        """Run a script that changes a customer; one Redis may hold older than the durable ledger (it answers
        'verify'), or may have lost ('not_found'), is first verified and if need be rebuilt from the ledger."""
        result = await self.scripts.run(script, keys, args)
        if result.status in ("verify", "not_found") and await self._verifier.verify(customer_id):
            result = await self.scripts.run(script, keys, args)
        if result.status == "verify":
            # Redis changed again (another restart or failover) between verifying and the call: a retry is safe.
            raise Unavailable("Redis restarted while the customer was being verified", reason="REDIS_EPOCH_CHANGED")
        return result

    async def expire_holds(self, customer_id: str, now: int) -> int:
        """Return the credits of the customer's holds past their ttl; returns how many expired."""
        keys = self.keys.for_customer(customer_id)
        args = [now, customer_id, self.settled_hold_retention_ms]
        expired = 0
        while True:
            result = await self.run_verified("expire_holds", customer_id, keys.hold_keys, args)
            expired += result.int("expired")
            if result.int("expired") < HOLDS_EXPIRED_PER_CALL:
                return expired

    async def open_periods(self, customer_id: str, keys: CustomerKeys, now: int) -> None:
        """Open the credit periods that have started since the customer's current one."""
        plan_key, status, anchor, index, period_end = await self._hmget(
            keys.customer,
            customer_fields.PLAN,
            customer_fields.STATUS,
            customer_fields.ANCHOR,
            customer_fields.PERIOD_INDEX,
            customer_fields.PERIOD_END,
        )
        if status not in ("active", "pending"):
            return
        plan = self._catalog.rules.catalog.plans.get(plan_key)
        if plan is None:
            raise FailedPrecondition(
                f"the customer's plan {plan_key!r} is no longer in the catalog",
                field="plan",
                reason="PLAN_NOT_IN_CATALOG",
            )
        periods = periods_started(int(anchor), int(index), now)
        if not periods:
            return
        encoded = json.dumps([[p.index, p.start_ms, p.end_ms, p.grants(plan)] for p in periods])
        await self.run_verified(
            "rollover",
            customer_id,
            [keys.customer, keys.buckets, keys.usage, keys.outbox, *keys.wallet_index],
            [now, customer_id, period_end, plan_key, encoded, plan.low_balance_threshold],
        )

    async def _hmget(self, key: str, *fields: str) -> list[Any]:
        try:
            return list(await self.redis.hmget(key, list(fields)))
        except RedisError as exc:
            raise redis_error(exc, "reading the customer") from exc

    async def _read_customer(self, keys: CustomerKeys) -> CustomerHashes:
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.hgetall(keys.customer)
                pipe.hgetall(keys.buckets)
                pipe.hgetall(keys.usage)
                pipe.zrange(keys.holds_open, 0, 0, withscores=True)
                pipe.zrange(keys.bucket_expiry, 0, 0, withscores=True)
                customer, buckets, usage, first_hold, first_expiry = await pipe.execute()
        except RedisError as exc:
            raise redis_error(exc, "reading the customer") from exc
        if first_hold:
            customer["_next_hold_expiry"] = str(int(first_hold[0][1]))
        if first_expiry:
            customer["_next_bucket_expiry"] = str(int(first_expiry[0][1]))
        return customer, buckets, usage

    async def current(self, customer_id: str) -> CustomerHashes:
        """The customer's state with every started period opened and every due hold expired."""
        keys = self.keys.for_customer(customer_id)
        now = self.clock.now_ms()
        for _ in range(MAX_ROLLOVER_ROUNDS):
            customer, buckets, usage = await self._read_customer(keys)
            if not customer or customer.get(customer_fields.EPOCH) != self.scripts.epoch_of(keys.customer):
                # Lost, or perhaps older than the ledger (Redis restarted, failed over, was restored since it was
                # last verified): shown only once verified, as it would be changed.
                if not await self._verifier.verify(customer_id):
                    raise customer_not_found(customer_id)
                customer, buckets, usage = await self._read_customer(keys)
                if not customer:
                    raise customer_not_found(customer_id)
            period_due = customer.get(customer_fields.STATUS) in ("active", "pending") and now >= int(
                customer[customer_fields.PERIOD_END]
            )
            hold_due = int(customer.get("_next_hold_expiry", now + 1)) <= now
            bucket_due = int(customer.get("_next_bucket_expiry", now + 1)) <= now
            if period_due:
                await self.open_periods(customer_id, keys, now)
            elif hold_due:
                await self.expire_holds(customer_id, now)
            elif bucket_due:
                # Expired credits leave the ledger when they leave the balance, even if only a read saw it.
                await self.run_verified(
                    "expire_buckets",
                    customer_id,
                    [keys.customer, keys.buckets, keys.outbox, *keys.wallet_index],
                    [now, customer_id],
                )
            else:
                return customer, buckets, usage
        return customer, buckets, usage

"""The credit engine: turns domain requests into script calls and script answers into domain values."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from typing import Any, Protocol

from creditgate.server.clock import Clock
from creditgate.server.domain.periods import DAY_MS, NEVER, periods_started
from creditgate.server.domain.rules import RuleBook, RuleSource
from creditgate.server.engine import bucket_codec
from creditgate.server.engine.cluster import RedisClient
from creditgate.server.engine.keys import CustomerKeys, KeySpace
from creditgate.server.engine.messages import explain
from creditgate.server.engine.model import (
    AutoTopUpView,
    BalanceView,
    BucketView,
    CapView,
    CreditChange,
    CustomerView,
    DebitRequest,
    Decision,
    FeatureUsageView,
    SubscriptionView,
)
from creditgate.server.engine.redis_errors import READONLY_REASON, redis_error
from creditgate.server.engine.scripts import Scripts
from creditgate.server.errors import (
    AlreadyExists,
    CreditgateError,
    FailedPrecondition,
    InternalError,
    NotFound,
    NotSubscribed,
    RequestIdReused,
    Unavailable,
)
from creditgate.server.settings import Settings
from redis.exceptions import RedisError

# A call that finds a new period, due holds or due buckets settles them and tries again; five rounds suffice.
MAX_ROLLOVER_ROUNDS = 5
# The customer hash fields of an auto top-up (lib.lua's auto_top_up reads them).
AUTO_TOP_UP_FIELDS = (
    "auto_threshold",
    "auto_package",
    "auto_credits",
    "auto_price",
    "auto_priority",
    "auto_expires_ms",
    "auto_cooldown_ms",
)
# Request fingerprints up to this long are stored as their text, longer ones as a hash.
FINGERPRINT_TEXT_LIMIT = 64
# decide_many.lua takes at most this many decisions per call, so that one call holds Redis for a millisecond or two.
DECIDE_MANY_CHUNK = 50
# A decide call: its keys (KeySpace order, the shard's outbox at DECIDE_OUTBOX_KEY) and its arguments.
DecideCall = tuple[list[str], list[Any]]
DECIDE_OUTBOX_KEY = 4
# expire_holds.lua settles at most this many holds per call.
HOLDS_EXPIRED_PER_CALL = 200


def fingerprint(*parts: Any) -> str:
    """What a request_id is bound to: the same id with other content is a different request."""
    # repr of ints, strings and sorted pairs is canonical, and several times cheaper than sorted JSON; short
    # ones are kept as they are (a hash never starts with "[", so the two never meet).
    canonical = repr([sorted(part.items()) if isinstance(part, dict) and part else part for part in parts])
    if len(canonical) <= FINGERPRINT_TEXT_LIMIT:
        return canonical
    return hashlib.blake2b(canonical.encode(), digest_size=16).hexdigest()


def _decided(answer: list[Any]) -> list[Any] | CreditgateError:
    """One decision's answer from decide_many: a failed one answers ['error', message]."""
    if answer[0] == "error":
        return redis_error(str(answer[1]), "script decide")
    return answer


class Verifier(Protocol):
    """Brings a customer whose Redis state may be older than the durable ledger up to it (ledger/heal.py)."""

    async def verify(self, customer_id: str) -> bool:
        """True once the customer's state is at least as new as the ledger and stamped with the current epoch;
        False when neither Redis nor the ledger knows the customer."""
        ...


def customer_not_found(customer_id: str) -> NotFound:
    return NotFound(f"customer {customer_id!r} does not exist", field="customer_id", reason="CUSTOMER_NOT_FOUND")


class CreditEngine:
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
        self._redis = redis
        self._verifier = verifier
        self._scripts = scripts
        self._keys = keys
        self._catalog = catalog
        self._clock = clock
        self._settings = settings

    def now_ms(self) -> int:
        """The server's time (the injected clock)."""
        return self._clock.now_ms()

    async def check_and_debit(self, request: DebitRequest) -> Decision:
        rules = self._catalog.rules
        now = self._clock.now_ms()
        script_keys, args = self._decide_call(request, rules, now)
        result = await self.run_touching("decide", request.customer_id, script_keys, args, now)
        return self._explained(request, self._decision(request.customer_id, result), rules)

    async def check_and_debit_many(self, requests: list[DebitRequest]) -> list[Decision | CreditgateError]:
        """Each request decided as check_and_debit would decide it alone, in order; one write to Redis for all."""
        rules = self._catalog.rules
        now = self._clock.now_ms()
        calls: list[DecideCall | CreditgateError] = []
        for request in requests:
            try:
                calls.append(self._decide_call(request, rules, now))
            except CreditgateError as exc:
                calls.append(exc)
        replies = iter(await self._decide_many([call for call in calls if not isinstance(call, CreditgateError)]))
        outcomes: list[Decision | CreditgateError] = []
        for request, call in zip(requests, calls, strict=True):
            reply = call if isinstance(call, CreditgateError) else next(replies)
            try:
                if isinstance(reply, CreditgateError):
                    raise reply
                if reply[0] in ("rollover", "expire_holds", "verify", "not_found"):
                    # Rare (a new period, a due hold, a customer to verify): this one goes the long way, after the
                    # batch has run.
                    outcomes.append(await self.check_and_debit(request))
                    continue
                outcomes.append(self._explained(request, self._decision(request.customer_id, reply), rules))
            except CreditgateError as exc:
                outcomes.append(exc)
        return outcomes

    async def _decide_many(self, calls: list[DecideCall]) -> list[list[Any] | CreditgateError]:
        """The calls' replies in order. One decide_many per shard and chunk: a shard's keys share one slot, and a
        customer's decisions stay in order within it (decisions in different shards share nothing)."""
        by_shard: dict[str, list[int]] = {}
        for index, (keys, _) in enumerate(calls):
            by_shard.setdefault(keys[DECIDE_OUTBOX_KEY], []).append(index)
        chunks = [
            indexes[start : start + DECIDE_MANY_CHUNK]
            for indexes in by_shard.values()
            for start in range(0, len(indexes), DECIDE_MANY_CHUNK)
        ]
        sent = [
            ([key for i in chunk for key in calls[i][0]], [arg for i in chunk for arg in calls[i][1]])
            for chunk in chunks
        ]
        replies: list[list[Any] | CreditgateError] = [[] for _ in calls]
        for chunk, answers in zip(chunks, await self._scripts.run_many("decide_many", sent), strict=True):
            for position, index in enumerate(chunk):
                replies[index] = answers if isinstance(answers, CreditgateError) else _decided(answers[position])
        for index, reply in enumerate(replies):
            if isinstance(reply, Unavailable) and reply.reason == READONLY_REASON:
                # The wire saw a normal reply; the decisions inside it saw a replica.
                self._scripts.reconnect(calls[index][0][0])
                break
        return replies

    def _decide_call(self, request: DebitRequest, rules: RuleBook, now: int) -> DecideCall:
        rules_json, cap_scope = rules.rules_for(request.feature, request.dimensions)
        keys = self._keys.for_customer(request.customer_id)
        args = [
            now,
            request.customer_id,
            request.feature,
            request.quantity,
            rules_json,
            cap_scope,
            "1" if request.dry_run else "0",
            request.request_id,
            # Without a request_id the script neither replays nor remembers: no fingerprint to make.
            fingerprint("debit", request.feature, request.quantity, request.dimensions) if request.request_id else "",
            self._settings.idempotency_ttl_seconds,
            json.dumps(request.dimensions) if request.dimensions else "{}",
        ]
        script_keys = [
            keys.customer,
            keys.buckets,
            keys.usage,
            keys.request(request.request_id),
            keys.outbox,
            keys.holds_open,
            keys.bucket_order,
            keys.bucket_expiry,
        ]
        return script_keys, args

    def _explained(self, request: DebitRequest, decision: Decision, rules: RuleBook) -> Decision:
        decision.message = explain(decision, request.feature, rules)
        return decision

    def _decision(self, customer_id: str, result: list[Any]) -> Decision:
        status = result[0]
        if status == "not_found":
            raise customer_not_found(customer_id)
        if status == "reused":
            raise RequestIdReused()
        if status != "ok":
            raise InternalError(f"decide answered {status!r}")
        (
            allowed,
            reason,
            cost,
            charged,
            free_used,
            overage,
            after,
            low,
            entry_id,
            period_usage,
            free_left,
            cap_limit,
            cap_usage,
        ) = result[1:]
        # Positional: every decision of a batch is made here, and keywords cost more per call (bench/NOTES.md).
        return Decision(
            bool(allowed),
            reason,
            cost,
            charged,
            free_used,
            overage,
            after,
            bool(low),
            entry_id,
            period_usage,
            free_left,
            cap_limit,
            cap_usage,
        )

    async def run_touching(self, script: str, customer_id: str, keys: list[str], args: list[Any], now: int) -> Any:
        """Run a script that changes a customer; first open new periods or expire due holds when it asks."""
        for _ in range(MAX_ROLLOVER_ROUNDS):
            result = await self.run_verified(script, customer_id, keys, args)
            if result[0] == "rollover":
                await self.open_periods(customer_id, self._keys.for_customer(customer_id), now)
            elif result[0] == "expire_holds":
                await self.expire_holds(customer_id, now)
            else:
                return result
        raise InternalError(f"{script} kept asking for periods or holds to be settled")

    async def run_verified(self, script: str, customer_id: str, keys: list[str], args: list[Any]) -> Any:
        """Run a script that changes a customer; one Redis may hold older than the durable ledger (it answers
        'verify'), or may have lost ('not_found'), is first verified and if need be rebuilt from the ledger."""
        result = await self._scripts.run(script, keys, args)
        if result[0] in ("verify", "not_found") and await self._verifier.verify(customer_id):
            result = await self._scripts.run(script, keys, args)
        if result[0] == "verify":
            # Redis changed again (another restart or failover) between verifying and the call: a retry is safe.
            raise Unavailable("Redis restarted while the customer was being verified", reason="REDIS_EPOCH_CHANGED")
        return result

    async def expire_holds(self, customer_id: str, now: int) -> int:
        """Return the credits of the customer's holds past their ttl; returns how many expired."""
        keys = self._keys.for_customer(customer_id)
        expired = 0
        while True:
            retention_ms = self._settings.idempotency_ttl_seconds * 1000
            result = await self.run_verified(
                "expire_holds", customer_id, keys.hold_keys, [now, customer_id, retention_ms]
            )
            expired += int(result[1])
            if int(result[1]) < HOLDS_EXPIRED_PER_CALL:
                return expired

    async def open_periods(self, customer_id: str, keys: CustomerKeys, now: int) -> None:
        """Open the credit periods that have started since the customer's current one."""
        plan_key, status, anchor, index, period_end = await self._hmget(
            keys.customer, "plan", "status", "anchor", "period_index", "period_end"
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
            return list(await self._redis.hmget(key, list(fields)))
        except RedisError as exc:
            raise redis_error(exc, "reading the customer") from exc

    async def _read_customer(self, keys: CustomerKeys) -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
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

    async def _current(self, customer_id: str) -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
        """The customer's state with every started period opened and every due hold expired."""
        keys = self._keys.for_customer(customer_id)
        now = self._clock.now_ms()
        for _ in range(MAX_ROLLOVER_ROUNDS):
            customer, buckets, usage = await self._read_customer(keys)
            if not customer or customer.get("ep") != self._scripts.epoch_of(keys.customer):
                # Lost, or perhaps older than the ledger (Redis restarted, failed over, was restored since it was
                # last verified): shown only once verified, as it would be changed.
                if not await self._verifier.verify(customer_id):
                    raise customer_not_found(customer_id)
                customer, buckets, usage = await self._read_customer(keys)
                if not customer:
                    raise customer_not_found(customer_id)
            period_due = customer.get("status") in ("active", "pending") and now >= int(customer["period_end"])
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

    async def get_balance(self, customer_id: str) -> BalanceView:
        customer, raw_buckets, usage = await self._current(customer_id)
        now = self._clock.now_ms()
        buckets = [
            BucketView(bucket.id, bucket.source, bucket.remaining, bucket.priority, bucket.expires_at_ms)
            for bucket in sorted(
                (bucket_codec.decode(id_, value) for id_, value in raw_buckets.items()), key=bucket_codec.spending_order
            )
            if not bucket.due(now)
        ]
        subscription = _subscription(customer)
        features: list[FeatureUsageView] = []
        if subscription is not None and subscription.status == "active":
            features = self._feature_usage(subscription.plan, usage, now)
        return BalanceView(
            available=sum(bucket.remaining for bucket in buckets),
            reserved=int(customer.get("reserved", 0)),
            overage=int(usage.get("overage", 0)),
            buckets=buckets,
            features=features,
            subscription=subscription,
        )

    def _feature_usage(self, plan_key: str, usage: dict[str, str], now: int) -> list[FeatureUsageView]:
        plan = self._catalog.rules.catalog.plans.get(plan_key)
        if plan is None:
            return []
        today = str(now // DAY_MS)
        views = []
        for feature, entitlement in plan.entitlements.items():
            if not entitlement.enabled:
                continue
            used = int(usage.get(f"p|{feature}", 0))
            caps = []
            if entitlement.cap is not None:
                window = today if entitlement.cap.per == "day" else "p"
                for field, value in usage.items():
                    kind, _, rest = field.partition("|")
                    name, _, scope_window = rest.partition("|")
                    scope, _, field_window = scope_window.rpartition("|")
                    if kind == "c" and name == feature and field_window == window:
                        caps.append(CapView(scope, int(value), entitlement.cap.limit))
            views.append(FeatureUsageView(feature, used, max(0, entitlement.free_units - used), caps))
        return views

    async def get_customer(self, customer_id: str) -> CustomerView:
        customer, _, _ = await self._current(customer_id)
        return _customer(customer)

    async def create_customer(self, customer_id: str, name: str, metadata: dict[str, str]) -> CustomerView:
        keys = self._keys.for_customer(customer_id)
        # A customer Redis lost but the ledger keeps is rebuilt first (and then exists): created again, its entry
        # numbers would start over and collide with the ledger's.
        await self._verifier.verify(customer_id)
        result = await self._scripts.run(
            "create_customer",
            [keys.customer, keys.outbox],
            [customer_id, name, json.dumps(metadata), self._clock.now_ms()],
        )
        if result[0] == "exists":
            raise AlreadyExists(
                f"customer {customer_id!r} already exists", field="customer_id", reason="CUSTOMER_EXISTS"
            )
        return await self.get_customer(customer_id)

    async def subscribe(self, customer_id: str, plan_key: str, start_ms: int | None) -> tuple[SubscriptionView, int]:
        self._catalog.rules.plan(plan_key)
        keys = self._keys.for_customer(customer_id)
        anchor = start_ms if start_ms is not None else self._clock.now_ms()
        result = await self.run_verified(
            "subscription",
            customer_id,
            [keys.customer, keys.outbox],
            ["start", self._clock.now_ms(), customer_id, plan_key, anchor],
        )
        if result[0] == "not_found":
            raise customer_not_found(customer_id)
        if result[0] == "already_subscribed":
            raise FailedPrecondition(
                f"customer {customer_id!r} is already subscribed to {result[1]!r}; cancel it first",
                field="customer_id",
                reason="ALREADY_SUBSCRIBED",
            )
        balance = await self.get_balance(customer_id)
        if balance.subscription is None:
            raise NotSubscribed(customer_id, "was unsubscribed by another call meanwhile")
        return balance.subscription, balance.available

    async def change_plan(self, customer_id: str, plan_key: str) -> tuple[SubscriptionView, int]:
        """Move a running subscription to `plan_key` now: the new plan's period 0 (and its grants) start at once."""
        self._catalog.rules.plan(plan_key)
        keys = self._keys.for_customer(customer_id)
        now = self._clock.now_ms()
        result = await self.run_verified(
            "subscription", customer_id, [keys.customer, keys.outbox], ["change", now, customer_id, plan_key, now]
        )
        if result[0] == "not_found":
            raise customer_not_found(customer_id)
        if result[0] == "not_subscribed":
            raise FailedPrecondition(
                f"customer {customer_id!r} has no active subscription to change",
                field="customer_id",
                reason="NOT_SUBSCRIBED",
            )
        balance = await self.get_balance(customer_id)
        if balance.subscription is None:
            raise NotSubscribed(customer_id, "was unsubscribed by another call meanwhile")
        return balance.subscription, balance.available

    async def set_low_threshold(self, customer_id: str, threshold: int | None) -> int | None:
        """The customer's own low-balance threshold; None goes back to the plan's. Returns the one set."""
        await self._set_fields(customer_id, {"low_threshold": "" if threshold is None else str(threshold)})
        return threshold

    async def set_auto_top_up(
        self, customer_id: str, package_key: str, threshold: int, cooldown_ms: int
    ) -> AutoTopUpView | None:
        """Buy `package_key` when a change leaves the balance below `threshold`; an empty key turns it off."""
        fields = dict.fromkeys(AUTO_TOP_UP_FIELDS, "")
        view = None
        if package_key:
            package = self._catalog.rules.catalog.packages.get(package_key)
            if package is None:
                raise NotFound(
                    f"package {package_key!r} is not in the catalog", field="package", reason="PACKAGE_NOT_FOUND"
                )
            priority = package.priority if package.priority is not None else self._settings.top_up_priority
            view = AutoTopUpView(package_key, package.credits, str(package.price), threshold, cooldown_ms)
            fields.update(
                auto_threshold=str(threshold),
                auto_package=package_key,
                auto_credits=str(package.credits),
                auto_price=str(package.price),
                auto_priority=str(priority),
                auto_expires_ms=str((package.expires_in_days or 0) * DAY_MS),
                auto_cooldown_ms=str(cooldown_ms),
            )
        await self._set_fields(customer_id, fields)
        return view

    async def _set_fields(self, customer_id: str, fields: dict[str, str]) -> None:
        keys = self._keys.for_customer(customer_id)
        pairs = [part for item in fields.items() for part in item]
        args = [self._clock.now_ms(), customer_id, *pairs]
        result = await self.run_verified("customer_settings", customer_id, [keys.customer, keys.outbox], args)
        if result[0] == "not_found":
            raise customer_not_found(customer_id)

    async def cancel(self, customer_id: str) -> SubscriptionView:
        keys = self._keys.for_customer(customer_id)
        args = ["cancel", self._clock.now_ms(), customer_id, "", 0]
        result = await self.run_verified("subscription", customer_id, [keys.customer, keys.outbox], args)
        if result[0] == "not_found":
            raise customer_not_found(customer_id)
        if result[0] == "not_subscribed":
            raise FailedPrecondition(
                f"customer {customer_id!r} has no running subscription",
                field="customer_id",
                reason="NOT_SUBSCRIBED",
            )
        customer, _, _ = await self._current(customer_id)
        subscription = _subscription(customer)
        if subscription is None:
            raise NotSubscribed(customer_id, "was unsubscribed by another call meanwhile")
        return subscription

    async def top_up(
        self, customer_id: str, package_key: str, credits: int, expires_in_days: int, request_id: str
    ) -> CreditChange:
        rules = self._catalog.rules
        price, priority, reason = "", self._settings.top_up_priority, "credits"
        if package_key:
            package = rules.catalog.packages.get(package_key)
            if package is None:
                raise NotFound(
                    f"package {package_key!r} is not in the catalog",
                    field="package",
                    reason="PACKAGE_NOT_FOUND",
                )
            credits, price, reason = package.credits, str(package.price), package_key
            priority = package.priority if package.priority is not None else priority
            expires_in_days = expires_in_days or (package.expires_in_days or 0)
        now = self._clock.now_ms()
        expires_at = now + expires_in_days * DAY_MS if expires_in_days else NEVER
        change = await self._add_credits(
            customer_id,
            credits,
            priority,
            expires_at,
            "topup",
            reason,
            price,
            request_id,
            fingerprint("topup", package_key, credits, expires_in_days),
        )
        return CreditChange(change.entry_id, change.available, change.bucket, price, rules.catalog.currency)

    async def adjust(self, customer_id: str, delta: int, reason: str, request_id: str) -> CreditChange:
        print_ = fingerprint("adjust", delta, reason)
        if delta > 0:
            return await self._add_credits(
                customer_id,
                delta,
                self._settings.adjustment_priority,
                NEVER,
                "adjustment",
                reason,
                "",
                request_id,
                print_,
            )
        keys = self._keys.for_customer(customer_id)
        now = self._clock.now_ms()
        result = await self.run_touching(
            "remove_credits",
            customer_id,
            [keys.customer, keys.buckets, keys.request(request_id), keys.outbox, keys.holds_open, *keys.wallet_index],
            [
                now,
                customer_id,
                -delta,
                reason,
                request_id,
                print_,
                self._settings.idempotency_ttl_seconds,
            ],
            now,
        )
        if result[0] == "insufficient":
            raise FailedPrecondition(
                f"cannot remove {-delta} credits: {result[1]} are available",
                field="delta",
                reason="INSUFFICIENT_CREDITS",
            )
        return self._credit_change(customer_id, result)

    async def _add_credits(
        self,
        customer_id: str,
        credits: int,
        priority: int,
        expires_at: int,
        source: str,
        reason: str,
        price: str,
        request_id: str,
        print_: str,
    ) -> CreditChange:
        keys = self._keys.for_customer(customer_id)
        kind = "topup" if source == "topup" else "adjustment"
        now = self._clock.now_ms()
        result = await self.run_touching(
            "add_credits",
            customer_id,
            [keys.customer, keys.buckets, keys.request(request_id), keys.outbox, keys.holds_open, *keys.wallet_index],
            [
                now,
                customer_id,
                credits,
                priority,
                expires_at,
                source,
                kind,
                reason,
                price,
                request_id,
                print_,
                self._settings.idempotency_ttl_seconds,
            ],
            now,
        )
        change = self._credit_change(customer_id, result)
        return replace(change, bucket=BucketView(result[3], source, credits, priority, expires_at))

    def _credit_change(self, customer_id: str, result: list[Any]) -> CreditChange:
        if result[0] == "not_found":
            raise customer_not_found(customer_id)
        if result[0] == "reused":
            raise RequestIdReused()
        return CreditChange(entry_id=result[1], available=int(result[2]), bucket=None)


def _subscription(customer: dict[str, str]) -> SubscriptionView | None:
    if customer.get("status", "none") == "none":
        return None
    return SubscriptionView(
        plan=customer["plan"],
        status=customer["status"],
        anchor_ms=int(customer["anchor"]),
        period_start_ms=int(customer["period_start"]),
        period_end_ms=int(customer["period_end"]),
    )


def _customer(customer: dict[str, str]) -> CustomerView:
    return CustomerView(
        customer_id=customer["id"],
        name=customer.get("name", ""),
        metadata=json.loads(customer.get("metadata", "{}")),
        created_ms=int(customer.get("created_at", 0)),
        subscription=_subscription(customer),
    )

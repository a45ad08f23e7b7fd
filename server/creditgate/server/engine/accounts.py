"""Customers, their subscriptions, settings and credits: everything that changes an account but a decision."""

from __future__ import annotations

import json
from dataclasses import replace

from creditgate.server.domain.periods import DAY_MS, NEVER
from creditgate.server.engine import customer_fields
from creditgate.server.engine.balances import Balances
from creditgate.server.engine.customer_state import (
    CustomerState,
    changed,
    customer_not_found,
    fingerprint,
    subscription_view,
)
from creditgate.server.engine.model import AutoTopUpView, BucketView, CreditChange, CustomerView, SubscriptionView
from creditgate.server.engine.script_reply import ScriptReply
from creditgate.server.errors import (
    AlreadyExists,
    FailedPrecondition,
    NotFound,
    NotSubscribed,
)


def not_subscribed(customer_id: str, what: str) -> FailedPrecondition:
    return FailedPrecondition(f"customer {customer_id!r} {what}", field="customer_id", reason="NOT_SUBSCRIBED")


class Accounts:
    """Create customers, subscribe and change plans, set their own settings, top up and adjust credits."""

    def __init__(self, state: CustomerState, balances: Balances) -> None:
        self._state = state
        self._balances = balances

    async def create_customer(self, customer_id: str, name: str, metadata: dict[str, str]) -> CustomerView:
        keys = self._state.keys.for_customer(customer_id)
        # A customer Redis lost but the ledger keeps is rebuilt first (and then exists): created again, its entry
        # numbers would start over and collide with the ledger's.
        await self._state.verify(customer_id)
        result = await self._state.scripts.run(
            "create_customer",
            [keys.customer, keys.outbox],
            [customer_id, name, json.dumps(metadata), self._state.now_ms()],
        )
        if result.status == "exists":
            raise AlreadyExists(
                f"customer {customer_id!r} already exists", field="customer_id", reason="CUSTOMER_EXISTS"
            )
        return await self._balances.get_customer(customer_id)

    async def subscribe(self, customer_id: str, plan_key: str, start_ms: int | None) -> tuple[SubscriptionView, int]:
        self._state.rules.plan(plan_key)
        now = self._state.now_ms()
        result = await self._subscription("start", customer_id, plan_key, now if start_ms is None else start_ms, now)
        if result.status == "already_subscribed":
            raise FailedPrecondition(
                f"customer {customer_id!r} is already subscribed to {result['plan']!r}; cancel it first",
                field="customer_id",
                reason="ALREADY_SUBSCRIBED",
            )
        return await self._running_subscription(customer_id)

    async def change_plan(self, customer_id: str, plan_key: str) -> tuple[SubscriptionView, int]:
        """Move a running subscription to `plan_key` now: the new plan's period 0 (and its grants) start at once."""
        self._state.rules.plan(plan_key)
        now = self._state.now_ms()
        result = await self._subscription("change", customer_id, plan_key, now, now)
        if result.status == "not_subscribed":
            raise not_subscribed(customer_id, "has no active subscription to change")
        return await self._running_subscription(customer_id)

    async def cancel(self, customer_id: str) -> SubscriptionView:
        result = await self._subscription("cancel", customer_id, "", 0, self._state.now_ms())
        if result.status == "not_subscribed":
            raise not_subscribed(customer_id, "has no running subscription")
        customer, _, _ = await self._state.current(customer_id)
        subscription = subscription_view(customer)
        if subscription is None:
            raise NotSubscribed(customer_id, "was unsubscribed by another call meanwhile")
        return subscription

    async def _subscription(self, action: str, customer_id: str, plan_key: str, anchor: int, now: int) -> ScriptReply:
        """subscription.lua's `action` (start, change, cancel) at `now`; an unknown customer is NOT_FOUND."""
        keys = self._state.keys.for_customer(customer_id)
        args = [action, now, customer_id, plan_key, anchor]
        result = await self._state.run_verified("subscription", customer_id, [keys.customer, keys.outbox], args)
        if result.status == "not_found":
            raise customer_not_found(customer_id)
        return result

    async def _running_subscription(self, customer_id: str) -> tuple[SubscriptionView, int]:
        """The subscription just started or changed, with the credits available now (its first grants in)."""
        balance = await self._balances.get_balance(customer_id)
        if balance.subscription is None:
            raise NotSubscribed(customer_id, "was unsubscribed by another call meanwhile")
        return balance.subscription, balance.available

    async def set_low_threshold(self, customer_id: str, threshold: int | None) -> int | None:
        """The customer's own low-balance threshold; None goes back to the plan's. Returns the one set."""
        await self._set_fields(
            customer_id, {customer_fields.LOW_THRESHOLD: "" if threshold is None else str(threshold)}
        )
        return threshold

    async def set_auto_top_up(
        self, customer_id: str, package_key: str, threshold: int, cooldown_ms: int
    ) -> AutoTopUpView | None:
        """Buy `package_key` when a change leaves the balance below `threshold`; an empty key turns it off."""
        fields = dict.fromkeys(customer_fields.AUTO_TOP_UP_SETTINGS, "")
        view = None
        if package_key:
            package = self._state.rules.catalog.packages.get(package_key)
            if package is None:
                raise NotFound(
                    f"package {package_key!r} is not in the catalog", field="package", reason="PACKAGE_NOT_FOUND"
                )
            priority = package.priority if package.priority is not None else self._state.settings.top_up_priority
            view = AutoTopUpView(package_key, package.credits, str(package.price), threshold, cooldown_ms)
            fields.update(
                {
                    customer_fields.AUTO_THRESHOLD: str(threshold),
                    customer_fields.AUTO_PACKAGE: package_key,
                    customer_fields.AUTO_CREDITS: str(package.credits),
                    customer_fields.AUTO_PRICE: str(package.price),
                    customer_fields.AUTO_PRIORITY: str(priority),
                    customer_fields.AUTO_EXPIRES_MS: str((package.expires_in_days or 0) * DAY_MS),
                    customer_fields.AUTO_COOLDOWN_MS: str(cooldown_ms),
                }
            )
        await self._set_fields(customer_id, fields)
        return view

    async def _set_fields(self, customer_id: str, fields: dict[str, str]) -> None:
        keys = self._state.keys.for_customer(customer_id)
        pairs = [part for item in fields.items() for part in item]
        args = [self._state.now_ms(), customer_id, *pairs]
        result = await self._state.run_verified("customer_settings", customer_id, [keys.customer, keys.outbox], args)
        if result.status == "not_found":
            raise customer_not_found(customer_id)

    async def top_up(
        self, customer_id: str, package_key: str, credits: int, expires_in_days: int, request_id: str
    ) -> CreditChange:
        rules = self._state.rules
        price, priority, reason = "", self._state.settings.top_up_priority, "credits"
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
        now = self._state.now_ms()
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
                self._state.settings.adjustment_priority,
                NEVER,
                "adjustment",
                reason,
                "",
                request_id,
                print_,
            )
        keys = self._state.keys.for_customer(customer_id)
        now = self._state.now_ms()
        result = await self._state.run_touching(
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
                self._state.settings.idempotency_ttl_seconds,
            ],
            now,
        )
        if result.status == "insufficient":
            raise FailedPrecondition(
                f"cannot remove {-delta} credits: {result['available']} are available",
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
        keys = self._state.keys.for_customer(customer_id)
        kind = "topup" if source == "topup" else "adjustment"
        now = self._state.now_ms()
        result = await self._state.run_touching(
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
                self._state.settings.idempotency_ttl_seconds,
            ],
            now,
        )
        change = self._credit_change(customer_id, result)
        return replace(change, bucket=BucketView(result["bucket_id"], source, credits, priority, expires_at))

    def _credit_change(self, customer_id: str, result: ScriptReply) -> CreditChange:
        change = changed(result, customer_id)
        return CreditChange(entry_id=change["entry_id"], available=change.int("balance_after"), bucket=None)

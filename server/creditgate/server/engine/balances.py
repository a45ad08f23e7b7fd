"""Reads: a customer and its balance (buckets in spending order, feature usage, subscription)."""

from __future__ import annotations

from creditgate.server.engine import bucket_codec, customer_fields, usage_codec
from creditgate.server.engine.customer_state import CustomerState, customer_view, subscription_view
from creditgate.server.engine.model import BalanceView, BucketView, CapView, CustomerView, FeatureUsageView


class Balances:
    """What a customer has, as the next change would find it (periods opened, due holds and buckets expired)."""

    def __init__(self, state: CustomerState) -> None:
        self._state = state

    def now_ms(self) -> int:
        """The server's time (the injected clock): what "now" means for the balances read."""
        return self._state.now_ms()

    async def get_balance(self, customer_id: str) -> BalanceView:
        customer, raw_buckets, usage = await self._state.current(customer_id)
        now = self._state.now_ms()
        buckets = [
            BucketView(bucket.id, bucket.source, bucket.remaining, bucket.priority, bucket.expires_at_ms)
            for bucket in sorted(
                (bucket_codec.decode(id_, value) for id_, value in raw_buckets.items()), key=bucket_codec.spending_order
            )
            if not bucket.due(now)
        ]
        subscription = subscription_view(customer)
        features: list[FeatureUsageView] = []
        if subscription is not None and subscription.status == "active":
            features = self._feature_usage(subscription.plan, usage, now)
        return BalanceView(
            available=sum(bucket.remaining for bucket in buckets),
            reserved=int(customer.get(customer_fields.RESERVED, 0)),
            overage=int(usage.get(usage_codec.OVERAGE_FIELD, 0)),
            buckets=buckets,
            features=features,
            subscription=subscription,
        )

    def _feature_usage(self, plan_key: str, usage: dict[str, str], now: int) -> list[FeatureUsageView]:
        plan = self._state.rules.catalog.plans.get(plan_key)
        if plan is None:
            return []
        views = []
        for feature, entitlement in plan.entitlements.items():
            if not entitlement.enabled:
                continue
            used = int(usage.get(usage_codec.period_field(feature), 0))
            caps = []
            if entitlement.cap is not None:
                window = usage_codec.cap_window(entitlement.cap.per == "day", now)
                for field, value in usage.items():
                    counter = usage_codec.parse_cap_field(field)
                    if counter is not None and counter.feature == feature and counter.window == window:
                        caps.append(CapView(counter.scope, int(value), entitlement.cap.limit))
            views.append(FeatureUsageView(feature, used, max(0, entitlement.free_units - used), caps))
        return views

    async def get_customer(self, customer_id: str) -> CustomerView:
        customer, _, _ = await self._state.current(customer_id)
        return customer_view(customer)

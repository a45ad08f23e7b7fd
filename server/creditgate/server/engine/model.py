"""The engine's requests and answers, as plain values (the api layer maps them to and from proto)."""

from __future__ import annotations

from dataclasses import dataclass, field


# DebitRequest and Decision are made for every decision; frozen dataclasses cost a setattr call per field.
@dataclass(slots=True)
class DebitRequest:
    customer_id: str
    feature: str
    quantity: int
    dimensions: dict[str, str]
    request_id: str = ""
    dry_run: bool = False


@dataclass(slots=True)
class Decision:
    allowed: bool
    deny_reason: str
    credits_cost: int
    credits_charged: int
    free_units_used: int
    overage_credits: int
    balance_after: int
    low_balance: bool
    entry_id: str
    period_usage: int
    free_units_remaining: int
    cap_limit: int
    cap_usage: int
    message: str = ""


@dataclass(frozen=True, slots=True)
class BucketView:
    id: str
    source: str
    remaining: int
    priority: int
    expires_at_ms: int

    def due(self, now_ms: int) -> bool:
        return self.expires_at_ms != 0 and self.expires_at_ms <= now_ms


@dataclass(frozen=True, slots=True)
class CapView:
    scope: str
    used: int
    limit: int


@dataclass(frozen=True, slots=True)
class FeatureUsageView:
    feature: str
    period_usage: int
    free_units_remaining: int
    caps: list[CapView] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class SubscriptionView:
    plan: str
    status: str
    anchor_ms: int
    period_start_ms: int
    period_end_ms: int


@dataclass(frozen=True, slots=True)
class BalanceView:
    available: int
    reserved: int
    overage: int
    buckets: list[BucketView]
    features: list[FeatureUsageView]
    subscription: SubscriptionView | None


@dataclass(frozen=True, slots=True)
class CustomerView:
    customer_id: str
    name: str
    metadata: dict[str, str]
    created_ms: int
    subscription: SubscriptionView | None


@dataclass(frozen=True, slots=True)
class CreditChange:
    """The result of a top-up or adjustment."""

    entry_id: str
    available: int
    bucket: BucketView | None
    price: str = ""
    currency: str = ""


@dataclass(frozen=True, slots=True)
class AutoTopUpView:
    """A customer's automatic top-up: the package bought below the threshold, at most once per cooldown."""

    package: str
    credits: int
    price: str
    threshold: int
    cooldown_ms: int

"""The sentence a denial or charge comes with: what happened and what would help."""

from __future__ import annotations

from creditgate.server.domain.rules import RuleBook
from creditgate.server.engine.model import Decision


def explain(decision: Decision, feature: str, rules: RuleBook, *, verb: str = "charged") -> str:
    if decision.allowed:
        parts = [f"{feature}: {decision.credits_charged} credits {verb}"]
        if decision.free_units_used:
            parts.append(f"{decision.free_units_used} free units used")
        if decision.overage_credits:
            parts.append(f"{decision.overage_credits} overage credits")
        return ", ".join(parts) + f"; {decision.balance_after} credits left."
    if decision.deny_reason == "NOT_ENTITLED":
        plans = [key for key, plan in rules.catalog.plans.items() if feature in plan.entitlements]
        upgrade = f" Upgrade to {' or '.join(plans)}." if plans else ""
        return f"Your plan does not include {feature}.{upgrade}"
    if decision.deny_reason == "LIMIT_EXCEEDED":
        return f"The limit of {decision.cap_limit} {feature} for this window is reached ({decision.cap_usage} used)."
    if decision.deny_reason == "NO_ACTIVE_SUBSCRIPTION":
        return "No active subscription: subscribe to a plan to use this feature."
    package = rules.cheapest_package()
    offer = ""
    if package is not None:
        pack = rules.catalog.packages[package]
        offer = (
            f" Buy credits ({package}: {pack.credits:,} credits for {pack.price} {rules.catalog.currency}) or upgrade."
        )
    return (
        f"Not enough credits: {feature} costs {decision.credits_cost} and"
        f" {decision.balance_after} are available.{offer}"
    )

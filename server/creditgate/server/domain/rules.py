"""Compiles the catalog once into what the decide script needs per feature, so requests only look it up."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Protocol

from creditgate.server.domain.catalog import Catalog, Cost, DimensionCost, Feature, LoadedCatalog, Plan
from creditgate.server.errors import InvalidArgument, NotFound

MAX_DIMENSION_VALUE = 128
NOT_ALLOWED = -1


@dataclass(frozen=True, slots=True)
class FeatureRules:
    feature: Feature
    priced_by: str | None
    cap_by: str | None
    # priced dimension value ('' when flat) -> JSON {plan: [unit_cost, free, cap, window, overage_cap, low]}
    rules_json: dict[str, str]
    dimension_names: frozenset[str]


class RuleBook:
    """The running catalog, compiled for the hot path."""

    def __init__(self, loaded: LoadedCatalog) -> None:
        self.loaded = loaded
        self.catalog: Catalog = loaded.catalog
        self.features = {key: _compile(key, feature, self.catalog) for key, feature in self.catalog.features.items()}

    @property
    def version(self) -> str:
        return self.loaded.version

    def plan(self, key: str) -> Plan:
        plan = self.catalog.plans.get(key)
        if plan is None:
            raise NotFound(f"plan {key!r} is not in the catalog", field="plan", reason="PLAN_NOT_FOUND")
        return plan

    def rules_for(self, feature_key: str, dimensions: dict[str, str]) -> tuple[str, str]:
        """The decide script's rules and cap scope for one request; InvalidArgument if they do not fit."""
        compiled = self.features.get(feature_key)
        if compiled is None:
            raise NotFound(
                f"feature {feature_key!r} is not in the catalog", field="feature", reason="FEATURE_NOT_FOUND"
            )
        allowed = compiled.dimension_names
        for name, value in dimensions.items():
            if name not in allowed:
                raise InvalidArgument(
                    f"dimensions: {name!r} is not a dimension of {feature_key}"
                    f" (allowed: {', '.join(sorted(allowed)) or 'none'})",
                    field=f"dimensions[{name}]",
                )
            if not value or len(value) > MAX_DIMENSION_VALUE:
                raise InvalidArgument(
                    f"dimensions[{name}] must be 1 to {MAX_DIMENSION_VALUE} characters",
                    field=f"dimensions[{name}]",
                )
        priced_value = ""
        if compiled.priced_by is not None:
            priced_value = dimensions.get(compiled.priced_by, "")
            if priced_value not in compiled.rules_json:
                choices = ", ".join(sorted(compiled.rules_json))
                raise InvalidArgument(
                    f"dimensions[{compiled.priced_by}] must be one of: {choices}",
                    field=f"dimensions[{compiled.priced_by}]",
                )
        cap_scope = ""
        if compiled.cap_by is not None:
            cap_scope = dimensions.get(compiled.cap_by, "")
            if not cap_scope:
                raise InvalidArgument(
                    f"dimensions[{compiled.cap_by}] is required: {feature_key} is capped per {compiled.cap_by}",
                    field=f"dimensions[{compiled.cap_by}]",
                )
        return compiled.rules_json[priced_value], cap_scope

    def cheapest_package(self) -> str | None:
        packages = sorted(self.catalog.packages.items(), key=lambda item: item[1].price)
        return packages[0][0] if packages else None


def _unit_cost(cost: Cost, value: str) -> int:
    return cost.values[value] if isinstance(cost, DimensionCost) else cost


def _compile(key: str, feature: Feature, catalog: Catalog) -> FeatureRules:
    priced_by = feature.credits.by if isinstance(feature.credits, DimensionCost) else None
    values = list(feature.credits.values) if isinstance(feature.credits, DimensionCost) else [""]
    cap_by: str | None = None
    rules: dict[str, dict[str, list[int | str]]] = {value: {} for value in values}
    for plan_key, plan in catalog.plans.items():
        entitlement = plan.entitlements.get(key)
        if entitlement is None or not entitlement.enabled:
            continue
        cap = entitlement.cap
        if cap is not None:
            cap_by = cap.by
        overage_cap = plan.overage.max_credits_per_period if plan.overage.allowed else NOT_ALLOWED
        for value in values:
            cost = entitlement.credits if entitlement.credits is not None else feature.credits
            rules[value][plan_key] = [
                _unit_cost(cost, value),
                entitlement.free_units,
                cap.limit if cap else 0,
                ("day" if cap.per == "day" else "period") if cap else "",
                overage_cap,
                plan.low_balance_threshold,
            ]
    rules_json = {value: json.dumps(by_plan, separators=(",", ":")) for value, by_plan in rules.items()}
    return FeatureRules(feature, priced_by, cap_by, rules_json, frozenset(feature.dimension_names()))


class RuleSource(Protocol):
    """Where the rules in force are read (catalog/holder.py's CatalogHolder follows the store's latest catalog): the
    engine, billing and healing read through this, so they need nothing of the store."""

    @property
    def rules(self) -> RuleBook: ...

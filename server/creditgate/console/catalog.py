"""The running catalog as the console shows it, read from GetCatalog's YAML (the console never imports the server's
catalog model: it is a client of the public API like any other)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml


@dataclass(frozen=True)
class Feature:
    key: str
    name: str
    cost: str  # "1", or "by quality: standard 5, verified 10"
    unit: str
    dimensions: tuple[str, ...]


@dataclass(frozen=True)
class Entitlement:
    feature: str
    free_units: int
    cap: str  # "250 per day by mailbox", or ""
    credits: str  # a plan's own cost for the feature, or ""


@dataclass(frozen=True)
class Plan:
    key: str
    name: str
    billing_interval: str
    price: str
    grants: tuple[str, ...]
    low_balance_threshold: int | None
    overage: str
    entitlements: tuple[Entitlement, ...]


@dataclass(frozen=True)
class Package:
    key: str
    name: str
    credits: int
    price: str
    expires_in_days: int | None


@dataclass(frozen=True)
class Catalog:
    version: str
    currency: str
    credit_price: str
    features: tuple[Feature, ...]
    plans: tuple[Plan, ...]
    packages: tuple[Package, ...]

    def plan(self, key: str) -> Plan | None:
        return next((plan for plan in self.plans if plan.key == key), None)

    def package(self, key: str) -> Package | None:
        return next((package for package in self.packages if package.key == key), None)


def _cost(credits: Any) -> str:
    if isinstance(credits, dict):
        values = ", ".join(f"{value} {cost}" for value, cost in credits.get("values", {}).items())
        return f"by {credits.get('by', '?')}: {values}"
    return str(credits)


def _cap(cap: Any) -> str:
    if not isinstance(cap, dict):
        return ""
    by = f" by {cap['by']}" if cap.get("by") else ""
    return f"{cap.get('limit')} per {cap.get('per', 'period')}{by}"


def _grant(grant: dict[str, Any]) -> str:
    every = " once" if grant.get("every") == "once" else " every month"
    expires = grant.get("expires", "period_end")
    expires_text = f", expires after {expires} days" if isinstance(expires, int) else f", expires: {expires}"
    rollover = f", rolls over up to {grant['rollover_max_credits']}" if grant.get("rollover_max_credits") else ""
    return f"{grant.get('credits')} credits{every}{expires_text}{rollover}"


def _overage(overage: Any) -> str:
    if not isinstance(overage, dict) or not overage.get("allowed"):
        return "not allowed"
    cap = overage.get("max_credits_per_period")
    return f"{overage.get('price_per_credit')} per credit" + (f", at most {cap} credits a period" if cap else "")


def parse_catalog(version: str, catalog_yaml: str) -> Catalog:
    document: dict[str, Any] = yaml.safe_load(catalog_yaml) or {}
    features = tuple(
        Feature(
            key=key,
            name=str(spec.get("name", key)),
            cost=_cost(spec.get("credits", "")),
            unit=str(spec.get("unit", "unit")),
            dimensions=tuple(spec.get("dimensions", ())),
        )
        for key, spec in (document.get("features") or {}).items()
    )
    plans = tuple(
        Plan(
            key=key,
            name=str(spec.get("name", key)),
            billing_interval=str(spec.get("billing_interval", "")),
            price=str(spec.get("price", "")),
            grants=tuple(_grant(grant) for grant in spec.get("grants") or ()),
            low_balance_threshold=spec.get("low_balance_threshold"),
            overage=_overage(spec.get("overage")),
            entitlements=tuple(
                Entitlement(
                    feature=feature,
                    free_units=int((rule or {}).get("free_units", 0)),
                    cap=_cap((rule or {}).get("cap")),
                    credits=_cost((rule or {})["credits"]) if "credits" in (rule or {}) else "",
                )
                for feature, rule in (spec.get("entitlements") or {}).items()
                if (rule or {}).get("enabled", True)
            ),
        )
        for key, spec in (document.get("plans") or {}).items()
    )
    packages = tuple(
        Package(
            key=key,
            name=str(spec.get("name", key)),
            credits=int(spec.get("credits", 0)),
            price=str(spec.get("price", "")),
            expires_in_days=spec.get("expires_in_days"),
        )
        for key, spec in (document.get("packages") or {}).items()
    )
    return Catalog(
        version=version,
        currency=str(document.get("currency", "")),
        credit_price=str(document.get("credit_price", "")),
        features=features,
        plans=plans,
        packages=packages,
    )

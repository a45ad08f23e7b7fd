"""Catalog schema (pydantic) and its loader, which rejects a wrong catalog whole, naming the place."""

from __future__ import annotations

import hashlib
import json
from decimal import Decimal
from typing import Annotated, Any, Literal

import yaml
from creditgate.server.errors import InvalidArgument
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

MAX_UNIT_COST = 1_000_000
MAX_CATALOG_BYTES = 1 << 20
Key = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")]
Credits = Annotated[int, Field(ge=0, le=MAX_UNIT_COST, strict=True)]


def _exact_decimal(value: Any) -> Any:
    if isinstance(value, float):
        raise ValueError('write money as a quoted decimal string, e.g. "29.00", never a float')
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


Money = Annotated[Decimal, Field(ge=0, max_digits=18, decimal_places=6)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DimensionCost(_Model):
    """A cost that depends on one dimension's value, e.g. quality: standard 5, verified 10."""

    by: Key
    values: dict[str, Credits] = Field(min_length=1)


Cost = Credits | DimensionCost


class Feature(_Model):
    name: str = ""
    credits: Cost
    # Extra dimensions a request may carry (e.g. mailbox for a per-mailbox cap).
    dimensions: list[Key] = []
    unit: str = "unit"

    def dimension_names(self) -> set[str]:
        priced = {self.credits.by} if isinstance(self.credits, DimensionCost) else set()
        return priced | set(self.dimensions)


class Cap(_Model):
    limit: int = Field(ge=1, le=1_000_000_000)
    per: Literal["day", "month"]
    # The dimension whose each value gets its own cap (e.g. mailbox); unset: one cap per customer.
    by: Key | None = None


class Entitlement(_Model):
    enabled: bool = True
    # Free units per monthly credit period, used before any credits.
    free_units: int = Field(default=0, ge=0, le=1_000_000_000)
    cap: Cap | None = None
    # Overrides the feature's cost on this plan.
    credits: Cost | None = None


class Grant(_Model):
    credits: int = Field(ge=1, le=1_000_000_000)
    # "month": issued at the start of every monthly credit period; "once": at subscription start.
    every: Literal["month", "once"] = "month"
    # "period_end", "never", or a number of days.
    expires: Literal["period_end", "never"] | Annotated[int, Field(ge=1, le=36_500)] = "period_end"
    priority: int = Field(default=10, ge=0, le=999)
    # Unspent credits carried into the next period when this grant expires at period end, up to this many; the
    # carried credits expire at the next period's end and do not roll again. Unset: nothing rolls over.
    rollover_max_credits: int | None = Field(default=None, ge=1, le=1_000_000_000)

    @model_validator(mode="after")
    def _rollover_needs_period_end(self) -> Grant:
        if self.rollover_max_credits is not None and self.expires != "period_end":
            raise ValueError("rollover_max_credits needs expires: period_end (credits roll over at period end)")
        return self


class Overage(_Model):
    allowed: bool = False
    price_per_credit: Money = Decimal(0)
    max_credits_per_period: int = Field(default=0, ge=0, le=1_000_000_000)

    _money = field_validator("price_per_credit", mode="before")(_exact_decimal)


class Plan(_Model):
    name: str = ""
    billing_interval: Literal["month", "year"]
    price: Money
    grants: list[Grant] = []
    low_balance_threshold: int = Field(default=0, ge=0)
    overage: Overage = Overage()
    entitlements: dict[Key, Entitlement]

    _money = field_validator("price", mode="before")(_exact_decimal)


class Package(_Model):
    name: str = ""
    credits: int = Field(ge=1, le=1_000_000_000)
    price: Money
    # Unset: purchased credits never expire.
    expires_in_days: int | None = Field(default=None, ge=1, le=36_500)
    priority: int | None = Field(default=None, ge=0, le=999)

    _money = field_validator("price", mode="before")(_exact_decimal)


class Catalog(_Model):
    currency: str = Field(pattern=r"^[A-Z]{3}$")
    # What one credit is worth in the currency, to show usage in money.
    credit_price: Money
    features: dict[Key, Feature] = Field(min_length=1)
    plans: dict[Key, Plan] = Field(min_length=1)
    packages: dict[Key, Package] = {}

    _money = field_validator("credit_price", mode="before")(_exact_decimal)

    @model_validator(mode="after")
    def _references_resolve(self) -> Catalog:
        for plan_key, plan in self.plans.items():
            for feature_key, entitlement in plan.entitlements.items():
                where = f"plans.{plan_key}.entitlements.{feature_key}"
                feature = self.features.get(feature_key)
                if feature is None:
                    raise ValueError(f"{where}: unknown feature {feature_key!r}")
                _check_entitlement(where, feature, entitlement)
        for feature_key in self.features:
            _check_cap_dimension_agrees(feature_key, self.plans)
        return self


def _check_entitlement(where: str, feature: Feature, entitlement: Entitlement) -> None:
    cap = entitlement.cap
    if cap is not None and cap.by is not None and cap.by not in feature.dimension_names():
        raise ValueError(f"{where}.cap.by: {cap.by!r} is not a dimension of the feature")
    override = entitlement.credits
    if isinstance(override, DimensionCost) and isinstance(feature.credits, DimensionCost):
        if override.by != feature.credits.by:
            raise ValueError(f"{where}.credits.by: must be {feature.credits.by!r}, as on the feature")
        if set(override.values) != set(feature.credits.values):
            raise ValueError(f"{where}.credits.values: must price exactly {sorted(feature.credits.values)}")
    elif isinstance(override, DimensionCost):
        raise ValueError(f"{where}.credits: the feature is not priced by a dimension")


def _check_cap_dimension_agrees(feature_key: str, plans: dict[str, Plan]) -> None:
    cap_dimensions = {
        plan.entitlements[feature_key].cap.by  # type: ignore[union-attr]
        for plan in plans.values()
        if feature_key in plan.entitlements and plan.entitlements[feature_key].cap is not None
    }
    if len(cap_dimensions) > 1:
        raise ValueError(f"features.{feature_key}: every plan's cap must count by the same dimension")


class LoadedCatalog:
    """A checked catalog with its source text and content version."""

    def __init__(self, catalog: Catalog, source: str) -> None:
        self.catalog = catalog
        self.source = source
        canonical = json.dumps(catalog.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        self.version = hashlib.sha256(canonical.encode()).hexdigest()[:16]


def load_catalog(source: str) -> LoadedCatalog:
    """Parse and check a catalog; raise InvalidArgument naming the place of the first problem."""
    if len(source.encode()) > MAX_CATALOG_BYTES:
        raise InvalidArgument("catalog_yaml is larger than 1 MiB", field="catalog_yaml")
    try:
        document = yaml.safe_load(source)
    except yaml.YAMLError as exc:
        raise InvalidArgument(f"catalog_yaml is not valid YAML: {exc}", field="catalog_yaml") from exc
    if not isinstance(document, dict):
        raise InvalidArgument("catalog_yaml must be a YAML mapping", field="catalog_yaml")
    try:
        catalog = Catalog.model_validate(document)
    except ValidationError as exc:
        first = exc.errors()[0]
        place = ".".join(str(part) for part in first["loc"])
        message = first["msg"].removeprefix("Value error, ")
        where = f"{place}: " if place else ""
        raise InvalidArgument(
            f"catalog_yaml: {where}{message}", field="catalog_yaml", reason="INVALID_CATALOG"
        ) from exc
    return LoadedCatalog(catalog, source)

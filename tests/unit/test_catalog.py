"""examples/apollo.yaml holds exactly the guide's figures, and the rule book compiles them for the script."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
from creditgate.server.domain.catalog import DimensionCost, load_catalog
from creditgate.server.domain.rules import RuleBook
from creditgate.server.errors import InvalidArgument, NotFound
from harness import APOLLO

CATALOG = load_catalog(APOLLO.read_text()).catalog

# The guide's credit cost per action ("ActionCredit Cost" tables). Its Apollo table has "Export contact 1 credit" and
# its generic example "Contact Export 5 credits": the catalog follows Apollo's.
FEATURE_COSTS = [
    ("email_unlock", 1),
    ("contact_export", 1),
    ("api_enrichment", 1),
    ("email_send", 1),
    ("ai_personalization", 1),
    ("email_verification", 1),
    ("contact_search", 1),
    ("email_enrichment", 2),
    ("phone_reveal", 10),
]


@pytest.mark.parametrize(("feature", "credits"), FEATURE_COSTS)
def test_feature_costs_are_the_guides(feature: str, credits: int) -> None:
    assert CATALOG.features[feature].credits == credits


def test_mobile_unlock_costs_5_or_10_by_quality() -> None:
    assert CATALOG.features["mobile_unlock"].credits == DimensionCost(
        by="quality", values={"standard": 5, "verified": 10}
    )


# The pricing guide (credit-based-pricing-guide.txt, "How Credits Are Applied"): "Professional plan → 48,000
# credits/year (or e.g. 4,000/month as recurring grants)", "Basic → 30,000 credits/year (or e.g. 2,500/month as
# recurring grants)", billed annually. The price, threshold and daily email cap are the catalog's own choices.
@pytest.mark.parametrize(
    ("plan", "yearly", "monthly", "price", "threshold", "cap"),
    [("basic", 30_000, 2500, "588.00", 250, 250), ("professional", 48_000, 4000, "948.00", 400, 1000)],
)
def test_plans_are_the_guides(plan: str, yearly: int, monthly: int, price: str, threshold: int, cap: int) -> None:
    found = CATALOG.plans[plan]
    assert (found.billing_interval, found.price) == ("year", Decimal(price))
    assert [(g.credits, g.every, g.expires) for g in found.grants] == [(monthly, "month", "period_end")]
    # A year of the catalog's grants is the guide's yearly figure.
    assert sum(grant.credits * 12 for grant in found.grants if grant.every == "month") == yearly
    assert found.low_balance_threshold == threshold
    assert found.entitlements["contact_export"].free_units == 50
    email_cap = found.entitlements["email_send"].cap
    assert email_cap is not None
    assert (email_cap.limit, email_cap.per, email_cap.by) == (cap, "day", "mailbox")


def test_only_professional_has_ai_personalization_and_overage() -> None:
    every_feature = set(CATALOG.features)
    assert set(CATALOG.plans["professional"].entitlements) == every_feature
    assert set(CATALOG.plans["basic"].entitlements) == every_feature - {"ai_personalization"}
    assert CATALOG.plans["basic"].overage.allowed is False
    overage = CATALOG.plans["professional"].overage
    assert (overage.allowed, overage.price_per_credit, overage.max_credits_per_period) == (True, Decimal("1.00"), 5000)


def test_packages_and_credit_price_are_the_guides() -> None:
    assert {key: (p.credits, p.price, p.expires_in_days) for key, p in CATALOG.packages.items()} == {
        "starter": (1000, Decimal("29.00"), None),
        "growth": (5000, Decimal("99.00"), None),
        "pro": (20000, Decimal("299.00"), None),
    }
    assert (CATALOG.currency, CATALOG.credit_price) == ("USD", Decimal("0.03"))


def test_the_same_catalog_has_the_same_version_and_another_a_different_one() -> None:
    text = APOLLO.read_text()
    assert load_catalog(text).version == load_catalog(text + "\n# a comment\n").version
    assert load_catalog(text).version != load_catalog(text.replace('"0.03"', '"0.04"')).version


def test_rules_for_a_request_carry_each_plans_figures() -> None:
    book = RuleBook(load_catalog(APOLLO.read_text()))
    rules, scope = book.rules_for("mobile_unlock", {"quality": "verified"})
    assert (json.loads(rules), scope) == (
        {"basic": [10, 0, 0, "", -1, 250], "professional": [10, 0, 0, "", 5000, 400]},
        "",
    )
    rules, scope = book.rules_for("email_send", {"mailbox": "a@b.io"})
    assert (json.loads(rules)["basic"], scope) == ([1, 0, 250, "day", -1, 250], "a@b.io")
    assert "ai_personalization" not in book.rules_for("email_unlock", {})[0]
    assert json.loads(book.rules_for("ai_personalization", {})[0]) == {"professional": [1, 0, 0, "", 5000, 400]}
    with pytest.raises(NotFound):
        book.rules_for("teleport", {})
    with pytest.raises(InvalidArgument, match="mailbox"):
        book.rules_for("email_send", {})


@pytest.mark.parametrize(
    ("edit", "place"),
    [
        (("cap: {limit: 250, per: day, by: mailbox}", "cap: {limit: 250, per: day, by: inbox}"), "cap.by"),
        (("currency: USD", "currency: usd"), "currency"),
        (("{name: Phone reveal, credits: 10}", "{name: Phone reveal, credits: 10, colour: red}"), "colour"),
        (("- {credits: 4000, every: month", "- {credits: 0, every: month"), "plans.professional.grants.0.credits"),
    ],
)
def test_a_wrong_catalog_is_rejected_naming_the_place(edit: tuple[str, str], place: str) -> None:
    text = APOLLO.read_text()
    assert edit[0] in text
    with pytest.raises(InvalidArgument, match=place.replace(".", r"\.")):
        load_catalog(text.replace(edit[0], edit[1], 1))

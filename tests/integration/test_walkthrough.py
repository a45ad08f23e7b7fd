"""The Apollo walkthrough of the README, against the real server, Redis and SQLite."""

from __future__ import annotations

import uuid

import pytest
from creditgate.v1 import admin_pb2, metering_pb2
from harness import RunningServer

pytestmark = pytest.mark.postgres_too


def test_basic_plan_walkthrough_from_grant_to_denial_to_top_up(server: RunningServer) -> None:
    server.create_customer("acme", plan="basic")
    assert server.available("acme") == 2500

    mobile = server.debit("acme", "mobile_unlock", quality="verified")
    assert (mobile.allowed, mobile.credits_charged, mobile.balance_after) == (True, 10, 2490)

    free = server.debit("acme", "contact_export", quantity=50)
    assert (free.credits_charged, free.free_units_used, free.balance_after) == (0, 50, 2490)
    paid = server.debit("acme", "contact_export", quantity=3)
    assert (paid.credits_charged, paid.free_units_used, paid.balance_after) == (3, 0, 2487)

    crossing = server.debit("acme", "api_enrichment", quantity=2237)
    assert (crossing.allowed, crossing.balance_after, crossing.low_balance) == (True, 250, False)
    below = server.debit("acme", "email_unlock")
    assert (below.balance_after, below.low_balance) == (249, True)
    assert server.debit("acme", "email_unlock").low_balance is False

    spend_rest = server.debit("acme", "email_unlock", quantity=248)
    assert (spend_rest.allowed, spend_rest.balance_after) == (True, 0)
    denied = server.debit("acme", "email_unlock")
    assert denied.allowed is False
    assert denied.deny_reason == metering_pb2.DENY_REASON_INSUFFICIENT_CREDITS
    assert (denied.credits_charged, denied.balance_after, denied.entry_id) == (0, 0, "")
    assert "starter" in denied.message

    top_up = server.admin.TopUp(
        admin_pb2.TopUpRequest(customer_id="acme", package="starter", request_id=str(uuid.uuid4()))
    )
    assert (top_up.available_credits, top_up.price, top_up.currency) == (1000, "29.00", "USD")
    assert top_up.bucket.remaining_credits == 1000
    assert not top_up.bucket.HasField("expires_at")
    assert server.debit("acme", "email_unlock").balance_after == 999

    ledger = server.ledger("acme")
    kinds = [admin_pb2.LedgerEntryKind.Name(entry.kind) for entry in ledger]
    assert kinds == [
        "LEDGER_ENTRY_KIND_GRANT",
        *["LEDGER_ENTRY_KIND_DEBIT"] * 7,
        "LEDGER_ENTRY_KIND_TOP_UP",
        "LEDGER_ENTRY_KIND_DEBIT",
    ]
    assert [entry.credits_delta for entry in ledger] == [2500, -10, 0, -3, -2237, -1, -1, -248, 1000, -1]
    assert sum(entry.credits_delta for entry in ledger) == server.available("acme") == 999
    assert [entry.entry_id for entry in ledger] == [f"acme/{n}" for n in range(1, 11)]
    assert ledger[-1].balance_after == 999


def test_not_entitled_and_capped_features_are_denied_with_their_reason(server: RunningServer) -> None:
    server.create_customer("basic-co", plan="basic")
    denied = server.debit("basic-co", "ai_personalization")
    assert (denied.allowed, denied.deny_reason) == (False, metering_pb2.DENY_REASON_NOT_ENTITLED)
    assert "professional" in denied.message

    assert server.debit("basic-co", "email_send", quantity=250, mailbox="sales@acme.io").allowed
    capped = server.debit("basic-co", "email_send", mailbox="sales@acme.io")
    assert (capped.allowed, capped.deny_reason) == (False, metering_pb2.DENY_REASON_LIMIT_EXCEEDED)
    assert server.debit("basic-co", "email_send", mailbox="ceo@acme.io").allowed
    server.clock.advance(24 * 3600)
    assert server.debit("basic-co", "email_send", mailbox="sales@acme.io").allowed
    assert server.available("basic-co") == 2500 - 252


def test_customer_without_subscription_is_denied(server: RunningServer) -> None:
    server.create_customer("walk-in")
    denied = server.debit("walk-in", "email_unlock")
    assert (denied.allowed, denied.deny_reason) == (False, metering_pb2.DENY_REASON_NO_ACTIVE_SUBSCRIPTION)


def test_professional_overage_is_recorded_up_to_its_cap(server: RunningServer) -> None:
    server.create_customer("pro-co", plan="professional")
    assert server.debit("pro-co", "phone_reveal", quantity=400).balance_after == 0
    over = server.debit("pro-co", "email_unlock", quantity=4999)
    assert (over.allowed, over.credits_charged, over.overage_credits, over.balance_after) == (True, 0, 4999, 0)
    assert server.debit("pro-co", "email_unlock").overage_credits == 1
    past_cap = server.debit("pro-co", "email_unlock")
    assert (past_cap.allowed, past_cap.deny_reason) == (False, metering_pb2.DENY_REASON_INSUFFICIENT_CREDITS)
    balance = server.metering.GetBalance(metering_pb2.GetBalanceRequest(customer_id="pro-co"))
    assert (balance.available_credits, balance.overage_credits) == (0, 5000)


def test_check_entitlement_and_dry_run_charge_nothing(server: RunningServer) -> None:
    server.create_customer("dry", plan="basic")
    server.debit("dry", "contact_export", quantity=40)
    check = server.metering.CheckEntitlement(
        metering_pb2.CheckEntitlementRequest(customer_id="dry", feature="contact_export", quantity=15)
    )
    assert (check.allowed, check.credits_cost, check.credits_to_charge) == (True, 15, 5)
    assert (check.free_units_remaining, check.period_usage, check.available_credits) == (10, 40, 2500)
    dry = server.metering.CheckAndDebit(
        metering_pb2.CheckAndDebitRequest(customer_id="dry", feature="phone_reveal", quantity=3, dry_run=True)
    )
    assert (dry.allowed, dry.credits_charged, dry.balance_after, dry.entry_id) == (True, 30, 2470, "")
    assert server.available("dry") == 2500
    assert len(server.ledger("dry")) == 2

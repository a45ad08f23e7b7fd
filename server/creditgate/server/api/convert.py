"""Domain values to proto messages (and timestamps both ways)."""

from __future__ import annotations

from typing import Any

from creditgate.server.api import validate
from creditgate.server.billing.invoices import Invoice
from creditgate.server.domain.records import EventRecord, LedgerRecord
from creditgate.server.engine.model import (
    BalanceView,
    BucketView,
    CustomerView,
    DebitRequest,
    Decision,
    SubscriptionView,
)
from creditgate.server.store.events import Delivery
from creditgate.v1 import admin_pb2, metering_pb2
from google.protobuf.timestamp_pb2 import Timestamp

BUCKET_SOURCES = {
    "grant": metering_pb2.BUCKET_SOURCE_PLAN_GRANT,
    "topup": metering_pb2.BUCKET_SOURCE_TOP_UP,
    "adjustment": metering_pb2.BUCKET_SOURCE_ADJUSTMENT,
    "rollover": metering_pb2.BUCKET_SOURCE_ROLLOVER,
}
SUBSCRIPTION_STATUSES = {
    "pending": admin_pb2.SUBSCRIPTION_STATUS_PENDING,
    "active": admin_pb2.SUBSCRIPTION_STATUS_ACTIVE,
    "canceled": admin_pb2.SUBSCRIPTION_STATUS_CANCELED,
}
LEDGER_KINDS = {
    "grant": admin_pb2.LEDGER_ENTRY_KIND_GRANT,
    "topup": admin_pb2.LEDGER_ENTRY_KIND_TOP_UP,
    "debit": admin_pb2.LEDGER_ENTRY_KIND_DEBIT,
    "expiry": admin_pb2.LEDGER_ENTRY_KIND_EXPIRY,
    "adjustment": admin_pb2.LEDGER_ENTRY_KIND_ADJUSTMENT,
    "reserve": admin_pb2.LEDGER_ENTRY_KIND_RESERVE,
    "commit": admin_pb2.LEDGER_ENTRY_KIND_COMMIT,
    "release": admin_pb2.LEDGER_ENTRY_KIND_RELEASE,
    "hold_expiry": admin_pb2.LEDGER_ENTRY_KIND_RESERVATION_EXPIRY,
    "rollover": admin_pb2.LEDGER_ENTRY_KIND_ROLLOVER,
}


def debit_request(request: Any, *, dry_run: bool, request_id: str = "") -> DebitRequest:
    """The checked DebitRequest of a CheckAndDebit-shaped message (also CheckEntitlement, Reserve, batch items)."""
    return DebitRequest(
        customer_id=validate.identifier(request.customer_id, "customer_id"),
        feature=validate.key(request.feature, "feature"),
        quantity=validate.quantity(request.quantity if request.HasField("quantity") else None),
        dimensions=validate.dimensions(dict(request.dimensions)) if request.dimensions else {},
        request_id=validate.optional_identifier(request_id, "request_id"),
        dry_run=dry_run,
    )


def decision(view: Decision) -> metering_pb2.CheckAndDebitResponse:
    return fill_decision(metering_pb2.CheckAndDebitResponse(), view)


def fill_decision(target: metering_pb2.CheckAndDebitResponse, view: Decision) -> metering_pb2.CheckAndDebitResponse:
    """Writes a decision into a response in place (a batch fills its results without copying them)."""
    target.allowed = view.allowed
    target.deny_reason = deny_reason(view.deny_reason)
    target.credits_charged = view.credits_charged
    target.free_units_used = view.free_units_used
    target.overage_credits = view.overage_credits
    target.balance_after = view.balance_after
    target.low_balance = view.low_balance
    target.entry_id = view.entry_id
    target.message = view.message
    target.credits_cost = view.credits_cost
    return target


def deny_reason(reason: str) -> metering_pb2.DenyReason.ValueType:
    if not reason:
        return metering_pb2.DENY_REASON_UNSPECIFIED
    return metering_pb2.DenyReason.Value(f"DENY_REASON_{reason}")


def timestamp(ms: int) -> Timestamp:
    stamp = Timestamp()
    stamp.FromMilliseconds(ms)
    return stamp


def bucket(view: BucketView) -> metering_pb2.Bucket:
    message = metering_pb2.Bucket(
        id=view.id,
        source=BUCKET_SOURCES.get(view.source, metering_pb2.BUCKET_SOURCE_UNSPECIFIED),
        remaining_credits=view.remaining,
        priority=view.priority,
    )
    if view.expires_at_ms:
        message.expires_at.CopyFrom(timestamp(view.expires_at_ms))
    return message


def balance(view: BalanceView) -> metering_pb2.GetBalanceResponse:
    response = metering_pb2.GetBalanceResponse(
        available_credits=view.available,
        reserved_credits=view.reserved,
        overage_credits=view.overage,
        buckets=[bucket(item) for item in view.buckets],
        features=[
            metering_pb2.FeatureUsage(
                feature=usage.feature,
                period_usage=usage.period_usage,
                free_units_remaining=usage.free_units_remaining,
                caps=[metering_pb2.CapUsage(scope=cap.scope, used=cap.used, limit=cap.limit) for cap in usage.caps],
            )
            for usage in view.features
        ],
    )
    if view.subscription is not None and view.subscription.status == "active":
        response.plan = view.subscription.plan
        response.period_start.CopyFrom(timestamp(view.subscription.period_start_ms))
        response.period_end.CopyFrom(timestamp(view.subscription.period_end_ms))
    return response


def subscription(view: SubscriptionView) -> admin_pb2.Subscription:
    return admin_pb2.Subscription(
        plan=view.plan,
        status=SUBSCRIPTION_STATUSES.get(view.status, admin_pb2.SUBSCRIPTION_STATUS_UNSPECIFIED),
        start_time=timestamp(view.anchor_ms),
        current_period_start=timestamp(view.period_start_ms),
        current_period_end=timestamp(view.period_end_ms),
    )


def customer(view: CustomerView) -> admin_pb2.Customer:
    message = admin_pb2.Customer(
        customer_id=view.customer_id,
        name=view.name,
        metadata=view.metadata,
        create_time=timestamp(view.created_ms),
    )
    if view.subscription is not None:
        message.subscription.CopyFrom(subscription(view.subscription))
    return message


def ledger_entry(record: LedgerRecord) -> admin_pb2.LedgerEntry:
    return admin_pb2.LedgerEntry(
        entry_id=record.entry_id,
        customer_id=record.customer_id,
        kind=LEDGER_KINDS.get(record.kind, admin_pb2.LEDGER_ENTRY_KIND_UNSPECIFIED),
        credits_delta=record.credits_delta,
        balance_after=record.balance_after,
        feature=record.feature,
        quantity=record.quantity,
        dimensions=record.dimensions,
        free_units_used=record.free_units_used,
        overage_credits=record.overage_credits,
        bucket_id=record.bucket_id,
        request_id=record.request_id,
        reason=record.reason,
        create_time=timestamp(record.created_ms),
        reserved_delta=record.reserved_delta,
        reservation_id=record.reservation_id,
    )


INVOICE_STATUSES = {"draft": admin_pb2.INVOICE_STATUS_DRAFT, "finalized": admin_pb2.INVOICE_STATUS_FINALIZED}
INVOICE_LINE_KINDS = {
    "plan_fee": admin_pb2.INVOICE_LINE_KIND_PLAN_FEE,
    "top_up": admin_pb2.INVOICE_LINE_KIND_TOP_UP,
    "overage": admin_pb2.INVOICE_LINE_KIND_OVERAGE,
}


def invoice(view: Invoice) -> admin_pb2.Invoice:
    return admin_pb2.Invoice(
        invoice_id=view.invoice_id,
        customer_id=view.customer_id,
        plan=view.plan,
        period_start=timestamp(view.period_start_ms),
        period_end=timestamp(view.period_end_ms),
        currency=view.currency,
        lines=[
            admin_pb2.InvoiceLine(
                kind=INVOICE_LINE_KINDS.get(line.kind, admin_pb2.INVOICE_LINE_KIND_UNSPECIFIED),
                description=line.description,
                quantity=line.quantity,
                unit_price=line.unit_price,
                amount=line.amount,
                entry_id=line.entry_id,
            )
            for line in view.lines
        ],
        subtotal=view.subtotal,
        total=view.total,
        usage=[admin_pb2.InvoiceUsage(feature=u.feature, credits=u.credits, value=u.value) for u in view.usage],
        status=INVOICE_STATUSES.get(view.status, admin_pb2.INVOICE_STATUS_UNSPECIFIED),
        create_time=timestamp(view.created_ms),
    )


DELIVERY_STATUSES = {
    "pending": admin_pb2.DELIVERY_STATUS_PENDING,
    "delivered": admin_pb2.DELIVERY_STATUS_DELIVERED,
    "dead": admin_pb2.DELIVERY_STATUS_DEAD,
}


def event(record: EventRecord, deliveries: list[Delivery]) -> admin_pb2.Event:
    return admin_pb2.Event(
        event_id=record.event_id,
        type=record.type,
        customer_id=record.customer_id,
        entry_id=record.entry_id,
        create_time=timestamp(record.created_ms),
        payload_json=record.payload,
        deliveries=[
            admin_pb2.EventDelivery(
                url=d.url,
                status=DELIVERY_STATUSES.get(d.status, admin_pb2.DELIVERY_STATUS_UNSPECIFIED),
                attempts=d.attempts,
                last_error=d.last_error,
            )
            for d in deliveries
            if d.event_id == record.event_id
        ],
    )

"""What Redis should hold for each customer, computed from the durable store (plus the outbox entries not
flushed yet): the one model reconcile compares against and restore writes."""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from creditgate.server.domain.periods import DAY_MS, Period, period
from creditgate.server.domain.records import (
    CustomerRecord,
    LedgerRecord,
    Record,
    SettingsRecord,
    SubscriptionRecord,
    parse_record,
)
from creditgate.server.domain.rules import RuleBook
from creditgate.server.engine import bucket_codec, customer_fields, hold_codec, usage_codec
from creditgate.server.engine.holds import split_reservation_id
from creditgate.server.errors import CreditgateError
from creditgate.server.store.store import Store

# Ledger kinds that create a bucket, and the bucket source the engine gives it.
BUCKET_SOURCES = {"grant": "grant", "topup": "topup", "adjustment": "adjustment", "rollover": "rollover"}
# Ledger kinds that settle a hold (Reserve): what they return goes back to the buckets the hold took from.
SETTLE_KINDS = ("commit", "release", "hold_expiry")
# Ledger kinds that count units against the period (a hold counts when placed; its settlement uncounts the rest).
COUNTED_KINDS = ("debit", "reserve")
# Ledger kinds written only inside the customer's open credit period.
PERIOD_KINDS = ("grant", "debit", "reserve")
PAGE = 5000


@dataclass
class CustomerState:
    """A customer's three Redis hashes as the engine's scripts would have left them."""

    customer_id: str
    customer: dict[str, str]
    buckets: dict[str, str]
    usage: dict[str, str]
    # The credits the ledger says the customer has (its entries' deltas summed).
    ledger_balance: int = 0
    # Holds the ledger shows placed and not settled: hold id -> the hold's record as reserve.lua writes it, due
    # at once (the ledger does not keep a hold's ttl), so the sweeper returns their credits.
    open_holds: dict[str, str] = field(default_factory=dict)


@dataclass
class DurableView:
    """Everything the durable store (and the unflushed outbox) knows, grouped by customer."""

    customers: dict[str, CustomerRecord] = field(default_factory=dict)
    subscriptions: dict[str, list[SubscriptionRecord]] = field(default_factory=lambda: defaultdict(list))
    ledger: dict[str, dict[int, LedgerRecord]] = field(default_factory=lambda: defaultdict(dict))
    settings: dict[str, list[SettingsRecord]] = field(default_factory=lambda: defaultdict(list))

    def add(self, record: Record) -> None:
        if isinstance(record, CustomerRecord):
            self.customers.setdefault(record.customer_id, record)
        elif isinstance(record, SubscriptionRecord):
            if all(known.source_id != record.source_id for known in self.subscriptions[record.customer_id]):
                self.subscriptions[record.customer_id].append(record)
        elif isinstance(record, LedgerRecord):
            self.ledger[record.customer_id].setdefault(record.seq, record)
        elif isinstance(record, SettingsRecord) and all(
            known.source_id != record.source_id for known in self.settings[record.customer_id]
        ):
            self.settings[record.customer_id].append(record)


async def read_durable(
    store: Store, outbox: list[tuple[str, str, dict[str, str]]], customer_id: str | None = None
) -> DurableView:
    """The store's records (of every customer, or of the one named), then the outbox entries (stream, entry id,
    fields) not flushed yet."""
    view = DurableView()
    for customer in await store.customers(customer_id):
        view.add(customer)
    for change in await store.subscription_changes(customer_id):
        view.add(change)
    for settings in await store.settings_changes(customer_id):
        view.add(settings)
    for known in [customer_id] if customer_id is not None else list(view.customers):
        after = 0
        while True:
            page = await store.ledger_since(known, after, PAGE)
            for record in page:
                view.add(record)
            if len(page) < PAGE:
                break
            after = page[-1].seq
    for stream, entry_id, fields in outbox:
        try:
            view.add(parse_record(stream, entry_id, fields))
        except (KeyError, ValueError, TypeError, AttributeError):
            continue  # a poison entry: the flusher parks it, it never changed a balance
    return view


def expected_state(view: DurableView, customer_id: str, rules: RuleBook | None, now_ms: int) -> CustomerState:
    record = view.customers.get(customer_id)
    entries = [view.ledger[customer_id][seq] for seq in sorted(view.ledger.get(customer_id, {}))]
    customer = {
        customer_fields.ID: customer_id,
        customer_fields.NAME: record.name if record else "",
        customer_fields.METADATA: json.dumps(record.metadata if record else {}),
        customer_fields.CREATED_AT: str(record.created_ms if record else 0),
        customer_fields.STATUS: "none",
        customer_fields.SEQ: str(entries[-1].seq if entries else 0),
        customer_fields.BUCKET_SEQ: "0",
    }
    buckets: dict[str, list[Any]] = {}
    bucket_seq = reserved = 0
    for entry in entries:
        if entry.kind in BUCKET_SOURCES and entry.bucket_id and entry.credits_delta > 0:
            source = BUCKET_SOURCES[entry.kind]
            buckets[entry.bucket_id] = [entry.credits_delta, entry.bucket_priority, entry.bucket_expires_ms, source]
            if entry.bucket_rollover_cap >= 0:
                buckets[entry.bucket_id].append(entry.bucket_rollover_cap)
            bucket_seq = max(bucket_seq, int(entry.bucket_id[1:]))
        elif entry.kind == "expiry":
            buckets.pop(entry.bucket_id, None)
        elif entry.kind in SETTLE_KINDS and entry.credits_delta > 0:
            _return_credits(buckets, _hold_takes(entries, entry.reservation_id), entry.credits_delta)
        for take in entry.takes:
            if take[0] in buckets:
                buckets[take[0]][0] -= int(take[1])
        reserved += entry.reserved_delta
    customer[customer_fields.BUCKET_SEQ] = str(bucket_seq)
    kept = {
        bucket_id: bucket_codec.encode(
            bucket_codec.Bucket(bucket_id, value[0], value[1], value[2], value[3], value[4] if len(value) > 4 else None)
        )
        for bucket_id, value in buckets.items()
        if value[0] > 0
    }
    customer[customer_fields.BUCKET_CREDITS] = str(sum(value[0] for value in buckets.values() if value[0] > 0))
    if reserved:
        customer[customer_fields.RESERVED] = str(reserved)
    _own_settings(customer, view.settings.get(customer_id, []))
    current = _subscription(customer, view.subscriptions.get(customer_id, []), entries)
    usage = _usage(entries, current, rules, customer.get(customer_fields.PLAN, ""), now_ms) if current else {}
    holds = [entry for entry in entries if entry.kind == "reserve"]
    if holds:
        # Hold ids are numbered per customer: a new hold must not take the id of one placed before the loss.
        customer[customer_fields.HOLD_SEQ] = str(max(_hold_number(entry.reservation_id) for entry in holds))
    return CustomerState(
        customer_id,
        customer,
        kept,
        usage,
        sum(entry.credits_delta for entry in entries),
        _open_holds(entries, holds, customer, rules, now_ms),
    )


def _hold_number(reservation_id: str) -> int:
    """'<customer_id>/h<n>' -> n."""
    return int(split_reservation_id(reservation_id)[1].removeprefix("h"))


def _open_holds(
    entries: list[LedgerRecord],
    holds: list[LedgerRecord],
    customer: dict[str, str],
    rules: RuleBook | None,
    now_ms: int,
) -> dict[str, str]:
    """The unsettled holds' records, with what settling them needs (expiring with nothing used returns the
    credits and uncounts the units in the hold's own period); due now."""
    settled = {entry.reservation_id for entry in entries if entry.kind in SETTLE_KINDS}
    anchor = int(customer.get(customer_fields.ANCHOR, "0"))
    records = {}
    for hold in holds:
        if hold.reservation_id in settled:
            continue
        cap = _cap(rules, customer.get(customer_fields.PLAN, ""), hold)
        record = hold_codec.HoldRecord(
            feature=hold.feature,
            quantity=hold.quantity,
            unit_cost=0,  # only what a commit charges needs it; a restored hold is expired, not committed
            free_units=hold.free_units_used,
            credits=hold.reserved_delta,
            overage=hold.overage_credits,
            period_field=usage_codec.period_field(hold.feature),
            cap_field="" if cap is None else _cap_field(cap, hold),
            period_index=_period_at(anchor, hold.created_ms).index if anchor else -1,
            expires_at_ms=now_ms,
            takes=hold.takes,
            dimensions=hold.dimensions,
        )
        records[split_reservation_id(hold.reservation_id)[1]] = hold_codec.encode(record)
    return records


def _own_settings(customer: dict[str, str], changes: list[SettingsRecord]) -> None:
    """The customer's own settings as its changes left them, applied in the order they were made."""
    for change in sorted(changes, key=lambda change: (change.changed_ms, _stream_order(change.source_id))):
        for name, value in change.fields.items():
            if value:
                customer[name] = value
            else:
                customer.pop(name, None)


def _hold_takes(entries: list[LedgerRecord], reservation_id: str) -> list[list[Any]]:
    return next((e.takes for e in entries if e.kind == "reserve" and e.reservation_id == reservation_id), [])


def _return_credits(buckets: dict[str, list[Any]], takes: list[list[Any]], amount: int) -> None:
    """What a settled hold gives back goes to the buckets it took from, last taken first (as the engine does)."""
    for take in reversed(takes):
        if amount == 0:
            break
        bucket_id, credits = take[0], int(take[1])
        back = min(credits, amount)
        if bucket_id not in buckets and len(take) >= 5:
            buckets[bucket_id] = [0, int(take[2]), int(take[3]), str(take[4])]
        if bucket_id in buckets:
            buckets[bucket_id][0] += back
        amount -= back


def _subscription(
    customer: dict[str, str], changes: list[SubscriptionRecord], entries: list[LedgerRecord]
) -> Period | None:
    """Fills the subscription fields; returns the current credit period (None when there is none)."""
    if not changes:
        return None
    latest = max(changes, key=lambda change: (change.changed_ms, _stream_order(change.source_id)))
    anchor = latest.anchor_ms
    customer.update(
        {customer_fields.PLAN: latest.plan, customer_fields.ANCHOR: str(anchor), customer_fields.STATUS: latest.status}
    )
    # A period is opened by the first decision in it, which writes its grants at its start; decisions are only
    # made in the open period. Expiries, top-ups and adjustments say nothing: they need no open period.
    since_anchor = [e.created_ms for e in entries if e.created_ms >= anchor and e.kind in PERIOD_KINDS]
    if not since_anchor:
        customer.update(
            {
                customer_fields.PERIOD_INDEX: "-1",
                customer_fields.PERIOD_START: str(anchor),
                customer_fields.PERIOD_END: str(anchor),
            }
        )
        return None
    current = _period_at(anchor, max(since_anchor))
    customer.update(
        {
            customer_fields.PERIOD_INDEX: str(current.index),
            customer_fields.PERIOD_START: str(current.start_ms),
            customer_fields.PERIOD_END: str(current.end_ms),
        }
    )
    if latest.status == "pending":
        customer[customer_fields.STATUS] = "active"
    return current


def _usage(
    entries: list[LedgerRecord], current: Period, rules: RuleBook | None, plan: str, now_ms: int
) -> dict[str, str]:
    """The usage counters of the current period (and per-day caps since its first day)."""
    counters: dict[str, int] = defaultdict(int)
    first_day = current.start_ms // DAY_MS
    holds = {entry.reservation_id: entry for entry in entries if entry.kind == "reserve"}
    for entry in entries:
        units, overage, counted = entry.quantity, entry.overage_credits, entry
        if entry.kind in SETTLE_KINDS and entry.reservation_id in holds:
            # The hold counted all it held; settling uncounts what was not used, in the hold's own period.
            counted = holds[entry.reservation_id]
            units, overage = entry.quantity - counted.quantity, entry.overage_credits - counted.overage_credits
            if not current.start_ms <= counted.created_ms < current.end_ms:
                continue
        elif entry.kind not in COUNTED_KINDS:
            continue
        in_period = current.start_ms <= counted.created_ms < current.end_ms
        if in_period:
            counters[usage_codec.period_field(counted.feature)] += units
            counters[usage_codec.OVERAGE_FIELD] += overage
        cap = _cap(rules, plan, counted)
        if cap is None:
            continue
        # A cap per day counts on every day since the period's first; a cap per period in the period only.
        if (counted.created_ms // DAY_MS >= first_day) if cap[1] == "day" else in_period:
            counters[_cap_field(cap, counted)] += units
    return {name: str(value) for name, value in counters.items() if value}


def _cap(rules: RuleBook | None, plan: str, entry: LedgerRecord) -> tuple[str, str] | None:
    """(scope, window) of the plan's hard cap on the entry's feature, from the catalog; None if uncapped."""
    if rules is None:
        return None
    try:
        rules_json, scope = rules.rules_for(entry.feature, entry.dimensions)
    except CreditgateError:
        return None  # the feature left the catalog: its counters no longer matter
    rule = json.loads(rules_json).get(plan)
    if not rule or not rule[2]:
        return None
    return scope, str(rule[3])


def _cap_field(cap: tuple[str, str], entry: LedgerRecord) -> str:
    """The usage field the entry's units count in against the cap (scope, window) of its feature."""
    scope, window = cap
    return usage_codec.cap_field(entry.feature, scope, usage_codec.cap_window(window == "day", entry.created_ms))


def _period_at(anchor_ms: int, when_ms: int) -> Period:
    index = 0
    while True:
        candidate = period(anchor_ms, index)
        if when_ms < candidate.end_ms:
            return candidate
        index += 1


def _stream_order(source_id: str) -> tuple[int, int]:
    """'<stream>/<ms>-<n>' as a number pair, so entries of one stream sort as Redis ordered them."""
    entry_id = source_id.rpartition("/")[2]
    ms, _, n = entry_id.partition("-")
    try:
        return int(ms), int(n or 0)
    except ValueError:
        return 0, 0

"""What the outbox stream carries, parsed into the records the durable stores write.

The outbox entry format, in one place. Each shard's stream `cg:{sN}:outbox` (engine/keys.py) holds entries of two
fields: `type` (ledger | customer | subscription | period | settings) and `e`, a JSON object written by the Lua
scripts (lib.lua append_entry for ledger entries; the customer, subscription and settings scripts for the others).
Keys are short because every decision writes one entry; they mean:

  ledger        k kind (LEDGER_KINDS), c customer id, n the customer's entry number, id "<c>/<n>", d credits delta,
                b balance after, t time (ms, UTC), f feature, q quantity, dim dimensions {name: value},
                fu free units used, o overage credits, bk bucket id, r request id on a debit / reason on any other
                kind, rq request id on other kinds, price decimal string (top-ups), bp / bx / bc the bucket's
                priority, expiry (ms, 0 never) and rollover cap (-1 none) for entries that create one (src its
                source: grant, topup, …; Redis keeps it, the ledger has it as the kind),
                rd reserved delta, hold reservation id, takes [[bucket id, credits], …], ev balance events
  customer      c, name, metadata {key: value}, t
  subscription  c, plan, status, anchor (ms), t          (its source id is "<stream>/<stream id>")
  period        c, plan, index, start (ms), end (ms)
  settings      c, s {setting: value}, t                 (its source id is "<stream>/<stream id>")

parse_record below is the only reader; a field it does not know is ignored, a missing required one parks the
entry (ledger/parked.py)."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

LEDGER_KINDS = (
    "grant",
    "topup",
    "debit",
    "expiry",
    "adjustment",
    "reserve",
    "commit",
    "release",
    "hold_expiry",
    "rollover",
)
# Events every entry of a kind causes (the scripts name the balance events of each entry in its `ev` list).
KIND_EVENTS = {"grant": "grant_issued", "expiry": "credits_expired"}


# Not frozen: a frozen dataclass's __init__ sets its 22 fields through object.__setattr__, a measurable share of
# the flusher's CPU per entry (bench/NOTES.md). Nothing changes a record once it is parsed.
@dataclass(slots=True)
class LedgerRecord:
    customer_id: str
    seq: int
    kind: str
    credits_delta: int
    balance_after: int
    created_ms: int
    feature: str = ""
    quantity: int = 0
    dimensions: dict[str, str] = field(default_factory=dict)
    free_units_used: int = 0
    overage_credits: int = 0
    bucket_id: str = ""
    request_id: str = ""
    reason: str = ""
    price: str = ""
    # For entries that create a bucket: its spending priority and expiry (0 = never), to rebuild it.
    bucket_priority: int = 0
    bucket_expires_ms: int = 0
    # Holds: the change to reserved credits (+ on reserve, - when settled) and the reservation it concerns.
    reserved_delta: int = 0
    reservation_id: str = ""
    # Which buckets paid: [[bucket_id, credits], ...]
    takes: list[list[Any]] = field(default_factory=list)
    # Events the entry caused, named by the script that wrote it (low_balance, recovered, depleted, auto_topup);
    # kept as event rows, not in the ledger table.
    events: tuple[str, ...] = ()
    # For a grant that carries its remainder into the next period: the most it carries (-1: it carries nothing).
    bucket_rollover_cap: int = -1

    @property
    def entry_id(self) -> str:
        return f"{self.customer_id}/{self.seq}"


@dataclass(frozen=True, slots=True)
class PeriodRecord:
    """A credit period as rollover opened it (a plan change ends the running one early: the earlier end wins)."""

    customer_id: str
    plan: str
    index: int
    start_ms: int
    end_ms: int


@dataclass(frozen=True, slots=True)
class EventRecord:
    """Something webhooks hear about; the id is derived from its cause, so a replay makes the same event."""

    event_id: str
    customer_id: str
    type: str
    entry_id: str
    created_ms: int
    # The JSON body webhooks receive.
    payload: str


def event_record(
    event_type: str, customer_id: str, entry_id: str, created_ms: int, data: dict[str, Any]
) -> EventRecord:
    cause = entry_id or str(data.get("invoice_id", ""))
    event_id = f"{cause}:{event_type}"
    body = {
        "id": event_id,
        "type": event_type,
        "customer_id": customer_id,
        "entry_id": entry_id,
        "created_ms": created_ms,
        "data": data,
    }
    return EventRecord(event_id, customer_id, event_type, entry_id, created_ms, json.dumps(body, sort_keys=True))


def ledger_events(record: LedgerRecord) -> list[EventRecord]:
    """The events a ledger entry caused: its kind's own, then those its script named."""
    names = [KIND_EVENTS[record.kind]] if record.kind in KIND_EVENTS and record.credits_delta != 0 else []
    names.extend(record.events)
    if not names:
        return []
    data = {
        "kind": record.kind,
        "credits_delta": record.credits_delta,
        "balance_after": record.balance_after,
        "bucket_id": record.bucket_id,
        "reason": record.reason,
        "price": record.price,
    }
    return [event_record(name, record.customer_id, record.entry_id, record.created_ms, data) for name in names]


@dataclass(frozen=True, slots=True)
class CustomerRecord:
    customer_id: str
    name: str
    metadata: dict[str, str]
    created_ms: int


@dataclass(frozen=True, slots=True)
class SubscriptionRecord:
    # "<stream>/<stream entry id>": replays of the same outbox entry write nothing new.
    source_id: str
    customer_id: str
    plan: str
    status: str
    anchor_ms: int
    changed_ms: int


@dataclass(frozen=True, slots=True)
class SettingsRecord:
    """A change to a customer's own settings (low-balance threshold, auto top-up): field -> value, '' removes it."""

    source_id: str
    customer_id: str
    fields: dict[str, str]
    changed_ms: int


# An EventRecord is written as it is: events of the server's own making (ledger/heal.py), not of an entry.
Record = LedgerRecord | CustomerRecord | SubscriptionRecord | PeriodRecord | SettingsRecord | EventRecord


def parse_record(stream: str, stream_id: str, fields: dict[str, str]) -> Record:
    """One outbox entry as a record; ValueError (or KeyError) if it is malformed."""
    kind = fields["type"]
    body = orjson.loads(fields["e"])
    if kind == "ledger":
        return _ledger(body)
    if kind == "customer":
        return CustomerRecord(body["c"], body["name"], _str_map(body.get("metadata")), int(body["t"]))
    if kind == "subscription":
        return SubscriptionRecord(
            f"{stream}/{stream_id}",
            body["c"],
            body["plan"],
            body["status"],
            int(body["anchor"]),
            int(body["t"]),
        )
    if kind == "period":
        return PeriodRecord(body["c"], body["plan"], int(body["index"]), int(body["start"]), int(body["end"]))
    if kind == "settings":
        return SettingsRecord(f"{stream}/{stream_id}", body["c"], _str_map(body.get("s")), int(body["t"]))
    raise ValueError(f"unknown outbox entry type {kind!r}")


def _ledger(body: dict[str, Any]) -> LedgerRecord:
    # Positional, through a bound get: the flusher parses every entry, and keywords are a large part of that
    # parse's cost (bench/NOTES.md).
    get = body.get
    kind = body["k"]
    if kind not in LEDGER_KINDS:
        raise ValueError(f"unknown ledger entry kind {kind!r}")
    takes = get("takes")
    events = get("ev")
    debit = kind == "debit"
    return LedgerRecord(
        body["c"],
        int(body["n"]),
        kind,
        int(body["d"]),
        int(body["b"]),
        int(body["t"]),
        get("f", ""),
        int(get("q", 0)),
        _str_map(get("dim")),
        int(get("fu", 0)),
        int(get("o", 0)),
        get("bk", ""),
        get("r", "") if debit else get("rq", ""),
        "" if debit else get("r", ""),
        get("price", ""),
        int(get("bp", 0)),
        int(get("bx", 0)),
        int(get("rd", 0)),
        get("hold", ""),
        takes if type(takes) is list else [],
        tuple(map(str, events)) if events else (),
        int(get("bc", -1)),
    )


def _str_map(value: Any) -> dict[str, str]:
    # cjson encodes an empty table as {} and never as a list with items here.
    if not value:
        return {}
    if not isinstance(value, dict):
        raise ValueError("expected an object")
    return {str(key): str(item) for key, item in value.items()}


def ledger_row(record: LedgerRecord, encode: Callable[[Any], Any]) -> tuple[Any, ...]:
    """A record as a ledger_entries row, in the stores' column order; `encode` turns the dimensions and takes
    into what the store keeps (JSON text in SQLite, jsonb in PostgreSQL)."""
    return (
        record.customer_id,
        record.seq,
        record.kind,
        record.credits_delta,
        record.balance_after,
        record.created_ms,
        record.feature,
        record.quantity,
        encode(record.dimensions),
        record.free_units_used,
        record.overage_credits,
        record.bucket_id,
        record.request_id,
        record.reason,
        record.price,
        record.bucket_priority,
        record.bucket_expires_ms,
        record.reserved_delta,
        record.reservation_id,
        encode(record.takes),
        record.bucket_rollover_cap,
    )


def ledger_record_from_row(row: Sequence[Any], decode: Callable[[Any], Any]) -> LedgerRecord:
    """The inverse of ledger_row."""
    (
        customer_id,
        seq,
        kind,
        delta,
        after,
        created,
        feature,
        quantity,
        dims,
        free,
        overage,
        bucket,
        request_id,
        reason,
        price,
        bucket_priority,
        bucket_expires_ms,
        reserved_delta,
        reservation_id,
        takes,
        bucket_rollover_cap,
    ) = row
    return LedgerRecord(
        customer_id=customer_id,
        seq=seq,
        kind=kind,
        credits_delta=delta,
        balance_after=after,
        created_ms=created,
        feature=feature,
        quantity=quantity,
        dimensions=dict(decode(dims)),
        free_units_used=free,
        overage_credits=overage,
        bucket_id=bucket,
        request_id=request_id,
        reason=reason,
        price=price,
        bucket_priority=bucket_priority,
        bucket_expires_ms=bucket_expires_ms,
        reserved_delta=reserved_delta,
        reservation_id=reservation_id,
        takes=list(decode(takes)),
        bucket_rollover_cap=bucket_rollover_cap,
    )

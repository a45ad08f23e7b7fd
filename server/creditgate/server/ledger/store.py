"""The durable store's interface, which SQLite and PostgreSQL implement, and the URL that picks one."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from creditgate.server.domain.conflicts import LedgerConflict
from creditgate.server.domain.records import (
    CustomerRecord,
    EventRecord,
    LedgerRecord,
    PeriodRecord,
    Record,
    SettingsRecord,
    SubscriptionRecord,
)
from creditgate.server.errors import InvalidArgument


@dataclass(frozen=True, slots=True)
class ParkedEntry:
    """An outbox entry that could not be parsed or written, kept aside so it does not block the stream."""

    source_id: str
    raw: str
    error: str


@dataclass(frozen=True, slots=True)
class StoredInvoice:
    """A finalized invoice: `body` is its JSON (billing/invoices.py reads and writes it)."""

    invoice_id: str
    customer_id: str
    period_start_ms: int
    body: str
    created_ms: int


@dataclass(frozen=True, slots=True)
class Delivery:
    """One event's delivery to one webhook URL; status is pending, delivered or dead."""

    event_id: str
    url: str
    status: str
    attempts: int
    next_attempt_ms: int
    last_error: str
    # The event's JSON body (read with due deliveries).
    payload: str = ""


class Store(Protocol):
    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def write(self, records: list[Record], parked: list[ParkedEntry]) -> list[LedgerConflict]:
        """Write a batch in one transaction; records already written are skipped (replays are harmless), and
        ledger entries whose id is taken by another entry are kept as conflicts (ledger/conflicts.py), returned."""
        ...

    async def list_ledger(self, customer_id: str, limit: int, before_seq: int | None) -> list[LedgerRecord]:
        """A customer's entries, newest first, with seq < before_seq when given."""
        ...

    async def ledger_since(self, customer_id: str, after_seq: int, limit: int) -> list[LedgerRecord]:
        """A customer's entries with seq > after_seq, oldest first (reconcile, restore)."""
        ...

    async def customers(self, customer_id: str | None = None) -> list[CustomerRecord]:
        """Every customer (or the one named), by id."""
        ...

    async def search_customers(self, query: str, limit: int, after_id: str | None) -> list[CustomerRecord]:
        """Customers whose id starts with `query` or whose name contains it (either case), by id, after after_id."""
        ...

    async def subscription_changes(self, customer_id: str | None = None) -> list[SubscriptionRecord]:
        """Every subscription change, by customer, then in the order they happened."""
        ...

    async def settings_changes(self, customer_id: str | None = None) -> list[SettingsRecord]:
        """Every change to a customer's own settings, by customer (rebuild orders them by their outbox ids)."""
        ...

    async def save_catalog(self, version: str, source: str, applied_ms: int) -> None: ...

    async def latest_catalog(self) -> tuple[str, str] | None:
        """(version, source) of the catalog applied last, if any."""
        ...

    async def parked(self) -> list[ParkedEntry]:
        """Outbox entries parked and not resolved since, by source id."""
        ...

    async def parked_count(self) -> int:
        """How many parked() returns, counted by the store."""
        ...

    async def resolve_parked(self, source_id: str, resolved_ms: int) -> None:
        """Take a parked entry off the list once its record is written (the parked row itself is kept)."""
        ...

    async def periods_to_invoice(self, now_ms: int, limit: int) -> list[tuple[PeriodRecord, bool]]:
        """Periods ended by now_ms without an invoice, oldest first, each with whether it is complete: a later
        period of the customer is stored, or a cancellation at or after its end (then so is every entry of this
        one: the outbox keeps a customer's order)."""
        ...

    async def current_period(self, customer_id: str) -> PeriodRecord | None:
        """The customer's latest stored period."""
        ...

    async def ledger_between(self, customer_id: str, start_ms: int, end_ms: int) -> list[LedgerRecord]:
        """A customer's entries dated in [start_ms, end_ms), in order."""
        ...

    async def save_invoice(self, invoice: StoredInvoice, event: EventRecord) -> bool:
        """Store an invoice and its event once per (customer, period start); False if it was already there."""
        ...

    async def list_invoices(self, customer_id: str, limit: int, before_start_ms: int | None) -> list[StoredInvoice]:
        """A customer's invoices, newest period first, with period start < before_start_ms when given."""
        ...

    async def get_invoice(self, invoice_id: str) -> StoredInvoice | None: ...

    async def list_events(self, customer_id: str, limit: int, before_seq: int | None) -> list[tuple[int, EventRecord]]:
        """(seq, event) newest first, one customer's or (customer_id "") everyone's."""
        ...

    async def get_event(self, event_id: str) -> EventRecord | None: ...

    async def enqueue_deliveries(self, urls: list[str], now_ms: int, after_seq: int = 0) -> tuple[int, int]:
        """A pending delivery for each URL and each event after `after_seq` (0: every event) that has none;
        returns how many were made and the newest event's seq (the next call's after_seq)."""
        ...

    async def due_deliveries(self, now_ms: int, limit: int, url: str | None = None) -> list[Delivery]:
        """Pending deliveries due by now_ms (to `url` only, when given), with their payloads, earliest first."""
        ...

    async def claim_delivery(self, delivery: Delivery, lease_until_ms: int) -> bool:
        """Take a due delivery for one attempt (another replica that read it too then does not)."""
        ...

    async def record_delivery(self, delivery: Delivery) -> None:
        """The outcome of an attempt: status, attempts, next attempt, last error."""
        ...

    async def deliveries_of(self, event_ids: list[str]) -> list[Delivery]: ...

    async def redeliver(self, event_id: str, now_ms: int) -> int:
        """Every delivery of the event pending again, due now; returns how many."""
        ...


def open_store(url: str, migration_url: str | None = None) -> Store:
    """The store for a CREDITGATE_DATABASE_URL (and, for PostgreSQL, the schema owner's URL)."""
    if url.startswith("sqlite:///"):
        from creditgate.server.ledger.sqlite_store import SqliteStore

        return SqliteStore(url.removeprefix("sqlite:///"))
    if url.startswith(("postgresql://", "postgres://")):
        from creditgate.server.ledger.postgres_store import PostgresStore

        return PostgresStore(url, migration_url)
    raise InvalidArgument(
        "database_url must start with sqlite:/// or postgresql://", field="database_url", reason="INVALID_DATABASE_URL"
    )

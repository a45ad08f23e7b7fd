"""Credit periods (as rollover opened them) and the invoices finalized for them, once per customer and period."""

from __future__ import annotations

from dataclasses import dataclass

from creditgate.server.domain.records import EventRecord, PeriodRecord
from creditgate.server.store.database import NEWEST, Database, Session
from creditgate.server.store.events import insert_events

PERIOD_COLUMNS = "customer_id, plan, period_index, start_ms, end_ms"
INVOICE_COLUMNS = "invoice_id, customer_id, period_start_ms, body, created_ms"


@dataclass(frozen=True, slots=True)
class StoredInvoice:
    """A finalized invoice: `body` is its JSON (billing/invoices.py reads and writes it)."""

    invoice_id: str
    customer_id: str
    period_start_ms: int
    body: str
    created_ms: int


def insert_periods(session: Session, records: list[PeriodRecord]) -> None:
    # A plan change ends the running period early: the earlier end wins, whatever the order.
    least = session.dialect.least
    session.executemany(
        f"INSERT INTO periods ({PERIOD_COLUMNS}) VALUES (?, ?, ?, ?, ?) ON CONFLICT (customer_id, start_ms)"
        f" DO UPDATE SET end_ms = {least}(periods.end_ms, excluded.end_ms)",
        [(r.customer_id, r.plan, r.index, r.start_ms, r.end_ms) for r in records],
    )


class InvoiceStore:
    _db: Database

    async def periods_to_invoice(self, now_ms: int, limit: int) -> list[tuple[PeriodRecord, bool]]:
        """Periods ended by now_ms without an invoice, oldest first, each with whether it is complete: a later
        period of the customer is stored, or a cancellation at or after its end (then so is every entry of this
        one: the outbox keeps a customer's order)."""
        rows = await self._db.read(
            lambda session: session.fetchall(
                "SELECT p.customer_id, p.plan, p.period_index, p.start_ms, p.end_ms, EXISTS (SELECT 1 FROM periods"
                " n WHERE n.customer_id = p.customer_id AND n.start_ms >= p.end_ms) OR EXISTS (SELECT 1 FROM"
                " subscription_changes s WHERE s.customer_id = p.customer_id AND s.status = 'canceled'"
                " AND s.changed_ms >= p.end_ms) FROM periods p"
                " WHERE p.end_ms <= ? AND NOT EXISTS (SELECT 1 FROM invoices i WHERE i.customer_id = p.customer_id"
                " AND i.period_start_ms = p.start_ms) ORDER BY p.end_ms, p.customer_id LIMIT ?",
                (now_ms, limit),
            )
        )
        return [(PeriodRecord(*row[:5]), bool(row[5])) for row in rows]

    async def current_period(self, customer_id: str) -> PeriodRecord | None:
        """The customer's latest stored period."""
        row = await self._db.read(
            lambda session: session.fetchone(
                f"SELECT {PERIOD_COLUMNS} FROM periods WHERE customer_id = ? ORDER BY start_ms DESC LIMIT 1",
                (customer_id,),
            )
        )
        return PeriodRecord(*row) if row else None

    async def save_invoice(self, invoice: StoredInvoice, event: EventRecord) -> bool:
        """Store an invoice and its event once per (customer, period start); False if it was already there."""

        def work(session: Session) -> bool:
            inserted = session.execute(
                f"INSERT INTO invoices ({INVOICE_COLUMNS}) VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (invoice.invoice_id, invoice.customer_id, invoice.period_start_ms, invoice.body, invoice.created_ms),
            )
            if inserted:
                insert_events(session, [event])
            return bool(inserted)

        return await self._db.write(work)

    async def list_invoices(self, customer_id: str, limit: int, before_start_ms: int | None) -> list[StoredInvoice]:
        """A customer's invoices, newest period first, with period start < before_start_ms when given."""
        rows = await self._db.read(
            lambda session: session.fetchall(
                f"SELECT {INVOICE_COLUMNS} FROM invoices WHERE customer_id = ? AND period_start_ms < ?"
                " ORDER BY period_start_ms DESC LIMIT ?",
                (customer_id, before_start_ms if before_start_ms is not None else NEWEST, limit),
            )
        )
        return [StoredInvoice(*row) for row in rows]

    async def get_invoice(self, invoice_id: str) -> StoredInvoice | None:
        row = await self._db.read(
            lambda session: session.fetchone(
                f"SELECT {INVOICE_COLUMNS} FROM invoices WHERE invoice_id = ?", (invoice_id,)
            )
        )
        return StoredInvoice(*row) if row else None

"""Invoices: built only from the durable ledger for one credit period, and finalized once per (customer, period)."""

from __future__ import annotations

import contextlib
import json
from collections import defaultdict
from dataclasses import asdict, dataclass
from decimal import Decimal
from typing import Any

import structlog
from creditgate.server.clock import Clock
from creditgate.server.domain.catalog import Catalog
from creditgate.server.domain.records import LedgerRecord, PeriodRecord, event_record
from creditgate.server.domain.rules import RuleSource
from creditgate.server.engine.balances import Balances
from creditgate.server.errors import NotFound
from creditgate.server.store.invoices import StoredInvoice
from creditgate.server.store.store import Store
from creditgate.server.tasks import PeriodicTask

log = structlog.get_logger(__name__)
# Periods looked at per round of the loop.
BATCH = 200
# Credit periods in one billing interval: the plan fee is charged on the period that starts one.
PERIODS_PER_INTERVAL = {"month": 1, "year": 12}
CENT = Decimal("0.01")


@dataclass(frozen=True, slots=True)
class InvoiceLine:
    # plan_fee, top_up or overage
    kind: str
    description: str
    quantity: int
    unit_price: str
    amount: str
    entry_id: str = ""


@dataclass(frozen=True, slots=True)
class FeatureSpend:
    feature: str
    credits: int
    # The credits at the catalog's credit_price.
    value: str


@dataclass(frozen=True, slots=True)
class Invoice:
    invoice_id: str
    customer_id: str
    plan: str
    period_start_ms: int
    period_end_ms: int
    currency: str
    lines: list[InvoiceLine]
    subtotal: str
    total: str
    usage: list[FeatureSpend]
    # draft (PreviewInvoice) or finalized
    status: str
    created_ms: int

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @staticmethod
    def from_json(text: str) -> Invoice:
        body: dict[str, Any] = json.loads(text)
        body["lines"] = [InvoiceLine(**line) for line in body["lines"]]
        body["usage"] = [FeatureSpend(**spend) for spend in body["usage"]]
        return Invoice(**body)


def invoice_id(customer_id: str, period_start_ms: int) -> str:
    # Customer ids never contain "/", so the id is unambiguous.
    return f"{customer_id}/inv/{period_start_ms}"


def money(amount: Decimal) -> str:
    """Exact: cents when the amount has no smaller part, every digit otherwise."""
    cents = amount.quantize(CENT)
    return str(cents) if cents == amount else str(amount)


def build_invoice(
    period: PeriodRecord, entries: list[LedgerRecord], catalog: Catalog, created_ms: int, status: str
) -> Invoice:
    """The invoice of one period from its ledger entries, priced by the catalog."""
    plan = catalog.plans.get(period.plan)
    lines: list[InvoiceLine] = []
    if plan is not None and period.index % PERIODS_PER_INTERVAL[plan.billing_interval] == 0:
        fee = money(plan.price)
        lines.append(InvoiceLine("plan_fee", f"{plan.name or period.plan} ({plan.billing_interval}ly)", 1, fee, fee))
    overage = 0
    spent: dict[str, int] = defaultdict(int)
    for entry in entries:
        if entry.kind == "topup" and entry.price:
            lines.append(_top_up_line(entry, catalog))
        elif entry.kind == "debit":
            overage += entry.overage_credits
            spent[entry.feature] += -entry.credits_delta
        elif entry.kind == "commit":
            overage += entry.overage_credits
            spent[entry.feature] += -(entry.credits_delta + entry.reserved_delta)
    if overage and plan is not None:
        rate = plan.overage.price_per_credit
        lines.append(InvoiceLine("overage", "Overage credits", overage, money(rate), money(rate * overage)))
    subtotal = sum((Decimal(line.amount) for line in lines), Decimal(0))
    usage = [
        FeatureSpend(feature, credits, money(catalog.credit_price * credits))
        for feature, credits in sorted(spent.items())
        if credits
    ]
    return Invoice(
        invoice_id=invoice_id(period.customer_id, period.start_ms) if status == "finalized" else "",
        customer_id=period.customer_id,
        plan=period.plan,
        period_start_ms=period.start_ms,
        period_end_ms=period.end_ms,
        currency=catalog.currency,
        lines=lines,
        subtotal=money(subtotal),
        total=money(subtotal),
        usage=usage,
        status=status,
        created_ms=created_ms,
    )


def _top_up_line(entry: LedgerRecord, catalog: Catalog) -> InvoiceLine:
    automatic = entry.reason.startswith("auto:")
    package_key = entry.reason.removeprefix("auto:")
    package = catalog.packages.get(package_key)
    name = package.name if package is not None and package.name else package_key
    credits = f"{entry.credits_delta:,} credits"
    description = f"{name}: {credits}" + (" (automatic top-up)" if automatic else "")
    return InvoiceLine("top_up", description, 1, entry.price, entry.price, entry.entry_id)


class Invoicer:
    """Makes the invoices of ended periods (invoice_once) and drafts of running ones (preview)."""

    def __init__(
        self,
        store: Store,
        balances: Balances,
        catalog: RuleSource,
        clock: Clock,
        *,
        interval_seconds: float,
    ) -> None:
        self._store = store
        self._balances = balances
        self._catalog = catalog
        self._clock = clock
        self.task = PeriodicTask("invoicer", self.invoice_once, interval_seconds, clock)

    async def invoice_once(self) -> int:
        """Finalize the invoice of every ended period whose entries are all in the store; returns how many."""
        now = self._clock.now_ms()
        due = await self._store.periods_to_invoice(now, BATCH)
        # A period is complete once the next one is stored (the outbox keeps a customer's order, so all of its
        # entries are stored too). A customer nobody touched since has its periods opened now; once the flusher
        # has moved them, a later round invoices it. The flusher alone drains: a second drainer would make a
        # drain return while another holds a batch in flight.
        for customer_id in sorted({period.customer_id for period, complete in due if not complete}):
            with contextlib.suppress(NotFound):
                await self._balances.get_balance(customer_id)
        made = 0
        for period, complete in due:
            if complete and await self._finalize(period, now):
                made += 1
        return made

    async def _finalize(self, period: PeriodRecord, now: int) -> bool:
        entries = await self._store.ledger_between(period.customer_id, period.start_ms, period.end_ms)
        invoice = build_invoice(period, entries, self._catalog.rules.catalog, now, "finalized")
        stored = StoredInvoice(invoice.invoice_id, invoice.customer_id, invoice.period_start_ms, invoice.to_json(), now)
        event = event_record(
            "invoice_finalized",
            invoice.customer_id,
            "",
            now,
            {
                "invoice_id": invoice.invoice_id,
                "total": invoice.total,
                "currency": invoice.currency,
                "period_start_ms": invoice.period_start_ms,
                "period_end_ms": invoice.period_end_ms,
            },
        )
        made = await self._store.save_invoice(stored, event)
        if made:
            log.info("invoice_finalized", invoice_id=invoice.invoice_id, total=invoice.total)
        return made

    async def preview(self, customer_id: str) -> Invoice:
        """The running period's invoice so far, from the durable ledger (as far as the flusher has moved it)."""
        await self._balances.get_balance(customer_id)
        period = await self._store.current_period(customer_id)
        if period is None:
            raise NotFound(
                f"customer {customer_id!r} has no credit period yet", field="customer_id", reason="NO_PERIOD"
            )
        now = self._clock.now_ms()
        entries = await self._store.ledger_between(customer_id, period.start_ms, period.end_ms)
        return build_invoice(period, entries, self._catalog.rules.catalog, now, "draft")

    async def get(self, invoice_id_: str) -> Invoice:
        stored = await self._store.get_invoice(invoice_id_)
        if stored is None:
            raise NotFound(f"invoice {invoice_id_!r} does not exist", field="invoice_id", reason="INVOICE_NOT_FOUND")
        return Invoice.from_json(stored.body)

    async def list(self, customer_id: str, limit: int, before_start_ms: int | None) -> list[Invoice]:
        stored = await self._store.list_invoices(customer_id, limit, before_start_ms)
        return [Invoice.from_json(item.body) for item in stored]

    def start(self) -> None:
        self.task.start()

    async def stop(self) -> None:
        await self.task.stop()

"""Invoices from the durable ledger: Professional with overage and a Starter pack, exact to the cent, made once."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
from billing import a_month_of_professional, billing_server, error_reason, invoice_once
from creditgate.server.cli import app
from creditgate.v1 import admin_pb2
from harness import JAN_1, Database, RedisServer, RunningServer
from typer.testing import CliRunner

pytestmark = [pytest.mark.cluster_too, pytest.mark.postgres_too]

FEB_1 = datetime(2027, 2, 1, tzinfo=UTC)
MAR_1 = datetime(2027, 3, 1, tzinfo=UTC)


def lines(invoice: admin_pb2.Invoice) -> list[tuple[int, str, int, str, str]]:
    return [(line.kind, line.description, line.quantity, line.unit_price, line.amount) for line in invoice.lines]


def test_the_month_of_overage_and_a_starter_pack_is_invoiced_exactly(
    redis_server: RedisServer, database: Database, tmp_path: Path
) -> None:
    with billing_server(redis_server, database, tmp_path) as server:
        a_month_of_professional(server)
        server.clock.set(FEB_1)
        server.available("acme")  # February opens

        assert invoice_once(server) == 1
        assert invoice_once(server) == 0  # once per (customer, period)

        page = server.admin.ListInvoices(admin_pb2.ListInvoicesRequest(customer_id="acme"))
        assert [invoice.invoice_id for invoice in page.invoices] == [f"acme/inv/{int(JAN_1.timestamp() * 1000)}"]
        january = server.admin.GetInvoice(admin_pb2.GetInvoiceRequest(invoice_id=page.invoices[0].invoice_id)).invoice
        assert lines(january) == [
            (admin_pb2.INVOICE_LINE_KIND_PLAN_FEE, "Professional (yearly)", 1, "948.00", "948.00"),
            (admin_pb2.INVOICE_LINE_KIND_TOP_UP, "Starter: 1,000 credits", 1, "29.00", "29.00"),
            (admin_pb2.INVOICE_LINE_KIND_OVERAGE, "Overage credits", 600, "1.00", "600.00"),
        ]
        assert (january.subtotal, january.total, january.currency) == ("1577.00", "1577.00", "USD")
        # Credits charged to buckets per feature, at 0.03 USD a credit (the overage is its own line).
        assert [(u.feature, u.credits, u.value) for u in january.usage] == [
            ("email_unlock", 4000, "120.00"),
            ("mobile_unlock", 100, "3.00"),
        ]
        assert january.status == admin_pb2.INVOICE_STATUS_FINALIZED
        assert (january.period_start.ToDatetime(UTC), january.period_end.ToDatetime(UTC)) == (JAN_1, FEB_1)
        finalized = [
            event.event_id
            for event in server.admin.ListEvents(admin_pb2.ListEventsRequest(customer_id="acme")).events
            if event.type == "invoice_finalized"
        ]
        assert finalized == [f"{january.invoice_id}:invoice_finalized"]

        shown = CliRunner().invoke(
            app, ["invoice", "show", january.invoice_id, "--target", f"127.0.0.1:{server.app.port}"], terminal_width=120
        )
        assert shown.exit_code == 0, shown.output
        for text in ("Professional (yearly)", "Starter: 1,000 credits", "Overage credits", "600.00", "1577.00 USD"):
            assert text in shown.output


def test_a_yearly_plan_charges_its_fee_on_the_first_month_only_and_preview_shows_the_running_one(
    redis_server: RedisServer, database: Database, tmp_path: Path
) -> None:
    with billing_server(redis_server, database, tmp_path) as server:
        a_month_of_professional(server)
        server.clock.set(datetime(2027, 2, 10, tzinfo=UTC))
        server.debit("acme", "email_unlock", 50)

        server.flush()
        draft = server.admin.PreviewInvoice(admin_pb2.PreviewInvoiceRequest(customer_id="acme")).invoice
        assert (draft.status, draft.invoice_id, lines(draft), draft.total) == (
            admin_pb2.INVOICE_STATUS_DRAFT,
            "",
            [],
            "0.00",
        )
        assert [(u.feature, u.credits, u.value) for u in draft.usage] == [("email_unlock", 50, "1.50")]

        # Nobody touches acme after February: the invoicer opens March itself to know February is complete, and
        # invoices it once the flusher has moved March's opening.
        server.clock.set(MAR_1)
        assert invoice_once(server) == 1
        assert invoice_once(server) == 1
        page = server.admin.ListInvoices(admin_pb2.ListInvoicesRequest(customer_id="acme", page_size=1))
        february = page.invoices[0]
        assert (february.period_start.ToDatetime(UTC), lines(february), february.total) == (FEB_1, [], "0.00")
        rest = server.admin.ListInvoices(
            admin_pb2.ListInvoicesRequest(customer_id="acme", page_size=1, page_token=page.next_page_token)
        )
        assert [invoice.total for invoice in rest.invoices] == ["1577.00"]
        assert rest.next_page_token == ""


def test_a_canceled_subscription_is_invoiced_up_to_the_cancellation(
    redis_server: RedisServer, database: Database, tmp_path: Path
) -> None:
    with billing_server(redis_server, database, tmp_path) as server:
        a_month_of_professional(server)
        canceled_at = datetime(2027, 1, 25, tzinfo=UTC)
        server.clock.set(canceled_at)
        server.admin.CancelSubscription(admin_pb2.CancelSubscriptionRequest(customer_id="acme"))

        assert invoice_once(server) == 1
        server.clock.set(MAR_1)
        assert invoice_once(server) == 0  # no period after the cancellation
        page = server.admin.ListInvoices(admin_pb2.ListInvoicesRequest(customer_id="acme"))
        [january] = page.invoices
        assert (january.period_start.ToDatetime(UTC), january.period_end.ToDatetime(UTC)) == (JAN_1, canceled_at)
        assert lines(january) == [
            (admin_pb2.INVOICE_LINE_KIND_PLAN_FEE, "Professional (yearly)", 1, "948.00", "948.00"),
            (admin_pb2.INVOICE_LINE_KIND_TOP_UP, "Starter: 1,000 credits", 1, "29.00", "29.00"),
            (admin_pb2.INVOICE_LINE_KIND_OVERAGE, "Overage credits", 600, "1.00", "600.00"),
        ]
        assert january.total == "1577.00"


def test_an_unknown_invoice_is_not_found(server: RunningServer) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        server.admin.GetInvoice(admin_pb2.GetInvoiceRequest(invoice_id="nobody/inv/1"))
    assert error_reason(raised.value) == (grpc.StatusCode.NOT_FOUND, "INVOICE_NOT_FOUND")

"""`creditgate invoice show|list|preview`: invoices printed the way a person reads them."""

from __future__ import annotations

from typing import Annotated

import grpc
import typer
from creditgate.server.settings import Settings
from creditgate.v1 import admin_pb2, admin_pb2_grpc
from rich.console import Console
from rich.table import Table

invoice_app = typer.Typer(help="Invoices.", no_args_is_help=True)
console = Console()
Target = Annotated[str | None, typer.Option(help="host:port of the server (default: CREDITGATE_LISTEN)")]


def _admin(target: str | None) -> tuple[grpc.Channel, admin_pb2_grpc.AdminServiceStub]:
    channel = grpc.insecure_channel(target or Settings().listen)
    return channel, admin_pb2_grpc.AdminServiceStub(channel)


def render(invoice: admin_pb2.Invoice) -> Table:
    """One invoice as a table: lines, subtotal, total, then what the credits were spent on."""
    start = invoice.period_start.ToDatetime().date().isoformat()
    end = invoice.period_end.ToDatetime().date().isoformat()
    status = admin_pb2.InvoiceStatus.Name(invoice.status).removeprefix("INVOICE_STATUS_").lower()
    title = f"{invoice.invoice_id or 'draft'}  {invoice.customer_id}  {invoice.plan}  {start} to {end}  ({status})"
    currency = invoice.currency
    table = Table("", "qty", f"unit ({currency})", f"amount ({currency})", title=title, title_justify="left")
    for line in invoice.lines:
        table.add_row(line.description, f"{line.quantity:,}", line.unit_price, line.amount)
    table.add_section()
    table.add_row("Subtotal", "", "", invoice.subtotal)
    table.add_row("[bold]Total[/bold]", "", "", f"[bold]{invoice.total} {currency}[/bold]")
    if invoice.usage:
        table.add_section()
        for usage in invoice.usage:
            table.add_row(f"usage: {usage.feature}", f"{usage.credits:,} credits", "", f"({usage.value})")
    return table


def _run(target: str | None, call: str, request: object) -> object:
    channel, admin = _admin(target)
    with channel:
        try:
            return getattr(admin, call)(request)
        except grpc.RpcError as exc:
            console.print(f"[red]{exc.code().name}[/red]: {exc.details()}")
            raise typer.Exit(1) from exc


@invoice_app.command("show")
def show(invoice_id: str, target: Target = None) -> None:
    """Print one finalized invoice."""
    response = _run(target, "GetInvoice", admin_pb2.GetInvoiceRequest(invoice_id=invoice_id))
    assert isinstance(response, admin_pb2.GetInvoiceResponse)
    console.print(render(response.invoice))


@invoice_app.command("preview")
def preview(customer_id: str, target: Target = None) -> None:
    """Print the running period's invoice so far."""
    response = _run(target, "PreviewInvoice", admin_pb2.PreviewInvoiceRequest(customer_id=customer_id))
    assert isinstance(response, admin_pb2.PreviewInvoiceResponse)
    console.print(render(response.invoice))


@invoice_app.command("list")
def list_(customer_id: str, limit: int = 12, target: Target = None) -> None:
    """List a customer's invoices, newest first."""
    response = _run(target, "ListInvoices", admin_pb2.ListInvoicesRequest(customer_id=customer_id, page_size=limit))
    assert isinstance(response, admin_pb2.ListInvoicesResponse)
    table = Table("invoice", "period start", "plan", "total")
    for invoice in response.invoices:
        start = invoice.period_start.ToDatetime().date().isoformat()
        table.add_row(invoice.invoice_id, start, invoice.plan, f"{invoice.total} {invoice.currency}")
    console.print(table)

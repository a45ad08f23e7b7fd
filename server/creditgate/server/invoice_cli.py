"""`creditgate invoice show|list|preview`: invoices printed the way a person reads them."""

from __future__ import annotations

import typer
from creditgate.server.remote import Remote, calling, takes_server
from creditgate.v1 import admin_pb2
from rich.console import Console
from rich.table import Table

invoice_app = typer.Typer(help="Invoices.", no_args_is_help=True)
console = Console()


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


@invoice_app.command("show")
@takes_server
def show(invoice_id: str, *, server: Remote) -> None:
    """Print one finalized invoice."""
    with calling(server, console) as (admin, _):
        response = admin.GetInvoice(admin_pb2.GetInvoiceRequest(invoice_id=invoice_id), metadata=server.metadata)
    console.print(render(response.invoice))


@invoice_app.command("preview")
@takes_server
def preview(customer_id: str, *, server: Remote) -> None:
    """Print the running period's invoice so far."""
    with calling(server, console) as (admin, _):
        response = admin.PreviewInvoice(
            admin_pb2.PreviewInvoiceRequest(customer_id=customer_id), metadata=server.metadata
        )
    console.print(render(response.invoice))


@invoice_app.command("list")
@takes_server
def list_(customer_id: str, limit: int = 12, *, server: Remote) -> None:
    """List a customer's invoices, newest first."""
    with calling(server, console) as (admin, _):
        response = admin.ListInvoices(
            admin_pb2.ListInvoicesRequest(customer_id=customer_id, page_size=limit), metadata=server.metadata
        )
    table = Table("invoice", "period start", "plan", "total")
    for invoice in response.invoices:
        start = invoice.period_start.ToDatetime().date().isoformat()
        table.add_row(invoice.invoice_id, start, invoice.plan, f"{invoice.total} {invoice.currency}")
    console.print(table)

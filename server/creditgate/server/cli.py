"""The `creditgate` command: `serve`, and the admin calls a person makes from a shell."""

from __future__ import annotations

import json
import uuid
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from creditgate.server.errors import CreditgateError
from creditgate.server.invoice_cli import invoice_app
from creditgate.server.loadtest.command import loadtest
from creditgate.server.remote import Remote, calling, takes_server
from creditgate.server.settings import Settings
from creditgate.v1 import admin_pb2, metering_pb2
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table
from typer.core import TyperGroup

app = typer.Typer(help="creditgate: decide and charge credits before each billable action.", no_args_is_help=True)
customer_app = typer.Typer(help="Customers.", no_args_is_help=True)
app.add_typer(customer_app, name="customer")
app.add_typer(invoice_app, name="invoice")
keys_app = typer.Typer(help="API keys.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")


class _LedgerGroup(TyperGroup):
    """`creditgate ledger CUSTOMER` lists a customer's entries as it always did (`ledger entries CUSTOMER` too; a
    customer named like a subcommand needs that form); `parked` and `retry-parked` are subcommands."""

    # Typer vendors click (typer._click): its types are not public, hence Any.
    def resolve_command(self, ctx: Any, args: list[str]) -> Any:
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["entries", *args]
        return super().resolve_command(ctx, args)


ledger_app = typer.Typer(
    cls=_LedgerGroup,
    help="The durable ledger: `ledger CUSTOMER` lists a customer's entries; `ledger parked` the outbox entries the"
    " flusher could not write; `ledger retry-parked` writes them once the cause is fixed.",
    no_args_is_help=True,
)
app.add_typer(ledger_app, name="ledger")


class Scope(StrEnum):
    metering = "metering"
    admin = "admin"


console = Console()


def main() -> None:
    app()


app.command("loadtest")(loadtest)


@app.command("console")
def console_command(
    target: Annotated[str | None, typer.Option(help="host:port of the creditgate server")] = None,
    listen: Annotated[str | None, typer.Option(help="host:port of the console (default 127.0.0.1:8080)")] = None,
    api_key: Annotated[
        str | None, typer.Option(help="API key with the admin and metering scopes (or CREDITGATE_CONSOLE_API_KEY)")
    ] = None,
    tls: Annotated[bool | None, typer.Option("--tls/--no-tls", help="TLS to the server, trusting system roots")] = None,
    tls_ca: Annotated[Path | None, typer.Option(help="CA (PEM) that signed the server's certificate")] = None,
    tls_server_name: Annotated[str | None, typer.Option(help="name on the server's certificate")] = None,
    metrics_url: Annotated[str | None, typer.Option(help="the server's Prometheus URL, for the live view")] = None,
) -> None:
    """Run the operator console, a web app over the public API (password: CREDITGATE_CONSOLE_PASSWORD)."""
    from creditgate.console.serve import ConsoleRefused, prepare, run

    overrides = {
        "target": target,
        "listen": listen,
        "api_key": api_key,
        "tls": tls,
        "tls_ca_file": tls_ca,
        "tls_server_name": tls_server_name,
        "metrics_url": metrics_url,
    }
    try:
        settings, generated_password = prepare(overrides)
    except ConsoleRefused as exc:
        console.print(f"[red]the console cannot start[/red]: {exc}")
        raise typer.Exit(2) from exc
    run(settings, generated_password)


@app.command("console-hash-password")
def console_hash_password(
    password: Annotated[str, typer.Option(prompt=True, hide_input=True, confirmation_prompt=True)],
) -> None:
    """Print the hash of a console password, for CREDITGATE_CONSOLE_PASSWORD_HASH."""
    from creditgate.console.auth import hash_password

    print(hash_password(password))


@app.command()
def serve(
    catalog: Annotated[Path | None, typer.Option(help="catalog YAML applied at start")] = None,
    workers: Annotated[int, typer.Option(min=1, help="processes sharing the port (SO_REUSEPORT), one per core")] = 1,
) -> None:
    """Run the sidecar (embedded Redis unless CREDITGATE_REDIS_URL is set)."""
    from creditgate.server.logs import configure
    from creditgate.server.serve import run

    try:
        settings = Settings()
    except ValidationError as exc:
        console.print(f"[red]creditgate cannot start[/red]: {_settings_errors(exc)}")
        raise typer.Exit(2) from exc
    if catalog is not None:
        settings = settings.model_copy(update={"catalog": catalog})
    configure(settings.log_format)
    try:
        run(settings, workers)
    except CreditgateError as exc:
        console.print(f"[red]creditgate cannot start[/red]: {exc.message}")
        raise typer.Exit(2) from exc


def _settings_errors(exc: ValidationError) -> str:
    """Each refused setting as `name: reason` (a rule between settings names them in its reason)."""
    reasons = []
    for error in exc.errors():
        reason = str(error["msg"]).removeprefix("Value error, ")
        field = ".".join(str(part) for part in error["loc"])
        reasons.append(f"{field}: {reason}" if field else reason)
    return "; ".join(reasons)


@keys_app.command("new")
def keys_new(
    scope: Annotated[list[Scope], typer.Option(help="what the key may call (repeatable)")],
    name: Annotated[str, typer.Option(help="a name for the key, shown in logs")] = "default",
) -> None:
    """Print a fresh API key for the caller, and the entry (its hash only) for CREDITGATE_API_KEYS."""
    from creditgate.server.api.auth import hash_key, new_key
    from creditgate.server.settings import ApiKey

    key = new_key()
    entry = ApiKey.model_validate({"name": name, "sha256": hash_key(key), "scopes": [item.value for item in scope]})
    print(f"key:   {key}")
    print(f"entry: {json.dumps({'name': entry.name, 'sha256': entry.sha256, 'scopes': sorted(entry.scopes)})}")


@app.command("apply-catalog")
@takes_server
def apply_catalog(path: Path, *, server: Remote) -> None:
    """Apply a catalog YAML file."""
    with calling(server, console) as (admin, _):
        response = admin.ApplyCatalog(
            admin_pb2.ApplyCatalogRequest(catalog_yaml=path.read_text()), metadata=server.metadata
        )
    console.print(f"catalog {response.version} ({'applied' if response.changed else 'unchanged'})")


@customer_app.command("create")
@takes_server
def customer_create(customer_id: str, name: str = "", *, server: Remote) -> None:
    """Create a customer."""
    with calling(server, console) as (admin, _):
        admin.CreateCustomer(
            admin_pb2.CreateCustomerRequest(customer_id=customer_id, name=name), metadata=server.metadata
        )
    console.print(f"customer {customer_id} created")


@app.command()
@takes_server
def subscribe(customer_id: str, plan: str, *, server: Remote) -> None:
    """Subscribe a customer to a plan, starting now."""
    with calling(server, console) as (admin, _):
        response = admin.CreateSubscription(
            admin_pb2.CreateSubscriptionRequest(customer_id=customer_id, plan=plan), metadata=server.metadata
        )
    console.print(f"{customer_id} on {plan}: {response.available_credits:,} credits available")


@app.command()
@takes_server
def topup(
    customer_id: str,
    package: Annotated[str, typer.Option(help="package key, e.g. starter")] = "",
    credits: Annotated[int, typer.Option(help="a number of credits instead of a package")] = 0,
    *,
    server: Remote,
) -> None:
    """Top up a customer's credits with a package or a number of credits."""
    request = admin_pb2.TopUpRequest(customer_id=customer_id, request_id=str(uuid.uuid4()))
    if package:
        request.package = package
    else:
        request.credits = credits
    with calling(server, console) as (admin, _):
        response = admin.TopUp(request, metadata=server.metadata)
    price = f" for {response.price} {response.currency}" if response.price else ""
    console.print(f"+{response.bucket.remaining_credits:,} credits{price}: {response.available_credits:,} available")


@app.command()
@takes_server
def debit(
    customer_id: str,
    feature: str,
    quantity: int = 1,
    dim: Annotated[list[str] | None, typer.Option(help="dimension as key=value, repeatable")] = None,
    *,
    server: Remote,
) -> None:
    """CheckAndDebit one action, as an app server would."""
    dimensions = dict(item.split("=", 1) for item in dim or [])
    with calling(server, console) as (_, metering):
        response = metering.CheckAndDebit(
            metering_pb2.CheckAndDebitRequest(
                customer_id=customer_id,
                feature=feature,
                quantity=quantity,
                dimensions=dimensions,
                request_id=str(uuid.uuid4()),
            ),
            metadata=server.metadata,
        )
    verdict = (
        "[green]allowed[/green]"
        if response.allowed
        else (f"[red]denied[/red] {metering_pb2.DenyReason.Name(response.deny_reason)}")
    )
    console.print(f"{verdict}: {response.message}")


@app.command()
@takes_server
def balance(customer_id: str, *, server: Remote) -> None:
    """Show a customer's credits, buckets and period usage."""
    with calling(server, console) as (_, metering):
        response = metering.GetBalance(
            metering_pb2.GetBalanceRequest(customer_id=customer_id), metadata=server.metadata
        )
    console.print(f"{customer_id}: {response.available_credits:,} credits available (plan {response.plan or '-'})")
    table = Table("bucket", "source", "remaining", "priority", "expires")
    for bucket in response.buckets:
        expires = bucket.expires_at.ToDatetime().isoformat() if bucket.HasField("expires_at") else "never"
        source = metering_pb2.BucketSource.Name(bucket.source).removeprefix("BUCKET_SOURCE_").lower()
        table.add_row(bucket.id, source, f"{bucket.remaining_credits:,}", str(bucket.priority), expires)
    console.print(table)


@ledger_app.command("entries")
@takes_server
def ledger(customer_id: str, limit: int = 20, *, server: Remote) -> None:
    """List a customer's ledger entries from the durable store, newest first."""
    with calling(server, console) as (admin, _):
        response = admin.ListLedgerEntries(
            admin_pb2.ListLedgerEntriesRequest(customer_id=customer_id, page_size=limit), metadata=server.metadata
        )
    table = Table("entry", "kind", "delta", "balance", "feature", "qty", "when (UTC)")
    for entry in response.entries:
        kind = admin_pb2.LedgerEntryKind.Name(entry.kind).removeprefix("LEDGER_ENTRY_KIND_").lower()
        table.add_row(
            entry.entry_id,
            kind,
            f"{entry.credits_delta:+,}",
            f"{entry.balance_after:,}",
            entry.feature,
            str(entry.quantity or ""),
            entry.create_time.ToDatetime().isoformat(timespec="seconds"),
        )
    console.print(table)


@ledger_app.command("parked")
def ledger_parked() -> None:
    """List the outbox entries the flusher parked (could not parse or write), from the durable store; exit 1 if any."""
    from creditgate.server.ledger.commands import run_parked

    raise typer.Exit(run_parked(Settings(), console))


@ledger_app.command("retry-parked")
def ledger_retry_parked() -> None:
    """Write each parked entry again (once its cause is fixed); those that still fail stay parked (exit 1)."""
    from creditgate.server.ledger.commands import run_retry_parked

    raise typer.Exit(run_retry_parked(Settings(), console))


@app.command()
def reconcile() -> None:
    """Compare every customer's Redis state with the durable ledger (+ unflushed outbox); exit 1 on drift."""
    from creditgate.server.ledger.commands import run_reconcile

    raise typer.Exit(run_reconcile(Settings(), console))


@app.command()
def migrate() -> None:
    """Move a Redis written by an older creditgate into the current key layout (serve does it at start too)."""
    from creditgate.server.ledger.commands import run_migrate

    raise typer.Exit(run_migrate(Settings(), console))


@app.command()
def reshard() -> None:
    """Move every customer to CREDITGATE_SHARDS shards from the count Redis was written with (e.g. 8 -> 256 before
    a Redis Cluster); stop every sidecar first."""
    from creditgate.server.ledger.commands import run_reshard

    raise typer.Exit(run_reshard(Settings(), console))


@app.command()
def restore() -> None:
    """Rebuild every customer's Redis state from the durable store (after Redis lost data; no sidecar serving)."""
    from creditgate.server.ledger.commands import run_restore

    raise typer.Exit(run_restore(Settings(), console))

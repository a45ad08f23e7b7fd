"""`creditgate loadtest`: the options a person gives, the progress bar, and the outputs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import grpc
import typer
from creditgate.server.remote import Remote, takes_server_at_target
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

console = Console(stderr=True)


@takes_server_at_target("host:port of the creditgate server to load (see --tls, --api-key)")
def loadtest(
    server: Remote,  # the API key's scopes: metering, and admin unless --no-setup
    customers: Annotated[int, typer.Option(min=1, help="customers the calls are spread over")] = 1000,
    features: Annotated[
        str,
        typer.Option(help="mix as feature[dim=value]*quantity:weight,... (default: every feature of --plan, equally)"),
    ] = "",
    concurrency: Annotated[int, typer.Option(min=1, help="calls in flight, over all processes")] = 64,
    duration: Annotated[float, typer.Option(help="seconds to run (ignored with --requests)")] = 10.0,
    requests: Annotated[int, typer.Option(min=0, help="stop after this many calls (0: run for --duration)")] = 0,
    rate: Annotated[float, typer.Option(min=0, help="open loop: calls per second (0: closed loop)")] = 0.0,
    skew: Annotated[float, typer.Option(min=0, help="Zipf exponent of customer popularity (0: uniform)")] = 0.0,
    mode: Annotated[str, typer.Option(help="debit | batch | reserve-commit")] = "debit",
    batch_size: Annotated[int, typer.Option(min=1, max=1000, help="decisions per CheckAndDebitBatch call")] = 100,
    processes: Annotated[int, typer.Option(min=1, help="load-generating processes")] = 2,
    connections: Annotated[int, typer.Option(min=1, help="HTTP/2 connections per process")] = 1,
    plan: Annotated[str, typer.Option(help="plan the customers are subscribed to")] = "professional",
    credits_per_customer: Annotated[int, typer.Option(min=0, help="credits topped up per customer")] = 1_000_000,
    customer_prefix: Annotated[str, typer.Option(help="use existing customers PREFIX-0.. (with --no-setup)")] = "",
    setup: Annotated[bool, typer.Option(help="create the customers through AdminService first")] = True,
    verify: Annotated[bool, typer.Option(help="check charged credits against balances afterwards")] = True,
    json_out: Annotated[Path | None, typer.Option("--json", help="write the results as JSON ('-': stdout)")] = None,
    plot: Annotated[Path | None, typer.Option(help="write a latency-by-percentile PNG")] = None,
) -> None:
    """Load a creditgate server and report throughput, latency percentiles and the charged-credits check."""
    from creditgate.server.loadtest import report as reports
    from creditgate.server.loadtest.runner import LoadSettings, run_load

    if mode not in ("debit", "batch", "reserve-commit"):
        raise typer.BadParameter("mode must be debit, batch or reserve-commit", param_hint="--mode")
    if not setup and not customer_prefix:
        raise typer.BadParameter("--no-setup needs --customer-prefix", param_hint="--customer-prefix")
    settings = LoadSettings(
        target=server.target,
        mode=mode,  # type: ignore[arg-type]  # checked above
        customers=customers,
        customer_prefix=customer_prefix,
        setup=setup,
        verify=verify,
        plan=plan,
        credits_per_customer=credits_per_customer,
        features=features,
        skew=skew,
        concurrency=concurrency,
        processes=processes,
        connections=connections,
        duration_s=duration,
        requests=requests,
        rate=rate,
        batch_size=batch_size,
        api_key=server.api_key,
        tls=server.tls,
    )
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[calls]:>9,} calls  {task.fields[rate]:>8,.0f}/s"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as progress:
        task = progress.add_task("setting up", total=requests or duration, calls=0, rate=0.0)

        def update(calls: int, expected: int, elapsed: float) -> None:
            done = calls if expected else min(elapsed, duration)
            rate_now = calls / elapsed if elapsed else 0.0
            progress.update(task, description="loading", completed=done, calls=calls, rate=rate_now)

        try:
            report = run_load(settings, update)
        except grpc.aio.AioRpcError as exc:
            console.print(f"the server refused the load test: {exc.code().name}: {exc.details()}")
            raise typer.Exit(1) from exc
    console.print(reports.summary_table(report))
    if json_out is not None:
        text = json.dumps(reports.as_json(report), indent=2)
        if str(json_out) == "-":
            typer.echo(text)
        else:
            json_out.write_text(text + "\n")
    if plot is not None:
        reports.plot(report, plot)
        console.print(f"latency plot written to {plot}")
    if report.verified is False:
        raise typer.Exit(2)

"""A load test's results as a summary table, a JSON document and a latency plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from creditgate.server.loadtest.runner import PERCENTILES, LoadReport
from rich.table import Table


def as_json(report: LoadReport) -> dict[str, Any]:
    settings = report.settings
    return {
        "target": settings.target,
        "mode": settings.mode,
        "processes": settings.processes,
        "concurrency": settings.concurrency,
        "rate": settings.rate,
        "batch_size": settings.batch_size if settings.mode == "batch" else 1,
        "customers": settings.customers,
        "skew": settings.skew,
        "mix": {choice.label(): choice.weight for choice in report.mix},
        "elapsed_s": round(report.elapsed_s, 3),
        "setup_s": round(report.setup_s, 3),
        "calls": report.calls,
        "calls_per_s": round(report.calls_per_s, 1),
        "decisions": report.decisions,
        "decisions_per_s": round(report.decisions_per_s, 1),
        "latency_ms": {
            **{_name(p): report.latency_ms(p) for p in PERCENTILES},
            "max": report.histogram.get_max_value() / 1000,
            "mean": round(report.histogram.get_mean_value() / 1000, 3),
        },
        "allowed": report.allowed,
        "denied": report.denied,
        "errors": report.errors,
        "credits_charged": report.charged,
        "balance_drop": report.balance_drop,
        "verified": report.verified,
        **report.extra,
    }


def summary_table(report: LoadReport) -> Table:
    table = Table("", "", title=f"creditgate loadtest: {report.settings.mode} against {report.settings.target}")
    unit = "calls" if report.settings.mode != "batch" else f"batches of {report.settings.batch_size}"
    table.add_row("throughput", f"{report.calls_per_s:,.0f} {unit}/s")
    if report.settings.mode == "batch":
        table.add_row("decisions", f"{report.decisions_per_s:,.0f}/s")
    for percentile in PERCENTILES:
        table.add_row(f"latency {_name(percentile)}", f"{report.latency_ms(percentile):.3f} ms")
    table.add_row("latency max", f"{report.histogram.get_max_value() / 1000:.3f} ms")
    table.add_row("calls", f"{report.calls:,} in {report.elapsed_s:.2f} s")
    table.add_row("allowed / denied", f"{report.allowed:,} / {report.denied:,}")
    errors = ", ".join(f"{name} {count:,}" for name, count in sorted(report.errors.items())) or "0"
    table.add_row("errors", errors)
    if report.verified is None:
        check = "not checked"
    elif report.verified:
        check = f"[green]ok[/green]: {report.charged:,} credits charged = balance drop"
    else:
        check = f"[red]MISMATCH[/red]: {report.charged:,} charged, balances dropped by {report.balance_drop:,}"
    table.add_row("charged vs balances", check)
    return table


def plot(report: LoadReport, path: Path) -> None:
    """Latency by percentile, on the usual HdrHistogram axis (99%, 99.9%, ... spread out)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    points = [
        (item.percentile_level_iterated_to, item.value_iterated_to / 1000)
        for item in report.histogram.get_percentile_iterator(5)
        if item.percentile_level_iterated_to < 100
    ]
    figure, axes = pyplot.subplots(figsize=(8, 4.5))
    axes.plot([1 / (1 - p / 100) for p, _ in points], [ms for _, ms in points], drawstyle="steps-post")
    axes.set_xscale("log")
    ticks = [1, 2, 10, 100, 1000, 10000]
    axes.set_xticks(ticks, ["0%", "50%", "90%", "99%", "99.9%", "99.99%"])
    axes.set_xlabel("percentile")
    axes.set_ylabel("latency (ms)")
    axes.set_title(
        f"{report.settings.mode}: {report.calls_per_s:,.0f} calls/s, {report.settings.concurrency} in flight"
    )
    axes.grid(True, which="both", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    pyplot.close(figure)


def _name(percentile: float) -> str:
    return f"p{percentile:g}".replace(".", "")

"""Writes bench/RESULTS.md and bench/latency_vs_throughput.png from the results of bench/run.py."""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any

ROWS = [
    ("noop", "ceiling: no-op MeteringService (grpc.aio + uvloop), creditgate loadtest"),
    ("h2load-noop", "ceiling measured with h2load (C, gRPC framing)"),
    ("h2load-one-redis-call", "reference: the no-op awaiting one Redis PING over creditgate's wire, h2load"),
    ("cg-hot", "creditgate CheckAndDebit, 1 hot customer"),
    ("cg-many", "creditgate CheckAndDebit, 10,000 customers"),
    ("h2load-cg-hot", "creditgate CheckAndDebit, 1 hot customer, h2load"),
    ("h2load-cg-batch100", "creditgate CheckAndDebitBatch, 100 per call, 1 hot customer, h2load (4 x 4 streams)"),
    ("cg-reserve-commit", "creditgate Reserve + Commit, 10,000 customers"),
    ("cg-batch100", "creditgate CheckAndDebitBatch, 100 per call, 10,000 customers"),
    ("pg-hot", "PostgreSQL check-then-debit (FOR UPDATE), 1 hot customer"),
    ("pg-many", "PostgreSQL check-then-debit (FOR UPDATE), 10,000 customers"),
    ("cg-many@half", "creditgate at half its throughput (open loop)"),
    ("noop@half", "no-op at the same rate (open loop)"),
    ("h2load-cg@half", "creditgate at half its h2load throughput, 1 hot customer (h2load --rps, open loop)"),
    ("h2load-noop@half", "no-op at the same rate (h2load --rps, open loop)"),
    ("h2load8-noop", "no-op, 1 process, h2load 8 x 8 streams"),
    ("h2load8-noop-2p", "no-op, 2 processes on one port, h2load 8 x 8 streams"),
    ("h2load8-cg-hot", "creditgate CheckAndDebit, 1 hot customer, 1 process, h2load 8 x 8 streams"),
    ("h2load8-cg-hot-2w", "creditgate CheckAndDebit, 1 hot customer, `serve --workers 2`, h2load 8 x 8 streams"),
]


def med(rows: list[dict[str, Any]], key: str, sub: str | None = None) -> float:
    return statistics.median(float(row[key][sub] if sub else row[key]) for row in rows)


def _one_call_line(rows: dict[str, list[dict[str, Any]]], h2_noop: float, h2_cg: float) -> list[str]:
    if "h2load-one-redis-call" not in rows:
        return []
    one_call = med(rows["h2load-one-redis-call"], "calls_per_s")
    return [
        f"One Redis round trip per call (the no-op awaiting a PING over creditgate's wire, h2load): {one_call:,.0f}"
        f" calls/s, {one_call / h2_noop:.0%} of the no-op; creditgate's own work on top of that round trip leaves"
        f" {h2_cg / one_call:.0%} of it.",
        "",
    ]


def _workers_line(rows: dict[str, list[dict[str, Any]]]) -> list[str]:
    names = ("h2load8-noop", "h2load8-noop-2p", "h2load8-cg-hot", "h2load8-cg-hot-2w")
    if not all(name in rows for name in names):
        return []
    noop, noop2, cg, cg2 = (med(rows[name], "calls_per_s") for name in names)
    return [
        f"Two processes on one port (h2load, 8 connections x 8 streams): `serve --workers 2` {cg2:,.0f} calls/s,"
        f" {cg2 / cg:.2f}x creditgate on 1 process ({cg:,.0f}); the no-op on 2 processes {noop2:,.0f},"
        f" {noop2 / noop:.2f}x its 1 process ({noop:,.0f}). creditgate / no-op: {cg2 / noop2:.0%} on 2 processes each,"
        f" {cg / noop:.0%} on 1.",
        "",
    ]


def _gateway_line(rows: dict[str, list[dict[str, Any]]]) -> list[str]:
    if "gateway-nginx-creditgate" not in rows:
        return []
    direct = med(rows["gateway-nginx-direct"], "calls_per_s")
    metered = med(rows["gateway-nginx-creditgate"], "calls_per_s")
    return [
        "At the gateway (h2load --h1, 16 connections, GET /v1/contacts/search as examples/routes.yaml meters it):"
        f" nginx with creditgate's auth_request (examples/nginx.conf) {metered:,.0f} requests/s, nginx straight to"
        f" the upstream {direct:,.0f}: {metered / direct:.0%}.",
        "",
    ]


def write_report(results: dict[str, Any], out: Path) -> None:
    rows = results["rows"]
    m = results["machine"]
    s = results["settings"]
    lines = [
        "# creditgate benchmark",
        "",
        f"Command: `{results['command']}` (bench/run.py), started {results['started']}, took {results['minutes']} min.",
        f"Machine: {m['nproc']} cores ({m['cpu']}), {m['memory_gib']} GiB, Python {m['python']}, {m['redis']}.",
        f"Load average before / after: {', '.join(f'{x:.2f}' for x in m['load_average_before'])} /"
        f" {', '.join(f'{x:.2f}' for x in results['load_average_after'])}.",
        "",
        f"Load: `creditgate loadtest`, {s['load_processes']} processes of grpc.aio clients, {s['concurrency']} calls in"
        f" flight (closed loop) unless stated, mix `{s['mix']}`, {s['seconds']} s per run, {s['rounds']} rounds"
        " run one after another through every row (so the rows of one round share the machine's state);"
        " figures are medians of the rounds. The server, Redis, PostgreSQL and the load generator share the same"
        " cores. h2load rows: nghttp2's h2load (Debian nghttp2-client), 4 connections x 16 streams, gRPC framing.",
        "",
        "| row | decisions/s | calls/s | p50 ms | p99 ms | p99.9 ms | errors |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for key, label in ROWS:
        if key not in rows:
            continue
        data = rows[key]
        if key.startswith("h2load"):
            rate = med(data, "calls_per_s")
            decided = med(data, "decisions_per_s") if "decisions_per_s" in data[0] else rate
            latency = (
                " | ".join(f"{med(data, 'latency_ms', q):.2f}" for q in ("p50", "p99", "p999"))
                if "latency_ms" in data[0]
                else " |  | "
            )
            lines.append(f"| {label} | {decided:,.0f} | {rate:,.0f} | {latency} | |")
            continue
        errors = sum(sum(row["errors"].values()) for row in data)
        lines.append(
            f"| {label} | {med(data, 'decisions_per_s'):,.0f} | {med(data, 'calls_per_s'):,.0f} |"
            f" {med(data, 'latency_ms', 'p50'):.2f} | {med(data, 'latency_ms', 'p99'):.2f} |"
            f" {med(data, 'latency_ms', 'p999'):.2f} | {errors} |"
        )
    noop = med(rows["noop"], "decisions_per_s")
    many = med(rows["cg-many"], "decisions_per_s")
    hot = med(rows["cg-hot"], "decisions_per_s")
    pg_many = med(rows["pg-many"], "decisions_per_s")
    pg_hot = med(rows["pg-hot"], "decisions_per_s")
    batch = med(rows["cg-batch100"], "decisions_per_s")
    half_p99 = med(rows["cg-many@half"], "latency_ms", "p99")
    h2_noop = med(rows["h2load-noop"], "calls_per_s")
    h2_cg = med(rows["h2load-cg-hot"], "calls_per_s")
    h2_batch = med(rows["h2load-cg-batch100"], "decisions_per_s") if "h2load-cg-batch100" in rows else 0.0
    h2_half_p99 = med(rows["h2load-cg@half"], "latency_ms", "p99") if "h2load-cg@half" in rows else float("nan")
    lag = results["flusher_lag_ms"]
    store = results["store"]
    memory = results["memory"]
    peak = max(many, hot, batch)
    lines += [
        "",
        "## Against the figures of issue #6",
        "",
        "| figure | target | measured | met |",
        "|---|---|---|---|",
        _goal("CheckAndDebit / no-op ceiling (10,000 customers, loadtest)", ">= 70%", many / noop, 0.70),
        _goal("CheckAndDebit / no-op ceiling (1 hot customer, loadtest)", ">= 70%", hot / noop, 0.70),
        _goal("CheckAndDebit / no-op ceiling (1 hot customer, h2load)", ">= 70%", h2_cg / h2_noop, 0.70),
        f"| p99 at half of creditgate's throughput ({many / 2:,.0f}/s, open loop, loadtest) | <= 2 ms |"
        f" {half_p99:.2f} ms | {'yes' if half_p99 <= 2 else 'no'} |",
        f"| p99 at half of creditgate's h2load throughput ({h2_cg / 2:,.0f}/s, h2load --rps) | <= 2 ms |"
        f" {h2_half_p99:.2f} ms | {'yes' if h2_half_p99 <= 2 else 'no'} |",
        _goal("creditgate / PostgreSQL (10,000 customers)", ">= 5x", many / pg_many, 5, times=True),
        _goal("creditgate / PostgreSQL (1 hot customer)", ">= 5x", hot / pg_hot, 5, times=True),
        _goal("CheckAndDebitBatch(100) / unary decisions/s (loadtest)", ">= 10x", batch / many, 10, times=True),
        _goal("CheckAndDebitBatch(100) / unary decisions/s (h2load)", ">= 10x", h2_batch / h2_cg, 10, times=True),
        f"| flusher lag p99 during the 10,000-customer runs ({lag['samples']} samples every 50 ms) | <= 1 s |"
        f" {lag['p99']} ms (max {lag['max']} ms) | {'yes' if lag['p99'] <= 1000 else 'no'} |",
        _goal(
            f"SQLite store absorbs (transactions of {store['batch']:,}"
            + (
                f", a flusher round draining a backlog: {store['per_stream']:,} from each of {store['streams']} streams"
                if "per_stream" in store
                else ""
            )
            + f", over {store.get('customers', 1):,} customers, into {store.get('prefill', 0):,} entries)"
            f" / peak decision rate ({peak:,.0f}/s)",
            ">= 3x",
            store["records_per_s"] / peak,
            3,
            times=True,
        ),
        f"| Redis memory per customer (plan, {memory['buckets']} buckets, counters) | <= 2 KB |"
        f" {memory['total_bytes']:,} bytes | {'yes' if memory['total_bytes'] <= 2048 else 'no'} |",
        "",
        f"Overspend, 4,000 concurrent 1-credit debits against 2,500 credits: creditgate charged"
        f" {results['overspend']['creditgate']['charged']:,} (overspend"
        f" {results['overspend']['creditgate']['overspend']}), PostgreSQL FOR UPDATE charged"
        f" {results['overspend']['postgresql']['charged']:,} (overspend"
        f" {results['overspend']['postgresql']['overspend']}).",
        "",
        *_cost_lines(results, rows, h2_cg, h2_batch),
        *_one_call_line(rows, h2_noop, h2_cg),
        *_workers_line(rows),
        *_gateway_line(rows),
        f"Redis limit, redis-benchmark EVALSHA of the same decide script (50 clients, random request ids):"
        f" {results['evalsha']['P1']:,.0f}/s, pipelined 16: {results['evalsha']['P16']:,.0f}/s"
        + (
            f" ({results['evalsha']['charged']:,} of its {results['evalsha']['calls']:,} calls charged a credit)."
            if "charged" in results["evalsha"]
            else "."
        ),
        "",
        f"Memory per customer (MEMORY USAGE, bytes): {json.dumps(memory['keys'])}. Idempotency keys (one per"
        " request_id, 24 h) are not counted: they are per request, not per customer"
        + (
            f"; one takes {memory['request_answer_bytes']} bytes (MEMORY USAGE of an answer remembered under a"
            " UUID request_id) for as long as it is kept."
            if "request_answer_bytes" in memory
            else "."
        ),
        "",
        f"One-time setup through AdminService (seconds): {json.dumps(results['setup_s'])}.",
        "",
        "![latency vs throughput](latency_vs_throughput.png)",
        "",
    ]
    if not results["reserve_commit"]:
        lines += ["Reserve + Commit: the server answered UNIMPLEMENTED, so that row is missing.", ""]
    (out / "RESULTS.md").write_text("\n".join(lines) + "\n" + _notes(out))
    plot(results, out / "latency_vs_throughput.png")


def _cost_lines(
    results: dict[str, Any], rows: dict[str, list[dict[str, Any]]], h2_cg: float, h2_batch: float
) -> list[str]:
    """Issue 21's figures: what a decision costs, each beside the no-op's in the same run (bench/cost.py)."""
    if "cost" not in results:
        return []
    cost = results["cost"]
    cpu, buckets = cost["cpu"], cost["buckets"]
    noop, cg = cpu["median"]["noop"], cpu["median"]["creditgate"]
    redis_us = cg["redis_cpu_us_per_call"]
    lone_gap = cg["lone_call_ms"] - noop["lone_call_ms"]
    half = rows.get("h2load-cg@half"), rows.get("h2load-noop@half")
    lines = [
        f"## What a decision costs (issue 21; bench/cost.py, {len(cpu['rounds']['noop'])} interleaved rounds, medians)",
        "",
        f"CPU per call: h2load, 4 connections x 8 streams, {cpu['calls']:,} CheckAndDebit calls of 1 hot customer"
        " per round and server; server CPU = utime + stime of the whole process tree from /proc (creditgate's"
        " flusher child included), Redis CPU from INFO cpu, both read after the flusher has caught up. Lone call:"
        f" the mean of {cpu['lone_calls']:,} sequential calls (h2load, 1 connection, 1 stream).",
        "",
        "| figure | no-op | creditgate | ratio or gap | target | met |",
        "|---|---:|---:|---:|---|---|",
        f"| server CPU per call (process tree) | {noop['server_cpu_us_per_call']:.0f} us |"
        f" {cg['server_cpu_us_per_call']:.0f} us | {cg['server_cpu_us_per_call'] / noop['server_cpu_us_per_call']:.2f}x"
        f" | <= 1.25x | {_met(cg['server_cpu_us_per_call'] <= 1.25 * noop['server_cpu_us_per_call'])} |",
        f"| Redis CPU per decision (32 in flight) | | {redis_us:.0f} us | {1e6 / redis_us:,.0f} decisions/s per"
        f" Redis core | <= 40 us | {_met(redis_us <= 40)} |",
        f"| one call in flight, mean | {noop['lone_call_ms']:.3f} ms | {cg['lone_call_ms']:.3f} ms |"
        f" +{lone_gap:.3f} ms | <= +0.15 ms | {_met(lone_gap <= 0.15)} |",
        f"| throughput, same load | {noop['calls_per_s']:,.0f}/s | {cg['calls_per_s']:,.0f}/s |"
        f" {cg['calls_per_s'] / noop['calls_per_s']:.2f} | >= 0.70 |"
        f" {_met(cg['calls_per_s'] >= 0.7 * noop['calls_per_s'])} |",
    ]
    if half[0] and half[1]:
        cg_p99, noop_p99 = med(half[0], "latency_ms", "p99"), med(half[1], "latency_ms", "p99")
        lines.append(
            f"| p99 at half of creditgate's h2load rate (h2load --rps) | {noop_p99:.2f} ms | {cg_p99:.2f} ms |"
            f" {cg_p99 / noop_p99:.2f}x | <= 1.5x | {_met(cg_p99 <= 1.5 * noop_p99)} |"
        )
    if h2_batch:
        lines.append(
            f"| CheckAndDebitBatch (100 per call) / unary, decisions/s (h2load) | | {h2_batch:,.0f} / {h2_cg:,.0f} |"
            f" {h2_batch / h2_cg:.1f}x | >= 10x | {_met(h2_batch >= 10 * h2_cg)} |"
        )
    med_b = buckets["median"]
    lines += [
        "",
        f"A customer with {buckets['buckets']:,} live one-credit buckets (Basic plan, its 2,500-credit grant spent"
        f" first, so the {buckets['buckets']:,} stay) against a fresh Basic customer: {buckets['calls']} sequential"
        " calls per operation, customer and round; Redis us per call: the time inside its commands (INFO"
        " commandstats, the flusher's included) when the run measured it, else its CPU (INFO cpu).",
        "",
        f"| operation | Redis us per call, fresh | Redis us per call, {buckets['buckets']:,} buckets | ratio |"
        f" call ms, fresh | call ms, {buckets['buckets']:,} buckets |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    # Redis's time inside commands (INFO commandstats) when measured; else its CPU (INFO cpu), which a busy Redis's
    # own background work inflates for rows this short.
    measure = "redis_command_us_per_call" if "redis_command_us_per_call" in med_b["check_and_debit/fresh"] else None
    for operation, label in (
        ("check_and_debit", "CheckAndDebit"),
        ("reserve_commit", "Reserve + Commit"),
        ("get_balance", "GetBalance (every bucket listed)"),
    ):
        fresh, many = med_b[f"{operation}/fresh"], med_b[f"{operation}/{buckets['buckets']}_buckets"]
        key = measure or "redis_cpu_us_per_call"
        lines.append(
            f"| {label} | {fresh[key]:,.1f} | {many[key]:,.1f} | {many[key] / fresh[key]:.1f}x |"
            f" {fresh['call_ms']:.2f} | {many['call_ms']:.2f} |"
        )
    return [*lines, ""]


def _met(ok: bool) -> str:
    return "yes" if ok else "no"


def _goal(label: str, target: str, ratio: float, threshold: float, *, times: bool = False) -> str:
    shown = f"{ratio:.1f}x" if times else f"{ratio:.0%}"
    return f"| {label} | {target} | {shown} | {'yes' if ratio >= threshold else 'no'} |"


def _notes(out: Path) -> str:
    """Hand-written notes kept below the generated part (bench/NOTES.md)."""
    notes = out / "NOTES.md"
    return notes.read_text() if notes.exists() else ""


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(figsize=(8, 4.5))
    for name, points in results["curves"].items():
        axes.plot([x for x, _ in points], [y for _, y in points], marker="o", label=name)
    axes.set_xlabel("decisions per second (closed loop: 1, 4, 16, 64 in flight)")
    axes.set_ylabel("p99 latency (ms)")
    axes.set_yscale("log")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend()
    axes.set_title("CheckAndDebit latency vs throughput, same machine, same load")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    pyplot.close(figure)


if __name__ == "__main__":
    folder = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent
    write_report(json.loads((folder / "results.json").read_text()), folder)

"""What a decision costs (issue 21): CPU per call of the no-op and of creditgate's whole process tree (its flusher
child included), read from /proc, and of redis-server (INFO cpu), before and after h2load; a lone call's latency;
and a customer with thousands of live buckets against a fresh one. bench/run.py calls these with its own servers;
run on its own (`python bench/cost.py`) it starts Redis, creditgate and the no-op itself and prints JSON."""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
import redis
from creditgate.v1 import admin_pb2, admin_pb2_grpc, metering_pb2, metering_pb2_grpc

DEBIT_PATH = "/creditgate.v1.MeteringService/CheckAndDebit"
# Per round and server: h2load over 4 connections x 8 streams, as issue 21 measured.
CPU_CALLS = 15_000
LONE_CALLS = 2_000
MANY_BUCKETS = 3_000
# Sequential calls per operation, customer and round in the many-bucket rows (a decision of the old bucket
# layout on 3,000 buckets takes ~15 ms of Redis, so this keeps a round short). The 3,000 one-credit top-ups stay
# live: the plan's 2,500-credit grant comes first in spending order (it expires, they do not) and pays for every
# call of every round.
BUCKET_CALLS = 200
TICK = os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(pid: int) -> float:
    """utime + stime of `pid` and every live descendant (threads are counted in their process)."""
    parents: dict[int, int] = {}
    times: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: fields start after its last ')'.
        fields = stat[stat.rindex(")") + 2 :].split()
        parents[int(entry)] = int(fields[1])
        times[int(entry)] = int(fields[11]) + int(fields[12])
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        total += times.get(current, 0)
        todo.extend(child for child, parent in parents.items() if parent == current)
    return total / TICK


def redis_cpu_seconds(client: redis.Redis) -> float:
    """used_cpu_user + used_cpu_sys of redis-server (INFO cpu: its own getrusage, the figure /proc holds, in
    microseconds rather than /proc's 10 ms ticks, which a row of 200 calls of ~100 us could not resolve)."""
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def redis_command_seconds(client: redis.Redis) -> float:
    """The time Redis spent inside commands (INFO commandstats, every command's usec summed): the work calls
    cause, without the CPU a busy Redis spends on its own (expiry cycles, the event loop, other clients' idle
    connections), which in a long bench run can outweigh a few hundred sequential calls."""
    stats = client.info("commandstats")
    return sum(float(entry["usec"]) for entry in stats.values()) / 1e6


def h2load_calls(target: str, body: bytes, calls: int, clients: int, streams: int) -> dict[str, float]:
    """`calls` CheckAndDebit calls through h2load (gRPC framing): the rate and h2load's mean time per request."""
    workdir = Path(tempfile.mkdtemp(prefix="h2load-cost-"))
    try:
        (workdir / "body.bin").write_bytes(b"\x00" + len(body).to_bytes(4, "big") + body)
        out = subprocess.run(
            [
                "h2load",
                "-n",
                str(calls),
                "-c",
                str(clients),
                "-m",
                str(streams),
                "-t",
                "1",
                "-d",
                str(workdir / "body.bin"),
                "-H",
                "content-type: application/grpc",
                "-H",
                "te: trailers",
                f"http://{target}{DEBIT_PATH}",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    finally:
        shutil.rmtree(workdir)
    rate = float(re.search(r"finished in [\d.]+m?s, ([\d.]+) req/s", out).group(1))  # type: ignore[union-attr]
    mean = re.search(r"time for request:\s+\S+\s+\S+\s+([\d.]+)(us|ms|s)\b", out)
    assert mean, out
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[mean.group(2)]
    succeeded = int(re.search(r"requests: .* (\d+) succeeded", out).group(1))  # type: ignore[union-attr]
    return {"calls_per_s": rate, "mean_ms": float(mean.group(1)) * scale, "succeeded": succeeded}


def cpu_rows(
    noop: tuple[str, int],
    creditgate: tuple[str, int],
    redis_client: redis.Redis,
    customer: str,
    rounds: int,
    settle: Any,
) -> dict[str, Any]:
    """Per round, interleaved: the no-op then creditgate, each under CPU_CALLS calls (4 x 8 streams), then each's
    lone call (LONE_CALLS sequential calls, 1 connection, 1 stream). CPU per call from /proc; medians of rounds."""
    body = metering_pb2.CheckAndDebitRequest(customer_id=customer, feature="email_unlock").SerializeToString()
    rows: dict[str, list[dict[str, float]]] = {}
    for _ in range(rounds):
        for name, (target, pid) in (("noop", noop), ("creditgate", creditgate)):
            settle()
            server_before, redis_before = tree_cpu_seconds(pid), redis_cpu_seconds(redis_client)
            loaded = h2load_calls(target, body, CPU_CALLS, 4, 8)
            # The flusher's catch-up on these calls is part of what they cost.
            settle()
            server_cpu = tree_cpu_seconds(pid) - server_before
            redis_cpu = redis_cpu_seconds(redis_client) - redis_before
            lone = h2load_calls(target, body, LONE_CALLS, 1, 1)
            row = {
                "calls_per_s": loaded["calls_per_s"],
                "server_cpu_us_per_call": server_cpu / CPU_CALLS * 1e6,
                "redis_cpu_us_per_call": redis_cpu / CPU_CALLS * 1e6,
                "lone_call_ms": lone["mean_ms"],
                "succeeded": loaded["succeeded"],
            }
            rows.setdefault(name, []).append(row)
            print(
                f"  cost {name}: {row['server_cpu_us_per_call']:.0f} us server CPU/call,"
                f" {row['redis_cpu_us_per_call']:.0f} us Redis CPU/call, {row['calls_per_s']:,.0f} calls/s,"
                f" lone call {row['lone_call_ms']:.3f} ms",
                flush=True,
            )
    return {"calls": CPU_CALLS, "lone_calls": LONE_CALLS, "rounds": rows, "median": _medians(rows)}


def _medians(rows: dict[str, list[dict[str, float]]]) -> dict[str, dict[str, float]]:
    return {name: {key: statistics.median(row[key] for row in runs) for key in runs[0]} for name, runs in rows.items()}


def create_bucket_customers(target: str, prefix: str) -> tuple[str, str]:
    """A fresh Basic customer and one with MANY_BUCKETS one-credit top-ups, both through AdminService."""
    fresh, many = f"{prefix}-fresh", f"{prefix}-{MANY_BUCKETS}"
    with grpc.insecure_channel(target) as channel:
        admin = admin_pb2_grpc.AdminServiceStub(channel)
        for customer in (fresh, many):
            admin.CreateCustomer(admin_pb2.CreateCustomerRequest(customer_id=customer, name=customer))
            admin.CreateSubscription(admin_pb2.CreateSubscriptionRequest(customer_id=customer, plan="basic"))
        admin.TopUp(admin_pb2.TopUpRequest(customer_id=fresh, credits=1, request_id=f"{fresh}-1"))
        for n in range(MANY_BUCKETS):
            admin.TopUp(admin_pb2.TopUpRequest(customer_id=many, credits=1, request_id=f"{many}-{n}"))
    return fresh, many


def bucket_rows(
    target: str, redis_client: redis.Redis, customers: tuple[str, str], rounds: int, settle: Any
) -> dict[str, Any]:
    """Redis CPU per call and mean call time of BUCKET_CALLS sequential calls per operation, for the fresh customer
    and the one with MANY_BUCKETS buckets, interleaved per round; medians of the rounds."""
    rows: dict[str, list[dict[str, float]]] = {}
    with grpc.insecure_channel(target) as channel:
        metering = metering_pb2_grpc.MeteringServiceStub(channel)

        def debit(customer: str) -> None:
            answer = metering.CheckAndDebit(
                metering_pb2.CheckAndDebitRequest(customer_id=customer, feature="email_unlock")
            )
            assert answer.allowed, answer

        def reserve_commit(customer: str) -> None:
            held = metering.Reserve(metering_pb2.ReserveRequest(customer_id=customer, feature="email_unlock"))
            assert held.allowed, held
            metering.Commit(metering_pb2.CommitRequest(reservation_id=held.reservation_id))

        def balance(customer: str) -> None:
            metering.GetBalance(metering_pb2.GetBalanceRequest(customer_id=customer))

        operations = {"check_and_debit": debit, "reserve_commit": reserve_commit, "get_balance": balance}
        for _ in range(rounds):
            for operation, call in operations.items():
                for label, customer in zip(("fresh", f"{MANY_BUCKETS}_buckets"), customers, strict=True):
                    settle()
                    commands_before = redis_command_seconds(redis_client)
                    redis_before, started = redis_cpu_seconds(redis_client), time.perf_counter()
                    for _ in range(BUCKET_CALLS):
                        call(customer)
                    elapsed = time.perf_counter() - started
                    settle()
                    redis_cpu = redis_cpu_seconds(redis_client) - redis_before
                    commands = redis_command_seconds(redis_client) - commands_before
                    row = {
                        "redis_cpu_us_per_call": redis_cpu / BUCKET_CALLS * 1e6,
                        "redis_command_us_per_call": commands / BUCKET_CALLS * 1e6,
                        "call_ms": elapsed / BUCKET_CALLS * 1000,
                    }
                    rows.setdefault(f"{operation}/{label}", []).append(row)
                    print(
                        f"  {operation} {label}: Redis {row['redis_cpu_us_per_call']:,.0f} us CPU/call,"
                        f" {row['redis_command_us_per_call']:,.0f} us in commands/call,"
                        f" {row['call_ms']:.2f} ms/call",
                        flush=True,
                    )
    return {"buckets": MANY_BUCKETS, "calls": BUCKET_CALLS, "rounds": rows, "median": _medians(rows)}


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import run  # bench/run.py: process handling shared with `make bench`

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, help="write the figures here as JSON")
    parser.add_argument("--only-buckets", action="store_true", help="only the many-bucket rows")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="creditgate-cost-"))
    processes = run.Processes(workdir)
    try:
        redis_port, _ = run.start_redis(processes, workdir, "redis")
        redis_url = f"redis://127.0.0.1:{redis_port}/0"
        cg, noop = (f"127.0.0.1:{run.free_port()}" for _ in range(2))
        env = run.python_env()
        creditgate = processes.start(
            "creditgate",
            [sys.executable, "-m", "creditgate.server", "serve", "--catalog", str(run.CATALOG)],
            {
                **env,
                "CREDITGATE_LISTEN": cg,
                "CREDITGATE_REDIS_URL": redis_url,
                "CREDITGATE_DATA_DIR": str(workdir / "cg"),
                "CREDITGATE_LOG_FORMAT": "json",
            },
        )
        noop_server = processes.start(
            "noop", [sys.executable, str(run.BENCH / "noop_server.py"), "--listen", noop], env
        )
        for target in (cg, noop):
            run.wait_port(int(target.rsplit(":", 1)[1]))
        time.sleep(2)
        results = measure(cg, creditgate.pid, noop, noop_server.pid, redis_url, args.rounds, not args.only_buckets)
    finally:
        processes.stop_all()
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


def measure(
    cg: str, cg_pid: int, noop: str, noop_pid: int, redis_url: str, rounds: int, cpu: bool = True
) -> dict[str, Any]:
    """Both parts of issue 21's figures, on servers that are already up."""
    import run  # bench/run.py
    from creditgate.server.loadtest.runner import LoadSettings, run_load

    run_load(
        LoadSettings(
            target=cg,
            customers=1,
            customer_prefix="cost",
            requests=1,
            credits_per_customer=10**9,
            features=run.MIX,
            processes=1,
        )
    )

    redis_client = redis.Redis.from_url(redis_url)

    def settle() -> None:
        run.wait_outbox_empty(redis_url)

    results: dict[str, Any] = {}
    if cpu:
        print("cost: CPU per call (no-op, creditgate process tree, Redis) and a lone call's latency", flush=True)
        results["cpu"] = cpu_rows((noop, noop_pid), (cg, cg_pid), redis_client, "cost-0", rounds, settle)
    print(f"cost: a customer with {MANY_BUCKETS:,} live buckets against a fresh one", flush=True)
    started = time.perf_counter()
    customers = create_bucket_customers(cg, "buckets")
    setup_s = time.perf_counter() - started
    buckets = bucket_rows(cg, redis_client, customers, rounds, settle)
    buckets["setup_s"] = setup_s
    results["buckets"] = buckets
    return results


if __name__ == "__main__":
    main()

"""`make bench` (the cluster part, also `python bench/cluster.py`): one Redis node against a 3-primary + 3-replica
Redis Cluster, and the cost of CREDITGATE_REDIS_WAIT_REPLICAS=1, with the same load in the same run.

Rows (rounds interleaved, medians): decisions/s and p50/p99 of the loadtest (64 in flight, many customers spread
over every primary); Redis CPU per decision (utime + stime of each primary's process from /proc, over the EVALSHA
calls it ran, from INFO commandstats) per primary; keys per primary. Writes bench/CLUSTER.md and cluster.json.

On one 2-core machine all six Redis nodes, the sidecar and the load generator share two cores: the cluster cannot
show more decisions per second here than one node (that is what more machines buy). What it shows is the cost per
decision on each primary, which says how many decisions a second one Redis core carries, and what WAIT 1 adds."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis
from creditgate.server.engine.cluster import ClusterWire, new_cluster_client
from creditgate.server.engine.wire import pack_command
from creditgate.server.loadtest.report import as_json
from creditgate.server.loadtest.runner import LoadSettings, run_load
from run import (
    BENCH,
    CATALOG,
    MIX,
    Processes,
    free_port,
    machine,
    python_env,
    start_redis,
    wait_outbox_empty,
    wait_port,
)

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# The client comparison: a one-key script, this many calls, this many in flight.
CLIENT_SCRIPT = "redis.call('INCR', KEYS[1]) return 1"
CLIENT_CALLS = 30_000
CLIENT_IN_FLIGHT = 64


def start_cluster(processes: Processes, workdir: Path) -> dict[int, subprocess.Popen[bytes]]:
    """3 primaries + 3 replicas; returns every node's process by port."""
    nodes = dict(
        start_redis(
            processes,
            workdir,
            f"cluster-{n}",
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-port",
            str(free_port()),
            "--repl-diskless-sync-delay",
            "0",
        )
        for n in range(6)
    )
    create = ["redis-cli", "--cluster", "create", *(f"127.0.0.1:{port}" for port in nodes)]
    subprocess.run(
        [*create, "--cluster-replicas", "1", "--cluster-yes"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready = [redis.Redis(port=port).cluster("INFO")["cluster_state"] for port in nodes]
        replicas = [redis.Redis(port=port).info("replication").get("connected_slaves", 0) for port in primaries(nodes)]
        if set(ready) == {"ok"} and replicas == [1, 1, 1]:
            return nodes
        time.sleep(0.2)
    raise RuntimeError("the cluster did not come up")


def primaries(nodes: dict[int, Any]) -> list[int]:
    return sorted(port for port in nodes if redis.Redis(port=port).info("replication")["role"] == "master")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def script_calls(port: int) -> int:
    stats = redis.Redis(port=port).info("commandstats")
    return sum(int(stats.get(f"cmdstat_{name}", {}).get("calls", 0)) for name in ("evalsha", "eval", "fcall"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--customers", type=int, default=3000)
    parser.add_argument("--out", type=Path, default=BENCH)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="creditgate-cluster-bench-"))
    processes = Processes(workdir)
    try:
        results = run(args, processes, workdir)
    finally:
        processes.stop_all()
    (args.out / "cluster.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "CLUSTER.md").write_text(render(results))
    print(render(results))


def run(args: argparse.Namespace, processes: Processes, workdir: Path) -> dict[str, Any]:
    single_port, single = start_redis(processes, workdir, "single")
    nodes = start_cluster(processes, workdir)
    cluster_url = ",".join(f"redis://127.0.0.1:{port}/0" for port in nodes)
    stacks = {
        "single node": (f"redis://127.0.0.1:{single_port}/0", {single_port: single}, {}),
        "3-primary cluster": (cluster_url, nodes, {}),
        "3-primary cluster, WAIT 1": (cluster_url, nodes, {"CREDITGATE_REDIS_WAIT_REPLICAS": "1"}),
    }
    targets: dict[str, str] = {}
    for name, (url, _, extra) in stacks.items():
        target = targets[name] = f"127.0.0.1:{free_port()}"
        processes.start(
            "creditgate-" + name.replace(" ", "-").replace(",", ""),
            [sys.executable, "-m", "creditgate.server", "serve", "--catalog", str(CATALOG)],
            {
                **python_env(),
                "CREDITGATE_LISTEN": target,
                "CREDITGATE_REDIS_URL": url,
                "CREDITGATE_DATA_DIR": str(workdir / name.replace(" ", "-")),
                "CREDITGATE_LOG_FORMAT": "json",
                **extra,
            },
        )
        wait_port(int(target.rsplit(":", 1)[1]))

    def settings(name: str, **overrides: Any) -> LoadSettings:
        values: dict[str, Any] = {
            "target": targets[name],
            "features": MIX,
            "concurrency": args.concurrency,
            "duration_s": args.seconds,
            "processes": 2,
            "customers": args.customers,
            "customer_prefix": "bench" + str(list(stacks).index(name)),
            "setup": False,
            "verify": False,
        }
        return LoadSettings(**(values | overrides))

    print("setting up customers", flush=True)
    for name in stacks:
        run_load(settings(name, setup=True, requests=1))
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name in stacks}
    for round_ in range(args.rounds):
        print(f"round {round_ + 1}/{args.rounds}", flush=True)
        for name, (_, processes_by_port, _) in stacks.items():
            measured = primaries(processes_by_port) if len(processes_by_port) > 1 else list(processes_by_port)
            for port in measured:
                wait_outbox_empty(f"redis://127.0.0.1:{port}/0")
            cpu_before = {port: cpu_seconds(processes_by_port[port].pid) for port in measured}
            calls_before = {port: script_calls(port) for port in measured}
            result = as_json(run_load(settings(name)))
            per_primary = {
                str(port): {
                    "cpu_s": cpu_seconds(processes_by_port[port].pid) - cpu_before[port],
                    "script_calls": script_calls(port) - calls_before[port],
                }
                for port in measured
            }
            result["redis"] = per_primary
            rows[name].append(result)
            cpu_us = [1e6 * p["cpu_s"] / p["script_calls"] for p in per_primary.values() if p["script_calls"]]
            print(
                f"  {name}: {result['decisions_per_s']:,.0f} decisions/s, p50 {result['latency_ms']['p50']:.2f} ms,"
                f" p99 {result['latency_ms']['p99']:.2f} ms, errors {result['errors']},"
                f" Redis µs per script call per primary {[round(v, 1) for v in cpu_us]}",
                flush=True,
            )
    keys = {str(port): int(redis.Redis(port=port).dbsize()) for port in primaries(nodes)}
    clients = asyncio.run(compare_clients(cluster_url, args.rounds))
    return {
        "machine": machine(),
        "args": vars(args) | {"out": str(args.out)},
        "rows": rows,
        "keys_per_primary": keys,
        "clients": clients,
    }


async def compare_clients(url: str, rounds: int) -> dict[str, list[dict[str, float]]]:
    """The hot path's ClusterWire against redis-py's asyncio RedisCluster (the well-kept client, which creditgate
    uses off the hot path): this process's CPU per EVALSHA and calls/s, rounds interleaved."""
    cluster = new_cluster_client(url, 5)
    await cluster.initialize()
    sha = ""
    for node in cluster.get_primaries():
        sha = str(await cluster.execute_command("SCRIPT", "LOAD", CLIENT_SCRIPT, target_nodes=node))
    wire = ClusterWire(url, 5)
    keys = [f"bench:{{s{n}}}:calls" for n in range(256)]

    async def drive(call: Any) -> dict[str, float]:
        slots = asyncio.Semaphore(CLIENT_IN_FLIGHT)

        async def one(index: int) -> None:
            async with slots:
                await call(keys[index % len(keys)])

        started, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*(one(index) for index in range(CLIENT_CALLS)))
        return {
            "cpu_us_per_call": (time.process_time() - cpu) / CLIENT_CALLS * 1e6,
            "calls_per_s": CLIENT_CALLS / (time.perf_counter() - started),
        }

    results: dict[str, list[dict[str, float]]] = {"ClusterWire (creditgate)": [], "redis-py RedisCluster": []}
    try:
        for _ in range(rounds):
            results["ClusterWire (creditgate)"].append(
                await drive(lambda key: wire.call_for_key(key, lambda _: pack_command("EVALSHA", sha, 1, key)))
            )
            results["redis-py RedisCluster"].append(await drive(lambda key: cluster.evalsha(sha, 1, key)))
    finally:
        await wire.close()
        await cluster.aclose()
    return results


def render(results: dict[str, Any]) -> str:
    rows = results["rows"]
    lines = [
        "# Redis Cluster: one node against 3 primaries + 3 replicas, and WAIT 1",
        "",
        f"`python bench/cluster.py` (part of `make bench`), {results['args']['rounds']} rounds interleaved, medians;"
        f" loadtest {results['args']['concurrency']} in flight over 2 processes, {results['args']['customers']:,}"
        " customers per stack, email_unlock (1 credit). Machine: "
        + ", ".join(f"{k} {v}" for k, v in results["machine"].items()),
        "",
        "All six Redis nodes, the three sidecars and the load generator share this machine's cores: the cluster rows"
        " cannot show scale-out here; Redis CPU per decision is the figure that transfers to other machines.",
        "",
        "| stack | decisions/s | p50 ms | p99 ms | Redis CPU µs per decision, per primary | decisions/s a Redis core |",
        "|---|---|---|---|---|---|",
    ]
    for name, runs in rows.items():
        ports = list(runs[0]["redis"])
        per_primary = [
            statistics.median(1e6 * r["redis"][port]["cpu_s"] / max(1, r["redis"][port]["script_calls"]) for r in runs)
            for port in ports
        ]
        mean_us = statistics.mean(per_primary)
        lines.append(
            f"| {name} | {statistics.median(r['decisions_per_s'] for r in runs):,.0f}"
            f" | {statistics.median(r['latency_ms']['p50'] for r in runs):.2f}"
            f" | {statistics.median(r['latency_ms']['p99'] for r in runs):.2f}"
            f" | {' / '.join(f'{v:.0f}' for v in per_primary)} | {1e6 / mean_us:,.0f} |"
        )
    cluster, waited = rows["3-primary cluster"], rows["3-primary cluster, WAIT 1"]
    ratio = statistics.median(r["decisions_per_s"] for r in waited) / statistics.median(
        r["decisions_per_s"] for r in cluster
    )
    lines += [
        "",
        f"WAIT 1 keeps {ratio:.2f} of the cluster's decisions/s; its p99 is"
        f" {statistics.median(r['latency_ms']['p99'] for r in waited):.2f} ms against"
        f" {statistics.median(r['latency_ms']['p99'] for r in cluster):.2f} ms.",
        "",
        "Keys per primary after the run (customers spread over every primary): "
        + ", ".join(f"{port}: {count:,}" for port, count in results["keys_per_primary"].items()),
        "",
        f"The hot path's client: {CLIENT_CALLS:,} EVALSHA of a one-key script, {CLIENT_IN_FLIGHT} in flight, from"
        " one asyncio process (CPU of that process per call, medians):",
        "",
        "| client | client CPU µs per call | calls/s |",
        "|---|---|---|",
        *(
            f"| {name} | {statistics.median(r['cpu_us_per_call'] for r in runs):.0f}"
            f" | {statistics.median(r['calls_per_s'] for r in runs):,.0f} |"
            for name, runs in results["clients"].items()
        ),
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()

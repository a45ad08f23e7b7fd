"""`make bench`: the ceiling, creditgate, the PostgreSQL baseline and the Redis limit, in one run on this machine
with the same load settings; medians of 3 rounds, ratios within the run; writes bench/RESULTS.md and a plot."""

from __future__ import annotations

import argparse
import codecs
import contextlib
import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import grpc
import redis
from creditgate.server.loadtest.report import as_json
from creditgate.server.loadtest.runner import LoadSettings, run_load
from creditgate.v1 import metering_pb2, metering_pb2_grpc

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
CATALOG = REPO / "examples" / "apollo.yaml"
PG_BIN = Path("/usr/lib/postgresql/15/bin")
MIX = "email_unlock:1"  # one flat 1-credit feature everywhere, so every row does the same work
DEBIT_PATH = "/creditgate.v1.MeteringService/CheckAndDebit"
# The store benchmark writes into a ledger that already holds this many entries (a bench run flushes about as many).
STORE_PREFILL = 500_000
STORE_MEASURED = 100_000
REDIS_BENCHMARK_CALLS = 200_000


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_port(port: int, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port}")


class Processes:
    """Child processes of the bench, ended in reverse order."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.children: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        log = (self.workdir / f"{name}.log").open("wb")
        child = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
        self.children.append(child)
        return child

    def stop_all(self) -> None:
        self.stop(*reversed(self.children))

    def stop(self, *children: subprocess.Popen[bytes]) -> None:
        for child in children:
            child.terminate()
            try:
                child.wait(15)
            except subprocess.TimeoutExpired:
                child.kill()
            self.children.remove(child)


def start_redis(processes: Processes, workdir: Path, name: str, *extra: str) -> tuple[int, subprocess.Popen[bytes]]:
    """A benchmark Redis (no persistence: the bench measures decisions, not disk) named `name`, its files in
    workdir/name; `extra`: more redis-server arguments (the cluster's). Returns its port and process."""
    port = free_port()
    (workdir / name).mkdir()
    child = processes.start(
        name,
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir / name),
            *extra,
        ],
    )
    wait_port(port)
    return port, child


def start_postgres(processes: Processes, workdir: Path) -> str:
    data, port = workdir / "pg", free_port()
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.getuid() == 0 else []
    data.mkdir()
    if as_postgres:
        shutil.chown(workdir, "postgres")
        shutil.chown(data, "postgres")
    subprocess.run(
        [*as_postgres, str(PG_BIN / "initdb"), "-D", str(data), "-U", "bench", "-A", "trust"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    processes.start(
        "postgres",
        [
            *as_postgres,
            str(PG_BIN / "postgres"),
            "-D",
            str(data),
            "-p",
            str(port),
            "-k",
            str(workdir),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "max_connections=100",
            "-c",
            "synchronous_commit=off",
            "-c",
            "shared_buffers=256MB",
        ],
    )
    wait_port(port)
    time.sleep(1)
    return f"host=127.0.0.1 port={port} user=bench dbname=postgres"


def python_env() -> dict[str, str]:
    return {"PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}


class LagSampler:
    """Samples the age of the oldest entry still in any outbox stream (the flusher deletes what it wrote)."""

    def __init__(self, redis_url: str) -> None:
        self.client = redis.Redis.from_url(redis_url)
        self.samples_ms: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> LagSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        streams = [key for key in self.client.scan_iter(match="cg:*:outbox")]
        while not self._stop.wait(0.05):
            oldest = None
            for stream in streams:
                first = self.client.xrange(stream, count=1)
                if first:
                    ms = int(first[0][0].split(b"-")[0])
                    oldest = ms if oldest is None else min(oldest, ms)
            self.samples_ms.append(0 if oldest is None else max(0, int(time.time() * 1000) - oldest))


def two_workers(
    args: argparse.Namespace,
    processes: Processes,
    workdir: Path,
    redis_url: str,
    one_process: dict[str, str],
    rows: dict[str, list[dict[str, Any]]],
) -> None:
    """`serve --workers 2` against 2 no-op processes on one port (SO_REUSEPORT), and both stacks on one process,
    with h2load over 8 connections (the kernel spreads connections, not calls, over the processes). Started for
    these rows only, so that the other rows run beside no idle extra servers."""
    print("--workers 2: creditgate and the no-op on 2 processes each, h2load 8 x 8 streams", flush=True)
    env = python_env()
    cg2, noop2 = (f"127.0.0.1:{free_port()}" for _ in range(2))
    started = [
        processes.start(
            "creditgate-2-workers",
            [sys.executable, "-m", "creditgate.server", "serve", "--workers", "2", "--catalog", str(CATALOG)],
            {
                **env,
                "CREDITGATE_LISTEN": cg2,
                "CREDITGATE_REDIS_URL": redis_url,
                "CREDITGATE_DATA_DIR": str(workdir / "cg-2-workers"),
                "CREDITGATE_LOG_FORMAT": "json",
            },
        ),
        *(
            processes.start(f"noop-{n}", [sys.executable, str(BENCH / "noop_server.py"), "--listen", noop2], env)
            for n in range(2)
        ),
    ]
    try:
        for target in (cg2, noop2):
            wait_port(int(target.rsplit(":", 1)[1]))
        time.sleep(2)
        body = metering_pb2.CheckAndDebitRequest(customer_id="hot-0", feature="email_unlock").SerializeToString()
        targets = {
            "h2load8-noop": one_process["noop"],
            "h2load8-noop-2p": noop2,
            "h2load8-cg-hot": one_process["cg"],
            "h2load8-cg-hot-2w": cg2,
        }
        for _ in range(args.rounds):
            for name, target in targets.items():
                wait_outbox_empty(redis_url)
                rows.setdefault(name, []).append(h2load(target, DEBIT_PATH, body, int(args.seconds), 8, 8))
                print(f"  {name}: {rows[name][-1]['calls_per_s']:,.0f} calls/s", flush=True)
    finally:
        processes.stop(*started)


GATEWAY_PATH = "/v1/contacts/search"  # examples/routes.yaml: GET, contact_search, 1 credit
GATEWAY_CUSTOMER = "gateway-0"


def gateway_config(workdir: Path, auth_port: int, plain_port: int, upstream_port: int, forward_auth: str) -> Path:
    """One nginx: examples/nginx.conf (auth_request to creditgate) on auth_port, the same proxying without
    auth_request on plain_port, and the upstream both reach: a server that answers 200 itself."""
    site = (
        (REPO / "examples" / "nginx.conf")
        .read_text()
        .replace("127.0.0.1:8080", f"127.0.0.1:{auth_port}")
        .replace("127.0.0.1:3000", f"127.0.0.1:{upstream_port}")
        .replace("127.0.0.1:8081", forward_auth)
    )
    conf = workdir / "nginx.conf"
    conf.write_text(
        f"""{"user root;" if os.geteuid() == 0 else ""}
worker_processes 1;
pid {workdir}/nginx.pid;
error_log {workdir}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {workdir}/body;
    proxy_temp_path {workdir}/proxy;
    {site}
    server {{
        listen 127.0.0.1:{plain_port};
        location / {{
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_pass http://app;
        }}
    }}
    server {{
        listen 127.0.0.1:{upstream_port};
        location / {{ return 200 "upstream ok"; }}
    }}
}}
"""
    )
    return conf


def gateway_rows(
    args: argparse.Namespace, processes: Processes, workdir: Path, redis_url: str, rows: dict[str, list[dict[str, Any]]]
) -> None:
    """nginx with creditgate's auth_request (examples/nginx.conf, examples/routes.yaml) against the same nginx
    proxying straight to the upstream, in the same run: h2load --h1, 16 connections, 1 request each in flight."""
    print("gateway: nginx auth_request through creditgate vs nginx straight to the upstream (HTTP/1.1)", flush=True)
    env = python_env()
    grpc_target, forward_auth = (f"127.0.0.1:{free_port()}" for _ in range(2))
    auth_port, plain_port, upstream_port = free_port(), free_port(), free_port()
    nginx_dir = workdir / "nginx"
    nginx_dir.mkdir(exist_ok=True)
    conf = gateway_config(nginx_dir, auth_port, plain_port, upstream_port, forward_auth)
    started = [
        processes.start(
            "creditgate-gateway",
            [sys.executable, "-m", "creditgate.server", "serve", "--catalog", str(CATALOG)],
            {
                **env,
                "CREDITGATE_LISTEN": grpc_target,
                "CREDITGATE_REDIS_URL": redis_url,
                "CREDITGATE_DATA_DIR": str(workdir / "cg-gateway"),
                "CREDITGATE_LOG_FORMAT": "json",
                "CREDITGATE_ROUTES": str(REPO / "examples" / "routes.yaml"),
                "CREDITGATE_HTTP_AUTHZ_LISTEN": forward_auth,
            },
        ),
        processes.start("nginx", ["nginx", "-p", str(nginx_dir), "-c", str(conf), "-g", "daemon off;"]),
    ]
    try:
        for port in (int(grpc_target.rsplit(":", 1)[1]), int(forward_auth.rsplit(":", 1)[1]), auth_port, plain_port):
            wait_port(port)
        run_load(
            LoadSettings(
                target=grpc_target,
                customers=1,
                customer_prefix="gateway",
                requests=1,
                credits_per_customer=10**9,
                features=MIX,
                processes=1,
            )
        )
        time.sleep(1)
        for _ in range(args.rounds):
            for name, port in (("gateway-nginx-direct", plain_port), ("gateway-nginx-creditgate", auth_port)):
                wait_outbox_empty(redis_url)
                before = _available(grpc_target, GATEWAY_CUSTOMER)
                result = h2load(
                    f"127.0.0.1:{port}",
                    GATEWAY_PATH,
                    b"",
                    int(args.seconds),
                    16,
                    1,
                    h1=True,
                    headers=[f"x-customer-id: {GATEWAY_CUSTOMER}"],
                )
                # Every metered request that got through was charged its 1 credit; the direct ones none.
                result["credits_charged"] = before - _available(grpc_target, GATEWAY_CUSTOMER)
                rows.setdefault(name, []).append(result)
                print(
                    f"  {name}: {result['calls_per_s']:,.0f} requests/s, {result['status_2xx']} answered 2xx,"
                    f" {result['credits_charged']} credits charged",
                    flush=True,
                )
        direct = median(rows["gateway-nginx-direct"], "calls_per_s")
        metered = median(rows["gateway-nginx-creditgate"], "calls_per_s")
        print(f"  metered / direct: {metered / direct:.0%}", flush=True)
    finally:
        processes.stop(*started)


def h2load(
    target: str,
    path: str,
    body: bytes | None,
    seconds: int,
    clients: int,
    streams: int,
    rps: float | None = None,
    *,
    h1: bool = False,
    headers: list[str] | None = None,
) -> dict[str, Any]:
    """h2load (nghttp2, C) with gRPC framing: a 5-byte length prefix and the gRPC headers. With `rps`, an open
    loop of that many calls a second in all, and each call's latency read from h2load's --log-file."""
    workdir = Path(tempfile.mkdtemp(prefix="h2load-"))
    paced = ["--rps", f"{rps / clients:.3f}", "--log-file", str(workdir / "log.tsv")] if rps else []
    if h1:
        # Plain HTTP/1.1 GETs (the gateway rows): no body, no gRPC framing.
        framing = ["--h1", *(part for header in headers or [] for part in ("-H", header))]
    else:
        (workdir / "body.bin").write_bytes(b"\x00" + len(body or b"").to_bytes(4, "big") + (body or b""))
        framing = ["-d", str(workdir / "body.bin"), "-H", "content-type: application/grpc", "-H", "te: trailers"]
    out = subprocess.run(
        [
            "h2load",
            "-D",
            str(seconds),
            "-c",
            str(clients),
            "-m",
            str(streams),
            "-t",
            "1",
            *paced,
            *framing,
            f"http://{target}{path}",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rate = float(re.search(r"finished in [\d.]+s, ([\d.]+) req/s", out).group(1))  # type: ignore[union-attr]
    done = re.search(r"requests: .* (\d+) succeeded", out)
    answered_2xx = re.search(r"status codes: (\d+) 2xx", out)
    result: dict[str, Any] = {"calls_per_s": rate, "succeeded": int(done.group(1)) if done else 0}
    if h1:
        result["status_2xx"] = int(answered_2xx.group(1)) if answered_2xx else 0
    if rps:
        micros = sorted(int(line.split("\t")[2]) for line in (workdir / "log.tsv").read_text().splitlines() if line)
        result["latency_ms"] = {
            name: micros[min(len(micros) - 1, int(len(micros) * q))] / 1000
            for name, q in (("p50", 0.50), ("p99", 0.99), ("p999", 0.999))
        }
    shutil.rmtree(workdir)
    return result


def capture_decide(redis_url: str, target: str, customer: str) -> list[str]:
    """The EVALSHA the server sends for one CheckAndDebit, seen with MONITOR, to replay with redis-benchmark."""
    client = redis.Redis.from_url(redis_url)
    with client.monitor() as monitor:
        threading.Thread(target=_one_debit, args=(target, customer), daemon=True).start()
        while True:
            # The raw line (`<time> [<db> <client>] "EVALSHA" "<sha>" ...`): redis-py's next_command() joins the
            # arguments with spaces, which cannot be split back when an argument holds one.
            line = monitor.connection.read_response()
            command = _split_monitor(line.decode() if isinstance(line, bytes) else str(line))
            # Only the debit's own call: the flusher's and the sweeper's scripts run on the same Redis.
            if command and command[0].lower() == "evalsha" and "capture-1" in command:
                return command


def _available(target: str, customer: str) -> int:
    with grpc.insecure_channel(target) as channel:
        balance = metering_pb2_grpc.MeteringServiceStub(channel).GetBalance(
            metering_pb2.GetBalanceRequest(customer_id=customer)
        )
    return int(balance.available_credits)


def _one_debit(target: str, customer: str) -> None:
    time.sleep(0.2)
    with grpc.insecure_channel(target) as channel:
        metering_pb2_grpc.MeteringServiceStub(channel).CheckAndDebit(
            metering_pb2.CheckAndDebitRequest(customer_id=customer, feature="email_unlock", request_id="capture-1")
        )


def _split_monitor(line: str) -> list[str]:
    """The quoted arguments of a MONITOR line, unescaped (Redis writes \\", \\\\ and \\xNN inside them)."""
    return [codecs.decode(quoted, "unicode_escape") for quoted in re.findall(r'"((?:[^"\\]|\\.)*)"', line)]


def redis_benchmark(port: int, argv: list[str], pipeline: int) -> float:
    out = subprocess.run(
        [
            "redis-benchmark",
            "-p",
            str(port),
            "-n",
            str(REDIS_BENCHMARK_CALLS),
            "-c",
            "50",
            "-P",
            str(pipeline),
            "-r",
            "100000000",
            "-q",
            *argv,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return float(re.findall(r"([\d.]+) requests per second", out)[-1])


def wait_outbox_empty(redis_url: str, seconds: float = 120) -> None:
    """Lets the flusher finish the previous row's entries, so that its catch-up does not load the next row."""
    client = redis.Redis.from_url(redis_url)
    streams = list(client.scan_iter(match="cg:*:outbox"))
    deadline = time.monotonic() + seconds
    while streams and sum(int(client.xlen(stream)) for stream in streams) and time.monotonic() < deadline:
        time.sleep(0.1)
    client.close()


SETTLE: list[str] = []  # the Redis URL whose outbox every row waits for (set once Redis is up)


def load(name: str, settings: LoadSettings, rows: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    if SETTLE:
        wait_outbox_empty(SETTLE[0])
    result = as_json(run_load(settings))
    rows.setdefault(name, []).append(result)
    print(
        f"  {name}: {result['decisions_per_s']:,.0f} decisions/s, p99 {result['latency_ms']['p99']:.2f} ms,"
        f" errors {result['errors']}, verified {result['verified']}",
        flush=True,
    )
    return result


def median(rows: list[dict[str, Any]], *path: str) -> float:
    values = []
    for row in rows:
        value: Any = row
        for key in path:
            value = value[key]
        values.append(float(value))
    return statistics.median(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--customers", type=int, default=10_000)
    parser.add_argument("--out", type=Path, default=BENCH)
    parser.add_argument(
        "--only-gateway", action="store_true", help="only the nginx gateway rows, printed (no RESULTS.md written)"
    )
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="creditgate-bench-"))
    processes = Processes(workdir)
    if args.only_gateway:
        try:
            only_gateway(args, processes, workdir)
        finally:
            processes.stop_all()
        return
    try:
        results = run_all(args, processes, workdir)
    finally:
        processes.stop_all()
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    from report import write_report  # bench/report.py

    write_report(results, args.out)
    print(f"wrote {args.out / 'RESULTS.md'}")


def only_gateway(args: argparse.Namespace, processes: Processes, workdir: Path) -> None:
    redis_port, _ = start_redis(processes, workdir, "redis")
    gateway_rows(args, processes, workdir, f"redis://127.0.0.1:{redis_port}/0", {})


def run_all(args: argparse.Namespace, processes: Processes, workdir: Path) -> dict[str, Any]:
    started = time.time()
    redis_port, _ = start_redis(processes, workdir, "redis")
    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    cg, noop, pg, one_call = (f"127.0.0.1:{free_port()}" for _ in range(4))
    env = python_env()
    creditgate = processes.start(
        "creditgate",
        [sys.executable, "-m", "creditgate.server", "serve", "--catalog", str(CATALOG)],
        {
            **env,
            "CREDITGATE_LISTEN": cg,
            "CREDITGATE_REDIS_URL": redis_url,
            "CREDITGATE_DATA_DIR": str(workdir / "cg"),
            "CREDITGATE_LOG_FORMAT": "json",
        },
    )
    noop_server = processes.start("noop", [sys.executable, str(BENCH / "noop_server.py"), "--listen", noop], env)
    processes.start(
        "one-redis-call",
        [sys.executable, str(BENCH / "noop_server.py"), "--listen", one_call, "--redis-url", redis_url],
        env,
    )
    dsn = start_postgres(processes, workdir)
    processes.start(
        "pg_server",
        [sys.executable, str(BENCH / "pg_server.py"), "--listen", pg, "--dsn", dsn, "--catalog", str(CATALOG)],
        env,
    )
    for target in (cg, noop, pg, one_call):
        wait_port(int(target.rsplit(":", 1)[1]))
    time.sleep(2)

    def settings(target: str, **overrides: Any) -> LoadSettings:
        base = {
            "target": target,
            "features": MIX,
            "concurrency": args.concurrency,
            "duration_s": args.seconds,
            "processes": 2,
        }
        return LoadSettings(**{**base, **overrides})

    rows: dict[str, list[dict[str, Any]]] = {}
    many = args.customers
    print("setting up customers (AdminService RPCs)", flush=True)
    setup = {
        # Credits to spare: the h2load rows alone take up to a million decisions from the hot customer.
        "cg-hot": run_load(
            settings(cg, customers=1, customer_prefix="hot", requests=1, credits_per_customer=10**9)
        ).setup_s,
        "cg-many": run_load(settings(cg, customers=many, customer_prefix="many", requests=1, verify=False)).setup_s,
        "pg-hot": run_load(settings(pg, customers=1, customer_prefix="hot", requests=1)).setup_s,
        "pg-many": run_load(settings(pg, customers=many, customer_prefix="many", requests=1, verify=False)).setup_s,
    }
    SETTLE.append(redis_url)
    existing = {"setup": False, "verify": True}
    lag_samples: list[int] = []
    reserve_available = True
    for round_ in range(args.rounds):
        print(f"round {round_ + 1}/{args.rounds}", flush=True)
        load("noop", settings(noop, customers=many, customer_prefix="many", setup=False, verify=False), rows)
        load("cg-hot", settings(cg, customers=1, customer_prefix="hot", **existing), rows)
        with LagSampler(redis_url) as sampler:
            load("cg-many", settings(cg, customers=many, customer_prefix="many", setup=False, verify=False), rows)
        lag_samples += sampler.samples_ms
        load(
            "cg-batch100",
            settings(
                cg,
                customers=many,
                customer_prefix="many",
                setup=False,
                verify=False,
                mode="batch",
                batch_size=100,
                concurrency=8,
            ),
            rows,
        )
        if reserve_available:
            result = load(
                "cg-reserve-commit",
                settings(cg, customers=many, customer_prefix="many", setup=False, verify=False, mode="reserve-commit"),
                rows,
            )
            if result["errors"].get("UNIMPLEMENTED"):
                reserve_available = False
                rows.pop("cg-reserve-commit")
        load("pg-hot", settings(pg, customers=1, customer_prefix="hot", **existing), rows)
        load("pg-many", settings(pg, customers=many, customer_prefix="many", setup=False, verify=False), rows)
        body = metering_pb2.CheckAndDebitRequest(customer_id="hot-0", feature="email_unlock").SerializeToString()
        for name, target in (("h2load-noop", noop), ("h2load-one-redis-call", one_call), ("h2load-cg-hot", cg)):
            wait_outbox_empty(redis_url)
            rows.setdefault(name, []).append(
                h2load(target, "/creditgate.v1.MeteringService/CheckAndDebit", body, int(args.seconds), 4, 16)
            )
            print(f"  {name}: {rows[name][-1]['calls_per_s']:,.0f} calls/s", flush=True)
        batch_body = metering_pb2.CheckAndDebitBatchRequest(
            items=[metering_pb2.CheckAndDebitRequest(customer_id="hot-0", feature="email_unlock")] * 100
        ).SerializeToString()
        wait_outbox_empty(redis_url)
        batched = h2load(cg, "/creditgate.v1.MeteringService/CheckAndDebitBatch", batch_body, int(args.seconds), 4, 4)
        batched["decisions_per_s"] = batched["calls_per_s"] * 100
        rows.setdefault("h2load-cg-batch100", []).append(batched)
        print(f"  h2load-cg-batch100: {batched['decisions_per_s']:,.0f} decisions/s", flush=True)

    import cost  # bench/cost.py: issue 21's figures, on these servers

    costs = cost.measure(cg, creditgate.pid, noop, noop_server.pid, redis_url, args.rounds)
    two_workers(args, processes, workdir, redis_url, {"noop": noop, "cg": cg}, rows)
    gateway_rows(args, processes, workdir, redis_url, rows)

    print("latency at half of creditgate's throughput (open loop)", flush=True)
    half = median(rows["cg-many"], "decisions_per_s") / 2
    for name, target in (("cg-many@half", cg), ("noop@half", noop)):
        for _ in range(args.rounds):
            load(
                name,
                settings(
                    target,
                    customers=many,
                    customer_prefix="many",
                    setup=False,
                    verify=False,
                    rate=half,
                    concurrency=256,
                ),
                rows,
            )

    print("latency at half of creditgate's h2load throughput (h2load --rps, open loop)", flush=True)
    h2_half = median(rows["h2load-cg-hot"], "calls_per_s") / 2
    body = metering_pb2.CheckAndDebitRequest(customer_id="hot-0", feature="email_unlock").SerializeToString()
    for name, target in (("h2load-cg@half", cg), ("h2load-noop@half", noop)):
        for _ in range(args.rounds):
            wait_outbox_empty(redis_url)
            paced = h2load(
                target, "/creditgate.v1.MeteringService/CheckAndDebit", body, int(args.seconds), 4, 16, h2_half
            )
            rows.setdefault(name, []).append(paced)
            print(f"  {name}: {paced['calls_per_s']:,.0f} calls/s, p99 {paced['latency_ms']['p99']:.2f} ms", flush=True)

    print("latency vs throughput (closed loop, 1..64 in flight)", flush=True)
    curves: dict[str, list[tuple[float, float]]] = {}
    for name, target in (("noop", noop), ("creditgate", cg), ("postgresql", pg)):
        for in_flight in (1, 4, 16, 64):
            result = load(
                f"curve-{name}-{in_flight}",
                settings(
                    target, customers=many, customer_prefix="many", setup=False, verify=False, concurrency=in_flight
                ),
                rows,
            )
            curves.setdefault(name, []).append((result["decisions_per_s"], result["latency_ms"]["p99"]))

    print("overspend: 4,000 concurrent 1-credit debits against a customer with 2,500 credits", flush=True)
    overspend = {}
    for name, target in (("creditgate", cg), ("postgresql", pg)):
        result = load(
            f"overspend-{name}",
            settings(target, customers=1, plan="basic", credits_per_customer=0, requests=4000, duration_s=0),
            rows,
        )
        overspend[name] = {
            "charged": result["credits_charged"],
            "granted": 2500,
            "overspend": max(0, result["credits_charged"] - 2500),
            "verified": result["verified"],
        }

    print("redis-benchmark: EVALSHA of the decide script", flush=True)
    # A customer of its own with credits to spare: a customer run dry answers denials, which cost Redis far less.
    run_load(settings(cg, customers=1, customer_prefix="redis-benchmark", requests=1, credits_per_customer=10**9))
    customer = "redis-benchmark-0"  # the loadtest names its customers <prefix>-<n>
    command = capture_decide(redis_url, cg, customer)
    before = _available(cg, customer)
    # Request ids of their own per run, so that the second run cannot replay the first's answers.
    evalsha: dict[str, float] = {
        f"P{p}": redis_benchmark(redis_port, [part.replace("capture-1", f"rb{p}-__rand_int__") for part in command], p)
        for p in (1, 16)
    }
    # Each call charges 1 credit unless its random request id repeats one (then it is replayed).
    evalsha["charged"] = before - _available(cg, customer)
    evalsha["calls"] = 2 * REDIS_BENCHMARK_CALLS
    print(f"  {evalsha}", flush=True)

    return {
        "command": "make bench",
        "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(started)),
        "minutes": round((time.time() - started) / 60, 1),
        "machine": machine(),
        "settings": {
            "rounds": args.rounds,
            "seconds": args.seconds,
            "concurrency": args.concurrency,
            "customers": many,
            "mix": MIX,
            "load_processes": 2,
        },
        "setup_s": setup,
        "rows": rows,
        "cost": costs,
        "curves": curves,
        "overspend": overspend,
        "evalsha": evalsha,
        "flusher_lag_ms": {
            "samples": len(lag_samples),
            "p50": _pct(lag_samples, 50),
            "p99": _pct(lag_samples, 99),
            "max": max(lag_samples or [0]),
        },
        "store": store_throughput(workdir, many),
        "memory": memory_per_customer(redis_url, cg),
        "reserve_commit": reserve_available,
        "load_average_after": os.getloadavg(),
    }


def _pct(values: list[int], percentile: float) -> int:
    if not values:
        return 0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * percentile / 100))]


def store_throughput(workdir: Path, customers: int) -> dict[str, float]:
    """Ledger records per second the SQLite store absorbs in the transactions the flusher writes while it drains a
    backlog (one per round: a batch from every shard's stream), each spread over `customers` customers, into a
    ledger that already holds STORE_PREFILL entries."""
    import asyncio
    import random

    from creditgate.server.domain.records import LedgerRecord, Record
    from creditgate.server.settings import Settings
    from creditgate.server.store.store import open_store

    per_stream = Settings.model_fields["flush_batch_size"].default
    streams = Settings.model_fields["shards"].default
    size = per_stream * streams
    picker = random.Random(6)
    seqs: dict[str, int] = {}

    def batch() -> list[Record]:
        records: list[Record] = []
        for _ in range(size):
            customer = f"many-{picker.randrange(customers)}"
            seq = seqs[customer] = seqs.get(customer, 0) + 1
            records.append(
                LedgerRecord(
                    customer,
                    seq,
                    "debit",
                    -1,
                    100_000 - seq,
                    1_798_761_600_000 + seq,
                    "email_unlock",
                    1,
                    request_id=f"0df163ba8d.1.{seq}",
                    takes=[["b1", 1, 10, 1_801_440_000_000, "grant"]],
                )
            )
        return records

    async def write() -> float:
        store = open_store(f"sqlite:///{workdir / 'store-bench.db'}")
        await store.open()
        for _ in range(STORE_PREFILL // size):
            await store.write(batch(), [])
        batches = [batch() for _ in range(max(1, STORE_MEASURED // size))]
        started = time.perf_counter()
        for records in batches:
            await store.write(records, [])
        elapsed = time.perf_counter() - started
        await store.close()
        return len(batches) * size / elapsed

    return {
        "records_per_s": round(asyncio.run(write())),
        "batch": size,
        "per_stream": per_stream,
        "streams": streams,
        "customers": customers,
        "prefill": STORE_PREFILL,
    }


def memory_per_customer(redis_url: str, target: str) -> dict[str, Any]:
    """MEMORY USAGE of one customer's keys: plan and period (hash), 3 buckets and their index, usage counters."""
    with grpc.insecure_channel(target) as channel:
        from creditgate.v1 import admin_pb2, admin_pb2_grpc

        admin = admin_pb2_grpc.AdminServiceStub(channel)
        metering = metering_pb2_grpc.MeteringServiceStub(channel)
        admin.CreateCustomer(admin_pb2.CreateCustomerRequest(customer_id="mem-1", name="Memory Inc"))
        admin.CreateSubscription(admin_pb2.CreateSubscriptionRequest(customer_id="mem-1", plan="professional"))
        for index in range(2):
            admin.TopUp(admin_pb2.TopUpRequest(customer_id="mem-1", package="starter", request_id=f"mem-{index}"))
        for feature, dims in (("email_unlock", {}), ("contact_export", {}), ("email_send", {"mailbox": "a@b.io"})):
            metering.CheckAndDebit(
                metering_pb2.CheckAndDebitRequest(customer_id="mem-1", feature=feature, dimensions=dims)
            )
        # One remembered answer, with a request_id as the clients make them (a UUID).
        request_id = str(uuid.uuid4())
        metering.CheckAndDebit(
            metering_pb2.CheckAndDebitRequest(customer_id="mem-1", feature="email_unlock", request_id=request_id)
        )
    from creditgate.server.engine.keys import KeySpace
    from creditgate.server.settings import Settings

    client = redis.Redis.from_url(redis_url, decode_responses=True)
    customer_keys = KeySpace(Settings.model_fields["shards"].default).for_customer("mem-1")
    kinds = (customer_keys.customer, customer_keys.buckets, customer_keys.usage, *customer_keys.wallet_index)
    usage = {key: int(client.memory_usage(key, samples=0) or 0) for key in kinds if client.exists(key)}
    answer_key = customer_keys.request(request_id)
    return {
        "keys": usage,
        "total_bytes": sum(usage.values()),
        "buckets": client.hlen(customer_keys.buckets),
        "request_answer_bytes": int(client.memory_usage(answer_key, samples=0) or 0),
    }


def machine() -> dict[str, Any]:
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    mem_kb = int(
        next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal"))
    )
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "memory_gib": round(mem_kb / 1024 / 1024, 1),
        "python": platform.python_version(),
        "load_average_before": os.getloadavg(),
        "redis": subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout.strip(),
    }


if __name__ == "__main__":
    main()

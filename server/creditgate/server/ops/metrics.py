"""The Prometheus metrics of one server, in its own registry, served over HTTP when metrics_listen is set."""

from __future__ import annotations

from collections.abc import Iterator
from wsgiref.simple_server import WSGIServer

from creditgate.server.tasks import Supervised
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

# Decisions take about a millisecond; the buckets resolve that, and still show a slow Redis.
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Metrics:
    """Every metric creditgate exports; a registry per server, so several servers in one process stay apart."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.decisions = Counter(
            "creditgate_decisions",
            "Charging decisions of CheckAndDebit and of batch items (dry runs excluded), by feature and outcome"
            " (allowed or the deny reason).",
            ["feature", "outcome"],
            registry=self.registry,
        )
        self.rpcs = Counter(
            "creditgate_rpcs", "Finished RPCs by method and status code.", ["rpc", "code"], registry=self.registry
        )
        self.rpc_duration = Histogram(
            "creditgate_rpc_duration_seconds",
            "Server-side RPC latency by method.",
            ["rpc"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.redis_errors = Counter(
            "creditgate_redis_errors",
            "Redis commands that failed (unreachable, timed out), by who saw it: rpc or health_probe.",
            ["source"],
            registry=self.registry,
        )
        self.customers_verified = Counter(
            "creditgate_customers_verified",
            "Customers verified against the durable ledger after Redis restarted, failed over or lost data, by"
            " result: current (Redis was at least as new) or rebuilt (Redis was behind or had lost it).",
            ["result"],
            registry=self.registry,
        )
        self.overspent_credits = Counter(
            "creditgate_overspent_credits",
            "Credits spent beyond a balance, found when a customer was rebuilt from the ledger (decisions made on a"
            " Redis older than the ledger).",
            registry=self.registry,
        )
        self.auth_failures = Counter(
            "creditgate_auth_failures",
            "Calls refused for their credentials: api_key_missing, api_key_invalid or api_key_scope.",
            ["reason"],
            registry=self.registry,
        )
        self.dependency_up = Gauge(
            "creditgate_dependency_up",
            "1 when the last health probe reached the dependency (redis, store), else 0.",
            ["dependency"],
            registry=self.registry,
        )
        self.outbox_backlog = Gauge(
            "creditgate_outbox_backlog_entries",
            "Ledger outbox entries in Redis not yet written to the durable store (all shards).",
            registry=self.registry,
        )
        self.outbox_lag = Gauge(
            "creditgate_outbox_lag_seconds",
            "Age of the oldest outbox entry not yet in the durable store; 0 when the outbox is empty.",
            registry=self.registry,
        )
        self.holds_outstanding = Gauge(
            "creditgate_holds_outstanding",
            "Open holds (Reserve not yet committed, released or expired), all customers.",
            registry=self.registry,
        )
        self.parked_entries = Gauge(
            "creditgate_parked_entries",
            "Outbox entries the flusher could not parse or write, kept aside in the durable store (creditgate ledger"
            " parked lists them, creditgate ledger retry-parked retries them).",
            registry=self.registry,
        )
        # The background loops, read at each scrape: app.py adds them once they are built.
        self.tasks: list[Supervised] = []
        self.registry.register(_TaskCollector(self.tasks))
        self._http: WSGIServer | None = None

    def serve(self, listen: str) -> int:
        """Serve /metrics on host:port (port 0 picks a free one); returns the port."""
        host, _, port = listen.rpartition(":")
        self._http, _ = start_http_server(int(port), addr=host.strip("[]"), registry=self.registry)
        bound: int = self._http.server_port
        return bound

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None


class _TaskCollector(Collector):
    """The restart count and health of each background loop, read from its state when scraped."""

    def __init__(self, tasks: list[Supervised]) -> None:
        self._tasks = tasks

    def collect(self) -> Iterator[Metric]:
        restarts = CounterMetricFamily(
            "creditgate_background_task_restarts",
            "Rounds of a background loop (flusher, invoicer, hold_sweeper, catalog_follower, health_probe) that"
            " failed and were restarted after a backoff; for the flusher process, its failed rounds and its deaths.",
            labels=["task"],
        )
        up = GaugeMetricFamily(
            "creditgate_background_task_up",
            "1 while a background loop runs and its last round succeeded, else 0.",
            labels=["task"],
        )
        for task in self._tasks:
            state = task.state()
            restarts.add_metric([state.name], state.restarts)
            up.add_metric([state.name], 1 if state.healthy else 0)
        yield restarts
        yield up

"""The Prometheus endpoint, scraped over HTTP after real calls: exact counts of decisions, RPCs, latency
observations, outbox backlog and open holds."""

from __future__ import annotations

import time
import urllib.request
import uuid
from typing import Any

import grpc
import pytest
from creditgate.v1 import metering_pb2
from harness import RunningServer
from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture
def server_overrides() -> dict[str, Any]:
    """The `server` serves its metrics; the test runs the health probe itself."""
    return {"metrics_listen": "127.0.0.1:0", "health_probe_interval_seconds": 300}


def scrape(server: RunningServer) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.app.metrics_port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def test_decisions_rpcs_and_latency_are_counted_exactly(server: RunningServer) -> None:
    server.create_customer("acme", plan="basic")
    for _ in range(3):
        assert server.debit("acme", "email_unlock", request_id=str(uuid.uuid4())).allowed
    assert not server.debit("acme", "ai_personalization").allowed
    assert server.debit("acme", "mobile_unlock", quality="verified").allowed
    dry_run = metering_pb2.CheckAndDebitRequest(customer_id="acme", feature="email_unlock", dry_run=True)
    assert server.metering.CheckAndDebit(dry_run).allowed
    with pytest.raises(grpc.RpcError):
        server.debit("acme", "email_unlock", quantity=0)
    with pytest.raises(grpc.RpcError):
        server.debit("nobody", "email_unlock")
    server.available("acme")
    batch = metering_pb2.CheckAndDebitBatchRequest(
        items=[
            metering_pb2.CheckAndDebitRequest(customer_id="acme", feature="email_unlock"),
            metering_pb2.CheckAndDebitRequest(customer_id="acme", feature="ai_personalization"),
            metering_pb2.CheckAndDebitRequest(customer_id="acme", feature="teleport"),  # an item error
        ]
    )
    server.metering.CheckAndDebitBatch(batch)

    samples = scrape(server)
    decisions = {
        (dict(labels)["feature"], dict(labels)["outcome"]): count
        for (name, labels), count in samples.items()
        if name == "creditgate_decisions_total"
    }
    assert decisions == {
        ("email_unlock", "allowed"): 4.0,
        ("ai_personalization", "not_entitled"): 2.0,
        ("mobile_unlock", "allowed"): 1.0,
    }
    assert value(samples, "creditgate_rpcs_total", rpc="CheckAndDebit", code="OK") == 6.0
    assert value(samples, "creditgate_rpcs_total", rpc="CheckAndDebit", code="INVALID_ARGUMENT") == 1.0
    assert value(samples, "creditgate_rpcs_total", rpc="CheckAndDebit", code="NOT_FOUND") == 1.0
    assert value(samples, "creditgate_rpcs_total", rpc="GetBalance", code="OK") == 1.0
    assert value(samples, "creditgate_rpcs_total", rpc="CreateCustomer", code="OK") == 1.0
    assert value(samples, "creditgate_rpcs_total", rpc="CheckAndDebitBatch", code="OK") == 1.0
    assert value(samples, "creditgate_rpc_duration_seconds_count", rpc="CheckAndDebit") == 8.0
    assert value(samples, "creditgate_rpc_duration_seconds_bucket", rpc="CheckAndDebit", le="+Inf") == 8.0
    assert value(samples, "creditgate_auth_failures_total", reason="api_key_missing") is None  # no keys: no auth


def test_probe_publishes_outbox_backlog_open_holds_and_dependencies(server: RunningServer) -> None:
    server.create_customer("acme", plan="basic")
    server.flush()
    assert server.call(server.app.probe.run_once()) is True  # type: ignore[union-attr]
    samples = scrape(server)
    assert value(samples, "creditgate_outbox_backlog_entries") == 0.0
    assert value(samples, "creditgate_outbox_lag_seconds") == 0.0
    assert value(samples, "creditgate_holds_outstanding") == 0.0
    assert value(samples, "creditgate_dependency_up", dependency="redis") == 1.0
    assert value(samples, "creditgate_dependency_up", dependency="store") == 1.0

    for _ in range(2):
        server.debit("acme", "email_unlock")
    for _ in range(3):
        server.metering.Reserve(
            metering_pb2.ReserveRequest(customer_id="acme", feature="email_unlock", request_id=str(uuid.uuid4()))
        )
    oldest_ms = server.oldest_outbox_ms()
    time.sleep(0.05)  # the least lag below is then above 0: a clamped 0 cannot pass
    before_ms = server.redis_time_ms()
    server.call(server.app.probe.run_once())  # type: ignore[union-attr]
    after_ms = server.redis_time_ms()
    samples = scrape(server)
    # Two debits and three holds, each one ledger entry in the outbox; the flusher has not run.
    assert value(samples, "creditgate_outbox_backlog_entries") == 5.0
    # The lag is the probe's Redis TIME less the oldest entry's id time: it read TIME between the two readings here.
    lag_ms = round((value(samples, "creditgate_outbox_lag_seconds") or 0.0) * 1000)
    assert before_ms - oldest_ms <= lag_ms <= after_ms - oldest_ms
    assert value(samples, "creditgate_holds_outstanding") == 3.0

    server.flush()
    server.call(server.app.probe.run_once())  # type: ignore[union-attr]
    samples = scrape(server)
    assert value(samples, "creditgate_outbox_backlog_entries") == 0.0
    assert value(samples, "creditgate_outbox_lag_seconds") == 0.0

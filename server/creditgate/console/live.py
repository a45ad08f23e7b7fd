"""The live view's data: samples of the server taken every few seconds (decision counters from its Prometheus
endpoint, the ledger backlog from GetLedgerStatus, gRPC health per service), turned into rates between samples."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from creditgate.client import AsyncClient, CreditgateError
from prometheus_client.parser import text_string_to_metric_families

DECISIONS_SAMPLE = "creditgate_decisions_total"
ALLOWED = "allowed"
HEALTH_SERVICES = ("", "creditgate.v1.MeteringService", "creditgate.v1.AdminService")

HealthCheck = Callable[[str], Awaitable[str]]


@dataclass(frozen=True)
class Sample:
    at: float  # unix seconds
    monotonic: float
    decisions: dict[str, float] | None  # cumulative count per outcome; None without a metrics endpoint
    backlog_entries: int | None
    pending_entries: int | None
    oldest_unflushed_seconds: float | None
    health: dict[str, str]
    errors: tuple[str, ...] = field(default=())


def decisions_by_outcome(exposition: str) -> dict[str, float]:
    """creditgate_decisions_total summed over features, per outcome ("allowed" or the deny reason)."""
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            if sample.name == DECISIONS_SAMPLE:
                outcome = sample.labels.get("outcome", "")
                totals[outcome] = totals.get(outcome, 0.0) + sample.value
    return totals


class LiveSampler:
    """Keeps the last `kept` samples; the page draws them, so a reload shows the same recent history."""

    def __init__(
        self,
        client: AsyncClient,
        health: HealthCheck,
        metrics_url: str | None,
        interval_seconds: float,
        kept: int,
    ) -> None:
        self._client = client
        self._health = health
        self._metrics_url = metrics_url
        self._interval = interval_seconds
        self.samples: deque[Sample] = deque(maxlen=kept)
        self._task: asyncio.Task[None] | None = None
        self._http = httpx.AsyncClient(timeout=interval_seconds)

    async def take(self) -> Sample:
        errors: list[str] = []
        decisions: dict[str, float] | None = None
        if self._metrics_url is not None:
            try:
                response = await self._http.get(self._metrics_url)
                response.raise_for_status()
                decisions = decisions_by_outcome(response.text)
            except httpx.HTTPError as exc:
                errors.append(f"metrics endpoint: {exc or type(exc).__name__}")
        backlog = pending = None
        oldest: float | None = None
        try:
            status = await self._client.get_ledger_status()
            backlog, pending = status.backlog_entries, status.pending_entries
            oldest = status.oldest_unflushed_age.ToTimedelta().total_seconds()
        except CreditgateError as exc:
            errors.append(f"GetLedgerStatus: {exc}")
        health = {service or "server": await self._health(service) for service in HEALTH_SERVICES}
        sample = Sample(time.time(), time.monotonic(), decisions, backlog, pending, oldest, health, tuple(errors))
        self.samples.append(sample)
        return sample

    async def _run(self) -> None:
        while True:
            await self.take()
            await asyncio.sleep(self._interval)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="console-live-sampler")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self._http.aclose()

    def view(self) -> dict[str, Any]:
        """Rates per second between consecutive samples, per outcome, and the latest backlog and health."""
        samples = list(self.samples)
        points: list[dict[str, Any]] = []
        outcomes: set[str] = set()
        for before, after in itertools.pairwise(samples):
            if before.decisions is None or after.decisions is None:
                continue
            elapsed = after.monotonic - before.monotonic
            # A counter that went down means the server restarted: that interval has no rate.
            if elapsed <= 0 or any(after.decisions.get(k, 0) < v for k, v in before.decisions.items()):
                continue
            rates = {
                outcome: round((count - before.decisions.get(outcome, 0.0)) / elapsed, 3)
                for outcome, count in after.decisions.items()
            }
            outcomes.update(rates)
            points.append({"at": after.at, "rates": rates, "backlog": after.backlog_entries})
        latest = samples[-1] if samples else None
        return {
            "metrics": self._metrics_url is not None,
            "outcomes": sorted(outcomes, key=lambda outcome: (outcome != ALLOWED, outcome)),
            "points": points,
            "backlog": [
                {"at": sample.at, "entries": sample.backlog_entries}
                for sample in samples
                if sample.backlog_entries is not None
            ],
            "latest": None
            if latest is None
            else {
                "at": latest.at,
                "backlog_entries": latest.backlog_entries,
                "pending_entries": latest.pending_entries,
                "oldest_unflushed_seconds": latest.oldest_unflushed_seconds,
                "health": latest.health,
                "decisions_total": latest.decisions,
                "errors": list(latest.errors),
            },
        }

"""Webhook deliveries of billing events: signed the Standard Webhooks way, at-least-once with exponential
backoff, dead-lettered after the last try; the deliveries table in the durable store is the queue."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import replace

import httpx
import structlog
from creditgate.server.clock import Clock, from_ms
from creditgate.server.errors import CreditgateError
from creditgate.server.ledger.store import Delivery, Store
from creditgate.server.settings import Settings
from standardwebhooks.webhooks import Webhook

log = structlog.get_logger(__name__)
# Deliveries attempted per round of the loop.
BATCH = 100
# A receiver's answer longer than this is cut in last_error.
ERROR_LIMIT = 300
# Each round queues deliveries for the events stored since the last one; every this often (and at start) it looks
# at every event instead: in PostgreSQL an event can commit after one with a higher seq, and the rounds that had
# moved past its seq would never queue it. Scanning every event every second grows with the events table.
FULL_PASS_EVERY_MS = 5 * 60 * 1000


class WebhookSender:
    """`clock` schedules the retries (the server's clock, simulated or not); `signing_clock` stamps the
    webhook-timestamp header, which receivers check against their own real clock."""

    def __init__(self, store: Store, clock: Clock, signing_clock: Clock, settings: Settings) -> None:
        self._store = store
        self._clock = clock
        self._signing_clock = signing_clock
        self._urls = list(settings.webhook_urls)
        self._signer = Webhook(settings.webhook_secret) if settings.webhook_secret else None
        self._max_attempts = settings.webhook_max_attempts
        self._backoff_ms = int(settings.webhook_backoff_seconds * 1000)
        self._timeout = settings.webhook_timeout_seconds
        self._interval = settings.deliver_interval_seconds
        self._enqueued_through = 0  # the newest event seq the last round saw
        self._next_full_pass_ms: int | None = None
        self._client: httpx.AsyncClient | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    async def deliver_once(self) -> int:
        """Queue new events for every URL, then try the due deliveries once; returns how many succeeded."""
        if not self._urls or self._signer is None:
            return 0
        now = self._clock.now_ms()
        await self._enqueue(now)
        delivered = 0
        for delivery in await self._store.due_deliveries(now, BATCH):
            # The lease: a replica that read the same row does not send it too; a crash mid-try retries later.
            if await self._store.claim_delivery(delivery, now + int(self._timeout * 2000)):
                delivered += await self._attempt(delivery, now)
        return delivered

    async def _enqueue(self, now: int) -> None:
        full = self._next_full_pass_ms is None or now >= self._next_full_pass_ms
        _, self._enqueued_through = await self._store.enqueue_deliveries(
            self._urls, now, 0 if full else self._enqueued_through
        )
        if full:
            self._next_full_pass_ms = now + FULL_PASS_EVERY_MS

    async def _attempt(self, delivery: Delivery, now: int) -> int:
        assert self._signer is not None
        signed_at = from_ms(self._signing_clock.now_ms())
        headers = {
            "content-type": "application/json",
            "webhook-id": delivery.event_id,
            "webhook-timestamp": str(int(signed_at.timestamp())),
            "webhook-signature": self._signer.sign(delivery.event_id, signed_at, delivery.payload),
        }
        error = ""
        try:
            response = await self._http().post(delivery.url, content=delivery.payload, headers=headers)
            if not 200 <= response.status_code < 300:
                error = f"HTTP {response.status_code}: {response.text[:ERROR_LIMIT]}"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"[:ERROR_LIMIT]
        attempts = delivery.attempts + 1
        if not error:
            outcome = replace(delivery, status="delivered", attempts=attempts, next_attempt_ms=now, last_error="")
        elif attempts >= self._max_attempts:
            outcome = replace(delivery, status="dead", attempts=attempts, next_attempt_ms=now, last_error=error)
            log.warning("webhook_dead_lettered", event_id=delivery.event_id, url=delivery.url, error=error)
        else:
            retry_at = now + self._backoff_ms * 2 ** (attempts - 1)
            outcome = replace(delivery, attempts=attempts, next_attempt_ms=retry_at, last_error=error)
        await self._store.record_delivery(replace(outcome, payload=""))
        return 0 if error else 1

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self._timeout)
        return self._client

    def start(self) -> None:
        if self._urls:
            self._task = asyncio.create_task(self._run(), name="webhooks")

    async def stop(self) -> None:
        # The round in hand finishes: a task cancelled inside a redis-py call can swallow the cancellation.
        self._stopping.set()
        if self._task is not None:
            await self._task
            self._task = None
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                await self.deliver_once()
            except CreditgateError as exc:
                log.warning("webhook_round_failed", error=exc.message)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=self._interval)

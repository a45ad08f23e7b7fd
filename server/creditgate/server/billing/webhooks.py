"""Webhook deliveries of billing events: signed the Standard Webhooks way, at-least-once with exponential
backoff, dead-lettered after the last try; the deliveries table in the durable store is the queue.

Each receiver has its own lane: its own rounds, its own HTTP connections (at most webhook_concurrency_per_receiver
requests in flight), each request cut at webhook_timeout_seconds, and its own deliveries' backoff. A receiver that
hangs or fails only slows its own lane: with one shared round, a receiver that accepted connections and never
answered held back a healthy one completely (tests/integration/test_webhooks.py; figures in bench/NOTES.md)."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import replace

import httpx
import structlog
from creditgate.server.clock import Clock, from_ms
from creditgate.server.errors import CreditgateError, InternalError
from creditgate.server.settings import Settings
from creditgate.server.store.events import Delivery
from creditgate.server.store.store import Store
from standardwebhooks.webhooks import Webhook

log = structlog.get_logger(__name__)
# Deliveries one round of a receiver's lane takes on.
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
        self._urls = list(dict.fromkeys(settings.webhook_urls))
        self._signer = Webhook(settings.webhook_secret) if settings.webhook_secret else None
        self._max_attempts = settings.webhook_max_attempts
        self._backoff_ms = int(settings.webhook_backoff_seconds * 1000)
        self._timeout = settings.webhook_timeout_seconds
        self._concurrency = settings.webhook_concurrency_per_receiver
        self._interval = settings.deliver_interval_seconds
        self._enqueued_through = 0  # the newest event seq the last round saw
        self._next_full_pass_ms: int | None = None
        # Each receiver's HTTP client (its own connection pool) and its round in flight, by URL.
        self._clients: dict[str, httpx.AsyncClient] = {}
        self._rounds: dict[str, asyncio.Task[int]] = {}
        # The deadlines of the tries in flight, which stop() brings forward.
        self._deadlines: set[asyncio.Timeout] = set()
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    async def run_once(self) -> int:
        """Queue new events for every receiver, start a round of its due deliveries for each receiver whose last
        round has ended, and wait for the rounds in flight, at most deliver_interval_seconds: a receiver still busy
        after that (one that hangs) goes on in the background, and its lane gets its next round once this one ends.
        Returns how many deliveries succeeded in the rounds that ended; raises the first error a round ended with."""
        if not self._urls or self._signer is None:
            return 0
        await self._enqueue(self._clock.now_ms())
        for url in self._urls:
            if url not in self._rounds and not self._stopping.is_set():
                self._rounds[url] = asyncio.create_task(self._deliver_due(url), name=f"webhooks {url}")
        if self._rounds:
            await asyncio.wait(self._rounds.values(), timeout=self._interval)
        return self._ended_rounds()

    def _ended_rounds(self) -> int:
        """Takes the ended rounds out of the lanes: their successes, or the first error among them."""
        delivered = 0
        errors: list[BaseException] = []
        for url, round_ in list(self._rounds.items()):
            if not round_.done():
                continue
            del self._rounds[url]
            if round_.cancelled():
                continue
            error = round_.exception()
            if error is None:
                delivered += round_.result()
            else:
                errors.append(error)
        if errors:
            for error in errors[1:]:
                log.warning("webhook_round_failed", error=str(error))
            raise errors[0]
        return delivered

    async def _enqueue(self, now: int) -> None:
        full = self._next_full_pass_ms is None or now >= self._next_full_pass_ms
        _, self._enqueued_through = await self._store.enqueue_deliveries(
            self._urls, now, 0 if full else self._enqueued_through
        )
        if full:
            self._next_full_pass_ms = now + FULL_PASS_EVERY_MS

    async def _deliver_due(self, url: str) -> int:
        """One round of a receiver's lane: its due deliveries, webhook_concurrency_per_receiver at a time."""
        due = iter(await self._store.due_deliveries(self._clock.now_ms(), BATCH, url=url))

        async def sender() -> int:
            delivered = 0
            # The senders share one iterator, so each delivery is tried by one of them.
            for delivery in due:
                if self._stopping.is_set():
                    break
                now = self._clock.now_ms()
                # The lease: a replica that read the same row does not send it too; a crash mid-try retries later.
                if await self._store.claim_delivery(delivery, now + int(self._timeout * 2000)):
                    delivered += await self._attempt(delivery, now)
            return delivered

        # Every sender ends before the round does (none is left running after an error), then the first error.
        results = await asyncio.gather(*(sender() for _ in range(self._concurrency)), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return sum(result for result in results if isinstance(result, int))

    async def _attempt(self, delivery: Delivery, now: int) -> int:
        if self._signer is None:  # run_once sends nothing without a secret
            raise InternalError("a webhook delivery was attempted without a signing secret")
        if self._stopping.is_set():
            return 0  # stop() came while it was being claimed: not tried; the lease makes it due again
        signed_at = from_ms(self._signing_clock.now_ms())
        headers = {
            "content-type": "application/json",
            "webhook-id": delivery.event_id,
            "webhook-timestamp": str(int(signed_at.timestamp())),
            "webhook-signature": self._signer.sign(delivery.event_id, signed_at, delivery.payload),
        }
        error = ""
        try:
            # One deadline for the whole try (httpx's own are per read or write: a receiver that trickles bytes
            # would outlast them); stop() moves it to now, so a hung receiver does not hold up the shutdown.
            async with asyncio.timeout(self._timeout) as deadline:
                self._deadlines.add(deadline)
                try:
                    response = await self._http(delivery.url).post(
                        delivery.url, content=delivery.payload, headers=headers
                    )
                finally:
                    self._deadlines.discard(deadline)
            if not 200 <= response.status_code < 300:
                error = f"HTTP {response.status_code}: {response.text[:ERROR_LIMIT]}"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"[:ERROR_LIMIT]
        except TimeoutError:
            if self._stopping.is_set():
                return 0  # cut by stop(), not by the receiver: not a try; the lease makes it due again
            error = f"Timeout: no answer within {self._timeout:g} s"
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

    def _http(self, url: str) -> httpx.AsyncClient:
        client = self._clients.get(url)
        if client is None:
            # A pool per receiver: a hung receiver's open connections cannot use up another receiver's.
            limits = httpx.Limits(max_connections=self._concurrency, max_keepalive_connections=self._concurrency)
            # No httpx timeouts: each try has one deadline of webhook_timeout_seconds (see _attempt).
            client = self._clients[url] = httpx.AsyncClient(timeout=None, limits=limits)
        return client

    def start(self) -> None:
        if self._urls:
            self._task = asyncio.create_task(self._run(), name="webhooks")

    async def stop(self) -> None:
        """Ends the loop and the rounds in flight: they start no more tries, and the tries in flight are cut now
        (they are not counted: each is due again when its lease ends, at least once still holds)."""
        self._stopping.set()
        now = asyncio.get_running_loop().time()
        for deadline in self._deadlines:
            deadline.reschedule(now)
        if self._task is not None:
            await self._task
            self._task = None
        if self._rounds:
            await asyncio.wait(self._rounds.values())
            try:
                self._ended_rounds()
            except Exception as exc:  # stopping still closes the clients; the error is told, not raised
                log.warning("webhook_round_failed", error=f"{type(exc).__name__}: {exc}")
        for client in self._clients.values():
            await client.aclose()
        self._clients.clear()

    async def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                await self.run_once()
            except CreditgateError as exc:
                log.warning("webhook_round_failed", error=exc.message)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=self._interval)

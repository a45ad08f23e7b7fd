"""Webhooks: real HTTP receivers on 127.0.0.1 check the Standard Webhooks signature; a receiver that fails 3
times gets the event on the 4th try; nothing is sent again to a receiver that answered 2xx; dead letters; a
receiver that accepts connections and never answers holds back no other receiver."""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from billing import billing_server
from creditgate.server.billing.webhooks import FULL_PASS_EVERY_MS
from creditgate.server.clock import to_ms
from creditgate.v1 import admin_pb2
from harness import JAN_1, Database, RedisServer, RunningServer
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

pytestmark = pytest.mark.postgres_too

SECRET = "whsec_" + base64.b64encode(b"creditgate-test-webhook-secret!!").decode()
BACKOFF_SECONDS = 10


@dataclass
class Receiver:
    """Answers 500 to the first `failures` tries of each event (or to all), 204 after; keeps what it was sent."""

    failures: int
    always_fail: bool = False
    # (webhook-id, event type, signature valid) of every request, in order
    received: list[tuple[str, str, bool]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def accepted(self) -> list[str]:
        """Event types of the requests answered 2xx, in order."""
        with self.lock:
            tries: Counter[str] = Counter()
            accepted = []
            for event_id, kind, _ in self.received:
                tries[event_id] += 1
                if not self.always_fail and tries[event_id] > self.failures:
                    accepted.append(kind)
            return accepted


@contextmanager
def receiving(receiver: Receiver) -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["content-length"]))
            try:
                Webhook(SECRET).verify(body, dict(self.headers.items()))
                valid = True
            except WebhookVerificationError:
                valid = False
            event_id = self.headers["webhook-id"]
            with receiver.lock:
                tries = 1 + sum(1 for seen, _, _ in receiver.received if seen == event_id)
                failing = receiver.always_fail or tries <= receiver.failures
                receiver.received.append((event_id, json.loads(body)["type"], valid))
            self.send_response(500 if failing else 204)
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=http.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{http.server_address[1]}/hook"
    finally:
        http.shutdown()
        http.server_close()


class HungReceiver:
    """Accepts connections and never answers; counts the connections it was opened."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}/hook"
        self._held: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self._listener.accept()
            except OSError:
                return  # closed
            with self._lock:
                self._held.append(connection)

    @property
    def connections(self) -> int:
        with self._lock:
            return len(self._held)

    def close(self) -> None:
        self._listener.close()
        with self._lock:
            for connection in self._held:
                connection.close()


@contextmanager
def hanging() -> Iterator[HungReceiver]:
    receiver = HungReceiver()
    try:
        yield receiver
    finally:
        receiver.close()


def deliver(server: RunningServer) -> int:
    server.flush()
    assert server.app.webhooks is not None
    return server.call(server.app.webhooks.run_once())


def deliveries(server: RunningServer, url: str) -> list[tuple[str, int, int]]:
    events = server.admin.ListEvents(admin_pb2.ListEventsRequest(customer_id="acme", page_size=100)).events
    return [(event.type, d.status, d.attempts) for event in reversed(events) for d in event.deliveries if d.url == url]


def test_signed_deliveries_with_retries_and_no_duplicates(
    redis_server: RedisServer, database: Database, tmp_path: Path
) -> None:
    steady, flaky, broken = Receiver(failures=0), Receiver(failures=3), Receiver(failures=0, always_fail=True)
    with receiving(steady) as steady_url, receiving(flaky) as flaky_url, receiving(broken) as broken_url:
        settings = {
            "webhook_urls": (steady_url, flaky_url, broken_url),
            "webhook_secret": SECRET,
            "webhook_backoff_seconds": BACKOFF_SECONDS,
            "webhook_max_attempts": 5,
            "deliver_interval_seconds": 600,  # the loop's first round is at start; the test drives the rest
            "webhook_concurrency_per_receiver": 1,  # one try at a time: each receiver gets the events in order
        }
        with billing_server(redis_server, database, tmp_path, **settings) as server:  # type: ignore[arg-type]
            server.create_customer("acme", "basic", start=JAN_1)  # 2,500 credits, threshold 250
            with ThreadPoolExecutor(64) as pool:
                assert all(pool.map(lambda _: server.debit("acme", "email_unlock", 39).allowed, range(64)))
            server.admin.TopUp(admin_pb2.TopUpRequest(customer_id="acme", package="starter", request_id="t1"))

            assert deliver(server) == 3  # steady takes all three; flaky and broken fail their first try
            assert deliver(server) == 0  # nothing is due before the backoff
            for attempt in range(2, 5):  # retries after 10 s, 20 s, 40 s
                server.clock.advance(BACKOFF_SECONDS * 2 ** (attempt - 2))
                deliver(server)
            server.clock.advance(BACKOFF_SECONDS * 8)
            assert deliver(server) == 0  # broken's 5th try fails: dead-lettered
            server.clock.advance(86_400)
            assert deliver(server) == 0

            order = ["grant_issued", "low_balance", "recovered"]
            assert steady.accepted() == order
            assert Counter(event_id for event_id, _, _ in steady.received).most_common(1)[0][1] == 1
            # Flaky: three failed tries of each event, then each once more, accepted on the 4th.
            assert flaky.accepted() == order
            assert Counter(event_id for event_id, _, _ in flaky.received) == Counter(
                {event_id: 4 for event_id, _, _ in steady.received}
            )
            assert all(valid for receiver in (steady, flaky, broken) for _, _, valid in receiver.received)
            delivered, dead = admin_pb2.DELIVERY_STATUS_DELIVERED, admin_pb2.DELIVERY_STATUS_DEAD
            assert deliveries(server, steady_url) == [(kind, delivered, 1) for kind in order]
            assert deliveries(server, flaky_url) == [(kind, delivered, 4) for kind in order]
            assert deliveries(server, broken_url) == [(kind, dead, 5) for kind in order]

            # A dead letter goes out again on request (to every URL: redelivery is deliberate).
            grant_id = steady.received[0][0]
            server.admin.RedeliverEvent(admin_pb2.RedeliverEventRequest(event_id=grant_id))
            assert deliver(server) == 2
            assert [event_id for event_id, _, _ in broken.received].count(grant_id) == 6


def stored_late(database: Database, seq: int, kind: str) -> None:
    """An event written straight into the store under `seq`, as a writer that took its seq earlier and committed
    later would leave it (PostgreSQL hands out seqs at insert, not at commit, and only its own unless told)."""
    overriding = " OVERRIDING SYSTEM VALUE" if database.kind == "postgresql" else ""
    database.rows(
        "INSERT INTO events (seq, event_id, customer_id, type, entry_id, created_ms, payload)"
        f"{overriding} VALUES (?, ?, 'acme', ?, '', 0, ?)",
        seq,
        f"acme/late/{seq}",
        kind,
        json.dumps({"type": kind}),
    )


def test_each_round_queues_the_new_events_and_a_full_pass_the_late_ones(
    redis_server: RedisServer, database: Database, tmp_path: Path
) -> None:
    receiver = Receiver(failures=0)
    with receiving(receiver) as url:
        settings = {"webhook_urls": (url,), "webhook_secret": SECRET, "deliver_interval_seconds": 600}
        with billing_server(redis_server, database, tmp_path, **settings) as server:  # type: ignore[arg-type]
            server.create_customer("acme", "basic", start=JAN_1)
            assert deliver(server) == 1  # grant_issued, stored after the start's full pass
            stored_late(database, 1000, "after_the_cursor")
            assert deliver(server) == 1
            stored_late(database, 500, "below_the_cursor")  # the rounds have moved past 1000 already
            assert deliver(server) == 0
            server.clock.advance(FULL_PASS_EVERY_MS // 1000 - 1)
            assert deliver(server) == 0
            server.clock.advance(1)
            assert deliver(server) == 1
            assert receiver.accepted() == ["grant_issued", "after_the_cursor", "below_the_cursor"]


def cross_low_balance(server: RunningServer, customers: range) -> None:
    """Each customer gets its grant (grant_issued) and spends 2,300 of its 2,500 credits (low_balance, below 250);
    the events are stored as the outbox is flushed."""
    for n in customers:
        server.create_customer(f"c{n:02}", "basic", start=JAN_1)
        assert server.debit(f"c{n:02}", "email_unlock", 2300).allowed
    server.flush()


def test_a_receiver_that_never_answers_holds_back_no_other(
    redis_server: RedisServer, database: Database, tmp_path: Path
) -> None:
    """Before each receiver had its own lane, the healthy one here got 0 of the first 20 low_balance events in 10 s
    (one shared round waited out the hung receiver's timeout for each of its deliveries, in turn)."""
    healthy = Receiver(failures=0)
    with hanging() as hung, receiving(healthy) as healthy_url:
        settings = {
            "webhook_urls": (hung.url, healthy_url),  # the hung one first: its deliveries are not behind the others
            "webhook_secret": SECRET,
            # Longer than this test: every try to the hung receiver is still in flight when the healthy one is done.
            "webhook_timeout_seconds": 60,
            "deliver_interval_seconds": 0.05,  # the sender's own loop delivers, as when serving
        }
        with billing_server(redis_server, database, tmp_path, **settings) as server:  # type: ignore[arg-type]
            hung_tries = "SELECT COUNT(*) FROM deliveries WHERE url = ? AND attempts > 0"

            def healthy_gets(events: int) -> None:
                """Waits for the healthy receiver, or for a try to the hung one to end (which fails the test)."""
                while len(healthy.accepted()) < events or hung.connections < 4:
                    assert database.rows(hung_tries, hung.url) == [(0,)]
                    time.sleep(0.02)

            cross_low_balance(server, range(20))
            healthy_gets(40)
            assert Counter(healthy.accepted()) == {"grant_issued": 20, "low_balance": 20}
            # The hung receiver's lane: as many tries in flight as it may have (4), none ended, the rest waiting.
            assert hung.connections == 4
            # Events stored while the hung receiver's round goes on reach the healthy one too.
            cross_low_balance(server, range(20, 40))
            healthy_gets(80)
            assert Counter(healthy.accepted()) == {"grant_issued": 40, "low_balance": 40}
            assert len({event_id for event_id, _, _ in healthy.received}) == 80
            assert hung.connections == 4
            assert database.rows(hung_tries, hung.url) == [(0,)]
        # Stopping cut the 4 tries in flight without counting them: each is due again when its lease (twice the
        # timeout) ends; the other 76 were not tried.
        leased_until = to_ms(JAN_1) + 120_000
        by_state = "SELECT status, attempts, next_attempt_ms, COUNT(*) FROM deliveries WHERE url = ? GROUP BY 1, 2, 3"
        assert database.rows(by_state + " ORDER BY 3", hung.url) == [
            ("pending", 0, to_ms(JAN_1), 76),
            ("pending", 0, leased_until, 4),
        ]


def test_a_receiver_that_never_answers_is_retried_with_backoff_then_dead_lettered(
    redis_server: RedisServer, database: Database, tmp_path: Path
) -> None:
    healthy = Receiver(failures=0)
    with hanging() as hung, receiving(healthy) as healthy_url:
        settings = {
            "webhook_urls": (hung.url, healthy_url),
            "webhook_secret": SECRET,
            "webhook_timeout_seconds": 0.5,
            "webhook_backoff_seconds": BACKOFF_SECONDS,
            "webhook_max_attempts": 3,
            "deliver_interval_seconds": 600,  # the test drives the rounds; each waits for the hung one's tries
        }
        with billing_server(redis_server, database, tmp_path, **settings) as server:  # type: ignore[arg-type]
            cross_low_balance(server, range(1))
            assert deliver(server) == 2  # the healthy receiver takes both events in the first round
            order = ["grant_issued", "low_balance"]
            hung_state = "SELECT attempts, status, next_attempt_ms, last_error FROM deliveries WHERE url = ?"
            start = to_ms(JAN_1)
            timed_out = "Timeout: no answer within 0.5 s"
            assert database.rows(hung_state, hung.url) == [(1, "pending", start + 10_000, timed_out)] * 2
            assert hung.connections == 2
            assert deliver(server) == 0  # nothing is due before the backoff
            assert hung.connections == 2

            server.clock.advance(BACKOFF_SECONDS)
            assert deliver(server) == 0
            assert database.rows(hung_state, hung.url) == [(2, "pending", start + 30_000, timed_out)] * 2
            server.clock.advance(BACKOFF_SECONDS * 2)
            assert deliver(server) == 0
            assert database.rows(hung_state, hung.url) == [(3, "dead", start + 30_000, timed_out)] * 2
            assert hung.connections == 6
            server.clock.advance(86_400)
            assert deliver(server) == 0
            assert hung.connections == 6

            assert sorted(healthy.accepted()) == order
            by_state = "SELECT attempts, status, COUNT(*) FROM deliveries WHERE url = ? GROUP BY 1, 2"
            assert database.rows(by_state, healthy_url) == [(1, "delivered", 2)]

"""Events (what webhooks hear about, stored in the order they were written) and their deliveries, one per event
and webhook URL."""

from __future__ import annotations

from dataclasses import dataclass

from creditgate.server.domain.records import EventRecord
from creditgate.server.store.database import NEWEST, Database, Row, Session, placeholders

EVENT_COLUMNS = "event_id, customer_id, type, entry_id, created_ms, payload"
DELIVERY_COLUMNS = "d.event_id, d.url, d.status, d.attempts, d.next_attempt_ms, d.last_error"
INSERT_EVENT = f"INSERT INTO events ({EVENT_COLUMNS}) VALUES ({placeholders(6)}) ON CONFLICT (event_id) DO NOTHING"


@dataclass(frozen=True, slots=True)
class Delivery:
    """One event's delivery to one webhook URL; status is pending, delivered or dead."""

    event_id: str
    url: str
    status: str
    attempts: int
    next_attempt_ms: int
    last_error: str
    # The event's JSON body (read with due deliveries).
    payload: str = ""


def event_row(event: EventRecord) -> Row:
    return (event.event_id, event.customer_id, event.type, event.entry_id, event.created_ms, event.payload)


def insert_events(session: Session, events: list[EventRecord]) -> None:
    """Each event once: a replay makes the same event id, and writes nothing."""
    session.executemany(INSERT_EVENT, [event_row(event) for event in events])


class EventStore:
    _db: Database

    async def list_events(self, customer_id: str, limit: int, before_seq: int | None) -> list[tuple[int, EventRecord]]:
        """(seq, event) newest first, one customer's or (customer_id "") everyone's."""
        rows = await self._db.read(
            lambda session: session.fetchall(
                f"SELECT seq, {EVENT_COLUMNS} FROM events WHERE (? = '' OR customer_id = ?) AND seq < ?"
                " ORDER BY seq DESC LIMIT ?",
                (customer_id, customer_id, before_seq if before_seq is not None else NEWEST, limit),
            )
        )
        return [(row[0], EventRecord(*row[1:])) for row in rows]

    async def get_event(self, event_id: str) -> EventRecord | None:
        row = await self._db.read(
            lambda session: session.fetchone(f"SELECT {EVENT_COLUMNS} FROM events WHERE event_id = ?", (event_id,))
        )
        return EventRecord(*row) if row else None

    async def enqueue_deliveries(self, urls: list[str], now_ms: int, after_seq: int = 0) -> tuple[int, int]:
        """A pending delivery for each URL and each event after `after_seq` (0: every event) that has none;
        returns how many were made and the newest event's seq (the next call's after_seq)."""

        def work(session: Session) -> tuple[int, int]:
            # SQLite has one writer at a time, so no event below `newest` is committed after this read. PostgreSQL
            # takes a seq at insert, not at commit: an event below `newest` may still commit after this read, and a
            # later call after `newest` misses it; the sender's periodic pass from 0 picks it up.
            newest = int(session.fetchall("SELECT COALESCE(MAX(seq), 0) FROM events")[0][0])
            made = 0
            for url in urls:
                made += session.execute(
                    "INSERT INTO deliveries (event_id, url, status, attempts, next_attempt_ms, last_error)"
                    " SELECT e.event_id, ?, 'pending', 0, ?, '' FROM events e WHERE e.seq > ? AND e.seq <= ?"
                    " AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = e.event_id AND d.url = ?)"
                    " ON CONFLICT DO NOTHING",
                    (url, now_ms, after_seq, newest, url),
                )
            return made, newest

        return await self._db.write(work)

    async def due_deliveries(self, now_ms: int, limit: int, url: str | None = None) -> list[Delivery]:
        """Pending deliveries due by now_ms (to `url` only, when given), with their payloads, earliest first."""
        rows = await self._db.read(
            lambda session: session.fetchall(
                f"SELECT {DELIVERY_COLUMNS}, e.payload FROM deliveries d JOIN events e ON e.event_id = d.event_id"
                " WHERE d.status = 'pending' AND d.next_attempt_ms <= ? AND (CAST(? AS TEXT) IS NULL OR d.url = ?)"
                " ORDER BY d.next_attempt_ms LIMIT ?",
                (now_ms, url, url, limit),
            )
        )
        return [Delivery(*row) for row in rows]

    async def claim_delivery(self, delivery: Delivery, lease_until_ms: int) -> bool:
        """Take a due delivery for one attempt (another replica that read it too then does not)."""
        claimed = await self._db.write(
            lambda session: session.execute(
                "UPDATE deliveries SET next_attempt_ms = ? WHERE event_id = ? AND url = ? AND status = 'pending'"
                " AND next_attempt_ms = ?",
                (lease_until_ms, delivery.event_id, delivery.url, delivery.next_attempt_ms),
            )
        )
        return claimed == 1

    async def record_delivery(self, delivery: Delivery) -> None:
        """The outcome of an attempt: status, attempts, next attempt, last error."""
        await self._db.write(
            lambda session: session.execute(
                "UPDATE deliveries SET status = ?, attempts = ?, next_attempt_ms = ?, last_error = ?"
                " WHERE event_id = ? AND url = ?",
                (
                    delivery.status,
                    delivery.attempts,
                    delivery.next_attempt_ms,
                    delivery.last_error,
                    delivery.event_id,
                    delivery.url,
                ),
            )
        )

    async def deliveries_of(self, event_ids: list[str]) -> list[Delivery]:
        if not event_ids:
            return []
        rows = await self._db.read(
            lambda session: session.fetchall(
                f"SELECT {DELIVERY_COLUMNS} FROM deliveries d WHERE d.event_id IN ({placeholders(len(event_ids))})"
                " ORDER BY d.event_id, d.url",
                event_ids,
            )
        )
        return [Delivery(*row) for row in rows]

    async def redeliver(self, event_id: str, now_ms: int) -> int:
        """Every delivery of the event pending again, due now; returns how many."""
        return await self._db.write(
            lambda session: session.execute(
                "UPDATE deliveries SET status = 'pending', attempts = 0, next_attempt_ms = ?, last_error = ''"
                " WHERE event_id = ?",
                (now_ms, event_id),
            )
        )

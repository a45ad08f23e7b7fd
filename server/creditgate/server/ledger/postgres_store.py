"""The production durable store: PostgreSQL through psycopg 3 (async pool), schema migrated by yoyo at start."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

import psycopg
import structlog
from creditgate.server.domain.conflicts import LedgerConflict, conflict_event, digest, moved, same_entry
from creditgate.server.domain.records import (
    CustomerRecord,
    EventRecord,
    LedgerRecord,
    PeriodRecord,
    Record,
    SettingsRecord,
    SubscriptionRecord,
    ledger_events,
    ledger_record_from_row,
    ledger_row,
)
from creditgate.server.errors import InternalError, Unavailable
from creditgate.server.ledger.store import Delivery, ParkedEntry, StoredInvoice
from psycopg import sql
from psycopg.rows import TupleRow
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool, PoolTimeout

log = structlog.get_logger(__name__)
LEDGER_COLUMNS = (
    "customer_id, seq, kind, credits_delta, balance_after, created_ms, feature, quantity, dimensions,"
    " free_units_used, overage_credits, bucket_id, request_id, reason, price, bucket_priority, bucket_expires_ms,"
    " reserved_delta, reservation_id, takes, bucket_rollover_cap"
)
TABLES = (
    "catalog_applications",
    "customers",
    "subscription_changes",
    "settings_changes",
    "ledger_entries",
    "ledger_conflicts",
    "parked_entries",
    "parked_resolutions",
    "periods",
    "invoices",
    "events",
    "deliveries",
)
# Billing tables whose rows change: a plan change ends a period early; deliveries record their attempts.
UPDATED_TABLES = ("periods", "deliveries")
EVENT_COLUMNS = "event_id, customer_id, type, entry_id, created_ms, payload"
DELIVERY_COLUMNS = "d.event_id, d.url, d.status, d.attempts, d.next_attempt_ms, d.last_error"
INSERT_EVENT = f"INSERT INTO events ({EVENT_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (event_id) DO NOTHING"
INSERT_PERIOD = (
    "INSERT INTO periods VALUES (%s, %s, %s, %s, %s)"
    " ON CONFLICT (customer_id, start_ms) DO UPDATE SET end_ms = LEAST(periods.end_ms, excluded.end_ms)"
)
INSERT_LEDGER = (
    f"INSERT INTO ledger_entries ({LEDGER_COLUMNS}) VALUES ({', '.join(['%s'] * 21)})"
    " ON CONFLICT (customer_id, seq) DO NOTHING"
)
INSERT_CUSTOMER = "INSERT INTO customers VALUES (%s, %s, %s, %s) ON CONFLICT (customer_id) DO NOTHING"
INSERT_SUBSCRIPTION = (
    "INSERT INTO subscription_changes VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (source_id) DO NOTHING"
)
INSERT_SETTINGS = "INSERT INTO settings_changes VALUES (%s, %s, %s, %s) ON CONFLICT (source_id) DO NOTHING"
# Parked entries (aliased p) that retry-parked has not written since.
UNRESOLVED_PARKED = "NOT EXISTS (SELECT 1 FROM parked_resolutions r WHERE r.source_id = p.source_id)"
INSERT_PARKED = "INSERT INTO parked_entries VALUES (%s, %s, %s) ON CONFLICT (source_id) DO NOTHING"
CONNECT_TIMEOUT_SECONDS = 10


class PostgresStore:
    """`url` is the sidecar's role (SELECT and INSERT only); `migration_url` the schema owner's, which applies
    the migrations and grants at start (unset: the sidecar's role owns the schema and revokes its own UPDATE,
    DELETE and TRUNCATE on the ledger)."""

    def __init__(self, url: str, migration_url: str | None = None, pool_size: int = 4) -> None:
        self._url = url
        self._migration_url = migration_url or url
        self._pool = AsyncConnectionPool(
            url,
            min_size=1,
            max_size=pool_size,
            open=False,
            timeout=CONNECT_TIMEOUT_SECONDS,
            kwargs={"connect_timeout": CONNECT_TIMEOUT_SECONDS},
        )

    async def open(self) -> None:
        try:
            await asyncio.to_thread(migrate, self._url, self._migration_url)
            await self._pool.open(wait=True, timeout=CONNECT_TIMEOUT_SECONDS)
        except (psycopg.OperationalError, PoolTimeout, OSError) as exc:
            raise Unavailable(f"PostgreSQL: {exc}") from exc

    async def close(self) -> None:
        await self._pool.close()

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[psycopg.AsyncConnection[TupleRow]]:
        """A pooled connection in a transaction (committed on success); driver errors become ours."""
        try:
            async with self._pool.connection() as conn:
                yield conn
        except (psycopg.OperationalError, PoolTimeout, OSError) as exc:
            raise Unavailable(f"PostgreSQL: {exc}") from exc
        except psycopg.errors.ReadOnlySqlTransaction as exc:
            # A standby, or a database or role set default_transaction_read_only: nothing is wrong with the data,
            # so writes wait (the flusher retries; entries stay in Redis) until it is writable again.
            raise Unavailable(
                f"PostgreSQL refuses writes (SQLSTATE 25006 read_only_sql_transaction: a standby, or"
                f" default_transaction_read_only is on): {exc}"
            ) from exc
        except (psycopg.DataError, psycopg.IntegrityError, psycopg.ProgrammingError) as exc:
            # The data cannot be stored as it is: the flusher parks the record that causes it.
            raise InternalError(f"PostgreSQL rejected the batch: {exc}") from exc

    async def _fetch(self, query: str, params: Sequence[Any] = ()) -> list[TupleRow]:
        async with self._connection() as conn:
            cursor = await conn.execute(query, params)
            return await cursor.fetchall()

    async def write(self, records: list[Record], parked: list[ParkedEntry]) -> list[LedgerConflict]:
        ledger_records = [record for record in records if isinstance(record, LedgerRecord)]
        ledger = [ledger_row(record, Jsonb) for record in ledger_records]
        conflicts: list[LedgerConflict] = []
        customers = [
            (record.customer_id, record.name, Jsonb(record.metadata), record.created_ms)
            for record in records
            if isinstance(record, CustomerRecord)
        ]
        subscriptions = [
            (r.source_id, r.customer_id, r.plan, r.status, r.anchor_ms, r.changed_ms)
            for r in records
            if isinstance(r, SubscriptionRecord)
        ]
        events = [
            _event_row(event)
            for record in records
            if isinstance(record, LedgerRecord)
            for event in ledger_events(record)
        ] + [_event_row(record) for record in records if isinstance(record, EventRecord)]
        periods = [
            (r.customer_id, r.start_ms, r.plan, r.index, r.end_ms) for r in records if isinstance(r, PeriodRecord)
        ]
        settings = [
            (r.source_id, r.customer_id, Jsonb(r.fields), r.changed_ms)
            for r in records
            if isinstance(r, SettingsRecord)
        ]
        async with self._connection() as conn, conn.cursor() as cursor:
            for query, rows in (
                (INSERT_CUSTOMER, customers),
                (INSERT_SUBSCRIPTION, subscriptions),
                (INSERT_SETTINGS, settings),
                (INSERT_LEDGER, ledger),
                (INSERT_EVENT, events),
                (INSERT_PERIOD, periods),
                (INSERT_PARKED, [(p.source_id, p.raw, p.error) for p in parked]),
            ):
                if rows:
                    await cursor.executemany(query, rows)
                if query is INSERT_LEDGER and rows and cursor.rowcount < len(rows):
                    # Fewer rows than entries: some were there already (a replay, or a conflict to keep).
                    conflicts = await _keep_conflicts(cursor, ledger_records)
        return conflicts

    async def list_ledger(self, customer_id: str, limit: int, before_seq: int | None) -> list[LedgerRecord]:
        rows = await self._fetch(
            f"SELECT {LEDGER_COLUMNS} FROM ledger_entries WHERE customer_id = %s AND seq < %s"
            " ORDER BY seq DESC LIMIT %s",
            (customer_id, before_seq if before_seq is not None else 2**62, limit),
        )
        return [ledger_record_from_row(row, _as_stored) for row in rows]

    async def ledger_since(self, customer_id: str, after_seq: int, limit: int) -> list[LedgerRecord]:
        rows = await self._fetch(
            f"SELECT {LEDGER_COLUMNS} FROM ledger_entries WHERE customer_id = %s AND seq > %s ORDER BY seq LIMIT %s",
            (customer_id, after_seq, limit),
        )
        return [ledger_record_from_row(row, _as_stored) for row in rows]

    async def customers(self, customer_id: str | None = None) -> list[CustomerRecord]:
        rows = await self._fetch(
            "SELECT customer_id, name, metadata, created_ms FROM customers"
            " WHERE %s::text IS NULL OR customer_id = %s ORDER BY customer_id",
            (customer_id, customer_id),
        )
        return [CustomerRecord(row[0], row[1], dict(row[2]), row[3]) for row in rows]

    async def search_customers(self, query: str, limit: int, after_id: str | None) -> list[CustomerRecord]:
        rows = await self._fetch(
            "SELECT customer_id, name, metadata, created_ms FROM customers"
            " WHERE (left(customer_id, length(%s)) = %s OR strpos(lower(name), lower(%s)) > 0)"
            " AND customer_id > %s ORDER BY customer_id LIMIT %s",
            (query, query, query, after_id or "", limit),
        )
        return [CustomerRecord(row[0], row[1], dict(row[2]), row[3]) for row in rows]

    async def subscription_changes(self, customer_id: str | None = None) -> list[SubscriptionRecord]:
        rows = await self._fetch(
            "SELECT source_id, customer_id, plan, status, anchor_ms, changed_ms FROM subscription_changes"
            " WHERE %s::text IS NULL OR customer_id = %s ORDER BY customer_id, changed_ms, source_id",
            (customer_id, customer_id),
        )
        return [SubscriptionRecord(*row) for row in rows]

    async def settings_changes(self, customer_id: str | None = None) -> list[SettingsRecord]:
        rows = await self._fetch(
            "SELECT source_id, customer_id, fields, changed_ms FROM settings_changes"
            " WHERE %s::text IS NULL OR customer_id = %s ORDER BY customer_id, changed_ms",
            (customer_id, customer_id),
        )
        return [SettingsRecord(row[0], row[1], dict(row[2]), row[3]) for row in rows]

    async def save_catalog(self, version: str, source: str, applied_ms: int) -> None:
        async with self._connection() as conn:
            await conn.execute(
                "INSERT INTO catalog_applications (version, source, applied_ms) VALUES (%s, %s, %s)",
                (version, source, applied_ms),
            )

    async def latest_catalog(self) -> tuple[str, str] | None:
        rows = await self._fetch("SELECT version, source FROM catalog_applications ORDER BY id DESC LIMIT 1")
        return (rows[0][0], rows[0][1]) if rows else None

    async def parked(self) -> list[ParkedEntry]:
        rows = await self._fetch(
            f"SELECT source_id, raw, error FROM parked_entries p WHERE {UNRESOLVED_PARKED} ORDER BY source_id"
        )
        return [ParkedEntry(*row) for row in rows]

    async def parked_count(self) -> int:
        rows = await self._fetch(f"SELECT count(*) FROM parked_entries p WHERE {UNRESOLVED_PARKED}")
        return int(rows[0][0])

    async def resolve_parked(self, source_id: str, resolved_ms: int) -> None:
        async with self._connection() as conn:
            await conn.execute(
                "INSERT INTO parked_resolutions VALUES (%s, %s) ON CONFLICT (source_id) DO NOTHING",
                (source_id, resolved_ms),
            )

    async def periods_to_invoice(self, now_ms: int, limit: int) -> list[tuple[PeriodRecord, bool]]:
        rows = await self._fetch(
            "SELECT p.customer_id, p.plan, p.period_index, p.start_ms, p.end_ms, EXISTS (SELECT 1 FROM periods"
            " n WHERE n.customer_id = p.customer_id AND n.start_ms >= p.end_ms) OR EXISTS (SELECT 1 FROM"
            " subscription_changes s WHERE s.customer_id = p.customer_id AND s.status = 'canceled'"
            " AND s.changed_ms >= p.end_ms) FROM periods p"
            " WHERE p.end_ms <= %s AND NOT EXISTS (SELECT 1 FROM invoices i WHERE i.customer_id = p.customer_id"
            " AND i.period_start_ms = p.start_ms) ORDER BY p.end_ms, p.customer_id LIMIT %s",
            (now_ms, limit),
        )
        return [(PeriodRecord(*row[:5]), bool(row[5])) for row in rows]

    async def current_period(self, customer_id: str) -> PeriodRecord | None:
        rows = await self._fetch(
            "SELECT customer_id, plan, period_index, start_ms, end_ms FROM periods WHERE customer_id = %s"
            " ORDER BY start_ms DESC LIMIT 1",
            (customer_id,),
        )
        return PeriodRecord(*rows[0]) if rows else None

    async def ledger_between(self, customer_id: str, start_ms: int, end_ms: int) -> list[LedgerRecord]:
        rows = await self._fetch(
            f"SELECT {LEDGER_COLUMNS} FROM ledger_entries WHERE customer_id = %s AND created_ms >= %s"
            " AND created_ms < %s ORDER BY seq",
            (customer_id, start_ms, end_ms),
        )
        return [ledger_record_from_row(row, _as_stored) for row in rows]

    async def save_invoice(self, invoice: StoredInvoice, event: EventRecord) -> bool:
        async with self._connection() as conn:
            cursor = await conn.execute(
                "INSERT INTO invoices VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                (invoice.invoice_id, invoice.customer_id, invoice.period_start_ms, invoice.body, invoice.created_ms),
            )
            if cursor.rowcount == 0:
                return False
            await conn.execute(INSERT_EVENT, _event_row(event))
            return True

    async def list_invoices(self, customer_id: str, limit: int, before_start_ms: int | None) -> list[StoredInvoice]:
        rows = await self._fetch(
            "SELECT invoice_id, customer_id, period_start_ms, body, created_ms FROM invoices WHERE customer_id = %s"
            " AND period_start_ms < %s ORDER BY period_start_ms DESC LIMIT %s",
            (customer_id, before_start_ms if before_start_ms is not None else 2**62, limit),
        )
        return [StoredInvoice(*row) for row in rows]

    async def get_invoice(self, invoice_id: str) -> StoredInvoice | None:
        rows = await self._fetch(
            "SELECT invoice_id, customer_id, period_start_ms, body, created_ms FROM invoices WHERE invoice_id = %s",
            (invoice_id,),
        )
        return StoredInvoice(*rows[0]) if rows else None

    async def list_events(self, customer_id: str, limit: int, before_seq: int | None) -> list[tuple[int, EventRecord]]:
        rows = await self._fetch(
            f"SELECT seq, {EVENT_COLUMNS} FROM events WHERE (%s = '' OR customer_id = %s) AND seq < %s"
            " ORDER BY seq DESC LIMIT %s",
            (customer_id, customer_id, before_seq if before_seq is not None else 2**62, limit),
        )
        return [(row[0], EventRecord(*row[1:])) for row in rows]

    async def get_event(self, event_id: str) -> EventRecord | None:
        rows = await self._fetch(f"SELECT {EVENT_COLUMNS} FROM events WHERE event_id = %s", (event_id,))
        return EventRecord(*rows[0]) if rows else None

    async def enqueue_deliveries(self, urls: list[str], now_ms: int, after_seq: int = 0) -> tuple[int, int]:
        made = 0
        async with self._connection() as conn:
            # A seq is taken at insert, not at commit: an event below `newest` may still commit after this read,
            # and a later call after `newest` misses it; the sender's periodic pass from 0 picks it up.
            rows = await (await conn.execute("SELECT COALESCE(MAX(seq), 0) FROM events")).fetchall()
            newest = int(rows[0][0])
            for url in urls:
                cursor = await conn.execute(
                    "INSERT INTO deliveries SELECT e.event_id, %s, 'pending', 0, %s, '' FROM events e"
                    " WHERE e.seq > %s AND e.seq <= %s"
                    " AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = e.event_id AND d.url = %s)"
                    " ON CONFLICT DO NOTHING",
                    (url, now_ms, after_seq, newest, url),
                )
                made += cursor.rowcount
        return made, newest

    async def due_deliveries(self, now_ms: int, limit: int, url: str | None = None) -> list[Delivery]:
        rows = await self._fetch(
            f"SELECT {DELIVERY_COLUMNS}, e.payload FROM deliveries d JOIN events e ON e.event_id = d.event_id"
            " WHERE d.status = 'pending' AND d.next_attempt_ms <= %s AND (%s::text IS NULL OR d.url = %s)"
            " ORDER BY d.next_attempt_ms LIMIT %s",
            (now_ms, url, url, limit),
        )
        return [Delivery(*row) for row in rows]

    async def claim_delivery(self, delivery: Delivery, lease_until_ms: int) -> bool:
        async with self._connection() as conn:
            cursor = await conn.execute(
                "UPDATE deliveries SET next_attempt_ms = %s WHERE event_id = %s AND url = %s AND status = 'pending'"
                " AND next_attempt_ms = %s",
                (lease_until_ms, delivery.event_id, delivery.url, delivery.next_attempt_ms),
            )
            return cursor.rowcount == 1

    async def record_delivery(self, delivery: Delivery) -> None:
        async with self._connection() as conn:
            await conn.execute(
                "UPDATE deliveries SET status = %s, attempts = %s, next_attempt_ms = %s, last_error = %s"
                " WHERE event_id = %s AND url = %s",
                (
                    delivery.status,
                    delivery.attempts,
                    delivery.next_attempt_ms,
                    delivery.last_error,
                    delivery.event_id,
                    delivery.url,
                ),
            )

    async def deliveries_of(self, event_ids: list[str]) -> list[Delivery]:
        if not event_ids:
            return []
        rows = await self._fetch(
            f"SELECT {DELIVERY_COLUMNS} FROM deliveries d WHERE d.event_id = ANY(%s) ORDER BY d.event_id, d.url",
            (event_ids,),
        )
        return [Delivery(*row) for row in rows]

    async def redeliver(self, event_id: str, now_ms: int) -> int:
        async with self._connection() as conn:
            cursor = await conn.execute(
                "UPDATE deliveries SET status = 'pending', attempts = 0, next_attempt_ms = %s, last_error = ''"
                " WHERE event_id = %s",
                (now_ms, event_id),
            )
            return cursor.rowcount


def _event_row(event: EventRecord) -> tuple[Any, ...]:
    return (event.event_id, event.customer_id, event.type, event.entry_id, event.created_ms, event.payload)


def migrate(url: str, migration_url: str) -> None:
    """Apply pending migrations as the schema owner, then give the sidecar's role what it may do (blocking)."""
    from yoyo import get_backend, read_migrations

    with psycopg.connect(url, connect_timeout=CONNECT_TIMEOUT_SECONDS) as conn:
        sidecar_role = conn.execute("SELECT current_user").fetchone()
    assert sidecar_role is not None
    backend = get_backend(
        migration_url.replace("postgresql://", "postgresql+psycopg://", 1).replace(
            "postgres://", "postgresql+psycopg://", 1
        )
    )
    try:
        with resources.as_file(resources.files("creditgate.server.ledger") / "pg_migrations") as folder:
            migrations = read_migrations(str(folder))
            with backend.lock():
                pending = backend.to_apply(migrations)
                backend.apply_migrations(pending)
        if pending:
            log.info("postgres_migrated", applied=[migration.id for migration in pending])
    finally:
        backend.connection.close()
    with psycopg.connect(migration_url, connect_timeout=CONNECT_TIMEOUT_SECONDS, autocommit=True) as owner:
        owner_role = owner.execute("SELECT current_user").fetchone()
        tables = sql.SQL(", ").join(sql.Identifier(table) for table in TABLES)
        if owner_role == sidecar_role:
            owner.execute("REVOKE UPDATE, DELETE, TRUNCATE ON ledger_entries FROM CURRENT_USER")
        else:
            owner.execute(sql.SQL("GRANT SELECT, INSERT ON {} TO {}").format(tables, sql.Identifier(sidecar_role[0])))
            updated = sql.SQL(", ").join(sql.Identifier(table) for table in UPDATED_TABLES)
            owner.execute(sql.SQL("GRANT UPDATE ON {} TO {}").format(updated, sql.Identifier(sidecar_role[0])))


async def _keep_conflicts(cursor: psycopg.AsyncCursor[TupleRow], records: list[LedgerRecord]) -> list[LedgerConflict]:
    """The entries whose id the ledger holds with other content, appended under the next free number
    (ledger/conflicts.py); a conflict kept before (a replay) is not kept again."""
    kept = []
    for record in records:
        await cursor.execute(
            f"SELECT {LEDGER_COLUMNS} FROM ledger_entries WHERE customer_id = %s AND seq = %s",
            (record.customer_id, record.seq),
        )
        row = await cursor.fetchone()
        if row is None or same_entry(ledger_record_from_row(row, _as_stored), record):
            continue
        print_ = digest(record)
        await cursor.execute(
            "SELECT 1 FROM ledger_conflicts WHERE customer_id = %s AND original_seq = %s AND digest = %s",
            (record.customer_id, record.seq, print_),
        )
        if await cursor.fetchone():
            continue
        await cursor.execute("SELECT MAX(seq) FROM ledger_entries WHERE customer_id = %s", (record.customer_id,))
        last = await cursor.fetchone()
        assert last is not None  # the entry it conflicts with is there
        conflict = LedgerConflict(record.customer_id, record.seq, int(last[0]) + 1, print_)
        await cursor.execute(INSERT_LEDGER, ledger_row(moved(record, conflict.seq), Jsonb))
        await cursor.execute(
            "INSERT INTO ledger_conflicts VALUES (%s, %s, %s, %s, %s)",
            (conflict.customer_id, conflict.original_seq, conflict.digest, conflict.seq, record.created_ms),
        )
        await cursor.execute(INSERT_EVENT, _event_row(conflict_event(record, conflict)))
        kept.append(conflict)
    return kept


def _as_stored(value: Any) -> Any:
    return value  # psycopg already decodes jsonb into dicts and lists

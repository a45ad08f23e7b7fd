"""The embedded durable store: SQLite in WAL mode, used from one worker thread."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path
from typing import TypeVar

import orjson
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
from creditgate.server.errors import FailedPrecondition, InternalError, Unavailable
from creditgate.server.ledger.store import Delivery, ParkedEntry, StoredInvoice

T = TypeVar("T")
# The columns of schema versions 1 and 2; version 3 added the grants' rollover caps.
LEDGER_COLUMNS_V2 = (
    "customer_id, seq, kind, credits_delta, balance_after, created_ms, feature, quantity, dimensions,"
    " free_units_used, overage_credits, bucket_id, request_id, reason, price, bucket_priority, bucket_expires_ms,"
    " reserved_delta, reservation_id, takes"
)
LEDGER_COLUMNS = LEDGER_COLUMNS_V2 + ", bucket_rollover_cap"
EVENT_COLUMNS = "event_id, customer_id, type, entry_id, created_ms, payload"
DELIVERY_COLUMNS = "d.event_id, d.url, d.status, d.attempts, d.next_attempt_ms, d.last_error"
SCHEMA_VERSION = 4
# The page cache (KiB) and the WAL's size in pages before it is checkpointed (see open).
CACHE_KIB = 65536
WAL_CHECKPOINT_PAGES = 10000
# Parked entries (aliased p) that retry-parked has not written since.
UNRESOLVED_PARKED = "NOT EXISTS (SELECT 1 FROM parked_resolutions r WHERE r.source_id = p.source_id)"
INSERT_LEDGER = f"INSERT OR IGNORE INTO ledger_entries ({LEDGER_COLUMNS}) VALUES ({', '.join('?' * 21)})"


class SqliteStore:
    def __init__(self, path: str) -> None:
        self._path = path
        # sqlite3 connections belong to one thread: every call runs on this one.
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")
        self._db: sqlite3.Connection | None = None

    async def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        def call() -> T:
            assert self._db is not None, "store is not open"
            return work(self._db)

        try:
            return await asyncio.get_running_loop().run_in_executor(self._thread, call)
        except sqlite3.OperationalError as exc:
            raise Unavailable(f"SQLite: {exc}") from exc
        except (sqlite3.IntegrityError, sqlite3.DataError, OverflowError) as exc:
            # The data cannot be stored as it is: the flusher parks the record that causes it.
            raise InternalError(f"SQLite rejected the batch: {exc}") from exc

    async def open(self) -> None:
        def connect() -> None:
            if self._path != ":memory:":
                Path(self._path).parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self._path, check_same_thread=False, isolation_level=None)
            version = _schema_version(db)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA busy_timeout=5000")
            # Under many customers each flushed batch touches a page per customer: the pages stay cached, and the
            # WAL is copied back into the file every 40 MiB rather than 4 MiB (a page written many times between
            # two checkpoints is copied once). Both together: 17,800 -> 29,500 entries/s (bench/NOTES.md).
            db.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
            db.execute(f"PRAGMA wal_autocheckpoint={WAL_CHECKPOINT_PAGES}")
            _create_schema(db, version)
            self._db = db

        await asyncio.get_running_loop().run_in_executor(self._thread, connect)

    async def close(self) -> None:
        if self._db is not None:
            await self._run(lambda db: db.close())
            self._db = None
        self._thread.shutdown(wait=True)

    async def write(self, records: list[Record], parked: list[ParkedEntry]) -> list[LedgerConflict]:
        def work(db: sqlite3.Connection) -> list[LedgerConflict]:
            with _transaction(db):
                # One executemany for the batch's ledger entries: the flusher's hot path.
                ledger = [r for r in records if isinstance(r, LedgerRecord)]
                before = db.total_changes
                db.executemany(INSERT_LEDGER, [ledger_row(r, _json_text) for r in ledger])
                # Fewer rows than entries: some were there already (a replay, or a conflict to keep).
                conflicts = _keep_conflicts(db, ledger) if db.total_changes - before < len(ledger) else []
                db.executemany(
                    f"INSERT OR IGNORE INTO events ({EVENT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
                    [
                        (e.event_id, e.customer_id, e.type, e.entry_id, e.created_ms, e.payload)
                        for r in records
                        if isinstance(r, LedgerRecord)
                        for e in ledger_events(r)
                    ],
                )
                for record in records:
                    if not isinstance(record, LedgerRecord):
                        _insert(db, record)
                db.executemany(
                    "INSERT OR IGNORE INTO parked_entries VALUES (?, ?, ?)",
                    [(p.source_id, p.raw, p.error) for p in parked],
                )
                return conflicts

        return await self._run(work)

    async def list_ledger(self, customer_id: str, limit: int, before_seq: int | None) -> list[LedgerRecord]:
        def work(db: sqlite3.Connection) -> list[LedgerRecord]:
            rows = db.execute(
                f"SELECT {LEDGER_COLUMNS} FROM ledger_entries WHERE customer_id = ? AND seq < ?"
                " ORDER BY seq DESC LIMIT ?",
                (customer_id, before_seq if before_seq is not None else 2**62, limit),
            ).fetchall()
            return [ledger_record_from_row(row, json.loads) for row in rows]

        return await self._run(work)

    async def ledger_since(self, customer_id: str, after_seq: int, limit: int) -> list[LedgerRecord]:
        def work(db: sqlite3.Connection) -> list[LedgerRecord]:
            rows = db.execute(
                f"SELECT {LEDGER_COLUMNS} FROM ledger_entries WHERE customer_id = ? AND seq > ? ORDER BY seq LIMIT ?",
                (customer_id, after_seq, limit),
            ).fetchall()
            return [ledger_record_from_row(row, json.loads) for row in rows]

        return await self._run(work)

    async def customers(self, customer_id: str | None = None) -> list[CustomerRecord]:
        def work(db: sqlite3.Connection) -> list[CustomerRecord]:
            rows = db.execute(
                "SELECT customer_id, name, metadata, created_ms FROM customers"
                " WHERE ? IS NULL OR customer_id = ? ORDER BY customer_id",
                (customer_id, customer_id),
            )
            return [CustomerRecord(row[0], row[1], json.loads(row[2]), row[3]) for row in rows.fetchall()]

        return await self._run(work)

    async def search_customers(self, query: str, limit: int, after_id: str | None) -> list[CustomerRecord]:
        def work(db: sqlite3.Connection) -> list[CustomerRecord]:
            rows = db.execute(
                "SELECT customer_id, name, metadata, created_ms FROM customers"
                " WHERE (substr(customer_id, 1, length(?)) = ? OR instr(lower(name), lower(?)) > 0)"
                " AND customer_id > ? ORDER BY customer_id LIMIT ?",
                (query, query, query, after_id or "", limit),
            )
            return [CustomerRecord(row[0], row[1], json.loads(row[2]), row[3]) for row in rows.fetchall()]

        return await self._run(work)

    async def subscription_changes(self, customer_id: str | None = None) -> list[SubscriptionRecord]:
        def work(db: sqlite3.Connection) -> list[SubscriptionRecord]:
            rows = db.execute(
                "SELECT source_id, customer_id, plan, status, anchor_ms, changed_ms FROM subscription_changes"
                " WHERE ? IS NULL OR customer_id = ? ORDER BY customer_id, changed_ms, source_id",
                (customer_id, customer_id),
            )
            return [SubscriptionRecord(*row) for row in rows.fetchall()]

        return await self._run(work)

    async def settings_changes(self, customer_id: str | None = None) -> list[SettingsRecord]:
        def work(db: sqlite3.Connection) -> list[SettingsRecord]:
            rows = db.execute(
                "SELECT source_id, customer_id, fields, changed_ms FROM settings_changes"
                " WHERE ? IS NULL OR customer_id = ? ORDER BY customer_id, rowid",
                (customer_id, customer_id),
            )
            return [SettingsRecord(row[0], row[1], json.loads(row[2]), row[3]) for row in rows.fetchall()]

        return await self._run(work)

    async def save_catalog(self, version: str, source: str, applied_ms: int) -> None:
        def work(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT INTO catalog_applications (version, source, applied_ms) VALUES (?, ?, ?)",
                (version, source, applied_ms),
            )

        await self._run(work)

    async def latest_catalog(self) -> tuple[str, str] | None:
        def work(db: sqlite3.Connection) -> tuple[str, str] | None:
            row = db.execute("SELECT version, source FROM catalog_applications ORDER BY id DESC LIMIT 1").fetchone()
            return (row[0], row[1]) if row else None

        return await self._run(work)

    async def parked(self) -> list[ParkedEntry]:
        def work(db: sqlite3.Connection) -> list[ParkedEntry]:
            rows = db.execute(
                f"SELECT source_id, raw, error FROM parked_entries p WHERE {UNRESOLVED_PARKED} ORDER BY source_id"
            ).fetchall()
            return [ParkedEntry(*row) for row in rows]

        return await self._run(work)

    async def parked_count(self) -> int:
        def work(db: sqlite3.Connection) -> int:
            count: int = db.execute(f"SELECT count(*) FROM parked_entries p WHERE {UNRESOLVED_PARKED}").fetchone()[0]
            return count

        return await self._run(work)

    async def resolve_parked(self, source_id: str, resolved_ms: int) -> None:
        def work(db: sqlite3.Connection) -> None:
            db.execute("INSERT OR IGNORE INTO parked_resolutions VALUES (?, ?)", (source_id, resolved_ms))

        await self._run(work)

    async def periods_to_invoice(self, now_ms: int, limit: int) -> list[tuple[PeriodRecord, bool]]:
        def work(db: sqlite3.Connection) -> list[tuple[PeriodRecord, bool]]:
            rows = db.execute(
                "SELECT p.customer_id, p.plan, p.period_index, p.start_ms, p.end_ms, EXISTS (SELECT 1 FROM periods"
                " n WHERE n.customer_id = p.customer_id AND n.start_ms >= p.end_ms) OR EXISTS (SELECT 1 FROM"
                " subscription_changes s WHERE s.customer_id = p.customer_id AND s.status = 'canceled'"
                " AND s.changed_ms >= p.end_ms) FROM periods p"
                " WHERE p.end_ms <= ? AND NOT EXISTS (SELECT 1 FROM invoices i WHERE i.customer_id = p.customer_id"
                " AND i.period_start_ms = p.start_ms) ORDER BY p.end_ms, p.customer_id LIMIT ?",
                (now_ms, limit),
            ).fetchall()
            return [(PeriodRecord(*row[:5]), bool(row[5])) for row in rows]

        return await self._run(work)

    async def current_period(self, customer_id: str) -> PeriodRecord | None:
        def work(db: sqlite3.Connection) -> PeriodRecord | None:
            row = db.execute(
                "SELECT customer_id, plan, period_index, start_ms, end_ms FROM periods WHERE customer_id = ?"
                " ORDER BY start_ms DESC LIMIT 1",
                (customer_id,),
            ).fetchone()
            return PeriodRecord(*row) if row else None

        return await self._run(work)

    async def ledger_between(self, customer_id: str, start_ms: int, end_ms: int) -> list[LedgerRecord]:
        def work(db: sqlite3.Connection) -> list[LedgerRecord]:
            rows = db.execute(
                f"SELECT {LEDGER_COLUMNS} FROM ledger_entries WHERE customer_id = ? AND created_ms >= ?"
                " AND created_ms < ? ORDER BY seq",
                (customer_id, start_ms, end_ms),
            ).fetchall()
            return [ledger_record_from_row(row, json.loads) for row in rows]

        return await self._run(work)

    async def save_invoice(self, invoice: StoredInvoice, event: EventRecord) -> bool:
        def work(db: sqlite3.Connection) -> bool:
            with _transaction(db):
                inserted = db.execute(
                    "INSERT OR IGNORE INTO invoices VALUES (?, ?, ?, ?, ?)",
                    (
                        invoice.invoice_id,
                        invoice.customer_id,
                        invoice.period_start_ms,
                        invoice.body,
                        invoice.created_ms,
                    ),
                ).rowcount
                if inserted:
                    _insert_event(db, event)
                return bool(inserted)

        return await self._run(work)

    async def list_invoices(self, customer_id: str, limit: int, before_start_ms: int | None) -> list[StoredInvoice]:
        def work(db: sqlite3.Connection) -> list[StoredInvoice]:
            rows = db.execute(
                "SELECT invoice_id, customer_id, period_start_ms, body, created_ms FROM invoices WHERE customer_id = ?"
                " AND period_start_ms < ? ORDER BY period_start_ms DESC LIMIT ?",
                (customer_id, before_start_ms if before_start_ms is not None else 2**62, limit),
            ).fetchall()
            return [StoredInvoice(*row) for row in rows]

        return await self._run(work)

    async def get_invoice(self, invoice_id: str) -> StoredInvoice | None:
        def work(db: sqlite3.Connection) -> StoredInvoice | None:
            row = db.execute(
                "SELECT invoice_id, customer_id, period_start_ms, body, created_ms FROM invoices WHERE invoice_id = ?",
                (invoice_id,),
            ).fetchone()
            return StoredInvoice(*row) if row else None

        return await self._run(work)

    async def list_events(self, customer_id: str, limit: int, before_seq: int | None) -> list[tuple[int, EventRecord]]:
        def work(db: sqlite3.Connection) -> list[tuple[int, EventRecord]]:
            rows = db.execute(
                f"SELECT seq, {EVENT_COLUMNS} FROM events WHERE (? = '' OR customer_id = ?) AND seq < ?"
                " ORDER BY seq DESC LIMIT ?",
                (customer_id, customer_id, before_seq if before_seq is not None else 2**62, limit),
            ).fetchall()
            return [(row[0], EventRecord(*row[1:])) for row in rows]

        return await self._run(work)

    async def get_event(self, event_id: str) -> EventRecord | None:
        def work(db: sqlite3.Connection) -> EventRecord | None:
            row = db.execute(f"SELECT {EVENT_COLUMNS} FROM events WHERE event_id = ?", (event_id,)).fetchone()
            return EventRecord(*row) if row else None

        return await self._run(work)

    async def enqueue_deliveries(self, urls: list[str], now_ms: int, after_seq: int = 0) -> tuple[int, int]:
        def work(db: sqlite3.Connection) -> tuple[int, int]:
            made = 0
            with _transaction(db):
                # One writer at a time: no event below `newest` can be committed after this read.
                newest = int(db.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0])
                for url in urls:
                    made += db.execute(
                        "INSERT INTO deliveries SELECT e.event_id, ?, 'pending', 0, ?, '' FROM events e"
                        " WHERE e.seq > ? AND e.seq <= ?"
                        " AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = e.event_id AND d.url = ?)",
                        (url, now_ms, after_seq, newest, url),
                    ).rowcount
            return made, newest

        return await self._run(work)

    async def due_deliveries(self, now_ms: int, limit: int, url: str | None = None) -> list[Delivery]:
        def work(db: sqlite3.Connection) -> list[Delivery]:
            rows = db.execute(
                f"SELECT {DELIVERY_COLUMNS}, e.payload FROM deliveries d JOIN events e ON e.event_id = d.event_id"
                " WHERE d.status = 'pending' AND d.next_attempt_ms <= ? AND (? IS NULL OR d.url = ?)"
                " ORDER BY d.next_attempt_ms LIMIT ?",
                (now_ms, url, url, limit),
            ).fetchall()
            return [Delivery(*row) for row in rows]

        return await self._run(work)

    async def claim_delivery(self, delivery: Delivery, lease_until_ms: int) -> bool:
        def work(db: sqlite3.Connection) -> bool:
            return bool(
                db.execute(
                    "UPDATE deliveries SET next_attempt_ms = ? WHERE event_id = ? AND url = ? AND status = 'pending'"
                    " AND next_attempt_ms = ?",
                    (lease_until_ms, delivery.event_id, delivery.url, delivery.next_attempt_ms),
                ).rowcount
            )

        return await self._run(work)

    async def record_delivery(self, delivery: Delivery) -> None:
        def work(db: sqlite3.Connection) -> None:
            db.execute(
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

        await self._run(work)

    async def deliveries_of(self, event_ids: list[str]) -> list[Delivery]:
        def work(db: sqlite3.Connection) -> list[Delivery]:
            marks = ", ".join("?" * len(event_ids))
            rows = db.execute(
                f"SELECT {DELIVERY_COLUMNS} FROM deliveries d WHERE d.event_id IN ({marks}) ORDER BY d.event_id, d.url",
                event_ids,
            ).fetchall()
            return [Delivery(*row) for row in rows]

        return await self._run(work) if event_ids else []

    async def redeliver(self, event_id: str, now_ms: int) -> int:
        def work(db: sqlite3.Connection) -> int:
            return db.execute(
                "UPDATE deliveries SET status = 'pending', attempts = 0, next_attempt_ms = ?, last_error = ''"
                " WHERE event_id = ?",
                (now_ms, event_id),
            ).rowcount

        return await self._run(work)


def _insert_event(db: sqlite3.Connection, event: EventRecord) -> None:
    db.execute(
        f"INSERT OR IGNORE INTO events ({EVENT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
        (event.event_id, event.customer_id, event.type, event.entry_id, event.created_ms, event.payload),
    )


def _schema_version(db: sqlite3.Connection) -> int:
    """The file's schema version. A file written by a newer creditgate is refused and left as it is: this one might
    write rows that version does not expect."""
    version: int = db.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        db.close()
        raise FailedPrecondition(
            f"the SQLite file has schema version {version}; this creditgate knows versions up to {SCHEMA_VERSION}",
            field="database_url",
            reason="STORE_SCHEMA_TOO_NEW",
        )
    return version


def _create_schema(db: sqlite3.Connection, version: int) -> None:
    """The schema of SCHEMA_VERSION: a version 1 file's ledger (keyed by customer and seq) is moved into it, a
    version 2 file's ledger gains the rollover cap column (-1, carries nothing: version 2 kept no caps)."""
    schema = resources.files("creditgate.server.ledger").joinpath("sqlite_schema.sql").read_text()
    with _transaction(db):
        if version == 1:
            # The triggers go with the old table; the schema makes them again on the new one.
            db.execute("DROP TRIGGER ledger_entries_no_update")
            db.execute("DROP TRIGGER ledger_entries_no_delete")
            db.execute("ALTER TABLE ledger_entries RENAME TO ledger_entries_v1")
        if version == 2:
            db.execute("ALTER TABLE ledger_entries ADD COLUMN bucket_rollover_cap INTEGER NOT NULL DEFAULT -1")
        for statement in _statements(schema):
            db.execute(statement)
        if version == 1:
            db.execute(
                f"INSERT INTO ledger_entries ({LEDGER_COLUMNS_V2}) SELECT {LEDGER_COLUMNS_V2} FROM ledger_entries_v1"
            )
            db.execute("DROP TABLE ledger_entries_v1")
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")


def _statements(script: str) -> list[str]:
    """The statements of a schema script (executescript would commit the migration's transaction half-way)."""
    statements, pending = [], ""
    for line in script.splitlines(keepends=True):
        if line.startswith("--") and not pending:
            continue
        pending += line
        if sqlite3.complete_statement(pending):
            statements.append(pending.strip())
            pending = ""
    return statements


def _json_text(value: object) -> str:
    return orjson.dumps(value).decode()


class _transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *_: object) -> None:
        self._db.execute("ROLLBACK" if exc_type else "COMMIT")


def _keep_conflicts(db: sqlite3.Connection, records: list[LedgerRecord]) -> list[LedgerConflict]:
    """The entries whose id the ledger holds with other content, appended under the next free number
    (ledger/conflicts.py); a conflict kept before (a replay) is not kept again."""
    kept = []
    for record in records:
        row = db.execute(
            f"SELECT {LEDGER_COLUMNS} FROM ledger_entries WHERE customer_id = ? AND seq = ?",
            (record.customer_id, record.seq),
        ).fetchone()
        if row is None or same_entry(ledger_record_from_row(row, json.loads), record):
            continue
        print_ = digest(record)
        if db.execute(
            "SELECT 1 FROM ledger_conflicts WHERE customer_id = ? AND original_seq = ? AND digest = ?",
            (record.customer_id, record.seq, print_),
        ).fetchone():
            continue
        last = db.execute("SELECT MAX(seq) FROM ledger_entries WHERE customer_id = ?", (record.customer_id,))
        conflict = LedgerConflict(record.customer_id, record.seq, int(last.fetchone()[0]) + 1, print_)
        db.execute(INSERT_LEDGER, ledger_row(moved(record, conflict.seq), _json_text))
        db.execute(
            "INSERT INTO ledger_conflicts VALUES (?, ?, ?, ?, ?)",
            (conflict.customer_id, conflict.original_seq, conflict.digest, conflict.seq, record.created_ms),
        )
        _insert_event(db, conflict_event(record, conflict))
        kept.append(conflict)
    return kept


def _insert(db: sqlite3.Connection, record: Record) -> None:
    if isinstance(record, EventRecord):
        _insert_event(db, record)
    elif isinstance(record, CustomerRecord):
        db.execute(
            "INSERT OR IGNORE INTO customers VALUES (?, ?, ?, ?)",
            (record.customer_id, record.name, json.dumps(record.metadata), record.created_ms),
        )
    elif isinstance(record, PeriodRecord):
        # A plan change ends the running period early: the earlier end wins, whatever the order.
        db.execute(
            "INSERT INTO periods VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT (customer_id, start_ms) DO UPDATE SET end_ms = MIN(end_ms, excluded.end_ms)",
            (record.customer_id, record.start_ms, record.plan, record.index, record.end_ms),
        )
    elif isinstance(record, SettingsRecord):
        db.execute(
            "INSERT OR IGNORE INTO settings_changes VALUES (?, ?, ?, ?)",
            (record.source_id, record.customer_id, json.dumps(record.fields), record.changed_ms),
        )
    elif isinstance(record, SubscriptionRecord):
        db.execute(
            "INSERT OR IGNORE INTO subscription_changes VALUES (?, ?, ?, ?, ?, ?)",
            (
                record.source_id,
                record.customer_id,
                record.plan,
                record.status,
                record.anchor_ms,
                record.changed_ms,
            ),
        )

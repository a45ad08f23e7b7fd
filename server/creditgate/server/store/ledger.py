"""The ledger: customers' entries (append-only), the conflicts kept among them (store/conflicts.py), and outbox
entries parked because they could not be parsed or written."""

from __future__ import annotations

from dataclasses import dataclass

from creditgate.server.domain.records import LedgerRecord, ledger_record_from_row, ledger_row
from creditgate.server.store.conflicts import LedgerConflict, conflict_event, digest, moved, same_entry
from creditgate.server.store.database import NEWEST, Database, Session, placeholders
from creditgate.server.store.events import insert_events

LEDGER_COLUMNS = (
    "customer_id, seq, kind, credits_delta, balance_after, created_ms, feature, quantity, dimensions,"
    " free_units_used, overage_credits, bucket_id, request_id, reason, price, bucket_priority, bucket_expires_ms,"
    " reserved_delta, reservation_id, takes, bucket_rollover_cap"
)
INSERT_LEDGER = (
    f"INSERT INTO ledger_entries ({LEDGER_COLUMNS}) VALUES ({placeholders(21)})"
    " ON CONFLICT (customer_id, seq) DO NOTHING"
)
# Parked entries (aliased p) that retry-parked has not written since.
UNRESOLVED_PARKED = "NOT EXISTS (SELECT 1 FROM parked_resolutions r WHERE r.source_id = p.source_id)"


@dataclass(frozen=True, slots=True)
class ParkedEntry:
    """An outbox entry that could not be parsed or written, kept aside so it does not block the stream."""

    source_id: str
    raw: str
    error: str


def insert_entries(session: Session, records: list[LedgerRecord]) -> list[LedgerConflict]:
    """Entries already written are skipped (replays are harmless); entries whose id another entry holds are kept
    as conflicts, returned."""
    # One executemany for the batch's entries: the flusher's hot path.
    written = session.executemany(INSERT_LEDGER, [ledger_row(r, session.dialect.encode_json) for r in records])
    # Fewer rows than entries: some were there already (a replay, or a conflict to keep).
    return _keep_conflicts(session, records) if written < len(records) else []


def insert_parked(session: Session, parked: list[ParkedEntry]) -> None:
    session.executemany(
        "INSERT INTO parked_entries (source_id, raw, error) VALUES (?, ?, ?) ON CONFLICT (source_id) DO NOTHING",
        [(p.source_id, p.raw, p.error) for p in parked],
    )


def _keep_conflicts(session: Session, records: list[LedgerRecord]) -> list[LedgerConflict]:
    """The entries whose id the ledger holds with other content, appended under the next free number
    (store/conflicts.py); a conflict kept before (a replay) is not kept again."""
    decode, encode = session.dialect.decode_json, session.dialect.encode_json
    kept = []
    for record in records:
        row = session.fetchone(
            f"SELECT {LEDGER_COLUMNS} FROM ledger_entries WHERE customer_id = ? AND seq = ?",
            (record.customer_id, record.seq),
        )
        if row is None or same_entry(ledger_record_from_row(row, decode), record):
            continue
        print_ = digest(record)
        if session.fetchone(
            "SELECT 1 FROM ledger_conflicts WHERE customer_id = ? AND original_seq = ? AND digest = ?",
            (record.customer_id, record.seq, print_),
        ):
            continue
        # The entry it conflicts with is there: the customer has a highest seq.
        last = session.fetchall("SELECT MAX(seq) FROM ledger_entries WHERE customer_id = ?", (record.customer_id,))
        conflict = LedgerConflict(record.customer_id, record.seq, int(last[0][0]) + 1, print_)
        session.execute(INSERT_LEDGER, ledger_row(moved(record, conflict.seq), encode))
        session.execute(
            "INSERT INTO ledger_conflicts (customer_id, original_seq, digest, seq, created_ms) VALUES (?, ?, ?, ?, ?)",
            (conflict.customer_id, conflict.original_seq, conflict.digest, conflict.seq, record.created_ms),
        )
        insert_events(session, [conflict_event(record, conflict)])
        kept.append(conflict)
    return kept


class LedgerStore:
    _db: Database

    async def list_ledger(self, customer_id: str, limit: int, before_seq: int | None) -> list[LedgerRecord]:
        """A customer's entries, newest first, with seq < before_seq when given."""
        return await self._entries(
            "customer_id = ? AND seq < ? ORDER BY seq DESC LIMIT ?",
            (customer_id, before_seq if before_seq is not None else NEWEST, limit),
        )

    async def ledger_since(self, customer_id: str, after_seq: int, limit: int) -> list[LedgerRecord]:
        """A customer's entries with seq > after_seq, oldest first (reconcile, restore)."""
        return await self._entries("customer_id = ? AND seq > ? ORDER BY seq LIMIT ?", (customer_id, after_seq, limit))

    async def ledger_between(self, customer_id: str, start_ms: int, end_ms: int) -> list[LedgerRecord]:
        """A customer's entries dated in [start_ms, end_ms), in order."""
        return await self._entries(
            "customer_id = ? AND created_ms >= ? AND created_ms < ? ORDER BY seq", (customer_id, start_ms, end_ms)
        )

    async def _entries(self, where: str, params: tuple[object, ...]) -> list[LedgerRecord]:
        def work(session: Session) -> list[LedgerRecord]:
            rows = session.fetchall(f"SELECT {LEDGER_COLUMNS} FROM ledger_entries WHERE {where}", params)
            return [ledger_record_from_row(row, session.dialect.decode_json) for row in rows]

        return await self._db.read(work)

    async def parked(self) -> list[ParkedEntry]:
        """Outbox entries parked and not resolved since, by source id."""
        rows = await self._db.read(
            lambda session: session.fetchall(
                f"SELECT source_id, raw, error FROM parked_entries p WHERE {UNRESOLVED_PARKED} ORDER BY source_id"
            )
        )
        return [ParkedEntry(*row) for row in rows]

    async def parked_count(self) -> int:
        """How many parked() returns, counted by the store."""
        rows = await self._db.read(
            lambda session: session.fetchall(f"SELECT count(*) FROM parked_entries p WHERE {UNRESOLVED_PARKED}")
        )
        return int(rows[0][0])

    async def resolve_parked(self, source_id: str, resolved_ms: int) -> None:
        """Take a parked entry off the list once its record is written (the parked row itself is kept)."""
        await self._db.write(
            lambda session: session.execute(
                "INSERT INTO parked_resolutions (source_id, resolved_ms) VALUES (?, ?) ON CONFLICT (source_id)"
                " DO NOTHING",
                (source_id, resolved_ms),
            )
        )

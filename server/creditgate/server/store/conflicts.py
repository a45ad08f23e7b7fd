"""Ledger conflicts: an outbox entry whose id the durable ledger already holds with other content.

It happens when Redis came back older than the ledger and a decision was made on it before the customer was
verified (ledger/heal.py makes that rare): the entry reuses a number the ledger has given to another. Dropping it
(the insert-by-key that makes replays harmless) would lose an acknowledged decision, so it is kept: appended to the
customer's ledger under the next free number, recorded in ledger_conflicts (so that a replay of it is not appended
twice) and raised as a `ledger_conflict` event. The customer is then verified again, and rebuilt from the ledger
with the entry in it."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace

from creditgate.server.domain.records import EventRecord, LedgerRecord, event_record, ledger_row


@dataclass(frozen=True, slots=True)
class LedgerConflict:
    customer_id: str
    # The number the entry came with (held by another entry), and the one it was stored under.
    original_seq: int
    seq: int
    digest: str


def _canonical(value: object) -> str:
    return json.dumps(value, sort_keys=True)


def digest(record: LedgerRecord) -> str:
    """What an entry says, in 32 hex digits: two entries with one id and one digest are the same entry."""
    return hashlib.blake2b(repr(ledger_row(record, _canonical)).encode(), digest_size=16).hexdigest()


def same_entry(stored: LedgerRecord, arriving: LedgerRecord) -> bool:
    return ledger_row(stored, _canonical) == ledger_row(arriving, _canonical)


def moved(record: LedgerRecord, seq: int) -> LedgerRecord:
    return replace(record, seq=seq, events=())


def conflict_event(record: LedgerRecord, conflict: LedgerConflict) -> EventRecord:
    data = {
        "original_entry_id": f"{record.customer_id}/{conflict.original_seq}",
        "kind": record.kind,
        "credits_delta": record.credits_delta,
        "balance_after": record.balance_after,
    }
    entry_id = f"{record.customer_id}/{conflict.seq}"
    return event_record("ledger_conflict", record.customer_id, entry_id, record.created_ms, data)

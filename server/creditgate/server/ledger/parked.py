"""Parked outbox entries retried once their cause is fixed (`creditgate ledger retry-parked`): each is parsed again
from what was kept of it and written on its own; the ones that still fail stay parked."""

from __future__ import annotations

import ast
from dataclasses import dataclass, field

import structlog
from creditgate.server.domain.records import parse_record
from creditgate.server.errors import InternalError
from creditgate.server.store.ledger import ParkedEntry
from creditgate.server.store.store import Store

log = structlog.get_logger(__name__)


@dataclass(slots=True)
class RetryReport:
    # Source ids of the entries written and taken off the list.
    written: list[str] = field(default_factory=list)
    # The entries that still fail, each with the error of this attempt.
    still_parked: list[ParkedEntry] = field(default_factory=list)


async def retry_parked(store: Store, now_ms: int) -> RetryReport:
    """Parse and write every parked entry; a store that does not answer stops the retry (Unavailable is raised)
    and leaves the rest parked. Writing is by key, so an entry written before is not written twice."""
    report = RetryReport()
    for entry in await store.parked():
        stream, _, entry_id = entry.source_id.rpartition("/")
        try:
            # The flusher kept the entry's fields as the repr of a dict of strings.
            fields = ast.literal_eval(entry.raw)
            record = parse_record(stream, entry_id, fields)
        except (KeyError, ValueError, TypeError, AttributeError, SyntaxError) as exc:
            report.still_parked.append(ParkedEntry(entry.source_id, entry.raw, repr(exc)))
            continue
        try:
            await store.write([record], [])
        except InternalError as exc:
            report.still_parked.append(ParkedEntry(entry.source_id, entry.raw, exc.message))
            continue
        await store.resolve_parked(entry.source_id, now_ms)
        report.written.append(entry.source_id)
        log.info("parked_entry_written", entry=entry.source_id)
    return report

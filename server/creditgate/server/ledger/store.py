"""The durable store's interface, which SQLite (and later PostgreSQL) implement."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from creditgate.server.errors import InvalidArgument
from creditgate.server.ledger.records import LedgerRecord, Record


@dataclass(frozen=True, slots=True)
class ParkedEntry:
    """An outbox entry that could not be parsed or written, kept aside so it does not block the stream."""

    source_id: str
    raw: str
    error: str


class Store(Protocol):
    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def write(self, records: list[Record], parked: list[ParkedEntry]) -> None:
        """Write a batch in one transaction; records already written are skipped (replays are harmless)."""
        ...

    async def list_ledger(self, customer_id: str, limit: int, before_seq: int | None) -> list[LedgerRecord]:
        """A customer's entries, newest first, with seq < before_seq when given."""
        ...

    async def save_catalog(self, version: str, source: str, applied_ms: int) -> None: ...

    async def latest_catalog(self) -> tuple[str, str] | None:
        """(version, source) of the catalog applied last, if any."""
        ...

    async def parked(self) -> list[ParkedEntry]: ...


def open_store(url: str) -> Store:
    """The store for a CREDITGATE_DATABASE_URL."""
    from creditgate.server.ledger.sqlite_store import SqliteStore

    if url.startswith("sqlite:///"):
        return SqliteStore(url.removeprefix("sqlite:///"))
    raise InvalidArgument("database_url must start with sqlite:/// (PostgreSQL is not built yet)", field="database_url")

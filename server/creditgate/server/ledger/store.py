"""The durable store's interface, which SQLite and PostgreSQL implement, and the URL that picks one."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from creditgate.server.errors import InvalidArgument
from creditgate.server.ledger.records import CustomerRecord, LedgerRecord, Record, SubscriptionRecord


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

    async def ledger_since(self, customer_id: str, after_seq: int, limit: int) -> list[LedgerRecord]:
        """A customer's entries with seq > after_seq, oldest first (reconcile, restore)."""
        ...

    async def customers(self) -> list[CustomerRecord]:
        """Every customer, by id."""
        ...

    async def subscription_changes(self) -> list[SubscriptionRecord]:
        """Every subscription change, by customer, then in the order they happened."""
        ...

    async def save_catalog(self, version: str, source: str, applied_ms: int) -> None: ...

    async def latest_catalog(self) -> tuple[str, str] | None:
        """(version, source) of the catalog applied last, if any."""
        ...

    async def parked(self) -> list[ParkedEntry]: ...


def open_store(url: str, migration_url: str | None = None) -> Store:
    """The store for a CREDITGATE_DATABASE_URL (and, for PostgreSQL, the schema owner's URL)."""
    if url.startswith("sqlite:///"):
        from creditgate.server.ledger.sqlite_store import SqliteStore

        return SqliteStore(url.removeprefix("sqlite:///"))
    if url.startswith(("postgresql://", "postgres://")):
        from creditgate.server.ledger.postgres_store import PostgresStore

        return PostgresStore(url, migration_url)
    raise InvalidArgument(
        "database_url must start with sqlite:/// or postgresql://", field="database_url", reason="INVALID_DATABASE_URL"
    )

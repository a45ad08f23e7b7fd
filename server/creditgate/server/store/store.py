"""The durable store the server uses: every concern's store over one Database, and the batch write the flusher
makes across them in one transaction."""

from __future__ import annotations

from creditgate.server.domain.records import (
    CustomerRecord,
    EventRecord,
    LedgerRecord,
    PeriodRecord,
    Record,
    SettingsRecord,
    SubscriptionRecord,
    ledger_events,
)
from creditgate.server.errors import InvalidArgument
from creditgate.server.store.catalogs import CatalogStore
from creditgate.server.store.conflicts import LedgerConflict
from creditgate.server.store.customers import (
    CustomerStore,
    insert_customers,
    insert_settings_changes,
    insert_subscription_changes,
)
from creditgate.server.store.database import Database, Session
from creditgate.server.store.events import EventStore, insert_events
from creditgate.server.store.invoices import InvoiceStore, insert_periods
from creditgate.server.store.ledger import LedgerStore, ParkedEntry, insert_entries, insert_parked


class Store(LedgerStore, CustomerStore, CatalogStore, InvoiceStore, EventStore):
    def __init__(self, db: Database) -> None:
        self._db = db

    async def open(self) -> None:
        await self._db.open()

    async def close(self) -> None:
        await self._db.close()

    async def write(self, records: list[Record], parked: list[ParkedEntry]) -> list[LedgerConflict]:
        """Write a batch in one transaction; records already written are skipped (replays are harmless), and
        ledger entries whose id is taken by another entry are kept as conflicts (store/conflicts.py), returned."""
        ledger = [r for r in records if isinstance(r, LedgerRecord)]
        # Events of the server's own making (ledger/heal.py) come as they are; the others from the entries.
        events = [e for r in ledger for e in ledger_events(r)] + [r for r in records if isinstance(r, EventRecord)]

        def work(session: Session) -> list[LedgerConflict]:
            conflicts = insert_entries(session, ledger)
            insert_events(session, events)
            insert_customers(session, [r for r in records if isinstance(r, CustomerRecord)])
            insert_subscription_changes(session, [r for r in records if isinstance(r, SubscriptionRecord)])
            insert_settings_changes(session, [r for r in records if isinstance(r, SettingsRecord)])
            insert_periods(session, [r for r in records if isinstance(r, PeriodRecord)])
            insert_parked(session, parked)
            return conflicts

        return await self._db.write(work)


def open_store(url: str, migration_url: str | None = None) -> Store:
    """The store for a CREDITGATE_DATABASE_URL (and, for PostgreSQL, the schema owner's URL)."""
    if url.startswith("sqlite:///"):
        from creditgate.server.store.sqlite import SqliteDatabase

        return Store(SqliteDatabase(url.removeprefix("sqlite:///")))
    if url.startswith(("postgresql://", "postgres://")):
        from creditgate.server.store.postgres import PostgresDatabase

        return Store(PostgresDatabase(url, migration_url))
    raise InvalidArgument(
        "database_url must start with sqlite:/// or postgresql://", field="database_url", reason="INVALID_DATABASE_URL"
    )

"""Customers, and the changes to their subscriptions and own settings, as the outbox carried them."""

from __future__ import annotations

from creditgate.server.domain.records import CustomerRecord, SettingsRecord, SubscriptionRecord
from creditgate.server.store.database import Database, Session

CUSTOMER_COLUMNS = "customer_id, name, metadata, created_ms"
SUBSCRIPTION_COLUMNS = "source_id, customer_id, plan, status, anchor_ms, changed_ms"
SETTINGS_COLUMNS = "source_id, customer_id, fields, changed_ms"
# One customer's rows (the parameter twice: the customer id), or everyone's (None).
OF_CUSTOMER = "CAST(? AS TEXT) IS NULL OR customer_id = ?"


def insert_customers(session: Session, records: list[CustomerRecord]) -> None:
    encode = session.dialect.encode_json
    session.executemany(
        f"INSERT INTO customers ({CUSTOMER_COLUMNS}) VALUES (?, ?, ?, ?) ON CONFLICT (customer_id) DO NOTHING",
        [(r.customer_id, r.name, encode(r.metadata), r.created_ms) for r in records],
    )


def insert_subscription_changes(session: Session, records: list[SubscriptionRecord]) -> None:
    session.executemany(
        f"INSERT INTO subscription_changes ({SUBSCRIPTION_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (source_id) DO NOTHING",
        [(r.source_id, r.customer_id, r.plan, r.status, r.anchor_ms, r.changed_ms) for r in records],
    )


def insert_settings_changes(session: Session, records: list[SettingsRecord]) -> None:
    encode = session.dialect.encode_json
    session.executemany(
        f"INSERT INTO settings_changes ({SETTINGS_COLUMNS}) VALUES (?, ?, ?, ?) ON CONFLICT (source_id) DO NOTHING",
        [(r.source_id, r.customer_id, encode(r.fields), r.changed_ms) for r in records],
    )


class CustomerStore:
    _db: Database

    async def customers(self, customer_id: str | None = None) -> list[CustomerRecord]:
        """Every customer (or the one named), by id."""
        return await self._customers(f"{OF_CUSTOMER} ORDER BY customer_id", (customer_id, customer_id))

    async def search_customers(self, query: str, limit: int, after_id: str | None) -> list[CustomerRecord]:
        """Customers whose id starts with `query` or whose name contains it (either case), by id, after after_id."""
        position = self._db.dialect.position
        return await self._customers(
            f"(substr(customer_id, 1, length(?)) = ? OR {position}(lower(name), lower(?)) > 0)"
            " AND customer_id > ? ORDER BY customer_id LIMIT ?",
            (query, query, query, after_id or "", limit),
        )

    async def _customers(self, where: str, params: tuple[object, ...]) -> list[CustomerRecord]:
        def work(session: Session) -> list[CustomerRecord]:
            rows = session.fetchall(f"SELECT {CUSTOMER_COLUMNS} FROM customers WHERE {where}", params)
            decode = session.dialect.decode_json
            return [CustomerRecord(row[0], row[1], dict(decode(row[2])), row[3]) for row in rows]

        return await self._db.read(work)

    async def subscription_changes(self, customer_id: str | None = None) -> list[SubscriptionRecord]:
        """Every subscription change, by customer, then in the order they happened."""
        rows = await self._db.read(
            lambda session: session.fetchall(
                f"SELECT {SUBSCRIPTION_COLUMNS} FROM subscription_changes WHERE {OF_CUSTOMER}"
                " ORDER BY customer_id, changed_ms, source_id",
                (customer_id, customer_id),
            )
        )
        return [SubscriptionRecord(*row) for row in rows]

    async def settings_changes(self, customer_id: str | None = None) -> list[SettingsRecord]:
        """Every change to a customer's own settings, by customer, then in the order they happened (rebuild orders
        them by their outbox ids)."""

        def work(session: Session) -> list[SettingsRecord]:
            rows = session.fetchall(
                f"SELECT {SETTINGS_COLUMNS} FROM settings_changes WHERE {OF_CUSTOMER}"
                " ORDER BY customer_id, changed_ms, source_id",
                (customer_id, customer_id),
            )
            decode = session.dialect.decode_json
            return [SettingsRecord(row[0], row[1], dict(decode(row[2])), row[3]) for row in rows]

        return await self._db.read(work)

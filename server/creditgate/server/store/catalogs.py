"""The catalogs applied, newest last: the one a replica starts with is the last one saved."""

from __future__ import annotations

from creditgate.server.store.database import Database


class CatalogStore:
    _db: Database

    async def save_catalog(self, version: str, source: str, applied_ms: int) -> None:
        await self._db.write(
            lambda session: session.execute(
                "INSERT INTO catalog_applications (version, source, applied_ms) VALUES (?, ?, ?)",
                (version, source, applied_ms),
            )
        )

    async def latest_catalog(self) -> tuple[str, str] | None:
        """(version, source) of the catalog applied last, if any."""
        row = await self._db.read(
            lambda session: session.fetchone(
                "SELECT version, source FROM catalog_applications ORDER BY id DESC LIMIT 1"
            )
        )
        return (row[0], row[1]) if row else None

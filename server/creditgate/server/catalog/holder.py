"""The running catalog: loaded at start, swapped whole by ApplyCatalog, persisted in the durable store."""

from __future__ import annotations

from creditgate.server.catalog.rules import RuleBook
from creditgate.server.catalog.schema import load_catalog
from creditgate.server.clock import Clock
from creditgate.server.errors import FailedPrecondition
from creditgate.server.ledger.store import Store


class CatalogHolder:
    def __init__(self, store: Store, clock: Clock) -> None:
        self._store = store
        self._clock = clock
        self._rules: RuleBook | None = None

    @property
    def rules(self) -> RuleBook:
        if self._rules is None:
            raise FailedPrecondition(
                "no catalog is applied yet: call ApplyCatalog first", field="catalog", reason="NO_CATALOG"
            )
        return self._rules

    async def load_saved(self) -> None:
        saved = await self._store.latest_catalog()
        if saved is not None:
            self._rules = RuleBook(load_catalog(saved[1]))

    async def apply(self, source: str) -> tuple[str, bool]:
        """Check, persist and run a catalog; returns (version, changed). A wrong one changes nothing."""
        loaded = load_catalog(source)
        if self._rules is not None and self._rules.version == loaded.version:
            return loaded.version, False
        rules = RuleBook(loaded)
        await self._store.save_catalog(loaded.version, source, self._clock.now_ms())
        self._rules = rules
        return loaded.version, True

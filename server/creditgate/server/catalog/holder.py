"""The running catalog: loaded at start, swapped whole by ApplyCatalog, persisted in the durable store, and
followed from there, so that every replica runs the catalog any of them applied."""

from __future__ import annotations

import asyncio

import structlog
from creditgate.server.clock import Clock
from creditgate.server.domain.catalog import load_catalog
from creditgate.server.domain.rules import RuleBook
from creditgate.server.errors import FailedPrecondition, Unavailable
from creditgate.server.store.catalogs import CatalogStore
from creditgate.server.tasks import PeriodicTask

log = structlog.get_logger(__name__)


class CatalogHolder:
    def __init__(self, store: CatalogStore, clock: Clock, refresh_interval_seconds: float = 5.0) -> None:
        self._store = store
        self._clock = clock
        self._rules: RuleBook | None = None
        # The first round is one interval after start, which loaded the saved catalog.
        self.follower = PeriodicTask(
            "catalog_follower", self.follow_once, refresh_interval_seconds, clock, wait_first=True
        )
        # A refresh that read the store before an apply saved must not swap its older catalog in after it.
        self._swapping = asyncio.Lock()

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
        async with self._swapping:
            await self._store.save_catalog(loaded.version, source, self._clock.now_ms())
            self._rules = rules
        return loaded.version, True

    async def refresh(self) -> bool:
        """Run the store's latest catalog when it is not the one running (another replica applied it); True then."""
        async with self._swapping:
            saved = await self._store.latest_catalog()
            if saved is None or (self._rules is not None and saved[0] == self._rules.version):
                return False
            self._rules = RuleBook(load_catalog(saved[1]))
        log.info("catalog_followed", version=saved[0])
        return True

    async def follow_once(self) -> bool:
        """The follower's round: refresh(), except that a store that does not answer is not a failure to follow
        (no replica can apply a catalog then: apply saves it first); the health probe reports the store. A saved
        catalog this version refuses is a failure: this replica would decide with an older catalog."""
        try:
            return await self.refresh()
        except Unavailable as exc:
            log.warning("catalog_follow_failed", error=exc.message)
            return False

    def start(self) -> None:
        self.follower.start()

    async def stop(self) -> None:
        await self.follower.stop()

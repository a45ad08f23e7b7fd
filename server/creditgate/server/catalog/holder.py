"""The running catalog: loaded at start, swapped whole by ApplyCatalog, persisted in the durable store, and
followed from there, so that every replica runs the catalog any of them applied."""

from __future__ import annotations

import asyncio
import contextlib

import structlog
from creditgate.server.catalog.rules import RuleBook
from creditgate.server.catalog.schema import load_catalog
from creditgate.server.clock import Clock
from creditgate.server.errors import CreditgateError, FailedPrecondition
from creditgate.server.ledger.store import Store

log = structlog.get_logger(__name__)


class CatalogHolder:
    def __init__(self, store: Store, clock: Clock) -> None:
        self._store = store
        self._clock = clock
        self._rules: RuleBook | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
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

    def start(self, interval_seconds: float) -> None:
        self._stopping.clear()
        self._task = asyncio.create_task(self._follow(interval_seconds), name="catalog-follower")

    async def stop(self) -> None:
        self._stopping.set()
        if self._task is not None:
            await asyncio.wait({self._task}, timeout=5)
            self._task = None

    async def _follow(self, interval_seconds: float) -> None:
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=interval_seconds)
            if self._stopping.is_set():
                return
            try:
                await self.refresh()
            except CreditgateError as exc:  # the store is down, or the saved catalog is one this version refuses
                log.warning("catalog_follow_failed", error=exc.message)

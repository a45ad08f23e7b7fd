"""Two replicas on one Redis and one durable store: a catalog applied through one is run by the other too."""

from __future__ import annotations

import time
from pathlib import Path

from creditgate.server.clock import ManualClock, to_ms
from creditgate.v1 import admin_pb2
from harness import APOLLO, JAN_1, RedisServer, RunningServer, server_settings, start_server

# The Apollo catalog with a phone reveal at 12 credits instead of 10.
DEARER_PHONES = APOLLO.read_text().replace(
    "phone_reveal:       {name: Phone reveal, credits: 10}", "phone_reveal:       {name: Phone reveal, credits: 12}"
)


def test_a_catalog_applied_through_one_replica_is_run_by_the_other(redis_server: RedisServer, tmp_path: Path) -> None:
    assert APOLLO.read_text() != DEARER_PHONES
    shared = {"database_url": f"sqlite:///{tmp_path / 'ledger.db'}", "catalog_refresh_interval_seconds": 3600}
    first = start_server(redis_server.url, tmp_path / "first", **shared)
    second = RunningServer(server_settings(redis_server.url, tmp_path / "second", **shared), ManualClock(to_ms(JAN_1)))
    try:
        first.create_customer("acme", "basic", start=JAN_1)
        applied = first.admin.ApplyCatalog(admin_pb2.ApplyCatalogRequest(catalog_yaml=DEARER_PHONES))
        assert applied.changed
        assert first.debit("acme", "phone_reveal").credits_charged == 12
        # Until it follows the store, the other replica still runs the catalog it started with.
        assert second.debit("acme", "phone_reveal").credits_charged == 10
        assert second.call(second.app.catalog.refresh()) is True
        assert second.app.catalog.rules.version == applied.version
        assert second.debit("acme", "phone_reveal").credits_charged == 12
        assert second.call(second.app.catalog.refresh()) is False
    finally:
        second.stop()
        first.stop()


def test_a_replica_follows_the_store_on_its_own(redis_server: RedisServer, tmp_path: Path) -> None:
    database = {"database_url": f"sqlite:///{tmp_path / 'ledger.db'}"}
    first = start_server(redis_server.url, tmp_path / "first", **database)
    settings = server_settings(redis_server.url, tmp_path / "second", catalog_refresh_interval_seconds=0.1, **database)
    second = RunningServer(settings, ManualClock(to_ms(JAN_1)))
    try:
        applied = first.admin.ApplyCatalog(admin_pb2.ApplyCatalogRequest(catalog_yaml=DEARER_PHONES))
        deadline = time.monotonic() + 30
        while second.app.catalog.rules.version != applied.version and time.monotonic() < deadline:
            time.sleep(0.05)
        assert second.admin.GetCatalog(admin_pb2.GetCatalogRequest()).version == applied.version
    finally:
        second.stop()
        first.stop()

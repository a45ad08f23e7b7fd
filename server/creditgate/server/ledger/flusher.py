"""Moves outbox stream entries into the durable store in batches, then acknowledges them (at-least-once,
made exactly-once by the store's insert-by-key)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import uuid
from typing import Any, cast

import structlog
from creditgate.server.errors import CreditgateError, Unavailable
from creditgate.server.ledger.records import Record, parse_record
from creditgate.server.ledger.store import ParkedEntry, Store
from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

GROUP = "flushers"
log = structlog.get_logger(__name__)


class Flusher:
    def __init__(
        self,
        redis: Redis,
        store: Store,
        streams: list[str],
        *,
        batch_size: int,
        interval_seconds: float,
        claim_idle_ms: int,
    ) -> None:
        self._redis = redis
        self._store = store
        self._streams = streams
        self._batch_size = batch_size
        self._interval = interval_seconds
        self._claim_idle_ms = claim_idle_ms
        self.consumer = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._task: asyncio.Task[None] | None = None

    async def setup(self) -> None:
        for stream in self._streams:
            try:
                await self._redis.xgroup_create(stream, GROUP, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise Unavailable(f"Redis: {exc}") from exc
            except RedisError as exc:
                raise Unavailable(f"Redis: {exc}") from exc

    async def flush_once(self) -> int:
        """Move one batch from each stream; returns how many entries were written and acknowledged."""
        moved = 0
        for stream in self._streams:
            moved += await self._flush_stream(stream)
        return moved

    async def drain(self, max_rounds: int = 10_000) -> int:
        """Flush until the outbox is empty (tests, shutdown)."""
        total = 0
        for _ in range(max_rounds):
            moved = await self.flush_once()
            total += moved
            if moved == 0:
                return total
        return total

    async def _flush_stream(self, stream: str) -> int:
        entries = await self._claim_stale(stream)
        if len(entries) < self._batch_size:
            response = await self._redis.xreadgroup(
                GROUP, self.consumer, {stream: ">"}, count=self._batch_size - len(entries)
            )
            for _, stream_entries in cast(list[Any], response) or []:
                entries.extend(stream_entries)
        if not entries:
            return 0
        records, parked = _parse(stream, entries)
        await self._store.write(records, parked)
        ids = [entry_id for entry_id, _ in entries]
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.xack(stream, GROUP, *ids)
            pipe.xdel(stream, *ids)
            await pipe.execute()
        return len(entries)

    async def _claim_stale(self, stream: str) -> list[Any]:
        """Entries another flusher read but never acknowledged (it crashed): ours now."""
        result = await self._redis.xautoclaim(
            stream,
            GROUP,
            self.consumer,
            min_idle_time=self._claim_idle_ms,
            start_id="0-0",
            count=self._batch_size,
        )
        return [entry for entry in result[1] if entry[1]]

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="flusher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        with contextlib.suppress(CreditgateError, RedisError):
            await self.drain()

    async def _run(self) -> None:
        while True:
            try:
                moved = await self.flush_once()
            except (CreditgateError, RedisError) as exc:
                # The entries stay pending in Redis and are retried: nothing is lost while a store is down.
                log.warning("flush_failed", error=str(exc))
                moved = 0
            if moved < self._batch_size:
                await asyncio.sleep(self._interval)


def _parse(stream: str, entries: list[Any]) -> tuple[list[Record], list[ParkedEntry]]:
    records: list[Record] = []
    parked: list[ParkedEntry] = []
    for entry_id, raw_fields in entries:
        entry_text = _text(entry_id)
        fields = {_text(key): _text(value) for key, value in raw_fields.items()}
        try:
            records.append(parse_record(stream, entry_text, fields))
        except (KeyError, ValueError, TypeError) as exc:
            log.error("outbox_entry_parked", stream=stream, entry=entry_text, error=repr(exc))
            parked.append(ParkedEntry(f"{stream}/{entry_text}", repr(fields), repr(exc)))
    return records, parked


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)

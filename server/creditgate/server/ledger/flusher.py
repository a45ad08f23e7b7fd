"""Moves outbox stream entries into the durable store in batches, then acknowledges them (at-least-once,
made exactly-once by the store's insert-by-key)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any, cast

import hiredis
import structlog
from creditgate.server.clock import Clock, SystemClock
from creditgate.server.domain.records import Record, parse_record
from creditgate.server.engine import customer_fields
from creditgate.server.engine.cluster import ClusterWire, RedisClient
from creditgate.server.engine.keys import KeySpace
from creditgate.server.engine.redis_errors import redis_error
from creditgate.server.engine.wire import RedisWire, pack_command, response_error
from creditgate.server.errors import CreditgateError, InternalError
from creditgate.server.store.conflicts import LedgerConflict
from creditgate.server.store.ledger import ParkedEntry
from creditgate.server.store.store import Store
from creditgate.server.tasks import PeriodicTask
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import AskError, ClusterDownError, MovedError, RedisError, ResponseError, TryAgainError

GROUP = "flushers"
# drain(): rounds a cluster may refuse in a row while its map changes, and the pause before the next.
DRAIN_REFUSALS = 20
DRAIN_RETRY_SECONDS = 0.1
# How often the loop logs the backlog while there is one, and removes dead consumers.
STATUS_LOG_SECONDS = 10.0
# Another consumer idle for this many claim periods with nothing pending is a flusher that is gone: it is removed,
# so that the group does not keep one consumer per flusher ever started.
DEAD_CONSUMER_CLAIM_PERIODS = 10
log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class LedgerStatus:
    """How far the durable store is behind Redis."""

    # Outbox entries not yet written to the durable store (acknowledged entries are deleted from the stream).
    backlog: int
    # Of those, entries a flusher has read and not yet acknowledged (in flight, or held by a dead replica).
    pending: int
    # Age of the oldest unflushed entry by Redis's clock, in milliseconds; 0 when the backlog is empty.
    oldest_age_ms: int


@dataclass(slots=True)
class _Entry:
    # "<stream>/<stream entry id>"
    source_id: str
    fields: dict[str, str]
    record: Record | None = None
    error: str = ""


class Flusher:
    def __init__(
        self,
        redis: RedisClient,
        wire: RedisWire | ClusterWire,
        store: Store,
        streams: list[str],
        *,
        batch_size: int,
        interval_seconds: float,
        claim_idle_ms: int,
        keys: KeySpace | None = None,
        clock: Clock | None = None,
    ) -> None:
        # A client that decodes replies (decode_responses=True), as the wire does: entries are parsed as text.
        self._redis = redis
        # Batches are read and acknowledged through their own connection: redis-py packs a command's arguments in
        # Python, per entry id for XACK and again for XDEL, and parses every entry of a read into a dict
        # (bench/NOTES.md has what that cost).
        self._wire = wire
        self._store = store
        # To find the customer hash of a customer whose entry conflicted (None: tests of the flusher alone).
        self._keys = keys
        self._streams = streams
        self._batch_size = batch_size
        self._interval = interval_seconds
        self._claim_idle_ms = claim_idle_ms
        # XAUTOCLAIM finds only entries idle for claim_idle_ms, so it is asked every half of that, not every round:
        # on a cluster's 256 streams, claims were half of the flusher's commands to Redis. (Monotonic, like the
        # status log: a claim's timing is Redis's idle time, not the server's clock.)
        self._next_claim = 0.0
        self.consumer = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        # A full batch means more is waiting: the next round starts at once.
        self.task = PeriodicTask(
            "flusher",
            self.run_once,
            interval_seconds,
            clock or SystemClock(),
            busy=lambda moved: moved >= batch_size,
            backoff_initial_seconds=interval_seconds,
        )
        self._last_status_log = 0.0
        # Streams whose entries this flusher read and may not have acknowledged (a write failed).
        self._unacknowledged: set[str] = set()
        self._remove_dead = redis.register_script(
            resources.files("creditgate.server.ledger").joinpath("remove_dead_consumers.lua").read_text()
        )

    async def setup(self) -> None:
        for stream in self._streams:
            await self._create_group(stream)

    async def _create_group(self, stream: str) -> None:
        try:
            await self._redis.xgroup_create(stream, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise redis_error(exc, "flusher") from exc
        except RedisError as exc:
            raise redis_error(exc, "flusher") from exc

    async def flush_once(self) -> int:
        """Move one batch from each stream into the store, all in one transaction; returns how many entries were
        written and acknowledged."""
        try:
            batches = await self._read_batches()
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                self._unacknowledged.update(self._streams)
                raise
            # Redis lost its data (restarted without persistence): the groups are made again.
            await self.setup()
            batches = await self._read_batches()
        except BaseException:
            # A read whose reply was lost may have handed this flusher entries: the next round reads its own
            # pending entries first, rather than leaving them until another flusher claims them as idle.
            self._unacknowledged.update(self._streams)
            raise
        entries = [_parse(stream, entry_id, fields) for stream, raw in batches.items() for entry_id, fields in raw]
        if not entries:
            return 0
        self._unacknowledged.update(batches)
        await self._write(entries)
        # One MULTI per stream (a stream is one slot; a cluster refuses a MULTI across slots), all in one write:
        # an entry is never acknowledged without leaving the stream, so the backlog stays exact.
        acknowledge: list[tuple[Any, ...]] = []
        for stream, raw in batches.items():
            ids = [entry_id for entry_id, _ in raw]
            acknowledge += [("MULTI", stream), ("XACK", stream, GROUP, *ids), ("XDEL", stream, *ids), ("EXEC", stream)]
        replies = await self._send(acknowledge)
        for reply in (item for executed in replies[3::4] for item in executed or ()):
            if isinstance(reply, hiredis.ReplyError):
                raise response_error(str(reply))
        self._unacknowledged.difference_update(stream for stream, raw in batches.items() if len(raw) < self._batch_size)
        return len(entries)

    async def drain(self, max_rounds: int = 10_000) -> int:
        """Flush until the outbox is empty (tests, shutdown). A round a cluster refused while a slot moves or a
        replica takes over (MOVED, ASK, TRYAGAIN, CLUSTERDOWN) is tried again, a few times, on the new map."""
        total = 0
        refused = 0
        for _ in range(max_rounds):
            try:
                moved = await self.flush_once()
            except (MovedError, AskError, TryAgainError, ClusterDownError):
                refused += 1
                if refused > DRAIN_REFUSALS:
                    raise
                await asyncio.sleep(DRAIN_RETRY_SECONDS)
                continue
            total += moved
            if moved == 0:
                return total
        return total

    async def status(self) -> LedgerStatus:
        """Backlog, in-flight entries and the oldest unflushed entry's age, read from Redis in one round trip."""
        try:
            # A cluster's pipeline sends each command to its key's primary and refuses a keyless TIME: asked apart.
            cluster = isinstance(self._redis, RedisCluster)
            async with self._redis.pipeline(transaction=False) as pipe:
                if not cluster:
                    pipe.time()
                for stream in self._streams:
                    pipe.xlen(stream)
                    pipe.xpending(stream, GROUP)
                    pipe.xrange(stream, count=1)
                replies = await pipe.execute(raise_on_error=False)
            if cluster:
                replies = [await self._redis.time(), *replies]
        except RedisError as exc:
            raise redis_error(exc, "flusher") from exc
        seconds, micros = replies[0]
        now_ms = int(seconds) * 1000 + int(micros) // 1000
        backlog = pending = 0
        oldest_ms = now_ms
        for length, in_flight, first in zip(replies[1::3], replies[2::3], replies[3::3], strict=True):
            if isinstance(length, Exception):
                continue
            backlog += int(length)
            if isinstance(in_flight, dict):
                pending += int(in_flight.get("pending", 0))
            if isinstance(first, list) and first:
                oldest_ms = min(oldest_ms, int(str(first[0][0]).split("-")[0]))
        return LedgerStatus(backlog, pending, max(0, now_ms - oldest_ms) if backlog else 0)

    async def remove_dead_consumers(self) -> int:
        """Removes other consumers idle for DEAD_CONSUMER_CLAIM_PERIODS claim periods that hold no entries (a
        dead flusher's entries are claimed first, see _claim_stale); returns how many were removed."""
        idle_ms = self._claim_idle_ms * DEAD_CONSUMER_CLAIM_PERIODS
        removed = 0
        for stream in self._streams:
            try:
                removed += int(await self._remove_dead(keys=[stream], args=[GROUP, self.consumer, idle_ms]))
            except ResponseError as exc:
                if "NOGROUP" not in str(exc) and "no such key" not in str(exc):
                    raise redis_error(exc, "flusher") from exc
            except RedisError as exc:
                raise redis_error(exc, "flusher") from exc
        return removed

    async def _read_batches(self) -> dict[str, list[Any]]:
        """Up to a batch of entries from each stream that has some: first those this flusher read and could not
        write, then those a dead flusher left, then new ones. The claims of all streams go in one round trip, and
        the reads in one more."""
        # Only after a failed write does this flusher hold entries of its own (reading them costs a round trip,
        # and XREADGROUP touches the consumer even when it returns nothing).
        batches = {
            stream: await self._own_pending(stream) if stream in self._unacknowledged else []
            for stream in self._streams
        }
        room = [stream for stream, raw in batches.items() if len(raw) < self._batch_size]
        if time.monotonic() < self._next_claim:
            room = []
        else:
            self._next_claim = time.monotonic() + self._claim_idle_ms / 2000
        claims = [
            (
                "XAUTOCLAIM",
                stream,
                GROUP,
                self.consumer,
                self._claim_idle_ms,
                "0-0",
                "COUNT",
                self._batch_size - len(batches[stream]),
            )
            for stream in room
        ]
        for stream, (_, claimed, *_) in zip(room, await self._send(claims), strict=True):
            # Deleted from the stream but still pending (flushed by another replica meanwhile): no fields.
            batches[stream].extend((entry_id, _fields(flat)) for entry_id, flat in claimed if flat)
        room = [stream for stream, raw in batches.items() if len(raw) < self._batch_size]
        reads = [
            (
                "XREADGROUP",
                "GROUP",
                GROUP,
                self.consumer,
                "COUNT",
                self._batch_size - len(batches[stream]),
                "STREAMS",
                stream,
                ">",
            )
            for stream in room
        ]
        for stream, response in zip(room, await self._send(reads), strict=True):
            for _, stream_entries in response or ():
                batches[stream].extend((entry_id, _fields(flat)) for entry_id, flat in stream_entries)
        return {stream: raw for stream, raw in batches.items() if raw}

    async def _send(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """The replies of commands written together, in order; the first error reply is raised (after every reply
        is in, so that none is left unread). Each command's second part is its stream (MULTI and EXEC carry one
        too, not sent): on a cluster, each goes to the primary of its stream's slot."""
        wire = self._wire
        if isinstance(wire, ClusterWire):
            # Never resent one by one: a MULTI resent apart from its EXEC would leave its connection in a
            # transaction. What a primary did not run fails the round, which is retried whole (XACK and XDEL of
            # entries already written are harmless to repeat; the store ignores a replay).
            replies = await wire.call_many_for_keys(
                [(_stream_of(command), _packed(command)) for command in commands], resend=False
            )
        else:
            futures = await wire.call_many([_packed(command)("") for command in commands])
            if futures:
                await asyncio.wait(futures)
            replies = [future.exception() or future.result() for future in futures]
        errors = [reply for reply in replies if isinstance(reply, BaseException)]
        if errors:
            raise errors[0]
        return replies

    async def _write(self, entries: list[_Entry]) -> None:
        records = [entry.record for entry in entries if entry.record is not None]
        parked = [_parked(entry, entry.error) for entry in entries if entry.record is None and entry.error]
        for poison in parked:
            log.error("outbox_entry_parked", entry=poison.source_id, error=poison.error)
        try:
            conflicts = await self._store.write(records, parked)
        except InternalError:
            if len(entries) == 1:
                raise
        else:
            if conflicts:
                await self._reverify(conflicts)
            return
        # The store refused the batch for its data: one entry at a time, parking the ones it refuses.
        for entry in entries:
            try:
                await self._write([entry])
            except InternalError as exc:
                log.error("outbox_entry_parked", entry=entry.source_id, error=exc.message)
                await self._store.write([], [_parked(entry, exc.message)])

    async def _reverify(self, conflicts: list[LedgerConflict]) -> None:
        """The customers whose entries conflicted are behind the ledger now (their conflicting entries were kept
        under new numbers): their epoch stamp goes, so their next change verifies and rebuilds them first."""
        for conflict in conflicts:
            log.error(
                "ledger_conflict_kept",
                customer_id=conflict.customer_id,
                entry=f"{conflict.customer_id}/{conflict.original_seq}",
                kept_as=f"{conflict.customer_id}/{conflict.seq}",
            )
        if self._keys is None:
            return
        customers = sorted({conflict.customer_id for conflict in conflicts})
        try:
            for customer_id in customers:
                await self._redis.hdel(self._keys.for_customer(customer_id).customer, customer_fields.EPOCH)
        except RedisError as exc:
            # Kept in the ledger all the same; the next Redis restart verifies them anyway.
            log.warning("ledger_conflict_not_marked", customers=customers, error=str(exc))

    async def _own_pending(self, stream: str) -> list[Any]:
        """Entries this flusher read before and could not write (the store was down): retried first."""
        response = await self._redis.xreadgroup(GROUP, self.consumer, {stream: "0"}, count=self._batch_size)
        entries: list[Any] = []
        for _, stream_entries in cast(list[Any], response) or []:
            entries.extend(stream_entries)
        gone = [entry_id for entry_id, fields in entries if not fields]
        if gone:
            # Deleted from the stream but still pending (flushed by another replica meanwhile).
            await self._redis.xack(stream, GROUP, *gone)
        return [entry for entry in entries if entry[1]]

    def start(self) -> None:
        self.task.start()

    async def stop(self, drain_timeout_seconds: float = 10.0) -> None:
        """Finish the batch in hand, then drain what is left; entries that cannot be written stay in Redis."""
        # Past the time-out the round is cancelled: its entries stay pending and are retried on the next start.
        await self.task.stop(drain_timeout_seconds)
        try:
            moved = await asyncio.wait_for(self.drain(), timeout=drain_timeout_seconds)
            log.info("outbox_drained", entries=moved)
        except (TimeoutError, CreditgateError, RedisError) as exc:
            log.warning("outbox_not_drained", error=repr(exc))
        await self._wire.close()

    async def run_once(self) -> int:
        """One round of the loop: flush a batch per stream; now and then, remove dead consumers and log the backlog.
        A round that cannot flush raises (the store or Redis is down, or the store refuses writes): its entries stay
        pending in Redis, and the loop's supervisor logs, counts and retries it with backoff."""
        moved = await self.flush_once()
        if time.monotonic() - self._last_status_log >= STATUS_LOG_SECONDS:
            self._last_status_log = time.monotonic()
            with contextlib.suppress(CreditgateError):
                if removed := await self.remove_dead_consumers():
                    log.info("dead_consumers_removed", consumers=removed)
                status = await self.status()
                if status.backlog:
                    log.info(
                        "ledger_backlog",
                        backlog=status.backlog,
                        pending=status.pending,
                        oldest_age_ms=status.oldest_age_ms,
                    )
        return moved


def _stream_of(command: tuple[Any, ...]) -> str:
    return str(command[7] if command[0] == "XREADGROUP" else command[1])


def _packed(command: tuple[Any, ...]) -> Callable[[str], bytes]:
    """The command packed (for the wire's epoch-taking calls, which it ignores); MULTI and EXEC without their
    stream."""
    packed = pack_command(command[0]) if command[0] in ("MULTI", "EXEC") else pack_command(*command)
    return lambda _: packed


def _parse(stream: str, entry_id: str, fields: dict[str, str]) -> _Entry:
    try:
        return _Entry(f"{stream}/{entry_id}", fields, parse_record(stream, entry_id, fields))
    except (KeyError, ValueError, TypeError, AttributeError) as exc:
        return _Entry(f"{stream}/{entry_id}", fields, error=repr(exc))


def _fields(flat: list[Any]) -> dict[str, Any]:
    """An entry's field-value list as a dict."""
    return dict(zip(flat[::2], flat[1::2], strict=True))


def _parked(entry: _Entry, error: str) -> ParkedEntry:
    return ParkedEntry(entry.source_id, repr(entry.fields), error)

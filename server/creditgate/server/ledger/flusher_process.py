"""`creditgate serve` runs the flusher in a child process, so that reading, parsing and writing the outbox does
not take the serving process's CPU (one GIL): measured on 2 cores, the serving process answers about a quarter
more decisions a second without it. The child is a member of the same consumer group as any other flusher."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import gc
import multiprocessing
import os
import signal
import time
from collections.abc import Callable
from multiprocessing.process import BaseProcess
from multiprocessing.sharedctypes import SynchronizedArray

import structlog
import uvloop
from creditgate.server.clock import Clock, SystemClock
from creditgate.server.engine.cluster import ClusterWire, RedisClient, open_redis
from creditgate.server.engine.keys import KeySpace
from creditgate.server.engine.wire import RedisWire
from creditgate.server.ledger.flusher import Flusher
from creditgate.server.logs import configure
from creditgate.server.settings import Settings
from creditgate.server.store.store import Store, open_store
from creditgate.server.tasks import (
    BACKOFF_INITIAL_SECONDS,
    BACKOFF_MAX_SECONDS,
    PeriodicTask,
    TaskState,
    Watcher,
    backoff_seconds,
)
from redis.asyncio.cluster import RedisCluster

log = structlog.get_logger(__name__)
PR_SET_PDEATHSIG = 1
# A flushed batch keeps thousands of records alive until it is written; with the default threshold (700) the
# collector walks them again and again as they age, ~15% of the flusher's CPU per entry (bench/NOTES.md).
FLUSHER_GC_THRESHOLD = 50_000
# How often the parent looks whether its flusher child is alive and how its loop fares.
CHECK_INTERVAL_SECONDS = 0.5
# A child that ran this long before it died is restarted without backoff (its deaths are not a crash loop).
STABLE_SECONDS = 60.0
# The child's loop, shared with the parent: failed rounds since the first child, failures in a row, failing since.
RESTARTS, FAILURES, FAILING_SINCE_MS = range(3)


def new_flusher(
    redis: RedisClient,
    redis_url: str,
    store: Store,
    settings: Settings,
    clock: Clock | None = None,
    keys: KeySpace | None = None,
    claim_idle_ms: int | None = None,
) -> Flusher:
    """The flusher of `keys`' outboxes (the settings' shards unless given); `claim_idle_ms` 0 takes over every
    pending entry at once (for a command run while no sidecar is)."""
    cluster = isinstance(redis, RedisCluster)
    keys = keys or KeySpace(settings.shards)
    return Flusher(
        redis,
        (ClusterWire if cluster else RedisWire)(redis_url, settings.redis_timeout_seconds),
        store,
        keys.all_outboxes(),
        batch_size=settings.flush_batch_size,
        interval_seconds=settings.flush_interval_seconds,
        claim_idle_ms=int(settings.flush_claim_idle_seconds * 1000) if claim_idle_ms is None else claim_idle_ms,
        keys=keys,
        clock=clock,
    )


class FlusherProcess:
    """The serving process's side of the flusher child: a child that dies is restarted (with backoff when it keeps
    dying) and counted; the child's own loop reports its failures through shared memory. Its state is the flusher's
    for the metrics and the health service."""

    def __init__(
        self,
        settings: Settings,
        redis_url: str,
        clock: Clock,
        *,
        check_interval_seconds: float = CHECK_INTERVAL_SECONDS,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._redis_url = redis_url
        self._clock = clock
        self._monotonic = monotonic
        self._shared: SynchronizedArray[int] = multiprocessing.get_context("spawn").Array("q", 3)
        self.process: BaseProcess | None = None
        self._started_at = 0.0
        self._deaths = 0
        self._deaths_in_a_row = 0
        self._dead_since_ms = 0
        self._restart_at = 0.0
        self._last_exit = ""
        self._watchers: list[Watcher] = []
        self._told_healthy = True
        self.watcher = PeriodicTask("flusher_process_watch", self.check, check_interval_seconds, clock)

    @property
    def name(self) -> str:
        return "flusher"

    def state(self) -> TaskState:
        with self._shared.get_lock():
            child_restarts, child_failures, child_failing_since = self._shared[:]
        restarts = self._deaths + child_restarts
        if self.process is None or not self.process.is_alive():
            # Dead, and not restarted yet (its backoff), or dead since the last check.
            return TaskState(self.name, False, self._deaths_in_a_row, restarts, self._dead_since_ms, self._last_exit)
        error = "the flusher process's loop is failing (see its log)" if child_failures else ""
        return TaskState(self.name, True, child_failures, restarts, child_failing_since, error)

    def watch(self, watcher: Watcher) -> None:
        self._watchers.append(watcher)

    def start(self) -> None:
        self._spawn()
        self.watcher.start()

    async def stop(self) -> None:
        await self.watcher.stop()
        if self.process is not None:
            await asyncio.to_thread(stop_flusher_process, self.process)

    async def check(self) -> bool:
        """The watcher's round: a dead child is counted and, once its backoff is over, replaced; watchers are told
        when the flusher's health changes. True while the child is alive."""
        now = self._monotonic()
        if self.process is not None and not self.process.is_alive():
            lived = now - self._started_at
            self._deaths += 1
            self._deaths_in_a_row = 1 if lived >= STABLE_SECONDS else self._deaths_in_a_row + 1
            self._dead_since_ms = self._clock.now_ms()
            self._last_exit = f"the flusher process exited with code {self.process.exitcode}"
            delay = backoff_seconds(self._deaths_in_a_row, BACKOFF_INITIAL_SECONDS, BACKOFF_MAX_SECONDS)
            self._restart_at = now + delay
            log.error(
                "flusher_process_died",
                exitcode=self.process.exitcode,
                lived_seconds=round(lived, 1),
                deaths=self._deaths,
                restart_in_seconds=delay,
            )
            self.process = None
        if self.process is None and now >= self._restart_at:
            self._spawn()
            log.info("flusher_process_restarted", deaths=self._deaths)
        await self._tell_if_changed()
        return self.process is not None

    def _spawn(self) -> None:
        with self._shared.get_lock():
            self._shared[FAILURES] = self._shared[FAILING_SINCE_MS] = 0
        self._dead_since_ms = 0
        self._started_at = self._monotonic()
        self.process = start_flusher_process(self._settings, self._redis_url, self._shared)

    async def _tell_if_changed(self) -> None:
        state = self.state()
        if state.healthy != self._told_healthy:
            self._told_healthy = state.healthy
            for watcher in self._watchers:
                await watcher(state)


def start_flusher_process(settings: Settings, redis_url: str, shared: SynchronizedArray[int]) -> BaseProcess:
    """A child process flushing the outbox of `redis_url` until it is sent SIGTERM (then it drains and exits); its
    loop's failures are written to `shared` (see FlusherProcess)."""
    context = multiprocessing.get_context("spawn")
    process = context.Process(
        target=_main,
        args=(settings, redis_url, os.getpid(), shared),
        name="flusher",
    )
    process.start()
    return process


def stop_flusher_process(process: BaseProcess, timeout_seconds: float = 15.0) -> None:
    process.terminate()
    process.join(timeout_seconds)
    if process.is_alive():
        process.kill()
        process.join()


def _main(settings: Settings, redis_url: str, parent_pid: int, shared: SynchronizedArray[int]) -> None:
    """`redis_url` is the one the server uses: the embedded Redis's when settings name none."""
    _die_with(parent_pid)
    configure(settings.log_format)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C reaches the server, which stops us
    uvloop.run(_flush_until_stopped(settings, redis_url, shared))


def _die_with(parent_pid: int) -> None:
    """A server killed with SIGKILL must not leave its flusher behind, flushing a Redis that may be reused."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)  # Linux: SIGTERM when the parent dies
    if os.getppid() != parent_pid:
        os.kill(os.getpid(), signal.SIGTERM)  # the parent died before prctl took effect


async def _flush_until_stopped(settings: Settings, redis_url: str, shared: SynchronizedArray[int]) -> None:
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGHUP):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set)
    redis, _ = open_redis(redis_url, settings.redis_timeout_seconds)
    store = open_store(settings.effective_database_url, settings.database_migration_url)
    await store.open()
    flusher = new_flusher(redis, redis_url, store, settings, SystemClock())
    restarts_before = shared[RESTARTS]

    async def report(state: TaskState) -> None:
        with shared.get_lock():
            shared[RESTARTS] = restarts_before + state.restarts
            shared[FAILURES] = state.failures
            shared[FAILING_SINCE_MS] = state.failing_since_ms

    flusher.task.watch(report)
    gc.collect()
    gc.freeze()
    gc.set_threshold(FLUSHER_GC_THRESHOLD)
    try:
        await flusher.setup()
        flusher.start()
        await stop.wait()
    finally:
        await flusher.stop()
        await redis.aclose()
        await store.close()

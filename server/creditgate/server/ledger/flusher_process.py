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
from multiprocessing.process import BaseProcess

import uvloop
from creditgate.server.engine.cluster import ClusterWire, RedisClient, is_cluster, new_cluster_client
from creditgate.server.engine.keys import KeySpace
from creditgate.server.engine.wire import RedisWire
from creditgate.server.ledger.flusher import Flusher
from creditgate.server.ledger.store import Store, open_store
from creditgate.server.logs import configure
from creditgate.server.settings import Settings
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

PR_SET_PDEATHSIG = 1
# A flushed batch keeps thousands of records alive until it is written; with the default threshold (700) the
# collector walks them again and again as they age, ~15% of the flusher's CPU per entry (bench/NOTES.md).
FLUSHER_GC_THRESHOLD = 50_000


def new_flusher(redis: RedisClient, redis_url: str, store: Store, settings: Settings) -> Flusher:
    cluster = isinstance(redis, RedisCluster)
    return Flusher(
        redis,
        (ClusterWire if cluster else RedisWire)(redis_url, settings.redis_timeout_seconds),
        store,
        KeySpace(settings.shards).all_outboxes(),
        batch_size=settings.flush_batch_size,
        interval_seconds=settings.flush_interval_seconds,
        claim_idle_ms=int(settings.flush_claim_idle_seconds * 1000),
        keys=KeySpace(settings.shards),
    )


def start_flusher_process(settings: Settings, redis_url: str) -> BaseProcess:
    """A child process flushing the outbox of `redis_url` until it is sent SIGTERM (then it drains and exits)."""
    context = multiprocessing.get_context("spawn")
    process = context.Process(
        target=_main, args=(settings.model_copy(update={"redis_url": redis_url}), os.getpid()), name="flusher"
    )
    process.start()
    return process


def stop_flusher_process(process: BaseProcess, timeout_seconds: float = 15.0) -> None:
    process.terminate()
    process.join(timeout_seconds)
    if process.is_alive():
        process.kill()
        process.join()


def _main(settings: Settings, parent_pid: int) -> None:
    _die_with(parent_pid)
    configure(settings.log_format)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C reaches the server, which stops us
    uvloop.run(_flush_until_stopped(settings))


def _die_with(parent_pid: int) -> None:
    """A server killed with SIGKILL must not leave its flusher behind, flushing a Redis that may be reused."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)  # Linux: SIGTERM when the parent dies
    if os.getppid() != parent_pid:
        os.kill(os.getpid(), signal.SIGTERM)  # the parent died before prctl took effect


async def _flush_until_stopped(settings: Settings) -> None:
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGHUP):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set)
    assert settings.redis_url is not None
    redis: RedisClient
    if is_cluster(settings.redis_url, settings.redis_timeout_seconds):
        redis = new_cluster_client(settings.redis_url, settings.redis_timeout_seconds)
    else:
        redis = Redis.from_url(
            settings.redis_url,
            decode_responses=True,
            socket_timeout=settings.redis_timeout_seconds,
            socket_connect_timeout=settings.redis_timeout_seconds,
        )
    store = open_store(settings.effective_database_url, settings.database_migration_url)
    await store.open()
    flusher = new_flusher(redis, settings.redis_url, store, settings)
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

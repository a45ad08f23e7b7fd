"""Runs the app until SIGINT/SIGTERM, then shuts down gracefully."""

from __future__ import annotations

import asyncio
import gc
import multiprocessing
import signal

import uvloop
from creditgate.server.app import build_app
from creditgate.server.embedded_redis import EmbeddedRedis
from creditgate.server.logs import configure
from creditgate.server.settings import Settings


async def serve(settings: Settings) -> None:
    app = build_app(settings)
    try:
        await app.start(separate_flusher=settings.flusher_process)
        # What is alive once the server is up (modules, the catalog, grpc and pydantic internals) stays alive:
        # frozen, a full collection no longer walks it; walking it stalled every call in flight for far longer
        # than collecting what the calls themselves leave behind (bench/NOTES.md).
        gc.collect()
        gc.freeze()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
    finally:
        await app.stop()


def run(settings: Settings, workers: int = 1) -> None:
    """With workers > 1, that many processes serve the same port (gRPC binds it with SO_REUSEPORT, so the
    kernel spreads connections over them), sharing one Redis; each runs its own flusher in the consumer group."""
    if workers <= 1:
        uvloop.run(serve(settings))
        return
    embedded = None
    if settings.redis_url is None:
        embedded = EmbeddedRedis(settings.data_dir / "redis")
        embedded.start()
        settings = settings.model_copy(update={"redis_url": embedded.url})
    context = multiprocessing.get_context("spawn")
    children = [context.Process(target=_worker, args=(settings,), name=f"creditgate-{n}") for n in range(workers)]
    for child in children:
        child.start()

    def forward(signum: int, frame: object) -> None:
        for child in children:
            if child.is_alive():
                child.terminate()

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    try:
        for child in children:
            child.join()
    finally:
        if embedded is not None:
            embedded.stop()


def _worker(settings: Settings) -> None:
    configure(settings.log_format)
    # The parent forwards SIGINT as SIGTERM; a terminal's Ctrl-C must not reach the workers twice.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    uvloop.run(serve(settings))

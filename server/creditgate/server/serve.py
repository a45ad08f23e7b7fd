"""Runs the app until SIGINT/SIGTERM, then shuts down gracefully."""

from __future__ import annotations

import asyncio
import signal

import uvloop
from creditgate.server.app import build_app
from creditgate.server.settings import Settings


async def serve(settings: Settings) -> None:
    app = build_app(settings)
    try:
        await app.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
    finally:
        await app.stop()


def run(settings: Settings) -> None:
    uvloop.run(serve(settings))

"""The ceiling: a MeteringService whose CheckAndDebit does nothing, on creditgate's own stack (grpc.aio, uvloop).

With --redis-url, CheckAndDebit first awaits one PING over creditgate's own Redis connection (engine/wire.py):
what one Redis round trip per call costs this stack, before any of creditgate's work."""

from __future__ import annotations

import argparse
import asyncio
import signal
from typing import Any

import grpc
import uvloop
from creditgate.server.api.grpc_server import new_grpc_server
from creditgate.server.engine.wire import RedisWire, pack_command
from creditgate.v1 import metering_pb2, metering_pb2_grpc

ALLOWED = metering_pb2.CheckAndDebitResponse(allowed=True)


PING = pack_command("PING")


class NoopMetering(metering_pb2_grpc.MeteringServiceServicer):
    def __init__(self, wire: RedisWire | None) -> None:
        self._wire = wire

    async def CheckAndDebit(
        self, request: metering_pb2.CheckAndDebitRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> metering_pb2.CheckAndDebitResponse:
        if self._wire is not None:
            await self._wire.call(PING)
        return ALLOWED

    async def CheckAndDebitBatch(
        self, request: metering_pb2.CheckAndDebitBatchRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> metering_pb2.CheckAndDebitBatchResponse:
        return metering_pb2.CheckAndDebitBatchResponse(
            results=[metering_pb2.CheckAndDebitBatchResult(decision=ALLOWED) for _ in request.items]
        )


async def serve(listen: str, redis_url: str | None) -> None:
    server = new_grpc_server()
    wire = RedisWire(redis_url, timeout_seconds=5) if redis_url else None
    metering_pb2_grpc.add_MeteringServiceServicer_to_server(NoopMetering(wire), server)
    server.add_insecure_port(listen)
    await server.start()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set)
    await stop.wait()
    await server.stop(1)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--listen", default="127.0.0.1:50061")
    parser.add_argument("--redis-url", help="await one PING on this Redis per CheckAndDebit")
    args = parser.parse_args()
    uvloop.run(serve(args.listen, args.redis_url))

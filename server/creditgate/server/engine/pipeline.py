"""Coalesces the script calls made in one turn of the event loop into one pipelined write to Redis.

Each call stays its own EVALSHA (atomic on its own); what is shared is the round trip, the socket write and
the wake-up, which at thousands of calls a second cost the server more than the scripts do. Calls are sent in
the order they were made and Redis runs them in that order."""

from __future__ import annotations

import asyncio
from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError, RedisError

Call = tuple[AsyncScript, list[str], list[Any], "asyncio.Future[Any]"]


class ScriptPipeline:
    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._queue: list[Call] = []
        self._sending: set[asyncio.Task[None]] = set()

    async def run(self, script: AsyncScript, keys: list[str], args: list[Any]) -> Any:
        """The script's answer; raises what Redis raised for this call (RedisError, ResponseError)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if not self._queue:
            # After the calls that are ready in this turn have queued theirs.
            loop.call_soon(self._send_queued)
        self._queue.append((script, keys, args, future))
        return await future

    def _send_queued(self) -> None:
        calls, self._queue = self._queue, []
        task = asyncio.create_task(self._send(calls))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, calls: list[Call]) -> None:
        if len(calls) == 1:
            await _settle_alone(calls[0])
            return
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for script, keys, args, _ in calls:
                    pipe.evalsha(script.sha, len(keys), *keys, *args)
                results = await pipe.execute(raise_on_error=False)
        except RedisError as exc:
            for *_, future in calls:
                _fail(future, exc)
            return
        reload: list[Call] = []
        for call, result in zip(calls, results, strict=True):
            if isinstance(result, NoScriptError):
                # Redis lost its script cache (restart, SCRIPT FLUSH): the call did not run; run it again.
                reload.append(call)
            elif isinstance(result, Exception):
                _fail(call[3], result)
            elif not call[3].done():
                call[3].set_result(result)
        for call in reload:
            await _settle_alone(call)


async def _settle_alone(call: Call) -> None:
    """One call on its own; redis-py's Script loads the script again on NOSCRIPT."""
    script, keys, args, future = call
    try:
        result = await script(keys=keys, args=args)
    except RedisError as exc:
        _fail(future, exc)
    else:
        if not future.done():
            future.set_result(result)


def _fail(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)

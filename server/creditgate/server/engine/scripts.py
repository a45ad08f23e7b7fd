"""Loads the Lua scripts once (each prefixed with lib.lua) and runs them with EVALSHA."""

from __future__ import annotations

from importlib import resources
from typing import Any

from creditgate.server.engine.pipeline import ScriptPipeline
from creditgate.server.errors import InternalError, Unavailable
from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError, ResponseError

SCRIPT_NAMES = (
    "decide",
    "rollover",
    "subscription",
    "create_customer",
    "add_credits",
    "remove_credits",
    "reserve",
    "settle",
    "expire_holds",
    "expire_buckets",
    "customer_settings",
)


def script_source(name: str) -> str:
    folder = resources.files("creditgate.server.engine")
    return folder.joinpath("lib.lua").read_text() + "\n" + folder.joinpath(f"{name}.lua").read_text()


class Scripts:
    """The engine's scripts, registered once; redis-py's Script reloads them on NOSCRIPT."""

    def __init__(self, redis: Redis) -> None:
        self._scripts: dict[str, AsyncScript] = {
            name: redis.register_script(script_source(name)) for name in SCRIPT_NAMES
        }
        self._pipeline = ScriptPipeline(redis)

    async def load(self) -> None:
        """Put every script in Redis's cache up front, so the first call is not slower."""
        for script in self._scripts.values():
            try:
                await script.registered_client.script_load(script.script)
            except RedisError as exc:
                raise Unavailable(f"Redis: {exc}") from exc

    async def run(self, name: str, keys: list[str], args: list[Any]) -> list[Any]:
        try:
            result = await self._pipeline.run(self._scripts[name], keys, args)
        except ResponseError as exc:
            raise InternalError(f"script {name} failed: {exc}") from exc
        except RedisError as exc:
            raise Unavailable(f"Redis: {exc}") from exc
        return [_text(item) for item in result]


def _text(item: Any) -> Any:
    return item.decode() if isinstance(item, bytes) else item

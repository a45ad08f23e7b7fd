"""Loads the Lua scripts once (each prefixed with lib.lua) and runs them with EVALSHA over the hot path's wire: one
RedisWire for a single Redis, a ClusterWire (engine/cluster.py) routing each call by its keys' slot on a cluster."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from importlib import resources
from typing import Any

from creditgate.server.engine.cluster import ClusterWire, RedisClient
from creditgate.server.engine.redis_errors import redis_error
from creditgate.server.engine.script_reply import ScriptReply
from creditgate.server.engine.wire import RedisWire, pack_command
from creditgate.server.errors import CreditgateError, Unavailable
from redis.exceptions import NoScriptError, RedisError

# Each script is lib.lua followed by its parts; both decide scripts call the function in decide_one.lua.
SCRIPT_PARTS: dict[str, tuple[str, ...]] = {
    "decide": ("decide_one", "decide"),
    "decide_many": ("decide_one", "decide_many"),
    **{
        name: (name,)
        for name in (
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
            "verify",
            "heal",
        )
    },
}


def script_source(name: str) -> str:
    folder = resources.files("creditgate.server.engine")
    return "\n".join(folder.joinpath(f"{part}.lua").read_text() for part in ("lib", *SCRIPT_PARTS[name]))


class Scripts:
    """The engine's scripts: loaded once, called by sha; loaded again when Redis has lost them (NOSCRIPT)."""

    def __init__(
        self, redis: RedisClient, wire: RedisWire | ClusterWire, wait_replicas: int = 0, wait_timeout_ms: int = 0
    ) -> None:
        self._redis = redis
        self._wire = wire
        # CREDITGATE_REDIS_WAIT_REPLICAS: every call is answered only once this many replicas have its writes (a
        # WAIT behind the write it goes out in, on its connection, shared by that write's calls); b"" when 0.
        self._wait_replicas = wait_replicas
        self._wait_timeout_ms = wait_timeout_ms
        self._wait = pack_command("WAIT", wait_replicas, wait_timeout_ms) if wait_replicas else b""
        self._sources = {name: script_source(name) for name in SCRIPT_PARTS}
        self._shas = {name: redis.register_script(source).sha for name, source in self._sources.items()}

    async def load(self) -> None:
        """Put every script in Redis's cache up front (every primary's, on a cluster), so the first call is not
        slower."""
        for source in self._sources.values():
            try:
                if isinstance(self._wire, ClusterWire):
                    await self._wire.call_on_every_primary(pack_command("SCRIPT", "LOAD", source))
                else:
                    await self._redis.script_load(source)
            except RedisError as exc:
                raise redis_error(exc, "loading the scripts") from exc

    async def close(self) -> None:
        await self._wire.close()

    def epoch_of(self, key: str) -> str:
        """The run_id of the Redis the scripts touching `key` are sent to now (lib.lua's EPOCH): the one Redis, or
        the primary of the key's slot on a cluster; empty before the first call."""
        if isinstance(self._wire, ClusterWire):
            return self._wire.run_id(key)
        return self._wire.run_id

    def reconnect(self, key: str) -> None:
        """The next call (for `key`, on a cluster) connects again: a script answered READONLY from inside, so
        this Redis is a replica now."""
        if isinstance(self._wire, ClusterWire):
            self._wire.drop_connection(key)
        else:
            self._wire.drop_connection()

    async def run(self, name: str, keys: list[str], args: list[Any]) -> ScriptReply:
        """Run script `name` and read its reply by name (engine/script_reply.py)."""
        return ScriptReply(name, await self._run(name, keys, args))

    async def _run(self, name: str, keys: list[str], args: list[Any]) -> Any:
        sha = self._shas[name]

        def packed(epoch: str) -> bytes:
            # The epoch goes last: the run_id of the very connection the call goes out on (lib.lua).
            return pack_command("EVALSHA", sha, len(keys), *keys, *args, epoch)

        try:
            wire = self._wire
            if isinstance(wire, ClusterWire):
                return await self._run_on_cluster(wire, name, keys[0], packed)
            try:
                if self._wait:
                    result = await self._call_waiting(wire, packed)
                else:
                    result = await wire.call_for_connection(packed)
            except NoScriptError:
                # Redis lost its script cache (restart, SCRIPT FLUSH); the call did not run, so it runs again.
                await self._redis.script_load(self._sources[name])
                if self._wait:
                    result = await self._call_waiting(wire, packed)
                else:
                    result = await wire.call_for_connection(packed)
        except RedisError as exc:
            raise redis_error(exc, f"script {name}") from exc
        return result

    async def _run_on_cluster(self, wire: ClusterWire, name: str, key: str, packed: Callable[[str], bytes]) -> Any:
        try:
            reply = await wire.call_for_key(key, packed, self._wait)
        except NoScriptError:
            # A primary that never had them (a promoted replica: SCRIPT LOAD is not replicated) or lost them.
            await wire.call_for_key(key, lambda _: pack_command("SCRIPT", "LOAD", self._sources[name]))
            reply = await wire.call_for_key(key, packed, self._wait)
        return self._waited(reply) if self._wait else reply

    async def _call_waiting(self, wire: RedisWire, packed: Callable[[str], bytes]) -> Any:
        # One WAIT behind each write of the connection, for all its calls: one replica round trip per batch.
        return self._waited(await wire.call_then(packed, self._wait))

    def _waited(self, replies: list[Any]) -> Any:
        """A call's reply once WAIT (its second reply) says enough replicas have it; else UNAVAILABLE: the call ran
        on the primary, and the caller's retry with the same request_id gets its answer (or, after a failover to a
        replica that never had it, a fresh decision): charged once either way."""
        reply, acknowledged = replies
        if isinstance(reply, BaseException):
            raise reply
        if isinstance(acknowledged, BaseException) or int(acknowledged) < self._wait_replicas:
            raise Unavailable(
                f"{acknowledged} of {self._wait_replicas} Redis replicas confirmed the change within"
                f" {self._wait_timeout_ms} ms (CREDITGATE_REDIS_WAIT_REPLICAS); a retry with the same request_id"
                " is safe",
                reason="REDIS_WAIT_TIMEOUT",
            )
        return reply

    async def run_many(self, name: str, calls: list[tuple[list[str], list[Any]]]) -> list[Any | CreditgateError]:
        """Each call's reply (as Redis sent it) or error, in order; the calls go to Redis together and run there in
        this order (on a cluster: each primary's calls together, in this order, the primaries concurrently)."""
        sha = self._shas[name]
        wire = self._wire
        if isinstance(wire, ClusterWire):
            replies = await wire.call_many_for_keys(
                [(keys[0], _packer(sha, keys, args)) for keys, args in calls], self._wait
            )
            if self._wait:
                replies = [self._waited_or_error(reply) for reply in replies]
        else:
            wait = [self._wait] if self._wait else []
            try:
                futures = await wire.call_many_for_connection(
                    lambda epoch: [
                        *(pack_command("EVALSHA", sha, len(keys), *keys, *args, epoch) for keys, args in calls),
                        *wait,
                    ]
                )
            except RedisError as exc:
                raise redis_error(exc, f"script {name}") from exc
            if futures:
                # Replies arrive in order (and a lost connection fails them in order): the last one settles last.
                await asyncio.wait((futures[-1],))
            replies = [future.exception() or future.result() for future in futures]
            if wait:
                # One WAIT behind the whole batch: every call of it waits for the replicas together.
                acknowledged = replies.pop()
                replies = [self._waited_or_error([reply, acknowledged]) for reply in replies]
        outcomes: list[Any | CreditgateError] = []
        for (keys, args), reply in zip(calls, replies, strict=True):
            if isinstance(reply, NoScriptError):
                # Every later call of the batch saw NOSCRIPT too, so running them again keeps their order.
                try:
                    reply = await self._run(name, keys, args)
                except CreditgateError as exc:
                    reply = exc
            if isinstance(reply, RedisError):
                error = redis_error(reply, f"script {name}")
                error.__cause__ = reply
                reply = error
            elif isinstance(reply, BaseException) and not isinstance(reply, CreditgateError):
                raise reply
            outcomes.append(reply)
        return outcomes

    def _waited_or_error(self, replies: Any) -> Any:
        if isinstance(replies, BaseException):
            return replies
        try:
            return self._waited(replies)
        except (RedisError, CreditgateError) as exc:
            return exc


def _packer(sha: str, keys: list[str], args: list[Any]) -> Callable[[str], bytes]:
    """One EVALSHA packed for the connection it goes out on (its epoch last, as Scripts.run packs it)."""
    return lambda epoch: pack_command("EVALSHA", sha, len(keys), *keys, *args, epoch)

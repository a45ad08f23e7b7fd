"""Redis Cluster: detected from the node, the hot path routed by key slot over one pipelined RedisWire per primary.

CREDITGATE_REDIS_URL names one Redis, or several seed nodes of one cluster, comma-separated. At start the first seed
that answers is asked `INFO cluster`; `cluster_enabled:1` means cluster mode, with nothing else to set. A single
node keeps the single-node objects (one RedisWire, redis-py's Redis) untouched: not a line of its path changes.

On a cluster the hot path keeps what makes the single-node wire fast (pre-packed commands, a batch per round trip)
once per primary: ClusterWire holds the slot map (CLUSTER SLOTS) and one RedisWire per primary, and sends each
command to the primary of its first key's slot. Every command our scripts send names keys of one `{sN}` tag, so
one slot. What a cluster answers instead of running a command, it did not run, so resending it is safe:
- MOVED: the slot has a new owner (a finished reshard, a failover): the map is read again and the command resent;
- ASK: the slot is being migrated and the keys are on the target already: ASKING and the command, on the target,
  in one write (ASKING holds for the next command of that connection only);
- TRYAGAIN (a script whose keys are half migrated), CLUSTERDOWN, a primary that cannot be reached (a connection
  refused is a command never sent): retried with a short backoff and a fresh map until the call's deadline, then
  the error goes to the caller as UNAVAILABLE (redis_errors.py).
A connection lost or a reply that does not come after the command was written is never resent here: it may have
run, and only the caller's retry with the same request_id is safe.

Everything off the hot path (reads of a customer, the flusher's bookkeeping, SCAN over every primary, scripts of
redis-py) goes through redis-py's asyncio RedisCluster: it follows MOVED/ASK and failovers itself, and its costs
are not on the decision's path."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from typing import Any, TypeAlias
from urllib.parse import urlsplit, urlunsplit

import redis
from creditgate.server.engine.wire import ConnectFailed, RedisWire, pack_command
from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import SSLConnection, parse_url
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.exceptions import AskError, ClusterDownError, MovedError, RedisError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError

# The client off the hot path: redis-py's Redis for one node, its RedisCluster for a cluster.
RedisClient: TypeAlias = Redis | RedisCluster
SLOTS = 16384
# First wait before a retry of TRYAGAIN / CLUSTERDOWN / an unreachable primary; doubled each time, up to the cap.
RETRY_FIRST_SECONDS = 0.02
RETRY_MAX_SECONDS = 0.25
# A slot map read again on a MOVED while the last was read this recently is not read again (one MOVED per call of
# a moved slot would otherwise read the map once per call).
MAP_FRESH_SECONDS = 0.05


def seed_urls(url: str) -> list[str]:
    """The Redis URLs of CREDITGATE_REDIS_URL: one, or several seed nodes of a cluster, comma-separated."""
    return [part.strip() for part in url.split(",") if part.strip()]


def is_cluster(url: str, timeout_seconds: float) -> bool:
    """Whether the Redis of `url` (the first seed that answers) runs in cluster mode (INFO cluster)."""
    error: Exception | None = None
    for seed in seed_urls(url):
        client = redis.Redis.from_url(seed, socket_timeout=timeout_seconds, socket_connect_timeout=timeout_seconds)
        try:
            info = client.info("cluster")
            return str(info.get("cluster_enabled", 0)) == "1"
        except RedisError as exc:
            error = exc
        finally:
            client.close()
    raise RedisConnectionError(f"no Redis of {url!r} answered: {error}")


class _RedisCluster(RedisCluster):
    """redis-py's asyncio RedisCluster, with the errors its connections raise while a failover tears them down
    (AttributeError / TypeError from inside redis-py: a writer already gone, a node no longer in its map — redis-py
    issues #3546, #3835) turned into the ConnectionError they are, which the caller answers as UNAVAILABLE."""

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().execute_command(*args, **kwargs)
        except (AttributeError, TypeError) as exc:
            raise RedisConnectionError(f"Redis Cluster connection torn down during a topology change: {exc}") from exc


def new_cluster_client(url: str, timeout_seconds: float) -> RedisCluster:
    """redis-py's cluster client for the seeds of `url` (first seed's credentials and TLS for every node)."""
    seeds = seed_urls(url)
    options: dict[str, Any] = dict(parse_url(seeds[0]))
    return _RedisCluster(
        startup_nodes=[ClusterNode(str(host), int(port)) for host, port in (_address(seed) for seed in seeds)],
        username=options.get("username"),
        password=options.get("password"),
        ssl=options.get("connection_class") is SSLConnection,
        ssl_ca_certs=str(options["ssl_ca_certs"]) if options.get("ssl_ca_certs") else None,
        ssl_cert_reqs=str(options.get("ssl_cert_reqs") or "required"),
        decode_responses=True,
        socket_timeout=timeout_seconds,
        socket_connect_timeout=timeout_seconds,
        # Its own retries follow a failover (a new map); a command that timed out is not sent again.
        retry=Retry(NoBackoff(), 3),
    )


def open_redis(url: str, timeout_seconds: float, *, one_node: bool = False) -> tuple[RedisClient, bool]:
    """redis-py's client for CREDITGATE_REDIS_URL (off the hot path: reads, the flusher, the admin commands) and
    whether it is a cluster: asked with INFO cluster, unless the caller knows it is one node (the embedded Redis)."""
    if not one_node and is_cluster(url, timeout_seconds):
        return new_cluster_client(url, timeout_seconds), True
    # No automatic retries: a command that timed out may have run, and only a retry with the same request_id (the
    # caller's) is safe to repeat. A stuck Redis fails calls after timeout_seconds.
    client = Redis.from_url(
        url,
        decode_responses=True,
        socket_timeout=timeout_seconds,
        socket_connect_timeout=timeout_seconds,
        retry=Retry(NoBackoff(), 0),
    )
    return client, False


def _address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 6379


def slot_of(key: str) -> int:
    return int(key_slot(key.encode()))


class ClusterWire:
    """RedisWire's calls for a cluster, each routed by the slot of a key it names (see the module's notes)."""

    def __init__(self, url: str, timeout_seconds: float) -> None:
        self._seeds = seed_urls(url)
        self._template = urlsplit(self._seeds[0])
        self._timeout = timeout_seconds
        # slot -> "host:port" of its primary; "" until the map is read.
        self._slots: list[str] = [""] * SLOTS
        self._wires: dict[str, RedisWire] = {}
        self._refreshing: asyncio.Future[None] | None = None
        self._refreshed_at = 0.0
        # `{sN}` tag -> slot: a decision's slot without a CRC16 per call.
        self._tag_slots: dict[str, int] = {}

    def slot(self, key: str) -> int:
        start = key.find("{")
        end = key.find("}", start + 1)
        if start < 0 or end <= start + 1:
            return slot_of(key)
        tag = key[start + 1 : end]
        slot = self._tag_slots.get(tag)
        if slot is None:
            slot = self._tag_slots[tag] = slot_of(tag)
        return slot

    async def node_of(self, key: str) -> str:
        """The "host:port" of the primary that serves `key` now (the map is read first if it never was)."""
        slot = self.slot(key)
        if not self._slots[slot]:
            await self.refresh()
        return self._slots[slot]

    def wire(self, node: str) -> RedisWire:
        wire = self._wires.get(node)
        if wire is None:
            host, _, port = node.rpartition(":")
            netloc = self._template.netloc.rpartition("@")[0]
            netloc = f"{netloc}@{host}:{port}" if netloc else f"{host}:{port}"
            url = urlunsplit(self._template._replace(netloc=netloc, path="/0"))
            wire = self._wires[node] = RedisWire(url, self._timeout)
        return wire

    def run_id(self, key: str) -> str:
        """The run_id of the primary that serves `key`, as its connection found it; "" while not connected."""
        node = self._slots[self.slot(key)]
        wire = self._wires.get(node) if node else None
        return wire.run_id if wire is not None else ""

    async def primaries(self) -> list[str]:
        if not any(self._slots):
            await self.refresh()
        return sorted({node for node in self._slots if node})

    async def call_for_key(self, key: str, pack: Callable[[str], bytes], then: bytes = b"") -> Any:
        """RedisWire.call_for_connection on the primary of `key`'s slot, following MOVED/ASK and retrying what a
        cluster answers when it cannot run the command now, until the deadline. `then`: a command written right
        after it on the same connection (WAIT); the replies of both are returned, as a list."""
        deadline = time.monotonic() + self._timeout
        pause = RETRY_FIRST_SECONDS
        asking = ""
        while True:
            node = asking or await self.node_of(key)
            try:
                if not node:
                    raise ClusterDownError(f"no primary serves slot {self.slot(key)}")
                return await self._send(self.wire(node), pack, bool(asking), then)
            except MovedError as moved:
                asking = ""
                self._slots[moved.slot_id] = self._node_name(moved.host, moved.port, node)
                await self.refresh(lazy=True)
            except AskError as ask:
                asking = self._node_name(ask.host, ask.port, node)
            except (TryAgainError, ClusterDownError, ConnectFailed):
                asking = ""
                if time.monotonic() + pause > deadline:
                    raise
                await asyncio.sleep(pause * (0.5 + random.random()))
                pause = min(pause * 2, RETRY_MAX_SECONDS)
                await self.refresh(lazy=True)

    @staticmethod
    async def _send(wire: RedisWire, pack: Callable[[str], bytes], asking: bool, then: bytes) -> Any:
        if not asking and not then:
            return await wire.call_for_connection(pack)
        if not asking:
            # WAIT behind the write the call goes out in, shared by that write's calls.
            replies = await wire.call_then(pack, then)
            for reply in replies:
                if isinstance(reply, BaseException):
                    raise reply
            return replies
        # ASKING holds for the next command of its connection only, WAIT for the writes before it on its own:
        # each goes out in the same write as the command, on the same connection.
        before = [pack_command("ASKING")] if asking else []
        after = [then] if then else []
        futures = await wire.call_many_for_connection(lambda run_id: [*before, pack(run_id), *after])
        await asyncio.wait(futures)
        replies = [future.exception() or future.result() for future in futures[len(before) :]]
        for reply in replies:
            if isinstance(reply, BaseException):
                raise reply
        return replies if then else replies[0]

    async def call_many_for_keys(
        self, calls: list[tuple[str, Callable[[str], bytes]]], then: bytes = b"", resend: bool = True
    ) -> list[Any]:
        """Each call's reply, or the exception it raised, in order. The calls of one primary go out in one write, in
        their order, and the primaries' batches run concurrently; a call a primary did not run (MOVED, ASK,
        TRYAGAIN …) is sent again alone, after its batch, by call_for_key — unless `resend` is False (calls that
        only make sense together, such as MULTI … EXEC: resent apart, a MULTI would leave its connection queueing
        whatever comes next); then its error is its reply and the map is read again. `then` (WAIT) follows each
        primary's batch, and each resent call; its reply is given with each call's: [reply, then's reply]."""
        by_node: dict[str, list[int]] = {}
        for index, (key, _) in enumerate(calls):
            by_node.setdefault(await self.node_of(key), []).append(index)
        replies: list[Any] = [None] * len(calls)
        await asyncio.gather(
            *(self._call_node(node, indexes, calls, replies, then, resend) for node, indexes in by_node.items())
        )
        return replies

    async def _call_node(
        self,
        node: str,
        indexes: list[int],
        calls: list[tuple[str, Callable[[str], bytes]]],
        replies: list[Any],
        then: bytes,
        resend: bool,
    ) -> None:
        try:
            if not node:
                raise ClusterDownError("the slot has no primary")
            futures = await self.wire(node).call_many_for_connection(
                lambda run_id: [*(calls[index][1](run_id) for index in indexes), *([then] if then else [])]
            )
            await asyncio.wait(futures)
            outcomes: list[Any] = [future.exception() or future.result() for future in futures]
            if then:
                waited = outcomes.pop()
                outcomes = [
                    outcome if isinstance(outcome, BaseException) else [outcome, waited] for outcome in outcomes
                ]
        except (ClusterDownError, ConnectFailed) as exc:
            outcomes = [exc] * len(indexes)
        except RedisError as exc:
            for index in indexes:
                replies[index] = exc
            return
        for index, outcome in zip(indexes, outcomes, strict=True):
            if isinstance(outcome, MovedError):
                self._slots[outcome.slot_id] = self._node_name(outcome.host, outcome.port, node)
            if not resend and isinstance(outcome, AskError | TryAgainError | ClusterDownError | ConnectFailed):
                await self.refresh(lazy=True)
            elif isinstance(outcome, AskError | TryAgainError | ClusterDownError | ConnectFailed):
                # Not run: sent again on its own (in order within this node's batch).
                key, pack = calls[index]
                try:
                    outcome = await self.call_for_key(key, pack, then)
                except RedisError as exc:
                    outcome = exc
            replies[index] = outcome

    async def call_on_every_primary(self, packed: bytes) -> None:
        """One command on every primary (SCRIPT LOAD), concurrently; the first error is raised."""
        nodes = await self.primaries()
        await asyncio.gather(*(self.wire(node).call(packed) for node in nodes))

    def drop_connection(self, key: str) -> None:
        """A READONLY seen inside a script's reply: the node of `key` is a replica now; read the map again."""
        node = self._slots[self.slot(key)]
        if node and node in self._wires:
            self._wires[node].drop_connection()
        self._refreshed_at = 0.0

    async def refresh(self, lazy: bool = False) -> None:
        """Read the slot map again (CLUSTER SLOTS) from a node that answers: the known primaries, then the seeds.
        Concurrent callers share one read; `lazy`: not again when the last read is only just done."""
        if lazy and time.monotonic() - self._refreshed_at < MAP_FRESH_SECONDS:
            return
        if self._refreshing is None:
            self._refreshing = asyncio.ensure_future(self._read_map())
        refreshing = self._refreshing
        try:
            await asyncio.shield(refreshing)
        finally:
            if refreshing.done():
                self._refreshing = None

    async def _read_map(self) -> None:
        candidates = [*sorted({node for node in self._slots if node}), *self._seed_nodes()]
        error: Exception | None = None
        for node in dict.fromkeys(candidates):
            try:
                reply = await self.wire(node).call(pack_command("CLUSTER", "SLOTS"))
            except RedisError as exc:
                error = exc
                continue
            slots = [""] * SLOTS
            for start, end, primary, *_ in reply:
                name = self._node_name(str(primary[0]), int(primary[1]), node)
                slots[int(start) : int(end) + 1] = [name] * (int(end) - int(start) + 1)
            self._slots = slots
            self._refreshed_at = time.monotonic()
            return
        raise ClusterDownError(f"no node of the cluster answered CLUSTER SLOTS: {error}")

    def _seed_nodes(self) -> list[str]:
        return [f"{host}:{port}" for host, port in (_address(seed) for seed in self._seeds)]

    @staticmethod
    def _node_name(host: str, port: int, asked: str) -> str:
        # An empty host means "the address you reached me on".
        return f"{host or asked.rpartition(':')[0]}:{port}"

    async def close(self) -> None:
        for wire in self._wires.values():
            await wire.close()

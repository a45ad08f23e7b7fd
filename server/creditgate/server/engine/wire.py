"""The hot path's own connection to Redis: pre-packed commands, written in batches, one batch in flight at a time.

Every decision is one EVALSHA. Sent through redis-py, each call pays for argument encoding in Python, a pool
checkout, an asyncio timeout and a read of its own, which at thousands of calls a second costs the server more
CPU than the scripts cost Redis. Here the commands made while the previous batch is being answered are written
together (each stays its own EVALSHA, atomic on its own), replies are parsed by hiredis and handed back in
order, and one timer watches the oldest call. A call that times out is failed, never retried (it may have run: only the
caller's retry with the same request_id is safe), and the connection is dropped so that no later reply can be
taken for another call's; the next call connects again.

Replies carry no tag: the n-th reply answers the n-th command. So a call whose caller gives up (a cancelled RPC,
a client deadline) keeps its place in the queue until its reply comes, and that reply is read and dropped; only
dropping the connection (and failing every call on it) lets the queue forget a call. A connection that is
answered READONLY (the Redis behind the address became a replica) is given no new commands: it is closed once
its calls are answered, and the next call connects again, to whatever primary the address now leads to."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import hiredis
from redis._parsers.base import BaseParser
from redis.asyncio.connection import SSLConnection, UnixDomainSocketConnection, parse_url
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError


class ConnectFailed(RedisConnectionError):
    """No connection could be made: no command was sent on it, so sending it again elsewhere is safe."""


def pack_command(*parts: str | int | bytes) -> bytes:
    """One command in Redis's wire format, encoded in C."""
    packed: bytes = hiredis.pack_command(parts)  # type: ignore[arg-type]  # its stub types a 1-tuple
    return packed


class _Protocol(asyncio.Protocol):
    """Replies arrive in the order the commands were written; each settles the oldest waiting future.

    One batch is on the wire at a time: commands made while Redis is still answering the last batch are held
    and written together the moment its last reply is in (Nagle's rule). Under load a batch then carries every
    call that arrived during one round trip, so the server and Redis each pay one write and one read for many
    calls; with nothing in flight a command goes out in the same turn of the event loop, so an idle sidecar adds
    no delay."""

    def __init__(self, on_lost: Any) -> None:
        self._reader = hiredis.Reader(encoding="utf-8")
        self._on_lost = on_lost
        self.transport: asyncio.Transport | None = None
        # Every call sent or about to be, oldest first, until its reply is in: a cancelled one too (see above).
        self.waiting: deque[tuple[asyncio.Future[Any], float]] = deque()
        self._outgoing: list[bytes] = []
        self._unanswered = 0
        self._flush_scheduled = False
        # The run_id of the Redis this connection reached (INFO server, asked in the handshake).
        self.run_id = ""
        # Answered READONLY: no new calls; closed when the last one is answered.
        self.retired = False
        # The timer of RedisWire._check_oldest for this connection, while one is set.
        self.watchdog: asyncio.TimerHandle | None = None
        # Commands to write behind the next write (WAIT), each answering every call of that write that asked for
        # it: its reply's future and deadline.
        self._trailers: dict[bytes, tuple[asyncio.Future[Any], float]] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a stream transport, as asked for

    def send(self, future: asyncio.Future[Any], packed: bytes, deadline: float, now: bool = False) -> None:
        """Queue a command; its reply settles `future`. `now`: written this turn even with a batch in flight."""
        self.waiting.append((future, deadline))
        self._outgoing.append(packed)
        if (now or not self._unanswered) and not self._flush_scheduled:
            # After the calls that are ready in this turn have queued theirs: one write for all of them.
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def send_then(
        self, future: asyncio.Future[Any], packed: bytes, then: bytes, deadline: float
    ) -> asyncio.Future[Any]:
        """Queue a command, and `then` behind the write it goes out in: one `then` per write, shared by every
        command of that write that asks for it (a WAIT confirms all the writes before it on its connection).
        Returns the future of `then`'s reply."""
        self.send(future, packed, deadline)
        trailer = self._trailers.get(then)
        if trailer is None:
            trailer = self._trailers[then] = (asyncio.get_running_loop().create_future(), deadline)
        return trailer[0]

    def _flush(self) -> None:
        self._flush_scheduled = False
        outgoing, self._outgoing = self._outgoing, []
        if not outgoing:
            return
        if self._trailers and self.transport is not None and not self.transport.is_closing():
            for then, (future, deadline) in self._trailers.items():
                outgoing.append(then)
                self.waiting.append((future, deadline))
            self._trailers = {}
        if self.transport is None or self.transport.is_closing():
            self.fail_all(RedisConnectionError("connection to Redis lost before the command was sent"))
            return
        self._unanswered += len(outgoing)
        self.transport.write(b"".join(outgoing))

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        waiting = self.waiting
        while (reply := self._reader.gets()) is not False:
            self._unanswered -= 1
            if not waiting:
                # More replies than calls: positions no longer say whose reply is whose. Never guess.
                self.drop(RedisConnectionError("Redis sent a reply no call was waiting for"))
                return
            future = waiting.popleft()[0]
            if isinstance(reply, hiredis.ReplyError):
                error = response_error(str(reply))
                if isinstance(error, ReadOnlyError) and not self.retired:
                    self.retired = True
                    self._on_lost(self)
                if not future.done():
                    future.set_exception(error)
            elif not future.done():  # done: its caller gave up; the reply was its own, and is dropped
                future.set_result(reply)
        if self.retired and not waiting:
            self.drop(RedisConnectionError("connection to a read-only Redis closed"))
        elif not self._unanswered and self._outgoing and not self._flush_scheduled:
            self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail_all(RedisConnectionError(f"connection to Redis lost: {exc or 'closed by the server'}"))
        self._on_lost(self)

    def fail_all(self, error: Exception) -> None:
        self._outgoing = []
        trailers, self._trailers = self._trailers, {}
        for future, _ in trailers.values():
            if not future.done():
                future.set_exception(error)
        while self.waiting:
            future = self.waiting.popleft()[0]
            if not future.done():
                future.set_exception(error)

    def drop(self, error: Exception) -> None:
        """Fail every call on this connection and close it at once: no reply is read from it again."""
        self.fail_all(error)
        self._on_lost(self)
        if self.transport is not None:
            self.transport.abort()


def response_error(message: str) -> Exception:
    """The exception for an error reply."""
    # redis-py's own mapping, so that e.g. LOADING (a restarted Redis) is a ConnectionError as everywhere else.
    error: Exception = BaseParser.parse_error(message)  # type: ignore[no-untyped-call]
    return error


class RedisWire:
    """Sends pre-packed commands (see `pack_command`) to the Redis of `url` and returns the decoded replies."""

    def __init__(self, url: str, timeout_seconds: float) -> None:
        self._options = parse_url(url)
        self._timeout = timeout_seconds
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Future[_Protocol] | None = None
        # Connections answered READONLY that still wait for replies (closed by themselves when answered).
        self._retired: set[_Protocol] = set()

    async def call(self, packed: bytes) -> Any:
        """The reply; raises redis-py's ResponseError / NoScriptError / ConnectionError / TimeoutError."""
        protocol = self._protocol or await self._connect()
        return await self._send(protocol, packed)

    async def call_many(self, commands: list[bytes]) -> list[asyncio.Future[Any]]:
        """The replies' futures, in order: the commands go out in one write and Redis runs them in this order."""
        protocol = self._protocol or await self._connect()
        # Not held back for the batch in flight: many commands already share this write, and holding them would
        # leave Redis idle while the server reads the last batch's replies.
        return [self._send(protocol, packed, now=True) for packed in commands]

    async def call_for_connection(self, pack: Callable[[str], bytes]) -> Any:
        """Like call, for a command that names the Redis it is meant for: `pack(run_id)` gets the run_id of the
        connection it goes out on, and it goes out on no other (a lost connection fails it)."""
        protocol = self._protocol or await self._connect()
        return await self._send(protocol, pack(protocol.run_id))

    async def call_then(self, pack: Callable[[str], bytes], then: bytes) -> list[Any]:
        """call_for_connection, and `then` (WAIT) on the same connection behind the write the command goes out in,
        shared with the other calls of that write: [the command's reply, then's reply], either an exception."""
        protocol = self._protocol or await self._connect()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        deadline = time.monotonic() + self._timeout
        confirmed = protocol.send_then(future, pack(protocol.run_id), then, deadline)
        if protocol.watchdog is None:
            protocol.watchdog = loop.call_later(self._timeout, self._check_oldest, protocol)
        await asyncio.wait((future, confirmed))
        return [f.exception() or f.result() for f in (future, confirmed)]

    async def call_many_for_connection(self, pack: Callable[[str], list[bytes]]) -> list[asyncio.Future[Any]]:
        """call_many for commands packed as call_for_connection packs its one."""
        protocol = self._protocol or await self._connect()
        return [self._send(protocol, packed, now=True) for packed in pack(protocol.run_id)]

    @property
    def run_id(self) -> str:
        """The run_id of the Redis the current connection reached; empty while there is none."""
        return self._protocol.run_id if self._protocol is not None else ""

    def _send(self, protocol: _Protocol, packed: bytes, now: bool = False) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        protocol.send(future, packed, time.monotonic() + self._timeout, now)
        if protocol.watchdog is None:
            protocol.watchdog = loop.call_later(self._timeout, self._check_oldest, protocol)
        return future

    async def close(self) -> None:
        for protocol in (self._protocol, *self._retired):
            if protocol is not None and protocol.transport is not None:
                protocol.transport.close()
        self._protocol = None
        self._retired.clear()

    def _check_oldest(self, protocol: _Protocol) -> None:
        """Times the connection out when its oldest call is overdue, whether or not that call's caller gave up:
        a reply that does not come holds back every reply behind it."""
        protocol.watchdog = None
        waiting = protocol.waiting
        if not waiting:
            return  # all answered, or the connection was lost and its calls failed with it
        remaining = waiting[0][1] - time.monotonic()
        if remaining > 0:
            protocol.watchdog = asyncio.get_running_loop().call_later(remaining, self._check_oldest, protocol)
            return
        # Dropped now, not when the transport reports the loss: the next call must not queue here.
        protocol.drop(RedisTimeoutError(f"Redis did not answer within {self._timeout:g} s"))

    def _lost(self, protocol: _Protocol) -> None:
        """The connection takes no new calls: lost, timed out, or retired (then kept until it is answered)."""
        if self._protocol is protocol:
            self._protocol = None
        if protocol.retired and protocol.waiting and protocol.transport is not None:
            self._retired.add(protocol)
        else:
            self._retired.discard(protocol)

    def drop_connection(self) -> None:
        """Connect again on the next call (a READONLY answer seen inside a script's reply): the current
        connection's calls are still answered on it, then it is closed."""
        protocol = self._protocol
        if protocol is not None and not protocol.retired:
            protocol.retired = True
            self._lost(protocol)
            if not protocol.waiting:
                protocol.drop(RedisConnectionError("connection to a read-only Redis closed"))

    async def _connect(self) -> _Protocol:
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._open())
        connecting = self._connecting
        try:
            return await asyncio.shield(connecting)
        finally:
            if connecting.done():
                self._connecting = None

    async def _open(self) -> _Protocol:
        try:
            async with asyncio.timeout(self._timeout):
                protocol = await self._open_transport()
                try:
                    await self._handshake(protocol)
                except BaseException:
                    if protocol.transport is not None:
                        protocol.transport.close()
                    raise
        except (OSError, TimeoutError) as exc:
            raise ConnectFailed(f"cannot connect to Redis: {exc or type(exc).__name__}") from exc
        self._protocol = protocol
        return protocol

    async def _open_transport(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        options = self._options
        cls = options.get("connection_class")
        if cls is UnixDomainSocketConnection:
            _, protocol = await loop.create_unix_connection(lambda: _Protocol(self._lost), options["path"])
        else:
            context = _ssl_context(options) if cls is SSLConnection else None
            _, protocol = await loop.create_connection(
                lambda: _Protocol(self._lost),
                options.get("host", "localhost"),
                int(options.get("port", 6379)),
                ssl=context,
            )
        return protocol

    async def _handshake(self, protocol: _Protocol) -> None:
        """AUTH and SELECT, answered before the connection is handed out."""
        options = self._options
        commands: list[tuple[str | int, ...]] = []
        if options.get("password") is not None:
            user = options.get("username")
            commands.append(("AUTH", user, options["password"]) if user else ("AUTH", options["password"]))
        if int(options.get("db") or 0):
            commands.append(("SELECT", int(options["db"])))
        # Which Redis this is: a new run_id means it restarted or another took its place (scripts' epoch).
        commands.append(("INFO", "server"))
        loop = asyncio.get_running_loop()
        futures = []
        for command in commands:
            future: asyncio.Future[Any] = loop.create_future()
            protocol.send(future, pack_command(*command), time.monotonic() + self._timeout)
            futures.append(future)
        for future in futures:
            try:
                await future
            except ResponseError as exc:
                raise RedisConnectionError(f"Redis refused the connection: {exc}") from exc
        info = futures[-1].result()
        protocol.run_id = next(
            (line.partition(":")[2].strip() for line in str(info).splitlines() if line.startswith("run_id:")), ""
        )
        if not protocol.run_id:
            raise RedisConnectionError("Redis did not tell its run_id (INFO server)")


def _ssl_context(options: Any) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=options.get("ssl_ca_certs"))
    if options.get("ssl_cert_reqs") in ("none", ssl.CERT_NONE):
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context

"""The hot path's Redis connection (engine/wire.py) against real redis-servers: replies go to their own calls,
errors stay with theirs, unix sockets, AUTH and SELECT work, a frozen Redis times calls out and a restarted one is
reconnected to."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis
from creditgate.server.engine.wire import RedisWire, pack_command, response_error
from creditgate.v1 import metering_pb2
from harness import RedisServer, RunningServer, free_port
from redis.exceptions import BusyLoadingError, NoScriptError, ReadOnlyError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

T = TypeVar("T")


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coroutine)


def test_a_thousand_concurrent_calls_each_get_their_own_reply(redis_server: RedisServer) -> None:
    redis.Redis.from_url(redis_server.url).delete("wire:counter")

    async def main() -> list[int]:
        wire = RedisWire(redis_server.url, timeout_seconds=5)
        try:
            calls = [wire.call(pack_command("INCR", "wire:counter")) for _ in range(1000)]
            return list(await asyncio.gather(*calls))
        finally:
            await wire.close()

    # Sent in call order, and Redis answers in that order.
    assert run(main()) == list(range(1, 1001))


# Keeps Redis busy for 100 ms, so that the calls made meanwhile find a batch in flight.
BUSY_SCRIPT = "local start = redis.call('TIME') repeat until (redis.call('TIME')[2] - start[2]) % 1000000 >= 100000"


class CountingTransport:
    """The wire's real transport, with every write's bytes kept."""

    def __init__(self, transport: Any) -> None:
        self._transport = transport
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)
        self._transport.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


@contextlib.asynccontextmanager
async def counted_wire(url: str) -> AsyncIterator[tuple[RedisWire, CountingTransport]]:
    """A connected wire whose writes are kept, and a first call keeping Redis busy for 100 ms."""
    wire = RedisWire(url, timeout_seconds=5)
    try:
        await wire.call(pack_command("PING"))  # connected
        protocol = wire._protocol
        assert protocol is not None
        transport = CountingTransport(protocol.transport)
        protocol.transport = transport  # type: ignore[assignment]
        yield wire, transport
    finally:
        await wire.close()


BUSY = pack_command("EVAL", BUSY_SCRIPT, 0)


def test_calls_made_while_a_batch_is_answered_go_out_together_when_its_last_reply_is_in(
    redis_server: RedisServer,
) -> None:
    redis.Redis.from_url(redis_server.url).delete("wire:held")
    incr = pack_command("INCR", "wire:held")

    async def main() -> tuple[list[bytes], list[Any]]:
        async with counted_wire(redis_server.url) as (wire, transport):
            busy = asyncio.ensure_future(wire.call(BUSY))
            held = []
            for _ in range(100):
                await asyncio.sleep(0)  # one call per turn of the event loop
                held.append(asyncio.ensure_future(wire.call(incr)))
            return transport.writes, [await busy, *await asyncio.gather(*held)]

    writes, (busy_reply, *counts) = run(main())
    assert busy_reply is None
    assert counts == list(range(1, 101))
    assert writes == [BUSY, incr * 100]


def test_a_batch_is_not_held_back_while_a_call_is_in_flight(redis_server: RedisServer) -> None:
    redis.Redis.from_url(redis_server.url).delete("wire:batch")
    incr = pack_command("INCR", "wire:batch")

    async def main() -> tuple[list[bytes], list[Any]]:
        async with counted_wire(redis_server.url) as (wire, transport):
            busy = asyncio.ensure_future(wire.call(BUSY))
            await asyncio.sleep(0)  # the call queues its command and the write for the next turn
            await asyncio.sleep(0)  # written: Redis is busy from here on
            batch = await wire.call_many([incr] * 10)
            await asyncio.sleep(0)
            written_while_busy = list(transport.writes)  # Redis is still inside the 100 ms script
            return written_while_busy, [await busy, *await asyncio.gather(*batch)]

    written_while_busy, (busy_reply, *counts) = run(main())
    assert written_while_busy == [BUSY, incr * 10]
    assert busy_reply is None
    assert counts == list(range(1, 11))


def test_an_error_reply_fails_only_its_own_call(redis_server: RedisServer) -> None:
    client = redis.Redis.from_url(redis_server.url)
    client.set("wire:text", "not a number")

    async def main() -> list[Any]:
        wire = RedisWire(redis_server.url, timeout_seconds=5)
        try:
            return list(
                await asyncio.gather(
                    wire.call(pack_command("SET", "wire:a", "1")),
                    wire.call(pack_command("INCR", "wire:text")),
                    wire.call(pack_command("EVALSHA", "0" * 40, 0)),
                    wire.call(pack_command("GET", "wire:a")),
                    return_exceptions=True,
                )
            )
        finally:
            await wire.close()

    ok, not_integer, no_script, value = run(main())
    assert ok == "OK"
    assert type(not_integer) is ResponseError and "not an integer" in str(not_integer)
    assert type(no_script) is NoScriptError
    assert value == "1"


def test_a_redis_still_loading_its_data_is_unavailable_not_an_error() -> None:
    # What a restarted Redis answers until its AOF is read: redis-py calls it a ConnectionError (retry later).
    assert type(response_error("LOADING Redis is loading the dataset in memory")) is BusyLoadingError
    assert type(response_error("NOSCRIPT No matching script")) is NoScriptError
    assert type(response_error("ERR unknown command")) is ResponseError


def test_unix_socket_password_and_database(tmp_path: Path) -> None:
    socket_path = tmp_path / "redis.sock"
    server = RedisServer(tmp_path / "data", "--unixsocket", str(socket_path))
    server.start()
    redis.Redis(port=server.port).config_set("requirepass", "s3cret")
    try:

        async def main() -> object:
            wire = RedisWire(f"unix://:s3cret@{socket_path}?db=3", timeout_seconds=5)
            try:
                return await wire.call(pack_command("SET", "wire:where", "db3"))
            finally:
                await wire.close()

        assert run(main()) == "OK"
        client = redis.Redis(port=server.port, password="s3cret", db=3)
        assert client.get("wire:where") == b"db3"
        assert redis.Redis(port=server.port, password="s3cret", db=0).get("wire:where") is None

        async def wrong_password() -> object:
            wire = RedisWire(f"unix://:wrong@{socket_path}", timeout_seconds=5)
            return await wire.call(pack_command("PING"))

        with pytest.raises(RedisConnectionError, match="invalid username-password pair"):
            run(wrong_password())
    finally:
        server.stop()


def test_a_frozen_redis_times_calls_out_and_the_next_call_reconnects(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "data")
    server.start()
    assert server.process is not None
    try:

        async def main() -> tuple[float, object]:
            wire = RedisWire(server.url, timeout_seconds=0.5)
            try:
                assert await wire.call(pack_command("PING")) == "PONG"
                os.kill(server.process.pid, signal.SIGSTOP)  # type: ignore[union-attr]
                started = time.monotonic()
                with pytest.raises(RedisTimeoutError):
                    await wire.call(pack_command("PING"))
                waited = time.monotonic() - started
                os.kill(server.process.pid, signal.SIGCONT)  # type: ignore[union-attr]
                return waited, await wire.call(pack_command("PING"))
            finally:
                await wire.close()

        waited, after = run(main())
        assert 0.5 <= waited < 1.5
        assert after == "PONG"
    finally:
        os.kill(server.process.pid, signal.SIGCONT)
        server.stop()


def test_a_restarted_redis_is_reconnected_to(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "data")
    server.start()
    try:

        async def main() -> object:
            wire = RedisWire(server.url, timeout_seconds=2)
            try:
                assert await wire.call(pack_command("PING")) == "PONG"
                server.stop()
                assert server.process is not None
                server.process.wait()
                with pytest.raises(RedisConnectionError):
                    await wire.call(pack_command("PING"))
                server.start()
                return await wire.call(pack_command("PING"))
            finally:
                await wire.close()

        assert run(main()) == "PONG"
    finally:
        server.stop()


def test_scripts_lost_by_redis_are_loaded_again_and_the_call_runs_once(
    server: RunningServer, redis_server: RedisServer
) -> None:
    server.create_customer("acme", plan="basic")
    redis.Redis.from_url(redis_server.url).script_flush()
    decision = server.metering.CheckAndDebit(
        metering_pb2.CheckAndDebitRequest(customer_id="acme", feature="email_unlock", request_id="after-flush")
    )
    assert (decision.allowed, decision.credits_charged, decision.balance_after) == (True, 1, 2499)
    server.flush()
    assert [entry.credits_delta for entry in server.ledger("acme")] == [2500, -1]


def test_a_call_given_up_keeps_its_place_until_its_reply_arrives(redis_server: RedisServer) -> None:
    # The watchdog looks at the queue while Redis is paused and a given-up call is at its head: that call's reply
    # is still to come and must not be handed to the call behind it.
    admin = redis.Redis.from_url(redis_server.url)

    async def main() -> object:
        wire = RedisWire(redis_server.url, timeout_seconds=0.6)
        try:
            assert await wire.call(pack_command("PING")) == "PONG"  # t=0: the watchdog looks again at t=0.6
            await asyncio.sleep(0.2)
            admin.client_pause(500, all=True)  # Redis answers nothing from t=0.2 to t=0.7
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(wire.call(pack_command("ECHO", "given-up")), 0.01)
            return await wire.call(pack_command("ECHO", "mine"))  # answered at t=0.7, before its deadline
        finally:
            await wire.close()

    try:
        assert run(main()) == "mine"
    finally:
        admin.client_unpause()


def test_a_connection_whose_oldest_call_was_given_up_is_still_timed_out(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "data")
    server.start()
    assert server.process is not None
    try:

        async def main() -> tuple[bool, object]:
            wire = RedisWire(server.url, timeout_seconds=0.3)
            try:
                assert await wire.call(pack_command("PING")) == "PONG"
                os.kill(server.process.pid, signal.SIGSTOP)  # type: ignore[union-attr]
                with pytest.raises(TimeoutError):
                    await asyncio.wait_for(wire.call(pack_command("ECHO", "given-up")), 0.01)
                await asyncio.sleep(0.6)
                dropped = wire._protocol is None
                os.kill(server.process.pid, signal.SIGCONT)  # type: ignore[union-attr]
                return dropped, await wire.call(pack_command("ECHO", "after"))
            finally:
                await wire.close()

        assert run(main()) == (True, "after")
    finally:
        os.kill(server.process.pid, signal.SIGCONT)
        server.stop()


def test_a_read_only_answer_retires_the_connection_after_its_calls_are_answered(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "data")
    server.start()
    admin = redis.Redis(port=server.port)
    try:

        async def main() -> tuple[list[object], bool, int, int]:
            wire = RedisWire(server.url, timeout_seconds=5)
            try:
                assert await wire.call(pack_command("SET", "wire:role", "primary")) == "OK"
                first_id = int(await wire.call(pack_command("CLIENT", "ID")))
                admin.replicaof("127.0.0.1", str(free_port()))  # a replica of a primary that is not there
                futures = await wire.call_many(
                    [pack_command("GET", "wire:role"), pack_command("SET", "wire:role", "x"), pack_command("ECHO", "e")]
                )
                replies = list(await asyncio.gather(*futures, return_exceptions=True))
                retired = wire._protocol is None
                admin.replicaof("NO", "ONE")
                assert await wire.call(pack_command("SET", "wire:role", "primary again")) == "OK"
                return replies, retired, first_id, int(await wire.call(pack_command("CLIENT", "ID")))
            finally:
                await wire.close()

        replies, retired, first_id, second_id = run(main())
        value, refused, echoed = replies
        assert (value, echoed) == ("primary", "e")
        assert type(refused) is ReadOnlyError
        assert retired
        assert second_id != first_id  # a new connection
        assert [client["id"] for client in admin.client_list() if int(client["id"]) == first_id] == []
    finally:
        admin.replicaof("NO", "ONE")
        server.stop()


def test_one_wait_confirms_every_call_of_a_write_and_a_missing_replica_fails_them_all(tmp_path: Path) -> None:
    primary = RedisServer(tmp_path / "primary")
    primary.start()
    replica = RedisServer(tmp_path / "replica", "--replicaof", "127.0.0.1", str(primary.port))
    replica.start()
    admin = redis.Redis.from_url(primary.url, decode_responses=True)
    wait = pack_command("WAIT", 1, 300)
    try:
        deadline = time.monotonic() + 10
        while admin.info("replication").get("slave0", {}).get("state") != "online":
            assert time.monotonic() < deadline, "the replica did not come online"
            time.sleep(0.05)

        async def calls(wire: RedisWire, n: int) -> list[list[Any]]:
            return list(
                await asyncio.gather(*(wire.call_then(lambda _: pack_command("INCR", "w"), wait) for _ in range(n)))
            )

        async def main() -> tuple[list[list[Any]], int, list[list[Any]], int]:
            wire = RedisWire(primary.url, timeout_seconds=5)
            try:
                await wire.call(pack_command("PING"))  # connected: the calls below go out in one write
                admin.config_resetstat()
                confirmed = await calls(wire, 10)
                waits = int(admin.info("commandstats")["cmdstat_wait"]["calls"])
                assert replica.process is not None
                os.kill(replica.process.pid, signal.SIGSTOP)
                try:
                    unconfirmed = await calls(wire, 5)
                finally:
                    os.kill(replica.process.pid, signal.SIGCONT)
                return confirmed, waits, unconfirmed, int(admin.info("commandstats")["cmdstat_wait"]["calls"])
            finally:
                await wire.close()

        confirmed, waits, unconfirmed, waits_after = run(main())
        # Ten INCRs, one WAIT behind them, confirmed by the one replica for all ten.
        assert (sorted(reply for reply, _ in confirmed), {acked for _, acked in confirmed}, waits) == (
            list(range(1, 11)),
            {1},
            1,
        )
        # A replica that does not answer: each call ran (11..15) and each learns 0 replicas have it.
        assert (sorted(reply for reply, _ in unconfirmed), {acked for _, acked in unconfirmed}, waits_after) == (
            list(range(11, 16)),
            {0},
            2,
        )
    finally:
        replica.stop()
        primary.stop()

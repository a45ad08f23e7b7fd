"""The hot path's Redis connection (engine/wire.py) alone, under random cancellations, caller deadlines, wire
time-outs, killed connections, CLIENT PAUSE and a SIGSTOPped redis-server: every reply a caller gets is the reply
to its own command. Each command carries a unique token that its reply echoes (ECHO, an EVAL returning its
argument, an EVAL answering an error that names it), so a reply handed to the wrong caller is seen at once."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import random
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio
from creditgate.server.engine.wire import RedisWire, pack_command
from harness import RedisServer
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

# Runs for at most this long, or until this many calls were made, per seed.
RUN_SECONDS = 4.0
MAX_CALLS = 6000
CALLERS = 48
# The wire's own time-out: shorter than the longest SIGSTOP, so that some connections are timed out.
WIRE_TIMEOUT_SECONDS = 0.25
# Answers its argument after keeping Redis busy ~2 ms, so that replies are still on the way when callers give up.
SLOW_ECHO = "local t = redis.call('TIME') repeat until (redis.call('TIME')[2] - t[2]) % 1000000 >= 2000 return ARGV[1]"
FAILING = "return redis.error_reply('ERR failed ' .. ARGV[1])"


@dataclass
class Tally:
    answered: int = 0
    answered_with_error: int = 0
    caller_gave_up: int = 0
    failed_by_wire: int = 0
    crossed: list[tuple[str, Any]] = field(default_factory=list)


def command(rng: random.Random, token: str) -> tuple[bytes, str]:
    """A command whose reply names `token`; and the reply it must get ('!' + text: an error reply naming it)."""
    kind = rng.random()
    if kind < 0.4:
        return pack_command("ECHO", token), token
    if kind < 0.7:
        return pack_command("EVAL", "return ARGV[1]", 0, token), token
    if kind < 0.9:
        return pack_command("EVAL", SLOW_ECHO, 0, token), token
    return pack_command("EVAL", FAILING, 0, token), f"!failed {token}"


def check(tally: Tally, expected: str, outcome: Any) -> None:
    if isinstance(outcome, RedisConnectionError | RedisTimeoutError):
        tally.failed_by_wire += 1
        return
    if isinstance(outcome, ResponseError):
        tally.answered_with_error += 1
        outcome = f"!{outcome}"
    else:
        tally.answered += 1
    if outcome != expected:
        tally.crossed.append((expected, outcome))


async def caller(wire: RedisWire, rng: random.Random, tokens: itertools.count[int], tally: Tally, stop: float) -> None:
    while time.monotonic() < stop:
        number = next(tokens)
        if number >= MAX_CALLS:
            return
        if rng.random() < 0.15:
            # A batch: one write, several replies, each awaited (or abandoned) on its own.
            tokens_and_commands = [command(rng, f"t{number}.{i}") for i in range(rng.randint(2, 6))]
            try:
                futures = await wire.call_many([packed for packed, _ in tokens_and_commands])
            except (RedisConnectionError, RedisTimeoutError):
                tally.failed_by_wire += 1
                continue
            await asyncio.sleep(rng.choice((0, 0, 0.001, 0.01)))
            for future, (_, expected) in zip(futures, tokens_and_commands, strict=True):
                if rng.random() < 0.3 and not future.done():
                    future.cancel()  # the caller gives up on this one
                    tally.caller_gave_up += 1
                    continue
                try:
                    check(tally, expected, await future)
                except (ResponseError, RedisConnectionError, RedisTimeoutError) as exc:
                    check(tally, expected, exc)
            continue
        packed, expected = command(rng, f"t{number}")
        # Caller deadlines from 1 ms (gives up while the reply is on the wire) to well past the wire's time-out.
        deadline = rng.choice((0.001, 0.003, 0.01, 0.03, 0.1, 1.0))
        try:
            check(tally, expected, await asyncio.wait_for(wire.call(packed), deadline))
        except TimeoutError:
            tally.caller_gave_up += 1
        except (ResponseError, RedisConnectionError, RedisTimeoutError) as exc:
            check(tally, expected, exc)


async def disturb(server: RedisServer, rng: random.Random, stop: float) -> dict[str, int]:
    """Random faults, one at a time, with calm in between."""
    assert server.process is not None
    done = {"client_kill": 0, "client_pause": 0, "sigstop": 0}
    admin = redis.asyncio.Redis(port=server.port)
    try:
        while time.monotonic() < stop:
            await asyncio.sleep(rng.uniform(0.1, 0.4))
            fault = rng.choice(tuple(done))
            if fault == "client_kill":
                await admin.client_kill_filter(_type="normal", skipme=True)
            elif fault == "client_pause":
                await admin.client_pause(rng.randint(5, 150), all=True)
            else:
                os.kill(server.process.pid, signal.SIGSTOP)
                try:
                    await asyncio.sleep(rng.uniform(0.05, 0.4))
                finally:
                    os.kill(server.process.pid, signal.SIGCONT)
            done[fault] += 1
    finally:
        os.kill(server.process.pid, signal.SIGCONT)
        await admin.client_unpause()
        await admin.aclose()
    return done


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_every_reply_goes_to_its_own_caller_under_random_faults(tmp_path: Path, seed: int) -> None:
    server = RedisServer(tmp_path / "data")
    server.start()

    async def main() -> tuple[Tally, dict[str, int], Any, int]:
        rng = random.Random(seed)
        wire = RedisWire(server.url, timeout_seconds=WIRE_TIMEOUT_SECONDS)
        tally = Tally()
        tokens = itertools.count()
        stop = time.monotonic() + RUN_SECONDS
        try:
            callers = [caller(wire, random.Random(rng.random()), tokens, tally, stop) for _ in range(CALLERS)]
            faults = asyncio.ensure_future(disturb(server, random.Random(rng.random()), stop))
            await asyncio.gather(*callers)
            done_faults = await faults
            # Calm again: the wire answers, and no call it forgot about is still queued on the connection.
            after = await wire.call(pack_command("ECHO", "after"))
            protocol = wire._protocol
            assert protocol is not None
            return tally, done_faults, after, len(protocol.waiting)
        finally:
            await wire.close()

    try:
        tally, faults, after, still_waiting = asyncio.run(main())
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(server.process.pid, signal.SIGCONT)  # type: ignore[union-attr]
        server.stop()
    print(
        f"seed {seed}: {tally.answered} answered, {tally.answered_with_error} error replies, "
        f"{tally.caller_gave_up} given up, {tally.failed_by_wire} failed by the wire, {len(tally.crossed)} crossed; "
        f"faults {faults}"
    )
    assert tally.crossed == []
    assert (after, still_waiting) == ("after", 0)
    # The run did what it is for: many answers, many callers giving up with replies on the way, every fault.
    assert tally.answered >= 500
    assert tally.caller_gave_up >= 100
    assert tally.failed_by_wire >= 1
    assert min(faults.values()) >= 1

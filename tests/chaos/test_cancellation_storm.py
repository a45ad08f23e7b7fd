"""A cancellation storm through the real sidecar process: many callers, deadlines from 5 ms to 3 s, Redis frozen
(SIGSTOP) and thawed again and again, so that thousands of calls are given up while their scripts' replies are
still on the way. Every answer must belong to its own request: the customer named in its entry id is the one
asked about, and its balance lies in that customer's range (no two customers' ranges meet)."""

from __future__ import annotations

import asyncio
import math
import os
import random
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from creditgate.v1 import admin_pb2, admin_pb2_grpc, metering_pb2, metering_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from harness import APOLLO, REPO, RedisServer, free_port

CREDITGATE = REPO / ".venv" / "bin" / "creditgate"
pytestmark = pytest.mark.slow

CUSTOMERS = 24
# Customer k's balance lies in [k * RANGE, (k + 1) * RANGE): it starts at k * RANGE + START and each call takes 1.
RANGE = 100_000
START = 90_000
GRANT = 2_500  # the basic plan's monthly grant, on top of the top-up
CALLERS = 96
MIN_CALLS = 10_000
MAX_SECONDS = 40.0
MIN_DEADLINE, MAX_DEADLINE = 0.005, 3.0
# Redis is frozen this long, then left running this long, over and over.
FROZEN_SECONDS, THAWED_SECONDS = 0.4, 0.3


def customer(k: int) -> str:
    return f"storm:{k}"


@dataclass
class Storm:
    calls: int = 0
    answered: int = 0
    given_up: int = 0  # DEADLINE_EXCEEDED: the caller's deadline passed, mostly while Redis was frozen
    other: Counter[str] = field(default_factory=Counter)
    wrong: list[tuple[str, str, int]] = field(default_factory=list)  # (asked for, entry id, balance)
    entry_ids: Counter[str] = field(default_factory=Counter)


def belongs(k: int, answer: metering_pb2.CheckAndDebitResponse) -> bool:
    owner, _, sequence = answer.entry_id.rpartition("/")
    return (
        answer.allowed
        and owner == customer(k)
        and sequence.isdigit()
        and k * RANGE <= answer.balance_after < (k + 1) * RANGE
    )


@pytest.fixture
def sidecar(tmp_path: Path) -> Iterator[tuple[str, RedisServer]]:
    """`creditgate serve` as its own process (the callers do not share its GIL), on a Redis of its own."""
    redis_server = RedisServer(tmp_path / "redis")
    redis_server.start()
    target = f"127.0.0.1:{free_port()}"
    env = {
        **os.environ,
        "CREDITGATE_LISTEN": target,
        "CREDITGATE_REDIS_URL": redis_server.url,
        "CREDITGATE_DATABASE_URL": f"sqlite:///{tmp_path / 'ledger.db'}",
        "CREDITGATE_DATA_DIR": str(tmp_path),
        # Longer than a freeze, so the connection is not timed out and given-up calls pile up on it; short
        # enough that the wire's watchdog looks at the queue several times a storm, often inside a freeze.
        "CREDITGATE_REDIS_TIMEOUT_SECONDS": "1",
        "CREDITGATE_LOG_FORMAT": "json",
    }
    with (tmp_path / "sidecar.log").open("wb") as log:
        process = subprocess.Popen(
            [str(CREDITGATE), "serve", "--catalog", str(APOLLO)], env=env, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 60
        with grpc.insecure_channel(target) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            while True:
                try:
                    status = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=1).status
                    if status == health_pb2.HealthCheckResponse.SERVING:
                        break
                except grpc.RpcError:
                    pass
                assert process.poll() is None and time.monotonic() < deadline, f"see {tmp_path}/sidecar.log"
                time.sleep(0.1)
        yield target, redis_server
    finally:
        if redis_server.process is not None:
            os.kill(redis_server.process.pid, signal.SIGCONT)
        process.kill()
        process.wait()
        redis_server.stop()


def set_up_customers(target: str) -> None:
    with grpc.insecure_channel(target) as channel:
        admin = admin_pb2_grpc.AdminServiceStub(channel)
        for k in range(CUSTOMERS):
            admin.CreateCustomer(admin_pb2.CreateCustomerRequest(customer_id=customer(k), name=customer(k)))
            admin.CreateSubscription(admin_pb2.CreateSubscriptionRequest(customer_id=customer(k), plan="basic"))
            credits = k * RANGE + START - GRANT
            admin.TopUp(admin_pb2.TopUpRequest(customer_id=customer(k), credits=credits, request_id=f"setup-{k}"))
        metering = metering_pb2_grpc.MeteringServiceStub(channel)
        for k in range(CUSTOMERS):
            balance = metering.GetBalance(metering_pb2.GetBalanceRequest(customer_id=customer(k)))
            assert balance.available_credits == k * RANGE + START


async def storm(target: str, redis_pid: int, seed: int) -> tuple[Storm, int]:
    result = Storm()
    rng = random.Random(seed)
    stop = time.monotonic() + MAX_SECONDS
    freezes = 0

    async def freeze_and_thaw() -> None:
        nonlocal freezes
        while result.calls < MIN_CALLS and time.monotonic() < stop:
            await asyncio.sleep(THAWED_SECONDS)
            os.kill(redis_pid, signal.SIGSTOP)
            try:
                await asyncio.sleep(FROZEN_SECONDS)
            finally:
                os.kill(redis_pid, signal.SIGCONT)
            freezes += 1

    async def caller(metering: metering_pb2_grpc.MeteringServiceAsyncStub, own: random.Random) -> None:
        while result.calls < MIN_CALLS and time.monotonic() < stop:
            k = own.randrange(CUSTOMERS)
            result.calls += 1
            request = metering_pb2.CheckAndDebitRequest(
                customer_id=customer(k), feature="email_unlock", request_id=f"call-{result.calls}"
            )
            # Log-uniform: as many calls under 100 ms (given up inside a freeze) as over it.
            deadline = math.exp(own.uniform(math.log(MIN_DEADLINE), math.log(MAX_DEADLINE)))
            try:
                answer = await metering.CheckAndDebit(request, timeout=deadline)
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                    result.given_up += 1
                else:
                    result.other[exc.code().name] += 1
                continue
            result.answered += 1
            result.entry_ids[answer.entry_id] += 1
            if not belongs(k, answer):
                result.wrong.append((customer(k), answer.entry_id, answer.balance_after))

    async with grpc.aio.insecure_channel(target) as channel:
        metering = metering_pb2_grpc.MeteringServiceStub(channel)
        thaw = asyncio.ensure_future(freeze_and_thaw())
        try:
            await asyncio.gather(*(caller(metering, random.Random(rng.random())) for _ in range(CALLERS)))
        finally:
            await thaw
    return result, freezes


def test_no_answer_of_a_cancellation_storm_belongs_to_another_request(sidecar: tuple[str, RedisServer]) -> None:
    target, redis_server = sidecar
    assert redis_server.process is not None
    set_up_customers(target)
    started = time.monotonic()
    result, freezes = asyncio.run(storm(target, redis_server.process.pid, seed=16))
    seconds = time.monotonic() - started
    print(
        f"{result.calls} calls in {seconds:.1f} s, {freezes} freezes: {result.answered} answered, "
        f"{result.given_up} given up, other {dict(result.other)}, {len(result.wrong)} answers of another request"
    )
    assert result.wrong == []
    assert [entry_id for entry_id, times in result.entry_ids.items() if times > 1] == []
    assert result.calls >= MIN_CALLS
    # A storm indeed: thousands given up with their replies on the way, and thousands answered.
    assert result.given_up >= 1000
    assert result.answered >= 1000

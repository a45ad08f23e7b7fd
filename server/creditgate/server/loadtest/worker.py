"""One load-generating process: grpc.aio clients on uvloop, closed loop (N in flight) or open loop (a rate),
recording each call's latency in an HdrHistogram."""

from __future__ import annotations

import asyncio
import functools
import itertools
import time
from collections import Counter
from dataclasses import dataclass, field
from multiprocessing.sharedctypes import Synchronized
from multiprocessing.synchronize import Barrier
from typing import Any, Literal

import grpc
import uvloop
from creditgate.server.loadtest.workload import (
    CustomerPicker,
    FeatureChoice,
    MixPicker,
    customer_name,
    encode_request,
    with_request_id,
)
from creditgate.server.remote import TlsOptions, auth_metadata, open_aio_channel
from creditgate.v1 import metering_pb2
from hdrh.histogram import HdrHistogram

Mode = Literal["debit", "batch", "reserve-commit"]
SERVICE = "/creditgate.v1.MeteringService/"
# Latencies are recorded in microseconds, from 1 µs to 60 s, to 3 significant figures.
LOWEST_US, HIGHEST_US, FIGURES = 1, 60_000_000, 3


def new_histogram() -> HdrHistogram:
    return HdrHistogram(LOWEST_US, HIGHEST_US, FIGURES)


@dataclass(frozen=True, slots=True)
class WorkerPlan:
    """What one process does; picklable, so it crosses to a spawned process."""

    index: int
    target: str
    mode: Mode
    customer_prefix: str
    customers: int
    skew: float
    mix: list[FeatureChoice]
    concurrency: int
    connections: int
    duration_s: float
    # None: no limit (run for duration_s).
    max_requests: int | None
    rate: float
    batch_size: int
    run_id: str
    # Sent as "authorization: Bearer <key>" with every call; empty: none.
    api_key: str = ""
    # None: plaintext gRPC.
    tls: TlsOptions | None = None


@dataclass(slots=True)
class WorkerResult:
    index: int
    calls: int = 0
    decisions: int = 0
    allowed: int = 0
    denied: int = 0
    charged: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    histogram: str = ""
    elapsed_s: float = 0.0


def run_worker(plan: WorkerPlan, progress: Synchronized[int], barrier: Barrier) -> WorkerResult:
    """Entry point of a spawned process; waits at `barrier` with its connections open, so all start together."""
    return uvloop.run(_Worker(plan, progress, barrier).run())


class _Worker:
    def __init__(self, plan: WorkerPlan, progress: Synchronized[int], barrier: Barrier) -> None:
        self.plan = plan
        self.progress = progress
        self.barrier = barrier
        self.result = WorkerResult(plan.index)
        self.histogram = new_histogram()
        self.customers = CustomerPicker(plan.customers, plan.skew, seed=plan.index * 7919 + 1)
        self.mix = MixPicker(plan.mix, seed=plan.index * 104729 + 1)
        self.encoded: dict[tuple[int, int], bytes] = {}
        self.sequence = itertools.count()
        self.issued = 0
        self.reported = 0
        self.calls: list[_Calls] = []
        self.deadline = float("inf")

    def next_request(self) -> bytes:
        key = (self.customers.pick(), self.mix.pick())
        encoded = self.encoded.get(key)
        if encoded is None:
            encoded = encode_request(customer_name(self.plan.customer_prefix, key[0]), self.plan.mix[key[1]])
            self.encoded[key] = encoded
        request_id = f"{self.plan.run_id}.{self.plan.index}.{next(self.sequence)}".encode()
        return with_request_id(encoded, request_id)

    def may_issue(self) -> bool:
        if self.plan.max_requests is not None and self.issued >= self.plan.max_requests:
            return False
        if time.perf_counter() >= self.deadline:
            return False
        self.issued += 1
        return True

    async def run(self) -> WorkerResult:
        plan = self.plan
        channels = [open_aio_channel(plan.target, plan.tls) for _ in range(plan.connections)]
        try:
            for channel in channels:
                await channel.channel_ready()
            self.calls = [_Calls(channel, auth_metadata(plan.api_key)) for channel in channels]
            await asyncio.to_thread(self.barrier.wait, 120)
            started = time.perf_counter()
            if plan.duration_s:
                self.deadline = started + plan.duration_s
            if plan.rate:
                await self.open_loop(started)
            else:
                await asyncio.gather(*(self.closed_loop(slot) for slot in range(plan.concurrency)))
            self.result.elapsed_s = time.perf_counter() - started
        finally:
            for channel in channels:
                await channel.close(None)
        self.flush_progress()
        self.result.histogram = self.histogram.encode().decode()
        return self.result

    async def closed_loop(self, slot: int) -> None:
        calls = self.calls[slot % len(self.calls)]
        while self.may_issue():
            await self.one_call(calls, time.perf_counter())

    async def open_loop(self, started: float) -> None:
        """Sends at a fixed rate; latency counts from when a call was due, so a slow server cannot hide its
        queue (no coordinated omission). At most `concurrency` calls are in flight; past that, calls wait."""
        interval = 1.0 / self.plan.rate
        slots = asyncio.Semaphore(self.plan.concurrency)
        tasks: set[asyncio.Task[None]] = set()

        async def call(calls: _Calls, due: float) -> None:
            try:
                await self.one_call(calls, due)
            finally:
                slots.release()

        sent = 0
        while True:
            due_now = int((time.perf_counter() - started) / interval) + 1
            while sent < due_now:
                if not self.may_issue():
                    await asyncio.gather(*tasks)
                    return
                await slots.acquire()
                task = asyncio.create_task(call(self.calls[sent % len(self.calls)], started + sent * interval))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                sent += 1
            await asyncio.sleep(max(0.0, started + sent * interval - time.perf_counter()))

    async def one_call(self, calls: _Calls, due: float) -> None:
        result = self.result
        try:
            if self.plan.mode == "debit":
                response = await calls.check_and_debit(self.next_request())
                self.count(response.allowed, response.credits_charged)
            elif self.plan.mode == "batch":
                items = [self.next_request() for _ in range(self.plan.batch_size)]
                batch = await calls.check_and_debit_batch(items)
                for item in batch.results:
                    if item.HasField("decision"):
                        self.count(item.decision.allowed, item.decision.credits_charged)
                    else:
                        result.errors[item.error.reason or str(item.error.code)] += 1
            else:
                await self.reserve_commit(calls)
        except grpc.aio.AioRpcError as exc:
            result.errors[exc.code().name] += 1
        result.calls += 1
        self.histogram.record_value(max(LOWEST_US, min(HIGHEST_US, int((time.perf_counter() - due) * 1e6))))
        if result.calls - self.reported >= 200:
            self.flush_progress()

    async def reserve_commit(self, calls: _Calls) -> None:
        request = self.next_request()
        hold = await calls.reserve(request)
        if not hold.allowed:
            self.count(False, 0)
            return
        commit = metering_pb2.CommitRequest(
            reservation_id=hold.reservation_id,
            request_id=f"{self.plan.run_id}.{self.plan.index}.c{next(self.sequence)}",
        )
        settled = await calls.commit(commit.SerializeToString())
        self.count(True, settled.credits_charged)

    def count(self, allowed: bool, charged: int) -> None:
        result = self.result
        result.decisions += 1
        if allowed:
            result.allowed += 1
            result.charged += charged
        else:
            result.denied += 1

    def flush_progress(self) -> None:
        with self.progress.get_lock():
            self.progress.value += self.result.calls - self.reported
        self.reported = self.result.calls


class _Calls:
    """Multi-callables on one channel that send pre-encoded bytes and parse only the answer."""

    def __init__(self, channel: grpc.aio.Channel, metadata: tuple[tuple[str, str], ...] | None) -> None:
        def method(name: str, response: Any) -> Any:
            # The key goes with every call: call credentials need TLS, and an interceptor costs more per call.
            callable_ = channel.unary_unary(SERVICE + name, request_serializer=None, response_deserializer=response)
            return functools.partial(callable_, metadata=metadata)

        self.check_and_debit = method("CheckAndDebit", metering_pb2.CheckAndDebitResponse.FromString)
        self._batch = method("CheckAndDebitBatch", metering_pb2.CheckAndDebitBatchResponse.FromString)
        self.reserve = method("Reserve", metering_pb2.ReserveResponse.FromString)
        self.commit = method("Commit", metering_pb2.CommitResponse.FromString)

    async def check_and_debit_batch(self, items: list[bytes]) -> metering_pb2.CheckAndDebitBatchResponse:
        # A repeated message field is the field's tag and length before each item: field 1, wire type 2.
        body = b"".join(b"\x0a" + _varint(len(item)) + item for item in items)
        response: metering_pb2.CheckAndDebitBatchResponse = await self._batch(body)
        return response


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)

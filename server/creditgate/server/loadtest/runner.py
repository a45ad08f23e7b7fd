"""Runs a load test: sets up its customers, starts the generating processes together, shows progress, merges
their histograms, and checks that the credits it was told were charged equal the drop in balances."""

from __future__ import annotations

import asyncio
import multiprocessing
import time
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing.sharedctypes import Synchronized
from multiprocessing.synchronize import Barrier

import grpc
from creditgate.server.loadtest.worker import Mode, WorkerPlan, WorkerResult, new_histogram, run_worker
from creditgate.server.loadtest.workload import (
    FeatureChoice,
    customer_name,
    default_mix,
    parse_mix,
)
from creditgate.server.remote import TlsOptions, auth_metadata, open_aio_channel
from creditgate.v1 import admin_pb2, admin_pb2_grpc, metering_pb2, metering_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hdrh.histogram import HdrHistogram

ADMIN_CONCURRENCY = 64
# The first call (a health check) waits this long for the server; a wrong address or TLS setting fails with it.
REACH_TIMEOUT_S = 10.0
PERCENTILES = (50.0, 90.0, 99.0, 99.9)


@dataclass(frozen=True, slots=True)
class LoadSettings:
    target: str
    mode: Mode = "debit"
    customers: int = 1000
    # Empty: "lt-<run id>", customers created for this run.
    customer_prefix: str = ""
    setup: bool = True
    verify: bool = True
    plan: str = "professional"
    credits_per_customer: int = 1_000_000
    # Empty: every feature the plan enables, equally weighted.
    features: str = ""
    skew: float = 0.0
    concurrency: int = 64
    processes: int = 2
    connections: int = 1
    duration_s: float = 10.0
    requests: int = 0
    rate: float = 0.0
    batch_size: int = 100
    # A key with the metering scope (and admin, to set customers up), sent as "authorization: Bearer <key>".
    api_key: str = ""
    # None: plaintext gRPC.
    tls: TlsOptions | None = None


@dataclass(slots=True)
class LoadReport:
    settings: LoadSettings
    mix: list[FeatureChoice]
    calls: int
    decisions: int
    allowed: int
    denied: int
    errors: dict[str, int]
    elapsed_s: float
    histogram: HdrHistogram
    charged: int
    balance_drop: int | None
    setup_s: float = 0.0
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def calls_per_s(self) -> float:
        return self.calls / self.elapsed_s if self.elapsed_s else 0.0

    @property
    def decisions_per_s(self) -> float:
        return self.decisions / self.elapsed_s if self.elapsed_s else 0.0

    def latency_ms(self, percentile: float) -> float:
        return float(self.histogram.get_value_at_percentile(percentile)) / 1000

    @property
    def verified(self) -> bool | None:
        """Charged credits equal the drop in balances; None when not checked."""
        return None if self.balance_drop is None else self.balance_drop == self.charged


def run_load(settings: LoadSettings, on_progress: Callable[[int, int, float], None] | None = None) -> LoadReport:
    """on_progress(calls so far, calls expected or 0, seconds elapsed) is called about ten times a second."""
    run_id = uuid.uuid4().hex[:10]
    prefix = settings.customer_prefix or f"lt-{run_id}"
    started_setup = time.perf_counter()
    mix, before = asyncio.run(_prepare(settings, prefix))
    setup_s = time.perf_counter() - started_setup
    results = _generate(settings, prefix, mix, run_id, on_progress)
    after = asyncio.run(_balances(settings, prefix)) if settings.verify else None
    histogram = new_histogram()
    errors: Counter[str] = Counter()
    for result in results:
        histogram.decode_and_add(result.histogram)
        errors.update(result.errors)
    return LoadReport(
        settings=settings,
        mix=mix,
        calls=sum(r.calls for r in results),
        decisions=sum(r.decisions for r in results),
        allowed=sum(r.allowed for r in results),
        denied=sum(r.denied for r in results),
        errors=dict(errors),
        elapsed_s=max(r.elapsed_s for r in results),
        histogram=histogram,
        charged=sum(r.charged for r in results),
        balance_drop=None if after is None or before is None else sum(before) - sum(after),
        setup_s=setup_s,
    )


async def _prepare(settings: LoadSettings, prefix: str) -> tuple[list[FeatureChoice], list[int] | None]:
    async with open_aio_channel(settings.target, settings.tls) as channel:
        await _reach(channel)
        if settings.features:
            mix = parse_mix(settings.features)
        else:
            catalog = await admin_pb2_grpc.AdminServiceStub(channel).GetCatalog(
                admin_pb2.GetCatalogRequest(), metadata=auth_metadata(settings.api_key)
            )
            mix = default_mix(catalog.catalog_yaml, settings.plan)
        if settings.setup:
            await _create_customers(channel, settings, prefix)
    before = await _balances(settings, prefix) if settings.verify else None
    return mix, before


async def _reach(channel: grpc.aio.Channel) -> None:
    """Health needs no key: an unreachable server or a TLS mismatch fails here, before any process starts."""
    try:
        await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=REACH_TIMEOUT_S)
    except grpc.aio.AioRpcError as exc:
        if exc.code() != grpc.StatusCode.UNIMPLEMENTED:  # a server without the health service was still reached
            raise


async def _create_customers(channel: grpc.aio.Channel, settings: LoadSettings, prefix: str) -> None:
    admin = admin_pb2_grpc.AdminServiceStub(channel)
    metadata = auth_metadata(settings.api_key)
    slots = asyncio.Semaphore(ADMIN_CONCURRENCY)

    async def create(index: int) -> None:
        customer_id = customer_name(prefix, index)
        async with slots:
            await admin.CreateCustomer(
                admin_pb2.CreateCustomerRequest(customer_id=customer_id, name=customer_id), metadata=metadata
            )
            await admin.CreateSubscription(
                admin_pb2.CreateSubscriptionRequest(customer_id=customer_id, plan=settings.plan), metadata=metadata
            )
            if settings.credits_per_customer:
                await admin.TopUp(
                    admin_pb2.TopUpRequest(
                        customer_id=customer_id,
                        credits=settings.credits_per_customer,
                        request_id=f"{customer_id}.setup",
                    ),
                    metadata=metadata,
                )

    await asyncio.gather(*(create(index) for index in range(settings.customers)))


async def _balances(settings: LoadSettings, prefix: str) -> list[int]:
    metadata = auth_metadata(settings.api_key)
    async with open_aio_channel(settings.target, settings.tls) as channel:
        metering = metering_pb2_grpc.MeteringServiceStub(channel)
        slots = asyncio.Semaphore(ADMIN_CONCURRENCY)

        async def balance(index: int) -> int:
            async with slots:
                response = await metering.GetBalance(
                    metering_pb2.GetBalanceRequest(customer_id=customer_name(prefix, index)), metadata=metadata
                )
                return int(response.available_credits)

        return list(await asyncio.gather(*(balance(index) for index in range(settings.customers))))


_progress: Synchronized[int] | None = None
_barrier: Barrier | None = None


def _adopt(progress: Synchronized[int], barrier: Barrier) -> None:
    """Pool initializer: shared objects must be inherited by a spawned process, not passed per task."""
    global _progress, _barrier
    _progress, _barrier = progress, barrier


def _run_plan(plan: WorkerPlan) -> WorkerResult:
    if _progress is None or _barrier is None:
        raise RuntimeError("a load worker ran outside its pool: the pool's initializer (_adopt) did not run")
    return run_worker(plan, _progress, _barrier)


def _generate(
    settings: LoadSettings,
    prefix: str,
    mix: list[FeatureChoice],
    run_id: str,
    on_progress: Callable[[int, int, float], None] | None,
) -> list[WorkerResult]:
    processes = max(1, settings.processes)
    context = multiprocessing.get_context("spawn")
    progress: Synchronized[int] = context.Value("q", 0)
    barrier = context.Barrier(processes + 1)
    plans = [
        WorkerPlan(
            index=index,
            target=settings.target,
            mode=settings.mode,
            customer_prefix=prefix,
            customers=settings.customers,
            skew=settings.skew,
            mix=mix,
            concurrency=_share(settings.concurrency, processes, index, minimum=1),
            connections=settings.connections,
            duration_s=settings.duration_s if not settings.requests else 0.0,
            max_requests=_share(settings.requests, processes, index, minimum=0) if settings.requests else None,
            rate=settings.rate / processes,
            batch_size=settings.batch_size,
            run_id=f"{run_id}",
            api_key=settings.api_key,
            tls=settings.tls,
        )
        for index in range(processes)
    ]
    with ProcessPoolExecutor(processes, mp_context=context, initializer=_adopt, initargs=(progress, barrier)) as pool:
        futures = [pool.submit(_run_plan, plan) for plan in plans]
        barrier.wait(timeout=120)
        started = time.perf_counter()
        expected = settings.requests
        while not all(future.done() for future in futures):
            if on_progress is not None:
                on_progress(progress.value, expected, time.perf_counter() - started)
            time.sleep(0.1)
        results = [future.result() for future in futures]
    if on_progress is not None:
        on_progress(progress.value, expected, time.perf_counter() - started)
    return results


def _share(total: int, parts: int, index: int, *, minimum: int) -> int:
    """Process `index`'s share of `total` split as evenly as whole numbers allow."""
    return max(minimum, total // parts + (1 if index < total % parts else 0))

"""The baseline a user would write instead of creditgate: check-then-debit in PostgreSQL, one transaction per
call (SELECT ... FOR UPDATE, then UPDATE and a ledger INSERT), behind the same gRPC stack (grpc.aio, uvloop).
It speaks enough of creditgate's API for `creditgate loadtest` to set up, load and check it."""

from __future__ import annotations

import argparse
import asyncio
import signal
from pathlib import Path
from typing import Any

import grpc
import psycopg
import uvloop
from creditgate.server.api.grpc_server import new_grpc_server
from creditgate.server.domain.catalog import DimensionCost, load_catalog
from creditgate.v1 import admin_pb2, admin_pb2_grpc, metering_pb2, metering_pb2_grpc
from psycopg_pool import AsyncConnectionPool

Context = grpc.aio.ServicerContext[Any, Any]
SCHEMA = """
CREATE TABLE IF NOT EXISTS wallets (customer_id TEXT PRIMARY KEY, plan TEXT NOT NULL, balance BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS ledger (id BIGSERIAL PRIMARY KEY, customer_id TEXT NOT NULL, feature TEXT NOT NULL,
  delta BIGINT NOT NULL, request_id TEXT NOT NULL);
"""


class Baseline(metering_pb2_grpc.MeteringServiceServicer, admin_pb2_grpc.AdminServiceServicer):
    def __init__(self, pool: AsyncConnectionPool, catalog_yaml: str, *, lock: bool) -> None:
        self._pool = pool
        self._catalog_yaml = catalog_yaml
        catalog = load_catalog(catalog_yaml).catalog
        self._costs = {
            key: next(iter(f.credits.values.values())) if isinstance(f.credits, DimensionCost) else f.credits
            for key, f in catalog.features.items()
        }
        self._grants = {key: sum(g.credits for g in plan.grants) for key, plan in catalog.plans.items()}
        # FOR UPDATE is what makes check-then-debit correct; without it concurrent calls overspend.
        self._select = "SELECT balance FROM wallets WHERE customer_id = %s" + (" FOR UPDATE" if lock else "")

    async def CheckAndDebit(
        self, request: metering_pb2.CheckAndDebitRequest, context: Context
    ) -> metering_pb2.CheckAndDebitResponse:
        cost = self._costs[request.feature] * (request.quantity if request.HasField("quantity") else 1)
        async with self._pool.connection() as db, db.transaction():
            row = await (await db.execute(self._select, (request.customer_id,))).fetchone()
            if row is None:
                await context.abort(grpc.StatusCode.NOT_FOUND, "customer not found")
            balance = int(row[0])
            if balance < cost:
                return metering_pb2.CheckAndDebitResponse(
                    allowed=False, deny_reason=metering_pb2.DENY_REASON_INSUFFICIENT_CREDITS, balance_after=balance
                )
            await db.execute(
                "UPDATE wallets SET balance = %s WHERE customer_id = %s", (balance - cost, request.customer_id)
            )
            await db.execute(
                "INSERT INTO ledger (customer_id, feature, delta, request_id) VALUES (%s, %s, %s, %s)",
                (request.customer_id, request.feature, -cost, request.request_id),
            )
        return metering_pb2.CheckAndDebitResponse(
            allowed=True, credits_charged=cost, credits_cost=cost, balance_after=balance - cost
        )

    async def GetBalance(
        self, request: metering_pb2.GetBalanceRequest, context: Context
    ) -> metering_pb2.GetBalanceResponse:
        async with self._pool.connection() as db:
            row = await (
                await db.execute("SELECT balance FROM wallets WHERE customer_id = %s", (request.customer_id,))
            ).fetchone()
        return metering_pb2.GetBalanceResponse(available_credits=int(row[0]) if row else 0)

    async def GetCatalog(self, request: admin_pb2.GetCatalogRequest, context: Context) -> admin_pb2.GetCatalogResponse:
        return admin_pb2.GetCatalogResponse(catalog_yaml=self._catalog_yaml)

    async def CreateCustomer(
        self, request: admin_pb2.CreateCustomerRequest, context: Context
    ) -> admin_pb2.CreateCustomerResponse:
        async with self._pool.connection() as db:
            await db.execute("INSERT INTO wallets VALUES (%s, '', 0) ON CONFLICT DO NOTHING", (request.customer_id,))
        return admin_pb2.CreateCustomerResponse()

    async def CreateSubscription(
        self, request: admin_pb2.CreateSubscriptionRequest, context: Context
    ) -> admin_pb2.CreateSubscriptionResponse:
        await self._add(request.customer_id, self._grants.get(request.plan, 0), plan=request.plan)
        return admin_pb2.CreateSubscriptionResponse()

    async def TopUp(self, request: admin_pb2.TopUpRequest, context: Context) -> admin_pb2.TopUpResponse:
        await self._add(request.customer_id, request.credits)
        return admin_pb2.TopUpResponse()

    async def _add(self, customer_id: str, credits: int, plan: str | None = None) -> None:
        async with self._pool.connection() as db:
            await db.execute(
                "UPDATE wallets SET balance = balance + %s, plan = COALESCE(%s, plan) WHERE customer_id = %s",
                (credits, plan, customer_id),
            )


async def serve(listen: str, dsn: str, catalog_yaml: str, pool_size: int, lock: bool) -> None:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as db:
        await db.execute(SCHEMA)  # type: ignore[arg-type]  # a constant, not user input
    async with AsyncConnectionPool(dsn, min_size=pool_size, max_size=pool_size, open=False) as pool:
        await pool.wait()
        baseline = Baseline(pool, catalog_yaml, lock=lock)
        server = new_grpc_server()
        metering_pb2_grpc.add_MeteringServiceServicer_to_server(baseline, server)
        admin_pb2_grpc.add_AdminServiceServicer_to_server(baseline, server)
        server.add_insecure_port(listen)
        await server.start()
        stop = asyncio.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            asyncio.get_running_loop().add_signal_handler(signum, stop.set)
        await stop.wait()
        await server.stop(1)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--listen", default="127.0.0.1:50062")
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--catalog", required=True)
    parser.add_argument("--pool-size", type=int, default=16)
    parser.add_argument("--no-lock", action="store_true", help="plain SELECT: the racy version")
    args = parser.parse_args()
    uvloop.run(serve(args.listen, args.dsn, Path(args.catalog).read_text(), args.pool_size, not args.no_lock))

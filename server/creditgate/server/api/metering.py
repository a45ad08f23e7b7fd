"""creditgate.v1.MeteringService: CheckAndDebit, CheckEntitlement, GetBalance."""

from __future__ import annotations

from typing import Any

import grpc
from creditgate.server.api import batch, convert, validate
from creditgate.server.api.errors import translated
from creditgate.server.engine.balances import Balances
from creditgate.server.engine.decisions import Decisions
from creditgate.server.engine.holds import Holds
from creditgate.server.settings import Settings
from creditgate.v1 import metering_pb2, metering_pb2_grpc

Context = grpc.aio.ServicerContext[Any, Any]


class MeteringServicer(metering_pb2_grpc.MeteringServiceServicer):
    def __init__(self, decisions: Decisions, balances: Balances, holds: Holds, settings: Settings) -> None:
        self._decisions = decisions
        self._balances = balances
        self._holds = holds
        self._settings = settings

    @translated
    async def CheckAndDebit(
        self, request: metering_pb2.CheckAndDebitRequest, context: Context
    ) -> metering_pb2.CheckAndDebitResponse:
        return await self._check_and_debit(request)

    @translated
    async def CheckAndDebitBatch(
        self, request: metering_pb2.CheckAndDebitBatchRequest, context: Context
    ) -> metering_pb2.CheckAndDebitBatchResponse:
        return await batch.check_and_debit_batch(request, self._decisions)

    async def _check_and_debit(self, request: metering_pb2.CheckAndDebitRequest) -> metering_pb2.CheckAndDebitResponse:
        debit = convert.debit_request(request, dry_run=request.dry_run, request_id=request.request_id)
        return convert.decision(await self._decisions.check_and_debit(debit))

    @translated
    async def CheckEntitlement(
        self, request: metering_pb2.CheckEntitlementRequest, context: Context
    ) -> metering_pb2.CheckEntitlementResponse:
        decision = await self._decisions.check_and_debit(convert.debit_request(request, dry_run=True))
        return metering_pb2.CheckEntitlementResponse(
            allowed=decision.allowed,
            deny_reason=convert.deny_reason(decision.deny_reason),
            credits_cost=decision.credits_cost,
            credits_to_charge=decision.credits_charged,
            free_units_remaining=decision.free_units_remaining,
            period_usage=decision.period_usage,
            cap_limit=decision.cap_limit,
            cap_usage=decision.cap_usage,
            available_credits=decision.balance_after + decision.credits_charged
            if decision.allowed
            else decision.balance_after,
            message=decision.message,
        )

    @translated
    async def GetBalance(
        self, request: metering_pb2.GetBalanceRequest, context: Context
    ) -> metering_pb2.GetBalanceResponse:
        view = await self._balances.get_balance(validate.identifier(request.customer_id, "customer_id"))
        return convert.balance(view)

    @translated
    async def Reserve(self, request: metering_pb2.ReserveRequest, context: Context) -> metering_pb2.ReserveResponse:
        ttl = validate.ttl_seconds(
            validate.duration_seconds(request.ttl, "ttl") if request.HasField("ttl") else None,
            default=self._settings.hold_default_ttl_seconds,
            maximum=self._settings.hold_max_ttl_seconds,
        )
        reservation = await self._holds.reserve(
            convert.debit_request(request, dry_run=False, request_id=request.request_id), ttl
        )
        decision = reservation.decision
        response = metering_pb2.ReserveResponse(
            allowed=decision.allowed,
            deny_reason=convert.deny_reason(decision.deny_reason),
            reservation_id=reservation.reservation_id,
            credits_reserved=decision.credits_charged,
            free_units_reserved=decision.free_units_used,
            overage_credits_reserved=decision.overage_credits,
            balance_after=decision.balance_after,
            low_balance=decision.low_balance,
            message=decision.message,
            credits_cost=decision.credits_cost,
        )
        if reservation.expires_at_ms:
            response.expires_at.CopyFrom(convert.timestamp(reservation.expires_at_ms))
        return response

    @translated
    async def Commit(self, request: metering_pb2.CommitRequest, context: Context) -> metering_pb2.CommitResponse:
        settlement = await self._holds.commit(
            validate.reservation_id(request.reservation_id),
            validate.commit_quantity(request.quantity if request.HasField("quantity") else None),
            validate.optional_identifier(request.request_id, "request_id"),
        )
        return metering_pb2.CommitResponse(
            credits_charged=settlement.credits_charged,
            credits_released=settlement.credits_released,
            balance_after=settlement.balance_after,
            entry_id=settlement.entry_id,
            overage_credits=settlement.overage_credits,
            free_units_used=settlement.free_units_used,
        )

    @translated
    async def Release(self, request: metering_pb2.ReleaseRequest, context: Context) -> metering_pb2.ReleaseResponse:
        settlement = await self._holds.release(
            validate.reservation_id(request.reservation_id),
            validate.optional_identifier(request.request_id, "request_id"),
        )
        return metering_pb2.ReleaseResponse(
            credits_released=settlement.credits_released,
            balance_after=settlement.balance_after,
            entry_id=settlement.entry_id,
        )

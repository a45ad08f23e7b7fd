"""Two-phase holds: Reserve credits for an action in flight, then Commit what was used or Release it all."""

from __future__ import annotations

import json
from dataclasses import dataclass

import structlog
from creditgate.server.engine.customer_state import CustomerState, changed, fingerprint
from creditgate.server.engine.decisions import decision_of
from creditgate.server.engine.messages import explain
from creditgate.server.engine.model import DebitRequest, Decision
from creditgate.server.engine.redis_errors import redis_error
from creditgate.server.errors import (
    FailedPrecondition,
    InternalError,
    NotFound,
    RequestIdReused,
)
from creditgate.server.tasks import PeriodicTask
from redis.exceptions import RedisError

log = structlog.get_logger(__name__)
SETTLED_REASONS = {
    "committed": "RESERVATION_ALREADY_COMMITTED",
    "released": "RESERVATION_ALREADY_RELEASED",
    "expired": "RESERVATION_EXPIRED",
}


@dataclass(frozen=True, slots=True)
class Reservation:
    decision: Decision
    reservation_id: str
    expires_at_ms: int


@dataclass(frozen=True, slots=True)
class Settlement:
    credits_charged: int
    credits_released: int
    balance_after: int
    entry_id: str
    overage_credits: int
    free_units_used: int


def split_reservation_id(reservation_id: str) -> tuple[str, str]:
    """ "customer_id/h<seq>" -> (customer_id, "h<seq>")."""
    customer_id, _, hold_id = reservation_id.rpartition("/")
    return customer_id, hold_id


class Holds:
    def __init__(self, state: CustomerState) -> None:
        self._state = state
        self.sweeper = PeriodicTask(
            "hold_sweeper", self.sweep_once, state.settings.hold_sweep_interval_seconds, state.clock
        )

    async def reserve(self, request: DebitRequest, ttl_seconds: int) -> Reservation:
        rules = self._state.rules
        rules_json, cap_scope = rules.rules_for(request.feature, request.dimensions)
        keys = self._state.keys.for_customer(request.customer_id)
        now = self._state.now_ms()
        args = [
            now,
            request.customer_id,
            request.feature,
            request.quantity,
            rules_json,
            cap_scope,
            request.request_id,
            fingerprint("reserve", request.feature, request.quantity, request.dimensions, ttl_seconds),
            self._state.settings.idempotency_ttl_seconds,
            json.dumps(request.dimensions),
            ttl_seconds * 1000,
        ]
        result = await self._state.run_touching(
            "reserve", request.customer_id, [*keys.hold_keys, keys.request(request.request_id)], args, now
        )
        result = changed(result, request.customer_id)
        decision = decision_of(result, charged="credits_reserved", with_usage=False)
        decision.message = explain(decision, request.feature, rules, verb="reserved")
        return Reservation(decision, result["reservation_id"], result.int("expires_at_ms"))

    async def commit(self, reservation_id: str, quantity: int | None, request_id: str) -> Settlement:
        return await self._settle("commit", reservation_id, -1 if quantity is None else quantity, request_id)

    async def release(self, reservation_id: str, request_id: str) -> Settlement:
        return await self._settle("release", reservation_id, 0, request_id)

    async def _settle(self, action: str, reservation_id: str, quantity: int, request_id: str) -> Settlement:
        customer_id, hold_id = split_reservation_id(reservation_id)
        keys = self._state.keys.for_customer(customer_id)
        now = self._state.now_ms()
        args = [
            now,
            customer_id,
            hold_id,
            action,
            quantity,
            request_id,
            fingerprint(action, reservation_id, quantity),
            self._state.settings.idempotency_ttl_seconds,
            self._state.settled_hold_retention_ms,
        ]
        result = await self._state.run_touching(
            "settle", customer_id, [*keys.hold_keys, keys.request(request_id)], args, now
        )
        status = result.status
        if status in ("not_found", "hold_not_found"):
            raise NotFound(
                f"reservation {reservation_id!r} does not exist (or was settled long ago)",
                field="reservation_id",
                reason="RESERVATION_NOT_FOUND",
            )
        if status == "reused":
            raise RequestIdReused()
        if status == "settled":
            raise FailedPrecondition(
                f"reservation {reservation_id!r} is already {result['hold_status']}",
                field="reservation_id",
                reason=SETTLED_REASONS[result["hold_status"]],
            )
        if status == "too_much":
            raise FailedPrecondition(
                f"quantity {quantity} is more than the {result['reserved_quantity']} reserved",
                field="quantity",
                reason="QUANTITY_EXCEEDS_RESERVATION",
            )
        if status != "ok":
            raise InternalError(f"settle answered {status!r}")
        return Settlement(
            credits_charged=result["credits_charged"],
            credits_released=result["credits_released"],
            balance_after=result["balance_after"],
            entry_id=result["entry_id"],
            overage_credits=result["overage_credits"],
            free_units_used=result["free_units_used"],
        )

    async def sweep_once(self) -> int:
        """Expire every hold past its ttl, whether or not its customer is touched; returns holds expired."""
        now = self._state.now_ms()
        expired = 0
        try:
            # Every shard's due holds in one round trip: the sweep runs twice a second on every replica.
            async with self._state.redis.pipeline(transaction=False) as pipe:
                for shard in range(self._state.settings.shards):
                    pipe.zrangebyscore(self._state.keys.holds_due(shard), "-inf", now, start=0, num=500)
                due_by_shard = await pipe.execute()
        except RedisError as exc:
            raise redis_error(exc, "reading the holds due") from exc
        for due in due_by_shard:
            for customer_id in sorted({split_reservation_id(str(member))[0] for member in due}):
                expired += await self._state.expire_holds(customer_id, now)
        return expired

    def start(self) -> None:
        self.sweeper.start()

    async def stop(self, timeout_seconds: float = 5.0) -> None:
        await self.sweeper.stop(timeout_seconds)

"""CheckAndDebitBatch: each item decided as CheckAndDebit would decide it alone, its error kept in its result."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import structlog
from creditgate.server.api.errors import status_code
from creditgate.server.errors import CreditgateError, InternalError, InvalidArgument
from creditgate.v1 import metering_pb2

MAX_BATCH_ITEMS = 1000
log = structlog.get_logger(__name__)
Decide = Callable[[metering_pb2.CheckAndDebitRequest], Awaitable[metering_pb2.CheckAndDebitResponse]]


async def check_and_debit_batch(
    request: metering_pb2.CheckAndDebitBatchRequest, decide: Decide
) -> metering_pb2.CheckAndDebitBatchResponse:
    """All items are started together, in order; the engine's script calls made in the same turn of the event
    loop go to Redis as one pipelined write, run there one after another in item order (so a repeated
    request_id gets the first item's answer). Only a malformed batch, or Redis being unreachable, fails the call."""
    if not 1 <= len(request.items) <= MAX_BATCH_ITEMS:
        raise InvalidArgument(
            f"items must hold 1 to {MAX_BATCH_ITEMS:,} requests, got {len(request.items)}", field="items"
        )
    outcomes = await asyncio.gather(*(_one(decide, item) for item in request.items))
    unavailable = [
        outcome for outcome in outcomes if isinstance(outcome, CreditgateError) and outcome.reason == "UNAVAILABLE"
    ]
    if unavailable:
        # Some items may have been decided: a retry with the same request_ids answers those from memory.
        raise unavailable[0]
    return metering_pb2.CheckAndDebitBatchResponse(results=[_result(outcome) for outcome in outcomes])


async def _one(
    decide: Decide, item: metering_pb2.CheckAndDebitRequest
) -> metering_pb2.CheckAndDebitResponse | CreditgateError:
    try:
        return await decide(item)
    except CreditgateError as exc:
        return exc
    except Exception as exc:
        log.exception("unexpected_error", rpc="CheckAndDebitBatch")
        return InternalError(f"internal error: {type(exc).__name__}")


def _result(outcome: metering_pb2.CheckAndDebitResponse | CreditgateError) -> metering_pb2.CheckAndDebitBatchResult:
    if isinstance(outcome, metering_pb2.CheckAndDebitResponse):
        return metering_pb2.CheckAndDebitBatchResult(decision=outcome)
    return metering_pb2.CheckAndDebitBatchResult(
        error=metering_pb2.BatchItemError(
            code=status_code(outcome), reason=outcome.reason, field=outcome.field, message=outcome.message
        )
    )

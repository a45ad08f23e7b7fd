"""CheckAndDebitBatch: each item decided as CheckAndDebit would decide it alone, its error kept in its result."""

from __future__ import annotations

from creditgate.server.api import convert
from creditgate.server.api.errors import status_code
from creditgate.server.engine.decisions import Decisions
from creditgate.server.engine.model import DebitRequest, Decision
from creditgate.server.errors import CreditgateError, InvalidArgument, Unavailable
from creditgate.v1 import metering_pb2

MAX_BATCH_ITEMS = 1000


async def check_and_debit_batch(
    request: metering_pb2.CheckAndDebitBatchRequest, decisions: Decisions
) -> metering_pb2.CheckAndDebitBatchResponse:
    """The items go to Redis in one write, one script call per shard (engine: decide_many), and a customer's items
    are decided there one after another in item order (so a repeated request_id gets the first item's answer).
    Only a malformed batch, or Redis being unreachable, fails the call: some items may have been decided then,
    and a retry with the same request_ids answers those."""
    if not 1 <= len(request.items) <= MAX_BATCH_ITEMS:
        raise InvalidArgument(
            f"items must hold 1 to {MAX_BATCH_ITEMS:,} requests, got {len(request.items)}", field="items"
        )
    items: list[DebitRequest | CreditgateError] = []
    for item in request.items:
        try:
            items.append(convert.debit_request(item, dry_run=item.dry_run, request_id=item.request_id))
        except CreditgateError as exc:
            items.append(exc)
    decided = iter(await decisions.check_and_debit_many([item for item in items if isinstance(item, DebitRequest)]))
    outcomes = [next(decided) if isinstance(item, DebitRequest) else item for item in items]
    unavailable = next((outcome for outcome in outcomes if isinstance(outcome, Unavailable)), None)
    if unavailable is not None:
        raise unavailable
    response = metering_pb2.CheckAndDebitBatchResponse()
    for outcome in outcomes:
        result = response.results.add()
        if isinstance(outcome, Decision):
            convert.fill_decision(result.decision, outcome)
        else:
            error = result.error
            error.code, error.reason, error.field, error.message = (
                status_code(outcome),
                outcome.reason,
                outcome.field,
                outcome.message,
            )
    return response

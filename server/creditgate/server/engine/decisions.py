"""Decisions: CheckAndDebit, alone or many in one write (decide.lua, decide_many.lua)."""

from __future__ import annotations

import json
from typing import Any

from creditgate.server.domain.rules import RuleBook
from creditgate.server.engine.customer_state import CustomerState, customer_not_found, fingerprint
from creditgate.server.engine.messages import explain
from creditgate.server.engine.model import DebitRequest, Decision
from creditgate.server.engine.redis_errors import READONLY_REASON, redis_error
from creditgate.server.errors import CreditgateError, InternalError, RequestIdReused, Unavailable

# decide_many.lua takes at most this many decisions per call, so that one call holds Redis for a millisecond or two.
DECIDE_MANY_CHUNK = 50
# A decide call: its keys (KeySpace order, the shard's outbox at DECIDE_OUTBOX_KEY) and its arguments.
DecideCall = tuple[list[str], list[Any]]
DECIDE_OUTBOX_KEY = 4


def _decided(answer: list[Any]) -> list[Any] | CreditgateError:
    """One decision's answer from decide_many: a failed one answers ['error', message]."""
    if answer[0] == "error":
        return redis_error(str(answer[1]), "script decide")
    return answer


class Decisions:
    """Check an action against the customer's entitlements and credits, and debit it, atomically."""

    def __init__(self, state: CustomerState) -> None:
        self._state = state

    async def check_and_debit(self, request: DebitRequest) -> Decision:
        rules = self._state.rules
        now = self._state.now_ms()
        script_keys, args = self._decide_call(request, rules, now)
        result = await self._state.run_touching("decide", request.customer_id, script_keys, args, now)
        return self._explained(request, self._decision(request.customer_id, result), rules)

    async def check_and_debit_many(self, requests: list[DebitRequest]) -> list[Decision | CreditgateError]:
        """Each request decided as check_and_debit would decide it alone, in order; one write to Redis for all."""
        rules = self._state.rules
        now = self._state.now_ms()
        calls: list[DecideCall | CreditgateError] = []
        for request in requests:
            try:
                calls.append(self._decide_call(request, rules, now))
            except CreditgateError as exc:
                calls.append(exc)
        replies = iter(await self._decide_many([call for call in calls if not isinstance(call, CreditgateError)]))
        outcomes: list[Decision | CreditgateError] = []
        for request, call in zip(requests, calls, strict=True):
            reply = call if isinstance(call, CreditgateError) else next(replies)
            try:
                if isinstance(reply, CreditgateError):
                    raise reply
                if reply[0] in ("rollover", "expire_holds", "verify", "not_found"):
                    # Rare (a new period, a due hold, a customer to verify): this one goes the long way, after the
                    # batch has run.
                    outcomes.append(await self.check_and_debit(request))
                    continue
                outcomes.append(self._explained(request, self._decision(request.customer_id, reply), rules))
            except CreditgateError as exc:
                outcomes.append(exc)
        return outcomes

    async def _decide_many(self, calls: list[DecideCall]) -> list[list[Any] | CreditgateError]:
        """The calls' replies in order. One decide_many per shard and chunk: a shard's keys share one slot, and a
        customer's decisions stay in order within it (decisions in different shards share nothing)."""
        by_shard: dict[str, list[int]] = {}
        for index, (keys, _) in enumerate(calls):
            by_shard.setdefault(keys[DECIDE_OUTBOX_KEY], []).append(index)
        chunks = [
            indexes[start : start + DECIDE_MANY_CHUNK]
            for indexes in by_shard.values()
            for start in range(0, len(indexes), DECIDE_MANY_CHUNK)
        ]
        sent = [
            ([key for i in chunk for key in calls[i][0]], [arg for i in chunk for arg in calls[i][1]])
            for chunk in chunks
        ]
        replies: list[list[Any] | CreditgateError] = [[] for _ in calls]
        for chunk, answers in zip(chunks, await self._state.scripts.run_many("decide_many", sent), strict=True):
            for position, index in enumerate(chunk):
                replies[index] = answers if isinstance(answers, CreditgateError) else _decided(answers[position])
        for index, reply in enumerate(replies):
            if isinstance(reply, Unavailable) and reply.reason == READONLY_REASON:
                # The wire saw a normal reply; the decisions inside it saw a replica.
                self._state.scripts.reconnect(calls[index][0][0])
                break
        return replies

    def _decide_call(self, request: DebitRequest, rules: RuleBook, now: int) -> DecideCall:
        rules_json, cap_scope = rules.rules_for(request.feature, request.dimensions)
        keys = self._state.keys.for_customer(request.customer_id)
        args = [
            now,
            request.customer_id,
            request.feature,
            request.quantity,
            rules_json,
            cap_scope,
            "1" if request.dry_run else "0",
            request.request_id,
            # Without a request_id the script neither replays nor remembers: no fingerprint to make.
            fingerprint("debit", request.feature, request.quantity, request.dimensions) if request.request_id else "",
            self._state.settings.idempotency_ttl_seconds,
            json.dumps(request.dimensions) if request.dimensions else "{}",
        ]
        script_keys = [
            keys.customer,
            keys.buckets,
            keys.usage,
            keys.request(request.request_id),
            keys.outbox,
            keys.holds_open,
            keys.bucket_order,
            keys.bucket_expiry,
        ]
        return script_keys, args

    def _explained(self, request: DebitRequest, decision: Decision, rules: RuleBook) -> Decision:
        decision.message = explain(decision, request.feature, rules)
        return decision

    def _decision(self, customer_id: str, result: list[Any]) -> Decision:
        status = result[0]
        if status == "not_found":
            raise customer_not_found(customer_id)
        if status == "reused":
            raise RequestIdReused()
        if status != "ok":
            raise InternalError(f"decide answered {status!r}")
        (
            allowed,
            reason,
            cost,
            charged,
            free_used,
            overage,
            after,
            low,
            entry_id,
            period_usage,
            free_left,
            cap_limit,
            cap_usage,
        ) = result[1:]
        # Positional: every decision of a batch is made here, and keywords cost more per call (bench/NOTES.md).
        return Decision(
            bool(allowed),
            reason,
            cost,
            charged,
            free_used,
            overage,
            after,
            bool(low),
            entry_id,
            period_usage,
            free_left,
            cap_limit,
            cap_usage,
        )

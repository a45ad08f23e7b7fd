"""Decisions: CheckAndDebit, alone or many in one write (decide.lua, decide_many.lua)."""

from __future__ import annotations

import json
from typing import Any

from creditgate.server.domain.rules import RuleBook
from creditgate.server.engine.customer_state import CustomerState, changed, fingerprint
from creditgate.server.engine.messages import explain
from creditgate.server.engine.model import DebitRequest, Decision
from creditgate.server.engine.redis_errors import READONLY_REASON, redis_error
from creditgate.server.engine.script_reply import ScriptReply
from creditgate.server.errors import CreditgateError, InternalError, Unavailable

# decide_many.lua takes at most this many decisions per call, so that one call holds Redis for a millisecond or two.
DECIDE_MANY_CHUNK = 50
# A decide call: its keys (KeySpace order, the shard's outbox at DECIDE_OUTBOX_KEY) and its arguments.
DecideCall = tuple[list[str], list[Any]]
DECIDE_OUTBOX_KEY = 4


def _decided(answer: Any) -> ScriptReply | CreditgateError:
    """One decision's reply from decide_many: a failed one answers status 'error' and its message."""
    reply = ScriptReply("decide_many", answer)
    if reply.status == "error":
        return redis_error(str(reply["message"]), "script decide")
    return reply


def decision_of(reply: ScriptReply, *, charged: str = "credits_charged", with_usage: bool = True) -> Decision:
    """The Decision a decide reply names; a reserve reply names its held credits `credits_reserved` and reports no
    usage (charged="credits_reserved", with_usage=False)."""
    return Decision(
        allowed=bool(reply["allowed"]),
        deny_reason=reply["deny_reason"],
        credits_cost=reply["credits_cost"],
        credits_charged=reply[charged],
        free_units_used=reply["free_units_used"],
        overage_credits=reply["overage_credits"],
        balance_after=reply["balance_after"],
        low_balance=bool(reply["low_balance"]),
        entry_id=reply["entry_id"],
        period_usage=reply["period_usage"] if with_usage else 0,
        free_units_remaining=reply["free_units_remaining"] if with_usage else 0,
        cap_limit=reply["cap_limit"] if with_usage else 0,
        cap_usage=reply["cap_usage"] if with_usage else 0,
    )


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
                if reply.status in ("rollover", "expire_holds", "verify", "not_found"):
                    # Rare (a new period, a due hold, a customer to verify): this one goes the long way, after the
                    # batch has run.
                    outcomes.append(await self.check_and_debit(request))
                    continue
                outcomes.append(self._explained(request, self._decision(request.customer_id, reply), rules))
            except CreditgateError as exc:
                outcomes.append(exc)
        return outcomes

    async def _decide_many(self, calls: list[DecideCall]) -> list[ScriptReply | CreditgateError]:
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
        replies: list[ScriptReply | CreditgateError] = [InternalError("not decided") for _ in calls]
        for chunk, answers in zip(chunks, await self._state.scripts.run_many("decide_many", sent), strict=True):
            for position, index in enumerate(chunk):
                try:
                    replies[index] = answers if isinstance(answers, CreditgateError) else _decided(answers[position])
                except CreditgateError as exc:
                    replies[index] = exc
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

    def _decision(self, customer_id: str, result: ScriptReply) -> Decision:
        return decision_of(changed(result, customer_id))

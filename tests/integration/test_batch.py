"""CheckAndDebitBatch: each item decided as CheckAndDebit would decide it alone, with its own result."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
import redis
from creditgate.server.engine import bucket_codec
from creditgate.server.engine.decisions import DECIDE_MANY_CHUNK
from creditgate.server.engine.keys import KeySpace
from creditgate.server.engine.script_reply import ScriptReply
from creditgate.server.engine.scripts import script_source
from creditgate.v1 import metering_pb2
from harness import RedisServer, RunningServer

pytestmark = pytest.mark.cluster_too


def item(
    customer: str, feature: str, request_id: str = "", quantity: int | None = None, **dims: str
) -> metering_pb2.CheckAndDebitRequest:
    request = metering_pb2.CheckAndDebitRequest(
        customer_id=customer, feature=feature, request_id=request_id, dimensions=dims
    )
    if quantity is not None:
        request.quantity = quantity
    return request


def batch(
    server: RunningServer, *items: metering_pb2.CheckAndDebitRequest
) -> list[metering_pb2.CheckAndDebitBatchResult]:
    response = server.metering.CheckAndDebitBatch(metering_pb2.CheckAndDebitBatchRequest(items=items))
    return list(response.results)


def outcome(result: metering_pb2.CheckAndDebitBatchResult) -> tuple[object, ...]:
    if result.HasField("decision"):
        d = result.decision
        return ("decision", d.allowed, metering_pb2.DenyReason.Name(d.deny_reason), d.credits_charged, d.balance_after)
    e = result.error
    return ("error", grpc.StatusCode(next(c for c in grpc.StatusCode if c.value[0] == e.code)).name, e.reason, e.field)


def test_each_item_has_its_own_result_and_bad_items_do_not_fail_the_others(server: RunningServer) -> None:
    server.create_customer("acme", "basic")  # 2,500 credits
    results = batch(
        server,
        item("acme", "email_unlock", "r1"),
        item("ghost", "email_unlock", "r2"),
        item("acme", "email_unlock", "r3", quantity=0),
        item("acme", "no_such_feature", "r4"),
        item("acme", "ai_personalization", "r5"),
        item("acme", "mobile_unlock", "r6", quality="verified"),
        item("acme", "mobile_unlock", "r7", quality="gold"),
    )
    assert [outcome(r) for r in results] == [
        ("decision", True, "DENY_REASON_UNSPECIFIED", 1, 2499),
        ("error", "NOT_FOUND", "CUSTOMER_NOT_FOUND", "customer_id"),
        ("error", "INVALID_ARGUMENT", "INVALID_ARGUMENT", "quantity"),
        ("error", "NOT_FOUND", "FEATURE_NOT_FOUND", "feature"),
        ("decision", False, "DENY_REASON_NOT_ENTITLED", 0, 2499),
        ("decision", True, "DENY_REASON_UNSPECIFIED", 10, 2489),
        ("error", "INVALID_ARGUMENT", "INVALID_ARGUMENT", "dimensions[quality]"),
    ]
    assert server.available("acme") == 2489


def test_request_ids_are_idempotent_per_item(server: RunningServer) -> None:
    server.create_customer("acme", "basic")
    first = batch(
        server,
        item("acme", "phone_reveal", "once"),
        item("acme", "phone_reveal", "once"),
        item("acme", "phone_reveal", "twice"),
    )
    assert [outcome(r) for r in first] == [
        ("decision", True, "DENY_REASON_UNSPECIFIED", 10, 2490),
        ("decision", True, "DENY_REASON_UNSPECIFIED", 10, 2490),
        ("decision", True, "DENY_REASON_UNSPECIFIED", 10, 2480),
    ]
    replay = batch(server, item("acme", "phone_reveal", "twice"), item("acme", "email_unlock", "once"))
    assert [outcome(r) for r in replay] == [
        ("decision", True, "DENY_REASON_UNSPECIFIED", 10, 2480),
        ("error", "ALREADY_EXISTS", "REQUEST_ID_REUSED", "request_id"),
    ]
    assert server.available("acme") == 2480
    assert [e.credits_delta for e in server.ledger("acme") if e.request_id] == [-10, -10]


def test_concurrent_batches_never_overspend(server: RunningServer) -> None:
    server.create_customer("acme", "basic")  # 2,500 credits: 250 phone reveals at 10

    def send(thread: int) -> list[metering_pb2.CheckAndDebitBatchResult]:
        results = []
        for round_ in range(2):
            results += batch(server, *(item("acme", "phone_reveal", f"t{thread}.{round_}.{i}") for i in range(100)))
        return results

    with ThreadPoolExecutor(4) as pool:
        results = [r for chunk in pool.map(send, range(4)) for r in chunk]
    decisions = [r.decision for r in results]
    assert len(decisions) == 800
    assert sum(d.allowed for d in decisions) == 250
    assert sum(d.credits_charged for d in decisions) == 2500
    assert {metering_pb2.DenyReason.Name(d.deny_reason) for d in decisions if not d.allowed} == {
        "DENY_REASON_INSUFFICIENT_CREDITS"
    }
    assert server.available("acme") == 0
    assert sum(e.credits_delta for e in server.ledger("acme")) == 0


@pytest.mark.parametrize("size", [0, 1001])
def test_a_batch_of_the_wrong_size_is_refused_whole(server: RunningServer, size: int) -> None:
    server.create_customer("sized", plan="basic")
    items = [metering_pb2.CheckAndDebitRequest(customer_id="sized", feature="email_unlock")] * size
    with pytest.raises(grpc.RpcError) as raised:
        server.metering.CheckAndDebitBatch(metering_pb2.CheckAndDebitBatchRequest(items=items), timeout=30)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "1 to 1,000" in (raised.value.details() or "")
    assert server.available("sized") == 2500


def test_a_batch_over_shards_and_chunks_decides_each_customer_in_item_order(server: RunningServer) -> None:
    # Redis gets one call per shard and chunk; a customer's items must still be decided in their order.
    others = [f"other-{n}" for n in range(6)]
    shards = KeySpace(server.app.settings.shards)
    assert len({shards.shard_of(customer) for customer in ["acme", *others]}) >= 3
    for customer in ["acme", *others]:
        server.create_customer(customer, "basic")  # 2,500 credits
    acme_items = 260  # phone reveals at 10: the first 250 are allowed
    assert acme_items > 5 * DECIDE_MANY_CHUNK
    items = []
    for i in range(acme_items):
        items.append(item("acme", "phone_reveal", f"a{i}"))
        if i % 10 == 0:
            items.append(item(others[i // 10 % len(others)], "email_unlock", f"o{i}"))
    results = batch(server, *items)
    acme = [r.decision for r, sent in zip(results, items, strict=True) if sent.customer_id == "acme"]
    assert [d.balance_after for d in acme] == [2500 - 10 * min(i + 1, 250) for i in range(acme_items)]
    assert [d.allowed for d in acme] == [i < 250 for i in range(acme_items)]
    assert [e.request_id for e in server.ledger("acme") if e.request_id] == [f"a{i}" for i in range(250)]
    for n, customer in enumerate(others):
        debits = len([i for i in range(0, acme_items, 10) if i // 10 % len(others) == n])
        assert server.available(customer) == 2500 - debits


def test_a_failed_decision_in_decide_many_answers_an_error_and_the_next_ones_still_run(
    redis_server: RedisServer,
) -> None:
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    client.delete("dm:c", "dm:b", "dm:u", "dm:o", "dm:bo", "dm:bx", "dm:wrong")
    # Verified in the epoch the calls name (lib.lua): the last argument of every script call.
    client.hset(
        "dm:c",
        mapping={
            "id": "dm",
            "plan": "basic",
            "status": "active",
            "period_end": 2**50,
            "ep": "e1",
            "bucket_credits": 100,
        },
    )
    # One bucket and its wallet index (lib.lua): its spending-order member and the running total above.
    client.hset("dm:b", "b1", "100|10|0|grant")
    client.zadd("dm:bo", {bucket_codec.order_member(bucket_codec.decode("b1", "100|10|0|grant")): 0})
    client.set("dm:wrong", "a string where the sorted set of bucket order belongs")
    keys = ["dm:c", "dm:b", "dm:u", "dm:r", "dm:o", "dm:h", "dm:bo", "dm:bx"]
    wrong_type = ["dm:c", "dm:b", "dm:u", "dm:r", "dm:o", "dm:h", "dm:wrong", "dm:bx"]

    def args(rules: str = '{"basic":[1,0,0,"",-1,0]}') -> list[str | int]:
        return [1_000, "dm", "email_unlock", 1, rules, "", "0", "", "", 60, "{}"]

    sha = client.script_load(script_source("decide_many"))
    answers = client.evalsha(
        sha, 32, *keys, *keys, *wrong_type, *keys, *args(), *args("{not json"), *args(), *args(), "e1"
    )
    replies = [ScriptReply("decide_many", answer) for answer in answers]
    assert [reply.status for reply in replies] == ["ok", "error", "error", "ok"]
    assert replies[1]["message"].endswith("Expected object key string but found invalid token at character 2")
    assert "WRONGTYPE" in replies[2]["message"]
    assert [replies[0]["balance_after"], replies[3]["balance_after"]] == [99, 98]
    assert client.hget("dm:b", "b1") == "98|10|0|grant"
    with pytest.raises(redis.ResponseError, match="8 keys and 11 arguments per decision"):
        client.evalsha(sha, 8, *keys, *args()[:10], "e1")
    assert client.hget("dm:b", "b1") == "98|10|0|grant"

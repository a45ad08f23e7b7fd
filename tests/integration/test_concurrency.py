"""No overspend and at-most-once charging under concurrent calls (DESIGN.md invariants)."""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from creditgate.server.engine.customer_state import fingerprint
from creditgate.server.engine.keys import KeySpace
from creditgate.v1 import admin_pb2, metering_pb2
from harness import RunningServer, awaited

pytestmark = pytest.mark.cluster_too

CLIENTS = 64


def fund(server: RunningServer, customer_id: str, credits: int) -> None:
    """Basic's 2,500 grant plus a top-up to reach `credits`."""
    server.create_customer(customer_id, plan="basic")
    server.admin.TopUp(
        admin_pb2.TopUpRequest(customer_id=customer_id, credits=credits - 2500, request_id=str(uuid.uuid4()))
    )
    assert server.available(customer_id) == credits


@pytest.mark.slow
def test_10000_debits_from_64_clients_against_5000_credits_allow_exactly_5000(server: RunningServer) -> None:
    fund(server, "race", 5000)
    lowest_seen = [5000]
    done = threading.Event()

    def watch_balance() -> None:
        while not done.is_set():
            lowest_seen[0] = min(lowest_seen[0], server.available("race"))

    watcher = threading.Thread(target=watch_balance)
    watcher.start()
    with ThreadPoolExecutor(CLIENTS) as pool:
        responses = list(pool.map(lambda _: server.debit("race", "email_unlock"), range(10_000)))
    done.set()
    watcher.join()

    allowed = [response for response in responses if response.allowed]
    denied = [response for response in responses if not response.allowed]
    assert len(allowed) == 5000
    assert {response.deny_reason for response in denied} == {metering_pb2.DENY_REASON_INSUFFICIENT_CREDITS}
    assert min(response.balance_after for response in responses) == 0
    assert sorted(response.balance_after for response in allowed) == list(range(5000))
    assert lowest_seen[0] >= 0
    assert server.available("race") == 0

    debits = [entry for entry in server.ledger("race") if entry.kind == admin_pb2.LEDGER_ENTRY_KIND_DEBIT]
    assert len(debits) == 5000
    assert sum(entry.credits_delta for entry in debits) == -5000


@pytest.mark.slow
def test_1000_request_ids_sent_20_times_each_are_charged_once(server: RunningServer) -> None:
    fund(server, "retry", 5000)
    request_ids = [f"req-{n}" for n in range(1000)]
    calls = [request_id for request_id in request_ids for _ in range(20)]
    with ThreadPoolExecutor(CLIENTS) as pool:
        responses = list(pool.map(lambda rid: (rid, server.debit("retry", "email_unlock", request_id=rid)), calls))

    first_answer: dict[str, metering_pb2.CheckAndDebitResponse] = {}
    for request_id, response in responses:
        assert response == first_answer.setdefault(request_id, response)
    assert len({response.entry_id for response in first_answer.values()}) == 1000
    assert server.available("retry") == 4000
    debits = [entry for entry in server.ledger("retry") if entry.kind == admin_pb2.LEDGER_ENTRY_KIND_DEBIT]
    assert sorted(entry.request_id for entry in debits) == sorted(request_ids)


def test_reused_request_id_with_other_content_is_rejected_and_charges_nothing(server: RunningServer) -> None:
    fund(server, "reuse", 5000)
    first = server.debit("reuse", "email_unlock", quantity=2, request_id="order-1")
    assert first.balance_after == 4998
    with pytest.raises(grpc.RpcError) as error:
        server.debit("reuse", "email_unlock", quantity=3, request_id="order-1")
    assert error.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "request_id" in (error.value.details() or "")
    assert server.debit("reuse", "email_unlock", quantity=2, request_id="order-1") == first
    assert server.available("reuse") == 4998


def test_a_denial_is_remembered_under_its_request_id(server: RunningServer) -> None:
    server.create_customer("denied-once", plan="basic")
    denied = server.debit("denied-once", "phone_reveal", quantity=251, request_id="big")
    assert denied.allowed is False
    server.admin.TopUp(admin_pb2.TopUpRequest(customer_id="denied-once", package="pro", request_id="pay-1"))
    assert server.debit("denied-once", "phone_reveal", quantity=251, request_id="big") == denied
    assert server.available("denied-once") == 22500


def test_an_answer_remembered_as_json_by_an_older_version_is_still_replayed(server: RunningServer) -> None:
    # Answers used to be stored as JSON; those written before an upgrade must answer their retries for 24 h.
    fund(server, "upgraded", 5000)
    key = KeySpace(server.app.settings.shards).for_customer("upgraded").request("before-upgrade")
    stored = '["ok",1,"",2,2,0,0,1234,0,"upgraded\\/7",2,0,0,0]'
    server.call(awaited(server.app.redis.set(key, fingerprint("debit", "email_unlock", 2, {}) + "\n" + stored)))
    replayed = server.debit("upgraded", "email_unlock", quantity=2, request_id="before-upgrade")
    assert (replayed.credits_charged, replayed.balance_after, replayed.entry_id) == (2, 1234, "upgraded/7")
    assert server.available("upgraded") == 5000
    fresh = server.debit("upgraded", "email_unlock", quantity=2, request_id="after-upgrade")
    assert server.debit("upgraded", "email_unlock", quantity=2, request_id="after-upgrade") == fresh
    assert server.available("upgraded") == 4998

"""The Python SDK (sync and asyncio) against the real server, through a proxy that can lose answers."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from creditgate.client import (
    AlreadyExists,
    AsyncClient,
    Client,
    CreditgateError,
    CustomerNotFound,
    DeadlineExceeded,
    DenyReason,
    FailedPrecondition,
    InvalidArgument,
    LedgerEntryKind,
    NotFound,
    RequestIdReused,
    RetryPolicy,
    Unavailable,
)
from creditgate.v1 import admin_pb2, metering_pb2
from grpc_proxy import LossyProxy
from harness import RunningServer

FLAVOURS = ["sync", "async"]
FAST_RETRY = RetryPolicy(initial_backoff_seconds=0.01, max_backoff_seconds=0.05)
# (method, positional arguments, keyword arguments)
Step = tuple[str, tuple[Any, ...], dict[str, Any]]


def run_steps(flavour: str, port: int, steps: list[Step], **options: Any) -> list[Any]:
    """Run the steps in order on ONE client of the given flavour; each step's result, or the exception it raised."""
    options.setdefault("retry", FAST_RETRY)
    target = f"127.0.0.1:{port}"
    results: list[Any] = []
    if flavour == "sync":
        with Client(target, **options) as client:
            for method, args, kwargs in steps:
                try:
                    results.append(getattr(client, method)(*args, **kwargs))
                except CreditgateError as exc:
                    results.append(exc)
        return results

    async def run() -> None:
        async with AsyncClient(target, **options) as client:
            for method, args, kwargs in steps:
                try:
                    results.append(await getattr(client, method)(*args, **kwargs))
                except CreditgateError as exc:
                    results.append(exc)

    asyncio.run(run())
    return results


def run_one(flavour: str, port: int, method: str, *args: Any, **kwargs: Any) -> Any:
    return run_steps(flavour, port, [(method, args, kwargs)])[0]


@pytest.fixture
def acme(server: RunningServer) -> RunningServer:
    """The server with customer acme on Basic: 2,500 credits."""
    server.create_customer("acme", "basic")
    return server


def lossy_proxy(server: RunningServer, answers_to_lose: int = 0, hold_seconds: float = 0) -> Iterator[LossyProxy]:
    proxy = LossyProxy(server.app.port, answers_to_lose, hold_seconds)
    yield proxy
    proxy.stop()


@pytest.fixture
def losing_one(acme: RunningServer) -> Iterator[LossyProxy]:
    """A proxy that carries out the first call upstream and loses its answer."""
    yield from lossy_proxy(acme, answers_to_lose=1)


# (case, method, args, kwargs, request type, request_id the caller gave, balance after, ledger kind charged)
RETRIED = [
    (
        "debit, generated id",
        "check_and_debit",
        ("acme", "mobile_unlock"),
        {"dimensions": {"quality": "verified"}},
        metering_pb2.CheckAndDebitRequest,
        "",
        2_490,
        LedgerEntryKind.LEDGER_ENTRY_KIND_DEBIT,
    ),
    (
        "debit, caller's id",
        "check_and_debit",
        ("acme", "phone_reveal", 3),
        {"request_id": "order-17"},
        metering_pb2.CheckAndDebitRequest,
        "order-17",
        2_470,
        LedgerEntryKind.LEDGER_ENTRY_KIND_DEBIT,
    ),
    (
        "top-up, generated id",
        "top_up",
        ("acme",),
        {"package": "starter"},
        admin_pb2.TopUpRequest,
        "",
        3_500,
        LedgerEntryKind.LEDGER_ENTRY_KIND_TOP_UP,
    ),
    (
        "adjustment, generated id",
        "adjust_credits",
        ("acme", -100, "refund reversed"),
        {},
        admin_pb2.AdjustCreditsRequest,
        "",
        2_400,
        LedgerEntryKind.LEDGER_ENTRY_KIND_ADJUSTMENT,
    ),
]


@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize(
    ("method", "args", "kwargs", "request_type", "given_id", "balance", "kind"),
    [case[1:] for case in RETRIED],
    ids=[case[0] for case in RETRIED],
)
def test_a_lost_answer_is_retried_with_the_same_request_id_and_charged_once(
    acme: RunningServer,
    losing_one: LossyProxy,
    flavour: str,
    method: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    request_type: Any,
    given_id: str,
    balance: int,
    kind: int,
) -> None:
    result = run_one(flavour, losing_one.port, method, *args, **kwargs)

    sent = [request_type.FromString(raw) for raw in losing_one.requests_to(request_type.__name__[: -len("Request")])]
    assert len(sent) == 2  # the lost attempt reached the server, then the retry
    assert sent[0] == sent[1]
    if given_id:
        assert sent[0].request_id == given_id
    else:
        assert uuid.UUID(sent[0].request_id).version == 4
    assert acme.available("acme") == balance
    after = result.balance_after if hasattr(result, "balance_after") else result.available_credits
    assert after == balance
    charged = [entry for entry in acme.ledger("acme") if entry.kind == kind]
    assert len(charged) == 1
    assert charged[0].request_id == sent[0].request_id


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_a_write_without_request_id_is_not_retried(acme: RunningServer, losing_one: LossyProxy, flavour: str) -> None:
    error = run_one(flavour, losing_one.port, "create_customer", "globex", "Globex")

    assert isinstance(error, Unavailable)
    assert len(losing_one.attempts) == 1
    # The server did create it: a retry would have answered ALREADY_EXISTS for a call that worked.
    assert acme.admin.GetCustomer(admin_pb2.GetCustomerRequest(customer_id="globex")).customer.name == "Globex"


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_a_read_is_retried(acme: RunningServer, losing_one: LossyProxy, flavour: str) -> None:
    balance = run_one(flavour, losing_one.port, "get_balance", "acme")

    assert balance.available_credits == 2_500
    assert len(losing_one.attempts) == 2


# (case, method, args, kwargs, exception class, status reason, field)
ERRORS = [
    ("unknown customer", "get_balance", ("nobody",), {}, CustomerNotFound, "CUSTOMER_NOT_FOUND", "customer_id"),
    ("unknown feature", "check_and_debit", ("acme", "teleport"), {}, NotFound, "FEATURE_NOT_FOUND", "feature"),
    (
        "zero quantity",
        "check_and_debit",
        ("acme", "email_unlock", 0),
        {},
        InvalidArgument,
        "INVALID_ARGUMENT",
        "quantity",
    ),
    ("empty reason", "adjust_credits", ("acme", 5, ""), {}, InvalidArgument, "INVALID_ARGUMENT", "reason"),
    ("customer twice", "create_customer", ("acme",), {}, AlreadyExists, "CUSTOMER_EXISTS", "customer_id"),
    (
        "request_id reused",
        "check_and_debit",
        ("acme", "email_unlock", 2),
        {"request_id": "r-1"},
        RequestIdReused,
        "REQUEST_ID_REUSED",
        "request_id",
    ),
    (
        "remove more than left",
        "adjust_credits",
        ("acme", -2_501, "chargeback"),
        {},
        FailedPrecondition,
        "INSUFFICIENT_CREDITS",
        "delta",
    ),
]


@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize(
    ("method", "args", "kwargs", "kind", "reason", "field"), [case[1:] for case in ERRORS], ids=[c[0] for c in ERRORS]
)
def test_errors_carry_the_servers_reason_and_field(
    acme: RunningServer,
    flavour: str,
    method: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    kind: type[CreditgateError],
    reason: str,
    field: str,
) -> None:
    acme.debit("acme", "email_unlock", request_id="r-1")  # 1 credit, so "r-1" with quantity 2 is a reuse

    first, balance = run_steps(flavour, acme.app.port, [(method, args, kwargs), ("get_balance", ("acme",), {})])

    assert type(first) is kind
    assert (first.reason, first.field, first.domain) == (reason, field, "creditgate.v1")
    assert balance.available_credits == 2_499  # rejected calls changed nothing


# (case, feature, quantity, deny reason)
DENIALS = [
    ("more than left", "phone_reveal", 251, DenyReason.DENY_REASON_INSUFFICIENT_CREDITS),
    ("not on the plan", "ai_personalization", 1, DenyReason.DENY_REASON_NOT_ENTITLED),
]


@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize(("feature", "quantity", "deny_reason"), [c[1:] for c in DENIALS], ids=[c[0] for c in DENIALS])
def test_a_denial_is_a_result_not_an_exception(
    acme: RunningServer, flavour: str, feature: str, quantity: int, deny_reason: int
) -> None:
    decision = run_one(flavour, acme.app.port, "check_and_debit", "acme", feature, quantity)

    assert isinstance(decision, metering_pb2.CheckAndDebitResponse)
    assert (decision.allowed, decision.deny_reason, decision.credits_charged) == (False, deny_reason, 0)
    assert decision.balance_after == 2_500
    assert acme.available("acme") == 2_500


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_every_call_of_a_client_shares_one_connection_and_sends_its_metadata(acme: RunningServer, flavour: str) -> None:
    for proxy in lossy_proxy(acme):
        steps: list[Step] = [("check_and_debit", ("acme", "email_unlock"), {}) for _ in range(5)]
        steps += [("get_balance", ("acme",), {}), ("get_customer", ("acme",), {})]
        results = run_steps(flavour, proxy.port, steps, api_key="cg_test_key", metadata=[("X-Tenant", "t1")])

        assert results[5].available_credits == 2_495
        assert len(proxy.attempts) == 7
        assert len({attempt.peer for attempt in proxy.attempts}) == 1
        for attempt in proxy.attempts:
            assert ("authorization", "Bearer cg_test_key") in attempt.metadata
            assert ("x-tenant", "t1") in attempt.metadata


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_a_per_call_timeout_overrides_the_default(acme: RunningServer, flavour: str) -> None:
    for proxy in lossy_proxy(acme, hold_seconds=1.0):
        error = run_one(flavour, proxy.port, "get_balance", "acme", timeout=0.2)

        assert isinstance(error, DeadlineExceeded)
        assert len(proxy.attempts) == 1  # DEADLINE_EXCEEDED is not retried


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_a_lost_batch_answer_is_retried_with_each_items_request_id(
    acme: RunningServer, losing_one: LossyProxy, flavour: str
) -> None:
    items = [
        metering_pb2.CheckAndDebitRequest(customer_id="acme", feature="email_unlock"),
        metering_pb2.CheckAndDebitRequest(customer_id="acme", feature="phone_reveal", request_id="b-2"),
    ]

    batch = run_one(flavour, losing_one.port, "check_and_debit_batch", items)

    sent = [
        metering_pb2.CheckAndDebitBatchRequest.FromString(raw) for raw in losing_one.requests_to("CheckAndDebitBatch")
    ]
    assert len(sent) == 2
    assert sent[0] == sent[1]
    assert uuid.UUID(sent[0].items[0].request_id).version == 4
    assert sent[0].items[1].request_id == "b-2"
    assert [result.decision.credits_charged for result in batch.results] == [1, 10]
    assert acme.available("acme") == 2_489

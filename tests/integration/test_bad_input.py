"""Bad input gets the right status, an ErrorInfo naming the field, and changes nothing."""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import grpc
import pytest
import redis
from creditgate.v1 import admin_pb2, metering_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from harness import APOLLO, RunningServer

Code = grpc.StatusCode
TEN_KB = "x" * 10_240
APOLLO_TEXT = APOLLO.read_text()


def debit(**fields: Any) -> Callable[[RunningServer], Any]:
    request = {"customer_id": "known", "feature": "email_unlock", **fields}
    return lambda server: server.metering.CheckAndDebit(metering_pb2.CheckAndDebitRequest(**request))


def admin(method: str, message: Any) -> Callable[[RunningServer], Any]:
    return lambda server: getattr(server.admin, method)(message)


def catalog(text: str) -> Callable[[RunningServer], Any]:
    return admin("ApplyCatalog", admin_pb2.ApplyCatalogRequest(catalog_yaml=text))


# (case, call, status code, field named in ErrorInfo, text the message must contain)
CASES = [
    ("empty customer_id", debit(customer_id=""), Code.INVALID_ARGUMENT, "customer_id", "required"),
    ("10 KB customer_id", debit(customer_id=TEN_KB), Code.INVALID_ARGUMENT, "customer_id", "128"),
    ("10 KB request_id", debit(request_id=TEN_KB), Code.INVALID_ARGUMENT, "request_id", "128"),
    ("negative quantity", debit(quantity=-1), Code.INVALID_ARGUMENT, "quantity", "-1"),
    ("zero quantity", debit(quantity=0), Code.INVALID_ARGUMENT, "quantity", "between 1"),
    ("2^63-1 quantity", debit(quantity=2**63 - 1), Code.INVALID_ARGUMENT, "quantity", "1,000,000"),
    ("empty feature", debit(feature=""), Code.INVALID_ARGUMENT, "feature", "required"),
    ("unknown feature", debit(feature="teleport"), Code.NOT_FOUND, "feature", "teleport"),
    ("unknown customer", debit(customer_id="nobody"), Code.NOT_FOUND, "customer_id", "nobody"),
    ("unknown dimension", debit(dimensions={"color": "red"}), Code.INVALID_ARGUMENT, "dimensions[color]", "color"),
    (
        "missing priced dimension",
        debit(feature="mobile_unlock"),
        Code.INVALID_ARGUMENT,
        "dimensions[quality]",
        "standard, verified",
    ),
    (
        "unknown dimension value",
        debit(feature="mobile_unlock", dimensions={"quality": "gold"}),
        Code.INVALID_ARGUMENT,
        "dimensions[quality]",
        "one of",
    ),
    ("missing cap dimension", debit(feature="email_send"), Code.INVALID_ARGUMENT, "dimensions[mailbox]", "required"),
    ("malformed YAML", catalog("plans: [unclosed"), Code.INVALID_ARGUMENT, "catalog_yaml", "not valid YAML"),
    (
        "entitlement to an unknown feature",
        catalog(APOLLO_TEXT.replace("      phone_reveal: {}\n", "      phone_reveel: {}\n", 1)),
        Code.INVALID_ARGUMENT,
        "catalog_yaml",
        "plans.basic.entitlements.phone_reveel: unknown feature",
    ),
    (
        "negative cost",
        catalog(APOLLO_TEXT.replace("{name: Unlock verified email, credits: 1}", "{credits: -1}")),
        Code.INVALID_ARGUMENT,
        "catalog_yaml",
        "features.email_unlock.credits",
    ),
    (
        "missing plan price",
        catalog(APOLLO_TEXT.replace('    price: "588.00"\n', "")),
        Code.INVALID_ARGUMENT,
        "catalog_yaml",
        "plans.basic.price: Field required",
    ),
    (
        "price as a float",
        catalog(APOLLO_TEXT.replace('price: "29.00"', "price: 29.00")),
        Code.INVALID_ARGUMENT,
        "catalog_yaml",
        "packages.starter.price",
    ),
    (
        "unknown package",
        admin("TopUp", admin_pb2.TopUpRequest(customer_id="known", package="mega", request_id="t-1")),
        Code.NOT_FOUND,
        "package",
        "mega",
    ),
    (
        "top-up without request_id",
        admin("TopUp", admin_pb2.TopUpRequest(customer_id="known", package="starter")),
        Code.INVALID_ARGUMENT,
        "request_id",
        "required",
    ),
    (
        "top-up of negative credits",
        admin("TopUp", admin_pb2.TopUpRequest(customer_id="known", credits=-5, request_id="t-2")),
        Code.INVALID_ARGUMENT,
        "credits",
        "-5",
    ),
    (
        "top-up of nothing",
        admin("TopUp", admin_pb2.TopUpRequest(customer_id="known", request_id="t-3")),
        Code.INVALID_ARGUMENT,
        "amount",
        "package or credits",
    ),
    (
        "adjustment of 0",
        admin("AdjustCredits", admin_pb2.AdjustCreditsRequest(customer_id="known", reason="x", request_id="a-1")),
        Code.INVALID_ARGUMENT,
        "delta",
        "not 0",
    ),
    (
        "adjustment below zero",
        admin(
            "AdjustCredits",
            admin_pb2.AdjustCreditsRequest(customer_id="known", delta=-2501, reason="refund", request_id="a-2"),
        ),
        Code.FAILED_PRECONDITION,
        "delta",
        "2500 are available",
    ),
    (
        "adjustment without reason",
        admin("AdjustCredits", admin_pb2.AdjustCreditsRequest(customer_id="known", delta=5, request_id="a-3")),
        Code.INVALID_ARGUMENT,
        "reason",
        "required",
    ),
    (
        "unknown plan",
        admin("CreateSubscription", admin_pb2.CreateSubscriptionRequest(customer_id="fresh", plan="gold")),
        Code.NOT_FOUND,
        "plan",
        "gold",
    ),
    (
        "second subscription",
        admin("CreateSubscription", admin_pb2.CreateSubscriptionRequest(customer_id="known", plan="professional")),
        Code.FAILED_PRECONDITION,
        "customer_id",
        "already subscribed",
    ),
    (
        "existing customer",
        admin("CreateCustomer", admin_pb2.CreateCustomerRequest(customer_id="known")),
        Code.ALREADY_EXISTS,
        "customer_id",
        "already exists",
    ),
    (
        "page_size too large",
        admin("ListLedgerEntries", admin_pb2.ListLedgerEntriesRequest(customer_id="known", page_size=5000)),
        Code.INVALID_ARGUMENT,
        "page_size",
        "1,000",
    ),
    (
        "forged page_token",
        admin("ListLedgerEntries", admin_pb2.ListLedgerEntriesRequest(customer_id="known", page_token="%%%")),
        Code.INVALID_ARGUMENT,
        "page_token",
        "token",
    ),
    (
        "balance of unknown customer",
        lambda server: server.metering.GetBalance(metering_pb2.GetBalanceRequest(customer_id="nobody")),
        Code.NOT_FOUND,
        "customer_id",
        "nobody",
    ),
    (
        "bytes that are not a CheckAndDebitRequest",
        lambda s: s.channel.unary_unary("/creditgate.v1.MeteringService/CheckAndDebit")(b"\xff\xff\xff"),
        Code.INVALID_ARGUMENT,
        "request",
        "not a valid CheckAndDebit message",
    ),
]


def snapshot(server: RunningServer, client: redis.Redis) -> tuple[Any, ...]:
    server.flush()
    keys = sorted(client.keys("*"))
    catalog_version = server.admin.GetCatalog(admin_pb2.GetCatalogRequest()).version
    return catalog_version, {key: client.dump(key) for key in keys}, server.ledger("known")


@pytest.fixture
def prepared(server: RunningServer) -> RunningServer:
    server.create_customer("known", plan="basic")
    server.create_customer("fresh")
    return server


@pytest.mark.parametrize(("case", "call", "code", "field", "text"), CASES, ids=[case[0] for case in CASES])
def test_bad_input_is_rejected_naming_the_field_and_changes_nothing(
    prepared: RunningServer,
    redis_server: Any,
    case: str,
    call: Callable[[RunningServer], Any],
    code: grpc.StatusCode,
    field: str,
    text: str,
) -> None:
    client = redis.Redis.from_url(redis_server.url)
    before = snapshot(prepared, client)
    with pytest.raises(grpc.RpcError) as raised:
        call(prepared)
    error = raised.value
    assert error.code() == code, error.details()
    assert text in (error.details() or "")
    status = rpc_status.from_call(error)  # type: ignore[arg-type]  # a failed call's error is also its Call
    assert status is not None
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    assert info.metadata["field"] == field
    assert info.reason
    assert snapshot(prepared, client) == before


def test_a_page_token_beyond_64_bits_is_a_bad_page_token(server: RunningServer) -> None:
    """Found by test_fuzz: a token naming a position past the stores' 64-bit integers answered INTERNAL."""
    token = base64.urlsafe_b64encode(b"v1:999999999999999999999999").decode()
    with pytest.raises(grpc.RpcError) as caught:
        server.admin.ListEvents(admin_pb2.ListEventsRequest(page_token=token))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "page_token" in (caught.value.details() or "")

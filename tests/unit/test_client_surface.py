"""The Python SDK's public surface: its exported names, one method per RPC in both clients, retry arithmetic."""

from __future__ import annotations

import inspect
import re
import uuid

import creditgate.client
import creditgate.client.errors
import pytest
from creditgate.client import AsyncClient, Client, RetryPolicy
from creditgate.client.calls import call_metadata, fill_request_id
from creditgate.v1 import admin_pb2, metering_pb2
from harness import REPO

RPCS = [
    method.name
    for module in (metering_pb2, admin_pb2)
    for service in module.DESCRIPTOR.services_by_name.values()
    for method in service.methods
]


def snake_case(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def test_all_lists_exactly_what_the_package_exports() -> None:
    """__all__ names each public name of the package once, and nothing it does not define (its submodules aside)."""
    exported = [
        name
        for name, value in vars(creditgate.client).items()
        if not name.startswith("_") and not inspect.ismodule(value)
    ]
    assert sorted(creditgate.client.__all__) == sorted(exported)
    assert len(set(creditgate.client.__all__)) == len(creditgate.client.__all__)


def test_every_error_the_client_raises_is_exported_and_derives_from_the_base() -> None:
    defined = {
        name
        for name, value in vars(creditgate.client.errors).items()
        if inspect.isclass(value)
        and issubclass(value, Exception)
        and value.__module__ == creditgate.client.errors.__name__
    }
    assert defined == {
        "CreditgateError",
        "InvalidArgument",
        "NotFound",
        "CustomerNotFound",
        "AlreadyExists",
        "RequestIdReused",
        "FailedPrecondition",
        "Unauthenticated",
        "PermissionDenied",
        "ResourceExhausted",
        "Unavailable",
        "DeadlineExceeded",
        "InternalError",
    }
    assert defined <= set(creditgate.client.__all__)
    assert all(issubclass(getattr(creditgate.client, name), creditgate.client.CreditgateError) for name in defined)


def test_the_proto_enums_a_result_carries_are_exported_as_they_are() -> None:
    exported = (
        creditgate.client.DenyReason,
        creditgate.client.BucketSource,
        creditgate.client.LedgerEntryKind,
        creditgate.client.SubscriptionStatus,
    )
    assert exported == (
        metering_pb2.DenyReason,
        metering_pb2.BucketSource,
        admin_pb2.LedgerEntryKind,
        admin_pb2.SubscriptionStatus,
    )


@pytest.mark.parametrize("client", [Client, AsyncClient])
def test_the_clients_public_methods_are_the_rpcs_and_close(client: type) -> None:
    public = {name for name, _ in inspect.getmembers(client, callable) if not name.startswith("_")}
    assert public == {snake_case(rpc) for rpc in RPCS} | {"close"}


def test_the_committed_stubs_carry_every_rpc_of_the_proto() -> None:
    declared = [
        name
        for proto in ("metering", "admin")
        for name in re.findall(r"^\s*rpc (\w+)\(", (REPO / "proto/creditgate/v1" / f"{proto}.proto").read_text(), re.M)
    ]
    assert declared == RPCS
    assert len(RPCS) == 27


@pytest.mark.parametrize("rpc", RPCS)
def test_both_clients_have_one_method_per_rpc_with_the_same_parameters(rpc: str) -> None:
    name = snake_case(rpc)
    sync_method = getattr(Client, name, None)
    async_method = getattr(AsyncClient, name, None)
    assert sync_method is not None, f"Client has no {name}() for the {rpc} RPC"
    assert async_method is not None, f"AsyncClient has no {name}() for the {rpc} RPC"
    assert not inspect.iscoroutinefunction(sync_method)
    assert inspect.iscoroutinefunction(async_method)
    assert inspect.signature(sync_method) == inspect.signature(async_method)
    assert "timeout" in inspect.signature(sync_method).parameters


# (failed attempt, least pause, most pause) for the default policy: 50 ms doubling, at most 2 s.
BACKOFF = [(1, 0.025, 0.05), (2, 0.05, 0.1), (3, 0.1, 0.2), (6, 0.8, 1.6), (7, 1.0, 2.0), (30, 1.0, 2.0)]


@pytest.mark.parametrize(("attempt", "least", "most"), BACKOFF)
def test_backoff_grows_exponentially_with_jitter_up_to_a_ceiling(attempt: int, least: float, most: float) -> None:
    pauses = [RetryPolicy().backoff_seconds(attempt) for _ in range(200)]
    assert least <= min(pauses)
    assert max(pauses) <= most


def test_a_missing_request_id_is_generated_once_and_a_given_one_kept() -> None:
    generated = metering_pb2.CheckAndDebitRequest(customer_id="acme", feature="email_unlock")
    given = admin_pb2.TopUpRequest(customer_id="acme", credits=5, request_id="topup-9")
    no_id = metering_pb2.GetBalanceRequest(customer_id="acme")

    assert [fill_request_id(generated), fill_request_id(given), fill_request_id(no_id)] == [True, True, False]
    first = generated.request_id
    assert uuid.UUID(first).version == 4
    fill_request_id(generated)
    assert generated.request_id == first
    assert given.request_id == "topup-9"


def test_each_item_of_a_batch_gets_its_own_request_id() -> None:
    batch = metering_pb2.CheckAndDebitBatchRequest(
        items=[
            metering_pb2.CheckAndDebitRequest(customer_id="acme", feature="email_unlock"),
            metering_pb2.CheckAndDebitRequest(customer_id="acme", feature="email_unlock", request_id="b-2"),
            metering_pb2.CheckAndDebitRequest(customer_id="acme", feature="email_unlock"),
        ]
    )

    assert fill_request_id(batch)
    ids = [item.request_id for item in batch.items]
    assert ids[1] == "b-2"
    assert uuid.UUID(ids[0]).version == uuid.UUID(ids[2]).version == 4
    assert ids[0] != ids[2]


def test_the_api_key_is_sent_as_a_bearer_token_after_the_callers_metadata() -> None:
    assert call_metadata("k1", [("X-Tenant", "t1")]) == (("x-tenant", "t1"), ("authorization", "Bearer k1"))
    assert call_metadata(None, []) == ()

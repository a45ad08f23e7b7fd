"""envoy.service.auth.v3.Authorization/Check over gRPC, with CheckRequests built from Envoy's own protos as Envoy
fills them (method, path with query, lower-case headers with pseudo-headers, context_extensions)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from creditgate.v1 import admin_pb2
from envoy.config.core.v3 import address_pb2
from envoy.service.auth.v3 import attribute_context_pb2, external_auth_pb2, external_auth_pb2_grpc
from gateway_rig import EXAMPLE_ROUTES
from google.rpc import code_pb2, error_details_pb2
from harness import RedisServer, RunningServer, start_server


@pytest.fixture(scope="module")
def server(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    running = start_server(redis_server.url, tmp_path_factory.mktemp("ext-authz"), routes=EXAMPLE_ROUTES)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def authz(server: RunningServer) -> external_auth_pb2_grpc.AuthorizationStub:
    return external_auth_pb2_grpc.AuthorizationStub(server.channel)


def check_request(
    method: str, path: str, headers: dict[str, str], context: dict[str, str] | None = None
) -> external_auth_pb2.CheckRequest:
    """What Envoy's ext_authz filter sends for a request to a listener on 127.0.0.1:10000."""
    http = attribute_context_pb2.AttributeContext.HttpRequest(
        id="7f1ad3a0-1c2e-4f63-9d0b-3c1a3c0e9f11",
        method=method,
        path=path,
        host="api.example.com",
        scheme="http",
        protocol="HTTP/1.1",
        headers={":authority": "api.example.com", ":method": method, ":path": path, ":scheme": "http"} | headers,
    )
    # Envoy gives every request an x-request-id (a client's own is kept with preserve_external_request_id).
    http.headers.setdefault("x-request-id", str(uuid.uuid4()))
    return external_auth_pb2.CheckRequest(
        attributes=attribute_context_pb2.AttributeContext(
            source=attribute_context_pb2.AttributeContext.Peer(
                address=address_pb2.Address(
                    socket_address=address_pb2.SocketAddress(address="127.0.0.1", port_value=53422)
                )
            ),
            destination=attribute_context_pb2.AttributeContext.Peer(
                address=address_pb2.Address(
                    socket_address=address_pb2.SocketAddress(address="127.0.0.1", port_value=10000)
                )
            ),
            request=attribute_context_pb2.AttributeContext.Request(http=http),
            context_extensions=context or {},
        )
    )


def customer_with(server: RunningServer, customer_id: str, credits: int) -> None:
    server.create_customer(customer_id, "basic")
    server.admin.AdjustCredits(
        admin_pb2.AdjustCreditsRequest(
            customer_id=customer_id, delta=credits - 2500, reason="test", request_id=f"{customer_id}-adjust"
        )
    )


def headers_of(options: list[object]) -> dict[str, str]:
    return {option.header.key: option.header.value for option in options}  # type: ignore[attr-defined]


def error_info(response: external_auth_pb2.CheckResponse) -> error_details_pb2.ErrorInfo:
    info = error_details_pb2.ErrorInfo()
    assert response.status.details[0].Unpack(info)
    return info


def test_allowed_then_402_once_credits_run_out(
    server: RunningServer, authz: external_auth_pb2_grpc.AuthorizationStub
) -> None:
    customer_with(server, "envoy-a", 10)
    for n in range(10):
        response = authz.Check(check_request("POST", "/v1/contacts/42/email", {"x-customer-id": "envoy-a"}))
        assert response.status.code == code_pb2.OK
        upstream = headers_of(list(response.ok_response.headers))
        assert upstream["x-credits-charged"] == "1"
        assert upstream["x-credits-remaining"] == str(9 - n)
        assert upstream["x-creditgate-entry-id"]
        assert headers_of(list(response.ok_response.response_headers_to_add)) == upstream
    assert server.available("envoy-a") == 0
    denied = authz.Check(check_request("POST", "/v1/contacts/42/email", {"x-customer-id": "envoy-a"}))
    assert denied.status.code == code_pb2.RESOURCE_EXHAUSTED
    assert error_info(denied).reason == "INSUFFICIENT_CREDITS"
    assert denied.denied_response.status.code == 402
    assert headers_of(list(denied.denied_response.headers)) == {"content-type": "application/json"}
    assert json.loads(denied.denied_response.body) == {
        "reason": "INSUFFICIENT_CREDITS",
        "message": "Not enough credits: email_unlock costs 1 and 0 are available."
        " Buy credits (starter: 1,000 credits for 29.00 USD) or upgrade.",
        "upgrade": {"packages": ["starter", "growth", "pro"], "plans": ["basic", "professional"]},
    }
    debits = [entry for entry in server.ledger("envoy-a") if entry.kind == admin_pb2.LEDGER_ENTRY_KIND_DEBIT]
    assert sum(entry.credits_delta for entry in debits) == -10


def test_a_retry_with_the_same_request_id_is_charged_once(
    server: RunningServer, authz: external_auth_pb2_grpc.AuthorizationStub
) -> None:
    customer_with(server, "envoy-b", 100)
    request = check_request(
        "POST",
        "/v1/contacts/9/mobile",
        {"x-customer-id": "envoy-b", "x-quality": "standard", "x-request-id": "envoy-retry-1"},
    )
    first, again = authz.Check(request), authz.Check(request)
    assert headers_of(list(first.ok_response.headers)) == headers_of(list(again.ok_response.headers))
    assert headers_of(list(first.ok_response.headers))["x-credits-charged"] == "5"
    assert server.available("envoy-b") == 95


def test_a_cap_is_429_with_retry_after(server: RunningServer, authz: external_auth_pb2_grpc.AuthorizationStub) -> None:
    server.create_customer("envoy-c", "basic")
    for n in range(250):
        assert server.debit("envoy-c", "email_send", request_id=f"envoy-send-{n}", mailbox="ops").allowed
    capped = authz.Check(check_request("POST", "/v1/mailboxes/ops/send", {"x-customer-id": "envoy-c"}))
    assert capped.status.code == code_pb2.RESOURCE_EXHAUSTED
    assert capped.denied_response.status.code == 429
    assert headers_of(list(capped.denied_response.headers)) == {
        "content-type": "application/json",
        "retry-after": "86400",
    }
    assert json.loads(capped.denied_response.body)["reason"] == "LIMIT_EXCEEDED"


def test_unmatched_allow_no_customer_401_and_context_extensions(
    server: RunningServer, authz: external_auth_pb2_grpc.AuthorizationStub
) -> None:
    customer_with(server, "envoy-d", 100)
    unmatched = authz.Check(check_request("GET", "/healthz", {"x-customer-id": "envoy-d"}))
    assert unmatched.status.code == code_pb2.OK
    assert list(unmatched.ok_response.headers) == []
    assert list(unmatched.ok_response.headers_to_remove) == [
        "x-credits-charged",
        "x-credits-remaining",
        "x-creditgate-entry-id",
    ]
    missing = authz.Check(check_request("POST", "/v1/contacts/42/email", {}))
    assert missing.status.code == code_pb2.UNAUTHENTICATED
    assert missing.denied_response.status.code == 401
    assert error_info(missing).reason == "CUSTOMER_MISSING"
    assert error_info(missing).metadata["field"] == "customer"
    # An Envoy route may name the feature itself (per-route context_extensions) instead of the routes file.
    named = authz.Check(
        check_request("POST", "/any/path", {"x-customer-id": "envoy-d"}, {"feature": "phone_reveal", "quantity": "2"})
    )
    assert headers_of(list(named.ok_response.headers))["x-credits-charged"] == "20"
    assert server.available("envoy-d") == 80


def test_bad_input_is_a_400_denial_and_a_fault_is_a_grpc_error(
    server: RunningServer, authz: external_auth_pb2_grpc.AuthorizationStub
) -> None:
    customer_with(server, "envoy-e", 100)
    bad = authz.Check(check_request("POST", "/v1/exports?count=lots", {"x-customer-id": "envoy-e"}))
    assert bad.status.code == code_pb2.INVALID_ARGUMENT
    assert bad.denied_response.status.code == 400
    assert error_info(bad).metadata["field"] == "quantity"
    assert server.available("envoy-e") == 100


def test_a_fault_is_a_grpc_error_so_envoys_failure_mode_decides(tmp_path: Path) -> None:
    redis_server = RedisServer(tmp_path / "redis")
    redis_server.start()
    server = start_server(redis_server.url, tmp_path, routes=EXAMPLE_ROUTES)
    try:
        customer_with(server, "envoy-f", 100)
        redis_server.stop()
        stub = external_auth_pb2_grpc.AuthorizationStub(server.channel)
        with pytest.raises(grpc.RpcError) as raised:
            stub.Check(check_request("POST", "/v1/contacts/1/email", {"x-customer-id": "envoy-f"}))
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        server.stop()


def test_routes_with_unmatched_deny_refuse_over_ext_authz(redis_server: RedisServer, tmp_path: Path) -> None:
    routes = tmp_path / "routes.yaml"
    routes.write_text(EXAMPLE_ROUTES.read_text().replace("unmatched: allow", "unmatched: deny"))
    server = start_server(redis_server.url, tmp_path, routes=routes)
    try:
        stub = external_auth_pb2_grpc.AuthorizationStub(server.channel)
        refused = stub.Check(check_request("GET", "/healthz", {"x-customer-id": "anyone"}))
        assert refused.status.code == code_pb2.PERMISSION_DENIED
        assert refused.denied_response.status.code == 403
        assert json.loads(refused.denied_response.body)["reason"] == "NO_ROUTE"
    finally:
        server.stop()

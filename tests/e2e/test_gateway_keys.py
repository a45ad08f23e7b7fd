"""With API keys, both front doors spend credits only for a key with the metering scope: ext_authz through the
gRPC interceptor (Envoy sends `authorization: Bearer <key>` as initial metadata), forward-auth in
x-creditgate-api-key (the original request's `authorization` is the client's). Without keys, only loopback."""

from __future__ import annotations

from pathlib import Path

import grpc
import httpx
import pytest
import redis
from creditgate.server.api.auth import hash_key, new_key, require_keys_off_loopback
from creditgate.server.clock import ManualClock, to_ms
from creditgate.server.errors import FailedPrecondition
from creditgate.server.settings import ApiKey, Settings
from creditgate.v1 import admin_pb2
from envoy.service.auth.v3 import attribute_context_pb2, external_auth_pb2, external_auth_pb2_grpc
from gateway_rig import EXAMPLE_ROUTES
from google.rpc import code_pb2
from harness import JAN_1, RedisServer, RunningServer, server_settings

METERING_KEY, ADMIN_KEY = new_key(), new_key()
KEYS = (
    ApiKey.model_validate({"name": "gateway", "sha256": hash_key(METERING_KEY), "scopes": ["metering"]}),
    ApiKey.model_validate({"name": "ops", "sha256": hash_key(ADMIN_KEY), "scopes": ["admin"]}),
)


def test_both_front_doors_need_a_metering_key(redis_server: RedisServer, tmp_path: Path) -> None:
    redis.Redis.from_url(redis_server.url).flushall()
    settings = server_settings(
        redis_server.url, tmp_path, api_keys=KEYS, routes=EXAMPLE_ROUTES, http_authz_listen="127.0.0.1:0"
    )
    server = RunningServer(settings, ManualClock(to_ms(JAN_1)))
    try:
        admin = (("authorization", f"Bearer {ADMIN_KEY}"),)
        server.admin.CreateCustomer(admin_pb2.CreateCustomerRequest(customer_id="keyed"), metadata=admin)
        server.admin.CreateSubscription(
            admin_pb2.CreateSubscriptionRequest(customer_id="keyed", plan="basic"), metadata=admin
        )
        http = attribute_context_pb2.AttributeContext.HttpRequest(
            method="POST", path="/v1/contacts/1/email", headers={"x-customer-id": "keyed"}
        )
        check = external_auth_pb2.CheckRequest(
            attributes=attribute_context_pb2.AttributeContext(
                request=attribute_context_pb2.AttributeContext.Request(http=http)
            )
        )
        stub = external_auth_pb2_grpc.AuthorizationStub(server.channel)
        with pytest.raises(grpc.RpcError) as missing:
            stub.Check(check)
        assert missing.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as wrong_scope:
            stub.Check(check, metadata=admin)
        assert wrong_scope.value.code() == grpc.StatusCode.PERMISSION_DENIED
        allowed = stub.Check(check, metadata=(("authorization", f"Bearer {METERING_KEY}"),))
        assert allowed.status.code == code_pb2.OK

        assert server.app.front_doors is not None and server.app.front_doors.forward_auth is not None
        url = f"http://127.0.0.1:{server.app.front_doors.forward_auth.port}/auth"
        original = {"x-original-method": "POST", "x-original-uri": "/v1/contacts/1/email", "x-customer-id": "keyed"}
        answers = [
            httpx.get(url, headers=original | extra)
            for extra in (
                {},
                {"x-creditgate-api-key": "cg_not-a-key"},
                {"x-creditgate-api-key": ADMIN_KEY},
                {"x-creditgate-api-key": METERING_KEY, "authorization": "Bearer the-clients-own"},
            )
        ]
        assert [(a.status_code, a.json()["reason"] if a.status_code != 200 else "") for a in answers] == [
            (401, "API_KEY_MISSING"),
            (401, "API_KEY_INVALID"),
            (403, "API_KEY_SCOPE"),
            (200, ""),
        ]
        assert answers[3].headers["x-credits-remaining"] == "2498"
    finally:
        server.stop()


def test_forward_auth_off_loopback_needs_keys(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, routes=EXAMPLE_ROUTES, http_authz_listen="0.0.0.0:8081")
    with pytest.raises(FailedPrecondition) as raised:
        require_keys_off_loopback(settings, ())
    assert raised.value.field == "http_authz_listen"
    require_keys_off_loopback(settings, KEYS)

"""API keys: MeteringService needs a key with the `metering` scope, AdminService one with `admin`; health and
reflection stay open. Keys are configured as SHA-256 hashes and compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc
import structlog
from creditgate.server.api.errors import to_status
from creditgate.server.errors import CreditgateError, FailedPrecondition, PermissionDenied, Unauthenticated
from creditgate.server.settings import ApiKey, Settings
from creditgate.v1 import admin_pb2, metering_pb2
from pydantic import TypeAdapter, ValidationError

log = structlog.get_logger(__name__)
SCOPE_OF_SERVICE = {
    metering_pb2.DESCRIPTOR.services_by_name["MeteringService"].full_name: "metering",
    admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name: "admin",
    # Envoy's ext_authz (api/gateway): it spends credits like CheckAndDebit.
    "envoy.service.auth.v3.Authorization": "metering",
}
KEY_PREFIX = "cg_"
BEARER = "bearer "

if TYPE_CHECKING:
    ServerInterceptor = grpc.aio.ServerInterceptor[Any, Any]
else:  # generic only in the type stubs
    ServerInterceptor = grpc.aio.ServerInterceptor


def new_key() -> str:
    """A fresh API key: 256 random bits, URL-safe."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def load_api_keys(settings: Settings) -> tuple[ApiKey, ...]:
    """The keys from settings plus those in api_keys_file."""
    if settings.api_keys_file is None:
        return settings.api_keys
    try:
        from_file = TypeAdapter(list[ApiKey]).validate_json(settings.api_keys_file.read_bytes())
    except (OSError, ValidationError) as exc:
        raise FailedPrecondition(
            f"cannot load API keys from {settings.api_keys_file}: {exc}", field="api_keys_file", reason="BAD_API_KEYS"
        ) from exc
    return (*settings.api_keys, *from_file)


def is_loopback(listen: str) -> bool:
    host = listen.rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def require_keys_off_loopback(settings: Settings, keys: tuple[ApiKey, ...]) -> None:
    """Without keys anyone who reaches the port could spend credits: only a loopback address may go without."""
    for field, listen in (("listen", settings.listen), ("http_authz_listen", settings.http_authz_listen)):
        if listen is not None and not keys and not is_loopback(listen):
            raise FailedPrecondition(
                f"refusing to listen on {listen} without API keys: anyone reaching it could spend credits. "
                "Set CREDITGATE_API_KEYS (make one with `creditgate keys new --scope metering`) "
                "or listen on 127.0.0.1 for development.",
                field=field,
                reason="API_KEYS_REQUIRED",
            )


def verify_key(keys: tuple[ApiKey, ...], presented: str, scope: str, field: str) -> ApiKey:
    """The configured key `presented` is, if it has `scope`; Unauthenticated or PermissionDenied otherwise."""
    digest = hash_key(presented)
    match: ApiKey | None = None
    for key in keys:  # every key is compared, so the time taken tells nothing about which matched
        if hmac.compare_digest(digest, key.sha256):
            match = key
    if match is None:
        raise Unauthenticated("the API key is not valid", field=field, reason="API_KEY_INVALID")
    if scope not in match.scopes:
        raise PermissionDenied(
            f"API key {match.name!r} lacks the {scope!r} scope this service needs",
            field=field,
            reason="API_KEY_SCOPE",
        )
    return match


class ApiKeyInterceptor(ServerInterceptor):
    """on_refusal(method, error, metadata) is told of each refused call (the call envelope counts and logs it)."""

    def __init__(self, keys: tuple[ApiKey, ...], on_refusal: Callable[[str, CreditgateError, Any], None]) -> None:
        self._keys = keys
        self._on_refusal = on_refusal

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        scope = SCOPE_OF_SERVICE.get(details.method.split("/")[1] if details.method.count("/") == 2 else "")
        if scope is None:
            return await continuation(details)
        try:
            self._check(details.invocation_metadata or (), scope)
        except (Unauthenticated, PermissionDenied) as exc:
            log.warning("auth_failed", rpc=details.method, reason=exc.reason)
            self._on_refusal(details.method, exc, details.invocation_metadata)
            return _refusing_handler(exc)
        return await continuation(details)

    def _check(self, metadata: Any, scope: str) -> None:
        header = next((value for key, value in metadata if key == "authorization"), None)
        if header is None:
            raise Unauthenticated(
                "an API key is required: send it as `authorization: Bearer <key>`",
                field="authorization",
                reason="API_KEY_MISSING",
            )
        presented = str(header)
        presented = presented[len(BEARER) :] if presented[: len(BEARER)].lower() == BEARER else ""
        verify_key(self._keys, presented, scope, "authorization")


def _refusing_handler(error: CreditgateError) -> grpc.RpcMethodHandler[Any, Any]:
    # The request is never decoded: a caller without credentials gets no parser time.
    async def refuse(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        await context.abort_with_status(to_status(error))  # type: ignore[attr-defined]  # grpc-stubs lags

    return grpc.unary_unary_rpc_method_handler(refuse)

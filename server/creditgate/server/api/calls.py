"""The envelope of every creditgate RPC: a request that does not decode is INVALID_ARGUMENT (not UNKNOWN), and
each call is timed, counted and logged once with its request_id and customer_id (never its metadata)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
import structlog
from creditgate.server.api.errors import answered_error, to_status
from creditgate.server.errors import InvalidArgument
from creditgate.server.ops.metrics import Metrics
from creditgate.v1 import admin_pb2, metering_pb2
from redis.exceptions import RedisError

log = structlog.get_logger("creditgate.rpc")
SERVICES = frozenset(
    (
        metering_pb2.DESCRIPTOR.services_by_name["MeteringService"].full_name,
        admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name,
    )
)
# Ids longer than this are invalid anyway; the log keeps a prefix, not 4 MB of someone's input.
LOG_VALUE_LIMIT = 128
QUIET_CODES = frozenset(
    code
    for code in grpc.StatusCode
    if code not in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNAVAILABLE)
)

if TYPE_CHECKING:
    ServerInterceptor = grpc.aio.ServerInterceptor[Any, Any]
else:  # generic only in the type stubs
    ServerInterceptor = grpc.aio.ServerInterceptor


@dataclass(frozen=True, slots=True)
class Undecodable:
    """What the request deserializer hands on when the bytes are not the request message."""

    error: str


class CallInterceptor(ServerInterceptor):
    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(details)
        _, service, rpc = (details.method or "").split("/", 2) if details.method.count("/") == 2 else ("", "", "")
        if handler is None or handler.unary_unary is None or service not in SERVICES:
            return handler  # health checks, reflection, unknown methods: grpc answers those itself
        behavior = handler.unary_unary
        decode = _guarded(handler.request_deserializer)
        header_request_id = next(
            (str(value) for key, value in details.invocation_metadata or () if key == "x-request-id"), ""
        )

        async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            request_id = _short(getattr(request, "request_id", "") or header_request_id) or uuid.uuid4().hex
            customer_id = _short(getattr(request, "customer_id", ""))
            with structlog.contextvars.bound_contextvars(rpc=rpc, request_id=request_id, customer_id=customer_id):
                return await self._observe(rpc, behavior, request, context)

        return grpc.unary_unary_rpc_method_handler(
            call, request_deserializer=decode, response_serializer=handler.response_serializer
        )

    async def _observe(
        self,
        rpc: str,
        behavior: Callable[[Any, Any], Awaitable[Any]],
        request: Any,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> Any:
        started = time.perf_counter()
        answered_error.set(None)
        response = None
        try:
            if isinstance(request, Undecodable):
                error = InvalidArgument(f"the request is not a valid {rpc} message: {request.error}", field="request")
                error.reason = "MALFORMED_REQUEST"
                answered_error.set(error)
                await context.abort_with_status(to_status(error))  # type: ignore[attr-defined]  # grpc-stubs lags
            response = await behavior(request, context)
            return response
        finally:
            seconds = time.perf_counter() - started
            self._record(rpc, request, response, context, seconds)

    def _record(
        self, rpc: str, request: Any, response: Any, context: grpc.aio.ServicerContext[Any, Any], seconds: float
    ) -> None:
        code = context.code() if response is None else grpc.StatusCode.OK
        code = code or grpc.StatusCode.UNKNOWN
        error = answered_error.get()
        self._metrics.rpcs.labels(rpc, code.name).inc()
        self._metrics.rpc_duration.labels(rpc).observe(seconds)
        if error is not None and isinstance(error.__cause__, RedisError):
            self._metrics.redis_errors.labels("rpc").inc()
        fields: dict[str, Any] = {"code": code.name, "duration_ms": round(seconds * 1000, 3)}
        if error is not None:
            fields["error_reason"] = error.reason
        if rpc == "CheckAndDebit" and response is not None:
            outcome = _outcome(response)
            fields.update(feature=request.feature, outcome=outcome)
            if not request.dry_run:
                self._metrics.decisions.labels(request.feature, outcome).inc()
        if rpc == "CheckAndDebitBatch" and response is not None:
            for item, result in zip(request.items, response.results, strict=False):
                if result.HasField("decision") and not item.dry_run:
                    self._metrics.decisions.labels(item.feature, _outcome(result.decision)).inc()
        if code in QUIET_CODES:
            log.info("rpc", **fields)
        else:
            log.warning("rpc", **fields)


def _outcome(response: metering_pb2.CheckAndDebitResponse) -> str:
    if response.allowed:
        return "allowed"
    return metering_pb2.DenyReason.Name(response.deny_reason).removeprefix("DENY_REASON_").lower()


def _guarded(deserialize: Callable[[bytes], Any] | None) -> Callable[[bytes], Any]:
    def decode(data: bytes) -> Any:
        if deserialize is None:
            return data
        try:
            return deserialize(data)
        except Exception as exc:  # protobuf's DecodeError, or anything a parser may raise on hostile bytes
            return Undecodable(type(exc).__name__)

    return decode


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else ""
    return text if len(text) <= LOG_VALUE_LIMIT else text[:LOG_VALUE_LIMIT] + "…"

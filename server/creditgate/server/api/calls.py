"""The envelope of every creditgate RPC, put around each servicer method once when the server is built: a request
that does not decode is INVALID_ARGUMENT (not UNKNOWN); each call is timed and counted; failed calls are logged
with their request_id and customer_id (never metadata), successful ones too when log_calls is "all".

Built once rather than as a grpc interceptor because an interceptor runs again for every call; at thousands of
decisions a second the per-call wrapping, context binding and log line cost more CPU than the decision."""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import structlog
from creditgate.server.api.errors import answered_error, to_status
from creditgate.server.errors import CreditgateError, InvalidArgument
from creditgate.server.ops.metrics import Metrics
from creditgate.v1 import metering_pb2
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message_factory import GetMessageClass
from redis.exceptions import RedisError

log = structlog.get_logger("creditgate.rpc")
# Ids longer than this are invalid anyway; the log keeps a prefix, not 4 MB of someone's input.
LOG_VALUE_LIMIT = 128
# Codes that are the caller's doing are logged at info; the server's own failures at warning.
LOUD_CODES = frozenset((grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNAVAILABLE))
Behavior = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class Undecodable:
    """What the request deserializer hands on when the bytes are not the request message."""

    error: str


class CallEnvelope:
    def __init__(self, metrics: Metrics, log_successes: bool) -> None:
        self._metrics = metrics
        self._log_successes = log_successes
        self._decision_counters: dict[tuple[str, str], Any] = {}

    def register(self, server: grpc.aio.Server, service: ServiceDescriptor, servicer: Any) -> None:
        """Serves every method of `service` from the servicer's method of the same name, inside the envelope."""
        handlers = {}
        for method in service.methods:
            request_class = GetMessageClass(method.input_type)
            response_class = GetMessageClass(method.output_type)
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                self._wrap(method.name, getattr(servicer, method.name)),
                request_deserializer=_guarded(request_class.FromString),
                response_serializer=response_class.SerializeToString,
            )
        # Generic only: registered methods cost every call (see api/grpc_server.py).
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))

    def refused(self, method: str, error: CreditgateError, metadata: Any) -> None:
        """Counts and logs a call refused before its request was read (see api/auth.py)."""
        rpc = method.rpartition("/")[2]
        code = _grpc_code(error)
        self._metrics.rpcs.labels(rpc, code.name).inc()
        header_id = next((str(value) for key, value in metadata or () if key == "x-request-id"), "")
        self._log(
            code,
            rpc=rpc,
            request_id=_short(header_id) or uuid.uuid4().hex,
            customer_id="",
            duration_ms=0.0,
            error_reason=error.reason,
        )

    def _wrap(self, rpc: str, behavior: Behavior) -> Behavior:
        ok_calls = self._metrics.rpcs.labels(rpc, "OK")
        duration = self._metrics.rpc_duration.labels(rpc)
        count_decisions = {
            "CheckAndDebit": self._count_decision,
            "CheckAndDebitBatch": self._count_batch,
        }.get(rpc)

        async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            started = time.perf_counter()
            response = None
            try:
                if type(request) is Undecodable:
                    await _refuse_undecodable(rpc, request, context)
                response = await behavior(request, context)
                return response
            finally:
                seconds = time.perf_counter() - started
                duration.observe(seconds)
                if response is not None:
                    ok_calls.inc()
                    if count_decisions is not None:
                        count_decisions(request, response)
                    if self._log_successes:
                        self._log_call(rpc, request, response, context, grpc.StatusCode.OK, seconds)
                else:
                    self._record_failure(rpc, request, context, seconds)

        return call

    def _record_failure(
        self, rpc: str, request: Any, context: grpc.aio.ServicerContext[Any, Any], seconds: float
    ) -> None:
        code = context.code() or grpc.StatusCode.UNKNOWN
        self._metrics.rpcs.labels(rpc, code.name).inc()
        error = answered_error.get()
        if error is not None and isinstance(error.__cause__, RedisError):
            self._metrics.redis_errors.labels("rpc").inc()
        self._log_call(rpc, request, None, context, code, seconds, error)

    def _log_call(
        self,
        rpc: str,
        request: Any,
        response: Any,
        context: grpc.aio.ServicerContext[Any, Any],
        code: grpc.StatusCode,
        seconds: float,
        error: CreditgateError | None = None,
    ) -> None:
        request_id = _short(getattr(request, "request_id", "")) or _short(
            next((str(value) for key, value in context.invocation_metadata() or () if key == "x-request-id"), "")
        )
        fields: dict[str, Any] = {
            "rpc": rpc,
            "request_id": request_id or uuid.uuid4().hex,
            "customer_id": _short(getattr(request, "customer_id", "")),
            "duration_ms": round(seconds * 1000, 3),
        }
        if error is not None:
            fields["error_reason"] = error.reason
        if rpc == "CheckAndDebit" and response is not None:
            fields.update(feature=request.feature, outcome=_outcome(response))
        self._log(code, **fields)

    def _log(self, code: grpc.StatusCode, **fields: Any) -> None:
        if code in LOUD_CODES:
            log.warning("rpc", code=code.name, **fields)
        else:
            log.info("rpc", code=code.name, **fields)

    def _count_decision(self, request: Any, response: Any) -> None:
        if not request.dry_run:
            self._decision_counter(request.feature, _outcome(response)).inc()

    def _count_batch(self, request: Any, response: Any) -> None:
        counted = Counter(
            (item.feature, _outcome(result.decision))
            for item, result in zip(request.items, response.results, strict=False)
            if result.HasField("decision") and not item.dry_run
        )
        for (feature, outcome), count in counted.items():
            self._decision_counter(feature, outcome).inc(count)

    def _decision_counter(self, feature: str, outcome: str) -> Any:
        key = (feature, outcome)
        counter = self._decision_counters.get(key)
        if counter is None:
            counter = self._decision_counters[key] = self._metrics.decisions.labels(*key)
        return counter


async def _refuse_undecodable(rpc: str, request: Undecodable, context: grpc.aio.ServicerContext[Any, Any]) -> None:
    error = InvalidArgument(f"the request is not a valid {rpc} message: {request.error}", field="request")
    error.reason = "MALFORMED_REQUEST"
    answered_error.set(error)
    await context.abort_with_status(to_status(error))  # type: ignore[attr-defined]  # grpc-stubs lags


def _grpc_code(error: CreditgateError) -> grpc.StatusCode:
    number = to_status(error).code
    return number if isinstance(number, grpc.StatusCode) else grpc.StatusCode.UNKNOWN


def _outcome(response: metering_pb2.CheckAndDebitResponse) -> str:
    if response.allowed:
        return "allowed"
    return metering_pb2.DenyReason.Name(response.deny_reason).removeprefix("DENY_REASON_").lower()


def _guarded(deserialize: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def decode(data: bytes) -> Any:
        try:
            return deserialize(data)
        except Exception as exc:  # protobuf's DecodeError, or anything a parser may raise on hostile bytes
            return Undecodable(type(exc).__name__)

    return decode


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else ""
    return text if len(text) <= LOG_VALUE_LIMIT else text[:LOG_VALUE_LIMIT] + "…"

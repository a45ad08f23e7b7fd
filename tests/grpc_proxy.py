"""A gRPC proxy in front of the real server that can lose answers: the server acts, the client sees UNAVAILABLE."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpc

# grpc-stubs makes the handler generic; at runtime it is not.
if TYPE_CHECKING:
    BytesHandler = grpc.GenericRpcHandler[bytes, bytes]
else:
    BytesHandler = grpc.GenericRpcHandler
# Headers gRPC sets itself; everything else the client sent (authorization, ...) is passed on.
OWN_HEADERS = ("user-agent", "grpc-")


@dataclass(frozen=True)
class Attempt:
    method: str
    request: bytes
    peer: str
    metadata: tuple[tuple[str, str | bytes], ...]


@dataclass(frozen=True)
class UpstreamStatus(grpc.Status):
    """The upstream's failure, passed on unchanged (code, message and the ErrorInfo in the trailers)."""

    code: grpc.StatusCode
    details: str
    trailing_metadata: tuple[tuple[str, str | bytes], ...]


class LossyProxy(BytesHandler):
    """Forwards every unary call as raw bytes to the upstream server; the first `answers_to_lose` calls are
    carried out upstream but answer UNAVAILABLE, as when a connection drops after the server acted. With
    `hold_seconds`, every call waits that long before it is forwarded (a slow network, for deadlines); with
    `credentials`, clients reach it over TLS."""

    def __init__(
        self,
        upstream_port: int,
        answers_to_lose: int = 0,
        hold_seconds: float = 0,
        credentials: grpc.ServerCredentials | None = None,
    ) -> None:
        self.answers_to_lose = answers_to_lose
        self.hold_seconds = hold_seconds
        self.attempts: list[Attempt] = []
        self._lock = threading.Lock()
        self._upstream = grpc.insecure_channel(f"127.0.0.1:{upstream_port}")
        self._server = grpc.server(ThreadPoolExecutor(max_workers=4), handlers=[self])
        if credentials is None:
            self.port = self._server.add_insecure_port("127.0.0.1:0")
        else:
            self.port = self._server.add_secure_port("127.0.0.1:0", credentials)
        self._server.start()

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler[bytes, bytes] | None:
        method = handler_call_details.method

        def forward(request: bytes, context: grpc.ServicerContext) -> bytes:
            return self._forward(method, request, context)

        return grpc.unary_unary_rpc_method_handler(forward)

    def _forward(self, method: str, request: bytes, context: grpc.ServicerContext) -> bytes:
        metadata = tuple(
            (key, value) for key, value in context.invocation_metadata() if not key.startswith(OWN_HEADERS)
        )
        with self._lock:
            self.attempts.append(Attempt(method, request, context.peer(), metadata))
            lose_answer = self.answers_to_lose > 0
            self.answers_to_lose -= int(lose_answer)
        if self.hold_seconds:
            time.sleep(self.hold_seconds)
        call: grpc.UnaryUnaryMultiCallable[bytes, bytes] = self._upstream.unary_unary(method, None, None)
        try:
            response = call(request, timeout=context.time_remaining(), metadata=metadata)
        except grpc.RpcError as exc:
            failed: grpc.Call = exc  # type: ignore[assignment]  # a failed unary call is both
            context.abort_with_status(
                UpstreamStatus(failed.code(), failed.details(), tuple(failed.trailing_metadata() or ()))
            )
        if lose_answer:
            context.abort(grpc.StatusCode.UNAVAILABLE, "proxy lost the answer")
        return response

    def requests_to(self, method: str) -> list[bytes]:
        return [attempt.request for attempt in self.attempts if attempt.method.endswith(f"/{method}")]

    def stop(self) -> None:
        self._server.stop(grace=None)
        self._upstream.close()

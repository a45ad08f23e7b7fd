"""Turns our errors into gRPC statuses with a google.rpc.ErrorInfo; nothing leaves as UNKNOWN."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import Any, TypeVar

import grpc
import structlog
from creditgate.server.errors import (
    AlreadyExists,
    CreditgateError,
    FailedPrecondition,
    InternalError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

DOMAIN = "creditgate.v1"
log = structlog.get_logger(__name__)
CODES: list[tuple[type[CreditgateError], int]] = [
    (InvalidArgument, code_pb2.INVALID_ARGUMENT),
    (NotFound, code_pb2.NOT_FOUND),
    (AlreadyExists, code_pb2.ALREADY_EXISTS),
    (FailedPrecondition, code_pb2.FAILED_PRECONDITION),
    (Unavailable, code_pb2.UNAVAILABLE),
    (Unauthenticated, code_pb2.UNAUTHENTICATED),
    (PermissionDenied, code_pb2.PERMISSION_DENIED),
    (InternalError, code_pb2.INTERNAL),
]

# The error the current RPC answers with, so the call envelope (api/calls.py) can count and log its cause.
answered_error: ContextVar[CreditgateError | None] = ContextVar("answered_error", default=None)


def status_code(error: CreditgateError) -> int:
    """The google.rpc.Code number an error is answered with."""
    return next((code for kind, code in CODES if isinstance(error, kind)), code_pb2.INTERNAL)


def to_status(error: CreditgateError) -> grpc.Status:
    code = status_code(error)
    info = error_details_pb2.ErrorInfo(reason=error.reason, domain=DOMAIN)
    if error.field:
        info.metadata["field"] = error.field
    detail = any_pb2.Any()
    detail.Pack(info)
    status: grpc.Status = rpc_status.to_status(status_pb2.Status(code=code, message=error.message, details=[detail]))
    return status


Handler = TypeVar("Handler", bound=Callable[..., Awaitable[Any]])


def translated(method: Handler) -> Handler:
    """Wraps a servicer method so our errors, and anything unexpected, become proper statuses."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        try:
            return await method(self, request, context)
        except CreditgateError as exc:
            error = exc
        except Exception as exc:
            log.exception("unexpected_error", rpc=method.__name__)
            error = InternalError(f"internal error: {type(exc).__name__}")
            error.__cause__ = exc
        answered_error.set(error)
        await context.abort_with_status(to_status(error))  # type: ignore[attr-defined]  # grpc-stubs lags

    return wrapper  # type: ignore[return-value]

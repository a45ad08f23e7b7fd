"""Exceptions the clients raise, built from the server's status and its google.rpc.ErrorInfo.

A denial (not entitled, limit exceeded, insufficient credits) is a result with `allowed == False`, never one of
these: exceptions are for bad input, unknown names, credentials and faults.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import cast

import grpc
from google.rpc import error_details_pb2, status_pb2

STATUS_DETAILS_KEY = "grpc-status-details-bin"


class CreditgateError(Exception):
    """Base of every error the clients raise: the status code, and the ErrorInfo's reason and field."""

    def __init__(
        self,
        message: str,
        *,
        code: grpc.StatusCode,
        reason: str = "",
        field: str = "",
        domain: str = "",
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.reason = reason or code.name
        self.field = field
        self.domain = domain
        self.metadata: Mapping[str, str] = MappingProxyType(dict(metadata or {}))

    def __str__(self) -> str:
        where = f" (field {self.field})" if self.field else ""
        return f"{self.reason}{where}: {self.message}"


class InvalidArgument(CreditgateError):
    """The request is malformed or out of range; `field` names the request field at fault."""


class NotFound(CreditgateError):
    """A customer, plan, feature, package or hold does not exist."""


class CustomerNotFound(NotFound):
    """The customer_id is unknown: create the customer first."""


class AlreadyExists(CreditgateError):
    """The thing being created exists already."""


class RequestIdReused(AlreadyExists):
    """The request_id was used before for a request with different content."""


class FailedPrecondition(CreditgateError):
    """The system is not in the state the call needs (no catalog, not subscribed, not enough credits to remove)."""


class Unauthenticated(CreditgateError):
    """No API key, or an unknown one."""


class PermissionDenied(CreditgateError):
    """The API key lacks the scope this service needs."""


class ResourceExhausted(CreditgateError):
    """A size or rate limit was hit."""


class Unavailable(CreditgateError):
    """The server or one of its stores cannot be reached; the clients retried with the same request_id."""


class DeadlineExceeded(CreditgateError):
    """The call did not finish within its timeout."""


class InternalError(CreditgateError):
    """The server failed unexpectedly."""


ERRORS_BY_CODE: Mapping[grpc.StatusCode, type[CreditgateError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.INTERNAL: InternalError,
}
# Reasons precise enough that callers branch on them get their own class.
ERRORS_BY_REASON: Mapping[str, type[CreditgateError]] = {
    "REQUEST_ID_REUSED": RequestIdReused,
    "CUSTOMER_NOT_FOUND": CustomerNotFound,
}


def error_info(trailing_metadata: Iterable[tuple[str, str | bytes]]) -> error_details_pb2.ErrorInfo | None:
    """The ErrorInfo packed in a status's details, if the server sent one."""
    for key, value in trailing_metadata:
        if key != STATUS_DETAILS_KEY or not isinstance(value, bytes):
            continue
        status = status_pb2.Status.FromString(value)
        for detail in status.details:
            info = error_details_pb2.ErrorInfo()
            if detail.Unpack(info):
                return info
    return None


def error_from_rpc(error: grpc.RpcError) -> CreditgateError:
    """Our exception for a failed call (sync or asyncio): the reason picks the class, else the status code."""
    call = cast(grpc.Call, error)
    code = call.code()
    # Both the sync and the asyncio metadata iterate as (key, value) pairs.
    trailing = cast(Iterable[tuple[str, str | bytes]], call.trailing_metadata() or ())
    info = error_info(trailing)
    reason = info.reason if info else ""
    kind = ERRORS_BY_REASON.get(reason) or ERRORS_BY_CODE.get(code, CreditgateError)
    metadata = dict(info.metadata) if info else {}
    return kind(
        call.details() or code.name,
        code=code,
        reason=reason,
        field=metadata.get("field", ""),
        domain=info.domain if info else "",
        metadata=metadata,
    )

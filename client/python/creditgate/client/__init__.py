"""creditgate's Python client: `Client` (blocking) and `AsyncClient` (asyncio), one method per RPC.

Results are the creditgate.v1 proto messages (typed by their .pyi stubs). A denial is a result
(`allowed == False`, with `deny_reason`), never an exception; RPC errors raise a `CreditgateError` subclass
carrying the server's ErrorInfo `reason` and `field`.
"""

from creditgate.client.aio import AsyncClient
from creditgate.client.calls import NO_RETRY, RetryPolicy
from creditgate.client.errors import (
    AlreadyExists,
    CreditgateError,
    CustomerNotFound,
    DeadlineExceeded,
    FailedPrecondition,
    InternalError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    RequestIdReused,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from creditgate.client.sync import Client
from creditgate.v1.admin_pb2 import LedgerEntryKind, SubscriptionStatus
from creditgate.v1.metering_pb2 import BucketSource, DenyReason

__all__ = [
    "NO_RETRY",
    "AlreadyExists",
    "AsyncClient",
    "BucketSource",
    "Client",
    "CreditgateError",
    "CustomerNotFound",
    "DeadlineExceeded",
    "DenyReason",
    "FailedPrecondition",
    "InternalError",
    "InvalidArgument",
    "LedgerEntryKind",
    "NotFound",
    "PermissionDenied",
    "RequestIdReused",
    "ResourceExhausted",
    "RetryPolicy",
    "SubscriptionStatus",
    "Unauthenticated",
    "Unavailable",
]

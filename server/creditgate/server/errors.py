"""The one error hierarchy: adapters raise these, api/errors.py turns them into gRPC statuses."""

from __future__ import annotations


class CreditgateError(Exception):
    """Base of every error the server answers with; `reason` becomes the ErrorInfo reason."""

    reason = "INTERNAL"

    def __init__(self, message: str, *, field: str = "", reason: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        if reason is not None:
            self.reason = reason


class InvalidArgument(CreditgateError):
    reason = "INVALID_ARGUMENT"


class NotFound(CreditgateError):
    reason = "NOT_FOUND"


class AlreadyExists(CreditgateError):
    reason = "ALREADY_EXISTS"


class FailedPrecondition(CreditgateError):
    reason = "FAILED_PRECONDITION"


class NotSubscribed(FailedPrecondition):
    """A customer without a running subscription, also one a concurrent call canceled while this one ran."""

    reason = "NOT_SUBSCRIBED"

    def __init__(self, customer_id: str, message: str = "has no running subscription") -> None:
        super().__init__(f"customer {customer_id!r} {message}", field="customer_id")


class Unavailable(CreditgateError):
    """A dependency (Redis, the durable store) cannot be reached; safe to retry with the same request_id."""

    reason = "UNAVAILABLE"


class Unauthenticated(CreditgateError):
    """No API key, or one the server does not know."""

    reason = "UNAUTHENTICATED"


class PermissionDenied(CreditgateError):
    """A known API key without the scope the RPC needs."""

    reason = "PERMISSION_DENIED"


class InternalError(CreditgateError):
    reason = "INTERNAL"


class RequestIdReused(AlreadyExists):
    reason = "REQUEST_ID_REUSED"

    def __init__(self) -> None:
        super().__init__("request_id was already used for a different request", field="request_id")

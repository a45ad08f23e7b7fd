"""What the sync and asyncio clients share: request_id filling, call metadata, deadlines and the retry policy."""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import grpc
from creditgate.client.errors import CreditgateError
from google.protobuf import duration_pb2, timestamp_pb2
from google.protobuf.message import Message
from grpc import aio

REQUEST_ID_FIELD = "request_id"
DEFAULT_TARGET = "127.0.0.1:50051"
DEFAULT_TIMEOUT_SECONDS = 5.0
RETRYABLE_CODES = frozenset({grpc.StatusCode.UNAVAILABLE})
Metadata = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class RetryPolicy:
    """Retries on UNAVAILABLE with exponential backoff and jitter, within the call's deadline."""

    max_attempts: int = 5
    initial_backoff_seconds: float = 0.05
    max_backoff_seconds: float = 2.0
    multiplier: float = 2.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")

    def backoff_seconds(self, attempt: int) -> float:
        """The pause after the given failed attempt (1-based): half the exponential step plus up to as much jitter."""
        step = min(self.max_backoff_seconds, self.initial_backoff_seconds * self.multiplier ** (attempt - 1))
        return step / 2 + random.uniform(0, step / 2)


NO_RETRY = RetryPolicy(max_attempts=1)


def takes_request_id(request: Message) -> bool:
    return REQUEST_ID_FIELD in request.DESCRIPTOR.fields_by_name


def fill_request_id(request: Message) -> bool:
    """Give a request that takes a request_id a fresh uuid4 when the caller gave none, once, before the first
    attempt: every retry then sends the same id, so the server charges at most once. A batch's items (a repeated
    field of such requests) each get their own. True when the request, or every item of it, now carries an id.
    """
    if takes_request_id(request):
        if not getattr(request, REQUEST_ID_FIELD):
            setattr(request, REQUEST_ID_FIELD, str(uuid.uuid4()))
        return True
    items = [
        item
        for field in request.DESCRIPTOR.fields
        if field.message_type is not None and REQUEST_ID_FIELD in field.message_type.fields_by_name
        for item in (getattr(request, field.name) if field.is_repeated else [])
    ]
    for item in items:
        fill_request_id(item)
    return bool(items)


def call_metadata(api_key: str | None, metadata: Sequence[tuple[str, str]]) -> Metadata:
    """The metadata sent with every call: the caller's pairs, then `authorization: Bearer <api_key>` if given."""
    pairs = tuple((key.lower(), value) for key, value in metadata)
    if api_key:
        pairs += (("authorization", f"Bearer {api_key}"),)
    return pairs


def open_channel(
    target: str, credentials: grpc.ChannelCredentials | None, options: Sequence[tuple[str, str | int]]
) -> grpc.Channel:
    if credentials is None:
        return grpc.insecure_channel(target, options=list(options))
    return grpc.secure_channel(target, credentials, options=list(options))


class Deadline:
    """One call's time budget, shared by all its attempts and the pauses between them."""

    def __init__(self, timeout_seconds: float) -> None:
        if timeout_seconds <= 0:
            raise ValueError("timeout must be positive")
        self.expires_at = time.monotonic() + timeout_seconds

    def remaining(self) -> float:
        return max(0.0, self.expires_at - time.monotonic())


def pause_before_retry(
    policy: RetryPolicy, attempt: int, error: CreditgateError, deadline: Deadline, retry_safe: bool
) -> float | None:
    """Seconds to wait before the next attempt, or None when the error is final."""
    if not retry_safe or error.code not in RETRYABLE_CODES or attempt >= policy.max_attempts:
        return None
    pause = policy.backoff_seconds(attempt)
    return pause if pause < deadline.remaining() else None


def timestamp(moment: datetime | None) -> timestamp_pb2.Timestamp | None:
    """A proto Timestamp for an aware datetime (naive ones are refused: the server works in UTC)."""
    if moment is None:
        return None
    if moment.tzinfo is None:
        raise ValueError("datetime must be timezone-aware")
    value = timestamp_pb2.Timestamp()
    value.FromDatetime(moment)
    return value


def duration(span: timedelta | None) -> duration_pb2.Duration | None:
    if span is None:
        return None
    value = duration_pb2.Duration()
    value.FromTimedelta(span)
    return value


def open_aio_channel(
    target: str, credentials: grpc.ChannelCredentials | None, options: Sequence[tuple[str, str | int]]
) -> aio.Channel:
    if credentials is None:
        return aio.insecure_channel(target, options=list(options))
    return aio.secure_channel(target, credentials, options=list(options))

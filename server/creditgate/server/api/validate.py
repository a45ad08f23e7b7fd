"""Input checks for every RPC: sizes, ranges and shapes, each naming the field it rejects."""

from __future__ import annotations

import re

from creditgate.server.errors import InvalidArgument
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@+-]{0,127}$")
MAX_QUANTITY = 1_000_000
MAX_CREDITS = 1_000_000_000
MAX_DIMENSIONS = 16
MAX_NAME = 256
MAX_METADATA = 32
MAX_TEXT = 512


def identifier(value: str, field: str) -> str:
    if not value:
        raise InvalidArgument(f"{field} is required", field=field)
    if not ID_PATTERN.match(value):
        raise InvalidArgument(
            f"{field} must be 1 to 128 characters of A-Z a-z 0-9 . _ - : @ + (starting with a letter or digit)",
            field=field,
        )
    return value


def optional_identifier(value: str, field: str) -> str:
    return identifier(value, field) if value else ""


def key(value: str, field: str) -> str:
    """A catalog key (feature, plan, package): validated for shape; existence is the catalog's to say."""
    if not value:
        raise InvalidArgument(f"{field} is required", field=field)
    if len(value) > 64:
        raise InvalidArgument(f"{field} must be at most 64 characters", field=field)
    return value


def quantity(value: int | None) -> int:
    if value is None:
        return 1
    if not 1 <= value <= MAX_QUANTITY:
        raise InvalidArgument(f"quantity must be between 1 and {MAX_QUANTITY:,}, got {value}", field="quantity")
    return value


def dimensions(values: dict[str, str]) -> dict[str, str]:
    if len(values) > MAX_DIMENSIONS:
        raise InvalidArgument(f"dimensions may hold at most {MAX_DIMENSIONS} entries", field="dimensions")
    return dict(values)


def text(value: str, field: str, *, limit: int = MAX_TEXT, required: bool = False) -> str:
    if required and not value.strip():
        raise InvalidArgument(f"{field} is required", field=field)
    if len(value) > limit:
        raise InvalidArgument(f"{field} must be at most {limit} characters", field=field)
    return value


def metadata(values: dict[str, str]) -> dict[str, str]:
    if len(values) > MAX_METADATA:
        raise InvalidArgument(f"metadata may hold at most {MAX_METADATA} entries", field="metadata")
    for name, value in values.items():
        text(name, "metadata key", limit=64, required=True)
        text(value, f"metadata[{name}]")
    return dict(values)


def credits(value: int, field: str, *, allow_negative: bool = False) -> int:
    low = -MAX_CREDITS if allow_negative else 1
    if value == 0 or not low <= value <= MAX_CREDITS:
        span = f"between -{MAX_CREDITS:,} and {MAX_CREDITS:,}, not 0" if allow_negative else f"1 to {MAX_CREDITS:,}"
        raise InvalidArgument(f"{field} must be {span}, got {value}", field=field)
    return value


def days(value: int, field: str) -> int:
    if not 0 <= value <= 36_500:
        raise InvalidArgument(f"{field} must be between 0 and 36,500", field=field)
    return value


def page_size(value: int) -> int:
    if value == 0:
        return 100
    if not 1 <= value <= 1000:
        raise InvalidArgument("page_size must be between 1 and 1,000 (0 means 100)", field="page_size")
    return value


def ttl_seconds(value: float | None, *, default: int, maximum: int) -> int:
    if value is None:
        return default
    if not 1 <= value <= maximum or value != int(value):
        raise InvalidArgument(f"ttl must be whole seconds from 1 to {maximum:,}", field="ttl")
    return int(value)


def reservation_id(value: str) -> str:
    customer_id, slash, hold_id = value.rpartition("/")
    if not slash or not ID_PATTERN.match(customer_id) or not re.fullmatch(r"h[0-9]{1,18}", hold_id):
        raise InvalidArgument(
            "reservation_id must be an id Reserve returned (customer_id/h<n>)", field="reservation_id"
        )
    return value


def commit_quantity(value: int | None) -> int | None:
    if value is None:
        return None
    if not 0 <= value <= MAX_QUANTITY:
        raise InvalidArgument(f"quantity must be between 0 and {MAX_QUANTITY:,}, got {value}", field="quantity")
    return value


# A subscription may start from 2000 to 2100 (UTC): outside, it is a mistake, and near year 9999 dates overflow.
MIN_TIME_SECONDS = 946_684_800
MAX_TIME_SECONDS = 4_102_444_800
# google.protobuf.Duration's own limits (about 10,000 years).
MAX_DURATION_SECONDS = 315_576_000_000


def timestamp_ms(value: Timestamp, field: str) -> int:
    if not 0 <= value.nanos <= 999_999_999 or not MIN_TIME_SECONDS <= value.seconds < MAX_TIME_SECONDS:
        raise InvalidArgument(f"{field} must be a valid time from 2000-01-01 to 2100-01-01 (UTC)", field=field)
    return int(value.ToMilliseconds())


def duration_seconds(value: Duration, field: str) -> float:
    nanos_agree = value.nanos == 0 or value.seconds == 0 or (value.nanos > 0) == (value.seconds > 0)
    if not abs(value.nanos) <= 999_999_999 or not abs(value.seconds) <= MAX_DURATION_SECONDS or not nanos_agree:
        raise InvalidArgument(f"{field} is not a valid duration", field=field)
    return float(value.ToTimedelta().total_seconds())

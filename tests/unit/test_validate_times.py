"""Timestamps and durations from requests: the fuzzer found that invalid ones reached protobuf's converters and
answered INTERNAL; they are INVALID_ARGUMENT naming the field."""

from __future__ import annotations

import pytest
from creditgate.server.api import validate
from creditgate.server.errors import InvalidArgument
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

# (seconds, nanos, milliseconds or None when refused)
TIMESTAMPS = [
    (1_798_761_600, 0, 1_798_761_600_000),  # 2027-01-01
    (1_798_761_600, 999_999_999, 1_798_761_600_999),
    (946_684_800, 0, 946_684_800_000),  # 2000-01-01, the first accepted
    (946_684_799, 0, None),
    (4_102_444_799, 0, 4_102_444_799_000),
    (4_102_444_800, 0, None),  # 2100-01-01
    (1_798_761_600, 1_000_000_000, None),
    (1_798_761_600, -1, None),
    (2**63 - 1, 0, None),
    (-(2**63), 0, None),
]
# (seconds, nanos, total seconds or None when refused)
DURATIONS = [
    (300, 0, 300.0),
    (1, 500_000_000, 1.5),
    (-1, -500_000_000, -1.5),
    (1, -500_000_000, None),  # signs disagree
    (0, 1_000_000_000, None),
    (315_576_000_000, 0, 315_576_000_000.0),
    (315_576_000_001, 0, None),
    (2**63 - 1, 0, None),
]


@pytest.mark.parametrize(("seconds", "nanos", "expected"), TIMESTAMPS)
def test_timestamp_ms(seconds: int, nanos: int, expected: int | None) -> None:
    stamp = Timestamp(seconds=seconds, nanos=nanos)
    if expected is None:
        with pytest.raises(InvalidArgument) as raised:
            validate.timestamp_ms(stamp, "start_time")
        assert raised.value.field == "start_time"
    else:
        assert validate.timestamp_ms(stamp, "start_time") == expected


@pytest.mark.parametrize(("seconds", "nanos", "expected"), DURATIONS)
def test_duration_seconds(seconds: int, nanos: int, expected: float | None) -> None:
    duration = Duration(seconds=seconds, nanos=nanos)
    if expected is None:
        with pytest.raises(InvalidArgument) as raised:
            validate.duration_seconds(duration, "ttl")
        assert raised.value.field == "ttl"
    else:
        assert validate.duration_seconds(duration, "ttl") == expected

"""The clock the server decides with; injected so tests and simulations control time."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    def now_ms(self) -> int:
        """Milliseconds since the Unix epoch, UTC."""
        ...


class SystemClock:
    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000


class ManualClock:
    """A clock that only moves when told to (tests, simulations)."""

    def __init__(self, start_ms: int) -> None:
        self._now_ms = start_ms

    def now_ms(self) -> int:
        return self._now_ms

    def set(self, when: datetime) -> None:
        self._now_ms = to_ms(when)

    def advance(self, seconds: float) -> None:
        self._now_ms += round(seconds * 1000)


def to_ms(when: datetime) -> int:
    if when.tzinfo is None:
        raise ValueError("datetimes must carry a time zone")
    return int(when.timestamp() * 1000)


def from_ms(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)

"""Monthly credit periods from a subscription's anchor, in UTC."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from creditgate.server.clock import to_ms
from creditgate.server.domain.periods import add_months, period, periods_started


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


@pytest.mark.parametrize(
    ("anchor", "months", "expected"),
    [
        (utc(2027, 1, 1), 1, utc(2027, 2, 1)),
        (utc(2027, 1, 31), 1, utc(2027, 2, 28)),
        (utc(2028, 1, 31), 1, utc(2028, 2, 29)),
        (utc(2099, 12, 31), 2, utc(2100, 2, 28)),  # a century is not a leap year
        (utc(1999, 12, 31), 2, utc(2000, 2, 29)),  # unless it divides by 400
        (utc(2027, 1, 31), 3, utc(2027, 4, 30)),
        (utc(2027, 11, 15, 9, 30), 2, utc(2028, 1, 15, 9, 30)),
        (utc(2027, 3, 31), 12, utc(2028, 3, 31)),
    ],
)
def test_add_months_clamps_to_the_months_last_day(anchor: datetime, months: int, expected: datetime) -> None:
    assert add_months(anchor, months) == expected


def test_periods_follow_the_anchor_not_the_previous_clamped_end() -> None:
    anchor = to_ms(utc(2027, 1, 31))
    assert [period(anchor, index).start_ms for index in range(4)] == [
        to_ms(utc(2027, 1, 31)),
        to_ms(utc(2027, 2, 28)),
        to_ms(utc(2027, 3, 31)),
        to_ms(utc(2027, 4, 30)),
    ]


def test_periods_started_lists_each_missed_period_up_to_now() -> None:
    anchor = to_ms(utc(2027, 1, 1))
    started = periods_started(anchor, 0, to_ms(utc(2027, 4, 1)))
    assert [(p.index, p.start_ms) for p in started] == [
        (1, to_ms(utc(2027, 2, 1))),
        (2, to_ms(utc(2027, 3, 1))),
        (3, to_ms(utc(2027, 4, 1))),
    ]
    assert periods_started(anchor, 0, to_ms(utc(2027, 2, 1)) - 1) == []

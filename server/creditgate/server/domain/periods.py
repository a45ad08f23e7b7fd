"""Credit periods: monthly windows from a subscription's anchor, and the grants each one issues."""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import datetime

from creditgate.server.clock import from_ms, to_ms
from creditgate.server.domain.catalog import Plan

DAY_MS = 86_400_000
NEVER = 0
# How many missed periods one rollover call opens; a longer gap takes several calls.
MAX_PERIODS_PER_ROLLOVER = 24


@dataclass(frozen=True, slots=True)
class Period:
    index: int
    start_ms: int
    end_ms: int

    def grants(self, plan: Plan) -> list[list[int]]:
        """[credits, priority, expires_at_ms, rollover cap (-1: none)] for each grant this period issues."""
        issued = []
        for grant in plan.grants:
            if grant.every == "once" and self.index != 0:
                continue
            if grant.expires == "period_end":
                expires_at = self.end_ms
            elif grant.expires == "never":
                expires_at = NEVER
            else:
                expires_at = self.start_ms + grant.expires * DAY_MS
            cap = grant.rollover_max_credits if grant.rollover_max_credits is not None else -1
            issued.append([grant.credits, grant.priority, expires_at, cap])
        return issued


def period(anchor_ms: int, index: int) -> Period:
    anchor = from_ms(anchor_ms)
    return Period(index, to_ms(add_months(anchor, index)), to_ms(add_months(anchor, index + 1)))


def periods_started(anchor_ms: int, last_index: int, now_ms: int) -> list[Period]:
    """The periods after `last_index` that have started by `now_ms`, oldest first."""
    started: list[Period] = []
    index = last_index + 1
    while len(started) < MAX_PERIODS_PER_ROLLOVER:
        candidate = period(anchor_ms, index)
        if candidate.start_ms > now_ms:
            break
        started.append(candidate)
        index += 1
    return started


def add_months(anchor: datetime, months: int) -> datetime:
    """The anchor moved by whole months, clamped to the month's last day (Jan 31 + 1 month = Feb 28/29)."""
    month_index = anchor.month - 1 + months
    year, month = anchor.year + month_index // 12, month_index % 12 + 1
    day = min(anchor.day, calendar.monthrange(year, month)[1])
    return anchor.replace(year=year, month=month, day=day)

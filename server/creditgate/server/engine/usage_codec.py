"""The one Python definition of the usage hash's field names (a customer's usage counters); lib.lua's
period_field / cap_field are their Lua mirror, and tests/integration/test_usage_codec.py holds the two together.

- "p|<feature>": units of the feature used in the current period (its free units are counted against this);
- "c|<feature>|<scope>|<window>": units counted against the feature's hard cap, per scope (the value of the cap's
  dimension, e.g. one mailbox; empty for one cap per customer) and window: "p" for a cap per period, else the day
  number (ms // DAY_MS) for a cap per day;
- "overage": overage credits used in the period (held against the plan's overage cap).
A feature key has no "|" (the catalog's keys are identifiers); a scope may: it is read as what lies between."""

from __future__ import annotations

from dataclasses import dataclass

from creditgate.server.domain.periods import DAY_MS

OVERAGE_FIELD = "overage"
PERIOD_WINDOW = "p"


def period_field(feature: str) -> str:
    return f"p|{feature}"


def cap_window(per_day: bool, at_ms: int) -> str:
    """The window a unit used at `at_ms` counts in: its day for a cap per day, else the period."""
    return str(at_ms // DAY_MS) if per_day else PERIOD_WINDOW


def cap_field(feature: str, scope: str, window: str) -> str:
    return f"c|{feature}|{scope}|{window}"


@dataclass(frozen=True, slots=True)
class CapCounter:
    feature: str
    scope: str
    window: str


def parse_cap_field(name: str) -> CapCounter | None:
    """The cap counter a usage field names; None for the other fields."""
    kind, _, rest = name.partition("|")
    if kind != "c":
        return None
    feature, _, scope_and_window = rest.partition("|")
    scope, _, window = scope_and_window.rpartition("|")
    return CapCounter(feature, scope, window)


def counts_now(name: str, now_ms: int) -> bool:
    """Whether a decision made at `now_ms` reads this field (a per-day cap counter of an earlier day lingers until
    the next rollover, read by nothing)."""
    counter = parse_cap_field(name)
    return counter is None or counter.window in (PERIOD_WINDOW, cap_window(True, now_ms))

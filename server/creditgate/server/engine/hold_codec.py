"""The one Python definition of a hold's record: the customer's holds hash maps a hold id ("h<n>") to this JSON, as
reserve.lua writes it and lib.lua's settle_hold reads and rewrites it (status only); ledger/rebuild.py writes it for
the open holds Redis lost. tests/integration/test_hold_codec.py holds the two languages to each other.

JSON keys (short: one record per open or recently settled hold):
  st  status: open, committed, released, expired      f   feature          q   units held
  u   credits per unit (what a commit charges)          fu  free units held  b   credits held (taken from buckets)
  o   overage credits held      pf / cf  the usage fields the units count in (engine/usage_codec.py; cf "" uncapped)
  pi  the period index the units were counted in (a settle in a later period uncounts nothing)
  takes  what was taken from which bucket: [[bucket id, credits, priority, expires_at, source(, rollover cap)], ...]
         (lib.lua's take_credits), so settling can give credits back to the same buckets
  x   expires at (ms)           dim the request's dimensions"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

OPEN = "open"


@dataclass(frozen=True, slots=True)
class HoldRecord:
    feature: str
    quantity: int
    unit_cost: int
    free_units: int
    credits: int
    overage: int
    period_field: str
    cap_field: str
    period_index: int
    expires_at_ms: int
    takes: list[list[Any]] = field(default_factory=list)
    dimensions: dict[str, str] = field(default_factory=dict)
    status: str = OPEN


# HoldRecord's field -> its JSON key.
JSON_KEYS = {
    "status": "st",
    "feature": "f",
    "quantity": "q",
    "unit_cost": "u",
    "free_units": "fu",
    "credits": "b",
    "overage": "o",
    "period_field": "pf",
    "cap_field": "cf",
    "period_index": "pi",
    "takes": "takes",
    "expires_at_ms": "x",
    "dimensions": "dim",
}


def encode(record: HoldRecord) -> str:
    return json.dumps({key: getattr(record, name) for name, key in JSON_KEYS.items()})


def decode(text: str) -> HoldRecord:
    raw = json.loads(text)
    # Lua's cjson writes an empty table (no takes, no dimensions) as an object.
    values = {name: raw[key] for name, key in JSON_KEYS.items()}
    values["takes"] = list(values["takes"] or [])
    values["dimensions"] = dict(values["dimensions"] or {})
    return HoldRecord(**values)

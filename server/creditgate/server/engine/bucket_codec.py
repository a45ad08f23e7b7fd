"""The one Python definition of a bucket's Redis formats (key layout 3); lib.lua's parse_bucket, bucket_value and
order_member are their Lua mirror, and tests/integration/test_bucket_codec.py holds the two to each other.

A bucket is a field of the customer's buckets hash, "b<seq>" -> "remaining|priority|expires_at|source[|cap]"
(expires_at 0 = never; the rollover cap only on grants that carry their remainder into the next period). Beside
it the wallet keeps an index: the bucket order set (every score 0, member = the spending-order key, so Redis keeps
the buckets in spending order), the bucket expiry set (id scored by expires_at, for buckets that expire) and the
customer's `bucket_credits` (every bucket's remaining credits summed)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

NEVER = 0
# The spending-order key's stand-in for "never expires": 10^15 - 1 ms is above any expiry until the year 33658 and
# still exact in a Lua number (a double).
NEVER_ORDER = 999_999_999_999_999
PRIORITY_DIGITS, EXPIRY_DIGITS, SEQ_DIGITS = 3, 15, 12


@dataclass(frozen=True, slots=True)
class Bucket:
    id: str
    remaining: int
    priority: int
    expires_at_ms: int
    source: str
    rollover_cap: int | None = None

    @property
    def seq(self) -> int:
        return int(self.id[1:])

    def due(self, now_ms: int) -> bool:
        return self.expires_at_ms != NEVER and self.expires_at_ms <= now_ms


def decode(bucket_id: str, value: str) -> Bucket:
    parts = value.split("|")
    remaining, priority, expires_at, source = parts[:4]
    cap = int(parts[4]) if len(parts) > 4 and parts[4] else None
    return Bucket(bucket_id, int(remaining), int(priority), int(expires_at), source, cap)


def encode(bucket: Bucket) -> str:
    value = f"{bucket.remaining}|{bucket.priority}|{bucket.expires_at_ms}|{bucket.source}"
    return value if bucket.rollover_cap is None else f"{value}|{bucket.rollover_cap}"


def order_member(bucket: Bucket) -> str:
    """The bucket's spending-order key: priority, then expiry (never last), then creation order, fixed width."""
    expires = NEVER_ORDER if bucket.expires_at_ms == NEVER else bucket.expires_at_ms
    return f"{bucket.priority:0{PRIORITY_DIGITS}d}{expires:0{EXPIRY_DIGITS}d}{bucket.seq:0{SEQ_DIGITS}d}"


def spending_order(bucket: Bucket) -> tuple[int, int, int]:
    """A sort key for buckets in the order Redis keeps them (that of order_member's fixed-width digits), without
    formatting them."""
    return bucket.priority, NEVER_ORDER if bucket.expires_at_ms == NEVER else bucket.expires_at_ms, bucket.seq


@dataclass(frozen=True, slots=True)
class WalletIndex:
    """What the wallet keeps beside the buckets hash, computed from it (restore, heal, migration)."""

    order: dict[str, int] = field(default_factory=dict)  # order member -> score 0
    expiry: dict[str, int] = field(default_factory=dict)  # bucket id -> expires_at
    credits: int = 0


def wallet_index(buckets: Mapping[str, str]) -> WalletIndex:
    decoded = [decode(bucket_id, value) for bucket_id, value in buckets.items()]
    return WalletIndex(
        {order_member(bucket): 0 for bucket in decoded},
        {bucket.id: bucket.expires_at_ms for bucket in decoded if bucket.expires_at_ms != NEVER},
        sum(bucket.remaining for bucket in decoded),
    )

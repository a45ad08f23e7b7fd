"""Every Redis key shape creditgate uses; all of a customer's keys share one {sN} hash slot."""

from __future__ import annotations

import zlib
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class CustomerKeys:
    """The keys one script may touch for a customer (all in the customer's shard slot)."""

    customer: str
    buckets: str
    usage: str
    outbox: str
    # Holds: id -> JSON record; open holds by expiry; settled holds by settle time (pruned after retention).
    holds: str
    holds_open: str
    holds_done: str
    # The shard's open holds of every customer by expiry, for the sweeper.
    holds_due: str

    @property
    def hold_keys(self) -> list[str]:
        """KEYS[1..8] of every hold script, in this order."""
        return [
            self.customer,
            self.buckets,
            self.usage,
            self.holds,
            self.holds_open,
            self.holds_done,
            self.holds_due,
            self.outbox,
        ]

    def request(self, request_id: str) -> str:
        # An empty request_id still needs a key of the same slot to keep KEYS fixed in shape.
        return f"{self.customer}:req:{request_id}"


# Customers whose key names are kept (a few hundred bytes each); past it the cache starts over.
KEY_CACHE_SIZE = 16_384


class KeySpace:
    def __init__(self, shards: int, prefix: str = "cg") -> None:
        self._shards = shards
        self._prefix = prefix
        self._cache: dict[str, CustomerKeys] = {}

    def shard_of(self, customer_id: str) -> int:
        return zlib.crc32(customer_id.encode()) % self._shards

    def shard_tag(self, shard: int) -> str:
        return f"{{s{shard}}}"

    def outbox(self, shard: int) -> str:
        """The ledger outbox stream of one shard."""
        return f"{self._prefix}:{self.shard_tag(shard)}:outbox"

    def holds_due(self, shard: int) -> str:
        """Open holds of the shard's customers, scored by expiry, member "customer_id/h<seq>"."""
        return f"{self._prefix}:{self.shard_tag(shard)}:holds_due"

    def all_outboxes(self) -> list[str]:
        return [self.outbox(shard) for shard in range(self._shards)]

    def customer_scan_pattern(self) -> str:
        """A SCAN pattern that matches every customer hash (and more: callers check the hash's `id`)."""
        return f"{self._prefix}:{{s*}}:c:*"

    def for_customer(self, customer_id: str) -> CustomerKeys:
        # Every decision needs them: built once per customer rather than eight f-strings and a crc32 per call.
        keys = self._cache.get(customer_id)
        if keys is None:
            if len(self._cache) >= KEY_CACHE_SIZE:
                self._cache.clear()
            keys = self._cache[customer_id] = self._build(customer_id)
        return keys

    def _build(self, customer_id: str) -> CustomerKeys:
        shard = self.shard_of(customer_id)
        base = f"{self._prefix}:{self.shard_tag(shard)}:c:{customer_id}"
        return CustomerKeys(
            customer=base,
            buckets=f"{base}:buckets",
            usage=f"{base}:usage",
            outbox=self.outbox(shard),
            holds=f"{base}:holds",
            holds_open=f"{base}:holds_open",
            holds_done=f"{base}:holds_done",
            holds_due=self.holds_due(shard),
        )

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

    def request(self, request_id: str) -> str:
        # An empty request_id still needs a key of the same slot to keep KEYS fixed in shape.
        return f"{self.customer}:req:{request_id}"


class KeySpace:
    def __init__(self, shards: int, prefix: str = "cg") -> None:
        self._shards = shards
        self._prefix = prefix

    def shard_of(self, customer_id: str) -> int:
        return zlib.crc32(customer_id.encode()) % self._shards

    def shard_tag(self, shard: int) -> str:
        return f"{{s{shard}}}"

    def outbox(self, shard: int) -> str:
        """The ledger outbox stream of one shard."""
        return f"{self._prefix}:{self.shard_tag(shard)}:outbox"

    def all_outboxes(self) -> list[str]:
        return [self.outbox(shard) for shard in range(self._shards)]

    def customer_scan_pattern(self) -> str:
        """A SCAN pattern that matches every customer hash (and more: callers check the hash's `id`)."""
        return f"{self._prefix}:{{s*}}:c:*"

    def for_customer(self, customer_id: str) -> CustomerKeys:
        shard = self.shard_of(customer_id)
        base = f"{self._prefix}:{self.shard_tag(shard)}:c:{customer_id}"
        return CustomerKeys(
            customer=base,
            buckets=f"{base}:buckets",
            usage=f"{base}:usage",
            outbox=self.outbox(shard),
        )

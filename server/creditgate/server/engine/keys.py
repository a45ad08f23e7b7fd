"""Every Redis key shape creditgate uses; all of a customer's keys share one {sN} hash slot.

Layout 2 (this one): a customer's id is the *last* part of each of its keys, after a kind that no other key
shares (`c`, `b`, `u`, `h`, `ho`, `hd`), so no id can name another customer's key, whatever ':' it contains; the
one key with a second free part, a remembered request_id answer, carries the id's length first. Layout 1 appended
kinds after the id (`c:<id>:buckets`), so the customer `<victim>:buckets` *was* its victim's buckets;
engine/migrate.py moves a layout-1 Redis to this one.

Layout 3 adds the wallet's index beside the buckets hash (`bo`: the buckets in spending order, `bx`: the buckets by
expiry; lib.lua and engine/bucket_codec.py describe them), so a decision reads the front of its wallet instead of
every bucket; engine/migrate.py builds it for a layout-2 Redis."""

from __future__ import annotations

import zlib
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class CustomerKeys:
    """The keys one script may touch for a customer (all in the customer's shard slot)."""

    customer: str
    buckets: str
    # The wallet's index (layout 3): bucket order members by spending order, bucket ids by expiry.
    bucket_order: str
    bucket_expiry: str
    usage: str
    outbox: str
    # Holds: id -> JSON record; open holds by expiry; settled holds by settle time (pruned after retention).
    holds: str
    holds_open: str
    holds_done: str
    # The shard's open holds of every customer by expiry, for the sweeper.
    holds_due: str

    @property
    def wallet_index(self) -> list[str]:
        """The wallet index's keys, which every script that changes buckets takes after its other keys."""
        return [self.bucket_order, self.bucket_expiry]

    @property
    def hold_keys(self) -> list[str]:
        """KEYS[1..10] of every hold script, in this order."""
        return [
            self.customer,
            self.buckets,
            self.usage,
            self.holds,
            self.holds_open,
            self.holds_done,
            self.holds_due,
            self.outbox,
            self.bucket_order,
            self.bucket_expiry,
        ]

    # `<prefix>:{sN}:r:<len(customer_id)>:<customer_id>:`, to which a request_id is appended.
    request_prefix: str = ""

    def request(self, request_id: str) -> str:
        # An empty request_id still needs a key of the same slot to keep KEYS fixed in shape.
        return self.request_prefix + request_id


# The key layout this code writes; a shard's meta hash records it (field `layout`) once its keys are in it.
LAYOUT = 3
# Per-customer key kinds, each followed by ":" and the customer's id.
CUSTOMER, BUCKETS, USAGE, HOLDS, HOLDS_OPEN, HOLDS_DONE, REQUEST = "c", "b", "u", "h", "ho", "hd", "r"
BUCKET_ORDER, BUCKET_EXPIRY = "bo", "bx"

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

    def shard_prefix(self, shard: int) -> str:
        """`<prefix>:{sN}:`, how every key of one shard starts."""
        return f"{self._prefix}:{self.shard_tag(shard)}:"

    def customer_prefix(self, shard: int) -> str:
        """How the customer hashes of one shard start (the customer's id follows)."""
        return f"{self.shard_prefix(shard)}{CUSTOMER}:"

    def outbox(self, shard: int) -> str:
        """The ledger outbox stream of one shard."""
        return f"{self._prefix}:{self.shard_tag(shard)}:outbox"

    def meta(self, shard: int) -> str:
        """The shard's own facts: `layout` (the key layout its keys are in)."""
        return f"{self._prefix}:{self.shard_tag(shard)}:meta"

    def all_metas(self) -> list[str]:
        return [self.meta(shard) for shard in range(self._shards)]

    def holds_due(self, shard: int) -> str:
        """Open holds of the shard's customers, scored by expiry, member "customer_id/h<seq>"."""
        return f"{self._prefix}:{self.shard_tag(shard)}:holds_due"

    def all_outboxes(self) -> list[str]:
        return [self.outbox(shard) for shard in range(self._shards)]

    def customer_scan_pattern(self) -> str:
        """A SCAN pattern that matches every customer hash (and more: callers check the hash's `id`)."""
        return f"{self._prefix}:{{s*}}:{CUSTOMER}:*"

    def customer_id_of(self, customer_key: str) -> str:
        """The id a customer hash's key names (the inverse of for_customer(id).customer)."""
        return customer_key.split(":", 3)[3]

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
        base = self.shard_prefix(shard)
        return CustomerKeys(
            customer=f"{base}{CUSTOMER}:{customer_id}",
            buckets=f"{base}{BUCKETS}:{customer_id}",
            bucket_order=f"{base}{BUCKET_ORDER}:{customer_id}",
            bucket_expiry=f"{base}{BUCKET_EXPIRY}:{customer_id}",
            usage=f"{base}{USAGE}:{customer_id}",
            outbox=self.outbox(shard),
            holds=f"{base}{HOLDS}:{customer_id}",
            holds_open=f"{base}{HOLDS_OPEN}:{customer_id}",
            holds_done=f"{base}{HOLDS_DONE}:{customer_id}",
            holds_due=self.holds_due(shard),
            request_prefix=f"{base}{REQUEST}:{len(customer_id)}:{customer_id}:",
        )


def scan_literal(text: str) -> str:
    """`text` matched literally by SCAN's MATCH (ids may hold the pattern's `*?[]\\`)."""
    return "".join("\\" + char if char in "*?[]\\" else char for char in text)

"""The customer hash (keys.py: cg:{sN}:c:<id>): every field it may hold, named once. The Lua scripts write and read
them by these names, the Python side (reads, rebuild, reconcile, heal) through these constants; a customer taken
through every script holds no other field (tests/integration/test_customer_fields.py). Values are strings in Redis.
"""

from __future__ import annotations

# Who the customer is (create_customer.lua).
ID = "id"
NAME = "name"
METADATA = "metadata"  # JSON object of strings
CREATED_AT = "created_at"  # ms

# Its subscription (subscription.lua, rollover.lua): status none | pending | active | canceled; the credit period
# open now (index -1 and start = end = anchor until the first one opens).
STATUS = "status"
PLAN = "plan"
ANCHOR = "anchor"  # ms: periods are whole months from here
PERIOD_INDEX = "period_index"
PERIOD_START = "period_start"
PERIOD_END = "period_end"
PLAN_LOW_THRESHOLD = "plan_low_threshold"  # the plan's low-balance threshold, copied at each rollover

# Numbering (lib.lua's next_number): the last ledger entry, bucket and hold; after a new epoch the next entry and
# hold jump to a new block (the renumber flags, removed by the first number taken).
SEQ = "seq"
BUCKET_SEQ = "bucket_seq"
HOLD_SEQ = "hold_seq"
RENUMBER_SEQ = "renumber_seq"
RENUMBER_HOLD_SEQ = "renumber_hold_seq"
EPOCH = "ep"  # the run_id of the Redis this state was last verified in (lib.lua)

# Credits (lib.lua's wallet): every bucket's remaining credits summed; credits held by open holds.
BUCKET_CREDITS = "bucket_credits"
RESERVED = "reserved"

# Balance events (lib.lua's balance_events): the customer's own threshold, and "1" while below it / at zero.
LOW_THRESHOLD = "low_threshold"
BELOW = "below"
EMPTY = "empty"

# Auto top-up (customer_settings.lua sets them, lib.lua's auto_top_up reads them): the settings, then its state.
AUTO_THRESHOLD = "auto_threshold"
AUTO_PACKAGE = "auto_package"
AUTO_CREDITS = "auto_credits"
AUTO_PRICE = "auto_price"
AUTO_PRIORITY = "auto_priority"
AUTO_EXPIRES_MS = "auto_expires_ms"
AUTO_COOLDOWN_MS = "auto_cooldown_ms"
AUTO_LAST_MS = "auto_last_ms"
AUTO_FIRED = "auto_fired"

AUTO_TOP_UP_SETTINGS = (
    AUTO_THRESHOLD,
    AUTO_PACKAGE,
    AUTO_CREDITS,
    AUTO_PRICE,
    AUTO_PRIORITY,
    AUTO_EXPIRES_MS,
    AUTO_COOLDOWN_MS,
)

ALL = frozenset(
    {
        ID,
        NAME,
        METADATA,
        CREATED_AT,
        STATUS,
        PLAN,
        ANCHOR,
        PERIOD_INDEX,
        PERIOD_START,
        PERIOD_END,
        PLAN_LOW_THRESHOLD,
        SEQ,
        BUCKET_SEQ,
        HOLD_SEQ,
        RENUMBER_SEQ,
        RENUMBER_HOLD_SEQ,
        EPOCH,
        BUCKET_CREDITS,
        RESERVED,
        LOW_THRESHOLD,
        BELOW,
        EMPTY,
        *AUTO_TOP_UP_SETTINGS,
        AUTO_LAST_MS,
        AUTO_FIRED,
    }
)

"""engine/hold_codec.py and the Lua side of a hold's record (reserve.lua writes it, lib.lua's settle_hold reads it)
agree: Python reads every field of the record Lua wrote and writes the same JSON back, and Lua reads every field
of a record Python wrote."""

from __future__ import annotations

import json
from importlib import resources

import redis
from creditgate.server.domain.periods import DAY_MS
from creditgate.server.engine import hold_codec
from creditgate.server.engine.hold_codec import HoldRecord
from creditgate.server.engine.keys import KeySpace
from creditgate.v1 import metering_pb2
from harness import RedisServer, RunningServer, awaited

# Lua decodes the record as settle_hold does and answers each field it reads, in HoldRecord's order.
READ_BY_LUA = """
local h = cjson.decode(ARGV[1])
local take = h.takes[1]
return {h.st, h.f, h.q, h.u, h.fu, h.b, h.o, h.pf, h.cf, h.pi, h.x, #h.takes, take[1], take[2], take[6], h.dim.mailbox}
"""


def test_python_reads_the_record_reserve_lua_wrote_and_writes_it_back_the_same(server: RunningServer) -> None:
    server.create_customer("acme", plan="basic")  # 2,500 credits in bucket b1; email_send capped per day per mailbox
    now = server.clock.now_ms()
    held = server.metering.Reserve(
        metering_pb2.ReserveRequest(
            customer_id="acme", feature="email_send", quantity=7, dimensions={"mailbox": "sales@acme.io"}
        )
    )
    assert held.reservation_id == "acme/h1"
    keys = KeySpace(server.app.settings.shards).for_customer("acme")
    written = str(server.call(awaited(server.app.redis.hget(keys.holds, "h1"))))
    record = hold_codec.decode(written)
    assert record == HoldRecord(
        feature="email_send",
        quantity=7,
        unit_cost=1,
        free_units=0,
        credits=7,
        overage=0,
        period_field="p|email_send",
        cap_field=f"c|email_send|sales@acme.io|{now // DAY_MS}",
        period_index=0,
        expires_at_ms=record.expires_at_ms,
        takes=[["b1", 7, record.takes[0][2], record.takes[0][3], "grant"]],
        dimensions={"mailbox": "sales@acme.io"},
        status="open",
    )
    assert record.expires_at_ms > now
    assert json.loads(hold_codec.encode(record)) == json.loads(written)


def test_lua_reads_every_field_of_a_record_python_wrote(redis_server: RedisServer) -> None:
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    lib = resources.files("creditgate.server.engine").joinpath("lib.lua").read_text()
    record = HoldRecord(
        feature="email_send",
        quantity=7,
        unit_cost=3,
        free_units=2,
        credits=15,
        overage=4,
        period_field="p|email_send",
        cap_field="c|email_send|sales@acme.io|20819",
        period_index=5,
        expires_at_ms=1_798_761_600_123,
        takes=[["b9", 15, 10, 1_801_440_000_000, "grant", 1000]],
        dimensions={"mailbox": "sales@acme.io"},
        status="committed",
    )
    answer = client.eval(lib + READ_BY_LUA, 0, hold_codec.encode(record), "epoch")
    assert answer == [
        "committed",
        "email_send",
        7,
        3,
        2,
        15,
        4,
        "p|email_send",
        "c|email_send|sales@acme.io|20819",
        5,
        1_798_761_600_123,
        1,
        "b9",
        15,
        1000,
        "sales@acme.io",
    ]

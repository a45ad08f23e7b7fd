"""engine/customer_fields.py names every field of the customer hash: a customer taken through every script that
writes one (create, subscribe, rollover, own threshold, auto top-up, a debit that crosses both, a hold, a new epoch)
holds exactly the named fields it should, and one restored from the ledger holds no other."""

from __future__ import annotations

from datetime import timedelta

from creditgate.server.engine import customer_fields
from creditgate.server.engine.keys import KeySpace
from creditgate.v1 import admin_pb2, metering_pb2
from google.protobuf.duration_pb2 import Duration
from harness import RunningServer, awaited


def customer_hash_fields(server: RunningServer, customer_id: str) -> set[str]:
    key = KeySpace(server.app.settings.shards).for_customer(customer_id).customer
    return {str(name) for name in server.call(awaited(server.app.redis.hkeys(key)))}


def test_a_customer_through_every_script_holds_only_the_named_fields(server: RunningServer) -> None:
    server.create_customer("acme", plan="basic")  # 2,500 credits
    server.admin.SetLowBalanceThreshold(
        admin_pb2.SetLowBalanceThresholdRequest(customer_id="acme", threshold_credits=2400)
    )
    server.admin.SetAutoTopUp(
        admin_pb2.SetAutoTopUpRequest(
            customer_id="acme", package="starter", threshold_credits=1000, cooldown=Duration(seconds=0)
        )
    )
    server.clock.set(server.clock_now() + timedelta(days=40))  # the next period opens: February's 2,500
    # 900 left: below the own threshold (below), then the auto top-up buys 1,000 (1,900: not fired again).
    assert server.debit("acme", "email_unlock", 1600).balance_after == 1900
    held = server.metering.Reserve(metering_pb2.ReserveRequest(customer_id="acme", feature="email_unlock", quantity=5))
    assert held.allowed
    # A new epoch (as after a Redis restart): the next read verifies the customer and marks its renumbering.
    key = KeySpace(server.app.settings.shards).for_customer("acme").customer
    server.call(awaited(server.app.redis.hset(key, customer_fields.EPOCH, "an-older-redis")))
    server.available("acme")
    assert customer_hash_fields(server, "acme") == customer_fields.ALL - {
        customer_fields.EMPTY,  # never at zero
        customer_fields.AUTO_FIRED,  # the top-up brought it back above its threshold
    }


def test_a_customer_restored_from_the_ledger_holds_only_named_fields(server: RunningServer) -> None:
    server.create_customer("acme", plan="basic")
    server.admin.SetLowBalanceThreshold(
        admin_pb2.SetLowBalanceThresholdRequest(customer_id="acme", threshold_credits=100)
    )
    server.debit("acme", "email_unlock", 10)
    server.metering.Reserve(metering_pb2.ReserveRequest(customer_id="acme", feature="email_unlock", quantity=5))
    server.flush()
    server.call(awaited(server.app.redis.flushall()))
    server.restore()
    restored = customer_hash_fields(server, "acme")
    assert restored - customer_fields.ALL == set()
    assert {customer_fields.SEQ, customer_fields.HOLD_SEQ, customer_fields.RESERVED, customer_fields.LOW_THRESHOLD} <= (
        restored
    )

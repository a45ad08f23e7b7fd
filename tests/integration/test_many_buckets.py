"""A customer with thousands of buckets: spending order, expiry, holds and the returned credits of a released
hold stay exact (issue 21: the wallet is read from the front of its bucket order, not loaded whole)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from creditgate.server.clock import to_ms
from creditgate.v1 import admin_pb2, metering_pb2
from google.protobuf import duration_pb2
from harness import JAN_1, RunningServer, assert_wallet_index_exact

DAY_MS = 86_400_000
TOP_UPS = 2_000
NEVER = 0


@dataclass
class ModelBucket:
    id: str
    remaining: int
    priority: int
    expires_at: int

    def order(self) -> tuple[int, float, int]:
        return self.priority, float("inf") if self.expires_at == NEVER else self.expires_at, int(self.id[1:])


class Wallet:
    """What the wallet must hold, computed the slow way: every bucket sorted on every change."""

    def __init__(self) -> None:
        self.buckets: dict[str, ModelBucket] = {}

    def add(self, bucket: ModelBucket) -> None:
        self.buckets[bucket.id] = bucket

    def ordered(self) -> list[ModelBucket]:
        return sorted(self.buckets.values(), key=ModelBucket.order)

    def take(self, amount: int) -> list[tuple[ModelBucket, int]]:
        takes = []
        for bucket in self.ordered():
            if amount == 0:
                break
            taken = min(bucket.remaining, amount)
            bucket.remaining -= taken
            amount -= taken
            takes.append((ModelBucket(bucket.id, taken, bucket.priority, bucket.expires_at), taken))
            if bucket.remaining == 0:
                del self.buckets[bucket.id]
        return takes

    def put_back(self, takes: list[tuple[ModelBucket, int]]) -> None:
        for taken, credits in reversed(takes):
            if taken.id in self.buckets:
                self.buckets[taken.id].remaining += credits
            else:
                self.add(ModelBucket(taken.id, credits, taken.priority, taken.expires_at))

    def expire(self, now: int) -> int:
        due = [b for b in self.buckets.values() if b.expires_at != NEVER and b.expires_at <= now]
        for bucket in due:
            del self.buckets[bucket.id]
        return sum(bucket.remaining for bucket in due)

    def view(self) -> list[tuple[str, int]]:
        return [(bucket.id, bucket.remaining) for bucket in self.ordered()]

    def total(self) -> int:
        return sum(bucket.remaining for bucket in self.buckets.values())


def balance_view(server: RunningServer, customer_id: str) -> tuple[int, list[tuple[str, int]]]:
    response = server.metering.GetBalance(metering_pb2.GetBalanceRequest(customer_id=customer_id))
    return int(response.available_credits), [(b.id, int(b.remaining_credits)) for b in response.buckets]


def test_thousands_of_buckets_keep_spending_order_expiry_and_holds_exact(server: RunningServer) -> None:
    start = to_ms(JAN_1)
    feb_1 = to_ms(JAN_1.replace(month=2))
    server.create_customer("wallet", plan="basic")
    model = Wallet()
    model.add(ModelBucket("b1", 2500, 10, feb_1))  # the plan's grant: priority 10, expires at the period's end
    for n in range(TOP_UPS):
        credits, days = 1 + n % 3, n % 7  # 0 days: never expires
        server.admin.TopUp(
            admin_pb2.TopUpRequest(customer_id="wallet", credits=credits, expires_in_days=days, request_id=f"t{n}")
        )
        model.add(ModelBucket(f"b{n + 2}", credits, 20, start + days * DAY_MS if days else NEVER))
    server.admin.AdjustCredits(
        admin_pb2.AdjustCreditsRequest(customer_id="wallet", delta=7, reason="goodwill", request_id="adj")
    )
    model.add(ModelBucket(f"b{TOP_UPS + 2}", 7, 30, NEVER))
    assert model.total() == 2500 + 3999 + 7
    assert balance_view(server, "wallet") == (6506, model.view())

    # One decision takes 2,400 of the grant; a hold takes the grant's last 100, then 300 from the earliest-expiring
    # top-ups (1 day), 151 buckets in all.
    debit = server.debit("wallet", "email_unlock", quantity=2400)
    model.take(2400)
    assert (debit.allowed, debit.credits_charged, debit.balance_after) == (True, 2400, 4106)
    assert balance_view(server, "wallet") == (4106, model.view())
    server.clock.set(JAN_1 + timedelta(hours=23))
    held = server.metering.Reserve(
        metering_pb2.ReserveRequest(
            customer_id="wallet",
            feature="email_unlock",
            quantity=400,
            request_id="hold",
            ttl=duration_pb2.Duration(seconds=86_400),  # outlives the first day's end
        )
    )
    held_takes = model.take(400)
    assert (held.allowed, held.balance_after, len(held_takes)) == (True, 3706, 151)
    assert balance_view(server, "wallet") == (3706, model.view())

    # A day passes: the 1-day top-ups the hold left alone expire (286 of them hold 572 credits; 272 are left).
    server.clock.set(JAN_1 + timedelta(days=1, milliseconds=1))
    assert model.expire(start + DAY_MS + 1) == 272
    assert balance_view(server, "wallet") == (3434, model.view())

    # Released: the 400 go back to the buckets they came from; the 300 of the expired top-ups expire again at
    # once, the grant's 100 stay.
    released = server.metering.Release(metering_pb2.ReleaseRequest(reservation_id=held.reservation_id))
    model.put_back(held_takes)
    assert model.expire(start + DAY_MS + 1) == 300
    assert (released.credits_released, released.balance_after) == (400, 3534)
    assert balance_view(server, "wallet") == (3534, model.view())
    assert model.buckets["b1"].remaining == 100
    assert_wallet_index_exact(str(server.app.settings.redis_url), server.app.settings.shards, "wallet")

    # The ledger agrees with every credit.
    assert sum(entry.credits_delta for entry in server.ledger("wallet")) == 3534

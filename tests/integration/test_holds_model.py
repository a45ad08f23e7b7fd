"""Model-based test: a Hypothesis state machine drives the real server with every credit-changing call and
clock jumps, against a small Python model of the rules, and compares them after every step."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from typing import ClassVar

import grpc
import pytest
from creditgate.server.clock import to_ms
from creditgate.v1 import admin_pb2, metering_pb2
from google.protobuf.duration_pb2 import Duration
from harness import JAN_1, Database, RunningServer
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

pytestmark = pytest.mark.postgres_too

# feature -> (unit cost, dimensions, free units a period, daily cap) on both plans of examples/apollo.yaml
FEATURES = {
    "email_unlock": (1, {}, 0, 0),
    "mobile_unlock": (10, {"quality": "verified"}, 0, 0),
    "contact_export": (1, {}, 50, 0),
    "email_send": (1, {"mailbox": "m"}, 0, None),
}
PLANS = {"basic": (2500, 250, None), "professional": (4000, 1000, 5000)}  # grant, email cap, overage cap
NEVER = 0
RETENTION_MS = 24 * 3600 * 1000  # settled holds are remembered as long as request ids (the default 24 h)
DAY_MS = 86_400_000

# The credit periods of a subscription anchored at 2027-01-01 00:00 UTC, worked out here rather than with the
# server's own billing.periods: one period per calendar month, starting on the 1st. 2027-01-01 is 20,819 days after
# the epoch (57 years, 14 of them leap: 1972 … 2024); 2028 and 2032 are leap years. A run jumps the clock by at most
# 50 steps of 35 days (until late 2031), so six years of periods cover it.
JAN_1_2027_MS = 20_819 * DAY_MS
MONTH_DAYS = [31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31]
LEAP_MONTH_DAYS = [31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31]
PERIOD_STARTS_MS = [JAN_1_2027_MS]
for year in range(2027, 2033):
    for days in LEAP_MONTH_DAYS if year in (2028, 2032) else MONTH_DAYS:
        PERIOD_STARTS_MS.append(PERIOD_STARTS_MS[-1] + days * DAY_MS)


@dataclass
class Bucket:
    remaining: int
    priority: int
    expires_at: int
    source: str

    def due(self, now: int) -> bool:
        return self.expires_at != NEVER and self.expires_at <= now


@dataclass
class Hold:
    feature: str
    quantity: int
    unit_cost: int
    free_units: int
    credits: int
    overage: int
    period_index: int
    cap_day: int | None
    expires_at: int
    takes: list[tuple[str, int]]
    state: str = "open"
    settled_at: int = 0


@dataclass
class Model:
    """The rules of README/DESIGN.md, written plainly."""

    plan: str  # subscribed at JAN_1_2027_MS, the anchor of PERIOD_STARTS_MS
    period_index: int = -1
    buckets: dict[str, Bucket] = field(default_factory=dict)
    bucket_seq: int = 0
    usage: dict[str, int] = field(default_factory=dict)
    cap_usage: dict[int, int] = field(default_factory=dict)
    overage: int = 0
    holds: dict[str, Hold] = field(default_factory=dict)
    hold_seq: int = 0
    granted: int = 0
    topped_up: int = 0
    adjusted: int = 0
    spent: int = 0
    expired: int = 0

    @property
    def available(self) -> int:
        return sum(b.remaining for b in self.buckets.values())

    @property
    def reserved(self) -> int:
        return sum(h.credits for h in self.holds.values() if h.state == "open")

    def new_bucket(self, credits: int, priority: int, expires_at: int, source: str) -> None:
        self.bucket_seq += 1
        self.buckets[f"b{self.bucket_seq}"] = Bucket(credits, priority, expires_at, source)

    def expire_due(self, now: int) -> None:
        for bucket_id in [i for i, b in self.buckets.items() if b.due(now)]:
            self.expired += self.buckets.pop(bucket_id).remaining

    def spending_order(self) -> list[tuple[str, Bucket]]:
        def key(item: tuple[str, Bucket]) -> tuple[int, float, int]:
            bucket_id, b = item
            return b.priority, b.expires_at or float("inf"), int(bucket_id[1:])

        return sorted(self.buckets.items(), key=key)

    def take(self, amount: int) -> list[tuple[str, int]]:
        takes = []
        for bucket_id, bucket in self.spending_order():
            if amount == 0:
                break
            taken = min(bucket.remaining, amount)
            bucket.remaining -= taken
            amount -= taken
            takes.append((bucket_id, taken))
            if bucket.remaining == 0:
                del self.buckets[bucket_id]
        return takes

    def touch(self, now: int) -> None:
        """What every call does first: open started periods, expire due holds, expire due buckets."""
        while (start := PERIOD_STARTS_MS[self.period_index + 1]) <= now:
            self.expire_due(start)
            self.new_bucket(PLANS[self.plan][0], 10, PERIOD_STARTS_MS[self.period_index + 2], "grant")
            self.granted += PLANS[self.plan][0]
            self.period_index += 1
            today = now // DAY_MS
            self.usage, self.overage = {}, 0
            self.cap_usage = {today: self.cap_usage[today]} if today in self.cap_usage else {}
        for _, hold in sorted(self.holds.items(), key=lambda item: (item[1].expires_at, int(item[0][1:]))):
            if hold.state == "open" and hold.expires_at <= now:
                self.settle(hold, 0, "expired", now)
        self.expire_due(now)

    def evaluate(self, feature: str, quantity: int, now: int) -> tuple[str, int, int, int]:
        """(deny reason or '', free units used, credits from buckets, overage credits)"""
        unit_cost, _, free_units, cap = FEATURES[feature]
        if cap is None:
            limit, day = PLANS[self.plan][1], now // DAY_MS
            if self.cap_usage.get(day, 0) + quantity > limit:
                return "LIMIT_EXCEEDED", 0, 0, 0
        free_used = min(quantity, max(0, free_units - self.usage.get(feature, 0)))
        to_charge = (quantity - free_used) * unit_cost
        charged = min(to_charge, self.available)
        overage = to_charge - charged
        overage_cap = PLANS[self.plan][2]
        if overage and (overage_cap is None or self.overage + overage > overage_cap):
            return "INSUFFICIENT_CREDITS", 0, 0, 0
        return "", free_used, charged, overage

    def count(self, feature: str, units: int, overage: int, day: int | None) -> None:
        self.usage[feature] = self.usage.get(feature, 0) + units
        if day is not None:
            self.cap_usage[day] = self.cap_usage.get(day, 0) + units
        self.overage += overage

    def settle(self, hold: Hold, used: int, state: str, now: int) -> tuple[int, int]:
        free_used = min(used, hold.free_units)
        charge = (used - free_used) * hold.unit_cost
        charged = min(charge, hold.credits)
        returned = hold.credits - charged
        if hold.period_index == self.period_index:
            self.count(hold.feature, -(hold.quantity - used), -(hold.overage - (charge - charged)), hold.cap_day)
        self.expire_due(now)
        for bucket_id, taken in reversed(hold.takes):
            if returned == 0:
                break
            back = min(taken, returned)
            returned -= back
            if bucket_id in self.buckets:
                self.buckets[bucket_id].remaining += back
            else:
                self.buckets[bucket_id] = Bucket(back, *self.bucket_meta[bucket_id])
        self.expire_due(now)
        hold.state, hold.settled_at = state, now
        self.spent += charged
        # Settled holds are forgotten once the retention has passed, at the next settlement.
        for hold_id in [i for i, h in self.holds.items() if h.state != "open" and h.settled_at <= now - RETENTION_MS]:
            del self.holds[hold_id]
        return charged, hold.credits - charged

    @property
    def bucket_meta(self) -> dict[str, tuple[int, int, str]]:
        return self._meta

    def remember_meta(self) -> None:
        for bucket_id, b in self.buckets.items():
            self._meta[bucket_id] = (b.priority, b.expires_at, b.source)

    def __post_init__(self) -> None:
        self._meta: dict[str, tuple[int, int, str]] = {}


class CreditMachine(RuleBasedStateMachine):
    server: RunningServer
    # Steps of every finished run (Hypothesis also makes some runs it throws away after a few steps).
    steps_per_run: ClassVar[list[int]] = []
    holds = Bundle("holds")

    def __init__(self) -> None:
        super().__init__()
        self.customer = f"m-{uuid.uuid4().hex[:12]}"

    @initialize(plan=st.sampled_from(sorted(PLANS)))
    def subscribe(self, plan: str) -> None:
        self.server.clock.set(JAN_1)
        self.now = to_ms(JAN_1)
        assert self.now == JAN_1_2027_MS  # the harness's JAN_1 is the anchor the model's periods start from
        self.model = Model(plan)
        self.server.create_customer(self.customer, plan=plan)
        self.steps = 0
        self.model.touch(self.now)
        self.model.remember_meta()

    def request_id(self) -> str:
        return uuid.uuid4().hex

    @rule(feature=st.sampled_from(sorted(FEATURES)), quantity=st.integers(1, 400))
    def check_and_debit(self, feature: str, quantity: int) -> None:
        self.steps += 1
        self.model.touch(self.now)
        reason, free_used, charged, overage = self.model.evaluate(feature, quantity, self.now)
        response = self.server.debit(self.customer, feature, quantity, self.request_id(), **FEATURES[feature][1])
        assert (response.allowed, response.deny_reason) == (
            not reason,
            metering_pb2.DenyReason.Value(f"DENY_REASON_{reason}") if reason else 0,
        )
        if not reason:
            self.model.take(charged)
            self.model.count(feature, quantity, overage, self.now // DAY_MS if FEATURES[feature][3] is None else None)
            self.model.spent += charged
        assert (response.credits_charged, response.free_units_used, response.overage_credits) == (
            charged,
            free_used,
            overage,
        )

    @rule(
        target=holds,
        feature=st.sampled_from(sorted(FEATURES)),
        quantity=st.integers(1, 400),
        ttl=st.integers(1, 86400),
    )
    def reserve(self, feature: str, quantity: int, ttl: int) -> str:
        self.steps += 1
        self.model.touch(self.now)
        reason, free_used, charged, overage = self.model.evaluate(feature, quantity, self.now)
        response = self.server.metering.Reserve(
            metering_pb2.ReserveRequest(
                customer_id=self.customer,
                feature=feature,
                quantity=quantity,
                dimensions=FEATURES[feature][1],
                ttl=Duration(seconds=ttl),
                request_id=self.request_id(),
            )
        )
        assert response.allowed == (not reason)
        assert (response.credits_reserved, response.free_units_reserved, response.overage_credits_reserved) == (
            charged,
            free_used,
            overage,
        )
        if reason:
            return ""
        self.model.remember_meta()
        takes = self.model.take(charged)
        cap_day = self.now // DAY_MS if FEATURES[feature][3] is None else None
        self.model.count(feature, quantity, overage, cap_day)
        self.model.hold_seq += 1
        hold_id = f"h{self.model.hold_seq}"
        self.model.holds[hold_id] = Hold(
            feature,
            quantity,
            FEATURES[feature][0],
            free_used,
            charged,
            overage,
            self.model.period_index,
            cap_day,
            self.now + ttl * 1000,
            takes,
        )
        assert response.reservation_id == f"{self.customer}/{hold_id}"
        return hold_id

    def expected_refusal(self, hold_id: str) -> str | None:
        hold = self.model.holds.get(hold_id)
        if hold is None:
            return "RESERVATION_NOT_FOUND"
        return {
            "open": None,
            "committed": "RESERVATION_ALREADY_COMMITTED",
            "released": "RESERVATION_ALREADY_RELEASED",
            "expired": "RESERVATION_EXPIRED",
        }[hold.state]

    @rule(hold_id=holds, quantity=st.none() | st.integers(0, 450))
    def commit(self, hold_id: str, quantity: int | None) -> None:
        self.steps += 1
        if not hold_id:
            return
        self.model.touch(self.now)
        request = metering_pb2.CommitRequest(reservation_id=f"{self.customer}/{hold_id}", request_id=self.request_id())
        if quantity is not None:
            request.quantity = quantity
        refusal = self.expected_refusal(hold_id)
        too_much = refusal is None and quantity is not None and quantity > self.model.holds[hold_id].quantity
        if refusal or too_much:
            with pytest.raises(grpc.RpcError) as raised:
                self.server.metering.Commit(request)
            assert raised.value.code() == refusal_code(refusal)
            return
        hold = self.model.holds[hold_id]
        charged, released = self.model.settle(
            hold, hold.quantity if quantity is None else quantity, "committed", self.now
        )
        response = self.server.metering.Commit(request)
        assert (response.credits_charged, response.credits_released) == (charged, released)

    @rule(hold_id=consumes(holds))
    def release(self, hold_id: str) -> None:
        self.steps += 1
        if not hold_id:
            return
        self.model.touch(self.now)
        request = metering_pb2.ReleaseRequest(reservation_id=f"{self.customer}/{hold_id}", request_id=self.request_id())
        refusal = self.expected_refusal(hold_id)
        if refusal:
            with pytest.raises(grpc.RpcError) as raised:
                self.server.metering.Release(request)
            assert raised.value.code() == refusal_code(refusal)
            return
        _, released = self.model.settle(self.model.holds[hold_id], 0, "released", self.now)
        assert self.server.metering.Release(request).credits_released == released

    @rule(credits=st.integers(1, 3000), days=st.sampled_from([0, 1, 10, 45]))
    def top_up(self, credits: int, days: int) -> None:
        self.steps += 1
        self.model.touch(self.now)
        self.model.new_bucket(credits, 20, self.now + days * DAY_MS if days else NEVER, "topup")
        self.model.remember_meta()
        self.model.topped_up += credits
        self.server.admin.TopUp(
            admin_pb2.TopUpRequest(
                customer_id=self.customer, credits=credits, expires_in_days=days, request_id=self.request_id()
            )
        )

    @rule(delta=st.integers(-3000, 3000).filter(bool))
    def adjust(self, delta: int) -> None:
        self.steps += 1
        self.model.touch(self.now)
        request = admin_pb2.AdjustCreditsRequest(
            customer_id=self.customer, delta=delta, reason="model", request_id=self.request_id()
        )
        if delta < 0 and -delta > self.model.available:
            with pytest.raises(grpc.RpcError) as raised:
                self.server.admin.AdjustCredits(request)
            assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            return
        if delta > 0:
            self.model.new_bucket(delta, 30, NEVER, "adjustment")
            self.model.remember_meta()
        else:
            self.model.take(-delta)
        self.model.adjusted += delta
        assert self.server.admin.AdjustCredits(request).available_credits == self.model.available

    @rule(seconds=st.sampled_from([1, 600, 3600, 86400, 5 * 86400, 20 * 86400, 35 * 86400]))
    def advance_clock(self, seconds: int) -> None:
        self.steps += 1
        self.now += seconds * 1000
        self.server.clock.set(JAN_1 + timedelta(milliseconds=self.now - to_ms(JAN_1)))

    @invariant()
    def balances_agree(self) -> None:
        if not hasattr(self, "model"):
            return
        self.model.touch(self.now)
        balance = self.server.metering.GetBalance(metering_pb2.GetBalanceRequest(customer_id=self.customer))
        model = self.model
        assert (balance.available_credits, balance.reserved_credits) == (model.available, model.reserved)
        assert balance.available_credits >= 0
        assert balance.overage_credits == model.overage
        assert [(b.id, b.remaining_credits) for b in balance.buckets] == [
            (i, b.remaining) for i, b in model.spending_order()
        ]
        assert model.available + model.reserved + model.spent + model.expired == (
            model.granted + model.topped_up + model.adjusted
        )

    def teardown(self) -> None:
        if not hasattr(self, "model"):
            return
        CreditMachine.steps_per_run.append(self.steps)
        entries = self.server.ledger(self.customer)
        assert sum(e.credits_delta for e in entries) == self.model.available
        assert sum(e.reserved_delta for e in entries) == self.model.reserved
        assert -sum(e.credits_delta for e in entries if e.kind == admin_pb2.LEDGER_ENTRY_KIND_EXPIRY) == (
            self.model.expired
        )
        settled = [e.reservation_id for e in entries if e.kind in SETTLING_KINDS]
        assert len(settled) == len(set(settled)), "a hold settled twice"


def refusal_code(reason: str | None) -> grpc.StatusCode:
    return grpc.StatusCode.NOT_FOUND if reason == "RESERVATION_NOT_FOUND" else grpc.StatusCode.FAILED_PRECONDITION


SETTLING_KINDS = {
    admin_pb2.LEDGER_ENTRY_KIND_COMMIT,
    admin_pb2.LEDGER_ENTRY_KIND_RELEASE,
    admin_pb2.LEDGER_ENTRY_KIND_RESERVATION_EXPIRY,
}


# Runs of 50 steps on each store: 1000 on SQLite; on PostgreSQL the first 200 of the same runs (derandomized), which
# take the store's part (customers, flushed ledger compared at each run's end) through every kind of step while
# keeping make test's time in hand (1000 runs took 545 s there on the busy 2-core machine).
RUNS = {"sqlite": 1000, "postgresql": 200}


@pytest.mark.slow
def test_the_server_follows_the_model_for_runs_of_50_steps(server: RunningServer, database: Database) -> None:
    CreditMachine.server = server
    CreditMachine.steps_per_run = []
    runs = RUNS[database.kind]
    run_state_machine_as_test(
        CreditMachine,
        settings=settings(
            max_examples=runs,
            # Hypothesis counts the subscribing step too: 1 + 50 rules.
            stateful_step_count=51,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
        ),
        # Hypothesis may end a run early (e.g. when its buffer fills); every run here takes 50 steps.
        _min_steps=51,
    )
    assert sum(steps >= 50 for steps in CreditMachine.steps_per_run) >= runs

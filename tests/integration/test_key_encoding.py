"""Crafted customer ids never reach another customer's keys: in key layout 1 the customer `<victim>:buckets` of the
victim's shard *was* the victim's bucket hash (and `:usage`, `:holds`, `:holds_open`, `:holds_done`, `:req:<id>`
the same). Layout 2 (engine/keys.py) makes the id the last part of every key, after a kind no other key shares."""

from __future__ import annotations

import grpc
from creditgate.server.engine.keys import KeySpace
from creditgate.v1 import admin_pb2, metering_pb2
from google.protobuf.duration_pb2 import Duration
from harness import RunningServer

# Every suffix layout 1 appended to a customer's key, and a request key's.
SUFFIXES = (":buckets", ":usage", ":holds", ":holds_open", ":holds_done", ":req:r:1", ":req:r")


def crafted_pairs(shards: int, victims_per_shard: int) -> list[tuple[str, str]]:
    """(victim, crafted) pairs whose crafted id lands in the victim's shard, for every suffix and every shard."""
    keys = KeySpace(shards)
    pairs: list[tuple[str, str]] = []
    found = {(shard, suffix): 0 for shard in range(shards) for suffix in SUFFIXES}
    n = 0
    while any(count < victims_per_shard for count in found.values()):
        victim = f"org:{n}"
        n += 1
        shard = keys.shard_of(victim)
        for suffix in SUFFIXES:
            crafted = victim + suffix
            if keys.shard_of(crafted) == shard and found[shard, suffix] < victims_per_shard:
                found[shard, suffix] += 1
                pairs.append((victim, crafted))
    return pairs


def ledger_view(server: RunningServer, customer_id: str) -> list[tuple[str, int, int, str]]:
    return [
        (
            admin_pb2.LedgerEntryKind.Name(e.kind).removeprefix("LEDGER_ENTRY_KIND_"),
            e.credits_delta,
            e.balance_after,
            e.entry_id,
        )
        for e in server.ledger(customer_id)
    ]


def test_hundreds_of_crafted_ids_beside_their_victims_change_nothing_of_theirs(server: RunningServer) -> None:
    pairs = crafted_pairs(server.app.settings.shards, victims_per_shard=4)
    victims = sorted({victim for victim, _ in pairs})
    crafted = sorted({c for _, c in pairs})
    assert len(crafted) == 8 * len(SUFFIXES) * 4  # 224: every suffix, in every shard
    for victim in victims:
        server.create_customer(victim, "basic")
        server.debit(victim, "email_unlock", 3, request_id="r:1")
        server.debit(victim, "email_unlock", 2, request_id="r")
    # A hold of each victim's, so its holds, holds_open and holds_done keys exist too.
    held = {
        victim: server.metering.Reserve(
            metering_pb2.ReserveRequest(
                customer_id=victim, feature="email_unlock", quantity=10, request_id="hold", ttl=Duration(seconds=3600)
            )
        ).reservation_id
        for victim in victims
    }
    before = {victim: (server.available(victim), ledger_view(server, victim)) for victim in victims}
    assert {balance for balance, _ in before.values()} == {2500 - 5 - 10}

    for customer in crafted:
        # In layout 1 some of these creates failed (INTERNAL, WRONGTYPE): the victim's key was there already.
        server.create_customer(customer, "professional")
        answer = server.debit(customer, "email_unlock", 7, request_id="r:1")
        assert (answer.allowed, answer.entry_id) == (True, f"{customer}/2")
        server.admin.TopUp(admin_pb2.TopUpRequest(customer_id=customer, package="starter", request_id="top"))
        hold = server.metering.Reserve(
            metering_pb2.ReserveRequest(customer_id=customer, feature="email_unlock", quantity=4, request_id="h")
        )
        server.metering.Commit(metering_pb2.CommitRequest(reservation_id=hold.reservation_id, quantity=1))

    for victim in victims:
        assert (server.available(victim), ledger_view(server, victim)) == before[victim], victim
        # The victim's remembered answers are its own: a retry replays, another request is charged.
        replay = server.debit(victim, "email_unlock", 3, request_id="r:1")
        assert (replay.entry_id, replay.balance_after) == (f"{victim}/2", 2497)
        fresh = server.debit(victim, "email_unlock", 1, request_id="new")
        assert (fresh.allowed, fresh.balance_after) == (True, 2484)
        settled = server.metering.Commit(metering_pb2.CommitRequest(reservation_id=held[victim], quantity=10))
        assert (settled.credits_charged, settled.balance_after) == (10, 2484)
    professional = server.available(crafted[0])
    for customer in crafted:
        # Each works as itself: its plan's grant, 7 debited, Starter's 1,000, 1 committed.
        assert server.available(customer) == professional
        entries = ledger_view(server, customer)
        assert [kind for kind, *_ in entries] == ["GRANT", "DEBIT", "TOP_UP", "RESERVE", "COMMIT"], customer
        assert all(entry_id.rpartition("/")[0] == customer for *_, entry_id in entries)
    grant = server.ledger(crafted[0])[0].credits_delta
    assert professional == grant - 7 + 1000 - 1


def test_a_request_key_cannot_be_reached_through_another_split_of_the_same_text(server: RunningServer) -> None:
    """Without the id's length, `r:<customer_id>:<request_id>` would be one key for `a:<x>` with request `c` and
    for `a` with request `<x>:c` (both in one shard); they are two requests of two customers."""
    keys = KeySpace(server.app.settings.shards)
    x = next(f"b{n}" for n in range(1000) if keys.shard_of(f"a:b{n}") == keys.shard_of("a"))
    assert keys.for_customer(f"a:{x}").request("c") != keys.for_customer("a").request(f"{x}:c")
    server.create_customer("a", "basic")
    server.create_customer(f"a:{x}", "basic")
    first = server.debit("a", "email_unlock", 1, request_id=f"{x}:c")
    second = server.debit(f"a:{x}", "email_unlock", 2, request_id="c")
    assert (first.entry_id, second.entry_id) == ("a/2", f"a:{x}/2")
    assert (server.available("a"), server.available(f"a:{x}")) == (2499, 2498)
    try:
        server.debit(f"a:{x}", "email_unlock", 1, request_id="c")
    except grpc.RpcError as exc:
        assert exc.code() == grpc.StatusCode.ALREADY_EXISTS  # the same id with other content, of its own request
    else:
        raise AssertionError("a reused request_id with other content must be refused")

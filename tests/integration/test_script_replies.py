"""Scripts answer by name (lib.lua's reply, engine/script_reply.py), but an answer remembered under its request_id is
stored by position ({'ok', value, ...} in MessagePack, half the bytes), in each script's append-only stored order:
the order versions before named replies wrote. Such answers replay with every value in its own place: each position
below holds a different number, so two swapped names would show."""

from __future__ import annotations

import json

from creditgate.server.engine.customer_state import fingerprint
from creditgate.server.engine.holds import Reservation, Settlement
from creditgate.server.engine.keys import KeySpace
from creditgate.server.engine.model import CreditChange, DebitRequest, Decision
from harness import RunningServer, awaited

# Writes a request key as a version before named replies did: fingerprint, newline, the positional answer packed.
REMEMBER_BY_POSITION = "redis.call('SET', KEYS[1], ARGV[1] .. '\\n' .. cmsgpack.pack(cjson.decode(ARGV[2])))"


def remember_by_position(
    server: RunningServer, customer_id: str, request_id: str, print_: str, answer: list[object]
) -> None:
    key = KeySpace(server.app.settings.shards).for_customer(customer_id).request(request_id)
    server.call(awaited(server.app.redis.eval(REMEMBER_BY_POSITION, 1, key, print_, json.dumps(answer))))


def test_a_decision_remembered_by_position_replays_each_value_in_its_place(server: RunningServer) -> None:
    server.create_customer("old-decide", plan="basic")
    answer = ["ok", 1, "", 7, 5, 2, 3, 1234, 1, "old-decide/9", 11, 13, 17, 19]
    remember_by_position(server, "old-decide", "r1", fingerprint("debit", "email_unlock", 4, {}), answer)
    replayed = server.call(
        server.app.decisions.check_and_debit(DebitRequest("old-decide", "email_unlock", 4, {}, "r1"))
    )
    replayed.message = ""
    assert replayed == Decision(True, "", 7, 5, 2, 3, 1234, True, "old-decide/9", 11, 13, 17, 19)
    assert server.available("old-decide") == 2500  # replayed, not charged


def test_a_reservation_and_a_commit_remembered_by_position_replay_each_value_in_its_place(
    server: RunningServer,
) -> None:
    server.create_customer("old-hold", plan="basic")
    reserve = ["ok", 1, "", 7, 5, 2, 3, 1234, 0, "old-hold/h4", 99000, "old-hold/8"]
    remember_by_position(server, "old-hold", "r1", fingerprint("reserve", "email_unlock", 6, {}, 60), reserve)
    reservation = server.call(server.app.holds.reserve(DebitRequest("old-hold", "email_unlock", 6, {}, "r1"), 60))
    assert (reservation.reservation_id, reservation.expires_at_ms) == ("old-hold/h4", 99000)
    reservation.decision.message = ""
    assert reservation == Reservation(
        Decision(True, "", 7, 5, 2, 3, 1234, False, "old-hold/8", 0, 0, 0, 0), "old-hold/h4", 99000
    )
    commit = ["ok", 5, 7, 1230, "old-hold/10", 11, 13]
    remember_by_position(server, "old-hold", "r2", fingerprint("commit", "old-hold/h4", -1), commit)
    settled = server.call(server.app.holds.commit("old-hold/h4", None, "r2"))
    assert settled == Settlement(5, 7, 1230, "old-hold/10", 11, 13)
    assert server.available("old-hold") == 2500


def test_a_top_up_remembered_by_position_replays_each_value_in_its_place(server: RunningServer) -> None:
    server.create_customer("old-topup", plan="basic")
    answer = ["ok", "old-topup/5", 4321, "b7"]
    remember_by_position(server, "old-topup", "r1", fingerprint("topup", "", 300, 0), answer)
    change = server.call(server.app.accounts.top_up("old-topup", "", 300, 0, "r1"))
    assert (change.entry_id, change.available, change.bucket.id if change.bucket else None) == (
        "old-topup/5",
        4321,
        "b7",
    )
    assert isinstance(change, CreditChange)
    assert server.available("old-topup") == 2500

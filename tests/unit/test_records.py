"""Outbox entries as the scripts write them, parsed into the records the stores write (every field its own)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from creditgate.server.domain.records import LedgerRecord, SettingsRecord, ledger_events, parse_record

# Every field a distinct value, so that a field read into the wrong place shows.
FULL_COMMIT = {
    "k": "commit",
    "c": "acme",
    "n": 7,
    "d": -12,
    "b": 88,
    "t": 1_798_000_000_123,
    "f": "phone_reveal",
    "q": 3,
    "dim": {"quality": "verified"},
    "fu": 1,
    "o": 2,
    "bk": "b4",
    "r": "settled",
    "rq": "req-9",
    "price": "19.99",
    "bp": 5,
    "bx": 1_800_000_000_000,
    "rd": -12,
    "hold": "h-3",
    "takes": [["b4", 10], ["b5", 2]],
    "ev": ["low_balance"],
    "bc": 11,
}
FULL_COMMIT_RECORD = LedgerRecord(
    customer_id="acme",
    seq=7,
    kind="commit",
    credits_delta=-12,
    balance_after=88,
    created_ms=1_798_000_000_123,
    feature="phone_reveal",
    quantity=3,
    dimensions={"quality": "verified"},
    free_units_used=1,
    overage_credits=2,
    bucket_id="b4",
    request_id="req-9",
    reason="settled",
    price="19.99",
    bucket_priority=5,
    bucket_expires_ms=1_800_000_000_000,
    reserved_delta=-12,
    reservation_id="h-3",
    takes=[["b4", 10], ["b5", 2]],
    events=("low_balance",),
    bucket_rollover_cap=11,
)
# A debit as decide writes it: zeros and an empty request_id left out, its `r` is the request_id, and cjson
# encodes an empty takes table as {}.
SHORT_DEBIT = {"k": "debit", "c": "acme", "n": 8, "d": -1, "b": 87, "t": 5, "r": "req-10", "takes": {}}
SHORT_DEBIT_RECORD = LedgerRecord(
    customer_id="acme",
    seq=8,
    kind="debit",
    credits_delta=-1,
    balance_after=87,
    created_ms=5,
    request_id="req-10",
)

ENTRIES = [
    ("every field", FULL_COMMIT, FULL_COMMIT_RECORD),
    ("a debit with its defaults", SHORT_DEBIT, SHORT_DEBIT_RECORD),
]


@pytest.mark.parametrize(("body", "record"), [case[1:] for case in ENTRIES], ids=[case[0] for case in ENTRIES])
def test_a_ledger_entry_is_parsed_field_by_field(body: dict[str, Any], record: LedgerRecord) -> None:
    assert parse_record("cg:{s0}:outbox", "1-0", {"type": "ledger", "e": json.dumps(body)}) == record


MALFORMED = [
    ("unknown kind", {**SHORT_DEBIT, "k": "bribe"}),
    ("no customer", {key: value for key, value in SHORT_DEBIT.items() if key != "c"}),
    ("a seq that is not a number", {**SHORT_DEBIT, "n": "seven"}),
    ("dimensions that are not an object", {**SHORT_DEBIT, "dim": ["quality"]}),
]


@pytest.mark.parametrize("body", [case[1] for case in MALFORMED], ids=[case[0] for case in MALFORMED])
def test_a_malformed_ledger_entry_is_refused(body: dict[str, Any]) -> None:
    with pytest.raises((KeyError, ValueError)):
        parse_record("cg:{s0}:outbox", "1-0", {"type": "ledger", "e": json.dumps(body)})


EVENTS = [
    ("a debit names none", SHORT_DEBIT_RECORD, []),
    ("a commit names the script's", FULL_COMMIT_RECORD, ["low_balance"]),
    (
        "a grant causes grant_issued first",
        LedgerRecord("acme", 1, "grant", 100, 100, 5, events=("recovered",)),
        ["grant_issued", "recovered"],
    ),
    ("an empty grant causes nothing", LedgerRecord("acme", 1, "grant", 0, 0, 5), []),
]


@pytest.mark.parametrize(("record", "types"), [case[1:] for case in EVENTS], ids=[case[0] for case in EVENTS])
def test_the_events_of_an_entry(record: LedgerRecord, types: list[str]) -> None:
    events = ledger_events(record)
    assert [event.type for event in events] == types
    assert [event.event_id for event in events] == [f"acme/{record.seq}:{name}" for name in types]


def test_a_settings_change_is_parsed_with_its_outbox_id() -> None:
    body = {"c": "acme", "s": {"low_threshold": "2000", "auto_package": ""}, "t": 1_798_000_000_123}
    record = parse_record("cg:{s3}:outbox", "17-2", {"type": "settings", "e": json.dumps(body)})
    assert record == SettingsRecord(
        "cg:{s3}:outbox/17-2", "acme", {"low_threshold": "2000", "auto_package": ""}, 1_798_000_000_123
    )

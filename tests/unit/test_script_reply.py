"""A script's reply read by name (engine/script_reply.py): as the hot path's RESP2 wire receives it and as redis-py's
RESP3 does; a missing name or status is an error naming it."""

from __future__ import annotations

from typing import Any

import pytest
from creditgate.server.engine.script_reply import ScriptReply
from creditgate.server.errors import InternalError


def test_a_reply_reads_the_same_from_a_flat_list_and_from_a_map() -> None:
    flat = ScriptReply("decide", ["charged", 5, "status", "ok", "balance_after", 7])
    mapped = ScriptReply("decide", {"status": "ok", "charged": 5, "balance_after": 7})
    assert [(r.status, r["charged"], r.int("balance_after")) for r in (flat, mapped)] == [("ok", 5, 7)] * 2


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        (["status", "ok", "allowed", 1], "script decide answered 'ok' without 'charged'"),
        (["allowed", 1], "script decide answered without a status"),
        (["status", "ok", "allowed"], "not a reply by name"),
    ],
)
def test_a_reply_missing_a_name_is_an_error_naming_it(reply: Any, error: str) -> None:
    with pytest.raises(InternalError, match=error):
        ScriptReply("decide", reply)["charged"]

"""engine/usage_codec.py and its Lua mirror in lib.lua (period_field, cap_field, day_window, OVERAGE_FIELD) name the
same usage counters: Lua's names are Python's, and Python reads back what Lua wrote."""

from __future__ import annotations

from importlib import resources

import redis
from creditgate.server.domain.periods import DAY_MS
from creditgate.server.engine import usage_codec
from creditgate.server.engine.usage_codec import CapCounter
from harness import RedisServer

# For each (feature, scope, per_day, at_ms): Lua's period field and cap field; then its overage field.
NAMES = """
local answers = {}
for i = 1, #KEYS do
  local scope, per_day, at = ARGV[3 * i - 2], ARGV[3 * i - 1] == '1', tonumber(ARGV[3 * i])
  answers[i] = {period_field(KEYS[i]), cap_field(KEYS[i], scope, per_day, at)}
end
answers[#KEYS + 1] = OVERAGE_FIELD
return answers
"""

JAN_1_2027 = 1_798_761_600_000
COUNTERS = [
    ("email_unlock", "", False, JAN_1_2027),
    ("email_unlock", "", True, JAN_1_2027),
    ("email_unlock", "", True, JAN_1_2027 - 1),  # the last millisecond of the day before
    ("sequence_send", "mailbox-7", True, JAN_1_2027 + DAY_MS + 5),
    ("sequence_send", "a|scope|with|bars", False, 0),
    ("x", "", True, 0),
]


def test_lua_names_the_usage_counters_as_python_does_and_python_reads_them_back(redis_server: RedisServer) -> None:
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    lib = resources.files("creditgate.server.engine").joinpath("lib.lua").read_text()
    args = [part for _, scope, per_day, at in COUNTERS for part in (scope, "1" if per_day else "0", at)]
    answers = client.eval(lib + NAMES, len(COUNTERS), *(c[0] for c in COUNTERS), *args, "epoch")
    assert answers[-1] == usage_codec.OVERAGE_FIELD == "overage"
    expected = [
        [
            usage_codec.period_field(feature),
            usage_codec.cap_field(feature, scope, usage_codec.cap_window(per_day, at)),
        ]
        for feature, scope, per_day, at in COUNTERS
    ]
    assert answers[:-1] == expected
    assert [answer[1] for answer in answers[:-1]] == [
        "c|email_unlock||p",
        "c|email_unlock||20819",
        "c|email_unlock||20818",
        "c|sequence_send|mailbox-7|20820",
        "c|sequence_send|a|scope|with|bars|p",
        "c|x||0",
    ]
    assert [usage_codec.parse_cap_field(answer[1]) for answer in answers[:-1]] == [
        CapCounter("email_unlock", "", "p"),
        CapCounter("email_unlock", "", "20819"),
        CapCounter("email_unlock", "", "20818"),
        CapCounter("sequence_send", "mailbox-7", "20820"),
        CapCounter("sequence_send", "a|scope|with|bars", "p"),
        CapCounter("x", "", "0"),
    ]
    assert [usage_codec.parse_cap_field(answer[0]) for answer in answers[:-1]] == [None] * len(COUNTERS)


def test_a_decision_reads_the_period_counters_and_todays_cap_counters_only() -> None:
    today = JAN_1_2027 + 3 * DAY_MS + 1
    fields = ["p|email_unlock", "overage", "c|email_unlock||p", "c|email_unlock||20822", "c|email_unlock||20821"]
    assert [usage_codec.counts_now(field, today) for field in fields] == [True, True, True, True, False]

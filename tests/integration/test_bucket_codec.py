"""engine/bucket_codec.py and its Lua mirror in lib.lua (parse_bucket, bucket_value, order_member) write and read
the same bucket formats: each side reads what the other wrote, and both order buckets the same way."""

from __future__ import annotations

import random
from importlib import resources

import redis
from creditgate.server.engine import bucket_codec
from creditgate.server.engine.bucket_codec import Bucket
from harness import RedisServer

# Each bucket goes in as the Python encoding; Lua parses it and answers its own encoding, its order member and the
# id read back from that member.
ROUND_TRIP = """
local answers = {}
for i = 1, #KEYS do
  local b = parse_bucket(KEYS[i], ARGV[i])
  local member = order_member(b)
  answers[i] = {bucket_value(b), member, order_member_id(member)}
end
return answers
"""

BUCKETS = [
    Bucket("b1", 2500, 10, 1_801_440_000_000, "grant", 1000),
    Bucket("b2", 1, 20, bucket_codec.NEVER, "topup"),
    Bucket("b3", 0, 0, 1, "adjustment"),
    Bucket("b999999999999", 9_007_199_254_740_991, 999, 999_999_999_999_998, "rollover"),
    Bucket("b42", 7, 30, 1_798_761_600_000, "grant", 0),
]


def run_lua(client: redis.Redis, buckets: list[Bucket]) -> list[list[str]]:
    lib = resources.files("creditgate.server.engine").joinpath("lib.lua").read_text()
    keys = [bucket.id for bucket in buckets]
    values = [bucket_codec.encode(bucket) for bucket in buckets]
    answers: list[list[str]] = client.eval(lib + ROUND_TRIP, len(keys), *keys, *values, "epoch")
    return answers


def test_lua_reads_what_python_writes_and_writes_it_back_the_same(redis_server: RedisServer) -> None:
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    answers = run_lua(client, BUCKETS)
    assert [answer[0] for answer in answers] == [bucket_codec.encode(bucket) for bucket in BUCKETS]
    assert [answer[1] for answer in answers] == [bucket_codec.order_member(bucket) for bucket in BUCKETS]
    assert [answer[2] for answer in answers] == [bucket.id for bucket in BUCKETS]
    assert [
        bucket_codec.decode(bucket.id, answer[0]) for bucket, answer in zip(BUCKETS, answers, strict=True)
    ] == BUCKETS
    assert bucket_codec.order_member(BUCKETS[0]) == "010001801440000000000000000001"
    assert bucket_codec.order_member(BUCKETS[1]) == "020999999999999999000000000002"


def test_the_order_members_sort_as_the_spending_order(redis_server: RedisServer) -> None:
    """Priority first, then the earliest expiry (never last), then the oldest bucket: the byte order of the
    members Lua writes is that order for random buckets."""
    picker = random.Random(21)
    buckets = [
        Bucket(
            f"b{seq}",
            picker.randrange(1, 100),
            picker.choice([0, 10, 20, 999]),
            picker.choice([bucket_codec.NEVER, 1_798_761_600_000, 1_801_440_000_000, picker.randrange(1, 10**13)]),
            "topup",
        )
        for seq in picker.sample(range(1, 10**6), 500)
    ]
    members = [answer[1] for answer in run_lua(redis.Redis.from_url(redis_server.url, decode_responses=True), buckets)]
    by_member = [bucket.id for _, bucket in sorted(zip(members, buckets, strict=True), key=lambda pair: pair[0])]

    def spending(bucket: Bucket) -> tuple[int, float, int]:
        expires = float("inf") if bucket.expires_at_ms == bucket_codec.NEVER else bucket.expires_at_ms
        return bucket.priority, expires, bucket.seq

    assert by_member == [bucket.id for bucket in sorted(buckets, key=spending)]
    assert by_member == [bucket.id for bucket in sorted(buckets, key=bucket_codec.spending_order)]

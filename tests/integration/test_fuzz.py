"""Hypothesis fuzzes every RPC of both services against the live server: requests are built from the proto
descriptors (any string, size, unicode, extreme integer, unknown enum value, dimension map, timestamp) or are
raw bytes that are no message at all. No answer may be UNKNOWN or INTERNAL, the server must keep answering,
and a batch in which nothing was accepted must leave Redis and the durable ledger exactly as they were."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from typing import Any

import grpc
import pytest
import redis
from creditgate.v1 import admin_pb2, metering_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from harness import APOLLO, RedisServer, RunningServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

BATCH = 50
EXAMPLES = 410  # 410 batches of 50: 20,500 requests
METHODS: list[MethodDescriptor] = [
    method
    for module in (metering_pb2, admin_pb2)
    for service in module.DESCRIPTOR.services_by_name.values()
    for method in service.methods
]
# Answers of these change nothing; any other RPC that answers OK may have changed state legitimately.
READ_ONLY = {
    "GetBalance",
    "CheckEntitlement",
    "GetCatalog",
    "GetCustomer",
    "ListLedgerEntries",
    "GetLedgerStatus",
    "PreviewInvoice",
    "ListInvoices",
    "GetInvoice",
    "ListEvents",
}
FORBIDDEN = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.DATA_LOSS}
APOLLO_TEXT = APOLLO.read_text()
CUSTOMERS = ("known", "fresh", "pro")
WORDS = (
    *CUSTOMERS,
    "",
    "email_unlock",
    "mobile_unlock",
    "contact_export",
    "email_send",
    "phone_reveal",
    "ai_personalization",
    "basic",
    "professional",
    "starter",
    "growth",
    "quality",
    "verified",
    "standard",
    "mailbox",
    "a" * 128,
    "a" * 129,
    "x" * 10_240,
    "é",
    "\u0000",
    "💳",
    " ",
    "{s1}",
    "*",
    "../",
    "known/h1",
    "known/1",
    "%%%",
    "dj0x",  # base64 of a v0 page token
    "djE6LTE=",  # base64 of "v1:-1"
    "djE6OTk5OTk5OTk5OTk5OTk5OTk5OTk5OTk5",  # base64 of "v1:" and 30 nines
)
INT_RANGES = {
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
}
EDGES = (0, 1, -1, 2, 50, 1_000_000, 1_000_001, 1_000_000_000, 1_000_000_001, 2**31 - 1, -(2**31), 2**53 + 1)

text = st.one_of(
    st.sampled_from(WORDS),
    st.text(max_size=24),
    st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=8).map(lambda piece: piece * 40),
    st.uuids().map(str),
)
catalog_text = st.one_of(
    st.just(APOLLO_TEXT),
    st.integers(0, len(APOLLO_TEXT)).map(lambda cut: APOLLO_TEXT[:cut]),
    st.tuples(st.integers(0, len(APOLLO_TEXT)), st.text(max_size=16)).map(
        lambda cut: APOLLO_TEXT[: cut[0]] + cut[1] + APOLLO_TEXT[cut[0] :]
    ),
    text,
)


def integers(kind: int) -> st.SearchStrategy[int]:
    low, high = INT_RANGES[kind]
    edges = [edge for edge in (*EDGES, low, high, low + 1, high - 1) if low <= edge <= high]
    return st.one_of(st.sampled_from(edges), st.integers(low, high))


def scalar(field: FieldDescriptor) -> st.SearchStrategy[Any]:
    if field.type == FieldDescriptor.TYPE_STRING:
        return catalog_text if field.name == "catalog_yaml" else text
    if field.type == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=32)
    if field.type == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if field.type == FieldDescriptor.TYPE_ENUM:
        return st.integers(-3, 40)  # known values and unknown ones
    if field.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return st.floats(allow_nan=True, allow_infinity=True, width=32)
    return integers(field.type)


def message(descriptor: Descriptor, depth: int = 0) -> st.SearchStrategy[Message]:
    """A message of this type with a random subset of its fields set to random values."""
    cls = GetMessageClass(descriptor)
    fields = [st.tuples(st.just(item), st.booleans(), value(item, depth)) for item in descriptor.fields if depth < 3]
    return st.tuples(*fields).map(lambda chosen: _build(cls, chosen))


def value(field: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        key_field, value_field = field.message_type.fields_by_name["key"], field.message_type.fields_by_name["value"]
        return st.dictionaries(scalar(key_field), scalar(value_field), max_size=20)
    single = message(field.message_type, depth + 1) if field.message_type is not None else scalar(field)
    if field.is_repeated:
        return st.lists(single, max_size=4)
    return single


def _build(cls: type[Message], chosen: tuple[tuple[FieldDescriptor, bool, Any], ...]) -> Message:
    built = cls()
    for field, use, data in chosen:
        if not use:
            continue
        target = getattr(built, field.name)
        try:
            if field.message_type is not None and field.message_type.GetOptions().map_entry:
                for key, item in data.items():
                    if field.message_type.fields_by_name["value"].message_type is None:
                        target[key] = item
            elif field.is_repeated:
                if field.message_type is not None:
                    for item in data:
                        target.add().CopyFrom(item)
                else:
                    target.extend(data)
            elif field.message_type is not None:
                target.CopyFrom(data)
            else:
                setattr(built, field.name, data)
        except (ValueError, TypeError):
            continue  # a value this field's type refuses client-side (e.g. a closed enum)
    return built


@dataclass(frozen=True)
class Call:
    method: MethodDescriptor
    payload: bytes


def calls_of(method: MethodDescriptor) -> st.SearchStrategy[Call]:
    serialized = message(method.input_type).map(lambda built: built.SerializeToString())
    raw = st.one_of(
        st.binary(max_size=64),  # not a message at all, or by luck one with garbage fields
        st.tuples(serialized, st.binary(min_size=1, max_size=16)).map(lambda pair: pair[0] + pair[1]),
        serialized.filter(lambda data: len(data) > 1).map(lambda data: data[: len(data) // 2]),
    )
    return st.one_of(serialized, serialized, serialized, raw).map(lambda payload: Call(method, payload))


any_call = st.one_of([calls_of(method) for method in METHODS])


@dataclass
class Tally:
    requests: int = 0
    compared_batches: int = 0
    codes: Counter[str] = dataclass_field(default_factory=Counter)
    methods: Counter[str] = dataclass_field(default_factory=Counter)


def snapshot(server: RunningServer, client: redis.Redis) -> tuple[Any, ...]:
    server.flush()
    dumped = {key: client.dump(key) for key in sorted(client.keys("*"))}
    store = server.app.store
    ledgers = [server.call(store.list_ledger(customer, 10_000, None)) for customer in CUSTOMERS]
    return server.app.catalog.rules.version, dumped, ledgers


@pytest.fixture
def target(server: RunningServer) -> RunningServer:
    """The `server`, with the customers the fuzzed calls name."""
    server.create_customer("known", plan="basic")
    server.create_customer("fresh")
    server.create_customer("pro", plan="professional")
    return server


def test_every_rpc_answers_arbitrary_input_properly_and_rejections_change_nothing(
    target: RunningServer, redis_server: RedisServer
) -> None:
    client = redis.Redis.from_url(redis_server.url)
    stubs = {
        method.full_name: target.channel.unary_unary(
            f"/{method.containing_service.full_name}/{method.name}", None, None
        )  # bytes in, bytes out: the fuzzer serializes (or not) itself
        for method in METHODS
    }
    tally = Tally()
    state = [snapshot(target, client)]

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,  # the same 20,500 requests on every run: CI cannot flake
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(st.lists(any_call, min_size=BATCH, max_size=BATCH))
    def fuzz(batch: list[Call]) -> None:
        futures = [stubs[call.method.full_name].future(call.payload, timeout=60) for call in batch]
        accepted_changes = False
        for call, future in zip(batch, futures, strict=True):
            error = future.exception()
            code = grpc.StatusCode.OK if error is None else error.code()  # type: ignore[attr-defined]
            tally.requests += 1
            tally.codes[code.name] += 1
            tally.methods[call.method.name] += 1
            assert code not in FORBIDDEN, f"{call.method.name}({call.payload!r}) answered {code}: {error}"
            if code == grpc.StatusCode.OK and call.method.name not in READ_ONLY:
                accepted_changes = True
        after = snapshot(target, client)
        if not accepted_changes:
            assert after == state[0], f"a batch of refusals changed state: {[c.method.name for c in batch]}"
            tally.compared_batches += 1
        state[0] = after

    fuzz()
    print(f"fuzz: {tally.requests} requests, {tally.compared_batches} all-refused batches compared")
    print(f"fuzz codes: {dict(tally.codes)}")
    assert tally.requests >= 20_000
    assert set(tally.methods) == {method.name for method in METHODS}
    assert tally.compared_batches >= EXAMPLES // 10
    # The server still answers, and what it says of "known" after the fuzzing is what its durable ledger adds up to.
    assert target.available("known") == sum(entry.credits_delta for entry in target.ledger("known"))

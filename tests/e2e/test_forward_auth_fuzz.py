"""Fuzzed forward-auth requests (odd methods, broken URIs, bad quantities, huge or broken headers, broken request
lines) answer 4xx and change nothing: no credit moves, no ledger entry."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from urllib.parse import quote

import pytest
from creditgate.server.domain.routes import METHOD_PATTERN
from creditgate.v1 import admin_pb2
from gateway_rig import EXAMPLE_ROUTES
from harness import RedisServer, RunningServer, start_server
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

CUSTOMER = "fuzz-1"
ROUTE = "/v1/contacts/42/email"
# Header-safe text: what a proxy can put in a header value (no CR or LF; latin-1, as HTTP/1.1 carries it).
HEADER_TEXT = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=60)


@pytest.fixture(scope="module")
def server(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    running = start_server(
        redis_server.url, tmp_path_factory.mktemp("fuzz"), routes=EXAMPLE_ROUTES, http_authz_listen="127.0.0.1:0"
    )
    running.create_customer(CUSTOMER, "basic")
    running.admin.AdjustCredits(
        admin_pb2.AdjustCreditsRequest(customer_id=CUSTOMER, delta=-2400, reason="test", request_id="fuzz-adjust")
    )
    yield running
    running.stop()


def send(server: RunningServer, raw: bytes) -> int:
    """The status of the forward-auth answer to raw request bytes (0: the connection closed without one)."""
    assert server.app.front_doors is not None and server.app.front_doors.forward_auth is not None
    with socket.create_connection(("127.0.0.1", server.app.front_doors.forward_auth.port), timeout=10) as conn:
        conn.sendall(raw)
        answer = b""
        while b"\r\n" not in answer:
            chunk = conn.recv(4096)
            if not chunk:
                break
            answer += chunk
    parts = answer.split(b" ", 2)
    return int(parts[1]) if len(parts) > 1 and parts[0].startswith(b"HTTP/1.") else 0


def forward_auth_request(method: str, uri: str, *extra: tuple[str, str]) -> bytes:
    headers = [("Host", "creditgate"), ("X-Original-Method", method), ("X-Original-URI", uri)]
    headers += [("X-Customer-Id", CUSTOMER), *extra, ("Connection", "close")]
    lines = ["GET /auth HTTP/1.1", *(f"{name}: {value}" for name, value in headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


# Not a method (proxies trim a header value's spaces): a real method would be decided, or let through unmatched.
odd_methods = HEADER_TEXT.filter(lambda text: not METHOD_PATTERN.match(text.strip(" \t")))
broken_uris = st.one_of(
    HEADER_TEXT.filter(lambda text: not text.lstrip().startswith("/")).map(lambda text: text or "x"),
    HEADER_TEXT.map(lambda text: "//" + text),
    HEADER_TEXT.filter(lambda text: text.strip() != "").map(lambda text: ROUTE + " " + text),
    st.integers(8193 - len(ROUTE), 8190).map(lambda size: ROUTE + "?" + "a" * size),
    st.sampled_from(["%ff", "%c3%28", "%e2%82"]).map(lambda bad: f"{ROUTE}?q={bad}"),
)
# An empty value is an absent one (quantity 1), and proxies trim spaces.
bad_quantities = HEADER_TEXT.map(str.strip).filter(
    lambda text: text != "" and (not text.isdigit() or len(text) > 9 or int(text) == 0 or int(text) > 1_000_000)
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    request=st.one_of(
        odd_methods.map(lambda method: forward_auth_request(method, ROUTE)),
        broken_uris.map(lambda uri: forward_auth_request("POST", uri)),
        bad_quantities.map(lambda count: forward_auth_request("POST", "/v1/exports?count=" + quote(count))),
        bad_quantities.map(lambda count: forward_auth_request("POST", "/v1/enrich", ("X-Record-Count", count))),
        st.integers(8191, 70_000).map(lambda size: forward_auth_request("POST", ROUTE, ("X-Big", "b" * size))),
        st.integers(129, 300).map(
            lambda count: forward_auth_request("POST", ROUTE, *((f"X-H{n}", "v") for n in range(count)))
        ),
        HEADER_TEXT.map(lambda junk: forward_auth_request("POST", ROUTE, ("X-Request-Id", "bad id " + junk))),
        st.binary(min_size=1, max_size=300).map(lambda junk: b"POST /a HTTP/1.1\r\n" + junk + b"\r\n\r\n"),
        st.binary(min_size=1, max_size=100)
        .filter(lambda junk: b"\r\n" not in junk)
        .map(lambda junk: junk + b"\r\n\r\n"),
    )
)
def test_fuzzed_requests_answer_4xx_and_change_nothing(server: RunningServer, request: bytes) -> None:
    status = send(server, request)
    assert 400 <= status < 500, (status, request[:200])
    assert server.available(CUSTOMER) == 100


def test_after_the_fuzz_the_ledger_holds_no_debit(server: RunningServer) -> None:
    kinds = [entry.kind for entry in server.ledger(CUSTOMER)]
    assert kinds == [admin_pb2.LEDGER_ENTRY_KIND_GRANT, admin_pb2.LEDGER_ENTRY_KIND_ADJUSTMENT]
    # The same connection path still decides a proper request.
    assert send(server, forward_auth_request("POST", ROUTE)) == 200
    assert server.available(CUSTOMER) == 99

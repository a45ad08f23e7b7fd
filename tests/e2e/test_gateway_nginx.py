"""A real nginx (Debian's) with auth_request, configured by examples/nginx.conf, in front of a small upstream,
against a real creditgate deciding by examples/routes.yaml on the Apollo catalog."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from creditgate.v1 import admin_pb2
from gateway_rig import EXAMPLE_ROUTES, Nginx, Upstream
from harness import RedisServer, RunningServer, start_server


class Rig:
    def __init__(self, server: RunningServer, upstream: Upstream, nginx: Nginx) -> None:
        self.server = server
        self.upstream = upstream
        self.nginx = nginx
        self.http = httpx.Client(base_url=nginx.url, timeout=10)

    def post(self, path: str, customer: str | None, **headers: str) -> httpx.Response:
        if customer is not None:
            headers["x-customer-id"] = customer
        return self.http.post(path, headers={k.replace("_", "-"): v for k, v in headers.items()})

    def customer_with(self, customer_id: str, credits: int) -> None:
        """A Basic customer (2,500 credits this month) brought down to `credits`."""
        self.server.create_customer(customer_id, "basic")
        self.server.admin.AdjustCredits(
            admin_pb2.AdjustCreditsRequest(
                customer_id=customer_id, delta=credits - 2500, reason="test", request_id=f"{customer_id}-adjust"
            )
        )


def start_rig(redis_server: RedisServer, folder: Path, routes: Path) -> Rig:
    server = start_server(redis_server.url, folder, routes=routes, http_authz_listen="127.0.0.1:0")
    upstream = Upstream()
    try:
        assert server.app.front_doors is not None and server.app.front_doors.forward_auth is not None
        nginx = Nginx(folder / "nginx", upstream.port, server.app.front_doors.forward_auth.port)
    except BaseException:
        upstream.stop()
        server.stop()
        raise
    return Rig(server, upstream, nginx)


def stop_rig(rig: Rig) -> None:
    rig.http.close()
    rig.nginx.stop()
    rig.upstream.stop()
    rig.server.stop()


@pytest.fixture(scope="module")
def rig(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    running = start_rig(redis_server, tmp_path_factory.mktemp("gateway"), EXAMPLE_ROUTES)
    yield running
    stop_rig(running)


def test_ten_allowed_calls_charge_ten_credits_then_402_and_the_upstream_sees_nothing(rig: Rig) -> None:
    rig.customer_with("nginx-a", 10)
    before = len(rig.upstream.seen)
    for n in range(10):
        response = rig.post("/v1/contacts/42/email", "nginx-a")
        assert response.status_code == 200, rig.nginx.error_log()
        assert response.text == "upstream ok"
        assert response.headers["x-credits-charged"] == "1"
        assert response.headers["x-credits-remaining"] == str(9 - n)
    reached = rig.upstream.seen[before:]
    assert len(reached) == 10
    assert [seen.headers["x-credits-remaining"] for seen in reached] == [str(9 - n) for n in range(10)]
    assert all(seen.headers["x-credits-charged"] == "1" and seen.headers["x-creditgate-entry-id"] for seen in reached)
    assert len({seen.headers["x-creditgate-entry-id"] for seen in reached}) == 10
    assert rig.server.available("nginx-a") == 0

    denied = rig.post("/v1/contacts/42/email", "nginx-a")
    assert denied.status_code == 402
    assert denied.headers["content-type"] == "application/json"
    body = denied.json()
    assert body["reason"] == "INSUFFICIENT_CREDITS"
    assert body["message"] == (
        "Not enough credits: email_unlock costs 1 and 0 are available."
        " Buy credits (starter: 1,000 credits for 29.00 USD) or upgrade."
    )
    assert body["upgrade"] == {"packages": ["starter", "growth", "pro"], "plans": ["basic", "professional"]}
    assert len(rig.upstream.seen) == before + 10
    debits = [entry for entry in rig.server.ledger("nginx-a") if entry.kind == admin_pb2.LEDGER_ENTRY_KIND_DEBIT]
    assert [entry.credits_delta for entry in debits] == [-1] * 10


def test_a_retry_with_the_same_request_id_is_charged_once(rig: Rig) -> None:
    rig.customer_with("nginx-b", 100)
    first = rig.post("/v1/contacts/7/mobile", "nginx-b", x_quality="verified", x_request_id="retry-1")
    again = rig.post("/v1/contacts/7/mobile", "nginx-b", x_quality="verified", x_request_id="retry-1")
    assert first.status_code == again.status_code == 200
    assert first.headers["x-credits-charged"] == again.headers["x-credits-charged"] == "10"
    assert first.headers["x-creditgate-entry-id"] == again.headers["x-creditgate-entry-id"]
    assert rig.server.available("nginx-b") == 90
    debits = [entry for entry in rig.server.ledger("nginx-b") if entry.kind == admin_pb2.LEDGER_ENTRY_KIND_DEBIT]
    assert [(entry.credits_delta, entry.request_id) for entry in debits] == [(-10, "retry-1")]


def test_quantity_from_the_query_uses_free_units_first(rig: Rig) -> None:
    rig.customer_with("nginx-q", 100)
    response = rig.post("/v1/exports?count=60", "nginx-q")
    assert response.status_code == 200
    # contact_export: 50 free units a month on Basic, then 1 credit each.
    assert response.headers["x-credits-charged"] == "10"
    assert response.headers["x-credits-remaining"] == "90"


def test_a_capped_feature_answers_429_with_retry_after(rig: Rig) -> None:
    rig.server.create_customer("nginx-c", "basic")
    # Basic caps email_send at 250 a day per mailbox; the first 250 go through the gRPC API.
    for n in range(250):
        assert rig.server.debit("nginx-c", "email_send", request_id=f"send-{n}", mailbox="sales").allowed
    before = len(rig.upstream.seen)
    capped = rig.post("/v1/mailboxes/sales/send", "nginx-c")
    assert capped.status_code == 429
    # The test clock stands at 2027-01-01 00:00 UTC: the day cap resets in exactly one day.
    assert capped.headers["retry-after"] == "86400"
    assert capped.json() == {
        "reason": "LIMIT_EXCEEDED",
        "message": "The limit of 250 email_send for this window is reached (250 used).",
        "upgrade": None,
        "retry_after": 86400,
    }
    other_mailbox = rig.post("/v1/mailboxes/support/send", "nginx-c")
    assert other_mailbox.status_code == 200
    assert other_mailbox.headers["x-credits-charged"] == "1"
    assert len(rig.upstream.seen) == before + 1


def test_unmatched_requests_are_allowed_uncharged_and_spoofed_credit_headers_are_dropped(rig: Rig) -> None:
    rig.customer_with("nginx-u", 5)
    before = len(rig.upstream.seen)
    response = rig.http.get("/healthz", headers={"x-customer-id": "nginx-u", "x-credits-charged": "0"})
    assert response.status_code == 200
    assert "x-credits-charged" not in response.headers
    assert len(rig.upstream.seen) == before + 1
    assert "x-credits-charged" not in rig.upstream.seen[-1].headers
    assert rig.server.available("nginx-u") == 5


def test_no_customer_header_is_401_and_an_unknown_customer_403(rig: Rig) -> None:
    before = len(rig.upstream.seen)
    missing = rig.post("/v1/contacts/42/email", None)
    assert missing.status_code == 401
    assert missing.json() == {
        "reason": "CUSTOMER_MISSING",
        "message": "no customer: the request carries no x-customer-id header",
        "upgrade": None,
        "field": "customer",
    }
    unknown = rig.post("/v1/contacts/42/email", "nobody-here")
    assert unknown.status_code == 403
    assert unknown.json()["reason"] == "CUSTOMER_NOT_FOUND"
    assert len(rig.upstream.seen) == before


def test_a_feature_the_plan_lacks_is_403_with_the_plans_that_have_it(rig: Rig) -> None:
    rig.customer_with("nginx-p", 100)
    response = rig.post("/v1/ai/personalize", "nginx-p")
    assert response.status_code == 403
    assert response.json() == {
        "reason": "NOT_ENTITLED",
        "message": "Your plan does not include ai_personalization. Upgrade to professional.",
        "upgrade": {"plans": ["professional"]},
    }
    assert rig.server.available("nginx-p") == 100


def test_unmatched_deny_refuses_what_no_route_names(redis_server: RedisServer, tmp_path: Path) -> None:
    routes = tmp_path / "routes.yaml"
    routes.write_text(EXAMPLE_ROUTES.read_text().replace("unmatched: allow", "unmatched: deny"))
    rig = start_rig(redis_server, tmp_path, routes)
    try:
        rig.customer_with("nginx-d", 5)
        refused = rig.http.get("/healthz", headers={"x-customer-id": "nginx-d"})
        assert refused.status_code == 403
        assert json.loads(refused.text) == {
            "reason": "NO_ROUTE",
            "message": "GET /healthz is not a route this API sells or allows",
            "upgrade": None,
        }
        assert rig.upstream.seen == []
        assert rig.post("/v1/contacts/1/email", "nginx-d").status_code == 200
        assert len(rig.upstream.seen) == 1
    finally:
        stop_rig(rig)

"""The operator console in a real headless Chromium, against a real creditgate server (Redis, SQLite) and the
console as `creditgate console` in its own process: one server, one console and one browser for the module."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from billing import a_month_of_professional, invoice_once
from console_browser import PASSWORD, ConsoleProcess, screenshot, sign_in
from creditgate.v1 import admin_pb2, metering_pb2
from harness import JAN_1, RedisServer, RunningServer, free_port, start_server
from playwright.sync_api import Browser, Page, expect

FEB_1 = datetime(2027, 2, 1, tzinfo=UTC)
DEAD_RECEIVER = f"http://127.0.0.1:{free_port()}/hooks"
JANUARY_INVOICE = f"acme/inv/{int(JAN_1.timestamp() * 1000)}"


def wait_for_first_delivery(server: RunningServer, event_id: str) -> None:
    deadline = time.monotonic() + 30
    while True:
        events = server.admin.ListEvents(admin_pb2.ListEventsRequest(customer_id="acme")).events
        if any(event.event_id == event_id and [d.attempts for d in event.deliveries] == [1] for event in events):
            return
        assert time.monotonic() < deadline, "the first delivery was not tried"
        time.sleep(0.1)


@dataclass
class World:
    server: RunningServer
    console: ConsoleProcess


@pytest.fixture(scope="module")
def world(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """acme's January on Professional (the billing tests' invoice), then February's customers on Basic."""
    tmp_path: Path = tmp_path_factory.mktemp("console")
    server = start_server(
        redis_server.url,
        tmp_path,
        metrics_listen="127.0.0.1:0",
        health_probe_interval_seconds=0.5,
        # A receiver that is not there: deliveries fail once, and the next try is an hour away.
        webhook_urls=(DEAD_RECEIVER,),
        webhook_secret="whsec_" + base64.b64encode(b"creditgate-console-test-secret!!").decode(),
        webhook_backoff_seconds=3600,
        deliver_interval_seconds=0.2,
    )
    a_month_of_professional(server)
    server.clock.set(FEB_1)
    server.available("acme")  # February opens
    assert invoice_once(server) == 1
    wait_for_first_delivery(server, f"{JANUARY_INVOICE}:invoice_finalized")
    for customer_id in ("globex", "initech", "umbrella", "hooli", "wayne"):
        server.create_customer(customer_id, "basic")
    console = ConsoleProcess(
        "--target",
        f"127.0.0.1:{server.app.port}",
        "--metrics-url",
        f"http://127.0.0.1:{server.app.metrics_port}/metrics",
    )
    yield World(server, console)
    console.stop()
    server.stop()


@pytest.fixture(scope="module")
def page(browser: Browser, world: World) -> Iterator[Page]:
    """A signed-in page at desktop width."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    signed_in = context.new_page()
    sign_in(signed_in, world.console.url)
    expect(signed_in.get_by_role("heading", name="Live")).to_be_visible()
    yield signed_in
    context.close()


def ledger_rows(page: Page) -> list[dict[str, str]]:
    rows = page.locator("#ledger tbody tr[data-entry]")
    return [
        {
            "entry": rows.nth(i).get_attribute("data-entry") or "",
            "kind": rows.nth(i).locator(".kind").inner_text(),
            "delta": rows.nth(i).locator(".delta").inner_text(),
            "balance": rows.nth(i).locator(".balance").inner_text(),
            "reason": rows.nth(i).locator(".reason").inner_text(),
            "request": rows.nth(i).locator(".request").inner_text(),
        }
        for i in range(rows.count())
    ]


def submit_and_confirm(page: Page, form: str, button: str) -> None:
    page.locator(form).get_by_role("button", name=button).click()
    page.get_by_role("button", name="Confirm").click()


def test_nothing_is_shown_before_sign_in_and_a_wrong_password_is_refused(browser: Browser, world: World) -> None:
    context = browser.new_context()
    try:
        page = context.new_page()
        response = page.goto(f"{world.console.url}/customers/globex")
        assert response is not None
        assert page.url == f"{world.console.url}/signin?next=/customers/globex"
        assert "globex" not in page.locator("main").inner_text()
        assert httpx.get(f"{world.console.url}/live.json").status_code == 401

        page.get_by_label("Console password").fill("not the password")
        with page.expect_response(f"{world.console.url}/signin") as answer:
            page.get_by_role("button", name="Sign in").click()
        assert answer.value.status == 401
        expect(page.locator("#signin-error")).to_have_text("Wrong password.")
        screenshot(page, "signin")

        page.get_by_label("Console password").fill(PASSWORD)
        page.get_by_role("button", name="Sign in").click()
        expect(page.locator("#customer-id")).to_have_text("globex")  # back where it was going
        cookie = next(item for item in context.cookies() if item["name"] == "creditgate_console")
        assert (cookie["httpOnly"], cookie["sameSite"]) == (True, "Strict")

        page.goto(world.console.url)
        expect(page.locator("#failures")).to_have_text("1")
        page.get_by_role("button", name="Sign out").click()
        page.goto(f"{world.console.url}/catalog")
        assert page.url.startswith(f"{world.console.url}/signin")
    finally:
        context.close()


def test_find_a_customer_and_its_wallet_is_exactly_what_get_balance_says(page: Page, world: World) -> None:
    world.server.debit("globex", "email_unlock", 30)
    world.server.debit("globex", "contact_export", 60)  # 50 free units, then 10 credits
    world.server.admin.CreateCustomer(admin_pb2.CreateCustomerRequest(customer_id="gx:eu", name="Globex Europe"))
    world.server.flush()
    page.goto(f"{world.console.url}/customers")
    search = page.get_by_label("Customer id (or its start) or name")
    search.fill("glob")  # the start of one's id, and a part of the other's name
    search.press("Enter")
    expect(page.locator("#results tbody tr td:first-child")).to_have_text(["globex", "gx:eu"])
    search.fill("europe")  # a part of a name, in another case
    search.press("Enter")
    expect(page.locator("#results tbody tr td:first-child")).to_have_text(["gx:eu"])
    search.fill("glob")
    search.press("Enter")
    page.get_by_role("link", name="globex", exact=True).click()
    expect(page.locator("#customer-id")).to_have_text("globex")

    balance = world.server.metering.GetBalance(metering_pb2.GetBalanceRequest(customer_id="globex"))
    assert balance.available_credits == 2_460
    expect(page.locator("#available")).to_have_text("2,460")
    expect(page.locator("#reserved")).to_have_text("0")
    buckets = [
        [cell.strip() for cell in row.split("\t")] for row in page.locator("#buckets tbody tr").all_inner_texts()
    ]
    assert buckets == [
        [bucket.id, "plan grant", f"{bucket.remaining_credits:,}", str(bucket.priority), "2027-03-01 00:00 UTC"]
        for bucket in balance.buckets
    ]
    assert [row[2] for row in buckets] == ["2,460"]
    usage = {row.split("\t")[0]: row.split("\t")[1:3] for row in page.locator("#usage tbody tr").all_inner_texts()}
    assert usage["contact_export"] == ["60", "0 of 50"]
    assert usage["email_unlock"] == ["30", "0"]
    expect(page.locator("#plan")).to_have_text("Basic")
    screenshot(page, "customer")


def test_an_open_hold_shows_with_the_credits_it_holds(page: Page, world: World) -> None:
    held = world.server.metering.Reserve(
        metering_pb2.ReserveRequest(customer_id="wayne", feature="email_unlock", quantity=40, request_id="hold-1")
    )
    settled = world.server.metering.Reserve(
        metering_pb2.ReserveRequest(customer_id="wayne", feature="email_unlock", quantity=5, request_id="hold-2")
    )
    world.server.metering.Release(metering_pb2.ReleaseRequest(reservation_id=settled.reservation_id))
    world.server.flush()
    page.goto(f"{world.console.url}/customers/wayne")
    expect(page.locator("#reserved")).to_have_text("40")
    expect(page.locator("#available")).to_have_text("2,460")
    holds = [row.split("\t")[:4] for row in page.locator("#holds tbody tr").all_inner_texts()]
    assert holds == [[held.reservation_id, "email_unlock", "40", "40"]]


def test_top_up_starter_adds_1000_credits_and_the_ledger_shows_it(page: Page, world: World) -> None:
    before = world.server.available("globex")
    page.goto(f"{world.console.url}/customers/globex")
    page.get_by_label("Package").first.select_option("starter")
    page.locator("#form-topup").get_by_role("button", name="Top up…").click()
    expect(page.locator("#summary")).to_have_text("Top up globex with the Starter pack (1,000 credits for 29.00 USD).")
    page.get_by_role("button", name="Confirm").click()
    expect(page.locator(".flash")).to_have_text(
        f"Topped up globex with 1,000 credits (29.00 USD): {before + 1000:,} available"
    )
    assert world.server.available("globex") == before + 1000
    expect(page.locator("#available")).to_have_text(f"{before + 1000:,}")

    world.server.flush()
    page.get_by_role("link", name="Ledger").click()
    newest = ledger_rows(page)[0]
    assert (newest["kind"], newest["delta"], newest["balance"], newest["reason"]) == (
        "top up",
        "+1,000",
        f"{before + 1000:,}",
        "starter",
    )


def test_adjust_minus_50_with_a_reason_shows_the_entry_and_the_reason(page: Page, world: World) -> None:
    before = world.server.available("globex")
    page.goto(f"{world.console.url}/customers/globex")
    page.get_by_label("Credits (+ adds, − removes)").fill("-50")
    page.get_by_label("Reason").fill("duplicate export refunded twice")
    page.locator("#form-adjust").get_by_role("button", name="Adjust…").click()
    expect(page.locator("#summary")).to_have_text("Remove 50 credits from globex: “duplicate export refunded twice”.")
    page.get_by_role("button", name="Confirm").click()
    expect(page.locator(".flash")).to_have_text(f"Adjusted globex by -50 credits: {before - 50:,} available")
    assert world.server.available("globex") == before - 50

    world.server.flush()
    page.goto(f"{world.console.url}/customers/globex/ledger?kind=adjustment")
    rows = ledger_rows(page)
    assert [(row["kind"], row["delta"], row["balance"], row["reason"]) for row in rows] == [
        ("adjustment", "-50", f"{before - 50:,}", "duplicate export refunded twice")
    ]
    page.goto(f"{world.console.url}/customers/globex/ledger")
    screenshot(page, "ledger")


def test_the_same_top_up_form_sent_twice_charges_once(page: Page, world: World) -> None:
    before = world.server.available("initech")
    page.goto(f"{world.console.url}/customers/initech")
    page.get_by_label("Package").first.select_option("starter")
    page.locator("#form-topup").get_by_role("button", name="Top up…").click()
    fields: dict[str, str | float | bool] = {
        name: page.locator(f"form input[name='{name}']").first.get_attribute("value") or ""
        for name in ("csrf", "step", "request_id", "package")
    }
    action = page.locator("form[action$='/actions/topup']").get_attribute("action")
    page.get_by_role("button", name="Confirm").dblclick()
    # Both clicks may be answered on one page: the top-up's message, and the second's "sent before" (same text).
    expect(page.locator(".flash").first).to_contain_text("Topped up initech with 1,000 credits")
    # The second click's navigation may still be on its way, and would take the session's next message.
    page.wait_for_load_state("networkidle")
    # The same form again, as a browser's "resubmit" sends it: same request_id, same session.
    again = page.request.post(f"{world.console.url}{action}", form=fields)
    assert again.status == 200  # the redirect to the customer page, followed
    assert f"This form was sent before: Topped up initech with 1,000 credits (29.00 USD): {before + 1000:,}" in (
        again.text()
    )

    assert world.server.available("initech") == before + 1000
    top_ups = [entry for entry in world.server.ledger("initech") if entry.kind == admin_pb2.LEDGER_ENTRY_KIND_TOP_UP]
    assert [(entry.credits_delta, entry.request_id) for entry in top_ups] == [(1000, fields["request_id"])]


def test_a_form_without_its_csrf_token_is_refused_and_changes_nothing(page: Page, world: World) -> None:
    before = world.server.available("umbrella")
    url = f"{world.console.url}/customers/umbrella/actions/adjust"
    form: dict[str, str | float | bool] = {
        "step": "confirm",
        "request_id": "forged-1",
        "delta": "5000",
        "reason": "free money",
    }
    missing = page.request.post(url, form=form)
    wrong = page.request.post(url, form=form | {"csrf": "guessed"})
    assert (missing.status, wrong.status) == (403, 403)
    assert "Form refused" in missing.text()
    assert world.server.available("umbrella") == before == 2_500
    assert [entry.kind for entry in world.server.ledger("umbrella")] == [admin_pb2.LEDGER_ENTRY_KIND_GRANT]


def test_a_refused_action_shows_the_servers_reason_next_to_the_field(page: Page, world: World) -> None:
    page.goto(f"{world.console.url}/customers/hooli")
    page.get_by_label("Credits (+ adds, − removes)").fill("-9000")
    page.get_by_label("Reason").fill("too much")
    submit_and_confirm(page, "#form-adjust", "Adjust…")
    expect(page.locator("#adjust-delta-error")).to_have_text(
        "INSUFFICIENT_CREDITS: cannot remove 9000 credits: 2500 are available"
    )
    expect(page.get_by_label("Reason")).to_have_value("too much")  # what was typed stays
    assert world.server.available("hooli") == 2_500
    screenshot(page, "refused")


def test_an_unknown_customers_url_shows_a_clear_not_found_page(page: Page, world: World) -> None:
    response = page.goto(f"{world.console.url}/customers/nobody-here")
    assert response is not None and response.status == 404
    expect(page.locator("#error-title")).to_have_text("Customer not found")
    expect(page.locator("#error-reason")).to_have_text("CUSTOMER_NOT_FOUND")


def test_the_invoice_page_shows_the_professional_january_invoice_exactly(page: Page, world: World) -> None:
    page.goto(f"{world.console.url}/customers/acme/invoices")
    page.get_by_role("link", name=JANUARY_INVOICE).click()
    expect(page.locator("#invoice-id")).to_have_text(JANUARY_INVOICE)
    lines = [
        [cell.strip() for cell in row.split("\t")] for row in page.locator(".invoice-lines tbody tr").all_inner_texts()
    ]
    assert lines == [
        ["Professional (yearly)", "plan fee", "1", "948.00", "948.00"],
        ["Starter: 1,000 credits", "top up", "1", "29.00", "29.00"],
        ["Overage credits", "overage", "600", "1.00", "600.00"],
    ]
    expect(page.locator(".invoice-lines .subtotal")).to_have_text("1577.00")
    expect(page.locator(".invoice-lines .total")).to_have_text("1577.00 USD")
    screenshot(page, "invoice")


def test_the_live_view_charts_decisions_from_the_servers_counters(page: Page, world: World) -> None:
    for _ in range(3):
        assert world.server.debit("hooli", "email_unlock").allowed
    assert not world.server.debit("hooli", "ai_personalization").allowed  # Basic: not entitled
    page.goto(world.console.url)
    expect(page.locator("#chart polyline[data-outcome='allowed']")).to_have_count(1)
    expect(page.locator("#chart polyline[data-outcome='not_entitled']")).to_have_count(1)
    live = page.request.get(f"{world.console.url}/live.json").json()
    assert live["latest"]["decisions_total"]["not_entitled"] == 1.0
    assert live["latest"]["decisions_total"]["allowed"] >= 3.0  # and the earlier tests' debits
    expect(page.locator("td[data-service='creditgate.v1.MeteringService']")).to_have_text("SERVING")
    expect(page.locator("#backlog")).to_be_visible()
    # htmx swaps the panel in place every sample interval (0.5 s here), keeping its own trigger.
    panel = page.request.get(f"{world.console.url}/live/panel").text()
    assert 'hx-trigger="every 0.5s"' in panel
    screenshot(page, "live")


def test_events_and_catalog_pages(page: Page, world: World) -> None:
    page.goto(f"{world.console.url}/events?customer=acme")
    invoice_event = page.locator("#events tbody tr", has_text=f"{JANUARY_INVOICE}:invoice_finalized")
    expect(invoice_event.locator(".delivery")).to_contain_text(f"{DEAD_RECEIVER}: pending, 1 attempt · ")
    screenshot(page, "events")
    invoice_event.get_by_role("button", name="Redeliver…").click()
    expect(page.locator("#summary")).to_have_text(
        f"Send event {JANUARY_INVOICE}:invoice_finalized to every webhook URL again."
    )
    page.get_by_role("button", name="Confirm").click()
    expect(page.locator(".flash")).to_have_text(
        f"Event {JANUARY_INVOICE}:invoice_finalized queued again for 1 webhook URL(s)"
    )
    page.goto(f"{world.console.url}/catalog")
    packs = [row.split("\t")[:4] for row in page.locator("#packages tbody tr").all_inner_texts()]
    assert packs == [
        ["starter", "Starter", "1,000", "29.00 USD"],
        ["growth", "Growth", "5,000", "99.00 USD"],
        ["pro", "Pro", "20,000", "299.00 USD"],
    ]
    screenshot(page, "catalog")


def test_the_customer_page_reads_at_390_pixels(browser: Browser, world: World) -> None:
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True)
    try:
        phone = context.new_page()
        sign_in(phone, world.console.url)
        phone.goto(f"{world.console.url}/customers/globex")
        expect(phone.locator("#available")).to_be_visible()
        # Wide tables scroll inside their card; the page itself never scrolls sideways.
        assert phone.evaluate("document.documentElement.scrollWidth") <= 390
        screenshot(phone, "customer-390")
    finally:
        context.close()


def test_every_page_loads_only_the_consoles_own_files(page: Page, world: World) -> None:
    requested: list[str] = []
    complaints: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    page.on("console", lambda message: complaints.append(message.text) if message.type == "error" else None)
    for path in ("/", "/customers/acme", "/customers?q=acme"):
        page.goto(f"{world.console.url}{path}")
        page.wait_for_load_state("networkidle")
    assert f"{world.console.url}/static/htmx.min.js" in requested
    assert f"{world.console.url}/static/live.js" in requested
    assert [url for url in requested if not url.startswith(f"{world.console.url}/")] == []
    assert complaints == []  # a Content-Security-Policy refusal would show here

"""The operator console: a small server-rendered web app over creditgate's public API (the Python SDK).

It never reads Redis or the durable store: every figure it shows comes from an RPC (or, for the live view, the
server's Prometheus endpoint), so it works against any deployment the SDK can reach, TLS and API keys included.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC
from pathlib import Path
from typing import Any

import grpc
import structlog
from creditgate.client import (
    AsyncClient,
    CreditgateError,
    CustomerNotFound,
    LedgerEntryKind,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)
from creditgate.console.actions import PLANNERS, FieldError, Submissions
from creditgate.console.auth import COOKIE, PasswordCheck, Session, Sessions, SignInFailures, csrf_matches
from creditgate.console.catalog import Catalog, parse_catalog
from creditgate.console.live import LiveSampler
from creditgate.console.settings import ConsoleSettings
from creditgate.v1 import admin_pb2, metering_pb2
from google.protobuf import timestamp_pb2
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from starlette.applications import Starlette
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = structlog.get_logger("creditgate.console")
HERE = Path(__file__).parent
LEDGER_PAGE_SIZE = 25
# Customers a search shows (each read whole with GetCustomer).
SEARCH_RESULTS = 25
# A filtered ledger page reads at most this many API pages before it shows what it found.
LEDGER_SCAN_PAGES = 20
# Open holds are found among the newest entries of the durable ledger.
HOLD_SCAN_ENTRIES = 1000
SETTLING_KINDS = {
    LedgerEntryKind.LEDGER_ENTRY_KIND_COMMIT,
    LedgerEntryKind.LEDGER_ENTRY_KIND_RELEASE,
    LedgerEntryKind.LEDGER_ENTRY_KIND_RESERVATION_EXPIRY,
}
SECURITY_HEADERS = [
    # Every script, style and font is the console's own: nothing else may load, nothing inline runs.
    (
        b"content-security-policy",
        b"default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'",
    ),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"cache-control", b"no-store"),
]


class SignInRequired(Exception):
    pass


class CsrfRefused(Exception):
    pass


@dataclass
class Connection:
    """The channel to the server and what uses it; made inside the web server's event loop (grpc.aio binds a
    channel to the loop it is created in)."""

    channel: aio.Channel
    client: AsyncClient
    live: LiveSampler


@dataclass
class Console:
    settings: ConsoleSettings
    passwords: PasswordCheck
    sessions: Sessions
    failures: SignInFailures
    connection: Connection | None = None
    submissions: Submissions = field(default_factory=Submissions)
    templates: Jinja2Templates = field(default_factory=lambda: Jinja2Templates(directory=str(HERE / "templates")))

    @property
    def client(self) -> AsyncClient:
        return self._connected().client

    @property
    def live(self) -> LiveSampler:
        return self._connected().live

    def _connected(self) -> Connection:
        if self.connection is None:
            raise RuntimeError("the console's lifespan has not started: no connection to the server yet")
        return self.connection

    async def catalog(self) -> Catalog:
        response = await self.client.get_catalog()
        return parse_catalog(response.version, response.catalog_yaml)


def _channel(settings: ConsoleSettings) -> aio.Channel:
    options: list[tuple[str, str | int]] = []
    if not settings.uses_tls:
        return aio.insecure_channel(settings.target)
    if settings.tls_server_name:
        options.append(("grpc.ssl_target_name_override", settings.tls_server_name))
    credentials = grpc.ssl_channel_credentials(
        root_certificates=settings.tls_ca_file.read_bytes() if settings.tls_ca_file else None,
        private_key=settings.tls_client_key_file.read_bytes() if settings.tls_client_key_file else None,
        certificate_chain=settings.tls_client_cert_file.read_bytes() if settings.tls_client_cert_file else None,
    )
    return aio.secure_channel(settings.target, credentials, options=options)


def connect(settings: ConsoleSettings) -> Connection:
    channel = _channel(settings)
    client = AsyncClient(
        channel=channel,
        api_key=settings.api_key.get_secret_value() if settings.api_key else None,
        timeout=settings.call_timeout_seconds,
    )
    health_stub = health_pb2_grpc.HealthStub(channel)

    async def health_of(service: str) -> str:
        try:
            response = await health_stub.Check(
                health_pb2.HealthCheckRequest(service=service), timeout=settings.call_timeout_seconds
            )
        except grpc.RpcError as exc:
            return f"unreachable ({exc.code().name})"
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))

    live = LiveSampler(client, health_of, settings.metrics_url, settings.sample_interval_seconds, settings.samples_kept)
    return Connection(channel, client, live)


# Jinja filters: credits are integers shown with separators, times in UTC.


def credits(value: int) -> str:
    return f"{value:,}"


def signed(value: int) -> str:
    return f"{value:+,}"


def when(value: timestamp_pb2.Timestamp | None) -> str:
    if value is None or (value.seconds == 0 and value.nanos == 0):
        return "—"
    return value.ToDatetime(UTC).strftime("%Y-%m-%d %H:%M UTC")


def enum_name(prefix: str) -> Callable[[int], str]:
    enums: Mapping[str, Any] = {
        "LEDGER_ENTRY_KIND_": admin_pb2.LedgerEntryKind,
        "BUCKET_SOURCE_": metering_pb2.BucketSource,
        "SUBSCRIPTION_STATUS_": admin_pb2.SubscriptionStatus,
        "INVOICE_LINE_KIND_": admin_pb2.InvoiceLineKind,
        "INVOICE_STATUS_": admin_pb2.InvoiceStatus,
        "DELIVERY_STATUS_": admin_pb2.DeliveryStatus,
    }

    def name(value: int) -> str:
        return str(enums[prefix].Name(value)).removeprefix(prefix).lower().replace("_", " ")

    return name


def _local_path(target: str) -> str:
    """Where to go after sign-in: a path on this console only (never another site)."""
    return target if target.startswith("/") and not target.startswith("//") and "\\" not in target else "/"


def build(settings: ConsoleSettings, *, password: str | None = None) -> ASGIApp:
    """The console's ASGI app. `password` is one the CLI generated when none is configured (loopback only)."""
    plain = settings.password.get_secret_value() if settings.password else password
    hashed = settings.password_hash.get_secret_value() if settings.password_hash else None
    console = Console(
        settings=settings,
        passwords=PasswordCheck(password=plain, password_hash=hashed),
        sessions=Sessions(settings.session_idle_seconds),
        failures=SignInFailures(settings.sign_in_failures_per_minute),
    )
    environment = console.templates.env
    environment.filters.update(
        credits=credits,
        signed=signed,
        when=when,
        kind=enum_name("LEDGER_ENTRY_KIND_"),
        source=enum_name("BUCKET_SOURCE_"),
        status=enum_name("SUBSCRIPTION_STATUS_"),
        line_kind=enum_name("INVOICE_LINE_KIND_"),
        invoice_status=enum_name("INVOICE_STATUS_"),
        delivery=enum_name("DELIVERY_STATUS_"),
    )
    environment.globals.update(new_request_id=lambda: str(uuid.uuid4()), target=settings.target)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        console.connection = connect(settings)
        console.live.start()
        try:
            yield
        finally:
            await console.live.stop()
            await console.connection.channel.close(grace=None)

    pages = Pages(console)
    routes = [
        Route("/signin", pages.sign_in_form, methods=["GET"]),
        Route("/signin", pages.sign_in, methods=["POST"]),
        Route("/signout", pages.sign_out, methods=["POST"]),
        Route("/", pages.home),
        Route("/live.json", pages.live_json),
        Route("/live/panel", pages.live_panel),
        Route("/customers", pages.customers),
        Route("/customers/{customer_id}", pages.customer),
        Route("/customers/{customer_id}/ledger", pages.ledger),
        Route("/customers/{customer_id}/invoices", pages.invoices),
        Route("/customers/{customer_id}/actions/{action}", pages.action, methods=["POST"]),
        Route("/invoices/{invoice_id:path}", pages.invoice),
        Route("/events", pages.events),
        Route("/events/redeliver", pages.redeliver, methods=["POST"]),
        Route("/catalog", pages.catalog),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={
            SignInRequired: pages.to_sign_in,
            CsrfRefused: pages.csrf_refused,
            CreditgateError: pages.api_error,
        },
    )
    return SecurityHeaders(app)


class SecurityHeaders:
    """Adds the headers every answer carries (CSP, no framing, no caching of customer data)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        await self.app(scope, receive, send_with_headers)


@dataclass
class Pages:
    console: Console

    # Sessions, sign-in and CSRF

    def session(self, request: Request) -> Session:
        session = self.console.sessions.get(request.cookies.get(COOKIE))
        if session is None or not session.signed_in:
            raise SignInRequired()
        return session

    def render(
        self, request: Request, template: str, context: dict[str, Any], status_code: int = 200, session: Any = None
    ) -> Response:
        session = session or self.console.sessions.get(request.cookies.get(COOKIE))
        flash = list(session.flash) if session is not None else []
        if session is not None:
            session.flash.clear()
        return self.console.templates.TemplateResponse(
            request,
            template,
            {"session": session, "flash": flash, "failures": self.console.failures.total, **context},
            status_code=status_code,
        )

    async def checked_form(self, request: Request, session: Session) -> FormData:
        form = await request.form()
        if not csrf_matches(session, str(form.get("csrf", ""))):
            log.warning("console_csrf_refused", path=request.url.path)
            raise CsrfRefused()
        return form

    async def to_sign_in(self, request: Request, exc: Exception) -> Response:
        if request.method != "GET" or request.headers.get("hx-request") or request.url.path.endswith(".json"):
            return JSONResponse({"error": "sign in first"}, status_code=401)
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/signin?next={target}", status_code=303)

    async def csrf_refused(self, request: Request, exc: Exception) -> Response:
        message = "This form was not sent by this console session (its security token is missing or stale)."
        return self.render(request, "error.html", {"title": "Form refused", "message": message}, 403)

    async def api_error(self, request: Request, exc: Exception) -> Response:
        if not isinstance(exc, CreditgateError):  # registered for CreditgateError only: not one of ours
            raise exc
        if isinstance(exc, NotFound):
            title, status = ("Customer not found" if isinstance(exc, CustomerNotFound) else "Not found"), 404
        elif isinstance(exc, Unavailable):
            title, status = "The creditgate server cannot be reached", 503
        elif isinstance(exc, Unauthenticated | PermissionDenied):
            # The console's own configuration is at fault (its API key), not the operator's request.
            title, status = "The server refused the console's credentials", 502
        else:
            title, status = "The server refused", 400
        return self.render(request, "error.html", {"title": title, "message": str(exc), "error": exc}, status)

    async def sign_in_form(self, request: Request) -> Response:
        session_id, session = self.console.sessions.new(signed_in=False)
        response = self.render(
            request, "signin.html", {"next": _local_path(request.query_params.get("next", "/"))}, session=session
        )
        self._set_cookie(response, session_id)
        return response

    async def sign_in(self, request: Request) -> Response:
        session_id = request.cookies.get(COOKIE)
        session = self.console.sessions.get(session_id)
        if session is None:
            return RedirectResponse("/signin", status_code=303)
        form = await self.checked_form(request, session)
        next_path = _local_path(str(form.get("next", "/")))
        if self.console.failures.paused():
            message = "Too many wrong passwords in the last minute: wait a minute and try again."
            return self.render(request, "signin.html", {"next": next_path, "error": message}, 429, session=session)
        if not self.console.passwords.matches(str(form.get("password", ""))):
            self.console.failures.record()
            log.warning("console_sign_in_refused", failures=self.console.failures.total)
            return self.render(request, "signin.html", {"next": next_path, "error": "Wrong password."}, 401, session)
        # A fresh session id at sign-in: an id planted before it (session fixation) is worth nothing.
        self.console.sessions.end(session_id)
        new_id, _ = self.console.sessions.new(signed_in=True)
        response = RedirectResponse(next_path, status_code=303)
        self._set_cookie(response, new_id)
        return response

    async def sign_out(self, request: Request) -> Response:
        session = self.session(request)
        await self.checked_form(request, session)
        self.console.sessions.end(request.cookies.get(COOKIE))
        response = RedirectResponse("/signin", status_code=303)
        response.delete_cookie(COOKIE, httponly=True, samesite="strict")
        return response

    def _set_cookie(self, response: Response, session_id: str) -> None:
        response.set_cookie(COOKIE, session_id, httponly=True, samesite="strict", path="/")

    # Live view

    async def home(self, request: Request) -> Response:
        session = self.session(request)
        context = {"live": self.console.live.view(), "interval": self.console.settings.sample_interval_seconds}
        return self.render(request, "home.html", context, session=session)

    async def live_json(self, request: Request) -> Response:
        self.session(request)
        return JSONResponse(self.console.live.view())

    async def live_panel(self, request: Request) -> Response:
        session = self.session(request)
        context = {"live": self.console.live.view(), "interval": self.console.settings.sample_interval_seconds}
        return self.render(request, "_live_panel.html", context, session=session)

    # Customers

    async def customers(self, request: Request) -> Response:
        session = self.session(request)
        query = request.query_params.get("q", "").strip()
        found: list[admin_pb2.Customer] = []
        more = False
        if query:
            client = self.console.client
            # Found by id prefix or name in the durable store (ListCustomers), each then read whole (plan and status
            # live in Redis); an exact id the flusher has not moved yet is found too.
            page = await client.list_customers(query, page_size=SEARCH_RESULTS)
            ids = [customer.customer_id for customer in page.customers]
            more = bool(page.next_page_token)
            if query not in ids:
                ids.insert(0, query)
            answers = await asyncio.gather(*(client.get_customer(id_) for id_ in ids), return_exceptions=True)
            for answer in answers:
                if isinstance(answer, BaseException):
                    if not isinstance(answer, NotFound):
                        raise answer
                    continue
                found.append(answer.customer)
        context = {"q": query, "found": found, "more": more, "shown": SEARCH_RESULTS}
        return self.render(request, "customers.html", context, session=session)

    async def customer(self, request: Request, errors: Mapping[str, Any] | None = None, status: int = 200) -> Response:
        session = self.session(request)
        customer_id = request.path_params["customer_id"]
        client = self.console.client
        customer = (await client.get_customer(customer_id)).customer
        balance = await client.get_balance(customer_id)
        catalog = await self.console.catalog()
        recent = await client.list_ledger_entries(customer_id, page_size=HOLD_SCAN_ENTRIES)
        settled = {entry.reservation_id for entry in recent.entries if entry.kind in SETTLING_KINDS}
        holds = [
            entry
            for entry in recent.entries
            if entry.kind == LedgerEntryKind.LEDGER_ENTRY_KIND_RESERVE and entry.reservation_id not in settled
        ]
        plan = catalog.plan(customer.subscription.plan) if customer.HasField("subscription") else None
        context = {
            "customer": customer,
            "balance": balance,
            "catalog": catalog,
            "plan": plan,
            "holds": holds,
            "holds_scanned": len(recent.entries),
            "entitlements": {entitlement.feature: entitlement for entitlement in plan.entitlements} if plan else {},
            "errors": errors or {},
            "csrf": session.csrf,
        }
        return self.render(request, "customer.html", context, status, session=session)

    async def action(self, request: Request) -> Response:
        session = self.session(request)
        form = await self.checked_form(request, session)
        customer_id = request.path_params["customer_id"]
        action = request.path_params["action"]
        planner = PLANNERS.get(action)
        if planner is None:
            return self.render(request, "error.html", {"title": "Not found", "message": f"no action {action}"}, 404)
        values = {key: str(value) for key, value in form.items()}
        request_id = values.get("request_id", "")
        catalog = await self.console.catalog()
        try:
            planned = planner(customer_id, values, catalog)
        except FieldError as exc:
            error = {"field": exc.field, "message": exc.message, "values": values}
            return await self.customer(request, {action: error}, 400)
        if not request_id:
            return await self.customer(request, {action: {"field": "", "message": "the form has no request_id"}}, 400)
        if values.get("step") != "confirm":
            context = {
                "summary": planned.summary,
                "action_url": request.url.path,
                "back_url": f"/customers/{customer_id}",
                "values": {key: value for key, value in values.items() if key not in ("csrf", "step")},
                "csrf": session.csrf,
            }
            return self.render(request, "confirm.html", context, session=session)

        async def run() -> str:
            return await planned.run(self.console.client, request_id)

        try:
            message, repeated = await self.console.submissions.once(request_id, run)
        except (NotFound, Unavailable):
            raise
        except CreditgateError as exc:
            log.info("console_action_refused", action=action, customer_id=customer_id, reason=exc.reason)
            error = {"field": exc.field, "message": f"{exc.reason}: {exc.message}", "values": values}
            return await self.customer(request, {action: error}, 409 if exc.reason == "REQUEST_ID_REUSED" else 400)
        log.info("console_action", action=action, customer_id=customer_id, request_id=request_id, repeated=repeated)
        session.flash.append(f"This form was sent before: {message}" if repeated else message)
        return RedirectResponse(f"/customers/{customer_id}", status_code=303)

    async def ledger(self, request: Request) -> Response:
        session = self.session(request)
        customer_id = request.path_params["customer_id"]
        kind = request.query_params.get("kind", "")
        feature = request.query_params.get("feature", "")
        token = request.query_params.get("page", "")
        customer = (await self.console.client.get_customer(customer_id)).customer
        kind_value = LedgerEntryKind.Value(f"LEDGER_ENTRY_KIND_{kind.upper()}") if kind else None
        entries: list[admin_pb2.LedgerEntry] = []
        scanned = 0
        # The API pages the whole ledger; a filter is applied here, reading pages until one screen is full.
        for _ in range(LEDGER_SCAN_PAGES):
            page = await self.console.client.list_ledger_entries(
                customer_id, page_size=LEDGER_PAGE_SIZE, page_token=token
            )
            scanned += len(page.entries)
            entries.extend(
                entry
                for entry in page.entries
                if (kind_value is None or entry.kind == kind_value) and (not feature or entry.feature == feature)
            )
            token = page.next_page_token
            if not token or len(entries) >= LEDGER_PAGE_SIZE:
                break
        status = await self.console.client.get_ledger_status()
        catalog = await self.console.catalog()
        kinds = [
            value.name.removeprefix("LEDGER_ENTRY_KIND_").lower()
            for value in LedgerEntryKind.DESCRIPTOR.values
            if value.number != LedgerEntryKind.LEDGER_ENTRY_KIND_UNSPECIFIED
        ]
        context = {
            "customer": customer,
            "entries": entries,
            "next_token": token,
            "first_page": not request.query_params.get("page"),
            "kind": kind,
            "feature": feature,
            "kinds": kinds,
            "features": [item.key for item in catalog.features],
            "scanned": scanned,
            "backlog": status.backlog_entries,
        }
        return self.render(request, "ledger.html", context, session=session)

    # Invoices

    async def invoices(self, request: Request) -> Response:
        session = self.session(request)
        customer_id = request.path_params["customer_id"]
        customer = (await self.console.client.get_customer(customer_id)).customer
        page = await self.console.client.list_invoices(customer_id, page_token=request.query_params.get("page", ""))
        preview = (await self.console.client.preview_invoice(customer_id)).invoice
        context = {"customer": customer, "invoices": page.invoices, "next_token": page.next_page_token}
        return self.render(request, "invoices.html", context | {"preview": preview}, session=session)

    async def invoice(self, request: Request) -> Response:
        session = self.session(request)
        invoice = (await self.console.client.get_invoice(request.path_params["invoice_id"])).invoice
        return self.render(request, "invoice.html", {"invoice": invoice}, session=session)

    # Events

    async def events(self, request: Request) -> Response:
        session = self.session(request)
        customer_id = request.query_params.get("customer", "").strip()
        page = await self.console.client.list_events(
            customer_id, page_size=50, page_token=request.query_params.get("page", "")
        )
        context = {
            "events": page.events,
            "next_token": page.next_page_token,
            "customer_id": customer_id,
            "csrf": session.csrf,
        }
        return self.render(request, "events.html", context, session=session)

    async def redeliver(self, request: Request) -> Response:
        session = self.session(request)
        form = await self.checked_form(request, session)
        event_id = str(form.get("event_id", ""))
        request_id = str(form.get("request_id", "")) or secrets.token_hex(8)
        if form.get("step") != "confirm":
            context = {
                "summary": f"Send event {event_id} to every webhook URL again.",
                "action_url": "/events/redeliver",
                "back_url": "/events",
                "values": {"event_id": event_id, "request_id": request_id},
                "csrf": session.csrf,
            }
            return self.render(request, "confirm.html", context, session=session)

        async def run() -> str:
            event = (await self.console.client.redeliver_event(event_id)).event
            return f"Event {event.event_id} queued again for {len(event.deliveries)} webhook URL(s)"

        message, repeated = await self.console.submissions.once(request_id, run)
        session.flash.append(f"This form was sent before: {message}" if repeated else message)
        return RedirectResponse("/events", status_code=303)

    # Catalog

    async def catalog(self, request: Request) -> Response:
        session = self.session(request)
        return self.render(request, "catalog.html", {"catalog": await self.console.catalog()}, session=session)

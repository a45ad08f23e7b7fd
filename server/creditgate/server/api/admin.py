"""creditgate.v1.AdminService: catalog, customers, subscriptions, top-ups, adjustments, ledger."""

from __future__ import annotations

import asyncio
import base64
import binascii
from typing import Any

import grpc
from creditgate.server.api import convert, validate
from creditgate.server.api.errors import translated
from creditgate.server.billing.invoices import Invoicer
from creditgate.server.catalog.holder import CatalogHolder
from creditgate.server.clock import ManualClock
from creditgate.server.engine.accounts import Accounts
from creditgate.server.engine.balances import Balances
from creditgate.server.errors import FailedPrecondition, InternalError, InvalidArgument, NotFound, Unavailable
from creditgate.server.ledger.flusher import Flusher
from creditgate.server.store.store import Store
from creditgate.v1 import admin_pb2, admin_pb2_grpc

Context = grpc.aio.ServicerContext[Any, Any]
# AdvanceClock moves at most this far in one call: 100 years.
MAX_ADVANCE_SECONDS = 100 * 365 * 86_400
# ListCustomers: an id is at most 128 characters; a longer query finds nothing it could not find shorter.
MAX_QUERY_LENGTH = 128
# GetLedgerStatus waits this long for the durable store's count of parked entries.
PARKED_COUNT_TIMEOUT_SECONDS = 1.0


def _forget(task: asyncio.Future[Any]) -> None:
    """Retrieves a finished background call's error, so that asyncio does not log it as never retrieved."""
    if not task.cancelled():
        task.exception()


class AdminServicer(admin_pb2_grpc.AdminServiceServicer):
    def __init__(
        self,
        accounts: Accounts,
        balances: Balances,
        catalog: CatalogHolder,
        store: Store,
        flusher: Flusher,
        simulated_clock: ManualClock | None = None,
        invoicer: Invoicer | None = None,
        webhook_urls: tuple[str, ...] = (),
    ) -> None:
        self._accounts = accounts
        self._balances = balances
        self._catalog = catalog
        self._store = store
        self._flusher = flusher
        # Set only when the server runs on a simulated clock (CREDITGATE_CLOCK=simulated).
        self._simulated_clock = simulated_clock
        self._invoicer = invoicer
        self._webhook_urls = webhook_urls

    @translated
    async def ApplyCatalog(
        self, request: admin_pb2.ApplyCatalogRequest, context: Context
    ) -> admin_pb2.ApplyCatalogResponse:
        version, changed = await self._catalog.apply(request.catalog_yaml)
        return admin_pb2.ApplyCatalogResponse(version=version, changed=changed)

    @translated
    async def GetCatalog(self, request: admin_pb2.GetCatalogRequest, context: Context) -> admin_pb2.GetCatalogResponse:
        rules = self._catalog.rules
        return admin_pb2.GetCatalogResponse(version=rules.version, catalog_yaml=rules.loaded.source)

    @translated
    async def CreateCustomer(
        self, request: admin_pb2.CreateCustomerRequest, context: Context
    ) -> admin_pb2.CreateCustomerResponse:
        view = await self._accounts.create_customer(
            validate.identifier(request.customer_id, "customer_id"),
            validate.text(request.name, "name", limit=validate.MAX_NAME),
            validate.metadata(dict(request.metadata)),
        )
        return admin_pb2.CreateCustomerResponse(customer=convert.customer(view))

    @translated
    async def GetCustomer(
        self, request: admin_pb2.GetCustomerRequest, context: Context
    ) -> admin_pb2.GetCustomerResponse:
        view = await self._balances.get_customer(validate.identifier(request.customer_id, "customer_id"))
        return admin_pb2.GetCustomerResponse(customer=convert.customer(view))

    @translated
    async def CreateSubscription(
        self, request: admin_pb2.CreateSubscriptionRequest, context: Context
    ) -> admin_pb2.CreateSubscriptionResponse:
        start_ms = validate.timestamp_ms(request.start_time, "start_time") if request.HasField("start_time") else None
        subscription, available = await self._accounts.subscribe(
            validate.identifier(request.customer_id, "customer_id"),
            validate.key(request.plan, "plan"),
            start_ms,
        )
        return admin_pb2.CreateSubscriptionResponse(
            subscription=convert.subscription(subscription), available_credits=available
        )

    @translated
    async def CancelSubscription(
        self, request: admin_pb2.CancelSubscriptionRequest, context: Context
    ) -> admin_pb2.CancelSubscriptionResponse:
        subscription = await self._accounts.cancel(validate.identifier(request.customer_id, "customer_id"))
        return admin_pb2.CancelSubscriptionResponse(subscription=convert.subscription(subscription))

    @translated
    async def TopUp(self, request: admin_pb2.TopUpRequest, context: Context) -> admin_pb2.TopUpResponse:
        customer_id = validate.identifier(request.customer_id, "customer_id")
        amount = request.WhichOneof("amount")
        if amount is None:
            raise InvalidArgument("one of package or credits is required", field="amount")
        package = validate.key(request.package, "package") if amount == "package" else ""
        credits = validate.credits(request.credits, "credits") if amount == "credits" else 0
        change = await self._accounts.top_up(
            customer_id,
            package,
            credits,
            validate.days(request.expires_in_days, "expires_in_days"),
            validate.identifier(request.request_id, "request_id"),
        )
        if change.bucket is None:
            raise InternalError(f"the top-up of {customer_id!r} answered without the bucket it added")
        return admin_pb2.TopUpResponse(
            bucket=convert.bucket(change.bucket),
            entry_id=change.entry_id,
            available_credits=change.available,
            price=change.price,
            currency=change.currency,
        )

    @translated
    async def AdjustCredits(
        self, request: admin_pb2.AdjustCreditsRequest, context: Context
    ) -> admin_pb2.AdjustCreditsResponse:
        change = await self._accounts.adjust(
            validate.identifier(request.customer_id, "customer_id"),
            validate.credits(request.delta, "delta", allow_negative=True),
            validate.text(request.reason, "reason", required=True),
            validate.identifier(request.request_id, "request_id"),
        )
        return admin_pb2.AdjustCreditsResponse(entry_id=change.entry_id, available_credits=change.available)

    @translated
    async def ListLedgerEntries(
        self, request: admin_pb2.ListLedgerEntriesRequest, context: Context
    ) -> admin_pb2.ListLedgerEntriesResponse:
        customer_id = validate.identifier(request.customer_id, "customer_id")
        size = validate.page_size(request.page_size)
        before = _decode_page_token(request.page_token)
        await self._balances.get_customer(customer_id)
        records = await self._store.list_ledger(customer_id, size + 1, before)
        page, more = records[:size], len(records) > size
        token = _encode_page_token(page[-1].seq) if more else ""
        return admin_pb2.ListLedgerEntriesResponse(
            entries=[convert.ledger_entry(record) for record in page], next_page_token=token
        )

    @translated
    async def ListCustomers(
        self, request: admin_pb2.ListCustomersRequest, context: Context
    ) -> admin_pb2.ListCustomersResponse:
        if len(request.query) > MAX_QUERY_LENGTH:
            raise InvalidArgument(f"query is longer than {MAX_QUERY_LENGTH} characters", field="query")
        size = validate.page_size(request.page_size)
        after = _decode_customer_page_token(request.page_token)
        records = await self._store.search_customers(request.query, size + 1, after)
        page, more = records[:size], len(records) > size
        return admin_pb2.ListCustomersResponse(
            customers=[
                admin_pb2.Customer(
                    customer_id=record.customer_id,
                    name=record.name,
                    metadata=record.metadata,
                    create_time=convert.timestamp(record.created_ms),
                )
                for record in page
            ],
            next_page_token=_encode_customer_page_token(page[-1].customer_id) if more else "",
        )

    @translated
    async def GetLedgerStatus(
        self, request: admin_pb2.GetLedgerStatusRequest, context: Context
    ) -> admin_pb2.GetLedgerStatusResponse:
        status = await self._flusher.status()
        response = admin_pb2.GetLedgerStatusResponse(backlog_entries=status.backlog, pending_entries=status.pending)
        response.oldest_unflushed_age.FromMilliseconds(status.oldest_age_ms)
        # The outbox figures come from Redis and answer while the store is down or hangs; the parked count is then
        # unset. A count that takes too long is left to finish on its own: cancelling a query to a hung PostgreSQL
        # waits for the cancellation, which hangs too.
        counting = asyncio.ensure_future(self._store.parked_count())
        await asyncio.wait({counting}, timeout=PARKED_COUNT_TIMEOUT_SECONDS)
        if counting.done() and not isinstance(counting.exception(), Unavailable):
            response.parked_entries = counting.result()
        elif not counting.done():
            counting.add_done_callback(_forget)
        return response

    @translated
    async def AdvanceClock(
        self, request: admin_pb2.AdvanceClockRequest, context: Context
    ) -> admin_pb2.AdvanceClockResponse:
        if self._simulated_clock is None:
            raise FailedPrecondition(
                "the server runs on the real clock; start it with CREDITGATE_CLOCK=simulated to move time",
                reason="CLOCK_NOT_SIMULATED",
            )
        if not 1 <= request.seconds <= MAX_ADVANCE_SECONDS:
            raise InvalidArgument(f"seconds must be 1 to {MAX_ADVANCE_SECONDS}", field="seconds")
        self._simulated_clock.advance(request.seconds)
        return admin_pb2.AdvanceClockResponse(now=convert.timestamp(self._simulated_clock.now_ms()))

    @translated
    async def ChangePlan(self, request: admin_pb2.ChangePlanRequest, context: Context) -> admin_pb2.ChangePlanResponse:
        subscription, available = await self._accounts.change_plan(
            validate.identifier(request.customer_id, "customer_id"), validate.key(request.plan, "plan")
        )
        return admin_pb2.ChangePlanResponse(
            subscription=convert.subscription(subscription), available_credits=available
        )

    @translated
    async def SetLowBalanceThreshold(
        self, request: admin_pb2.SetLowBalanceThresholdRequest, context: Context
    ) -> admin_pb2.SetLowBalanceThresholdResponse:
        threshold = None
        if request.HasField("threshold_credits"):
            if not 0 <= request.threshold_credits <= validate.MAX_CREDITS:
                raise InvalidArgument(
                    f"threshold_credits must be 0 to {validate.MAX_CREDITS:,}", field="threshold_credits"
                )
            threshold = request.threshold_credits
        kept = await self._accounts.set_low_threshold(
            validate.identifier(request.customer_id, "customer_id"), threshold
        )
        response = admin_pb2.SetLowBalanceThresholdResponse()
        if kept is not None:
            response.threshold_credits = kept
        return response

    @translated
    async def SetAutoTopUp(
        self, request: admin_pb2.SetAutoTopUpRequest, context: Context
    ) -> admin_pb2.SetAutoTopUpResponse:
        customer_id = validate.identifier(request.customer_id, "customer_id")
        package = validate.key(request.package, "package") if request.package else ""
        threshold = validate.credits(request.threshold_credits, "threshold_credits") if package else 0
        cooldown_ms = request.cooldown.ToMilliseconds()
        if cooldown_ms < 0:
            raise InvalidArgument("cooldown must not be negative", field="cooldown")
        view = await self._accounts.set_auto_top_up(customer_id, package, threshold, cooldown_ms)
        response = admin_pb2.SetAutoTopUpResponse()
        if view is not None:
            response.package, response.credits, response.price = view.package, view.credits, view.price
            response.threshold_credits = view.threshold
            response.cooldown.FromMilliseconds(view.cooldown_ms)
        return response

    @translated
    async def PreviewInvoice(
        self, request: admin_pb2.PreviewInvoiceRequest, context: Context
    ) -> admin_pb2.PreviewInvoiceResponse:
        draft = await self._invoices().preview(validate.identifier(request.customer_id, "customer_id"))
        return admin_pb2.PreviewInvoiceResponse(invoice=convert.invoice(draft))

    @translated
    async def ListInvoices(
        self, request: admin_pb2.ListInvoicesRequest, context: Context
    ) -> admin_pb2.ListInvoicesResponse:
        customer_id = validate.identifier(request.customer_id, "customer_id")
        size = validate.page_size(request.page_size)
        before = _decode_page_token(request.page_token)
        await self._balances.get_customer(customer_id)
        invoices = await self._invoices().list(customer_id, size + 1, before)
        page, more = invoices[:size], len(invoices) > size
        token = _encode_page_token(page[-1].period_start_ms) if more else ""
        return admin_pb2.ListInvoicesResponse(invoices=[convert.invoice(item) for item in page], next_page_token=token)

    @translated
    async def GetInvoice(self, request: admin_pb2.GetInvoiceRequest, context: Context) -> admin_pb2.GetInvoiceResponse:
        if not request.invoice_id or len(request.invoice_id) > 200:
            raise InvalidArgument("invoice_id is required (at most 200 characters)", field="invoice_id")
        found = await self._invoices().get(request.invoice_id)
        return admin_pb2.GetInvoiceResponse(invoice=convert.invoice(found))

    def _invoices(self) -> Invoicer:
        if self._invoicer is None:
            raise FailedPrecondition("invoicing is not set up on this server", reason="INVOICING_OFF")
        return self._invoicer

    @translated
    async def ListEvents(self, request: admin_pb2.ListEventsRequest, context: Context) -> admin_pb2.ListEventsResponse:
        customer_id = validate.optional_identifier(request.customer_id, "customer_id")
        size = validate.page_size(request.page_size)
        before = _decode_page_token(request.page_token)
        found = await self._store.list_events(customer_id, size + 1, before)
        page, more = found[:size], len(found) > size
        deliveries = await self._store.deliveries_of([record.event_id for _, record in page])
        return admin_pb2.ListEventsResponse(
            events=[convert.event(record, deliveries) for _, record in page],
            next_page_token=_encode_page_token(page[-1][0]) if more else "",
        )

    @translated
    async def RedeliverEvent(
        self, request: admin_pb2.RedeliverEventRequest, context: Context
    ) -> admin_pb2.RedeliverEventResponse:
        if not request.event_id or len(request.event_id) > 300:
            raise InvalidArgument("event_id is required (at most 300 characters)", field="event_id")
        record = await self._store.get_event(request.event_id)
        if record is None:
            raise NotFound(f"event {request.event_id!r} does not exist", field="event_id", reason="EVENT_NOT_FOUND")
        now = self._balances.now_ms()
        if self._webhook_urls:
            await self._store.enqueue_deliveries(list(self._webhook_urls), now)
        await self._store.redeliver(record.event_id, now)
        deliveries = await self._store.deliveries_of([record.event_id])
        return admin_pb2.RedeliverEventResponse(event=convert.event(record, deliveries))


def _encode_customer_page_token(customer_id: str) -> str:
    return base64.urlsafe_b64encode(f"c1:{customer_id}".encode()).decode()


def _decode_customer_page_token(token: str) -> str | None:
    if not token:
        return None
    try:
        version, _, customer_id = base64.urlsafe_b64decode(token.encode()).decode().partition(":")
        if version != "c1" or not customer_id:
            raise ValueError(version)
        return customer_id
    except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
        raise InvalidArgument("page_token is not a token this server issued", field="page_token") from exc


def _encode_page_token(seq: int) -> str:
    return base64.urlsafe_b64encode(f"v1:{seq}".encode()).decode()


def _decode_page_token(token: str) -> int | None:
    if not token:
        return None
    try:
        version, _, seq = base64.urlsafe_b64decode(token.encode()).decode().partition(":")
        if version != "v1":
            raise ValueError(version)
        position = int(seq)
        if not 0 <= position < 2**63:
            raise ValueError(seq)  # the stores keep 64-bit integers: nothing this server issued is larger
        return position
    except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
        raise InvalidArgument("page_token is not a token this server issued", field="page_token") from exc

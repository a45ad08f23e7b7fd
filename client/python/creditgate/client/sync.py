"""The blocking client: one method per RPC of MeteringService and AdminService, results are the proto messages."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from types import TracebackType
from typing import TypeVar

import grpc
from creditgate.client.calls import (
    DEFAULT_TARGET,
    DEFAULT_TIMEOUT_SECONDS,
    Deadline,
    RetryPolicy,
    call_metadata,
    duration,
    fill_request_id,
    open_channel,
    pause_before_retry,
    timestamp,
)
from creditgate.client.errors import error_from_rpc
from creditgate.v1 import admin_pb2, admin_pb2_grpc, metering_pb2, metering_pb2_grpc
from google.protobuf.message import Message

Request = TypeVar("Request", bound=Message)
Response = TypeVar("Response", bound=Message)


class Client:
    """A creditgate client over one channel, reused by every call; close it (or use `with`) when done.

    Every call has a deadline (`timeout` seconds, per call or the client's default) that covers its retries.
    RPCs that take a request_id get a uuid4 when none is given, and are retried on UNAVAILABLE with that same id;
    read-only and idempotent RPCs are retried too; other writes (create customer, subscribe, cancel) are not.
    """

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        credentials: grpc.ChannelCredentials | None = None,
        api_key: str | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        retry: RetryPolicy | None = None,
        channel: grpc.Channel | None = None,
        channel_options: Sequence[tuple[str, str | int]] = (),
    ) -> None:
        """Connect to `target` (host:port), with TLS when `credentials` are given, or use an existing `channel`
        (which the client then does not close). `api_key` is sent as `authorization: Bearer <api_key>`."""
        self._owns_channel = channel is None
        self._channel = channel or open_channel(target, credentials, channel_options)
        self._metadata = call_metadata(api_key, metadata)
        self._timeout = timeout
        self._retry = retry or RetryPolicy()
        self._metering = metering_pb2_grpc.MeteringServiceStub(self._channel)
        self._admin = admin_pb2_grpc.AdminServiceStub(self._channel)

    def close(self) -> None:
        if self._owns_channel:
            self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    def _invoke(
        self,
        method: grpc.UnaryUnaryMultiCallable[Request, Response],
        request: Request,
        timeout: float | None,
        *,
        idempotent: bool = False,
    ) -> Response:
        retry_safe = fill_request_id(request) or idempotent
        deadline = Deadline(timeout or self._timeout)
        attempt = 0
        while True:
            attempt += 1
            try:
                return method(request, timeout=deadline.remaining(), metadata=self._metadata)
            except grpc.RpcError as exc:
                error = error_from_rpc(exc)
                pause = pause_before_retry(self._retry, attempt, error, deadline, retry_safe)
                if pause is None:
                    raise error from exc
            time.sleep(pause)

    # MeteringService

    def check_and_debit(
        self,
        customer_id: str,
        feature: str,
        quantity: int | None = None,
        *,
        dimensions: Mapping[str, str] | None = None,
        request_id: str = "",
        dry_run: bool = False,
        timeout: float | None = None,
    ) -> metering_pb2.CheckAndDebitResponse:
        """Decide and charge one action. A denial is the result `allowed == False` with its `deny_reason`."""
        request = metering_pb2.CheckAndDebitRequest(
            customer_id=customer_id,
            feature=feature,
            quantity=quantity,
            dimensions=dimensions,
            request_id=request_id,
            dry_run=dry_run,
        )
        return self._invoke(self._metering.CheckAndDebit, request, timeout)

    def check_and_debit_batch(
        self, items: Iterable[metering_pb2.CheckAndDebitRequest], *, timeout: float | None = None
    ) -> metering_pb2.CheckAndDebitBatchResponse:
        """Decide many actions in one call, in order; each item without a request_id gets its own uuid4.
        Results come in the items' order: each a decision (a denial included) or that item's error."""
        request = metering_pb2.CheckAndDebitBatchRequest(items=items)
        return self._invoke(self._metering.CheckAndDebitBatch, request, timeout)

    def check_entitlement(
        self,
        customer_id: str,
        feature: str,
        quantity: int | None = None,
        *,
        dimensions: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> metering_pb2.CheckEntitlementResponse:
        """What check_and_debit would answer now; charges nothing."""
        request = metering_pb2.CheckEntitlementRequest(
            customer_id=customer_id, feature=feature, quantity=quantity, dimensions=dimensions
        )
        return self._invoke(self._metering.CheckEntitlement, request, timeout, idempotent=True)

    def get_balance(self, customer_id: str, *, timeout: float | None = None) -> metering_pb2.GetBalanceResponse:
        """Available credits, buckets in spending order, and this period's usage per feature."""
        request = metering_pb2.GetBalanceRequest(customer_id=customer_id)
        return self._invoke(self._metering.GetBalance, request, timeout, idempotent=True)

    def reserve(
        self,
        customer_id: str,
        feature: str,
        quantity: int | None = None,
        *,
        dimensions: Mapping[str, str] | None = None,
        ttl: timedelta | None = None,
        request_id: str = "",
        timeout: float | None = None,
    ) -> metering_pb2.ReserveResponse:
        """Hold credits for an action in flight; a denial is the result `allowed == False`."""
        request = metering_pb2.ReserveRequest(
            customer_id=customer_id,
            feature=feature,
            quantity=quantity,
            dimensions=dimensions,
            ttl=duration(ttl),
            request_id=request_id,
        )
        return self._invoke(self._metering.Reserve, request, timeout)

    def commit(
        self, reservation_id: str, quantity: int | None = None, *, request_id: str = "", timeout: float | None = None
    ) -> metering_pb2.CommitResponse:
        """Settle a hold for the quantity actually used (all of it when unset); the rest goes back."""
        request = metering_pb2.CommitRequest(reservation_id=reservation_id, quantity=quantity, request_id=request_id)
        return self._invoke(self._metering.Commit, request, timeout)

    def release(
        self, reservation_id: str, *, request_id: str = "", timeout: float | None = None
    ) -> metering_pb2.ReleaseResponse:
        """Cancel a hold: everything it took goes back."""
        request = metering_pb2.ReleaseRequest(reservation_id=reservation_id, request_id=request_id)
        return self._invoke(self._metering.Release, request, timeout)

    # AdminService

    def apply_catalog(self, catalog_yaml: str, *, timeout: float | None = None) -> admin_pb2.ApplyCatalogResponse:
        """Validate a catalog and make it the running one (applying the same one again changes nothing)."""
        request = admin_pb2.ApplyCatalogRequest(catalog_yaml=catalog_yaml)
        return self._invoke(self._admin.ApplyCatalog, request, timeout, idempotent=True)

    def get_catalog(self, *, timeout: float | None = None) -> admin_pb2.GetCatalogResponse:
        return self._invoke(self._admin.GetCatalog, admin_pb2.GetCatalogRequest(), timeout, idempotent=True)

    def create_customer(
        self,
        customer_id: str,
        name: str = "",
        *,
        labels: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> admin_pb2.CreateCustomerResponse:
        """Register a customer under the app's own id; `labels` become the customer's metadata."""
        request = admin_pb2.CreateCustomerRequest(customer_id=customer_id, name=name, metadata=labels)
        return self._invoke(self._admin.CreateCustomer, request, timeout)

    def get_customer(self, customer_id: str, *, timeout: float | None = None) -> admin_pb2.GetCustomerResponse:
        request = admin_pb2.GetCustomerRequest(customer_id=customer_id)
        return self._invoke(self._admin.GetCustomer, request, timeout, idempotent=True)

    def list_customers(
        self, query: str = "", *, page_size: int = 0, page_token: str = "", timeout: float | None = None
    ) -> admin_pb2.ListCustomersResponse:
        """One page of the customers whose id starts with `query` or whose name contains it, by id."""
        request = admin_pb2.ListCustomersRequest(query=query, page_size=page_size, page_token=page_token)
        return self._invoke(self._admin.ListCustomers, request, timeout, idempotent=True)

    def create_subscription(
        self, customer_id: str, plan: str, *, start_time: datetime | None = None, timeout: float | None = None
    ) -> admin_pb2.CreateSubscriptionResponse:
        """Put a customer on a plan from `start_time` (an aware datetime; unset means now)."""
        request = admin_pb2.CreateSubscriptionRequest(
            customer_id=customer_id, plan=plan, start_time=timestamp(start_time)
        )
        return self._invoke(self._admin.CreateSubscription, request, timeout)

    def cancel_subscription(
        self, customer_id: str, *, timeout: float | None = None
    ) -> admin_pb2.CancelSubscriptionResponse:
        request = admin_pb2.CancelSubscriptionRequest(customer_id=customer_id)
        return self._invoke(self._admin.CancelSubscription, request, timeout)

    def top_up(
        self,
        customer_id: str,
        *,
        package: str | None = None,
        credits: int | None = None,
        expires_in_days: int = 0,
        request_id: str = "",
        timeout: float | None = None,
    ) -> admin_pb2.TopUpResponse:
        """Add a catalog `package` or a number of `credits` (exactly one of them) as a new bucket."""
        if package is not None and credits is not None:
            raise ValueError("give a package or a number of credits, not both")
        request = admin_pb2.TopUpRequest(
            customer_id=customer_id, expires_in_days=expires_in_days, request_id=request_id
        )
        if package is not None:
            request.package = package
        if credits is not None:
            request.credits = credits
        return self._invoke(self._admin.TopUp, request, timeout)

    def adjust_credits(
        self, customer_id: str, delta: int, reason: str, *, request_id: str = "", timeout: float | None = None
    ) -> admin_pb2.AdjustCreditsResponse:
        """Add (positive delta) or remove (negative delta) credits by hand, with a reason kept in the ledger."""
        request = admin_pb2.AdjustCreditsRequest(
            customer_id=customer_id, delta=delta, reason=reason, request_id=request_id
        )
        return self._invoke(self._admin.AdjustCredits, request, timeout)

    def list_ledger_entries(
        self, customer_id: str, *, page_size: int = 0, page_token: str = "", timeout: float | None = None
    ) -> admin_pb2.ListLedgerEntriesResponse:
        """One page of the durable ledger, newest first; pass `next_page_token` back for the next page."""
        request = admin_pb2.ListLedgerEntriesRequest(
            customer_id=customer_id, page_size=page_size, page_token=page_token
        )
        return self._invoke(self._admin.ListLedgerEntries, request, timeout, idempotent=True)

    def get_ledger_status(self, *, timeout: float | None = None) -> admin_pb2.GetLedgerStatusResponse:
        """How far the durable ledger is behind Redis: outbox backlog, pending entries, oldest unflushed age."""
        request = admin_pb2.GetLedgerStatusRequest()
        return self._invoke(self._admin.GetLedgerStatus, request, timeout, idempotent=True)

    def advance_clock(self, seconds: int, *, timeout: float | None = None) -> admin_pb2.AdvanceClockResponse:
        """Move a simulated clock forward (servers started with CREDITGATE_CLOCK=simulated)."""
        request = admin_pb2.AdvanceClockRequest(seconds=seconds)
        return self._invoke(self._admin.AdvanceClock, request, timeout)

    def change_plan(self, customer_id: str, plan: str, *, timeout: float | None = None) -> admin_pb2.ChangePlanResponse:
        """Move a running subscription to another plan now; its first grants are issued at once."""
        request = admin_pb2.ChangePlanRequest(customer_id=customer_id, plan=plan)
        return self._invoke(self._admin.ChangePlan, request, timeout)

    def set_low_balance_threshold(
        self, customer_id: str, threshold_credits: int | None, *, timeout: float | None = None
    ) -> admin_pb2.SetLowBalanceThresholdResponse:
        """The customer's own low-balance threshold; None goes back to the plan's."""
        request = admin_pb2.SetLowBalanceThresholdRequest(customer_id=customer_id)
        if threshold_credits is not None:
            request.threshold_credits = threshold_credits
        return self._invoke(self._admin.SetLowBalanceThreshold, request, timeout, idempotent=True)

    def set_auto_top_up(
        self,
        customer_id: str,
        package: str,
        threshold_credits: int = 0,
        *,
        cooldown_seconds: int = 0,
        timeout: float | None = None,
    ) -> admin_pb2.SetAutoTopUpResponse:
        """Buy `package` when the balance falls below `threshold_credits`; an empty package turns it off."""
        request = admin_pb2.SetAutoTopUpRequest(
            customer_id=customer_id, package=package, threshold_credits=threshold_credits
        )
        request.cooldown.FromSeconds(cooldown_seconds)
        return self._invoke(self._admin.SetAutoTopUp, request, timeout, idempotent=True)

    def preview_invoice(self, customer_id: str, *, timeout: float | None = None) -> admin_pb2.PreviewInvoiceResponse:
        """The running period's invoice so far (a draft)."""
        request = admin_pb2.PreviewInvoiceRequest(customer_id=customer_id)
        return self._invoke(self._admin.PreviewInvoice, request, timeout, idempotent=True)

    def list_invoices(
        self, customer_id: str, *, page_size: int = 0, page_token: str = "", timeout: float | None = None
    ) -> admin_pb2.ListInvoicesResponse:
        """One page of finalized invoices, newest first."""
        request = admin_pb2.ListInvoicesRequest(customer_id=customer_id, page_size=page_size, page_token=page_token)
        return self._invoke(self._admin.ListInvoices, request, timeout, idempotent=True)

    def get_invoice(self, invoice_id: str, *, timeout: float | None = None) -> admin_pb2.GetInvoiceResponse:
        request = admin_pb2.GetInvoiceRequest(invoice_id=invoice_id)
        return self._invoke(self._admin.GetInvoice, request, timeout, idempotent=True)

    def list_events(
        self, customer_id: str = "", *, page_size: int = 0, page_token: str = "", timeout: float | None = None
    ) -> admin_pb2.ListEventsResponse:
        """One page of billing events (one customer's, or everyone's), newest first."""
        request = admin_pb2.ListEventsRequest(customer_id=customer_id, page_size=page_size, page_token=page_token)
        return self._invoke(self._admin.ListEvents, request, timeout, idempotent=True)

    def redeliver_event(self, event_id: str, *, timeout: float | None = None) -> admin_pb2.RedeliverEventResponse:
        """Send an event to every webhook URL again."""
        request = admin_pb2.RedeliverEventRequest(event_id=event_id)
        return self._invoke(self._admin.RedeliverEvent, request, timeout, idempotent=True)

"""The one decision core of both gateway front doors (Envoy ext_authz, HTTP forward-auth): an HTTP request is
matched against the routes file and decided by the same validation and engine call as CheckAndDebit."""

from __future__ import annotations

import base64
import binascii
import json
import posixpath
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import structlog
from creditgate.server.api import convert
from creditgate.server.catalog.holder import CatalogHolder
from creditgate.server.domain.periods import DAY_MS
from creditgate.server.domain.routes import METHOD_PATTERN, RouteTable, Source
from creditgate.server.engine.balances import Balances
from creditgate.server.engine.decisions import Decisions
from creditgate.server.engine.model import Decision
from creditgate.server.errors import (
    AlreadyExists,
    CreditgateError,
    FailedPrecondition,
    InternalError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)
from creditgate.server.ops.metrics import Metrics
from creditgate.v1 import metering_pb2

log = structlog.get_logger(__name__)
CHARGED = "x-credits-charged"
REMAINING = "x-credits-remaining"
ENTRY_ID = "x-creditgate-entry-id"
CREDIT_HEADERS = (CHARGED, REMAINING, ENTRY_ID)
# Longer targets are refused before any parsing (nginx's and Envoy's own default limits are 8 KiB and 60 KiB).
MAX_TARGET = 8192
MAX_QUERY_FIELDS = 100
# What the client gets for each denial (the routes file's contract, see README "Metering at the gateway").
DENIAL_STATUS = {
    "INSUFFICIENT_CREDITS": 402,
    "NOT_ENTITLED": 403,
    "NO_ACTIVE_SUBSCRIPTION": 403,
    "LIMIT_EXCEEDED": 429,
}
# Unreserved characters written as percent-escapes are the same path (RFC 3986 6.2.2.2): decoded before matching,
# so /v1/%65xports cannot pass as an unmatched route while the upstream serves it as /v1/exports.
UNRESERVED_ESCAPE = re.compile(r"%(2[DdEe]|3[0-9]|[46][1-9A-Fa-f]|[57][0-9Aa]|5[Ff]|7[Ee])")
CONTROL_OR_SPACE = re.compile(r"[\x00-\x20\x7f]")


@dataclass(frozen=True, slots=True)
class HttpCall:
    """The original request as a proxy describes it: names of `headers` in lower case, repeats joined by ','."""

    method: str
    target: str
    headers: Mapping[str, str]
    # Envoy's per-route context_extensions (ext_authz only): `feature` (and `quantity`) name the feature directly.
    context: Mapping[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class Answer:
    """allowed: status 200 with the credit headers; otherwise the status, reason and JSON body for the client."""

    status: int
    reason: str = ""
    message: str = ""
    upgrade: Any = None
    retry_after: int | None = None
    credit_headers: list[tuple[str, str]] = field(default_factory=list)
    field: str = ""
    # The error behind a non-decision answer (bad input, unknown customer, fault), for ext_authz's status.
    error: CreditgateError | None = None

    @property
    def allowed(self) -> bool:
        return self.status == 200

    def body(self) -> bytes:
        document: dict[str, Any] = {"reason": self.reason, "message": self.message, "upgrade": self.upgrade}
        if self.retry_after is not None:
            document["retry_after"] = self.retry_after
        if self.field:
            document["field"] = self.field
        return json.dumps(document, separators=(",", ":")).encode()

    def denial_headers(self) -> list[tuple[str, str]]:
        headers = [("content-type", "application/json")]
        if self.retry_after is not None:
            headers.append(("retry-after", str(self.retry_after)))
        return headers


class Gateway:
    def __init__(
        self, decisions: Decisions, balances: Balances, catalog: CatalogHolder, routes: RouteTable, metrics: Metrics
    ) -> None:
        self._decisions = decisions
        self._balances = balances
        self._catalog = catalog
        self._routes = routes
        self._spec = routes.spec
        self._metrics = metrics

    def check_routes(self) -> None:
        """The routes against the running catalog (at start, once the catalog is applied)."""
        self._routes.check_against(self._catalog.rules.catalog)

    async def decide(self, call: HttpCall) -> Answer:
        try:
            return await self._decide(call)
        except CreditgateError as exc:
            return error_answer(exc)
        except Exception as exc:
            log.exception("gateway_unexpected_error")
            error = InternalError(f"internal error: {type(exc).__name__}")
            error.__cause__ = exc
            return error_answer(error)

    async def _decide(self, call: HttpCall) -> Answer:
        method, path, query = parse_request(call)
        feature = call.context.get("feature")
        params: dict[str, str] = {}
        quantity_source: Source | None = None
        dimension_sources: dict[str, Source] = {}
        if feature is None:
            matched = self._routes.match(method, path)
            if matched is None:
                if self._spec.unmatched == "allow":
                    return Answer(200)
                return Answer(403, "NO_ROUTE", f"{method} {path} is not a route this API sells or allows")
            route, params = matched
            feature = route.route.feature
            quantity_source = route.route.quantity
            dimension_sources = route.route.dimensions
        customer = _read(self._spec.customer, call, query, params, "customer")
        if not customer:
            raise Unauthenticated(
                f"no customer: the request carries no {_describe(self._spec.customer)}",
                field="customer",
                reason="CUSTOMER_MISSING",
            )
        request = metering_pb2.CheckAndDebitRequest(customer_id=customer, feature=feature)
        quantity = call.context.get("quantity") or _read(quantity_source, call, query, params, "quantity")
        if quantity:
            if not quantity.isdigit() or len(quantity) > 9:
                raise InvalidArgument(f"quantity must be a whole number, got {quantity[:32]!r}", field="quantity")
            request.quantity = int(quantity)
        for name, source in dimension_sources.items():
            value = _read(source, call, query, params, f"dimensions[{name}]")
            if value:
                request.dimensions[name] = value
        request_id = _read(self._spec.request_id, call, query, params, "request_id")
        debit = convert.debit_request(request, dry_run=False, request_id=request_id)
        decision = await self._decisions.check_and_debit(debit)
        self._metrics.decisions.labels(feature, _outcome(decision)).inc()
        if decision.allowed:
            return Answer(
                200,
                message=decision.message,
                credit_headers=[
                    (CHARGED, str(decision.credits_charged)),
                    (REMAINING, str(decision.balance_after)),
                    (ENTRY_ID, decision.entry_id),
                ],
            )
        return await self._denial(customer, feature, decision)

    async def _denial(self, customer: str, feature: str, decision: Decision) -> Answer:
        reason = decision.deny_reason
        answer = Answer(DENIAL_STATUS.get(reason, 403), reason, decision.message)
        catalog = self._catalog.rules.catalog
        plans = [key for key, plan in catalog.plans.items() if feature in plan.entitlements]
        if reason == "INSUFFICIENT_CREDITS":
            packages = sorted(catalog.packages.items(), key=lambda item: item[1].price)
            answer.upgrade = {"packages": [key for key, _ in packages], "plans": plans}
        elif reason in ("NOT_ENTITLED", "NO_ACTIVE_SUBSCRIPTION"):
            answer.upgrade = {"plans": plans}
        elif reason == "LIMIT_EXCEEDED":
            answer.retry_after = await self._seconds_until_cap_resets(customer, feature)
        return answer

    async def _seconds_until_cap_resets(self, customer: str, feature: str) -> int:
        """A day cap resets at the next UTC midnight, a month cap when the credit period ends (as decide counts)."""
        balance = await self._balances.get_balance(customer)
        now = self._balances.now_ms()
        subscription = balance.subscription
        reset = (now // DAY_MS + 1) * DAY_MS
        if subscription is not None:
            plan = self._catalog.rules.catalog.plans.get(subscription.plan)
            entitlement = plan.entitlements.get(feature) if plan is not None else None
            if entitlement is not None and entitlement.cap is not None and entitlement.cap.per == "month":
                reset = subscription.period_end_ms
        return max(1, -(-(reset - now) // 1000))


def parse_request(call: HttpCall) -> tuple[str, str, dict[str, str]]:
    """The method, the normalized path and the query of a request; InvalidArgument for what no client sends."""
    if not METHOD_PATTERN.match(call.method):
        raise InvalidArgument(f"method {call.method[:32]!r} is not an HTTP method", field="method")
    target = call.target
    if len(target) > MAX_TARGET:
        raise InvalidArgument(f"the URI is longer than {MAX_TARGET} characters", field="uri")
    if not target.startswith("/") or target.startswith("//") or CONTROL_OR_SPACE.search(target):
        raise InvalidArgument("the URI must be a path (and query) starting with one '/'", field="uri")
    try:
        parts = urlsplit(target)
        query = dict(parse_qsl(parts.query, keep_blank_values=True, errors="strict", max_num_fields=MAX_QUERY_FIELDS))
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"the URI's query does not parse: {type(exc).__name__}", field="uri") from exc
    return call.method, _normalized_path(parts.path), query


def _normalized_path(path: str) -> str:
    """RFC 3986 normalization (unreserved escapes decoded, dot segments removed) and repeated slashes merged, as
    nginx does by default: what the upstream will be asked for, so no spelling of a route escapes its charge."""
    decoded = UNRESERVED_ESCAPE.sub(lambda match: chr(int(match.group(1), 16)), path)
    normalized = posixpath.normpath(decoded)
    if normalized.startswith("//"):
        normalized = "/" + normalized.lstrip("/")
    if decoded.endswith("/") and normalized != "/":
        normalized += "/"
    return normalized


def _read(source: Source | None, call: HttpCall, query: dict[str, str], params: dict[str, str], name: str) -> str:
    if source is None:
        return ""
    if source.header is not None:
        return call.headers.get(source.header.lower(), "")
    if source.query is not None:
        return query.get(source.query, "")
    if source.path is not None:
        return params.get(source.path, "")
    if source.value is not None:
        return source.value
    return _jwt_claim(call.headers.get((source.jwt_header or "authorization").lower(), ""), source, name)


def _jwt_claim(header: str, source: Source, name: str) -> str:
    """A claim of a JWT the gateway has verified (its signature is not checked again here); '' when absent."""
    token = header[7:] if header[:7].lower() == "bearer " else header
    if not token:
        return ""
    parts = token.split(".")
    try:
        if len(parts) != 3:
            raise ValueError("not three parts")
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, binascii.Error) as exc:
        raise InvalidArgument(f"{name}: the JWT does not decode ({exc.__class__.__name__})", field=name) from exc
    claim = payload.get(source.jwt_claim) if isinstance(payload, dict) else None
    if isinstance(claim, bool) or not isinstance(claim, str | int):
        return ""
    return str(claim)


def _describe(source: Source) -> str:
    if source.header is not None:
        return f"{source.header} header"
    if source.query is not None:
        return f"{source.query} query parameter"
    return f"JWT claim {source.jwt_claim}"


def _outcome(decision: Decision) -> str:
    return "allowed" if decision.allowed else decision.deny_reason.lower()


ERROR_STATUS: list[tuple[type[CreditgateError], int]] = [
    (InvalidArgument, 400),
    (Unauthenticated, 401),
    # The customer is not one creditgate knows, or a route's feature left the catalog: not allowed.
    (NotFound, 403),
    (PermissionDenied, 403),
    # The same x-request-id with another request.
    (AlreadyExists, 409),
    (FailedPrecondition, 409),
    # Redis or the store cannot be reached: retry (with the same x-request-id).
    (Unavailable, 503),
]


def error_answer(error: CreditgateError) -> Answer:
    status = next((code for kind, code in ERROR_STATUS if isinstance(error, kind)), 500)
    if status >= 500:
        log.warning("gateway_fault", reason=error.reason, error=error.message)
    return Answer(
        status,
        error.reason,
        error.message,
        retry_after=1 if status == 503 else None,
        field=error.field,
        error=error,
    )

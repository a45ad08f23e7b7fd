"""What an operator can change, each as: parse the form, say what will happen (the confirmation), do it once.

Every action form carries a request_id made when the form was rendered. TopUp and AdjustCredits send it to the
server, whose idempotency charges it once even across consoles; the other calls take no request_id, so the console
remembers the ids it ran and answers a resubmitted form with the first result instead of calling again.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from creditgate.client import AsyncClient
from creditgate.console.catalog import Catalog

MAX_CREDITS = 1_000_000_000


class FieldError(Exception):
    """A form value the console cannot send (not a number, missing): shown next to its field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def _integer(form: Mapping[str, str], name: str) -> int:
    value = _optional_integer(form, name)
    if value is None:
        raise FieldError(name, "required")
    return value


def _optional_integer(form: Mapping[str, str], name: str) -> int | None:
    text = form.get(name, "").strip().replace(",", "").replace("\u2212", "-")
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        raise FieldError(name, "a whole number, e.g. 500 or -50") from None


def _text(form: Mapping[str, str], name: str) -> str:
    value = form.get(name, "").strip()
    if not value:
        raise FieldError(name, "required")
    return value


@dataclass(frozen=True)
class Planned:
    """A checked action: what the confirmation says, and the call that does it."""

    summary: str
    run: Callable[[AsyncClient, str], Awaitable[str]]  # (client, request_id) -> what happened


def plan_top_up(customer_id: str, form: Mapping[str, str], catalog: Catalog) -> Planned:
    package_key = form.get("package", "").strip()
    if package_key:
        package = catalog.package(package_key)
        what = (
            f"the {package.name} pack ({package.credits:,} credits for {package.price} {catalog.currency})"
            if package
            else f"the package {package_key}"
        )

        async def buy(client: AsyncClient, request_id: str) -> str:
            done = await client.top_up(customer_id, package=package_key, request_id=request_id)
            return (
                f"Topped up {customer_id} with {done.bucket.remaining_credits:,} credits"
                f" ({done.price} {done.currency}): {done.available_credits:,} available"
            )

        return Planned(f"Top up {customer_id} with {what}.", buy)
    credits = _integer(form, "credits")

    async def grant(client: AsyncClient, request_id: str) -> str:
        done = await client.top_up(customer_id, credits=credits, request_id=request_id)
        return f"Topped up {customer_id} with {credits:,} credits: {done.available_credits:,} available"

    return Planned(f"Top up {customer_id} with {credits:,} credits (no charge, they never expire).", grant)


def plan_adjust(customer_id: str, form: Mapping[str, str], catalog: Catalog) -> Planned:
    delta = _integer(form, "delta")
    reason = _text(form, "reason")

    async def adjust(client: AsyncClient, request_id: str) -> str:
        done = await client.adjust_credits(customer_id, delta, reason, request_id=request_id)
        return f"Adjusted {customer_id} by {delta:+,} credits: {done.available_credits:,} available"

    verb = "Add" if delta > 0 else "Remove"
    return Planned(f"{verb} {abs(delta):,} credits {'to' if delta > 0 else 'from'} {customer_id}: “{reason}”.", adjust)


def plan_change_plan(customer_id: str, form: Mapping[str, str], catalog: Catalog) -> Planned:
    plan_key = _text(form, "plan")
    plan = catalog.plan(plan_key)

    async def change(client: AsyncClient, request_id: str) -> str:
        done = await client.change_plan(customer_id, plan_key)
        return f"{customer_id} is on {done.subscription.plan} now: {done.available_credits:,} credits available"

    name = f"{plan.name} ({plan.price} {catalog.currency} a {plan.billing_interval})" if plan else plan_key
    return Planned(f"Move {customer_id} to {name} now; its first grants are issued at once.", change)


def plan_cancel(customer_id: str, form: Mapping[str, str], catalog: Catalog) -> Planned:
    async def cancel(client: AsyncClient, request_id: str) -> str:
        await client.cancel_subscription(customer_id)
        return f"{customer_id}'s subscription is canceled"

    return Planned(f"Cancel {customer_id}'s subscription now.", cancel)


def plan_threshold(customer_id: str, form: Mapping[str, str], catalog: Catalog) -> Planned:
    threshold = _optional_integer(form, "threshold_credits")

    async def set_threshold(client: AsyncClient, request_id: str) -> str:
        done = await client.set_low_balance_threshold(customer_id, threshold)
        if done.HasField("threshold_credits"):
            return f"{customer_id}'s low-balance threshold is {done.threshold_credits:,} credits"
        return f"{customer_id}'s low-balance threshold is the plan's again"

    what = "the plan's" if threshold is None else f"{threshold:,} credits"
    return Planned(f"Set {customer_id}'s low-balance threshold to {what}.", set_threshold)


def plan_auto_top_up(customer_id: str, form: Mapping[str, str], catalog: Catalog) -> Planned:
    package_key = form.get("package", "").strip()
    # A threshold is needed only to turn auto top-up on (a package chosen); turning it off ignores a blank one.
    if package_key:
        threshold = _integer(form, "threshold_credits")
    else:
        threshold = _optional_integer(form, "threshold_credits") or 0
    cooldown = _optional_integer(form, "cooldown") or 0

    async def set_auto(client: AsyncClient, request_id: str) -> str:
        done = await client.set_auto_top_up(customer_id, package_key, threshold, cooldown_seconds=cooldown * 60)
        if not done.package:
            return f"Auto top-up is off for {customer_id}"
        return (
            f"Auto top-up for {customer_id}: {done.package} ({done.credits:,} credits for {done.price})"
            f" below {done.threshold_credits:,} credits"
        )

    if not package_key:
        return Planned(f"Turn auto top-up off for {customer_id}.", set_auto)
    wait = f", at most once every {cooldown} minutes" if cooldown else ""
    return Planned(
        f"Buy {package_key} for {customer_id} whenever the balance falls below {threshold:,} credits{wait}.", set_auto
    )


PLANNERS: Mapping[str, Callable[[str, Mapping[str, str], Catalog], Planned]] = {
    "topup": plan_top_up,
    "adjust": plan_adjust,
    "plan": plan_change_plan,
    "cancel": plan_cancel,
    "threshold": plan_threshold,
    "autotopup": plan_auto_top_up,
}


class Submissions:
    """The result of each request_id the console ran: a resubmitted or double-clicked form gets the first
    submission's result (awaiting it while it runs) and never calls the server a second time."""

    def __init__(self, kept: int = 10_000) -> None:
        self._kept = kept
        self._results: OrderedDict[str, asyncio.Future[str]] = OrderedDict()

    async def once(self, request_id: str, run: Callable[[], Awaitable[str]]) -> tuple[str, bool]:
        """(what happened, whether this was a repeat of an earlier submission)."""
        earlier = self._results.get(request_id)
        if earlier is not None:
            return await asyncio.shield(earlier), True
        # Registered before the first await: the event loop runs one handler at a time up to there.
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._results[request_id] = future
        while len(self._results) > self._kept:
            self._results.popitem(last=False)
        try:
            message = await run()
        except BaseException as exc:
            # A refused call changed nothing: the same form may be sent again (after fixing a field).
            self._results.pop(request_id, None)
            future.set_exception(exc)
            future.exception()  # marks it retrieved when no second submission waits for it
            raise
        future.set_result(message)
        return message, False

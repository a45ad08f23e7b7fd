"""The grpc.aio server every creditgate service (and the bench's baselines) runs on: generic handlers only."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc


def new_grpc_server(interceptors: Sequence[grpc.aio.ServerInterceptor[Any, Any]] = ()) -> grpc.aio.Server:
    """A grpc.aio server on which the generated `add_*_to_server` functions register generic handlers only.

    grpc 1.8x's aio server keeps one pending request per registered method and, for every incoming call, waits
    on all of them together (asyncio.wait: a done-callback added to and removed from each), so each call pays for
    every registered method of every service (grpc/grpc#43461). With generic handlers only there is one pending
    request; a call's method is found by name in a dict instead.
    """
    server = grpc.aio.server(interceptors=interceptors)
    # Overridden on this instance only; setattr because type checkers refuse assigning to a method.
    setattr(server, "add_registered_method_handlers", _generic_handlers_suffice)  # noqa: B010
    return server


def _generic_handlers_suffice(service_name: str, handlers: dict[str, Any]) -> None:
    """Every generated add_*_to_server also adds the same handlers as generic ones, which serve the calls."""

"""The gateway front doors: Envoy ext_authz on the gRPC port and HTTP forward-auth, one decision core (decide.py)."""

from __future__ import annotations

from pathlib import Path

import grpc
import structlog
from creditgate.server.api.calls import CallEnvelope
from creditgate.server.api.gateway.decide import Gateway
from creditgate.server.api.gateway.ext_authz import AUTHORIZATION_SERVICE, AuthorizationServicer
from creditgate.server.api.gateway.forward_auth import ForwardAuthServer
from creditgate.server.catalog.holder import CatalogHolder
from creditgate.server.domain.routes import RouteTable, load_routes
from creditgate.server.engine.balances import Balances
from creditgate.server.engine.decisions import Decisions
from creditgate.server.errors import FailedPrecondition
from creditgate.server.ops.metrics import Metrics
from creditgate.server.settings import ApiKey

log = structlog.get_logger(__name__)


def read_routes(path: Path) -> RouteTable:
    """The routes file, read and checked before anything starts: a wrong one stops the start, naming its line."""
    try:
        source = path.read_text()
    except OSError as exc:
        raise FailedPrecondition(
            f"cannot read the routes file {path}: {exc}", field="routes", reason="BAD_ROUTES_FILE"
        ) from exc
    return load_routes(source, str(path))


class FrontDoors:
    """Built when CREDITGATE_ROUTES is set: the routes are checked against the catalog once it is applied, and
    forward-auth listens if asked to."""

    def __init__(
        self,
        routes: RouteTable,
        listen: str | None,
        keys: tuple[ApiKey, ...],
        decisions: Decisions,
        balances: Balances,
        catalog: CatalogHolder,
        metrics: Metrics,
    ) -> None:
        self.gateway = Gateway(decisions, balances, catalog, routes, metrics)
        self._listen = listen
        self._keys = keys
        self.forward_auth: ForwardAuthServer | None = None

    def register(self, envelope: CallEnvelope, server: grpc.aio.Server) -> None:
        """envoy.service.auth.v3.Authorization on the gRPC server, inside the call envelope like every service."""
        envelope.register(server, AUTHORIZATION_SERVICE, AuthorizationServicer(self.gateway))

    async def start(self) -> None:
        self.gateway.check_routes()
        if self._listen is not None:
            self.forward_auth = ForwardAuthServer(self.gateway, self._listen, self._keys)
            await self.forward_auth.start()
            log.info("forward_auth_serving", listen=self._listen, port=self.forward_auth.port)

    async def stop(self) -> None:
        if self.forward_auth is not None:
            await self.forward_auth.stop()

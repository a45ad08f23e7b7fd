"""HTTP forward-auth (Traefik ForwardAuth, Caddy forward_auth, nginx auth_request, Envoy's HTTP ext_authz): any
method on any path of CREDITGATE_HTTP_AUTHZ_LISTEN decides the original request the proxy describes.

aiohttp's low-level server, not uvicorn: it runs in the app's own event loop through its public runner API without
taking over SIGINT/SIGTERM (uvicorn's Server.serve installs its own handlers; serve.py owns those), its C parser
refuses oversized request lines and headers with 4xx before our code runs, and reuse_port lets `serve --workers`
processes share the port as they share the gRPC one."""

from __future__ import annotations

import logging

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from creditgate.server.api.auth import verify_key
from creditgate.server.api.gateway.decide import Answer, Gateway, HttpCall, error_answer
from creditgate.server.errors import CreditgateError, Unauthenticated
from creditgate.server.settings import ApiKey

# The original method and URI: Traefik and Caddy send X-Forwarded-*, nginx recipes X-Original-*; without either
# (Envoy's HTTP ext_authz, which sends the original request line) the request's own.
METHOD_HEADERS = ("x-forwarded-method", "x-original-method")
URI_HEADERS = ("x-forwarded-uri", "x-original-uri")
# nginx's auth_request passes 2xx, 401 and 403 and turns any other status into 500; a request with this header
# set to "nginx" gets 403 for every other denial, with the real status, reason and body in headers that
# examples/nginx.conf turns back into the client's answer.
PROXY_HEADER = "x-creditgate-proxy"
# With API keys configured, the proxy sends one with the metering scope here (the original request's own
# `authorization` is the client's and passes through untouched).
KEY_HEADER = "x-creditgate-api-key"
MAX_HEADER_BYTES = 8190
MAX_HEADERS = 128


class _NotClientFaults(logging.Filter):
    """aiohttp logs every request that does not parse with a traceback; those are the client's (answered 400),
    and anyone could fill the log with them."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], HttpProcessingError))


server_log = logging.getLogger("creditgate.forward_auth")
server_log.addFilter(_NotClientFaults())


class ForwardAuthServer:
    def __init__(self, gateway: Gateway, listen: str, keys: tuple[ApiKey, ...]) -> None:
        self._gateway = gateway
        self._listen = listen
        self._keys = keys
        self._runner: web.ServerRunner | None = None
        self.port = 0

    async def start(self) -> None:
        server = web.Server(
            self._handle,
            access_log=None,
            logger=server_log,
            max_line_size=MAX_HEADER_BYTES,
            max_field_size=MAX_HEADER_BYTES,
            max_headers=MAX_HEADERS,
        )
        self._runner = web.ServerRunner(server, handle_signals=False, shutdown_timeout=1.0)
        await self._runner.setup()
        host, _, port = self._listen.rpartition(":")
        site = web.TCPSite(self._runner, host.strip("[]"), int(port), reuse_port=True)
        await site.start()
        self.port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        headers: dict[str, str] = {}
        for name, value in request.headers.items():
            key = name.lower()
            headers[key] = f"{headers[key]},{value}" if key in headers else value
        method = next((headers[name] for name in METHOD_HEADERS if name in headers), request.method)
        target = next((headers[name] for name in URI_HEADERS if name in headers), request.raw_path)
        answer = self._refused(headers.get(KEY_HEADER)) if self._keys else None
        if answer is None:
            answer = await self._gateway.decide(HttpCall(method, target, headers))
        if headers.get(PROXY_HEADER) == "nginx":
            return _for_nginx(answer)
        if answer.allowed:
            return web.Response(status=200, headers=answer.credit_headers)
        return web.Response(status=answer.status, headers=answer.denial_headers(), body=answer.body())

    def _refused(self, presented: str | None) -> Answer | None:
        try:
            if not presented:
                raise Unauthenticated(
                    f"an API key is required: the proxy sends it in {KEY_HEADER}",
                    field=KEY_HEADER,
                    reason="API_KEY_MISSING",
                )
            verify_key(self._keys, presented, "metering", KEY_HEADER)
        except CreditgateError as exc:
            return error_answer(exc)
        return None


def _for_nginx(answer: Answer) -> web.Response:
    if answer.allowed:
        return web.Response(status=200, headers=answer.credit_headers)
    headers = [
        ("x-creditgate-status", str(answer.status)),
        ("x-creditgate-reason", answer.reason),
        ("x-creditgate-body", answer.body().decode()),
        *answer.denial_headers(),
    ]
    return web.Response(status=401 if answer.status == 401 else 403, headers=headers, body=answer.body())

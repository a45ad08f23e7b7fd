"""envoy.service.auth.v3.Authorization on creditgate's gRPC port: Envoy's (and Istio's, Envoy Gateway's) external
authorization, decided by the gateway core like forward-auth.

The protos are PyPI's xds-protos (generated from envoyproxy/data-plane-api by the gRPC authors, released with
grpcio). It also installs google/rpc/*_pb2.py over googleapis-common-protos' files of the same paths (status,
error_details, code): either copy serves the server's error translation, whichever is installed last
(tests/unit/test_envoy_protos.py imports them both ways round)."""

from __future__ import annotations

from typing import Any

import grpc
from creditgate.server.api.errors import DOMAIN, status_code, translated
from creditgate.server.api.gateway.decide import CREDIT_HEADERS, Answer, Gateway, HttpCall
from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from envoy.type.v3 import http_status_pb2
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

AUTHORIZATION_SERVICE = external_auth_pb2.DESCRIPTOR.services_by_name["Authorization"]
Context = grpc.aio.ServicerContext[Any, Any]
# The google.rpc code of CheckResponse.status for each denial's HTTP status (Envoy only tells OK from not OK).
DENIAL_CODES = {
    401: code_pb2.UNAUTHENTICATED,
    402: code_pb2.RESOURCE_EXHAUSTED,
    403: code_pb2.PERMISSION_DENIED,
    429: code_pb2.RESOURCE_EXHAUSTED,
}


class AuthorizationServicer(external_auth_pb2_grpc.AuthorizationServicer):  # type: ignore[misc]
    def __init__(self, gateway: Gateway) -> None:
        self._gateway = gateway

    @translated
    async def Check(self, request: Any, context: Context) -> Any:
        http = request.attributes.request.http
        answer = await self._gateway.decide(
            HttpCall(http.method, http.path, _headers(http), dict(request.attributes.context_extensions))
        )
        if answer.error is not None and answer.status >= 500:
            # A fault is a gRPC error, so that Envoy's failure_mode_allow decides (as when creditgate is down).
            raise answer.error
        if answer.allowed:
            return _allowed(answer)
        return _denied(answer)


def _headers(http: Any) -> dict[str, str]:
    """Envoy's `headers` map, or its `header_map` when encode_raw_headers is on; names in lower case."""
    if http.headers:
        return {key.lower(): value for key, value in http.headers.items()}
    headers: dict[str, str] = {}
    for item in http.header_map.headers:
        key = item.key.lower()
        value = item.value or item.raw_value.decode("utf-8", "replace")
        headers[key] = f"{headers[key]},{value}" if key in headers else value
    return headers


def _header(key: str, value: str) -> Any:
    return base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key=key, value=value))


def _allowed(answer: Answer) -> Any:
    ok = external_auth_pb2.OkHttpResponse(
        # To the upstream (overriding any the client sent) and to the client.
        headers=[_header(key, value) for key, value in answer.credit_headers],
        response_headers_to_add=[_header(key, value) for key, value in answer.credit_headers],
    )
    if not answer.credit_headers:
        # Unmatched and allowed: the upstream must not take a client's own x-credits-* for creditgate's.
        ok.headers_to_remove.extend(CREDIT_HEADERS)
    return external_auth_pb2.CheckResponse(status=status_pb2.Status(code=code_pb2.OK), ok_response=ok)


def _denied(answer: Answer) -> Any:
    info = error_details_pb2.ErrorInfo(reason=answer.reason, domain=DOMAIN)
    if answer.field:
        info.metadata["field"] = answer.field
    detail = any_pb2.Any()
    detail.Pack(info)
    code = status_code(answer.error) if answer.error is not None else DENIAL_CODES.get(answer.status)
    return external_auth_pb2.CheckResponse(
        status=status_pb2.Status(code=code or code_pb2.PERMISSION_DENIED, message=answer.message, details=[detail]),
        denied_response=external_auth_pb2.DeniedHttpResponse(
            status=http_status_pb2.HttpStatus(code=answer.status),
            headers=[_header(key, value) for key, value in answer.denial_headers()],
            body=answer.body().decode(),
        ),
    )

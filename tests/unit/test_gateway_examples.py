"""examples/envoy.yaml is a valid Envoy v3 Bootstrap, read with Envoy's own protos (no Envoy binary is packaged
for Debian; tests/e2e/test_ext_authz.py sends the CheckRequests it would send). examples/nginx.conf is run by
tests/e2e/test_gateway_nginx.py."""

from __future__ import annotations

import yaml
from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.extensions.filters.http.ext_authz.v3 import ext_authz_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2  # noqa: F401 - registers the Any type
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2  # noqa: F401 - registers the Any type
from google.protobuf import json_format
from harness import REPO


def test_the_envoy_example_parses_as_a_bootstrap_with_ext_authz_at_creditgate() -> None:
    document = yaml.safe_load((REPO / "examples" / "envoy.yaml").read_text())
    bootstrap = json_format.ParseDict(document, bootstrap_pb2.Bootstrap())
    manager = http_connection_manager_pb2.HttpConnectionManager()
    bootstrap.static_resources.listeners[0].filter_chains[0].filters[0].typed_config.Unpack(manager)
    assert manager.preserve_external_request_id
    ext_authz = ext_authz_pb2.ExtAuthz()
    assert manager.http_filters[0].typed_config.Unpack(ext_authz)
    assert ext_authz.grpc_service.envoy_grpc.cluster_name == "creditgate"
    assert not ext_authz.failure_mode_allow
    assert ext_authz.status_on_error.code == 503
    per_route = ext_authz_pb2.ExtAuthzPerRoute()
    routes = manager.route_config.virtual_hosts[0].routes
    assert routes[0].typed_per_filter_config["envoy.filters.http.ext_authz"].Unpack(per_route)
    assert dict(per_route.check_settings.context_extensions) == {"feature": "phone_reveal"}
    clusters = {cluster.name: cluster for cluster in bootstrap.static_resources.clusters}
    address = clusters["creditgate"].load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address
    assert (address.address, address.port_value) == ("127.0.0.1", 50051)

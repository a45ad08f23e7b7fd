"""The routes file: refused whole with the line of the first problem; requests matched and paths normalized."""

from __future__ import annotations

from pathlib import Path

import pytest
from creditgate.server.api.gateway.decide import HttpCall, parse_request
from creditgate.server.app import build_app
from creditgate.server.domain.catalog import load_catalog
from creditgate.server.domain.routes import load_routes
from creditgate.server.errors import InvalidArgument
from creditgate.server.settings import Settings
from harness import APOLLO, REPO

HEAD = "customer: {header: x-customer-id}\nunmatched: allow\nroutes:\n"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            HEAD + '  - {path: "/a", feature: email_unlock}\n  - {path: "b", feature: email_unlock}\n',
            "routes file line 5: routes.1: path must start with '/': 'b'",
        ),
        (
            "customer: {header: x-customer-id}\nunmatched: maybe\nroutes:\n  - {path: /a, feature: email_unlock}\n",
            "routes file line 2: unmatched: Input should be 'allow' or 'deny'",
        ),
        (
            "customer: {header: x, query: y}\nunmatched: allow\nroutes:\n  - {path: /a, feature: email_unlock}\n",
            "routes file line 1: customer: give exactly one of header, query, path, jwt_claim, value",
        ),
        (
            HEAD + '  - {path: "/a", feature: email_unlock}\n'
            '  - {method: POST, path: "/b/{id}", feature: email_unlock,\n'
            "     quantity: {path: nope}}\n",
            "routes file line 5: routes.1: {nope} is not a parameter of path '/b/{id}'",
        ),
        (
            HEAD + '  - {path: "/a", feature: email_unlock}\n  - {method: post, path: "/b", feature: email_unlock}\n',
            "routes file line 5: routes.1: method must be an HTTP method in upper case (e.g. POST) or '*', not 'post'",
        ),
        (
            HEAD + '  - {path: "/a", feature: email_unlock}\n  - {path: "/b", feature: x, colour: red}\n',
            "routes file line 5: routes.1.colour: Extra inputs are not permitted",
        ),
        (
            HEAD + "  - {path: /a, feature: email_unlock\n",
            "routes file line 5: not valid YAML: expected ',' or '}', but got '<stream end>'",
        ),
        ("customer: {header: x}\nunmatched: allow\n", "routes file line 1: routes: Field required"),
        ("- just a list\n", "routes file must be a YAML mapping (customer, unmatched, routes)"),
    ],
)
def test_a_bad_routes_file_is_refused_with_its_line(text: str, message: str) -> None:
    with pytest.raises(InvalidArgument) as raised:
        load_routes(text)
    assert raised.value.message == message
    assert raised.value.reason == "INVALID_ROUTES"


@pytest.mark.parametrize(
    ("route", "message"),
    [
        (
            '  - {path: "/b", feature: no_such_feature}\n',
            "routes file line 5: routes.1.feature: 'no_such_feature' is not a feature of the catalog",
        ),
        (
            '  - {path: "/b", feature: email_unlock, dimensions: {quality: {header: x-q}}}\n',
            "routes file line 5: routes.1.dimensions: 'quality' is not a dimension of email_unlock (allowed: none)",
        ),
    ],
)
def test_routes_are_checked_against_the_catalog(route: str, message: str) -> None:
    table = load_routes(HEAD + '  - {path: "/a", feature: email_unlock}\n' + route)
    with pytest.raises(InvalidArgument) as raised:
        table.check_against(load_catalog(APOLLO.read_text()).catalog)
    assert raised.value.message == message


def test_the_server_refuses_to_start_with_a_bad_routes_file(tmp_path: Path) -> None:
    routes = tmp_path / "routes.yaml"
    routes.write_text(HEAD + '  - {path: "/a", feature: email_unlock}\n  - {path: "/b", feature: 7}\n')
    settings = Settings(listen="127.0.0.1:0", data_dir=tmp_path, routes=routes, redis_url="redis://127.0.0.1:1/0")
    with pytest.raises(InvalidArgument) as raised:
        build_app(settings)
    assert raised.value.message == f"{routes} line 5: routes.1.feature: Input should be a valid string"


def test_forward_auth_needs_routes() -> None:
    with pytest.raises(ValueError, match="http_authz_listen needs routes"):
        Settings(http_authz_listen="127.0.0.1:8081")


def test_the_example_routes_match_the_apollo_catalog() -> None:
    table = load_routes((REPO / "examples" / "routes.yaml").read_text())
    table.check_against(load_catalog(APOLLO.read_text()).catalog)
    matched = table.match("POST", "/v1/contacts/42/mobile")
    assert matched is not None
    assert (matched[0].route.feature, matched[0].line, matched[1]) == ("mobile_unlock", 10, {"id": "42"})
    assert table.match("GET", "/v1/contacts/42/mobile") is None
    mailbox = table.match("POST", "/v1/mailboxes/sales/send")
    assert mailbox is not None and mailbox[1] == {"mailbox": "sales"}


@pytest.mark.parametrize(
    ("target", "path"),
    [
        ("/v1/exports?count=3", "/v1/exports"),
        ("/v1/%65xports", "/v1/exports"),
        ("/v1//exports", "/v1/exports"),
        ("/v1/x/../exports", "/v1/exports"),
        ("/v1/./exports/", "/v1/exports/"),
        ("/v1/%2e%2e/v1/exports", "/v1/exports"),
        ("/v1/a%2Fb", "/v1/a%2Fb"),
    ],
)
def test_paths_are_matched_as_the_upstream_will_read_them(target: str, path: str) -> None:
    assert parse_request(HttpCall("POST", target, {}))[1] == path

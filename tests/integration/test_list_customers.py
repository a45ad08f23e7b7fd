"""ListCustomers: operators find customers by id prefix or name, page by page, from the durable store."""

from __future__ import annotations

import grpc
import pytest
from creditgate.v1 import admin_pb2
from harness import RunningServer


def listed(server: RunningServer, query: str, page_size: int = 0) -> list[list[str]]:
    pages, token = [], ""
    while True:
        page = server.admin.ListCustomers(
            admin_pb2.ListCustomersRequest(query=query, page_size=page_size, page_token=token)
        )
        pages.append([customer.customer_id for customer in page.customers])
        token = page.next_page_token
        if not token:
            return pages


def test_customers_are_found_by_id_prefix_or_name_and_paged_by_id(server: RunningServer) -> None:
    for customer_id, name in (
        ("org:acme", "Acme Corp"),
        ("org:acme:eu", "Acme Europe"),
        ("org:globex", "Globex"),
        ("jane@example.com", "Jane ACME-fan"),
        ("org_x", "Underscore"),
    ):
        server.admin.CreateCustomer(admin_pb2.CreateCustomerRequest(customer_id=customer_id, name=name))
    server.flush()
    assert listed(server, "org:acme") == [["org:acme", "org:acme:eu"]]
    assert listed(server, "acme", page_size=2) == [["jane@example.com", "org:acme"], ["org:acme:eu"]]
    assert listed(server, "org_") == [["org_x"]]  # a prefix is text, not a pattern
    assert listed(server, "") == [["jane@example.com", "org:acme", "org:acme:eu", "org:globex", "org_x"]]
    first = server.admin.ListCustomers(admin_pb2.ListCustomersRequest(query="org:globex"))
    assert (first.customers[0].name, first.customers[0].create_time.ToMilliseconds()) == (
        "Globex",
        server.clock.now_ms(),
    )


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (admin_pb2.ListCustomersRequest(page_token="not-a-token"), "page_token"),
        (admin_pb2.ListCustomersRequest(page_size=-1), "page_size"),
        (admin_pb2.ListCustomersRequest(query="x" * 129), "query"),
    ],
)
def test_bad_list_requests_name_their_field(
    server: RunningServer, request_: admin_pb2.ListCustomersRequest, field: str
) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        server.admin.ListCustomers(request_)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in (caught.value.details() or "")

"""xds-protos installs google/rpc/*_pb2.py over googleapis-common-protos' files of the same paths. Whichever copy
is on disk, and whichever is imported first, the server's error translation (google.rpc.status, error_details via
grpc_status) and Envoy's ext_authz messages (which embed google.rpc.Status) must both work."""

from __future__ import annotations

import subprocess
import sys

import pytest

PROGRAM = """
import sys
if sys.argv[1] == "envoy-first":
    from envoy.service.auth.v3 import external_auth_pb2
from creditgate.server.api.errors import to_status
from creditgate.server.errors import InvalidArgument
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status
if sys.argv[1] != "envoy-first":
    from envoy.service.auth.v3 import external_auth_pb2

status = to_status(InvalidArgument("quantity must be between 1 and 1,000,000", field="quantity"))
details = dict(status.trailing_metadata)["grpc-status-details-bin"]
decoded = status_pb2.Status.FromString(details)
info = error_details_pb2.ErrorInfo()
assert decoded.details[0].Unpack(info)
embedded = external_auth_pb2.CheckResponse(status=decoded)
again = external_auth_pb2.CheckResponse.FromString(embedded.SerializeToString())
again.status.details[0].Unpack(info)
print(status.code.name, decoded.code, info.reason, info.metadata["field"], again.status.message)
"""


@pytest.mark.parametrize("first", ["envoy-first", "google-rpc-first"])
def test_google_rpc_and_envoy_protos_work_in_either_import_order(first: str) -> None:
    result = subprocess.run([sys.executable, "-c", PROGRAM, first], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == (
        "INVALID_ARGUMENT 3 INVALID_ARGUMENT quantity quantity must be between 1 and 1,000,000"
    )

"""The Node.js client (client/node, built by `make client-deps`): its node:test suite and example, on a live server."""

from __future__ import annotations

import os
import subprocess

from harness import REPO, RunningServer

NODE_CLIENT = REPO / "client" / "node"
BUILT = NODE_CLIENT / "dist"


def run_node(server: RunningServer, *args: str) -> subprocess.CompletedProcess[str]:
    assert (BUILT / "test" / "client.test.js").exists(), "client/node is not built: run `make client-deps`"
    environment = {**os.environ, "CREDITGATE_TARGET": f"127.0.0.1:{server.app.port}"}
    return subprocess.run(
        ["node", *args], cwd=NODE_CLIENT, env=environment, capture_output=True, text=True, timeout=120, check=False
    )


def test_the_node_test_suite_passes_against_the_live_server(server: RunningServer) -> None:
    result = run_node(server, "--test", "--test-reporter=tap", "dist/test/client.test.js")

    assert result.returncode == 0, result.stdout + result.stderr
    assert "# pass 7\n" in result.stdout
    assert "# fail 0\n" in result.stdout


def test_the_node_example_runs(server: RunningServer) -> None:
    result = run_node(server, "dist/examples/quickstart.js", f"127.0.0.1:{server.app.port}", "node-demo")

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "node-demo on basic: 2500 credits available",
        "allowed: mobile_unlock: 10 credits charged; 2490 left",
        "denied DENY_REASON_INSUFFICIENT_CREDITS: Not enough credits: phone_reveal costs 3000 and 2490 are available. "
        "Buy credits (starter: 1,000 credits for 29.00 USD) or upgrade.",
        "+1000 credits for 29.00 USD: 3490 available",
    ]
    assert server.available("node-demo") == 3_490

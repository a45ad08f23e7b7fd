"""The Go client (client/go, built into build/go by `make client-deps`): its tests and example, on a live server."""

from __future__ import annotations

import os
import subprocess

from harness import REPO, RunningServer

BUILT = REPO / "build" / "go"
GO_TESTS = [
    "TestALostAnswerIsRetriedWithTheSameRequestIDAndChargedOnce",
    "TestADenialIsAResult",
    "TestErrorsCarryTheServersReasonAndField",
    "TestACallersRequestIDIsKeptAndARepeatGetsTheFirstAnswer",
]


def run_built(server: RunningServer, program: str, *args: str) -> subprocess.CompletedProcess[str]:
    assert (BUILT / program).exists(), "client/go is not built: run `make client-deps`"
    environment = {**os.environ, "CREDITGATE_TARGET": f"127.0.0.1:{server.app.port}"}
    return subprocess.run(
        [str(BUILT / program), *args], env=environment, capture_output=True, text=True, timeout=120, check=False
    )


def test_the_go_tests_pass_against_the_live_server(server: RunningServer) -> None:
    result = run_built(server, "client.test", "-test.v")

    assert result.returncode == 0, result.stdout + result.stderr
    assert [line.split()[2] for line in result.stdout.splitlines() if line.startswith("--- PASS")] == GO_TESTS
    assert "FAIL" not in result.stdout


def test_the_go_example_runs(server: RunningServer) -> None:
    result = run_built(server, "quickstart", f"127.0.0.1:{server.app.port}", "go-demo")

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "go-demo on basic: 2500 credits available",
        "allowed: mobile_unlock: 10 credits charged; 2490 left",
        "denied DENY_REASON_INSUFFICIENT_CREDITS: Not enough credits: phone_reveal costs 3000 and 2490 are available. "
        "Buy credits (starter: 1,000 credits for 29.00 USD) or upgrade.",
        "+1000 credits for 29.00 USD: 3490 available",
    ]
    assert server.available("go-demo") == 3_490

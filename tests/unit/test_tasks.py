"""The supervised periodic task every background loop runs on: a round that raises is logged with its traceback
(then rate-limited), counted, retried after a capped exponential backoff, and the loop goes on."""

from __future__ import annotations

import asyncio
from collections.abc import MutableMapping
from typing import Any

import pytest
import structlog
from creditgate.server.clock import ManualClock
from creditgate.server.tasks import FAILURE_LOG_SECONDS, PeriodicTask, TaskState, backoff_seconds

START_MS = 1_800_000_000_000


class Body:
    """A loop body that raises for its first `failing` rounds, then returns its round number; `done` is set after
    `rounds` rounds."""

    def __init__(self, failing: int, rounds: int = 0) -> None:
        self.failing = failing
        self.rounds = rounds
        self.calls = 0
        self.done = asyncio.Event()

    async def __call__(self) -> int:
        self.calls += 1
        if self.calls == self.rounds:
            self.done.set()
        if self.calls <= self.failing:
            raise RuntimeError(f"round {self.calls} broke")
        return self.calls


@pytest.mark.parametrize(
    ("failures", "expected"),
    [(1, 0.5), (2, 1.0), (3, 2.0), (6, 16.0), (7, 30.0), (1000, 30.0)],
)
def test_backoff_doubles_from_the_first_wait_up_to_its_cap(failures: int, expected: float) -> None:
    assert backoff_seconds(failures, 0.5, 30.0) == expected


def test_a_failed_round_is_counted_logged_with_its_traceback_and_the_next_one_recovers() -> None:
    clock = ManualClock(START_MS)
    monotonic = [100.0]
    body = Body(failing=3)
    task = PeriodicTask("invoicer", body, 60, clock, monotonic=lambda: monotonic[0])
    told: list[TaskState] = []

    async def watcher(state: TaskState) -> None:
        told.append(state)

    task.watch(watcher)

    async def rounds() -> list[int | None]:
        results = []
        with structlog.testing.capture_logs() as logs:
            results.append(await task.run_once())
            clock.advance(1)
            results.append(await task.run_once())  # within FAILURE_LOG_SECONDS of the first: counted, not logged
            monotonic[0] += FAILURE_LOG_SECONDS
            results.append(await task.run_once())  # a minute on: logged again
            clock.advance(2)
            results.append(await task.run_once())
        events.extend(logs)
        return results

    events: list[MutableMapping[str, Any]] = []
    assert asyncio.run(rounds()) == [None, None, None, 4]
    assert [(e["event"], e.get("failures"), e.get("exc_info")) for e in events] == [
        ("background_task_failed", 1, True),
        ("background_task_failed", 3, True),
        ("background_task_recovered", 3, None),
    ]
    assert events[0]["retry_in_seconds"] == 0.5
    assert events[1]["retry_in_seconds"] == 2.0
    assert events[2]["failed_for_ms"] == 3000
    assert [(s.failures, s.restarts, s.failing_since_ms, s.last_error) for s in told] == [
        (1, 1, START_MS, "RuntimeError: round 1 broke"),
        (2, 2, START_MS, "RuntimeError: round 2 broke"),
        (3, 3, START_MS, "RuntimeError: round 3 broke"),
        (0, 3, 0, ""),
    ]


def test_the_running_loop_outlives_failing_rounds_and_restarts_after_each() -> None:
    body = Body(failing=3, rounds=4)  # three failures, then the round that succeeds; the next is 60 s away
    task = PeriodicTask(
        "hold_sweeper", body, 60, ManualClock(START_MS), backoff_initial_seconds=0.01, backoff_max_seconds=0.02
    )

    async def run() -> TaskState:
        task.start()
        await body.done.wait()
        await asyncio.sleep(0)  # the round's result is taken in
        state = task.state()
        await task.stop()
        return state

    state = asyncio.run(asyncio.wait_for(run(), 30))
    assert (state.running, state.healthy, state.failures, state.restarts, body.calls) == (True, True, 0, 3, 4)
    assert task.state().running is False


def test_a_busy_loop_runs_again_at_once_and_waits_its_interval_when_idle() -> None:
    moved = [2000, 2000, 7]
    calls: list[int] = []
    third = asyncio.Event()

    async def flush() -> int:
        calls.append(len(calls))
        if len(calls) == 3:
            third.set()
        return moved[len(calls) - 1] if len(calls) <= len(moved) else 0

    task = PeriodicTask("flusher", flush, 60, ManualClock(START_MS), busy=lambda count: count >= 2000)

    async def run() -> None:
        task.start()
        await third.wait()
        await asyncio.sleep(0.1)  # room for a fourth round, which must not come
        await task.stop()

    asyncio.run(asyncio.wait_for(run(), 30))
    # Two full batches, then one that was not: the fourth round is an interval (60 s) away.
    assert calls == [0, 1, 2]

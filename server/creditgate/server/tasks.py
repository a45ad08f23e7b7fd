"""Background loops: one supervised periodic task that every loop of the server runs on.

A round that raises does not end the loop: the error is logged with its traceback, counted, and the round is run
again after an exponential backoff (capped); meanwhile the task's state says it is failing, so the metrics and the
gRPC health service can show it. Tests drive one supervised round at a time with run_once()."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

import structlog
from creditgate.server.clock import Clock

log = structlog.get_logger(__name__)
T = TypeVar("T")
BACKOFF_INITIAL_SECONDS = 0.5
BACKOFF_MAX_SECONDS = 30.0
# A loop that keeps failing logs its traceback on the first failure, then at most this often (the count goes on).
FAILURE_LOG_SECONDS = 60.0


def backoff_seconds(failures: int, initial_seconds: float, max_seconds: float) -> float:
    """The wait before the round after `failures` failed rounds in a row: initial, doubled each time, capped."""
    return min(max_seconds, initial_seconds * float(2 ** min(max(failures - 1, 0), 62)))


@dataclass(frozen=True, slots=True)
class TaskState:
    """What the metrics and the health service are shown of a background loop."""

    name: str
    # Started and not stopped.
    running: bool
    # Failed rounds in a row; 0 once a round succeeds.
    failures: int
    # Failed rounds since the task was made, each followed by a restart after the backoff.
    restarts: int
    # The clock's time of the first failure of the current run of failures; 0 while healthy.
    failing_since_ms: int
    last_error: str

    @property
    def healthy(self) -> bool:
        return self.running and self.failures == 0


class Supervised(Protocol):
    """Anything whose state the health service and the metrics follow (a task, or a child process's flusher)."""

    @property
    def name(self) -> str: ...

    def state(self) -> TaskState: ...

    def watch(self, watcher: Watcher) -> None:
        """`watcher` is told when the state fails or recovers."""
        ...


# Told of every failed round and of the recovery; awaited by the loop, its own errors are logged and ignored.
Watcher = Callable[[TaskState], Awaitable[None]]


class PeriodicTask(Generic[T]):
    """Runs `body` every `interval_seconds` until stopped; again at once while `busy(result)` says there is more."""

    def __init__(
        self,
        name: str,
        body: Callable[[], Awaitable[T]],
        interval_seconds: float,
        clock: Clock,
        *,
        wait_first: bool = False,
        busy: Callable[[T], bool] | None = None,
        backoff_initial_seconds: float = BACKOFF_INITIAL_SECONDS,
        backoff_max_seconds: float = BACKOFF_MAX_SECONDS,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._name = name
        self._body = body
        self._interval = interval_seconds
        self._clock = clock
        # wait_first: the first round comes one interval after start (start already did what it checks).
        self._wait_first = wait_first
        self._busy = busy
        self._backoff_initial = backoff_initial_seconds
        self._backoff_max = backoff_max_seconds
        self._monotonic = monotonic
        self._watchers: list[Watcher] = []
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._failures = 0
        self._restarts = 0
        self._failing_since_ms = 0
        self._last_error = ""
        self._last_failure_log = 0.0

    @property
    def name(self) -> str:
        return self._name

    def state(self) -> TaskState:
        return TaskState(
            self._name,
            self._task is not None and not self._task.done(),
            self._failures,
            self._restarts,
            self._failing_since_ms,
            self._last_error,
        )

    def watch(self, watcher: Watcher) -> None:
        self._watchers.append(watcher)

    async def run_once(self) -> T | None:
        """One supervised round: its result, or None when it raised (logged, counted, and the state failing)."""
        try:
            result = await self._body()
        except Exception as exc:  # a loop outlives whatever one round raises: it is reported and retried
            await self._failed(exc)
            return None
        if self._failures:
            log.info(
                "background_task_recovered",
                task=self._name,
                failures=self._failures,
                failed_for_ms=max(0, self._clock.now_ms() - self._failing_since_ms),
            )
            self._failures, self._failing_since_ms, self._last_error = 0, 0, ""
            await self._tell()
        return result

    async def _failed(self, exc: Exception) -> None:
        self._failures += 1
        self._restarts += 1
        self._last_error = f"{type(exc).__name__}: {exc}"
        if self._failures == 1:
            self._failing_since_ms = self._clock.now_ms()
        now = self._monotonic()
        if self._failures == 1 or now - self._last_failure_log >= FAILURE_LOG_SECONDS:
            self._last_failure_log = now
            log.exception(
                "background_task_failed",
                task=self._name,
                failures=self._failures,
                retry_in_seconds=self._delay_after(False),
            )
        await self._tell()

    async def _tell(self) -> None:
        state = self.state()
        for watcher in self._watchers:
            try:
                await watcher(state)
            except Exception:  # a watcher's fault must not end the loop it watches
                log.exception("background_task_watcher_failed", task=self._name)

    def _delay_after(self, succeeded: bool) -> float:
        if not succeeded:
            return backoff_seconds(self._failures, self._backoff_initial, self._backoff_max)
        return self._interval

    def start(self) -> None:
        self._stopping.clear()
        self._task = asyncio.create_task(self._loop(), name=self._name)

    async def stop(self, timeout_seconds: float = 5.0) -> None:
        """Let the round in hand finish (a task cancelled inside a redis-py call can swallow the cancellation), then
        end; a round still running after timeout_seconds is cancelled."""
        self._stopping.set()
        if self._task is None:
            return
        done, _ = await asyncio.wait({self._task}, timeout=timeout_seconds)
        if not done:
            log.warning("background_task_stop_timed_out", task=self._name)
            self._task.cancel()
            await asyncio.wait({self._task}, timeout=1)
        self._task = None

    async def _loop(self) -> None:
        if self._wait_first and await self._stopped_within(self._interval):
            return
        while not self._stopping.is_set():
            result = await self.run_once()
            succeeded = self._failures == 0
            if succeeded and result is not None and self._busy is not None and self._busy(result):
                await asyncio.sleep(0)  # let the others in between two busy rounds
                continue
            if await self._stopped_within(self._delay_after(succeeded)):
                return

    async def _stopped_within(self, seconds: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)
        return self._stopping.is_set()

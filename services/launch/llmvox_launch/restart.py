"""When to restart a child that exited on its own, and when to give up (pure: the clock is
injected, nothing here sleeps or starts processes).

A child that exits unexpectedly is started again after a delay that doubles with each
consecutive attempt (`first_delay_s`, ×`factor`, at most `max_delay_s`). Once it has been ready
for `stable_after_s`, the next failure counts from attempt 1 again: a replica killed once a day
comes back after the first delay every time. A child that fails `crash_loop_failures` times
within `crash_loop_window_s` without getting ready in between is crash-looping (a broken model
file, a port taken): restarting it cannot help, so the launcher stops the stack and says why.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class RestartPolicy:
    first_delay_s: float = 0.5
    factor: float = 2.0
    max_delay_s: float = 10.0
    stable_after_s: float = 30.0
    crash_loop_failures: int = 3
    crash_loop_window_s: float = 120.0

    def __post_init__(self) -> None:
        if self.first_delay_s < 0 or self.max_delay_s < self.first_delay_s:
            raise ValueError("need 0 <= first_delay_s <= max_delay_s")
        if self.factor < 1:
            raise ValueError(f"factor must be >= 1, got {self.factor}")
        if self.crash_loop_failures < 1:
            raise ValueError(f"crash_loop_failures must be >= 1, got {self.crash_loop_failures}")

    def delay_s(self, attempt: int) -> float:
        """The wait before restart attempt `attempt` (1, 2, ...)."""
        return min(self.first_delay_s * self.factor ** (attempt - 1), self.max_delay_s)


@dataclass(frozen=True)
class Restart:
    delay_s: float
    attempt: int  # consecutive restarts, 1 for the first since the child was last stable


@dataclass(frozen=True)
class GiveUp:
    failures: int  # start-up failures within the window
    window_s: float


Decision = Restart | GiveUp


class RestartTracker:
    """One child's history: call `started` at each start, `ready` when it passes its readiness
    check, and `exited` when it ends unexpectedly, which decides what happens next."""

    def __init__(self, policy: RestartPolicy, clock: Callable[[], float] = time.monotonic):
        self.policy = policy
        self._clock = clock
        self._attempt = 0
        self._ready_at: float | None = None
        self._start_failures: deque[float] = deque()  # times of exits before getting ready

    def started(self) -> None:
        self._ready_at = None

    def ready(self) -> None:
        self._ready_at = self._clock()
        # It came up: earlier start-up failures were transient.
        self._start_failures.clear()

    def exited(self) -> Decision:
        now = self._clock()
        if self._ready_at is None:
            self._start_failures.append(now)
            window = self.policy.crash_loop_window_s
            while self._start_failures and now - self._start_failures[0] > window:
                self._start_failures.popleft()
            if len(self._start_failures) >= self.policy.crash_loop_failures:
                return GiveUp(len(self._start_failures), window)
        elif now - self._ready_at >= self.policy.stable_after_s:
            self._attempt = 0
        self._attempt += 1
        return Restart(self.policy.delay_s(self._attempt), self._attempt)

"""Admission: a non-blocking bound on concurrent sessions (HTTP turns and WebSockets)."""

from __future__ import annotations

from . import metrics


class SessionLimiter:
    """`try_acquire` refuses at `limit` instead of queueing: a client told "busy" (429/1013) at
    once can go to another gateway; a queued one only waits longer."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        self.limit = limit
        self.active = 0

    def try_acquire(self) -> bool:
        if self.active >= self.limit:
            return False
        self.active += 1
        metrics.SESSIONS_ACTIVE.set(self.active)
        return True

    def release(self) -> None:
        if self.active <= 0:
            raise RuntimeError("release without acquire")
        self.active -= 1
        metrics.SESSIONS_ACTIVE.set(self.active)

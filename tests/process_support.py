"""Waiting for a process to end, shared by the launcher's tests (tests/unit/
test_launcher_supervisor.py, tests/integration/test_launcher.py)."""

from __future__ import annotations

import os
import select


def process_gone(pid: int, timeout: float = 30.0) -> bool:
    """The process has ended (a zombie waiting for its reaper counts): waits for its pidfd to
    become readable, which happens when the process terminates; False after `timeout`."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        readable, _, _ = select.select([pidfd], [], [], timeout)
        return bool(readable)
    finally:
        os.close(pidfd)

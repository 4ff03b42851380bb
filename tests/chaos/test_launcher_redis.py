"""The launcher supervises the Redis it starts like any other child: killed with SIGKILL, it is
started again (same port, same command) and answers PING; Ctrl-C still stops it."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from llmvox_launch.machine import free_port, redis_answers, redis_server_argv
from llmvox_launch.plan import STAGE_REDIS, ChildSpec, Plan, RedisPing
from tests.e2e.stack import Launcher, e2e_settings

from .support import wait_until

pytestmark = pytest.mark.integration


def test_the_launchers_redis_is_restarted_after_sigkill(tmp_path: Path) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    argv = redis_server_argv(url, say=lambda _: None, install=False)
    assert argv is not None
    # The launcher's own Redis child, as build_plan makes it when none answers.
    plan = Plan((ChildSpec("redis", argv, {}, RedisPing(url), STAGE_REDIS),), url="http://x/")
    launcher = Launcher(plan, e2e_settings(url, 1), dict(os.environ), tmp_path / "launch.log")
    launcher.start()
    try:
        first = launcher.pid("redis")
        assert first is not None
        os.kill(first, signal.SIGKILL)
        wait_until(
            lambda: launcher.pid("redis") not in (None, first) and redis_answers(url),
            60.0,
            "Redis restarted by the launcher",
        )
        assert "redis exited (SIGKILL); restarting in 0.5 s (attempt 1)" in launcher.log()
        launcher.check_running()
    finally:
        launcher.stop()
    assert launcher.status == 0
    assert not redis_answers(url)  # stopped with the rest

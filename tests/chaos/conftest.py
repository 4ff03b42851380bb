"""The chaos tests' stack: a private Redis the tests kill and restart, and the launcher's plan
run by its supervisor (tests/e2e/stack.py) with two tiny-profile TTS replicas and the gateway:
no ASR and no LLM, since every turn here is verbatim text. Started once per session; tests that
break something wait until it is whole again (`Chaos.heal`) before they return.

Measured figures (gaps, recovery times) go to `out/test-artifacts/chaos-results.jsonl`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.stack import Stack, running_stack

from .support import RedisServer, live_replicas, readyz, say, wait_until

REPO_ROOT = Path(__file__).resolve().parents[2]
RESULTS = REPO_ROOT / "out" / "test-artifacts" / "chaos-results.jsonl"
REPLICAS = 2
HEAL_TIMEOUT_S = 120.0  # a failsafe: a replica reloads its tiny model in seconds


@dataclass
class Chaos:
    redis: RedisServer
    stack: Stack

    @property
    def base_url(self) -> str:
        return self.stack.base_url

    def pid(self, name: str) -> int | None:
        return self.stack.launcher.pid(name)

    def check(self) -> None:
        self.stack.launcher.check_running()

    def heal(self) -> None:
        """Wait until Redis answers, every replica's heartbeat lives and the gateway is ready."""
        if self.redis.process is None or self.redis.process.poll() is not None:
            self.redis.start()

        def whole() -> bool:
            self.check()
            if len(live_replicas(self.redis.url)) != REPLICAS:
                return False
            launcher = self.stack.launcher
            replicas_up = all(launcher.is_ready(f"tts{i}") for i in range(1, REPLICAS + 1))
            return replicas_up and readyz(self.base_url)[0] == 200

        wait_until(whole, HEAL_TIMEOUT_S, "the stack back to whole")

    def record(self, name: str, **figures: Any) -> None:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        row = {"test": name, "at": time.strftime("%Y-%m-%dT%H:%M:%S"), **figures}
        with RESULTS.open("a", encoding="utf-8") as out:
            out.write(json.dumps(row) + "\n")
        say(f"{name}: {figures}")


@pytest.fixture(scope="session")
def chaos(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chaos]:
    workdir = tmp_path_factory.mktemp("chaos")
    server = RedisServer(workdir)
    server.start()
    try:
        with running_stack(
            server.url, workdir, replicas=REPLICAS, asr_model="none", llm_checkpoint="none"
        ) as stack:
            yield Chaos(server, stack)
    finally:
        server.stop()


@pytest.fixture
def healed(chaos: Chaos) -> Iterator[Chaos]:
    """The stack, whole before the test and made whole again after it."""
    chaos.heal()
    yield chaos
    chaos.heal()

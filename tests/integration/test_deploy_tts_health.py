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

from llmvox_common.cli_settings import settings_from_args
from llmvox_common.tts_streams import WORKERS_KEY_PREFIX
from llmvox_tts.cli import build_parser, main
from llmvox_tts.worker.settings import WorkerSettings

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


def _wait_until_expired(url: str, name: str = REPLICA, timeout: float = 30.0) -> None:
    """Until Redis has expired the heartbeat key (checked every 20 ms; nothing signals it)."""
    gave_up = threading.Event()
    timer = threading.Timer(timeout, gave_up.set)
    timer.start()
    try:
        with redis.Redis.from_url(url) as client:
            while client.exists(WORKERS_KEY_PREFIX + name):
                assert not gave_up.wait(0.02), f"the heartbeat did not expire within {timeout} s"
    finally:
        timer.cancel()


def _health(url: str, *args: str) -> int:
    return main(["health", "--redis_url", url, "--name", REPLICA, "--timeout", "2", *args])


def test_health_fails_without_a_heartbeat(
    redis_client: RedisClientFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _health(redis_client.url) == 1
    err = capsys.readouterr().err
    assert "unhealthy" in err
    assert f"{WORKERS_KEY_PREFIX}{REPLICA}" in err


def test_health_passes_with_a_heartbeat(
    redis_client: RedisClientFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    value = json.dumps({"at_ms": int(time.time() * 1000), "profile": "tiny", "untrained": True})
    _set_heartbeat(redis_client.url, value)
    assert _health(redis_client.url) == 0
    out = capsys.readouterr().out
    assert "SERVING" in out
    assert " s ago" in out  # the heartbeat's age was read


def test_health_fails_once_the_heartbeat_expires(redis_client: RedisClientFactory) -> None:
    # A replica whose loop stalls stops refreshing its key, which then expires (claim_idle_ms).
    _set_heartbeat(redis_client.url, json.dumps({"at_ms": int(time.time() * 1000)}), px=300)
    assert _health(redis_client.url) == 0
    _wait_until_expired(redis_client.url)
    assert _health(redis_client.url) == 1


def test_health_waits_for_a_heartbeat(redis_client: RedisClientFactory) -> None:
    """`--wait` keeps checking: the heartbeat is written only once the first check has asked
    Redis for it (seen through MONITOR), and the check then passes."""
    results: list[int] = []
    key = WORKERS_KEY_PREFIX + REPLICA
    # socket_timeout: a check that never asks fails the test instead of hanging it.
    with redis.Redis.from_url(redis_client.url, socket_timeout=60) as client:
        with client.monitor() as monitor:
            checker = threading.Thread(
                target=lambda: results.append(_health(redis_client.url, "--wait", "60"))
            )
            checker.start()
            while not monitor.next_command()["command"].startswith(f"GET {key}"):
                pass
        _set_heartbeat(redis_client.url, "{}")
        checker.join(timeout=90)
    assert results == [0]


def test_health_reports_an_unreachable_redis_without_its_password(
    capsys: pytest.CaptureFixture[str],
) -> None:
    url = f"redis://:TopSecretPassword@127.0.0.1:{_free_port()}/0"
    assert main(["health", "--redis_url", url, "--name", REPLICA, "--timeout", "1"]) == 1
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
        assert _health(redis_client.url, "--check", "metrics", "--metrics_port", str(port)) == 0
        # `all` needs the heartbeat too.
        assert _health(redis_client.url, "--check", "all", "--metrics_port", str(port)) == 1
        _set_heartbeat(redis_client.url, "{}")
        assert _health(redis_client.url, "--check", "all", "--metrics_port", str(port)) == 0
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
    closed = _free_port()
    assert _health(redis_client.url, "--check", "metrics", "--metrics_port", str(closed)) == 1
    assert _health(redis_client.url, "--check", "metrics", "--metrics_port", "0") == 1
    assert "no metrics port" in capsys.readouterr().err


def test_health_defaults_match_the_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    """Inside one container the health check finds the worker's key with no flags: the same env
    (LLMVOX_TTS_REDIS_URL, LLMVOX_TTS_NAME) and the same default name (tts-<hostname>)."""

    def replica(command: str) -> WorkerSettings:
        return settings_from_args(WorkerSettings, build_parser().parse_args([command]))

    worker, health = replica("worker"), replica("health")
    assert (health.name, health.redis_url, health.metrics_port) == (
        worker.name,
        worker.redis_url,
        worker.metrics_port,
    )
    assert health.name == f"tts-{socket.gethostname()}"
    monkeypatch.setenv("LLMVOX_TTS_NAME", "tts-gpu7")
    monkeypatch.setenv("LLMVOX_TTS_REDIS_URL", "redis://:pw@redis:6379/0")
    health = replica("health")
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
